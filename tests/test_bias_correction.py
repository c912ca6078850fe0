"""Bias correction: after it, each quantized convolution's per-channel output means are
FP32's, on both INT8 targets, with the graph in the same form (biases changed in place,
missing ones added of the target's kind)."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgedb import InvalidInputError, ModelError
from edgedb.backends.onnxrt import cpu_session
from edgedb.precision.bias_correction import BIAS_CORRECTION_SUFFIX, correct_biases
from edgedb.precision.calibration import calibration_images, collect_stats, prepared_frames
from edgedb.precision.int8 import quantize_int8
from edgedb.spec import PRECISION_KEY
from edgedb.synthetic import make_text_image

SIZE = (320, 480)


@pytest.fixture(scope="module")
def calib_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bias_calib")
    for seed in range(4):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(120 + seed, size=SIZE).image)
    return calibration_images(folder)


@pytest.fixture(scope="module")
def unbiased_fp32(fp32):
    """The default model with the first three convolutions' biases taken away."""
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    for node in [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2][:3]:
        del node.input[2]
    return model


@pytest.fixture(scope="module")
def quantized(unbiased_fp32, calib_images, tmp_path_factory):
    stats = collect_stats(unbiased_fp32, calib_images, input_size=SIZE,
                          cache_dir=tmp_path_factory.mktemp("bias_stats"), progress=False)
    return {target: quantize_int8(unbiased_fp32, stats, target=target) for target in ("tensorrt", "cpu")}


def conv_means(model, names, frames):
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    augmented.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session, _ = cpu_session(augmented.SerializeToString())  # as EdgeDetector runs it
    sums = dict.fromkeys(names, 0.0)
    for frame in frames:
        for name, value in zip(names, session.run(names, {"image": frame})):
            sums[name] = sums[name] + value.mean(axis=(0, 2, 3), dtype=np.float64)
    return {name: value / len(frames) for name, value in sums.items()}


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_channel_means_come_back_to_fp32(unbiased_fp32, quantized, calib_images, target):
    corrected, report = correct_biases(unbiased_fp32, quantized[target], calib_images, input_size=SIZE,
                                       progress=False)
    convs = [n for n in corrected.graph.node if n.op_type == "Conv"]
    assert report.corrected + len(report.skipped) == len(convs)
    assert report.corrected >= len(convs) * 0.75  # the CPU target leaves Relus to output ranges
    assert report.frames == len(calib_images) and report.runs < report.corrected
    float_convs = {n.output[0] for n in unbiased_fp32.graph.node if n.op_type == "Conv"}
    left = {name for name, _ in report.skipped}
    names = [n.output[0] for n in convs if n.output[0] in float_convs and n.name not in left]
    assert len(names) == report.corrected
    frames = list(prepared_frames(calib_images, limit_side_len=736, limit_type="min", input_size=SIZE))
    reference = conv_means(unbiased_fp32, names, frames)
    before = conv_means(quantized[target], names, frames)
    after = conv_means(corrected, names, frames)
    error = {label: np.mean([np.abs(means[n] - reference[n]).mean() for n in names])
             for label, means in (("before", before), ("after", after))}
    # What is left comes from rounding (CPU: int32 steps and requantized outputs).
    assert error["after"] < error["before"] / 20, error


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_the_graph_keeps_its_form(unbiased_fp32, quantized, calib_images, target):
    model = quantized[target]
    corrected, _ = correct_biases(unbiased_fp32, model, calib_images, input_size=SIZE, frames=2,
                                  progress=False)
    added = [n for n in corrected.graph.node if n.name.endswith("/bias_correction_DequantizeLinear")]
    assert [n.op_type for n in corrected.graph.node if n not in added] == [n.op_type for n in model.graph.node]
    onnx.checker.check_model(corrected)
    precision = {p.key: p.value for p in corrected.metadata_props}[PRECISION_KEY]
    assert precision.endswith(BIAS_CORRECTION_SUFFIX) and precision.startswith("int8-" + target)
    # The convolutions that had no bias got one of the target's kind: float for TensorRT,
    # int32 on the grid input scale x weight scale for the CPU.
    initializers = {t.name: numpy_helper.to_array(t) for t in corrected.graph.initializer}
    producers = {o: n for n in corrected.graph.node for o in n.output}
    unbiased = {n.name for n in model.graph.node if n.op_type == "Conv" and (len(n.input) < 3 or not n.input[2])}
    stripped = [n for n in corrected.graph.node if n.name in unbiased]
    # (the three stripped and PP-OCRv4's own; the CPU target folds the frame's
    # normalization into the first convolution, bias included)
    assert len(stripped) >= 2
    for conv in stripped:
        assert len(conv.input) == 3 and conv.input[2].endswith("/bias_correction")
        if target == "tensorrt":
            assert initializers[conv.input[2]].dtype == np.float32
        else:
            dequantize = producers[conv.input[2]]
            assert dequantize.op_type == "DequantizeLinear"
            assert initializers[dequantize.input[0]].dtype == np.int32
            position = list(corrected.graph.node).index
            assert position(dequantize) < position(conv)
    # Everything but biases is untouched.
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    changed = [name for name, value in original.items() if not np.array_equal(value, initializers[name])]
    bias_inputs = {n.input[2] for n in corrected.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    bias_sources = bias_inputs | {producers[b].input[0] for b in bias_inputs if b in producers}
    assert changed and set(changed) <= bias_sources
    # And it runs.
    frame = next(prepared_frames(calib_images[:1], limit_side_len=736, limit_type="min", input_size=SIZE))
    session = ort.InferenceSession(corrected.SerializeToString(), providers=["CPUExecutionProvider"])
    prob = session.run(["prob"], {"image": frame})[0]
    assert prob.shape[-2:] == SIZE and np.isfinite(prob).all()


def test_arguments_are_checked(unbiased_fp32, quantized, calib_images):
    with pytest.raises(InvalidInputError, match="calibration images"):
        correct_biases(unbiased_fp32, quantized["tensorrt"], [], progress=False)
    with pytest.raises(InvalidInputError, match="frames"):
        correct_biases(unbiased_fp32, quantized["tensorrt"], calib_images, frames=0, progress=False)
    with pytest.raises(ModelError, match="quantized from"):
        renamed = onnx.ModelProto()
        renamed.CopyFrom(unbiased_fp32)
        for node in renamed.graph.node:
            node.output[:] = [f"other/{o}" for o in node.output]
        correct_biases(renamed, quantized["tensorrt"], calib_images, progress=False)
    with pytest.raises(ModelError, match="edgedb quantize"):
        correct_biases(unbiased_fp32, onnx.ModelProto(), calib_images, progress=False)


def test_quantize_cli_bias_correction(calib_images, tmp_path, capsys):
    from edgedb.cli import main

    out = tmp_path / "int8-bc.onnx"
    code = main(["quantize", "ppocrv4-det", "--calib", str(calib_images[0].parent), "--bias-correction",
                 "--target", "cpu", "--input-size", f"{SIZE[0]}x{SIZE[1]}", "--cache", str(tmp_path),
                 "-o", str(out)])
    assert code == 0
    assert "bias correction:" in capsys.readouterr().out
    precision = {p.key: p.value for p in onnx.load(str(out)).metadata_props}[PRECISION_KEY]
    assert precision == "int8-cpu-percentile" + BIAS_CORRECTION_SUFFIX


def test_the_logits_convolution_is_left_alone(unbiased_fp32, quantized, calib_images):
    """Most of the map is background, deep in the sigmoid's flat tail: the mean of its
    logits says nothing about the text's."""
    model = quantized["tensorrt"]
    _, report = correct_biases(unbiased_fp32, model, calib_images, input_size=SIZE, frames=1, progress=False)
    assert [why for _, why in report.skipped] == ["it makes the map's logits"]
