"""Quantization-aware training by distillation: INT8 that reproduces the FP32 map.

Post-training INT8 rounds every weight to its nearest level and clips activations where
calibration says; some DBNets lose text that way. Here the post-training Q/DQ model itself
becomes a PyTorch model that simulates its own quantization (``fake_quant_graph``):

- each quantized activation (a QuantizeLinear/DequantizeLinear pair) is one fake-quant
  step with the pair's scale and zero point, whose gradient passes straight through
  inside the range and stops outside it;
- each integer weight tensor behind a DequantizeLinear becomes a trainable tensor in
  units of its quantization step (the rounding and clamp to the post-training range
  happen in the forward pass, straight-through); int32 biases train in float units and
  are rounded to their grid; float constants the target keeps float (TensorRT's biases)
  train as they are.

The quantization is thus the post-training model's: same Q/DQ positions, scales and
zero points, per-channel weights, signed or unsigned activations, 7-bit CPU weights.
Training moves the integer weights (and biases) so that the quantized network's
probability map matches the FP32 model's on the calibration images: no labels. The loss
(``distillation_loss``) weighs text regions and their borders as much as the mostly
empty rest of the map. ``export_qdq`` writes the trained integers into a copy of the
post-training model, so the result is the same kind of Q/DQ ONNX, node for node.

Progress is measured where it counts: every few steps the model is exported and run by
ONNX Runtime on held-back calibration frames, and the boxes formed from its map are
scored against those formed from FP32's (``box_agreement``, the binarized map's IoU
breaking ties). The same measure chooses where training starts: the post-training model,
or its bias correction (``correct_biases``) when that agrees better with FP32 on every
calibration frame the correction did not fit, since the correction is a heuristic that
helps some DBNets and hurts others. Labels, when some calibration images have them, make
that choice instead (hmean against them): the two models often agree with FP32 equally
well within the noise of 50 frames and differ in what users measure (bench/RESULTS.md).
``distill_int8`` gives back no model when nothing beat its start on the held-back frames.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb._checks import integer_at_least
from edgedb.errors import InvalidInputError, ModelError

log = logging.getLogger(__name__)

QAT_DOMAIN = "edgedb.qat"
QAT_SUFFIX = "-qat"  # appended to the model's precision metadata
# Integer weights never leave the range post-training quantization gave them: 7-bit CPU
# weights stay within +-64, 8-bit ones within +-127 (symmetric, as TensorRT wants).
_SEVEN_BIT_LIMIT = 64
_INTEGER_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


@dataclass
class _Latent:
    """A trainable stand-in for an integer initializer behind a DequantizeLinear."""

    name: str  # the float initializer that trains
    target: str  # the integer initializer it is written back to
    dtype: np.dtype
    qmin: int
    qmax: int
    integer_units: bool  # True: values in quantization steps; False: in float (int32 biases)
    scale: np.ndarray  # float units only: the grid step, broadcastable to the tensor


@dataclass
class FakeQuantGraph:
    """``model``: the Q/DQ graph with fake-quant nodes and float latent initializers;
    ``latents``: how each latent maps back to the post-training model's integers."""

    model: object
    latents: dict  # latent name -> _Latent
    logit: str  # the Sigmoid's input
    prob: str
    # (QuantizeLinear scale, DequantizeLinear scale, the second over the first) per
    # activation pair: the pair's scales differ where a scalar Mul was folded in.
    scales: list = field(default_factory=list)

    @property
    def activation_scales(self) -> list:
        return sorted({q for q, _, _ in self.scales})


def _initializers(graph) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def _axis_shape(scale: np.ndarray, rank: int, axis: int) -> tuple:
    if scale.size == 1:
        return ()
    shape = [1] * rank
    shape[axis % rank] = scale.size
    return tuple(shape)


def fake_quant_graph(quantized) -> FakeQuantGraph:
    """The Q/DQ ``quantized`` model rewritten for training (see the module docstring).

    The integer latents start at the post-training integers, the centres of their
    rounding intervals: a rounding changes only after the gradient has pushed one way for
    a while. (Starting from the unrounded weights, every close call flips on the first
    noisy steps, and the map got worse: binarized-map IoU 0.88 -> 0.82 on PP-OCRv5 det.)

    Raises:
        ModelError: the model has no Q/DQ nodes, a QuantizeLinear read by anything but
            DequantizeLinear nodes, or not exactly one Sigmoid computing the map (the
            only Sigmoid, or the only one that writes a graph output).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = quantized.graph
    values = _initializers(graph)
    readers: dict = {}
    producers = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
        for name in node.output:
            producers[name] = node
    if not any(n.op_type == "DequantizeLinear" for n in graph.node):
        raise ModelError("the model has no DequantizeLinear nodes: give the INT8 (Q/DQ) model edgedb quantize wrote")
    sigmoids = [n for n in graph.node if n.op_type == "Sigmoid"]
    if len(sigmoids) > 1:  # GELU as x·sigmoid(1.702x) (the CPU target) adds some: the map's is an output
        outputs = {o.name for o in graph.output}
        sigmoids = [n for n in sigmoids if n.output[0] in outputs]
    if len(sigmoids) != 1:
        raise ModelError(f"expected one Sigmoid that computes the probability map, found {len(sigmoids)}")

    nodes, latents, new_initializers, scales = [], {}, [], []
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            others = [r.op_type for r in readers.get(node.output[0], []) if r.op_type != "DequantizeLinear"]
            if others:
                raise ModelError(f"QuantizeLinear {node.name!r} is read by {others}: only Q/DQ pairs are supported")
            continue  # fused into the DequantizeLinear nodes that read it
        if node.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        source = node.input[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        quantize = producers.get(source)
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            zero = values.get(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else np.uint8(0)
            dq_zero = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.uint8(0)
            if zero is None or dq_zero is None or not np.array_equal(zero, dq_zero):
                raise ModelError(f"DequantizeLinear {node.name!r} and its QuantizeLinear have different zero points")
            qmin, qmax = _INTEGER_RANGES[np.asarray(zero).dtype]
            q_scale, dq_scale = values[quantize.input[1]], values[node.input[1]]
            if q_scale.size != 1 or dq_scale.size != 1:
                raise ModelError(f"{node.name!r}: per-channel activation quantization is not supported")
            ratio = float(dq_scale.reshape(-1)[0]) / float(q_scale.reshape(-1)[0])
            scales.append((quantize.input[1], node.input[1], ratio))
            nodes.append(helper.make_node(
                "FakeQuant", [quantize.input[0], quantize.input[1], quantize.input[2]],
                list(node.output), name=node.name, domain=QAT_DOMAIN, qmin=qmin, qmax=qmax, ratio=ratio))
            continue
        integers = values.get(source)
        if integers is None or integers.dtype.kind not in "iu" or integers.size <= 1:
            nodes.append(node)  # the uint8 frame, or a scalar literal: as it is
            continue
        scale = values[node.input[1]].astype(np.float32)
        zero = values[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, integers.dtype)
        shape = _axis_shape(scale, integers.ndim, axis)
        name = f"{source}/qat_latent"
        if integers.dtype == np.int32:  # a bias on the grid scale_in * scale_w: float units
            grid = scale.reshape(shape)
            latent = ((integers.astype(np.float64) - zero.reshape(shape)) * grid).astype(np.float32)
            latents[name] = _Latent(name, source, integers.dtype, int(np.iinfo(np.int32).min),
                                    int(np.iinfo(np.int32).max), False, grid)
        else:
            if integers.dtype == np.int8 and np.all(zero == 0):
                limit = _SEVEN_BIT_LIMIT if np.abs(integers.astype(np.int32)).max() <= _SEVEN_BIT_LIMIT else 127
                qmin, qmax = -limit, limit
            else:
                qmin, qmax = _INTEGER_RANGES[integers.dtype]
            latent = integers.astype(np.float32)
            latents[name] = _Latent(name, source, integers.dtype, qmin, qmax, True, np.ones(()))
        new_initializers.append(numpy_helper.from_array(latent, name))
        nodes.append(helper.make_node(
            "FakeQuantWeight", [name, node.input[1]] + ([node.input[2]] if len(node.input) > 2 else []),
            list(node.output), name=node.name, domain=QAT_DOMAIN, axis=axis,
            qmin=latents[name].qmin, qmax=latents[name].qmax, integer_units=int(latents[name].integer_units)))

    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(quantized)
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    rewritten.graph.initializer.extend(new_initializers)
    if not any(o.domain == QAT_DOMAIN for o in rewritten.opset_import):
        rewritten.opset_import.add(domain=QAT_DOMAIN, version=1)
    return FakeQuantGraph(rewritten, latents, sigmoids[0].input[0], sigmoids[0].output[0], scales)


# --- the fake-quant operators, as OnnxModule builders -----------------------------------


def _builders() -> dict:
    import torch

    def per_axis(value, rank: int, axis: int):
        return value.reshape(_axis_shape(value.numpy(), rank, axis)) if value.numel() > 1 else value

    def dequantize_linear(n):
        axis = n.attr("axis", 1)

        def run(x, scale, zero=None):
            zero = torch.zeros((), dtype=torch.float32) if zero is None else zero.float()
            scale = per_axis(scale, x.dim(), axis)
            return (x.float() - per_axis(zero, x.dim(), axis)) * scale

        return run

    def fake_quant(n):
        qmin, qmax, ratio = n.attr("qmin"), n.attr("qmax"), n.attr("ratio", 1.0)
        zero = int(n.static(2).reshape(-1)[0]) if n.has(2) else 0
        fixed = n.static(1)
        if fixed is not None:
            scale = float(fixed.reshape(-1)[0])

            def run(x, *unused):
                y = torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)
                return y if ratio == 1.0 else y * ratio

            return run
        zero_point = torch.tensor([float(zero)])
        levels = max(abs(qmin - zero), abs(qmax - zero))

        def learned(x, scale, *unused):
            # LSQ (Esser et al.): the scale's gradient scaled by 1/sqrt(elements * levels)
            factor = 1.0 / math.sqrt(x.numel() / x.shape[0] * levels)
            y = torch._fake_quantize_learnable_per_tensor_affine(
                x, scale.reshape(1), zero_point.to(x.device), qmin, qmax, factor)
            return y if ratio == 1.0 else y * ratio

        return learned

    def fake_quant_weight(n):
        qmin, qmax, axis = n.attr("qmin"), n.attr("qmax"), n.attr("axis", 1)
        integer_units = bool(n.attr("integer_units", 1))
        scale, zero = n.static(1), n.static(2)

        def run(latent, *unused):
            step = per_axis(scale, latent.dim(), axis)
            if integer_units:
                levels = latent + (latent.round().clamp(qmin, qmax) - latent).detach()
                offset = per_axis(zero.float(), latent.dim(), axis) if zero is not None else 0.0
                return (levels - offset) * step
            units = latent / step
            return (units + (units.round() - units).detach()) * step

        return run

    return {"DequantizeLinear": dequantize_linear, f"{QAT_DOMAIN}::FakeQuant": fake_quant,
            f"{QAT_DOMAIN}::FakeQuantWeight": fake_quant_weight}


def fake_quant_module(graph: FakeQuantGraph, *, learn_scales: bool = False):
    """The OnnxModule that runs ``graph`` (trainable: the latents and float weights, and
    with ``learn_scales`` the activation scales)."""
    from edgedb.train.onnx_torch import OnnxModule

    trainable = list(graph.latents) + (graph.activation_scales if learn_scales else [])
    return OnnxModule(graph.model, builders=_builders(), trainable=trainable)


def export_qdq(module, graph: FakeQuantGraph, quantized):
    """A copy of the post-training ``quantized`` model with the module's trained integers
    (and float weights) written in: same nodes, names, scales and zero points."""
    import onnx
    from onnx import numpy_helper

    from edgedb.spec import append_to_precision

    exported = onnx.ModelProto()
    exported.CopyFrom(quantized)
    initializers = {t.name: t for t in exported.graph.initializer}
    scale_pairs: dict = {}  # learned QuantizeLinear scale -> its DequantizeLinear scales
    for q_scale, dq_scale, ratio in graph.scales:
        scale_pairs.setdefault(q_scale, [])
        if dq_scale != q_scale:
            scale_pairs[q_scale].append((dq_scale, ratio))
    for key, name in module.onnx_names.items():
        value = module.weights[key].detach().cpu().numpy()
        latent = graph.latents.get(name)
        if name in scale_pairs:
            for dq_scale, ratio in scale_pairs[name]:
                tensor = initializers[dq_scale]
                tensor.CopyFrom(numpy_helper.from_array((value * ratio).astype(np.float32).reshape(
                    numpy_helper.to_array(tensor).shape), dq_scale))
            tensor = initializers[name]
            tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32).reshape(
                numpy_helper.to_array(tensor).shape), name))
            continue
        if latent is None:
            tensor = initializers.get(name)
            if tensor is None:
                raise ModelError(f"the post-training model has no initializer {name!r} to write back")
            tensor.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(tensor).dtype), name))
            continue
        units = value if latent.integer_units else value.astype(np.float64) / latent.scale
        integers = np.clip(np.round(units), latent.qmin, latent.qmax).astype(latent.dtype)
        initializers[latent.target].CopyFrom(numpy_helper.from_array(integers, latent.target))
    _regrid_biases(exported)
    append_to_precision(exported, QAT_SUFFIX)
    return exported


def _regrid_biases(model) -> int:
    """Puts every int32 convolution bias back on the grid input scale x weight scale.

    The activation scales train, and the biases train on the grid of the post-training
    scales. Off that grid, ONNX Runtime no longer fuses the convolution into QLinearConv
    and runs it in float: 28 of PP-OCRv6 small det's 85, 162 against 96 ms a frame. Each
    bias keeps its trained value, rounded to the new grid (half a step at most). Returns
    how many biases moved.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1

    def dequantized(name):
        node = producers.get(name)
        return node if node is not None and node.op_type == "DequantizeLinear" else None

    moved = 0
    for conv in graph.node:
        if conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) < 3 or not conv.input[2]:
            continue
        x, w, b = (dequantized(conv.input[i]) for i in range(3))
        if x is None or w is None or b is None or b.input[0] not in initializers or b.input[1] not in initializers:
            continue
        codes = numpy_helper.to_array(initializers[b.input[0]])
        if codes.dtype != np.int32 or x.input[1] not in initializers or w.input[1] not in initializers:
            continue
        old = numpy_helper.to_array(initializers[b.input[1]]).astype(np.float64)
        grid = (numpy_helper.to_array(initializers[x.input[1]]).astype(np.float64).reshape(())
                * numpy_helper.to_array(initializers[w.input[1]]).astype(np.float64))
        grid = np.broadcast_to(grid, old.shape) if grid.shape != old.shape and grid.size == 1 else grid
        if grid.shape != old.shape or np.allclose(grid, old, rtol=1e-6, atol=0):
            continue
        values = codes.astype(np.float64) * old  # int32 biases have zero point 0
        new_codes = np.clip(np.round(values / grid), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
        scale_name = b.input[1]
        if readers.get(scale_name, 0) > 1:  # a shared scale tensor: this bias gets its own
            scale_name = f"{b.input[1]}/{conv.name}_regrid"
            graph.initializer.append(numpy_helper.from_array(grid.astype(np.float32), scale_name))
            b.input[1] = scale_name
        else:
            initializers[scale_name].CopyFrom(numpy_helper.from_array(grid.astype(np.float32), scale_name))
        initializers[b.input[0]].CopyFrom(numpy_helper.from_array(new_codes, b.input[0]))
        moved += 1
    return moved


# --- the loss ---------------------------------------------------------------------------


def distillation_loss(logit, teacher, *, threshold: float = 0.3, border: int = 2):
    """Binary cross-entropy of the student's map (``logit``, before the Sigmoid) against
    the teacher's probabilities, with text and its borders weighing as much as the rest.

    The region is every pixel within ``border`` pixels of where either map exceeds half
    the binarization threshold: the text kernels box formation reads, their edges, and
    the student's false alarms. Its mean loss and the mean loss elsewhere are added.
    """
    import torch
    import torch.nn.functional as F

    loss = F.binary_cross_entropy_with_logits(logit, teacher, reduction="none")
    with torch.no_grad():
        near = ((teacher > threshold / 2) | (logit.sigmoid() > threshold / 2)).float()
        region = F.max_pool2d(near, 2 * border + 1, stride=1, padding=border)
        rest = 1.0 - region
    inside = (loss * region).sum() / region.sum().clamp(min=1.0)
    outside = (loss * rest).sum() / rest.sum().clamp(min=1.0)
    return inside + outside


def binary_iou(maps: Sequence[np.ndarray], references: Sequence[np.ndarray], threshold: float = 0.3) -> float:
    """IoU of the maps binarized at ``threshold``, pooled over all of them (as
    ``edgedb compare`` pools it)."""
    from edgedb.precision.agreement import binarized_overlap

    overlaps = [binarized_overlap(prob, reference, threshold) for prob, reference in zip(maps, references)]
    union = sum(u for _, u in overlaps)
    return sum(i for i, _ in overlaps) / union if union else 1.0


# --- the loop ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Agreement:
    """A model's map against FP32's on the held-back frames: ``boxes`` (box agreement,
    compared first) and ``iou`` (the binarized maps' IoU)."""

    boxes: float
    iou: float

    def __str__(self) -> str:
        return f"boxes {self.boxes:.4f}, IoU {self.iou:.4f}"


MIN_LABELLED = 4  # labelled frames below which labels do not choose the start


@dataclass(frozen=True)
class StartChoice:
    """How the start was chosen. ``post_training`` and ``corrected``: the two models'
    agreement with FP32 on the ``frames`` calibration frames the correction did not fit;
    ``post_training_hmean`` and ``corrected_hmean``: their hmean against the labels of
    ``labelled`` of those frames (None without labels). The labels decide when at least
    ``MIN_LABELLED`` frames have them, the agreement otherwise and on a tie."""

    post_training: Agreement
    corrected: Agreement
    frames: int
    labelled: int = 0
    post_training_hmean: Optional[float] = None
    corrected_hmean: Optional[float] = None

    @property
    def by_labels(self) -> bool:
        return self.labelled >= MIN_LABELLED

    @property
    def corrected_better(self) -> bool:
        if self.by_labels and self.corrected_hmean != self.post_training_hmean:
            return self.corrected_hmean > self.post_training_hmean
        return self.corrected > self.post_training

    def __str__(self) -> str:
        text = (f"agreement with FP32 on {self.frames} calibration images (boxes: hmean against FP32's boxes; "
                f"IoU: binarized maps): post-training {self.post_training}, bias-corrected {self.corrected}")
        if self.labelled:
            text += (f"; hmean against the labels of {self.labelled}: post-training {self.post_training_hmean:.4f}, "
                     f"bias-corrected {self.corrected_hmean:.4f}")
            if not self.by_labels:
                text += f" (fewer than {MIN_LABELLED} labelled: the agreement decides)"
        return text


@dataclass
class QatResult:
    """``model``: the best Q/DQ model, or None when the post-training model stays best.

    ``start``: where training started, "post-training" or "bias-corrected"; ``choice``:
    the ``StartChoice`` when the correction was tried.
    ``ptq`` and ``best``: the post-training and the chosen model's agreement on the
    held-back frames, where the start and each trained step are compared;
    ``best_step`` 0 when the chosen model is the start itself."""

    ptq: Agreement
    best: Agreement
    best_step: int
    steps: int
    seconds: float  # the whole call: frames, teacher maps, correction, training, measurements
    held_back: int
    start: str = "post-training"
    choice: Optional[StartChoice] = None
    model: Optional[object] = None
    history: list = field(default_factory=list)  # (step, loss, Agreement or None)

    @property
    def improved(self) -> bool:
        return self.model is not None


def _crop_origins(frame_shape, text: np.ndarray, size: tuple, rng) -> tuple:
    """Top-left corner of a crop of ``size``: around a random text pixel two times in
    three (when the frame has text), else anywhere."""
    height, width = frame_shape
    ch, cw = size
    if len(text) and rng.random() < 2 / 3:
        y, x = text[rng.integers(len(text))]
        top, left = y - rng.integers(ch), x - rng.integers(cw)
    else:
        top, left = rng.integers(height - ch + 1), rng.integers(width - cw + 1)
    return int(np.clip(top, 0, height - ch)), int(np.clip(left, 0, width - cw))


def distill_int8(
    float_model,
    quantized,
    images: Sequence[Union[str, Path]],
    *,
    steps: int = 300,
    batch_size: int = 4,
    crop: int = 384,
    lr: float = 0.02,
    float_lr: float = 0.0,
    scale_lr: float = 1e-3,
    held_back: Optional[int] = None,
    bias_correction: bool = True,
    ground_truth: Optional[Sequence] = None,
    val_every: Optional[int] = None,
    patience: int = 4,
    time_limit: Optional[float] = 600.0,
    limit_side_len: int = 736,
    limit_type: str = "min",
    input_size: Optional[tuple] = None,
    threshold: float = 0.3,
    threads: Optional[int] = None,
    device: Optional[str] = None,
    seed: int = 0,
    progress: bool = True,
) -> QatResult:
    """Trains the post-training INT8 model ``quantized`` to reproduce ``float_model``'s map.

    Args:
        float_model: the deployable FP32 ModelProto ``quantized`` came from.
        quantized: the Q/DQ ModelProto ``quantize_int8`` wrote (either target): what a
            trained model must beat.
        images: calibration images; ``held_back`` of them (default: a fifth, 2 to 12) are
            kept out of training (and out of the bias correction) to measure agreement
            with FP32.
        bias_correction: also correct ``quantized``'s biases (``correct_biases``, fitted
            on 12 training images) and start from the corrected model when it agrees
            better with FP32 on all the other images.
        ground_truth: labels, one entry per image: its boxes in its own pixels
            (``GroundTruthBox`` objects or polygons, as ``evaluate_image`` takes them), or
            None for an unlabelled image. When at least 4 of the images the correction
            does not fit have labels, the start is the model with the higher hmean
            against them. Training itself needs no labels.
        steps, batch_size, crop: optimizer steps, crops per step, crop side (pixels,
            rounded down to the model's stride). 300 steps take 1 to 2.2 s each on 2 CPU
            cores; early stopping ends most runs sooner, ``time_limit`` the rest
            (bench/RESULTS.md).
        lr: Adam's learning rate for the integer weights, in quantization steps.
        float_lr: Adam's learning rate for the weights the target keeps float (TensorRT's
            biases, ...) and int32 biases, relative to each tensor's mean magnitude; 0
            keeps them fixed.
        scale_lr: learning rate of the activation scales (LSQ), relative to each scale; 0
            keeps the post-training scales.
        val_every: steps between measurements on the held-back frames (default steps / 10).
        patience: stop after this many measurements without a better agreement.
        time_limit: seconds for the whole call; training stops with a last measurement
            when the next one would end past it (None: no limit).
        limit_side_len, limit_type, input_size: how frames are made (as the detector will).
        threshold: the binarization threshold the IoU and loss use.
        threads: CPU threads (default: the free cores). device: "cpu" or "cuda".

    Raises:
        InvalidInputError: fewer than 4 images, bad numbers.
        MissingDependencyError: PyTorch is not installed.
    """
    from edgedb.train.trainer import free_cores, import_torch

    torch = import_torch()
    from tqdm import tqdm

    from edgedb.backends.onnxrt import OnnxRuntimeBackend
    from edgedb.precision.calibration import prepared_images
    from edgedb.precision.agreement import box_agreement, label_hmean
    from edgedb.spec import spec_from_metadata

    begin = time.perf_counter()
    images = [Path(p) for p in images]
    if len(images) < 4:
        raise InvalidInputError(f"quantization-aware training needs at least 4 calibration images, got {len(images)}")
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("crop", crop, 32),
                             ("patience", patience, 1)):
        integer_at_least(name, value, low)
    if time_limit is not None and not time_limit > 0:
        raise InvalidInputError(f"time_limit must be positive seconds or None, not {time_limit!r}")
    if ground_truth is not None and len(ground_truth) != len(images):
        raise InvalidInputError(f"ground_truth has {len(ground_truth)} entries for {len(images)} images: "
                                "give one per image (None for an unlabelled one)")
    if not lr > 0 or not float_lr >= 0:
        raise InvalidInputError(f"lr must be positive and float_lr not negative, not {lr!r} and {float_lr!r}")
    spec = spec_from_metadata(quantized)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("quantization-aware training needs the INT8 model edgedb quantize wrote")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    threads = threads or free_cores()
    torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    # A fifth held back: choosing among checkpoints on a handful of frames picked noise
    # (bench/RESULTS.md: six frames' best map IoU was a worse hmean on fifty).
    held = held_back if held_back is not None else int(np.clip(round(len(images) / 5), 2, 12))
    if not 1 <= held < len(images) - 1:
        raise InvalidInputError(f"held_back must leave at least 2 of the {len(images)} images for training")
    order = rng.permutation(len(images))
    prepared = list(prepared_images(images, limit_side_len=limit_side_len, limit_type=limit_type,
                                    input_size=input_size))
    frames = [p.frame[None] for p in prepared]
    fp32 = OnnxRuntimeBackend(float_model, threads=threads)

    def teacher(frames: np.ndarray) -> np.ndarray:
        """The FP32 probability maps of uint8 frames (N, H, W, 3)."""
        return fp32.infer({spec.input_name: frames})[spec.prob_output]

    check_frames = [frames[i] for i in order[:held]]
    train_frames = [frames[i] for i in order[held:]]
    reference = [teacher(f)[0, 0] for f in tqdm(check_frames, desc="teacher", unit="frame", disable=not progress)]
    # Where the text is, to centre most crops on it (pixel coordinates, subsampled).
    text = []
    for frame in tqdm(train_frames, desc="text", unit="frame", disable=not progress):
        ys, xs = np.nonzero(teacher(frame)[0, 0] > threshold)
        text.append(np.stack([ys, xs], axis=1)[:: max(1, len(ys) // 4096)])
    stride = spec.stride
    side = min([crop] + [min(f.shape[1:3]) for f in train_frames])
    size = (side // stride * stride,) * 2
    if size[0] < stride:
        raise InvalidInputError(f"frames are smaller than the model's stride {stride}")

    def maps_of(model, on) -> list:
        with OnnxRuntimeBackend(model, threads=threads) as session:
            return [session.infer({spec.input_name: f})[spec.prob_output][0, 0] for f in on]

    def against(maps, references) -> Agreement:
        return Agreement(box_agreement(maps, references, thresh=threshold), binary_iou(maps, references, threshold))

    began = time.perf_counter()
    ptq_maps = maps_of(quantized, check_frames)
    ptq = against(ptq_maps, reference)
    # A measurement's duration, to stop within time_limit; each one in the loop replaces it.
    measure_seconds = time.perf_counter() - began
    start, start_name, choice, best = quantized, "post-training", None, ptq
    if bias_correction:
        from edgedb.precision.bias_correction import FRAMES, correct_biases

        fitted = set(order[held: held + FRAMES].tolist())
        candidate, _ = correct_biases(float_model, quantized, [images[i] for i in sorted(fitted)],
                                      frames=len(fitted), limit_side_len=limit_side_len, limit_type=limit_type,
                                      input_size=input_size, threads=threads, seed=seed, progress=progress)
        # Two fixed models, nothing trained yet: judged on every frame the correction did
        # not fit, not only the held-back ones (on 12 frames the choice followed the sample:
        # bench/RESULTS.md).
        others = [i for i in order[held:] if i not in fitted]
        judged = list(order[:held]) + others  # the held-back frames' maps are already made
        references = reference + [teacher(frames[i])[0, 0] for i in tqdm(others, desc="teacher", unit="frame",
                                                                          disable=not progress)]
        labelled = [k for k, i in enumerate(judged) if ground_truth is not None and ground_truth[i] is not None]

        def judge(model, held_maps: list) -> tuple:
            maps = held_maps + maps_of(model, [frames[i] for i in others])
            hmean = label_hmean([maps[k] for k in labelled], [prepared[judged[k]] for k in labelled],
                                [ground_truth[judged[k]] for k in labelled], thresh=threshold) if labelled else None
            return against(maps, references), hmean

        corrected_maps = maps_of(candidate, check_frames)
        ptq_all, ptq_hmean = judge(quantized, ptq_maps)
        corrected_all, corrected_hmean = judge(candidate, corrected_maps)
        choice = StartChoice(ptq_all, corrected_all, len(judged), len(labelled), ptq_hmean, corrected_hmean)
        log.info("%s", choice)
        if choice.corrected_better:
            start, start_name, best = candidate, "bias-corrected", against(corrected_maps, reference)

    graph = fake_quant_graph(start)
    module = fake_quant_module(graph, learn_scales=scale_lr > 0).to(device)
    kinds = {"integer": [], "scale": [], "float": []}
    scale_names = set(graph.activation_scales)
    for key, param in module.weights.items():
        name = module.onnx_names[key]
        if name in graph.latents and graph.latents[name].integer_units:
            kinds["integer"].append(param)
        else:
            kinds["scale" if name in scale_names else "float"].append(param)
    integer_params, float_params = kinds["integer"], kinds["float"]
    # Adam moves every tensor by about its learning rate per step, whatever its size: the
    # float tensors (biases from 1e-3 to 10) each get a rate relative to their magnitude.
    groups = [{"params": integer_params, "lr": lr, "base": lr}]
    for param in float_params if float_lr else ():
        rate = float_lr * max(float(param.detach().abs().mean()), 1e-8)
        groups.append({"params": [param], "lr": rate, "base": rate})
    for param in float_params if not float_lr else ():
        param.requires_grad_(False)
    for param in kinds["scale"]:
        rate = scale_lr * float(param.detach().abs().mean())
        groups.append({"params": [param], "lr": rate, "base": rate})
    optimizer = torch.optim.Adam(groups)

    best_step, best_model, misses = 0, (start if start is not quantized else None), 0
    val_every = val_every or max(1, steps // 10)
    history = []
    bar = tqdm(range(steps), desc="qat", unit="step", disable=not progress)
    bar.set_postfix(boxes=f"{best.boxes:.4f}", iou=f"{best.iou:.4f}")
    module.train(True)
    for step in bar:
        step_began = time.perf_counter()
        batch = np.empty((batch_size, *size, 3), np.uint8)
        for b in range(batch_size):
            index = int(rng.integers(len(train_frames)))
            frame = train_frames[index][0]
            top, left = _crop_origins(frame.shape[:2], text[index], size, rng)
            batch[b] = frame[top: top + size[0], left: left + size[1]]
        target = torch.from_numpy(teacher(batch)).to(device)
        logit = module(torch.from_numpy(batch).to(device), outputs=[graph.logit])[graph.logit]
        loss = distillation_loss(logit, target, threshold=threshold)
        for group in optimizer.param_groups:  # cosine decay
            group["lr"] = group["base"] * 0.5 * (1 + np.cos(np.pi * step / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        measured, now = None, time.perf_counter()
        # Another step must leave time for its own measurement and a last one.
        out_of_time = time_limit is not None and (
            now - begin + (now - step_began) + 2 * measure_seconds >= time_limit)
        if (step + 1) % val_every == 0 or step + 1 == steps or out_of_time:
            began = time.perf_counter()
            model = export_qdq(module, graph, start)
            measured = against(maps_of(model, check_frames), reference)
            measure_seconds = time.perf_counter() - began  # the export included
            if measured > best:
                best, best_step, best_model, misses = measured, step + 1, model, 0
            else:
                misses += 1
            bar.set_postfix(loss=f"{loss.item():.4f}", boxes=f"{measured.boxes:.4f}", iou=f"{measured.iou:.4f}",
                            best=f"{best.boxes:.4f}")
        history.append((step + 1, float(loss.item()), measured))
        if out_of_time:
            log.info("stopping at step %d: the time limit of %.0f s is near", step + 1, time_limit)
            break
        if misses >= patience:
            log.info("stopping at step %d: no better agreement in %d measurements", step + 1, patience)
            break
    bar.close()
    fp32.close()
    seconds = time.perf_counter() - begin
    return QatResult(ptq, best, best_step, len(history), seconds, held, start_name, choice, best_model, history)
