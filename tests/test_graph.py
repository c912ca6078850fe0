"""Tests for ONNX graph rewriting (edgedb.graph): every pass keeps the network's output
(ONNX Runtime parity against the original) while changing the graph as promised.

Most tests use a tiny DBNet-shaped model built here (prob, threshold and binary maps);
one test rewrites the real default model (PP-OCRv4 det) end to end.
"""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgedb.errors import ModelError
from edgedb.graph import (
    fold_constants,
    fuse_preprocessing,
    make_dynamic,
    prune_outputs,
    rename_output,
    rewrite_file,
    rewrite_model,
    upgrade_opset,
)
from edgedb.models import resolve_model
from edgedb.spec import ModelSpec, guess_spec, spec_from_metadata
from edgedb.synthetic import make_text_image

TINY_SPEC = ModelSpec(
    input_name="x",
    prob_output="prob_map",
    extra_outputs=("thresh_map", "binary_map"),
    channel_order="RGB",
    mean=(0.40, 0.50, 0.60),
    std=(0.20, 0.25, 0.30),
)


# ---------------------------------------------------------------- helpers


def tiny_dbnet(opset: int = 11, seed: int = 0) -> onnx.ModelProto:
    """x [N,3,H,W] -> Conv/Relu x2 -> prob = Sigmoid(Conv), thresh = Sigmoid(Conv),
    binary = Sigmoid(50 * (prob - thresh)); some weights come from Constant nodes, one of
    them through a weight-only Mul that constant folding removes."""
    rng = np.random.default_rng(seed)

    def weights(*shape):
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    def constant(name, array):
        value = numpy_helper.from_array(array, name)
        return helper.make_node("Constant", [], [name], name=f"{name}_const", value=value)

    initializers = [
        numpy_helper.from_array(weights(8), "b2"),
        numpy_helper.from_array(weights(1, 8, 1, 1), "wp"),
        numpy_helper.from_array(weights(1), "bp"),
        numpy_helper.from_array(weights(1, 8, 1, 1), "wt"),
        numpy_helper.from_array(weights(1), "bt"),
    ]
    nodes = [
        constant("w1", weights(8, 3, 3, 3)),
        constant("b1", weights(8)),
        constant("w2_raw", weights(8, 8, 3, 3)),
        constant("w2_scale", np.float32(0.5)),
        constant("k", np.float32(50.0)),
        helper.make_node("Mul", ["w2_raw", "w2_scale"], ["w2"], name="scale_w2"),
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "wp", "bp"], ["prob_logits"], name="prob_conv"),
        helper.make_node("Sigmoid", ["prob_logits"], ["prob_map"], name="prob_sigmoid"),
        helper.make_node("Conv", ["r2", "wt", "bt"], ["thresh_logits"], name="thresh_conv"),
        helper.make_node("Sigmoid", ["thresh_logits"], ["thresh_map"], name="thresh_sigmoid"),
        helper.make_node("Sub", ["prob_map", "thresh_map"], ["prob_minus_thresh"], name="binary_sub"),
        helper.make_node("Mul", ["prob_minus_thresh", "k"], ["binary_logits"], name="binary_mul"),
        helper.make_node("Sigmoid", ["binary_logits"], ["binary_map"], name="binary_sigmoid"),
    ]
    maps = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, "H", "W"])
            for name in ("prob_map", "thresh_map", "binary_map")]
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(nodes, "tiny_dbnet", [image], maps, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto | str, feeds: dict) -> dict:
    """name -> array for every output, on ONNX Runtime's CPU provider."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def to_stride(image: np.ndarray, stride: int = 32) -> np.ndarray:
    h, w = (max(stride, round(side / stride) * stride) for side in image.shape[:2])
    return image if (h, w) == image.shape[:2] else cv2.resize(image, (w, h))


def numpy_preprocess(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """BGR uint8 NHWC frames -> normalized float32 NCHW in the spec's channel order."""
    pixels = images.astype(np.float32) / 255
    if spec.channel_order == "RGB":
        pixels = pixels[..., ::-1]
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))


def real_frames(seeds=(0,), size=(256, 320)) -> np.ndarray:
    return np.stack([to_stride(make_text_image(seed, size=size).image) for seed in seeds])


def graph_of(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def tiny():
    return tiny_dbnet()


@pytest.fixture(scope="module")
def float_feeds():
    """Random normalized input and a real generated image, both float32 NCHW."""
    random = np.random.default_rng(7).standard_normal((2, 3, 64, 96)).astype(np.float32)
    return [random, numpy_preprocess(real_frames(), TINY_SPEC)]


def assert_float_parity(original, rewritten, feeds, outputs=("prob_map",), tolerance=1e-5):
    for x in feeds:
        expected, got = run(original, {"x": x}), run(rewritten, {"x": x})
        for name in outputs:
            assert max_diff(expected[name], got[name]) <= tolerance, name


# ---------------------------------------------------------------- passes on the tiny model


def test_tiny_model_looks_like_a_training_export(tiny):
    assert guess_spec(tiny) == TINY_SPEC.with_(channel_order="BGR", mean=ModelSpec().mean, std=ModelSpec().std)
    outputs = run(tiny, {"x": np.zeros((1, 3, 32, 32), np.float32)})
    assert set(outputs) == {"prob_map", "thresh_map", "binary_map"}


def test_upgrade_opset(tiny, float_feeds):
    upgraded = upgrade_opset(tiny, 17)
    onnx.checker.check_model(upgraded, full_check=True)
    assert [o.version for o in upgraded.opset_import if o.domain == ""] == [17]
    assert_float_parity(tiny, upgraded, float_feeds, outputs=("prob_map", "thresh_map", "binary_map"))
    assert upgrade_opset(upgraded, 13) is upgraded  # already new enough: untouched


def test_fold_constants_turns_constant_nodes_into_initializers(tiny, float_feeds):
    graph = graph_of(tiny)
    before = len(graph.nodes)
    folded = fold_constants(graph)
    assert not [n for n in folded.nodes if n.op == "Constant"]
    assert "scale_w2" not in {n.name for n in folded.nodes}  # weight-only math is precomputed
    assert len(folded.nodes) < before
    model = gs.export_onnx(folded)
    onnx.checker.check_model(model, full_check=True)
    assert_float_parity(tiny, model, float_feeds, outputs=("prob_map", "thresh_map", "binary_map"))


def test_prune_outputs_keeps_only_the_probability_map(tiny, float_feeds):
    graph = graph_of(tiny)
    before = len(graph.nodes)
    pruned = prune_outputs(graph, "prob_map")
    assert len(pruned.nodes) < before
    assert {n.name for n in pruned.nodes}.isdisjoint({"thresh_conv", "thresh_sigmoid", "binary_sub", "binary_sigmoid"})
    model = gs.export_onnx(pruned)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["prob_map"]
    assert_float_parity(tiny, model, float_feeds, tolerance=1e-5)


def test_prune_outputs_rejects_an_unknown_output(tiny):
    with pytest.raises(ModelError, match="no output 'probability'"):
        prune_outputs(graph_of(tiny), "probability")


@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_fuse_preprocessing_takes_uint8_bgr_frames(tiny, channel_order):
    spec = TINY_SPEC.with_(channel_order=channel_order)
    graph, fused_spec = fuse_preprocessing(graph_of(tiny), spec)
    assert fused_spec == spec.with_(input_name="image", fused_preprocessing=True)
    model = gs.export_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    (image,) = model.graph.input
    assert (image.name, image.type.tensor_type.elem_type) == ("image", TensorProto.UINT8)
    assert dims(image) == ["batch", "height", "width", 3]
    ops = [n.op for n in graph.nodes if n.name.startswith("edgedb_preprocess/")]
    assert ops == ["Cast"] + (["Gather"] if channel_order == "RGB" else []) + ["Mul", "Add", "Transpose"]
    mul = next(n for n in graph.nodes if n.name == "edgedb_preprocess/mul")
    np.testing.assert_allclose(mul.inputs[1].values, 1 / (255 * np.asarray(spec.std)), rtol=1e-6)

    random_frames = np.random.default_rng(3).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    for frames in (random_frames, real_frames(seeds=(0, 1))):
        expected = run(tiny, {"x": numpy_preprocess(frames, spec)})["prob_map"]
        got = run(model, {"image": frames})["prob_map"]
        assert max_diff(expected, got) <= 1e-4


def test_fuse_preprocessing_rejects_a_fused_spec(tiny):
    with pytest.raises(ModelError, match="already fused"):
        fuse_preprocessing(graph_of(tiny), TINY_SPEC.with_(fused_preprocessing=True))


def test_rename_output_and_make_dynamic(tiny, float_feeds):
    graph = prune_outputs(graph_of(tiny), "prob_map")
    model = gs.export_onnx(make_dynamic(rename_output(graph, "prob_map", "prob")))
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("prob", ["batch", 1, "height", "width"])]
    for x in float_feeds:
        assert max_diff(run(tiny, {"x": x})["prob_map"], run(model, {"x": x})["prob"]) <= 1e-5


def test_rename_output_refuses_to_reuse_a_name(tiny):
    with pytest.raises(ModelError, match="already has a tensor"):
        rename_output(graph_of(tiny), "prob_map", "thresh_map")


# ---------------------------------------------------------------- whole rewrite


def test_rewrite_model_on_the_tiny_model(tiny, tmp_path):
    original = tiny.SerializeToString()
    model, spec = rewrite_model(tiny, TINY_SPEC)
    assert tiny.SerializeToString() == original  # the caller's proto is left alone
    assert spec == TINY_SPEC.with_(input_name="image", prob_output="prob", extra_outputs=(), fused_preprocessing=True)
    assert spec_from_metadata(model) == spec
    assert model.producer_name == "edgedb"
    assert [o.version for o in model.opset_import if o.domain == ""] == [17]
    assert not [n for n in model.graph.node if n.op_type == "Constant"]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("prob", ["batch", 1, "height", "width"])]

    frames = real_frames(seeds=(2, 3), size=(96, 160))
    expected = run(tiny, {"x": numpy_preprocess(frames, TINY_SPEC)})["prob_map"]
    assert max_diff(expected, run(model, {"image": frames})["prob"]) <= 1e-4

    source, target = tmp_path / "tiny.onnx", tmp_path / "tiny.edgedb.onnx"
    onnx.save(tiny, str(source))
    assert rewrite_file(source, target, TINY_SPEC) == spec
    assert spec_from_metadata(onnx.load(str(target))) == spec


def test_rewrite_model_options_can_be_turned_off(tiny, float_feeds):
    model, spec = rewrite_model(tiny, prune=False, fuse_preprocessing=False, fold=False)
    onnx.checker.check_model(model, full_check=True)
    assert spec.input_name == "x" and not spec.fused_preprocessing
    assert spec.prob_output == "prob" and spec.extra_outputs == ("thresh_map", "binary_map")
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    for x in float_feeds:
        assert max_diff(run(tiny, {"x": x})["prob_map"], run(model, {"x": x})["prob"]) <= 1e-5


def test_rewriting_a_rewritten_model_without_fusing_keeps_it(tiny):
    model, spec = rewrite_model(tiny, TINY_SPEC)
    again, again_spec = rewrite_model(model, fuse_preprocessing=False)  # spec from metadata
    assert again_spec == spec
    assert dims(again.graph.input[0]) == ["batch", "height", "width", 3]
    frames = real_frames()
    assert max_diff(run(model, {"image": frames})["prob"], run(again, {"image": frames})["prob"]) == 0


@pytest.fixture(scope="module")
def default_model():
    path = str(resolve_model("ppocrv4-det"))
    return path, rewrite_model(path)


def test_rewrite_default_model(default_model):
    path, (model, spec) = default_model
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (image,) = model.graph.input
    assert (image.name, image.type.tensor_type.elem_type, dims(image)) == (
        "image", TensorProto.UINT8, ["batch", "height", "width", 3])
    assert [(o.name, dims(o)) for o in model.graph.output] == [("prob", ["batch", 1, "height", "width"])]
    assert spec.fused_preprocessing and spec.input_name == "image" and spec.prob_output == "prob"
    assert spec_from_metadata(model) == spec
    assert spec_from_metadata(onnx.load_from_string(model.SerializeToString())) == spec
    assert not [n for n in model.graph.node if n.op_type == "Constant"]

    for frames in (real_frames(seeds=(0, 1), size=(256, 320)), real_frames(seeds=(2,), size=(320, 480))):
        expected = run(path, {"x": numpy_preprocess(frames, spec)})["sigmoid_0.tmp_0"]
        got = run(model, {"image": frames})["prob"]
        assert got.shape == (len(frames), 1) + frames.shape[1:3]
        assert max_diff(expected, got) <= 1e-4


# ---------------------------------------------------------------- errors


def test_a_2d_input_model_is_rejected():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["logits"]), helper.make_node("Sigmoid", ["logits"], ["score"])],
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(np.ones((16, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(ModelError, match="4-D image input"):
        rewrite_model(model)


def test_a_model_without_a_probability_map_is_rejected():
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["features"]), helper.make_node("Relu", ["features"], ["y"])],
        "backbone",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        initializer=[numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(ModelError, match="probability map"):
        rewrite_model(model)


def test_a_spec_that_does_not_match_the_model_is_rejected(tiny):
    with pytest.raises(ModelError, match="expected a probability-map output 'sigmoid_0.tmp_0'"):
        rewrite_model(tiny, ModelSpec())


def test_rewriting_an_already_fused_model_is_rejected(tiny):
    model, _ = rewrite_model(tiny, TINY_SPEC)
    with pytest.raises(ModelError, match="already fused"):
        rewrite_model(model)


def test_unreadable_files_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model\x00\xff\xfe")
    with pytest.raises(ModelError, match="garbage.onnx"):
        rewrite_model(garbage)
    with pytest.raises(ModelError, match="no model file"):
        rewrite_model(tmp_path / "missing.onnx")
