"""Graph passes that turn a DBNet export into the graph edgedb deploys.

Each pass does one thing to an ``onnx_graphsurgeon`` graph (or, where only the onnx API
can do it, to a ModelProto), cleans up and sorts, and returns it. ``rewrite_model`` in
``edgedb.graph.rewrite`` runs them in order.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.version_converter
import onnx_graphsurgeon as gs

from edgedb.errors import ModelError
from edgedb.spec import ModelSpec

log = logging.getLogger(__name__)

FUSED_INPUT_NAME = "image"
PROB_OUTPUT_NAME = "prob"
DYNAMIC_DIMS = ("batch", "height", "width")
_PREPROCESS_PREFIX = "edgedb_preprocess"


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX domain (the one opset upgrades change)."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ModelError("the model imports no opset of the default ONNX domain; is it an ONNX model?")


def upgrade_opset(model: onnx.ModelProto, opset: int = 17) -> onnx.ModelProto:
    """The model converted to ``opset`` (per-channel INT8 Q/DQ later needs >= 13; 17 is
    what TensorRT and ONNX Runtime both handle well). Returns ``model`` itself when it is
    already at or above ``opset``.

    Raises:
        ModelError: onnx's version converter cannot convert the model.
    """
    current = default_opset(model)
    if current >= opset:
        return model
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception as error:  # the converter raises RuntimeError, ValueError or its own types
        raise ModelError(f"cannot convert the model from opset {current} to opset {opset}: {error}") from error
    log.info("upgraded opset %d -> %d", current, opset)
    return converted


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluates everything that does not depend on the input, so Constant nodes and
    weight-only subgraphs become initializers (fewer nodes for TensorRT's parser and for
    quantization to look at). Folding errors are raised, never skipped."""
    before = len(graph.nodes)
    graph.fold_constants(error_ok=False).cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("folded constants: %d -> %d nodes", before, len(graph.nodes))
    return graph


def _find(tensors: list, name: str, kind: str) -> gs.Variable:
    for tensor in tensors:
        if tensor.name == name:
            return tensor
    raise ModelError(f"the graph has no {kind} {name!r}; its {kind}s are {[t.name for t in tensors]}")


def _output(graph: gs.Graph, name: str) -> gs.Variable:
    return _find(graph.outputs, name, "output")


def prune_outputs(graph: gs.Graph, keep: str) -> gs.Graph:
    """Keeps only the probability-map output ``keep``: the threshold and binary maps of
    training exports are unused at inference and their branches cost time and memory."""
    prob = _output(graph, keep)
    dropped = [t.name for t in graph.outputs if t is not prob]
    before = len(graph.nodes)
    graph.outputs = [prob]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("pruned outputs %s: %d -> %d nodes", dropped, before, len(graph.nodes))
    return graph


def _input(graph: gs.Graph, name: str) -> gs.Variable:
    return _find(graph.inputs, name, "input")


def fuse_preprocessing(graph: gs.Graph, spec: ModelSpec) -> tuple[gs.Graph, ModelSpec]:
    """Makes the graph take raw frames: a uint8 NHWC BGR input ``image`` [batch, height,
    width, 3], cast, reordered to the network's channel order, normalized and transposed
    to NCHW inside the graph. Frames then move to the GPU at a quarter of the float bytes
    and no per-pixel work is left to the host. The cast comes first because TensorRT
    accepts uint8 only as the input of a Cast.

    Returns the graph and the spec describing it (``input_name="image"``,
    ``fused_preprocessing=True``; channel order, mean and std still describe the network).

    Raises:
        ModelError: the spec is already fused, or its input is not a float NCHW image.
    """
    if spec.fused_preprocessing:
        raise ModelError("preprocessing is already fused into this model (its spec says fused_preprocessing=True)")
    old_input = _input(graph, spec.input_name)
    shape = old_input.shape
    if old_input.dtype != np.float32 or shape is None or len(shape) != 4 or shape[1] != 3:
        raise ModelError(
            f"cannot fuse preprocessing: expected the input {spec.input_name!r} to be float32 NCHW with 3 channels, "
            f"found {old_input.dtype} of shape {shape}"
        )
    if FUSED_INPUT_NAME in graph.tensors():
        raise ModelError(f"cannot fuse preprocessing: the graph already has a tensor named {FUSED_INPUT_NAME!r}")

    batch, height, width = DYNAMIC_DIMS
    image = gs.Variable(FUSED_INPUT_NAME, dtype=np.uint8, shape=[batch, height, width, 3])
    nhwc = [batch, height, width, 3]

    def step(op: str, inputs: list, attrs: dict | None = None, output: gs.Variable | None = None) -> gs.Variable:
        name = f"{_PREPROCESS_PREFIX}/{op.lower()}"
        output = output or gs.Variable(f"{name}_out", dtype=np.float32, shape=nhwc)
        graph.nodes.append(gs.Node(op=op, name=name, attrs=attrs or {}, inputs=inputs, outputs=[output]))
        return output

    pixels = step("Cast", [image], {"to": onnx.TensorProto.FLOAT})
    if spec.channel_order == "RGB":
        bgr_to_rgb = gs.Constant(f"{_PREPROCESS_PREFIX}/bgr_to_rgb", np.array([2, 1, 0], np.int64))
        pixels = step("Gather", [pixels, bgr_to_rgb], {"axis": 3})
    mean, std = np.asarray(spec.mean, np.float64), np.asarray(spec.std, np.float64)
    scale = gs.Constant(f"{_PREPROCESS_PREFIX}/scale", (1.0 / (255.0 * std)).astype(np.float32))
    bias = gs.Constant(f"{_PREPROCESS_PREFIX}/bias", (-mean / std).astype(np.float32))
    pixels = step("Mul", [pixels, scale])
    pixels = step("Add", [pixels, bias])
    # The old input becomes the Transpose's output, so its consumers need no rewiring.
    old_input.shape = [batch, 3, height, width]
    step("Transpose", [pixels], {"perm": [0, 3, 1, 2]}, output=old_input)

    graph.inputs = [image if tensor is old_input else tensor for tensor in graph.inputs]
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    log.info("fused preprocessing (%s, mean %s, std %s) behind uint8 input %r",
             spec.channel_order, spec.mean, spec.std, FUSED_INPUT_NAME)
    return graph, spec.with_(input_name=FUSED_INPUT_NAME, fused_preprocessing=True)


def rename_output(graph: gs.Graph, old: str, new: str = PROB_OUTPUT_NAME) -> gs.Graph:
    """Gives the probability map a fixed name so runtimes need not know each export's."""
    output = _output(graph, old)
    if old == new:
        return graph
    if new in graph.tensors():
        raise ModelError(f"cannot rename output {old!r} to {new!r}: the graph already has a tensor of that name")
    output.name = new  # the tensor object is shared, so its producer sees the new name too
    return graph


def _named_dims(shape, channel_axis: int, names=DYNAMIC_DIMS) -> list:
    """``shape`` with every axis but ``channel_axis`` replaced by the next dynamic name."""
    free = iter(names)
    named = [dim if axis == channel_axis else next(free) for axis, dim in enumerate(shape)]
    replaced_static = [dim for axis, dim in enumerate(shape)
                       if axis != channel_axis and isinstance(dim, int) and dim > 0]
    if replaced_static:
        log.warning("made static dims %s dynamic; the graph must not assume them anywhere else", replaced_static)
    return named


def make_dynamic(graph: gs.Graph, output: str = PROB_OUTPUT_NAME) -> gs.Graph:
    """Names batch, height and width on the image input (NCHW float or fused NHWC uint8)
    and on the ``output`` map [batch, 1, height, width], so one model serves any batch and
    frame size and runtimes can tell that the map is as large as the input."""
    if len(graph.inputs) != 1:
        raise ModelError(f"expected one image input, found {[t.name for t in graph.inputs]}")
    image = graph.inputs[0]
    shape = list(image.shape or [])
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        raise ModelError(f"expected a 4-D image input with 3 channels (NCHW or NHWC), found {image.name!r} {shape}")
    image.shape = _named_dims(shape, channel_axis=1 if shape[1] == 3 else 3)

    prob = _output(graph, output)
    prob_shape = list(prob.shape or [None, 1, None, None])
    if len(prob_shape) != 4 or (isinstance(prob_shape[1], int) and prob_shape[1] > 0 and prob_shape[1] != 1):
        raise ModelError(f"expected the output {output!r} to be a (N, 1, H, W) map, found shape {prob_shape}")
    prob.shape = _named_dims([prob_shape[0], 1, prob_shape[2], prob_shape[3]], channel_axis=1)
    return graph
