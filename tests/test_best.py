"""The "best" precision: INT8 Q/DQ convolutions with float16 between them, in one graph
that TensorRT builds strongly typed and ONNX Runtime runs on the CPU."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgedb import InvalidInputError, ModelError
from edgedb.backends.onnxrt import OnnxRuntimeBackend
from edgedb.cli import main
from edgedb.engine.precision import model_precision, precision_model
from edgedb.precision import quantize_best
from edgedb.precision.calibration import calibration_images, collect_stats
from edgedb.preprocess import prepare_fixed
from edgedb.synthetic import make_text_image

SIZE = (320, 480)
FLOAT16, FLOAT, INT8 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.INT8


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib-best")
    for seed in range(3):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(60 + seed, size=SIZE).image)
    return folder


@pytest.fixture(scope="module")
def stats(fp32, calib_dir, tmp_path_factory):
    return collect_stats(fp32, calibration_images(calib_dir), input_size=SIZE,
                         cache_dir=tmp_path_factory.mktemp("stats-best"), progress=False)


@pytest.fixture(scope="module")
def best(fp32, stats):
    return quantize_best(fp32, stats)


def prob(model, frame):
    with OnnxRuntimeBackend(model) as backend:
        return backend.infer({"image": frame})["prob"][0, 0]


def test_graph_form(best):
    """Every convolution reads a dequantized input and dequantized int8 weights; the
    scales have the type of what they quantize (float16 but for the float32 tail); the
    interface is the FP32 model's."""
    graph = best.graph
    assert next(o.version for o in best.opset_import if o.domain in ("", "ai.onnx")) >= 19
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    typed = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(best).graph.value_info}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    scale_types = set()
    for conv in convs:
        x, w = producers[conv.input[0]], producers[conv.input[1]]
        assert x.op_type == "DequantizeLinear" and producers[x.input[0]].op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and inits[w.input[0]].data_type == INT8
        assert inits[x.input[1]].data_type == typed[conv.input[0]]
        assert numpy_helper.to_array(inits[x.input[2]]).dtype == np.int8  # zero point 0, signed
        assert not numpy_helper.to_array(inits[x.input[2]]).any()
        scale_types.add(inits[x.input[1]].data_type)
    assert scale_types == {FLOAT16, FLOAT}  # float32 only where the FP16 model keeps float32
    assert sum(typed.get(c.output[0]) == FLOAT16 for c in convs) >= len(convs) - 2
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [("image", onnx.TensorProto.UINT8)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.output] == [("prob", FLOAT)]
    assert model_precision(best) == "best"


def test_weights_dequantize_exactly(fp32, best):
    """The int8 weights times their float16 scales give back the FP32 weights to within
    half a quantization step per channel."""
    inits = {i.name: numpy_helper.to_array(i) for i in best.graph.initializer}
    fp32_weights = {n.name: numpy_helper.to_array(next(i for i in fp32.graph.initializer if i.name == n.input[1]))
                    for n in fp32.graph.node if n.op_type == "Conv"}
    producers = {o: n for n in best.graph.node for o in n.output}
    for conv in [n for n in best.graph.node if n.op_type == "Conv"][:12]:
        dq = producers[conv.input[1]]
        q, scale = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]].astype(np.float32)
        restored = q * scale.reshape(-1, *[1] * (q.ndim - 1))
        step = scale.reshape(-1, *[1] * (q.ndim - 1))
        assert np.all(np.abs(restored - fp32_weights[conv.name]) <= 0.5 * step + 1e-3 * np.abs(fp32_weights[conv.name]))


def test_map_agrees_with_fp32(fp32, best):
    """On a frame it was not calibrated on (and through the ONNX Runtime backend, which
    runs float16 Q/DQ without its QDQ transforms: see edgedb.backends.onnxrt)."""
    image = make_text_image(7, size=SIZE).image  # not a calibration image
    frame = prepare_fixed(image, SIZE).frame[None]
    reference, ours = prob(fp32, frame), prob(best, frame)
    a, b = reference > 0.3, ours > 0.3
    assert a.sum() > 500
    assert (a & b).sum() / (a | b).sum() > 0.85
    assert np.abs(reference - ours).mean() < 0.01


def test_refusals(fp32, stats, best):
    with pytest.raises(InvalidInputError, match="not convolutions"):
        quantize_best(fp32, stats, exclude=["nowhere"])
    with pytest.raises(InvalidInputError, match="method"):
        quantize_best(fp32, stats, method="median")
    with pytest.raises(ModelError, match="already"):
        quantize_best(best, stats)
    with pytest.raises(ModelError, match="rewritten by edgedb"):
        quantize_best(onnx.ModelProto(), stats)
    with pytest.raises(InvalidInputError, match="already best"):
        precision_model(best, "fp16")


def test_exclude_keeps_a_convolution_unquantized(fp32, stats):
    first = next(n.name for n in fp32.graph.node if n.op_type == "Conv")
    model = quantize_best(fp32, stats, exclude=[first])
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.name == first)
    assert producers.get(conv.input[1]) is None  # float16 weights, no DequantizeLinear


def test_precision_model_builds_best_from_a_calibration_folder(fp32, calib_dir, tmp_path):
    model = precision_model(fp32, "best", calib=calib_dir, input_size=SIZE, cache_dir=tmp_path)
    assert model_precision(model) == "best"


def test_cli(calib_dir, tmp_path, capsys):
    out = tmp_path / "best.onnx"
    assert main(["quantize", "ppocrv4-det", "--precision", "best", "--calib", str(calib_dir),
                 "--input-size", "320x480", "--cache", str(tmp_path / "cache"), "-o", str(out)]) == 0
    assert model_precision(onnx.load(str(out))) == "best"
    assert "best" in capsys.readouterr().out
    assert main(["quantize", "ppocrv4-det", "--precision", "best", "--calib", str(calib_dir), "--target", "cpu",
                 "-o", str(tmp_path / "x.onnx")]) != 0
    assert "for TensorRT" in capsys.readouterr().err
