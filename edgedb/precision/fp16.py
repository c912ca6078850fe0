"""FP16 models for strongly typed TensorRT builds (and any runtime that takes float16 ONNX).

TensorRT 11 removed the FP16 builder flag: a strongly typed network runs each layer in the
type its ONNX tensors have. ``to_float16`` therefore writes the precision into the graph:
weights and activations become float16, except where float16 is not good enough:

- the fused preprocessing (``edgedb_preprocess/*``): pixel values up to 255 and the
  normalization stay float32; the cast to float16 comes after the Transpose;
- the end of the network: the Sigmoid that makes the probability map (thresholded at
  0.3) and the layers computing its input (the last ConvTranspose or Conv and its bias)
  run in float32, so the logits are not rounded to float16;
- op types in ``keep_float32_ops``: by default reductions (GlobalAveragePool sums up to
  H*W/16 values per channel in PP-OCRv4's neck: channel sums reach 4.5e6 at 736x1312,
  70 times the float16 range, if accumulated in float16), normalizations whose statistics can
  leave the float16 range, exponentials, and ops whose types ONNX or the runtimes pin
  to float32;
- nodes whose float32 initializers do not fit float16 (|x| > 65504).

Before converting, each BatchNormalization that follows a Conv or ConvTranspose (with an
optional per-channel bias Add between them) is folded into it, computed in float64. This
is exact up to rounding, and needed: PP-OCRv4's head has a BatchNormalization with running
variance up to 9.8e7 (float16 stops at 65504) behind a Conv whose outputs reach 2.7e4 on
ordinary images; folded, that Conv emits normalized values.

Resize keeps float16 data with its ``roi``/``scales`` in float32 (the ONNX spec allows
only float32 scales). The uint8 ``image`` input and the float32 ``prob`` output keep
their names, types and dynamic dims, so a converted model is a drop-in replacement.

The type conversion itself is ``onnxconverter_common.float16.convert_float_to_float16``;
this module chooses what stays float32 and repairs what that converter gets wrong for
these graphs (graph outputs behind float32 nodes, Resize scales, lossy float32 ->
float16 -> float32 cast pairs between float32 nodes).
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Iterable, Optional, Sequence

import numpy as np

from edgedb._extras import import_optional
from edgedb.errors import InvalidInputError, InvalidInputTypeError, ModelError
from edgedb.spec import METADATA_KEY, PRECISION_KEY, spec_from_metadata, store_spec

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

PRECISION = "fp16"
PREPROCESS_PREFIX = "edgedb_preprocess/"
FLOAT16_MAX = 65504.0

DEFAULT_KEEP_FLOAT32_OPS: tuple[str, ...] = (
    # reductions: long sums (float16 accumulation can overflow or lose small terms)
    "GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSumExp", "CumSum",
    # normalizations: running variances and moments can leave the float16 range
    # (BatchNormalization behind a Conv is folded into it first, so rarely stays)
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    # exponentials and powers
    "Softmax", "LogSoftmax", "Exp", "Log", "Pow",
    # float32 by definition or by runtime support (ranges, indices, boxes)
    "Range", "TopK", "NonMaxSuppression", "RoiAlign",
)

_FLOAT, _FLOAT16 = 1, 10
# Ops through which the Sigmoid's input (the logits) is computed from the last
# convolution: its bias and any per-channel affine left behind it.
_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
_CONV_OPS = ("Conv", "ConvTranspose")
_REARRANGING_OPS = ("DepthToSpace",)  # the sub-pixel head's last step (edgedb.graph.subpixel_head)
# Inputs whose type the ONNX spec fixes apart from the data: (op, input index).
_RESIZE_FLOAT32_INPUTS = (1, 2)  # roi (float16 allowed, kept float32 anyway), scales


def _converter():
    return import_optional("onnxconverter_common.float16", "to_float16", "pip install 'onnxconverter-common>=1.16'",
                           name="onnxconverter-common")


# ---------------------------------------------------------------------------- checks


def _elem_types(model: "onnx.ModelProto") -> Iterable[int]:
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        yield value.type.tensor_type.elem_type
    for init in graph.initializer:
        yield init.data_type


def _check_source(model: "onnx.ModelProto"):
    """The model's spec, after checking that it is an edgedb deployable float32 model."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise InvalidInputTypeError(f"to_float16 takes an onnx.ModelProto, not {type(model).__name__}")
    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError(
            "to_float16 needs a deployable edgedb model (uint8 input with fused preprocessing and an "
            f"{METADATA_KEY!r} spec in its metadata); rewrite it first with edgedb.detector.load_deployable "
            "or `edgedb rewrite`"
        )
    precision = next((p.value for p in model.metadata_props if p.key == PRECISION_KEY), None)
    if precision is not None and precision != "fp32":
        raise ModelError(f"the model is already converted ({PRECISION_KEY} = {precision!r}); "
                         "convert the float32 model instead")
    has_cast16 = any(n.op_type == "Cast" and any(a.name == "to" and a.i == _FLOAT16 for a in n.attribute)
                     for n in model.graph.node)
    if has_cast16 or _FLOAT16 in set(_elem_types(model)):
        raise ModelError("the model already has float16 tensors; to_float16 converts float32 models only")
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if spec.input_name not in inputs or spec.prob_output not in outputs:
        raise ModelError(f"the model lacks the input {spec.input_name!r} or the output {spec.prob_output!r} "
                         "its spec names")
    if outputs[spec.prob_output].type.tensor_type.elem_type != _FLOAT:
        raise ModelError(f"expected the output {spec.prob_output!r} to be float32")
    if not any(n.name.startswith(PREPROCESS_PREFIX) for n in model.graph.node):
        raise ModelError(f"the model has no fused preprocessing nodes ({PREPROCESS_PREFIX}*); "
                         "rewrite it first with edgedb.detector.load_deployable")
    return spec


# ------------------------------------------------------------ BatchNormalization folding


def _only_consumer(tensor):
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def _channel_vector(values: np.ndarray, channels: int) -> Optional[np.ndarray]:
    """A constant added to an NCHW tensor as one value per channel, or None (a 1-D
    constant broadcasts along W, not C)."""
    if values.size == 1:
        return np.full(channels, float(values.reshape(())), np.float64)
    if values.ndim in (3, 4) and values.size == channels and values.shape[-3] == channels:
        return values.reshape(channels).astype(np.float64)
    return None


def _fold_batchnorm(graph) -> int:
    """Folds inference-mode BatchNormalization into the Conv/ConvTranspose before it
    (``conv -> [Add per-channel bias] -> BN``, each output feeding only the next node),
    computing the new weights and bias in float64. Returns how many it folded."""
    import onnx_graphsurgeon as gs

    folded = 0
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        if len(bn.outputs) != 1 or bn.attrs.get("training_mode", 0) or len(bn.inputs) != 5:
            continue
        if not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
            continue
        x = bn.inputs[0]
        producer = x.inputs[0] if len(x.inputs) == 1 else None
        bias_add = None
        if producer is not None and producer.op == "Add" and _only_consumer(x) is bn:
            bias_add = producer
            conv_out = next((t for t in bias_add.inputs if not isinstance(t, gs.Constant)), None)
            producer = conv_out.inputs[0] if conv_out is not None and len(conv_out.inputs) == 1 else None
        else:
            conv_out = x
        if producer is None or producer.op not in _CONV_OPS or _only_consumer(conv_out) is not (bias_add or bn):
            continue
        conv = producer
        if len(conv.inputs) < 2 or not all(isinstance(t, gs.Constant) for t in conv.inputs[1:]):
            continue
        if any(t is conv_out or t is x for t in graph.outputs):
            continue
        weight = np.asarray(conv.inputs[1].values, np.float64)
        if weight.ndim < 3:
            continue
        transpose = conv.op == "ConvTranspose"
        if transpose and conv.attrs.get("group", 1) != 1:
            continue
        channels = weight.shape[1] if transpose else weight.shape[0]
        bias = (np.asarray(conv.inputs[2].values, np.float64).reshape(-1) if len(conv.inputs) == 3
                else np.zeros(channels, np.float64))
        if bias.size != channels:
            continue
        if bias_add is not None:
            if len(bias_add.inputs) != 2:
                continue
            const = next((t for t in bias_add.inputs if isinstance(t, gs.Constant)), None)
            vector = None if const is None else _channel_vector(np.asarray(const.values), channels)
            if vector is None:
                continue
            bias = bias + vector
        gamma, beta, mean, var = (np.asarray(t.values, np.float64).reshape(-1) for t in bn.inputs[1:])
        if not all(v.size == channels for v in (gamma, beta, mean, var)):
            continue
        scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
        shape = [1] * weight.ndim
        shape[1 if transpose else 0] = channels
        weight = weight * scale.reshape(shape)
        bias = (bias - mean) * scale + beta
        dtype = np.asarray(conv.inputs[1].values).dtype
        base = conv.name or bn.name or bn.outputs[0].name
        conv.inputs[1] = gs.Constant(f"{base}_bn_weight", weight.astype(dtype))
        new_bias = gs.Constant(f"{base}_bn_bias", bias.astype(dtype))
        if len(conv.inputs) == 3:
            conv.inputs[2] = new_bias
        else:
            conv.inputs.append(new_bias)
        result = bn.outputs[0]
        bn.outputs = []
        if bias_add is not None:
            bias_add.outputs = []
        conv.outputs = [result]
        folded += 1
    if folded:
        graph.cleanup().toposort()
    return folded


# ---------------------------------------------------------------- what stays float32


def _float32_tail(model: "onnx.ModelProto", output: str) -> list[str]:
    """The node producing ``output`` (the Sigmoid) and the nodes computing its input: the
    chain of per-channel affine ops (and a DepthToSpace) back to, and including, the last
    convolution."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    initializers = {i.name for i in graph.initializer}
    node = producers.get(output)
    tail = []
    while node is not None:
        tail.append(node.name)
        if node.op_type in _CONV_OPS:
            break
        variables = [i for i in node.input if i and i not in initializers]
        if len(variables) != 1 or consumers.get(variables[0], 0) != 1:
            break
        previous = producers.get(variables[0])
        if previous is None or previous.op_type not in (*_AFFINE_OPS, *_CONV_OPS, *_REARRANGING_OPS):
            break
        if previous.op_type in _AFFINE_OPS and len([i for i in previous.input if i not in initializers]) != 1:
            break
        node = previous
    return tail


def _out_of_range_nodes(model: "onnx.ModelProto") -> list[str]:
    """Nodes with a float32 initializer that float16 cannot hold."""
    from onnx import numpy_helper

    big = set()
    for init in model.graph.initializer:
        if init.data_type == _FLOAT:
            values = numpy_helper.to_array(init)
            if values.size and float(np.abs(values[np.isfinite(values)]).max(initial=0.0)) > FLOAT16_MAX:
                big.add(init.name)
    return [n.name for n in model.graph.node if big.intersection(n.input)]


# ------------------------------------------------------------------------- repairs


def _producers(graph):
    return {o: n for n in graph.node for o in n.output}


def _cast_to(node) -> Optional[int]:
    """The ``to`` type of a Cast node; None for anything else (or None)."""
    if node is None or node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _restore_float32_inputs(model: "onnx.ModelProto", original: dict[str, np.ndarray]) -> None:
    """Resize ``roi`` and ``scales`` back to float32 (initializers from the original
    values, computed tensors through a Cast)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    new_nodes = []
    for node in graph.node:
        if node.op_type != "Resize":
            continue
        for index in _RESIZE_FLOAT32_INPUTS:
            if index >= len(node.input) or not node.input[index]:
                continue
            name = node.input[index]
            if name in inits:
                if inits[name].data_type != _FLOAT16:
                    continue
                values = original.get(name)
                if values is None:
                    values = numpy_helper.to_array(inits[name]).astype(np.float32)
                if users[name] == 1:
                    inits[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
                else:
                    copy = f"{name}_fp32"
                    if copy not in inits:
                        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), copy))
                        inits[copy] = graph.initializer[-1]
                    node.input[index] = copy
            elif types.get(name) == _FLOAT16:
                cast = f"{node.name}_input_{index}_fp32"
                new_nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=_FLOAT))
                node.input[index] = cast
    graph.node.extend(new_nodes)


def _drop_lossy_round_trips(model: "onnx.ModelProto", float32_names: set[str]) -> int:
    """``x (float32) -> Cast(float16) -> Cast(float32)``: consumers of the second cast read
    ``x`` itself (the converter leaves such pairs between consecutive float32 nodes).
    Identical casts of one tensor are merged. Returns how many casts it removed."""
    graph = model.graph
    sources = {v.name: v.type.tensor_type.elem_type for v in graph.input}
    sources.update({i.name: i.data_type for i in graph.initializer})
    removed = 0

    def is_float32(name: str, producers) -> bool:
        node = producers.get(name)
        if node is None:  # a graph input or an initializer
            return sources.get(name) == _FLOAT
        return node.name in float32_names or _cast_to(node) == _FLOAT

    while True:
        producers = _producers(graph)
        outputs = {o.name for o in graph.output}
        rename: dict[str, str] = {}  # output of a cast to drop -> the tensor to read instead
        for node in graph.node:
            if _cast_to(node) != _FLOAT:
                continue
            first = producers.get(node.input[0])
            if _cast_to(first) != _FLOAT16:
                continue
            if not is_float32(first.input[0], producers) or node.output[0] in outputs:
                continue
            rename[node.output[0]] = first.input[0]
        # Merge casts of the same tensor to the same type.
        seen: dict[tuple, str] = {}
        for node in graph.node:
            to = _cast_to(node)
            if to is None or node.output[0] in rename or node.output[0] in outputs:
                continue
            key = (node.input[0], to)
            if key in seen:
                rename[node.output[0]] = seen[key]
            else:
                seen[key] = node.output[0]
        if not rename:
            break
        for node in graph.node:
            for i, name in enumerate(node.input):
                while name in rename:
                    name = rename[name]
                node.input[i] = name
        kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in rename)]
        removed += len(graph.node) - len(kept)
        del graph.node[:]
        graph.node.extend(kept)
        # Casts left without consumers.
        used = {name for node in graph.node for name in node.input} | outputs
        kept = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] not in used)]
        removed += len(graph.node) - len(kept)
        del graph.node[:]
        graph.node.extend(kept)
    return removed


def _restore_float32_outputs(model: "onnx.ModelProto", expected: dict[str, int]) -> None:
    """Graph outputs the converter turned to float16 (it casts the output of a float32 node
    back to float16, even a graph output): the trailing Cast goes, or one to float32 comes."""
    from onnx import helper

    graph = model.graph
    producers = _producers(graph)
    for output in graph.output:
        want = expected.get(output.name)
        if want != _FLOAT or output.type.tensor_type.elem_type == _FLOAT:
            continue
        node = producers[output.name]
        if _cast_to(node) == _FLOAT16 and len([n for n in graph.node if node.output[0] in n.input]) == 0:
            # float32 tensor -> Cast(float16) -> output: drop the Cast, rename its input.
            source = node.input[0]
            graph.node.remove(node)
            for other in graph.node:
                other.output[:] = [output.name if o == source else o for o in other.output]
                other.input[:] = [output.name if i == source else i for i in other.input]
        else:
            inner = f"{output.name}_fp16"
            node.output[:] = [inner if o == output.name else o for o in node.output]
            for other in graph.node:
                other.input[:] = [inner if i == output.name else i for i in other.input]
            graph.node.append(
                helper.make_node("Cast", [inner], [output.name], name=f"{output.name}_to_fp32", to=_FLOAT))
        output.type.tensor_type.elem_type = _FLOAT


def _sort_topologically(graph) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ModelError("the float16 graph has a cycle or a dangling input: "
                             f"{[n.name for n in pending][:5]}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


# ---------------------------------------------------------------------------- API


def to_float16(
    model: "onnx.ModelProto",
    *,
    keep_float32_ops: Sequence[str] = DEFAULT_KEEP_FLOAT32_OPS,
    keep_float32_nodes: Sequence[str] = (),
) -> "onnx.ModelProto":
    """A float16 copy of a deployable edgedb model, for strongly typed TensorRT builds.

    Weights and activations become float16; the interface stays: the same uint8 input and
    float32 ``prob`` output, names and dynamic dims. Float32 stays where float16 is not
    good enough: the fused preprocessing, the final Sigmoid with the layers computing its
    input, the op types in ``keep_float32_ops`` and the nodes named in
    ``keep_float32_nodes`` (see the module docstring). BatchNormalization behind a
    convolution is folded into it first. The spec stays in the metadata and
    ``edgedb.precision`` = ``"fp16"`` is added. ``model`` is not modified.

    Raises:
        ModelError: the model is not a deployable edgedb model (no spec with fused
            preprocessing in its metadata), is already float16, or the result fails the
            ONNX checker.
        InvalidInputError: ``keep_float32_nodes`` names nodes the model does not have.
        InvalidInputTypeError: ``model`` is not an ``onnx.ModelProto``.
        MissingDependencyError: onnxconverter-common is not installed.
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    spec = _check_source(model)
    if isinstance(keep_float32_ops, str) or isinstance(keep_float32_nodes, str):
        raise InvalidInputTypeError("keep_float32_ops and keep_float32_nodes take sequences of names, not a string")
    names = {n.name for n in model.graph.node}
    unknown = sorted(set(keep_float32_nodes) - names)
    if unknown:
        raise InvalidInputError(f"keep_float32_nodes names nodes the model does not have: {unknown}")
    float16 = _converter()

    graph = gs.import_onnx(model)
    folded = _fold_batchnorm(graph)
    work = gs.export_onnx(graph)
    for index, node in enumerate(work.graph.node):  # the converter selects nodes by name
        if not node.name:
            node.name = f"edgedb_fp16/node_{index}"
    work.ClearField("metadata_props")
    for prop in model.metadata_props:
        work.metadata_props.add(key=prop.key, value=prop.value)
    work.producer_name, work.producer_version = model.producer_name, model.producer_version
    work.doc_string = model.doc_string

    tail = _float32_tail(work, spec.prob_output)
    too_big = _out_of_range_nodes(work)
    if too_big:
        log.warning("keeping %d nodes in float32: their weights exceed the float16 range: %s", len(too_big), too_big)
    float32_nodes = {n.name for n in work.graph.node
                     if n.name.startswith(PREPROCESS_PREFIX) or n.op_type in set(keep_float32_ops)}
    float32_nodes |= set(tail) | set(too_big) | set(keep_float32_nodes)
    expected_outputs = {o.name: o.type.tensor_type.elem_type for o in work.graph.output}
    resize_inputs = {n.input[i] for n in work.graph.node if n.op_type == "Resize"
                     for i in _RESIZE_FLOAT32_INPUTS if i < len(n.input) and n.input[i]}
    original = {i.name: numpy_helper.to_array(i) for i in work.graph.initializer if i.name in resize_inputs}
    work.graph.ClearField("value_info")  # re-inferred below, and by the converter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = float16.convert_float_to_float16(
            work,
            keep_io_types=True,
            op_block_list=[],
            node_block_list=sorted(float32_nodes),
            max_finite_val=FLOAT16_MAX,
            check_fp16_ready=False,
        )
    for warning in caught:  # tiny weights raised to 1e-7 (float16 has no room below): harmless
        log.debug("float16 conversion: %s", warning.message)

    for node in converted.graph.node:  # casts named after preprocessing nodes are not part of it
        if node.name.startswith(PREPROCESS_PREFIX) and node.name not in float32_nodes:
            node.name = "edgedb_fp16/" + node.name.replace("/", "_")
    _restore_float32_inputs(converted, original)
    _restore_float32_outputs(converted, expected_outputs)
    removed = _drop_lossy_round_trips(converted, float32_nodes)
    _sort_topologically(converted.graph)
    converted.graph.ClearField("value_info")
    try:
        converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
    except onnx.shape_inference.InferenceError as error:
        raise ModelError(f"the float16 model fails ONNX shape inference: {error}") from error

    store_spec(converted, spec)
    for prop in list(converted.metadata_props):
        if prop.key == PRECISION_KEY:
            converted.metadata_props.remove(prop)
    converted.metadata_props.add(key=PRECISION_KEY, value=PRECISION)
    try:
        onnx.checker.check_model(converted, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"the float16 model fails the ONNX checker: {error}") from error
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast")
    log.info("float16 model: %d BatchNormalization folded, %d of %d nodes kept float32, %d casts "
             "(%d redundant removed)", folded, len(float32_nodes), len(work.graph.node), casts, removed)
    return converted
