""""Best" models: INT8 convolutions with float16 everywhere between them.

This is what TensorRT runs fastest (trtexec's ``--best``), written into the graph as a
strongly typed network wants it, because TensorRT 11 has no precision flags:

- the float16 model of ``to_float16`` (float32 stays at the preprocessing, the global
  pools, the final Sigmoid and the convolution feeding it);
- each convolution's input passes through QuantizeLinear/DequantizeLinear with a
  per-tensor symmetric int8 scale from the calibration statistics, its weights are
  stored as per-channel symmetric int8 with a DequantizeLinear in front (Conv axis 0,
  ConvTranspose axis 1); biases stay float, as in the INT8 TensorRT target;
- the scales have the type of the tensor they quantize: float16 between float16 layers.
  TensorRT's ONNX parser gives a DequantizeLinear the type of its scale in a strongly
  typed network, so a float16 scale makes the convolution (and everything after it) run
  in float16 without a cast; with float32 scales the layers between convolutions would
  run in float32. Float16 scales on QuantizeLinear need opset 19, to which the graph is
  upgraded.

ONNX Runtime runs the same graph on the CPU (float16 Q/DQ since opset 19), which is how
its accuracy is measured here.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from edgedb.errors import InvalidInputError, ModelError
from edgedb.precision.calibration import CalibrationStats
from edgedb.precision.int8 import activation_ranges
from edgedb.spec import PRECISION_KEY, spec_from_metadata, store_spec

log = logging.getLogger(__name__)

OPSET = 19  # QuantizeLinear with a float16 scale
_CONV_OPS = ("Conv", "ConvTranspose")
# The smallest positive float16 (a subnormal): a scale must be positive for TensorRT.
_FLOAT16_TINY = 2.0 ** -24


def _scale(amax: np.ndarray, dtype) -> np.ndarray:
    """Symmetric int8 scale(s) for |x| <= amax, in ``dtype``, never zero."""
    scale = np.asarray(amax, np.float64) / 127.0
    scale = scale.astype(dtype)
    tiny = _FLOAT16_TINY if dtype == np.float16 else 1e-12
    return np.where(scale > 0, scale, np.asarray(tiny, dtype)).astype(dtype)


def _quantized_weights(weights: np.ndarray, axis: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-channel scales in ``dtype``): the weights rounded with the very
    scale values stored, so DequantizeLinear reproduces them exactly."""
    moved = np.moveaxis(np.asarray(weights, np.float64), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scales = _scale(amax, dtype)
    shape = (-1,) + (1,) * (moved.ndim - 1)
    q = np.clip(np.round(moved / scales.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return np.moveaxis(q, 0, axis), scales


def _upgrade_opset(model):
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is not None and current >= OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, OPSET)
    except Exception as error:  # the converter raises bare RuntimeErrors on unsupported adapters
        raise ModelError(f"cannot upgrade the float16 model to opset {OPSET} (float16 Q/DQ scales): {error}") from error


def quantize_best(model, stats: CalibrationStats, *, method: str = "percentile", exclude: Sequence[str] = ()):
    """An INT8 + float16 copy of a deployable FP32 model (see the module doc).

    Args:
        model: onnx.ModelProto rewritten by edgedb (fused preprocessing, ``prob`` output).
        stats: its calibration statistics (``edgedb.precision.calibration.collect_stats``).
        method: how ranges come from the statistics: ``"max"``, ``"percentile"``
            (default), ``"entropy"`` or ``"mse"``.
        exclude: names of Conv/ConvTranspose nodes to keep unquantized (in float16).

    Raises:
        InvalidInputError: an unknown method or an excluded node the model does not have.
        ModelError: a model without edgedb's spec, or one that is not float32.
    """
    import onnx
    import onnx_graphsurgeon as gs

    from edgedb.precision.fp16 import to_float16

    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("INT8 quantization needs a model rewritten by edgedb; run `edgedb rewrite` first")
    fp32_convs = {n.name: n for n in model.graph.node if n.op_type in _CONV_OPS and n.name}
    if not fp32_convs:
        raise ModelError("the model's convolutions have no names; rewrite it with edgedb first")
    unknown = [name for name in exclude if name not in fp32_convs]
    if unknown:
        raise InvalidInputError(f"nodes to exclude are not convolutions of the model: {unknown}")
    ranges = activation_ranges(stats, method, symmetric=True)

    graph = gs.import_onnx(_upgrade_opset(to_float16(model)))
    quantized_inputs: dict[str, gs.Variable] = {}  # one Q/DQ pair per tensor, shared by its readers
    count = 0
    for node in [n for n in graph.nodes if n.op in _CONV_OPS]:
        source = fp32_convs.get(node.name)
        if source is None or node.name in exclude or source.input[0] not in ranges:
            continue
        x, w = node.inputs[0], node.inputs[1]
        if not isinstance(w, gs.Constant) or x.dtype not in (np.float16, np.float32):
            continue
        dtype = np.dtype(x.dtype)
        if x.name not in quantized_inputs:
            low, high = ranges[source.input[0]]
            scale = gs.Constant(f"{x.name}_scale", _scale(max(abs(low), abs(high)), dtype))
            zero = gs.Constant(f"{x.name}_zero_point", np.zeros((), np.int8))
            q = gs.Variable(f"{x.name}_quantized", dtype=np.int8, shape=x.shape)
            dq = gs.Variable(f"{x.name}_dequantized", dtype=dtype, shape=x.shape)
            graph.nodes.append(gs.Node("QuantizeLinear", f"{x.name}_QuantizeLinear", inputs=[x, scale, zero], outputs=[q]))
            graph.nodes.append(gs.Node("DequantizeLinear", f"{x.name}_DequantizeLinear", inputs=[q, scale, zero], outputs=[dq]))
            quantized_inputs[x.name] = dq
        node.inputs[0] = quantized_inputs[x.name]

        axis = 1 if node.op == "ConvTranspose" else 0
        if axis == 1 and node.attrs.get("group", 1) != 1:
            continue  # per-channel scales of a grouped ConvTranspose do not map to one axis
        weights, scales = _quantized_weights(w.values, axis, np.dtype(w.values.dtype))
        q_weights = gs.Constant(f"{w.name}_quantized", weights)
        w_scale = gs.Constant(f"{w.name}_scale", scales)
        w_zero = gs.Constant(f"{w.name}_zero_point", np.zeros(scales.shape, np.int8))
        dq_w = gs.Variable(f"{w.name}_dequantized", dtype=w.values.dtype, shape=list(w.values.shape))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{w.name}_DequantizeLinear", attrs={"axis": axis},
                                   inputs=[q_weights, w_scale, w_zero], outputs=[dq_w]))
        node.inputs[1] = dq_w
        count += 1
    if not count:
        raise ModelError("no convolution could be quantized: the calibration statistics do not cover the model's "
                         "convolution inputs (collect them on this model)")
    graph.cleanup().toposort()
    result = gs.export_onnx(graph)
    result.ir_version = max(result.ir_version, 9)
    store_spec(result, spec)
    for prop in list(result.metadata_props):
        if prop.key == PRECISION_KEY:
            result.metadata_props.remove(prop)
    result.metadata_props.add(key=PRECISION_KEY, value=f"best-tensorrt-{method}")
    try:
        onnx.checker.check_model(result, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"the INT8 + float16 model fails the ONNX checker: {error}") from error
    log.info("best (%s): %d of %d convolutions in INT8, float16 between them, %d kept by request",
             method, count, len(fp32_convs), len(exclude))
    return result
