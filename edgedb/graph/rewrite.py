"""One call from a DBNet export to the graph edgedb deploys on ONNX Runtime and TensorRT.

The rewritten model takes uint8 NHWC BGR frames (a quarter of the bytes of float input to
move to a GPU), has one output ``prob``, is at opset >= 17 (per-channel INT8 Q/DQ needs
it) and carries its spec in its metadata, so nothing else is needed to run it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import onnx
import onnx_graphsurgeon as gs

from edgedb._version import __version__
from edgedb._checks import path_text
from edgedb._files import save_onnx
from edgedb.errors import ModelError
from edgedb.graph import passes
from edgedb.graph import simplify as simplify_passes
from edgedb.spec import METADATA_KEY, ModelSpec, guess_spec, spec_from_metadata, store_spec

log = logging.getLogger(__name__)

# Bumped whenever the passes change what they produce, so cached rewrites are redone.
REWRITE_REVISION = 6

PRODUCER_NAME = "edgedb"

_ELEM_FLOAT = onnx.TensorProto.FLOAT
_ELEM_UINT8 = onnx.TensorProto.UINT8


def load_model(model: Union[onnx.ModelProto, str, Path]) -> onnx.ModelProto:
    """A ModelProto from a path (or the proto itself).

    Raises:
        InvalidInputTypeError: neither a ModelProto nor a str or os.PathLike.
        ModelError: the file is missing, unreadable or not an ONNX model.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(path_text("model", model, "an onnx.ModelProto or a path to an ONNX file"))
    if not path.is_file():
        raise ModelError(f"no model file {str(path)!r}")
    try:
        loaded = onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError, OSError, onnx's external-data errors
        raise ModelError(f"cannot read {str(path)!r} as an ONNX model: {error}") from error
    if not loaded.graph.node:
        raise ModelError(f"{str(path)!r} is not an ONNX model with a graph (no nodes parsed from it)")
    return loaded


def _dims(value_info: onnx.ValueInfoProto) -> list:
    """Dims as ints (static) or None (dynamic or unknown)."""
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def check_dbnet(model: onnx.ModelProto, spec: ModelSpec) -> None:
    """Checks that ``spec`` describes ``model`` as a DBNet: a 4-D 3-channel image input
    (float32 NCHW, or uint8 NHWC once preprocessing is fused) and a (N, 1, H, W) output.

    Raises:
        ModelError: saying what was expected and what the model has.
    """
    initializers = {init.name for init in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    outputs = {o.name: o for o in model.graph.output}
    if spec.input_name not in inputs:
        raise ModelError(f"not a DBNet export edgedb can run: expected an image input {spec.input_name!r}, "
                         f"the model's inputs are {sorted(inputs)}")
    image = inputs[spec.input_name]
    dims, elem = _dims(image), image.type.tensor_type.elem_type
    if spec.fused_preprocessing:
        expected, ok = "uint8 NHWC [N, H, W, 3]", elem == _ELEM_UINT8 and len(dims) == 4 and dims[3] in (3, None)
    else:
        expected, ok = "float32 NCHW [N, 3, H, W]", elem == _ELEM_FLOAT and len(dims) == 4 and dims[1] in (3, None)
    if not ok:
        raise ModelError(f"not a DBNet export edgedb can run: expected the input {spec.input_name!r} to be "
                         f"{expected}, found {onnx.helper.tensor_dtype_to_np_dtype(elem)} with dims {dims}")
    if spec.prob_output not in outputs:
        raise ModelError(f"not a DBNet export edgedb can run: expected a probability-map output "
                         f"{spec.prob_output!r}, the model's outputs are {sorted(outputs)}")
    prob_dims = _dims(outputs[spec.prob_output])
    if prob_dims and (len(prob_dims) != 4 or prob_dims[1] not in (1, None)):
        raise ModelError(f"not a DBNet export edgedb can run: expected the output {spec.prob_output!r} to be a "
                         f"(N, 1, H, W) probability map, found dims {prob_dims}")


def rewrite_model(
    model: Union[onnx.ModelProto, str, Path],
    spec: Optional[ModelSpec] = None,
    *,
    opset: int = 17,
    fold: bool = True,
    prune: bool = True,
    simplify: bool = True,
    fuse_preprocessing: bool = True,
    dynamic: bool = True,
) -> tuple[onnx.ModelProto, ModelSpec]:
    """Rewrites a DBNet export for deployment and returns it with its new spec.

    ``spec`` defaults to the one in the model's metadata, else to one guessed from the
    graph. Passes run in this order: opset upgrade, constant folding, output pruning,
    exact simplifications (Identity nodes dropped, spatial ReduceMean as
    GlobalAveragePool, affine layers folded into convolutions, HardSwish fused,
    squeeze-and-excitation residuals as one Mul, the head's two ConvTranspose as 1x1
    convolutions and DepthToSpace; see
    ``edgedb.graph.simplify``), preprocessing fusion, renaming the map to ``prob``,
    dynamic dims. The caller's
    ModelProto is not modified.

    Raises:
        ModelError: the file cannot be read, the model is not a DBNet, a pass fails, or the
            result fails the ONNX checker.
    """
    source = load_model(model)
    spec = spec or spec_from_metadata(source) or guess_spec(source)
    check_dbnet(source, spec)

    upgraded = passes.upgrade_opset(source, opset)
    graph = gs.import_onnx(upgraded)
    counts = {"imported": len(graph.nodes)}
    if fold:
        passes.fold_constants(graph)
        counts["folded"] = len(graph.nodes)
    if prune:
        passes.prune_outputs(graph, spec.prob_output)
        counts["pruned"] = len(graph.nodes)
    if simplify:
        simplify_passes.remove_identities(graph)
        simplify_passes.spatial_mean_as_global_pool(graph)
        simplify_passes.batchnorm_as_affine(graph)
        simplify_passes.fold_conv_affine(graph)
        if passes.default_opset(upgraded) >= 14:  # HardSwish exists from opset 14
            simplify_passes.fuse_hardswish(graph)
        simplify_passes.fold_affine_into_next_conv(graph)
        simplify_passes.residual_scale_as_one_mul(graph)
        simplify_passes.subpixel_head(graph)
        counts["simplified"] = len(graph.nodes)
    if fuse_preprocessing:
        graph, spec = passes.fuse_preprocessing(graph, spec)
        counts["fused"] = len(graph.nodes)
    passes.rename_output(graph, spec.prob_output, passes.PROB_OUTPUT_NAME)
    if dynamic:
        passes.make_dynamic(graph, passes.PROB_OUTPUT_NAME)
    spec = spec.with_(
        prob_output=passes.PROB_OUTPUT_NAME,
        extra_outputs=tuple(t.name for t in graph.outputs if t.name != passes.PROB_OUTPUT_NAME),
    )

    rewritten = gs.export_onnx(graph)
    rewritten.doc_string = source.doc_string
    for prop in source.metadata_props:  # gs does not carry metadata over
        if prop.key != METADATA_KEY:
            rewritten.metadata_props.add(key=prop.key, value=prop.value)
    store_spec(rewritten, spec)
    rewritten.producer_name, rewritten.producer_version = PRODUCER_NAME, __version__
    try:
        onnx.checker.check_model(rewritten, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"the rewritten model fails the ONNX checker: {error}") from error
    log.info("rewrote model: nodes %s, opset %d", counts, passes.default_opset(rewritten))
    return rewritten, spec


def rewrite_file(
    src: Union[str, Path], dst: Union[str, Path], spec: Optional[ModelSpec] = None, **options
) -> ModelSpec:
    """Rewrites the model at ``src`` (see ``rewrite_model``) and saves it to ``dst``."""
    dst = path_text("dst", dst)  # before the rewrite's work
    rewritten, spec = rewrite_model(src, spec, **options)
    save_onnx(rewritten, dst)
    log.info("wrote %s", dst)
    return spec
