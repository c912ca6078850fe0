"""OnnxModule against ONNX Runtime: the default model, its intermediate tensors, weights
written back by export_onnx, and a tiny graph per operator variant DBNet exports use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgedb.errors import InvalidInputError, ModelError  # noqa: E402
from edgedb.models import DEFAULT_MODEL, resolve_model  # noqa: E402
from edgedb.synthetic import make_text_image  # noqa: E402
from edgedb.train.onnx_torch import OnnxModule, export_onnx  # noqa: E402

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
# Models only some machines have: checked when present.
EXTRA_MODELS = {
    "ppocrv3-det": Path("/tmp/models/v3/ch_PP-OCRv3_det_infer.onnx"),  # rapidocr_onnxruntime 1.2.3
    "ppocrv5-det-mobile": "ppocrv5-det-mobile",  # zoo names: the packages of the zoo extra
    "ppocrv6-det-small": "ppocrv6-det-small",
}


def _image_batch(shape, seed=0) -> np.ndarray:
    """uint8-like pixels normalized as PP-OCR's detectors expect."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape).astype(np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _text_batch(height: int, width: int, seed=0) -> np.ndarray:
    """A generated text image, normalized: unlike noise, it lights the map up (noise gives
    logits near -50, where any two implementations agree)."""
    image = make_text_image(seed, size=(height, width)).image
    pixels = image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _torch_outputs(module: OnnxModule, feed: dict, outputs=None) -> dict:
    with torch.no_grad():
        x = {k: torch.from_numpy(v) for k, v in feed.items()}
        result = module(x if len(x) > 1 else next(iter(x.values())), outputs=outputs)
    return {k: v.numpy() for k, v in result.items()}


@pytest.fixture(scope="module")
def default_model():
    return onnx.load(str(resolve_model(DEFAULT_MODEL)))


@pytest.fixture(scope="module")
def default_module(default_model):
    return OnnxModule(default_model)


@pytest.fixture(scope="module")
def default_session(default_model):
    return _session(default_model)


# --- real models -----------------------------------------------------------------------


def _check_model_parity(model, module, x, session=None):
    (expected,) = (session or _session(model)).run(None, {model.graph.input[0].name: x})
    got = _torch_outputs(module, {model.graph.input[0].name: x})[model.graph.output[0].name]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    return expected


def test_default_model_matches_onnxruntime(default_model, default_module, default_session):
    prob = _check_model_parity(default_model, default_module, _text_batch(128, 160), default_session)
    assert prob.max() > 0.9 and 0.01 < (prob > 0.3).mean() < 0.5  # text was found: the check means something
    _check_model_parity(default_model, default_module, _image_batch((2, 3, 96, 64)), default_session)


@pytest.mark.parametrize("name", sorted(EXTRA_MODELS))
def test_other_dbnet_exports_match_onnxruntime(name):
    path = EXTRA_MODELS[name]
    if isinstance(path, str):  # a zoo name
        from edgedb.errors import MissingDependencyError

        try:
            path = resolve_model(path)
        except MissingDependencyError as error:
            pytest.skip(str(error))
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    model = onnx.load(str(path))
    _check_model_parity(model, OnnxModule(model), _text_batch(96, 128, seed=1))


def test_intermediate_outputs_match_onnxruntime(default_model, default_module):
    concat = next(n for n in default_model.graph.node if n.op_type == "Concat").output[0]
    probed = onnx.ModelProto()
    probed.CopyFrom(default_model)
    probed.graph.output.append(helper.make_tensor_value_info(concat, TensorProto.FLOAT, None))
    x = _image_batch((1, 3, 64, 64), seed=1)
    expected = dict(zip([o.name for o in probed.graph.output], _session(probed).run(None, {"x": x})))
    got = _torch_outputs(default_module, {"x": x}, outputs=[concat])
    assert set(got) == {default_model.graph.output[0].name, concat}
    scale = np.abs(expected[concat]).max()  # features reach ~100: float32 sums differ in the 5th digit
    np.testing.assert_allclose(got[concat], expected[concat], rtol=0, atol=1e-5 * scale)
    with pytest.raises(InvalidInputError, match="no tensor"):
        default_module(torch.zeros(1, 3, 32, 32), outputs=["not-a-tensor"])


def test_weights_are_the_layers_and_gradients_reach_them(default_module):
    names = set(default_module.onnx_names.values())
    assert "conv2d_0.w_0" in names and "batch_norm2d_0.w_0" in names and "batch_norm2d_0.b_0" in names
    assert "batch_norm2d_0.w_1" not in names and "batch_norm2d_0.w_2" not in names  # running mean, var
    assert "mobile_one_block_0.w_0" in names  # a learnable scale applied with Mul
    assert not any("helper.constant" in n for n in names)  # hard-swish's 3 and 6, Resize scales
    assert set(default_module.state_dict()) == {f"weights.{k}" for k in default_module.weights}

    default_module.zero_grad(set_to_none=True)
    prob = default_module(torch.from_numpy(_image_batch((1, 3, 64, 64))))["sigmoid_0.tmp_0"]
    prob.mean().backward()
    first_conv = next(k for k, n in default_module.onnx_names.items() if n == "conv2d_0.w_0")
    assert default_module.weights[first_conv].grad.abs().sum() > 0
    with_grad = [p for p in default_module.weights.values() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(with_grad) > 0.9 * len(default_module.weights)
    default_module.zero_grad(set_to_none=True)


def test_export_writes_trained_weights_back(default_model, default_session):
    module = OnnxModule(default_model)
    # The bias added just before the Sigmoid: on noise the map is near 0, so move it a lot.
    producers = {o: n for n in default_model.graph.node for o in n.output}
    sigmoid = next(n for n in default_model.graph.node if n.op_type == "Sigmoid")
    last_add = producers[sigmoid.input[0]]
    key = next(k for k, n in module.onnx_names.items() if n in last_add.input)
    x = _image_batch((1, 3, 64, 64), seed=2)
    before = default_session.run(None, {"x": x})[0]
    with torch.no_grad():
        module.weights[key].add_(40.0)
    exported = export_onnx(module, default_model)

    onnx.checker.check_model(exported)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in default_model.graph.node]
    assert exported.graph.input == default_model.graph.input and exported.graph.output == default_model.graph.output
    after = _session(exported).run(None, {"x": x})[0]
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(_torch_outputs(module, {"x": x})["sigmoid_0.tmp_0"], after, rtol=0, atol=1e-4)
    # Untouched weights are written back bit for bit.
    unchanged = export_onnx(OnnxModule(default_model), default_model)
    assert unchanged.SerializeToString() == default_model.SerializeToString()


def test_export_into_initializers_keeps_dtype_and_refuses_another_model():
    weight = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], {"x": (1, 3, 8, 8)},
                   initializers={"w": weight})
    module = OnnxModule(model)
    assert list(module.onnx_names.values()) == ["w"]
    with torch.no_grad():
        module.weights["w"].add_(1.0)
    exported = export_onnx(module, model)
    (written,) = exported.graph.initializer
    assert written.name == "w" and written.data_type == TensorProto.FLOAT
    np.testing.assert_array_equal(numpy_helper.to_array(written), weight + 1.0)

    other = _model([helper.make_node("Relu", ["x"], ["y"])], {"x": (1, 3, 8, 8)})
    with pytest.raises(ModelError, match="no initializer or Constant named 'w'"):
        export_onnx(module, other)


def test_unsupported_operators_are_all_named_at_construction():
    nodes = [helper.make_node("Mod", ["x", "x"], ["a"], fmod=1), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Einsum", ["b", "b"], ["y"], equation="ij,ij->ij")]
    with pytest.raises(ModelError, match="unsupported operators Einsum, Mod"):
        OnnxModule(_model(nodes, {"x": (2, 2)}))


def test_unsupported_attribute_value_is_refused():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")
    with pytest.raises(ModelError, match="mode 'cubic'"):
        OnnxModule(_model([node], {"x": (1, 1, 4, 4)}, initializers={"scales": np.array([1, 1, 2, 2], np.float32)}))


# --- one operator at a time --------------------------------------------------------------


def _model(nodes, inputs: dict, initializers: dict | None = None, outputs=("y",), opset: int = 13):
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _check(nodes, inputs: dict, initializers=None, opset=13, atol=1e-5, seed=0):
    """Runs a tiny graph in ONNX Runtime and OnnxModule on random inputs and compares."""
    model = _model(nodes, inputs, initializers, opset=opset)
    rng = np.random.default_rng(seed)
    feed = {name: rng.normal(size=shape).astype(np.float32) for name, shape in inputs.items()}
    (expected,) = _session(model).run(None, feed)
    got = _torch_outputs(OnnxModule(model), feed)["y"]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)


def _f32(*values):
    return np.array(values, np.float32)


def _i64(*values):
    return np.array(values, np.int64)


@pytest.mark.parametrize("mode, coordinates, rounding, scales, sizes, shape", [
    ("nearest", "asymmetric", "floor", (1, 1, 2, 2), None, (1, 2, 5, 7)),  # PP-OCR's: repeats
    ("nearest", "asymmetric", "floor", (1, 1, 4, 3), None, (1, 2, 3, 5)),
    ("nearest", None, None, (1, 1, 1.5, 0.6), None, (1, 2, 6, 10)),  # half_pixel, round_prefer_floor
    ("nearest", "half_pixel", "round_prefer_ceil", None, (1, 2, 9, 4), (1, 2, 6, 10)),
    ("nearest", "align_corners", "round_prefer_floor", None, (1, 2, 11, 3), (1, 2, 6, 7)),
    ("nearest", "tf_half_pixel_for_nn", "ceil", (1, 1, 2.5, 1.5), None, (1, 2, 4, 6)),
    ("nearest", "pytorch_half_pixel", "floor", None, (1, 2, 1, 9), (1, 2, 5, 4)),
    ("linear", None, None, (1, 1, 2, 2), None, (1, 2, 5, 7)),  # half_pixel: torch's bilinear
    ("linear", "align_corners", None, None, (1, 2, 9, 13), (1, 2, 5, 7)),
    ("linear", "asymmetric", None, (1, 1, 1.5, 3), None, (1, 2, 4, 5)),
    ("linear", "pytorch_half_pixel", None, None, (1, 2, 1, 7), (1, 2, 5, 4)),
    ("linear", "half_pixel", None, (1, 1, 0.5, 0.75), None, (1, 2, 8, 8)),
])
def test_resize(mode, coordinates, rounding, scales, sizes, shape):
    attrs = {"mode": mode}
    if coordinates:
        attrs["coordinate_transformation_mode"] = coordinates
    if rounding:
        attrs["nearest_mode"] = rounding
    initializers = {"roi": _f32()}
    inputs = ["x", "roi"]
    if scales is not None:
        initializers["scales"] = _f32(*scales)
        inputs.append("scales")
    else:
        initializers["sizes"] = _i64(*sizes)
        inputs += ["", "sizes"]
    _check([helper.make_node("Resize", inputs, ["y"], **attrs)], {"x": shape}, initializers, opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_half_pixel_symmetric(mode):  # opset 19
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode="half_pixel_symmetric")
    _check([node], {"x": (1, 2, 5, 6)}, {"scales": _f32(1, 1, 1.7, 0.6)}, opset=19)


@pytest.mark.parametrize("mode, scales", [
    ("nearest", (1, 1, 2, 3)), ("nearest", (1, 1, 0.5, 0.7)), ("linear", (1, 1, 2, 1.5)),
])
def test_resize_opset_10(mode, scales):
    node = helper.make_node("Resize", ["x", "scales"], ["y"], mode=mode)
    _check([node], {"x": (1, 2, 6, 5)}, {"scales": _f32(*scales)}, opset=10)


def test_resize_with_sizes_computed_from_shapes():
    """Exports with dynamic shapes compute Resize's sizes at run time: Shape, Slice, Concat."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two"], ["batch_channels"]),
        helper.make_node("Concat", ["batch_channels", "target"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    ]
    _check(nodes, {"x": (1, 2, 3, 4)}, {"zero": _i64(0), "two": _i64(2), "target": _i64(6, 12)})


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(mode):
    _check([helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode=mode)], {"x": (2, 8, 3, 5)})


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], output_padding=[1, 1]),
    dict(strides=[2, 3], pads=[1, 1, 1, 1], output_padding=[1, 2]),
    dict(strides=[2, 2], pads=[0, 1, 1, 0], output_padding=[1, 0]),  # asymmetric pads
    dict(strides=[2, 2], group=2, dilations=[2, 1]),
    dict(strides=[2, 2], output_shape=[10, 9]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
])
def test_conv_transpose(attrs):
    rng = np.random.default_rng(3)
    group = attrs.get("group", 1)
    initializers = {"w": rng.normal(size=(4, 6 // group, 3, 3)).astype(np.float32),  # (in, out / group, kh, kw)
                    "b": rng.normal(size=6).astype(np.float32)}
    _check([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], {"x": (1, 4, 4, 5)}, initializers)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], pads=[0, 1, 2, 1], dilations=[1, 2]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[1, 2], auto_pad="VALID", group=2),
])
def test_conv(attrs):
    rng = np.random.default_rng(4)
    group = attrs.get("group", 1)
    initializers = {"w": rng.normal(size=(6, 4 // group, 3, 3)).astype(np.float32),
                    "b": rng.normal(size=6).astype(np.float32)}
    _check([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], {"x": (1, 4, 7, 8)}, initializers, atol=1e-4)


def test_clip_bounds_are_attributes_before_opset_11_and_inputs_after():
    _check([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)], {"x": (2, 3, 4)}, opset=6)
    _check([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": (2, 3, 4)},
           {"lo": np.array(-0.5, np.float32), "hi": np.array(0.25, np.float32)}, opset=11)
    _check([helper.make_node("Clip", ["x", "", "hi"], ["y"])], {"x": (2, 3, 4)}, {"hi": np.array(0.1, np.float32)})
    _check([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": (2, 3, 4), "lo": (), "hi": ()})


def test_decomposed_gelu_is_fused_and_exact():
    """PP-OCRv6 small det's x * (1 + Erf(x / sqrt 2)) * 0.5 runs as one F.gelu."""
    nodes = [helper.make_node("Div", ["x", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    scalars = {"r2": np.array(2 ** 0.5, np.float32), "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    _check(nodes, {"x": (2, 3, 8, 8)}, scalars, opset=13)
    module = OnnxModule(_model(nodes, {"x": (2, 3, 8, 8)}, scalars, opset=13))
    assert [step.fn for step in module._steps] == [torch.nn.functional.gelu]
    with pytest.raises(InvalidInputError, match="no tensor 'e'"):  # the Erf is gone
        module(torch.zeros(1, 1, 2, 2), outputs=["e"])


def test_decomposed_hard_swish_is_fused_and_exact():
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]
    scalars = {"three": np.array(3, np.float32), "zero": np.array(0, np.float32), "six": np.array(6, np.float32)}
    _check(nodes, {"x": (2, 3, 8, 8)}, scalars, opset=12)
    module = OnnxModule(_model(nodes, {"x": (2, 3, 8, 8)}, scalars, opset=12))
    assert not list(module.parameters())  # 3 and 6 are literals, not weights
    with pytest.raises(InvalidInputError, match="no tensor 'c'"):  # the Clip is gone
        module(torch.zeros(1, 1, 2, 2), outputs=["c"])


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", dict(kernel_shape=[2, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 1], dilations=[1, 2])),
    ("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[1, 2], pads=[0, 1, 2, 0])),
])
def test_pooling(op, attrs):
    _check([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": (1, 2, 7, 9)})


@pytest.mark.parametrize("nodes, inputs, initializers, opset", [
    # GELU as PP-OCRv6 small det writes it, and as opset 20's one node (exact and tanh)
    ([helper.make_node("Div", ["x", "r2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
      helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
      helper.make_node("Mul", ["m", "half"], ["y"])], {"x": (2, 3, 4)},
     {"r2": np.array(2 ** 0.5, np.float32), "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}, 13),
    ([helper.make_node("Gelu", ["x"], ["g"]), helper.make_node("Gelu", ["g"], ["y"], approximate="tanh")],
     {"x": (2, 3, 4)}, {}, 20),
    ([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1, epsilon=1e-5)], {"x": (2, 5, 4)},
     {"s": _f32(1, 2, 0.5, -1), "b": _f32(0, 1, 0, -1)}, 17),
    ([helper.make_node("LayerNormalization", ["x", "s"], ["y"], axis=1)], {"x": (2, 3, 4)},
     {"s": np.full((3, 4), 1.5, np.float32)}, 17),
    ([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Gemm", ["m", "g", "c"], ["y"], alpha=0.5,
                                                                           beta=2.0, transB=1)],
     {"x": (3, 4)}, {"w": np.arange(20, dtype=np.float32).reshape(4, 5) / 10, "g": np.ones((2, 5), np.float32),
                     "c": _f32(1, -1)}, 13),
    ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("MatMul", ["x", "t"], ["a"]),
      helper.make_node("Softmax", ["a"], ["y"], axis=-1)], {"x": (2, 3, 4)}, {}, 13),  # attention-like
    ([helper.make_node("PRelu", ["x", "slope"], ["p"]), helper.make_node("Softplus", ["p"], ["q"]),
      helper.make_node("Neg", ["q"], ["n"]), helper.make_node("Abs", ["n"], ["a"]),
      helper.make_node("Reciprocal", ["a"], ["y"])], {"x": (2, 3, 4, 4)},
     {"slope": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)}, 13),
    ([helper.make_node("Max", ["x", "z", "c"], ["hi"]), helper.make_node("Min", ["hi", "c"], ["lo"]),
      helper.make_node("Sum", ["lo", "x", "z"], ["y"])], {"x": (2, 3), "z": (2, 3)}, {"c": _f32(0.5, -0.5, 0)}, 13),
    ([helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1), helper.make_node("ReduceMax", ["x"], ["m"],
                                                                                            axes=[1], keepdims=1),
      helper.make_node("Expand", ["s", "shape"], ["e"]), helper.make_node("Add", ["e", "m"], ["y"])],
     {"x": (2, 3, 4)}, {"axes": _i64(1), "shape": _i64(2, 1, 4)}, 13),
    ([helper.make_node("Equal", ["x", "x"], ["c"]), helper.make_node("Where", ["c", "x", "z"], ["y"])],
     {"x": (2, 3), "z": (2, 3)}, {}, 13),
    ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)], {"x": (2, 3, 4, 4)},
     {"s": _f32(1, 2, 3), "b": _f32(0, 1, -1), "m": _f32(0.5, 0, 1), "v": _f32(1, 4, 0.5)}, 12),
    ([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6, beta=0.5), helper.make_node("HardSwish", ["h"], ["s"]),
      helper.make_node("LeakyRelu", ["s"], ["y"], alpha=0.2)], {"x": (2, 3, 4)}, {}, 14),
    ([helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Sigmoid", ["g"], ["t"]),
      helper.make_node("Mul", ["x", "t"], ["y"])], {"x": (2, 3, 4, 5)}, {}, 13),
    ([helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Sqrt", ["e"], ["r"]),
      helper.make_node("Tanh", ["r"], ["t"]),
      helper.make_node("Pow", ["t", "two"], ["p"]), helper.make_node("Sub", ["p", "x"], ["s"]),
      helper.make_node("Relu", ["s"], ["y"])], {"x": (2, 3)}, {"two": np.array(2, np.float32)}, 13),
    ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": (2, 3, 4)}, {}, 11),  # flattens from axis 1
    ([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {"x": (2, 3, 4)}, {}, 13),
    ([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, -1], keepdims=0)], {"x": (2, 3, 4)}, {}, 13),
    ([helper.make_node("ReduceMean", ["x", "axes"], ["y"])], {"x": (2, 3, 4)}, {"axes": _i64(2)}, 18),
    ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]), helper.make_node("Flatten", ["t"], ["y"], axis=2)],
     {"x": (2, 3, 4)}, {}, 13),
    ([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["hw"], axis=0),
      helper.make_node("Concat", ["keep", "hw"], ["shape"], axis=0),
      helper.make_node("Reshape", ["x", "shape"], ["y"])],
     {"x": (2, 3, 4, 5)}, {"i": _i64(-2, 3), "keep": _i64(0, -1)}, 13),
    ([helper.make_node("Unsqueeze", ["x", "axes"], ["u"]), helper.make_node("Squeeze", ["u", "one"], ["y"])],
     {"x": (2, 3)}, {"axes": _i64(0, -1), "one": _i64(-1)}, 13),
    ([helper.make_node("Unsqueeze", ["x"], ["u"], axes=[1]), helper.make_node("Squeeze", ["u"], ["y"])],
     {"x": (2, 3)}, {}, 11),
    ([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], {"x": (3, 7, 6)},
     {"starts": _i64(-1, 1), "ends": _i64(-9999, 9999), "axes": _i64(1, 2), "steps": _i64(-2, 2)}, 13),
    ([helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[-1], axes=[2])], {"x": (3, 4, 6)}, {}, 9),
    ([helper.make_node("Pad", ["x", "pads", "value"], ["y"])], {"x": (1, 2, 3, 4)},
     {"pads": _i64(0, 0, 1, 2, 0, 0, 2, -1), "value": np.array(0.5, np.float32)}, 13),
    ([helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 0, 2], value=-1.0)], {"x": (3, 4)}, {}, 2),
    ([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
      helper.make_node("Cast", ["i"], ["c"], to=TensorProto.FLOAT),
      helper.make_node("Identity", ["c"], ["y"])], {"x": (3, 4)}, {}, 13),
])
def test_other_operators(nodes, inputs, initializers, opset):
    _check(nodes, inputs, initializers, opset=opset, atol=1e-5)


def test_constants_are_folded_at_construction():
    nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(_i64(2))),
             helper.make_node("Constant", [], ["d"], value_ints=[3, 4]),
             helper.make_node("Concat", ["c", "d"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    module = OnnxModule(_model(nodes, {"x": (4, 6)}))
    assert module(torch.arange(24.0).reshape(4, 6))["y"].shape == (2, 3, 4)
    with pytest.raises(InvalidInputError, match="depends only on constants"):  # used up by the folded Concat
        module(torch.zeros(4, 6), outputs=["c"])
