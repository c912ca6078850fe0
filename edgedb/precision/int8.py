"""INT8 models with explicit quantization: QuantizeLinear/DequantizeLinear pairs in the
ONNX graph, built from cached calibration statistics.

Two targets:

- ``"tensorrt"``: what TensorRT 10 and 11 build without calibrators or INT8 flags. Signed
  int8 activations with zero point 0 and per-channel symmetric int8 weights (Conv axis 0,
  ConvTranspose axis 1), Q/DQ only on the inputs and weights of convolutions, where
  TensorRT fuses them; biases, everything else, the final Sigmoid and the output stay
  float.
- ``"cpu"``: what ONNX Runtime runs fastest on x86: uint8 activations (asymmetric),
  per-channel 7-bit int8 weights, int32 biases, Q/DQ around every operator ONNX Runtime
  has an integer kernel for, so it fuses them into QLinearConv and friends.

Calibration methods turn statistics into ranges: ``max`` (the largest |x| seen),
``percentile`` (|x| below which 99.99% of values fall) and ``entropy`` (the clipping
threshold that minimises the KL divergence between the float and the 128-level
distributions, as TensorRT's entropy calibrator does).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from edgedb.errors import InvalidInputError, ModelError
from edgedb.precision.calibration import HISTOGRAM_BINS, CalibrationStats, TensorStats
from edgedb.precision.cpu_graph import (
    decompose_activations,
    fold_preprocessing_into_first_convs,
    gelu_as_sigmoid,
    fold_scalar_muls_into_scales,
    upsample_in_nchw,
)
from edgedb.spec import PRECISION_KEY

log = logging.getLogger(__name__)

METHODS = ("max", "percentile", "entropy", "mse")
TARGETS = ("tensorrt", "cpu")
# Largest |int8 weight| of the CPU target: 7 bits, as ONNX Runtime's reduce_range makes them.
CPU_WEIGHT_LIMIT = 64
# Operators with integer kernels in ONNX Runtime's CPU provider (QLinear* after fusion;
# a Clip between Q/DQ pairs becomes part of the range).
CPU_OP_TYPES = ("Conv", "ConvTranspose", "Add", "Mul", "Clip", "Relu", "GlobalAveragePool", "Resize", "Concat")


def _percentile_amax(stats: TensorStats, percentile: float = 99.99) -> float:
    counts = stats.histogram
    total = counts.sum()
    if total == 0 or stats.edge == 0:
        return stats.absmax()
    index = int(np.searchsorted(np.cumsum(counts), total * percentile / 100.0))
    return min(stats.absmax(), (index + 1) * stats.edge / HISTOGRAM_BINS)


def _entropy_amax(stats: TensorStats, levels: int = 128, step: int = 16) -> float:
    counts = stats.histogram.astype(np.float64)
    nonzero = np.nonzero(counts)[0]
    if len(nonzero) == 0 or stats.edge == 0:
        return stats.absmax()
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return stats.absmax()
    best_divergence, best_bins = np.inf, last
    for bins in list(range(levels, last, step)) + [last]:
        reference = counts[:bins].copy()
        reference[-1] += counts[bins:].sum()  # clipped values pile up in the last bin
        # Merge the unclipped bins into `levels` groups, then spread each group's mass
        # evenly over its non-empty bins: the distribution int8 can represent.
        starts = np.linspace(0, bins, levels + 1).astype(np.int64)[:-1]
        sliced = counts[:bins]
        occupied = sliced > 0
        group_mass = np.add.reduceat(sliced, starts)
        group_size = np.add.reduceat(occupied.astype(np.float64), starts)
        group_of_bin = np.repeat(np.arange(levels), np.diff(np.append(starts, bins)))
        candidate = np.where(occupied, (group_mass / np.maximum(group_size, 1))[group_of_bin], 0.0)
        p = reference / reference.sum()
        q = candidate / max(candidate.sum(), 1e-12)
        mask = p > 0
        if np.any(q[mask] == 0):
            continue
        divergence = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if divergence < best_divergence:
            best_divergence, best_bins = divergence, bins
    return min(stats.absmax(), (best_bins + 0.5) * stats.edge / HISTOGRAM_BINS)


def _mse_amax(stats: TensorStats, symmetric: bool) -> float:
    """The clipping threshold with the least expected squared error: rounding noise
    (step^2 / 12) on the values inside the range plus the clipped distance outside it."""
    counts = stats.histogram.astype(np.float64)
    if counts.sum() == 0 or stats.edge == 0:
        return stats.absmax()
    width = stats.edge / HISTOGRAM_BINS
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * width
    candidates = np.arange(1, HISTOGRAM_BINS + 1) * width
    # Tail sums from bin k on: count, sum of x, sum of x^2 (clipped to candidate k).
    tail = [np.cumsum((counts * centres ** p)[::-1])[::-1] for p in (0, 1, 2)]
    clipped = np.append(tail[2][1:], 0) - 2 * candidates * np.append(tail[1][1:], 0) \
        + candidates ** 2 * np.append(tail[0][1:], 0)
    inside = counts.sum() - np.append(tail[0][1:], 0)
    if symmetric:
        steps = candidates / 127.0
    else:  # uint8 over [max(min, -a), min(max, a)]
        steps = (np.minimum(stats.maximum, candidates) - np.maximum(stats.minimum, -candidates)).clip(min=0) / 255.0
    error = clipped + inside * steps ** 2 / 12.0
    return min(stats.absmax(), float(candidates[int(np.argmin(error))]))


def activation_ranges(stats: CalibrationStats, method: str = "percentile", *, symmetric: bool) -> dict:
    """tensor -> (low, high) range to quantize to."""
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, not {method!r}")
    ranges = {}
    for name, s in stats.items():
        if not np.isfinite(s.minimum):
            continue  # never seen (no calibration data reached it)
        amax = {"max": s.absmax, "percentile": lambda: _percentile_amax(s), "entropy": lambda: _entropy_amax(s),
                "mse": lambda: _mse_amax(s, symmetric)}[method]()
        amax = max(float(amax), 1e-6)
        if symmetric:
            ranges[name] = (-amax, amax)
        else:
            ranges[name] = (max(min(s.minimum, 0.0), -amax), min(max(s.maximum, 0.0), amax))
    return ranges


# The map's logits matter only where the sigmoid is not saturated: sigmoid(+-10) is within
# 5e-5 of 1 and 0. A uint8 grid over +-10 keeps probability steps below 0.02 around the
# thresholds, where a grid over the logits' full range (+-35 in PP-OCRv5 det) would step 0.06.
LOGIT_LIMIT = 10.0
_REARRANGING_OPS = ("DepthToSpace", "Reshape", "Transpose", "Identity")


def _clip_logits(model, ranges: dict) -> dict:
    """``ranges`` with the Sigmoid's input (and the tensors it is rearranged from) clipped
    to +-LOGIT_LIMIT."""
    producers = {o: n for n in model.graph.node for o in n.output}
    clipped = dict(ranges)
    for node in model.graph.node:
        if node.op_type != "Sigmoid":
            continue
        name = node.input[0]
        while name:
            if name in clipped:
                low, high = clipped[name]
                clipped[name] = (max(low, -LOGIT_LIMIT), min(high, LOGIT_LIMIT))
            producer = producers.get(name)
            name = producer.input[0] if producer is not None and producer.op_type in _REARRANGING_OPS else None
    return clipped


def quantize_int8(model, stats: CalibrationStats, *, target: str = "tensorrt", method: str = "percentile",
                  exclude: Sequence[str] = (), full_range_weights: bool = False):
    """A Q/DQ INT8 copy of a deployable FP32 model (see the module doc for targets).

    Args:
        model: onnx.ModelProto rewritten by edgedb (fused preprocessing, ``prob`` output).
        stats: calibration statistics of that model (``collect_stats``).
        target: ``"tensorrt"`` or ``"cpu"``.
        method: ``"max"``, ``"percentile"`` (default), ``"entropy"`` or ``"mse"``.
        exclude: names of Conv/ConvTranspose nodes to keep in float.
        full_range_weights: CPU target only: 8-bit weights instead of 7-bit, for CPUs
            whose int8 dot products cannot saturate (x86 with VNNI, ARM with dot-product
            instructions). On x86 without VNNI they lose accuracy (pmaddubsw saturates);
            measure with ``edgedb compare`` on the device.

    Raises:
        InvalidInputError: unknown target or method, or an excluded node that is not there.
        ModelError: a model without edgedb's spec.
    """
    import onnx
    import onnx_graphsurgeon as gs
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    from edgedb.spec import spec_from_metadata, store_spec

    if target not in TARGETS:
        raise InvalidInputError(f"target must be one of {TARGETS}, not {target!r}")
    if full_range_weights and target != "cpu":
        raise InvalidInputError("full_range_weights is for the CPU target; TensorRT weights are always 8-bit")
    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("INT8 quantization needs a model rewritten by edgedb; run `edgedb rewrite` first")
    node_names = {node.name for node in model.graph.node}
    unknown = [name for name in exclude if name not in node_names]
    if unknown:
        raise InvalidInputError(f"nodes to exclude not in the model: {unknown}")
    if not any(n.name for n in model.graph.node if n.op_type == "Conv"):
        raise ModelError("the model's convolutions have no names; rewrite it with edgedb first")

    symmetric = target == "tensorrt"
    if target == "cpu":
        model = decompose_activations(model)
    ranges = activation_ranges(stats, method, symmetric=symmetric)
    if target == "cpu":
        ranges = _clip_logits(model, ranges)
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(low), highest=np.float32(high)) for name, (low, high) in ranges.items()
    })
    extra = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if target == "tensorrt":
        op_types = ["Conv", "ConvTranspose"]
        extra["OpTypesToExcludeOutputQuantization"] = op_types  # Q/DQ on inputs and weights only
        # Biases stay float: TensorRT's ONNX parser dequantizes int8 (and fp8/int4) only, not
        # the int32 biases ONNX Runtime's QLinearConv wants; TensorRT adds float biases itself.
        # Nor must the weight scales then grow to keep large biases in int32.
        extra["QuantizeBias"] = False
        activation_type = QuantType.QInt8
    else:
        op_types = list(CPU_OP_TYPES)
        activation_type = QuantType.QUInt8
    # The preprocessing and the final Sigmoid stay float.
    keep_float = list(exclude) + [n.name for n in model.graph.node
                                  if n.name.startswith("edgedb_preprocess/") or n.op_type == "Sigmoid"]
    inferred = onnx.shape_inference.infer_shapes(model)
    # reduce_range: 7-bit weights for the CPU. x86 CPUs without VNNI multiply uint8 by int8
    # with pmaddubsw, which saturates at 16 bits when two full-range products add up; the
    # lost bit costs far less than the saturation does (DBNets from PP-OCRv3 on).
    quantizer = QDQQuantizer(
        inferred, True, target == "cpu" and not full_range_weights, QuantType.QInt8, activation_type, tensors, None, keep_float, op_types, extra,
    )
    quantizer.quantize_model()
    # Parsers (TensorRT's included) read nodes in order: sort the inserted Q/DQ in place.
    graph = gs.import_onnx(quantizer.model.model)
    if target == "cpu":
        log.info("folded %d scalar Muls into quantization scales", fold_scalar_muls_into_scales(graph))
        limit = 127 if full_range_weights else CPU_WEIGHT_LIMIT
        if not fold_preprocessing_into_first_convs(graph, weight_limit=limit):
            log.info("kept the float preprocessing: the normalized frame is not read by convolutions only")
        log.info("kept %d nearest upsamplings in NCHW", upsample_in_nchw(graph))
        log.info("wrote %d GELUs with a quantized Sigmoid", gelu_as_sigmoid(graph))
    graph.cleanup().toposort()
    quantized = gs.export_onnx(graph)
    store_spec(quantized, spec)
    entry = quantized.metadata_props.add()
    entry.key, entry.value = PRECISION_KEY, f"int8-{target}-{method}"
    log.info("INT8 (%s, %s): %d Q/DQ nodes, %d nodes kept float by request", target, method,
             sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in quantized.graph.node), len(exclude))
    return quantized


def _fake_quantize(values: np.ndarray, low: float, high: float, symmetric: bool) -> np.ndarray:
    """values rounded to the int8 (symmetric) or uint8 grid of [low, high], back in float."""
    if symmetric:
        scale = max(abs(low), abs(high)) / 127.0
        return np.clip(np.round(values / scale), -128, 127) * scale
    scale = max(high - low, 1e-12) / 255.0
    zero = np.round(-low / scale)
    return (np.clip(np.round(values / scale) + zero, 0, 255) - zero) * scale


def _fake_quantize_weights(weights: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(weights, axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.maximum(amax, 1e-12) / 127.0
    shape = (-1,) + (1,) * (moved.ndim - 1)
    quantized = np.clip(np.round(moved / scale.reshape(shape)), -127, 127) * scale.reshape(shape)
    return np.moveaxis(quantized, 0, axis)


def sensitive_layers(model, stats: CalibrationStats, images, *, target: str = "tensorrt", method: str = "percentile",
                     limit_side_len: int = 736, limit_type: str = "min", input_size=None) -> list[tuple[str, float]]:
    """Convolutions ranked by what INT8 costs them, worst first: for each, the SQNR (dB)
    of its output with its input and weights on the INT8 grid against float, on real
    frames. The first few are the ones to keep in higher precision."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from edgedb.precision.calibration import _with_outputs, prepared_frames
    from edgedb.spec import spec_from_metadata

    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("the sensitivity search needs a model rewritten by edgedb")
    symmetric = target == "tensorrt"
    if target == "cpu":
        model = decompose_activations(model)
    ranges = activation_ranges(stats, method, symmetric=symmetric)
    initializers = {init.name: init for init in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")
             and n.input[0] in ranges and n.input[1] in initializers]
    inputs = sorted({n.input[0] for n in convs})
    session = ort.InferenceSession(_with_outputs(model, inputs).SerializeToString(), providers=["CPUExecutionProvider"])
    frames = list(prepared_frames(images, limit_side_len=limit_side_len, limit_type=limit_type, input_size=input_size))
    activations = [dict(zip(inputs, session.run(inputs, {spec.input_name: frame}))) for frame in frames]

    ranking = []
    for conv in convs:
        weights = numpy_helper.to_array(initializers[conv.input[1]])
        bias = numpy_helper.to_array(initializers[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] else None
        names = ["x", "w"] + (["b"] if bias is not None else [])
        graph = helper.make_graph(
            [helper.make_node(conv.op_type, names, ["y"], **{a.name: helper.get_attribute_value(a) for a in conv.attribute})],
            "single", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None),
                       helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, weights.shape)]
            + ([helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, bias.shape)] if bias is not None else []),
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
        single = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                      .SerializeToString(), providers=["CPUExecutionProvider"])
        low, high = ranges[conv.input[0]]
        quantized_weights = _fake_quantize_weights(weights, 1 if conv.op_type == "ConvTranspose" else 0).astype(np.float32)
        signal = noise = 0.0
        for acts in activations:
            x = acts[conv.input[0]]
            feed = {"x": x, "w": weights, **({"b": bias} if bias is not None else {})}
            reference = single.run(None, feed)[0]
            feed.update(x=_fake_quantize(x, low, high, symmetric).astype(np.float32), w=quantized_weights)
            approx = single.run(None, feed)[0]
            signal += float(np.square(reference, dtype=np.float64).sum())
            noise += float(np.square(reference - approx, dtype=np.float64).sum())
        ranking.append((conv.name, 10 * np.log10(max(signal, 1e-30) / max(noise, 1e-30))))
    ranking.sort(key=lambda item: item[1])
    return ranking
