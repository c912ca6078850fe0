"""Bias correction: give each quantized convolution the mean output of its float original.

Quantization errors do not average out. Rounded weights, and activations clipped and
rounded per tensor, shift the mean of a convolution's output channel by a constant, and
the next layers carry the shift on (Nagel et al., "Data-Free Quantization", 2019, and the
empirical bias correction of their section 4.2). Depthwise convolutions, few inputs per
output, feel it most; PP-OCRv5 mobile det's channel means moved by up to a third of their
range after post-training quantization.

The correction needs no training: run the float model and the quantized model on
calibration frames, and add the difference of each output channel's mean to the
convolution's bias. Each convolution is measured with the corrections of every
convolution before it in place: a layer's shift is partly its inputs' shift, which the
earlier corrections remove, so correcting every layer from one run over-corrects (on
PP-OCRv5 det the shifts grew from 3 to 79 that way), and so does correcting a few at a
time. One run of the quantized model serves the convolutions that do not depend on each
other (one level of the graph: 43 runs for PP-OCRv4 det's 64 convolutions), each run cut
after the convolutions it measures.

It is a heuristic, and off by default (``edgedb quantize --bias-correction``). The means
are taken over whole frames, mostly background, and the error is not the same
everywhere: noise rectified by the activations lifts the background's mean more than the
text's, so matching the means tends to lower the text's activations too. On the base
PP-OCR models that costs a few of their many false line boxes and hmean rises; on a model
fine-tuned on words it cost recall (bench/RESULTS.md). Measure the result with
``edgedb compare``.

The Q/DQ graph keeps its form: float biases (the TensorRT target) are changed in place,
int32 biases (the CPU target) move on their own grid, and a convolution without a bias
gets one of the same kind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb._checks import integer_at_least
from edgedb.errors import InvalidInputError, ModelError

log = logging.getLogger(__name__)

BIAS_CORRECTION_SUFFIX = "-bc"  # appended to the model's precision metadata
FRAMES = 12  # calibration frames a correction fits by default


@dataclass
class BiasCorrectionReport:
    """What ``correct_biases`` did. ``shift``: the largest per-channel mean shift found,
    relative to that convolution's largest |channel mean| in FP32."""

    corrected: int
    skipped: list  # (convolution, why)
    frames: int
    runs: int
    seconds: float
    shift: float


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _needed_nodes(graph, outputs: Sequence[str]) -> list:
    """The nodes ``outputs`` depend on, in graph order."""
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output}
    keep, pending = set(), list(outputs)
    while pending:
        index = producers.get(pending.pop())
        if index is None or index in keep:
            continue
        keep.add(index)
        pending.extend(graph.node[index].input)
    return [graph.node[i] for i in sorted(keep)]


def _levels(graph, biases: list) -> list:
    """``biases`` grouped by their convolution's level: the number of convolutions on
    the longest path from the input to it, itself included. No convolution depends on
    another of its level, and all it depends on is in lower levels."""
    producers = {o: n for n in graph.node for o in n.output}
    convs = {b.node.output[0] for b in biases}
    depth: dict = {}

    def level(name: str) -> int:
        pending = [name]
        while pending:  # iterative: graphs are deeper than Python's recursion limit
            current = pending[-1]
            node = producers.get(current)
            if current in depth or node is None:
                depth.setdefault(current, 0)
                pending.pop()
                continue
            missing = [i for i in node.input if i and i not in depth and i in producers]
            if missing:
                pending.extend(missing)
                continue
            below = max([depth.get(i, 0) for i in node.input] + [0])
            for output in node.output:
                depth[output] = below + (node.output[0] in convs)
            pending.pop()
        return depth[name]

    grouped: dict = {}
    for bias in biases:
        grouped.setdefault(level(bias.node.output[0]), []).append(bias)
    return [grouped[key] for key in sorted(grouped)]


# Nodes that only move values around (or quantize them) between the last convolution and
# the Sigmoid.
_PASS_THROUGH = ("DepthToSpace", "Reshape", "Transpose", "Identity", "QuantizeLinear", "DequantizeLinear")


def _logit_convs(graph, producers: dict) -> set:
    """Outputs of the convolutions that make the Sigmoid's input (the logits)."""
    found = set()
    for node in graph.node:
        if node.op_type != "Sigmoid":
            continue
        producer = producers.get(node.input[0])
        while producer is not None and producer.op_type in _PASS_THROUGH:
            producer = producers.get(producer.input[0])
        if producer is not None and producer.op_type == "Conv":
            found.add(producer.output[0])
    return found


def _truncated(model, outputs: Sequence[str]):
    """``model`` cut after ``outputs``: only what they need runs."""
    import onnx

    nodes = _needed_nodes(model.graph, outputs)
    used = {name for node in nodes for name in node.input}
    truncated = onnx.ModelProto()
    truncated.CopyFrom(model)
    graph = truncated.graph
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in outputs)
    del graph.value_info[:]
    return truncated


class _Bias:
    """Where a quantized convolution's bias lives, and how to move it by a float delta."""

    def __init__(self, quantized, node, producers: dict, initializers: dict, int32_biases: bool):
        from onnx import numpy_helper

        self.node, self.kind, self.why = node, None, ""
        self._model, self._initializers = quantized, initializers
        source = node.input[2] if len(node.input) > 2 else ""
        if not source:
            self.kind = "missing"
            weight_dq = producers.get(node.input[1])
            input_dq = producers.get(node.input[0])
            self._int32 = bool(weight_dq is not None and weight_dq.op_type == "DequantizeLinear"
                               and input_dq is not None and input_dq.op_type == "DequantizeLinear"
                               and int32_biases)
            if self._int32:
                self._grid = (_scale(input_dq, initializers) * _scale(weight_dq, initializers)).astype(np.float32)
            return
        if source in initializers:
            if numpy_helper.to_array(initializers[source]).dtype == np.float32:
                self.kind, self._name = "float", source
            else:
                self.why = "its bias is a non-float constant"
            return
        producer = producers.get(source)
        if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in initializers:
            integers = numpy_helper.to_array(initializers[producer.input[0]])
            zero = producer.input[2] if len(producer.input) > 2 else ""
            if integers.dtype == np.int32 and (not zero or not numpy_helper.to_array(initializers[zero]).any()):
                self.kind, self._name = "int32", producer.input[0]
                self._grid = _scale(producer, initializers)
                return
        self.why = "its bias is computed, not a constant"

    def add(self, delta: np.ndarray) -> None:
        from onnx import helper, numpy_helper

        if self.kind == "missing":
            graph, name = self._model.graph, f"{self.node.name or self.node.output[0]}/bias_correction"
            if self._int32:
                self.kind, self._name = "int32", f"{name}_quantized"
                graph.initializer.append(numpy_helper.from_array(np.zeros(delta.shape, np.int32), self._name))
                self._initializers[self._name] = graph.initializer[-1]
                graph.initializer.append(numpy_helper.from_array(self._grid.reshape(-1), f"{name}_scale"))
                # Before the convolution: parsers read nodes in order.
                graph.node.insert(list(graph.node).index(self.node), helper.make_node(
                    "DequantizeLinear", [self._name, f"{name}_scale"], [name],
                    name=f"{name}_DequantizeLinear", axis=0))
            else:
                self.kind, self._name = "float", name
                graph.initializer.append(numpy_helper.from_array(np.zeros(delta.shape, np.float32), name))
                self._initializers[self._name] = graph.initializer[-1]
            if len(self.node.input) > 2:
                self.node.input[2] = name
            else:
                self.node.input.append(name)
        tensor = self._initializers[self._name]
        value = numpy_helper.to_array(tensor)
        if self.kind == "float":
            value = (value.astype(np.float64) + delta).astype(np.float32)
        else:  # whole steps of the bias grid, within int32
            steps = np.round(delta / np.broadcast_to(self._grid.reshape(-1), delta.shape))
            info = np.iinfo(np.int32)
            value = np.clip(value.astype(np.int64) + steps.astype(np.int64), info.min, info.max).astype(np.int32)
        tensor.CopyFrom(numpy_helper.from_array(value, self._name))


def _scale(dequantize, initializers: dict) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(initializers[dequantize.input[1]]).astype(np.float64).reshape(-1)


def _int32_biases(graph, initializers: dict) -> bool:
    """True when the graph's convolutions take int32 biases (the CPU target)."""
    from onnx import TensorProto

    return any(n.op_type == "DequantizeLinear" and n.input[0] in initializers
               and initializers[n.input[0]].data_type == TensorProto.INT32 for n in graph.node)


def correct_biases(
    float_model,
    quantized,
    images: Sequence[Union[str, Path]],
    *,
    frames: int = FRAMES,
    limit_side_len: int = 736,
    limit_type: str = "min",
    input_size: Optional[tuple] = None,
    threads: Optional[int] = None,
    seed: int = 0,
    progress: bool = True,
):
    """A copy of the Q/DQ model ``quantized`` whose convolutions' per-channel output
    means match ``float_model``'s on calibration frames; returns (model, report).

    Args:
        float_model: the deployable FP32 ModelProto ``quantized`` was made from.
        quantized: a Q/DQ ModelProto from ``quantize_int8`` (either target).
        images: calibration images; ``frames`` of them (a random choice, or all when
            fewer) are run.
        limit_side_len, limit_type, input_size: how frames are made (as the detector will).
        threads: ONNX Runtime threads (default: all cores).

    Convolutions whose output is not a convolution's output in the float model (renamed
    by a rewrite, or a Relu the CPU target leaves to the output's range) are left as they
    are and listed in the report.

    Raises:
        InvalidInputError: no images, bad numbers.
        ModelError: a model without edgedb's spec, or with no convolution in common.
    """
    import onnx
    import onnxruntime as ort
    from tqdm import tqdm

    from edgedb.sessions import fuses_qdq, session_options
    from edgedb.precision.calibration import ACTIVATION_BUDGET, _ExposedActivations, prepared_frames
    from edgedb.spec import PRECISION_KEY, append_to_precision, spec_from_metadata

    begin = time.perf_counter()
    images = [Path(p) for p in images]
    if not images:
        raise InvalidInputError("bias correction needs calibration images")
    integer_at_least("frames", frames, 1)
    spec = spec_from_metadata(quantized)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("bias correction needs the INT8 model edgedb quantize wrote")

    corrected = onnx.ModelProto()
    corrected.CopyFrom(quantized)
    graph = corrected.graph
    float_producers = {o: n.op_type for n in float_model.graph.node for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    initializers = _initializers(graph)
    logits = _logit_convs(graph, producers)
    int32_biases = _int32_biases(graph, initializers)
    biases, skipped = [], []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        if node.output[0] in logits:
            # Most of a map is background, where the logits sit deep in the sigmoid's flat
            # tail and their errors do not matter; their mean would move the text's logits.
            skipped.append((node.name, "it makes the map's logits"))
            continue
        made_by = float_producers.get(node.output[0])
        if made_by != "Conv":
            # Renamed by a rewrite, or a float activation the quantized graph leaves to
            # its output's range (a Relu): not the same tensor.
            why = "not a tensor of the float model" if made_by is None else f"made by a {made_by} in the float model"
            skipped.append((node.name, f"its output is {why}"))
            continue
        bias = _Bias(corrected, node, producers, initializers, int32_biases)
        if bias.kind is None:
            skipped.append((node.name, bias.why))
        else:
            biases.append(bias)
    if not biases:
        raise ModelError("no convolution of the quantized model has an output of the same name in the float model: "
                         "give the FP32 model the INT8 model was quantized from")

    rng = np.random.default_rng(seed)
    chosen = images if len(images) <= frames else [images[i] for i in sorted(rng.choice(len(images), frames, replace=False))]
    prepared = list(prepared_frames(chosen, limit_side_len=limit_side_len, limit_type=limit_type,
                                    input_size=input_size))
    names = [b.node.output[0] for b in biases]

    def channel_means(values: np.ndarray) -> np.ndarray:
        return values.mean(axis=(0, 2, 3), dtype=np.float64) if values.ndim == 4 else values.mean(axis=0, dtype=np.float64)

    reference = dict.fromkeys(names, 0.0)
    exposed = _ExposedActivations(float_model, names, spec.input_name, threads, ACTIVATION_BUDGET)
    for frame in tqdm(prepared, desc="bias correction: FP32", unit="frame", disable=not progress):
        for name, values in exposed(frame):
            reference[name] = reference[name] + channel_means(values) / len(prepared)
            del values
    del exposed

    groups = _levels(graph, biases)
    # Measured as the model will run: for the TensorRT target, without ONNX Runtime's
    # Q/DQ fusions, whose values depend on which tensors each truncated graph exposes.
    precision = {p.key: p.value for p in quantized.metadata_props}.get(PRECISION_KEY, "")
    options = session_options(threads, qdq_transforms=fuses_qdq(precision))
    shift = 0.0
    for batch in tqdm(groups, desc="bias correction", unit="run", disable=not progress):
        outputs = [b.node.output[0] for b in batch]
        session = ort.InferenceSession(_truncated(corrected, outputs).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        current = dict.fromkeys(outputs, 0.0)
        for frame in prepared:
            for name, values in zip(outputs, session.run(outputs, {spec.input_name: frame})):
                current[name] = current[name] + channel_means(values) / len(prepared)
        for bias in batch:
            name = bias.node.output[0]
            delta = reference[name] - current[name]
            shift = max(shift, float(np.abs(delta).max() / max(np.abs(reference[name]).max(), 1e-12)))
            bias.add(delta)
    append_to_precision(corrected, BIAS_CORRECTION_SUFFIX)
    report = BiasCorrectionReport(len(biases), skipped, len(prepared), len(groups),
                                  time.perf_counter() - begin, shift)
    log.info("bias correction: %d convolutions corrected, %d left (%s), %d frames, %d runs, %.1f s; "
             "largest shift %.1f%% of a channel mean", report.corrected, len(skipped), skipped[:3], report.frames,
             report.runs, report.seconds, 100 * shift)
    return corrected, report
