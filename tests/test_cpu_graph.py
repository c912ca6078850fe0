"""Rewrites of CPU INT8 graphs (edgedb.precision.cpu_graph), each against the graph it
replaces, on small hand-built QDQ models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedb.precision.cpu_graph import fold_preprocessing_into_first_convs, pad_pixel_channels, upsample_in_nchw

IMAGENET_BGR_MEAN = np.array([0.406, 0.456, 0.485])
IMAGENET_BGR_STD = np.array([0.225, 0.224, 0.229])


def array(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def rewritten(model: onnx.ModelProto, rewrite) -> tuple[onnx.ModelProto, object]:
    graph = gs.import_onnx(model)
    result = rewrite(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    onnx.checker.check_model(out)
    return out, result


def preprocessing_model(rgb: bool, seed: int = 0) -> onnx.ModelProto:
    """uint8 NHWC frame -> Cast -> [Gather] -> Mul -> Add -> Transpose -> Q -> DQ -> 3x3 Conv
    (int8 per-channel weights, int32 bias), as quantize_int8 leaves a fused-preprocessing
    model's first convolution."""
    rng = np.random.default_rng(seed)
    mean, std = (IMAGENET_BGR_MEAN[::-1], IMAGENET_BGR_STD[::-1]) if rgb else (IMAGENET_BGR_MEAN, IMAGENET_BGR_STD)
    weights = rng.normal(0, 0.3, (8, 3, 3, 3))
    w_scale = np.abs(weights).reshape(8, -1).max(axis=1) / 127
    x_scale = 4.8 / 255
    bias = rng.normal(0, 0.2, 8)
    p = "edgedb_preprocess/"
    inits = [
        array(p + "scale", 1 / (255 * std)), array(p + "bias", -mean / std), array(p + "perm", [2, 1, 0], np.int64),
        array("x_scale", x_scale), array("x_zero", 113, np.uint8),
        array("w_q", np.round(weights / w_scale[:, None, None, None]), np.int8), array("w_scale", w_scale),
        array("w_zero", np.zeros(8), np.int8),
        array("b_q", np.round(bias / (x_scale * w_scale)), np.int32), array("b_scale", x_scale * w_scale),
        array("b_zero", np.zeros(8), np.int32),
    ]
    nodes = [helper.make_node("Cast", ["image"], ["f"], name=p + "cast", to=TensorProto.FLOAT)]
    if rgb:
        nodes.append(helper.make_node("Gather", ["f", p + "perm"], ["g"], name=p + "gather", axis=3))
    nodes += [
        helper.make_node("Mul", ["g" if rgb else "f", p + "scale"], ["m"], name=p + "mul"),
        helper.make_node("Add", ["m", p + "bias"], ["a"], name=p + "add"),
        helper.make_node("Transpose", ["a"], ["x"], name=p + "transpose", perm=[0, 3, 1, 2]),
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"], axis=0),
        helper.make_node("Conv", ["xdq", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "pre", [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 24, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 24, 32])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("rgb", [False, True])
def test_pixels_feed_the_first_convolution(rgb):
    model = preprocessing_model(rgb)
    frame = np.random.default_rng(1).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    folded, changed = rewritten(model, fold_preprocessing_into_first_convs)
    assert changed
    ops = [n.op_type for n in folded.graph.node]
    assert "Cast" not in ops and "Mul" not in ops and "QuantizeLinear" not in ops
    reader = next(n for n in folded.graph.node if "image" in n.input)
    assert reader.op_type == "Transpose"  # the frame goes in as uint8

    expected, got = run(model, {"image": frame}), run(folded, {"image": frame})
    # Inside, the fold is only better: the frame keeps all 8 bits instead of being
    # requantized. The difference is the old graph's rounding of the normalized frame.
    inner = np.abs(got - expected)[:, :, 1:-1, 1:-1]
    assert inner.max() < 0.25 and inner.mean() < 0.05
    # The one-pixel border pads with the mean pixel instead of exactly zero.
    assert np.abs(got - expected).max() < 1.0


def test_a_fourth_zero_channel_changes_nothing():
    folded, _ = rewritten(preprocessing_model(True), fold_preprocessing_into_first_convs)
    padded, changed = rewritten(folded, pad_pixel_channels)
    assert changed
    conv = next(n for n in padded.graph.node if n.op_type == "Conv")
    weights = next(i for i in padded.graph.initializer if i.name.endswith("_4"))
    assert numpy_helper.to_array(weights).shape == (8, 4, 3, 3) and conv is not None
    frame = np.random.default_rng(2).integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
    assert np.array_equal(run(padded, {"image": frame}), run(folded, {"image": frame}))
    assert not rewritten(preprocessing_model(True), pad_pixel_channels)[1]  # not folded: nothing to pad


def test_preprocessing_with_other_readers_stays():
    model = preprocessing_model(False)
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 24, 32]))
    folded, changed = rewritten(model, fold_preprocessing_into_first_convs)
    assert not changed
    assert [n.op_type for n in folded.graph.node].count("Cast") == 1


def upsampling_model(factor: int, transform: str = "asymmetric", rounding: str = "floor") -> onnx.ModelProto:
    """DQ -> nearest Resize -> Q -> DQ on a uint8 tensor, as quantize_int8 leaves an FPN's."""
    inits = [array("s", 0.05), array("z", 120, np.uint8), array("scales", [1, 1, factor, factor])]
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
        helper.make_node("Resize", ["x", "", "scales"], ["r"], name="up", mode="nearest",
                         coordinate_transformation_mode=transform, nearest_mode=rounding),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "up", [helper.make_tensor_value_info("q", TensorProto.UINT8, [1, 4, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("factor,transform,rounding", [
    (2, "asymmetric", "floor"), (8, "asymmetric", "floor"), (4, "half_pixel", "round_prefer_floor"),
])
def test_upsampling_is_pinned_to_nchw_and_exact(factor, transform, rounding):
    model = upsampling_model(factor, transform, rounding)
    codes = np.random.default_rng(2).integers(0, 256, (1, 4, 5, 7), dtype=np.uint8)
    out, count = rewritten(model, upsample_in_nchw)
    assert count == 1
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Resize") == int(np.log2(factor)) and "Reshape" in ops
    expected = run(model, {"q": codes})
    assert expected.shape == (1, 4, 5 * factor, 7 * factor)
    np.testing.assert_array_equal(run(out, {"q": codes}), expected)


@pytest.mark.parametrize("factor,transform,rounding", [(3, "asymmetric", "floor"), (2, "align_corners", "floor")])
def test_other_upsamplings_are_left_alone(factor, transform, rounding):
    out, count = rewritten(upsampling_model(factor, transform, rounding), upsample_in_nchw)
    assert count == 0 and [n.op_type for n in out.graph.node].count("Resize") == 1


def quantized_gelu_model(scale_x: float = 0.05) -> onnx.ModelProto:
    """GELU between Q/DQ pairs as quantize_static writes it for the CPU target: uint8 x,
    DQ -> Div(sqrt 2) -> Erf -> Q/DQ -> Add(1) -> Q/DQ -> Mul(x) -> Q -> DQ (the 1/2 in the
    output's scale)."""
    def qdq(src, name, scale, zero):
        return [helper.make_node("QuantizeLinear", [src, name + "_s", name + "_z"], [name + "_q"]),
                helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name])], [
            array(name + "_s", scale), array(name + "_z", zero, np.uint8)]

    nodes, inits = [], [array("sqrt2", np.sqrt(2)), array("one", 1.0)]
    for part in (qdq("x", "xd", scale_x, 128),):
        nodes += part[0]; inits += part[1]
    nodes += [helper.make_node("Div", ["xd", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"])]
    n, i = qdq("e", "ed", 2 / 255, 128); nodes += n; inits += i
    nodes += [helper.make_node("Add", ["ed", "one"], ["a"])]
    n, i = qdq("a", "ad", 2 / 255, 0); nodes += n; inits += i
    nodes += [helper.make_node("Mul", ["xd", "ad"], ["m"])]
    n, i = qdq("m", "y", scale_x * 2, 60); nodes += n; inits += i
    graph = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gelu_becomes_an_integer_sigmoid():
    from edgedb.precision.cpu_graph import gelu_as_sigmoid

    model = quantized_gelu_model()
    out, count = rewritten(model, gelu_as_sigmoid)
    assert count == 1
    ops = [n.op_type for n in out.graph.node]
    assert "Erf" not in ops and "Div" not in ops and "Add" not in ops and ops.count("Sigmoid") == 1
    x = np.random.default_rng(0).uniform(-6, 6, (1, 8, 16, 16)).astype(np.float32)
    before, after = run(model, {"x": x}), run(out, {"x": x})
    exact = x * (1 + np.vectorize(__import__("math").erf)(x / np.sqrt(2)))  # 2 GELU(x): the 1/2 is a scale
    quantization = 0.1 / 2 + 0.05 / 2 * 2 + 6 * (2 / 255) / 2  # y, x and gate steps (half each, rounding)
    assert np.abs(before - exact).max() <= quantization
    assert np.abs(after - exact).max() <= quantization + 2 * 0.021  # and the approximation of GELU
    # ONNX Runtime runs it as QLinearSigmoid (no float Sigmoid left)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(__import__("tempfile").mktemp(suffix=".onnx"))
    ort.InferenceSession(out.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearSigmoid" in fused and "Sigmoid" not in fused


def test_gelu_of_another_form_is_left_alone():
    from edgedb.precision.cpu_graph import gelu_as_sigmoid

    model = quantized_gelu_model()
    for init in model.graph.initializer:
        if init.name == "one":
            init.CopyFrom(array("one", 2.0))
    _, count = rewritten(model, gelu_as_sigmoid)
    assert count == 0
