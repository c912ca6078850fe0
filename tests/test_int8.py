"""INT8 quantization: calibration sets, cached statistics, Q/DQ placement per target,
ranges per method, the sensitivity search, and the quantize/compare CLI."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edgedb import InvalidInputError, ModelError
from edgedb.cli import main
from edgedb.precision.calibration import CalibrationStats, calibration_images, collect_stats
from edgedb.precision.int8 import LOGIT_LIMIT, activation_ranges, quantize_int8, sensitive_layers
from edgedb.preprocess import prepare_fixed
from edgedb.synthetic import make_dataset, make_text_image

SIZE = (320, 480)  # small fixed frames keep the suite fast


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for seed in range(3):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(40 + seed, size=SIZE).image)
    return folder


@pytest.fixture(scope="module")
def stats(fp32, calib_dir, tmp_path_factory):
    return collect_stats(fp32, calibration_images(calib_dir), input_size=SIZE,
                         cache_dir=tmp_path_factory.mktemp("stats"), progress=False)


def run(model, frame):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["prob"], {"image": frame})[0][0, 0]


def test_calibration_sets(tmp_path, calib_dir):
    assert len(calibration_images(calib_dir)) == 3
    listing = tmp_path / "list.txt"
    listing.write_text("# two of them\n" + "\n".join(str(p) for p in sorted(calib_dir.iterdir())[:2]) + "\n")
    assert len(calibration_images(listing)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no images"):
        calibration_images(tmp_path / "empty")
    with pytest.raises(InvalidInputError, match="does not exist"):
        calibration_images(tmp_path / "missing")
    listing.write_text("nowhere.jpg\n")
    with pytest.raises(InvalidInputError, match="not found"):
        calibration_images(listing)


def test_unreadable_image_and_model_without_spec(tmp_path, fp32):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InvalidInputError, match="cannot be read"):
        collect_stats(fp32, calibration_images(bad), input_size=SIZE, cache_dir=None, progress=False)
    from edgedb.models import resolve_model

    raw = onnx.load(str(resolve_model("ppocrv4-det")))
    with pytest.raises(ModelError, match="rewrite"):
        collect_stats(raw, calibration_images(bad), cache_dir=None, progress=False)


def test_statistics_are_cached(fp32, calib_dir, tmp_path):
    first = collect_stats(fp32, calibration_images(calib_dir), input_size=SIZE, cache_dir=tmp_path, progress=False)
    cached = list(tmp_path.glob("stats-*.npz"))
    assert len(cached) == 1
    again = CalibrationStats.load(cached[0])
    assert again.key == first.key and set(again) == set(first)
    name = next(iter(first))
    np.testing.assert_array_equal(again[name].histogram, first[name].histogram)


def test_methods_order_their_ranges(stats):
    ranges = {m: activation_ranges(stats, m, symmetric=True) for m in ("max", "percentile", "entropy", "mse")}
    for name, (low, high) in ranges["max"].items():
        assert low == -high
        for method in ("percentile", "entropy", "mse"):
            assert ranges[method][name][1] <= high + 1e-6
    with pytest.raises(InvalidInputError):
        activation_ranges(stats, "kl", symmetric=True)


def test_mse_clips_rare_outliers_only():
    from edgedb.precision.calibration import TensorStats
    from edgedb.precision.int8 import HISTOGRAM_BINS, _mse_amax

    values = np.random.default_rng(0).normal(0, 1, 1_000_000)
    stats = TensorStats(np.inf, -np.inf, np.zeros(HISTOGRAM_BINS, np.int64), 0.0)
    stats.add(np.append(values, [20.0, -20.0]))  # two outliers far out
    amax = _mse_amax(stats, symmetric=True)
    assert 3.0 < amax < 10.0  # the bulk's tail is kept, the outliers are clipped
    uniform = TensorStats(np.inf, -np.inf, np.zeros(HISTOGRAM_BINS, np.int64), 0.0)
    uniform.add(np.random.default_rng(1).uniform(-1, 1, 100_000))
    assert _mse_amax(uniform, symmetric=True) > 0.95  # nothing worth clipping


def producers(model):
    return {out: node for node in model.graph.node for out in node.output}


def test_tensorrt_placement(fp32, stats):
    model = quantize_int8(fp32, stats, target="tensorrt", method="percentile")
    onnx.checker.check_model(model)
    made = producers(model)
    inits = {i.name: i for i in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["image"] and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["prob"]
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            activation, weight = made[node.input[0]], made[node.input[1]]
            assert activation.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear"
            assert numpy_helper.to_array(inits[activation.input[2]]).dtype == np.int8
            assert not numpy_helper.to_array(inits[activation.input[2]]).any()  # zero point 0
            assert numpy_helper.to_array(inits[weight.input[0]]).dtype == np.int8
            axis = next(a.i for a in weight.attribute if a.name == "axis")
            assert axis == (1 if node.op_type == "ConvTranspose" else 0)
        if node.op_type == "DequantizeLinear":  # what TensorRT's parser takes: int8, zero point 0
            assert numpy_helper.to_array(inits[node.input[0]]).dtype == np.int8 if node.input[0] in inits else True
            if len(node.input) > 2:
                assert not numpy_helper.to_array(inits[node.input[2]]).any()
        if node.op_type == "QuantizeLinear":  # only in front of convolutions
            consumers = [n for n in model.graph.node if node.output[0] in n.input]
            assert all(c.op_type == "DequantizeLinear" for c in consumers)
        if node.op_type == "Sigmoid":
            assert made[node.input[0]].op_type not in ("DequantizeLinear", "QuantizeLinear")


def test_quantized_maps_stay_close(fp32, stats):
    frame = prepare_fixed(make_text_image(77, size=SIZE).image, SIZE).frame[None]
    reference = run(fp32, frame) > 0.3
    for target in ("tensorrt", "cpu"):
        quantized = quantize_int8(fp32, stats, target=target, method="percentile")
        binary = run(quantized, frame) > 0.3
        iou = np.logical_and(binary, reference).sum() / np.logical_or(binary, reference).sum()
        assert iou > 0.8, (target, iou)


def test_cpu_target_uses_uint8_activations(fp32, stats):
    model = quantize_int8(fp32, stats, target="cpu", method="max")
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    # 7-bit weights: x86 without VNNI saturates uint8 x int8 pairs of full-range products.
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    full = quantize_int8(fp32, stats, target="cpu", method="max", full_range_weights=True)
    assert max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in full.graph.initializer
               if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4) == 127
    with pytest.raises(InvalidInputError, match="CPU target"):
        quantize_int8(fp32, stats, target="tensorrt", full_range_weights=True)
    # The frame goes into the first convolution as uint8; upsampling stays NCHW in 2x steps.
    reader = next(n for n in model.graph.node if "image" in n.input)
    assert reader.op_type == "Transpose"
    scales = [numpy_helper.to_array(inits[n.input[2]]).tolist() for n in model.graph.node if n.op_type == "Resize"]
    assert scales and all(s == [1, 1, 2, 2] for s in scales)
    # The logits are quantized over the sigmoid's useful span only.
    made = producers(model)
    node = made[next(n for n in model.graph.node if n.op_type == "Sigmoid").input[0]]
    while node.op_type != "DequantizeLinear":
        node = made[node.input[0]]
    assert float(numpy_helper.to_array(inits[node.input[1]])) <= 2 * LOGIT_LIMIT / 255 + 1e-6


def test_exclusions_and_sensitivity(fp32, stats, calib_dir):
    ranked = sensitive_layers(fp32, stats, calibration_images(calib_dir)[:1], input_size=SIZE)
    convs = [n.name for n in fp32.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert sorted(name for name, _ in ranked) == sorted(convs)
    assert [db for _, db in ranked] == sorted(db for _, db in ranked)
    worst = ranked[0][0]
    model = quantize_int8(fp32, stats, target="tensorrt", exclude=[worst])
    made = producers(model)
    node = next(n for n in model.graph.node if n.name == worst)
    assert made.get(node.input[1]) is None  # float weights
    with pytest.raises(InvalidInputError, match="not in the model"):
        quantize_int8(fp32, stats, exclude=["no-such-node"])
    with pytest.raises(InvalidInputError):
        quantize_int8(fp32, stats, target="dsp")


def test_quantize_and_compare_cli(tmp_path, calib_dir, capsys):
    out = tmp_path / "int8.onnx"
    assert main(["quantize", "ppocrv4-det", "--calib", str(calib_dir), "--output", str(out),
                 "--input-size", "320x480", "--cache", str(tmp_path / "cache")]) == 0
    assert out.is_file()
    assert main(["quantize", "ppocrv4-det", "--output", str(out)]) == 2
    assert "calibration set" in capsys.readouterr().err
    data = tmp_path / "eval"
    make_dataset(data, 2, seed=9, size=SIZE)
    assert main(["compare", "ppocrv4-det", str(out), "--images", str(data), "--input-size", "320x480"]) == 0
    table = capsys.readouterr().out
    assert "int8" in table and "bin IoU" in table
