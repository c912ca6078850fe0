"""FP16 models for strongly typed TensorRT: types in the graph, interface unchanged, parity
with the float32 model on ONNX Runtime (CPU), clear errors for models it cannot convert."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from boxmatch import match
from edgedb import EdgeDetector, boxes_from_prob
from edgedb.detector import load_deployable
from edgedb.errors import InvalidInputError, InvalidInputTypeError, ModelError
from edgedb.precision import to_float16
from edgedb.precision.fp16 import DEFAULT_KEEP_FLOAT32_OPS, PRECISION_KEY, _fold_batchnorm
from edgedb.preprocess import prepare_limit
from edgedb.spec import METADATA_KEY, spec_from_metadata, store_spec
from edgedb.synthetic import make_text_image

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Measured on ONNX Runtime 1.32 CPU, synthetic seeds 0-5 (480x640 -> 736x992): max |diff|
# 0.036-0.105 (seeds 0 and 1: 0.047, 0.040), 99.9th percentile <= 0.012, mean <= 4.1e-5,
# IoU at 0.3 >= 0.9988. ORT CPU computes the float16 nodes in float32 (weights rounded);
# emulating float16 storage of every activation as well, as a GPU does, gives max 0.053-0.17
# (seeds 0 and 1: 0.066, 0.061). The map's logits reach |170|, so float16's relative
# rounding moves the steepest edge pixels by up to ~0.2; the maps binarized at 0.3 agree.
MAX_ABS = 0.15
P999_ABS = 0.02
MEAN_ABS = 1e-4
MIN_IOU = 0.99


@pytest.fixture(scope="module")
def fp32_model():
    model, _ = load_deployable("ppocrv4-det")
    return model


@pytest.fixture(scope="module")
def fp16_model(fp32_model):
    return to_float16(fp32_model)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def lossy_round_trips(model: onnx.ModelProto) -> list[str]:
    """Cast(float32) of a Cast(float16) of a float32 tensor: float32 data rounded for nothing."""
    types = tensor_types(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if cast_to(n) == FLOAT and n.input[0] in producers and cast_to(producers[n.input[0]]) == FLOAT16
            and types.get(producers[n.input[0]].input[0]) == FLOAT]


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# ------------------------------------------------------------------------- structure


def test_interface_unchanged(fp32_model, fp16_model):
    pairs = ((fp32_model.graph.input, fp16_model.graph.input), (fp32_model.graph.output, fp16_model.graph.output))
    for old, new in pairs:
        assert [v.name for v in new] == [v.name for v in old]
        assert [v.type.tensor_type.elem_type for v in new] == [v.type.tensor_type.elem_type for v in old]
        assert [dims(v) for v in new] == [dims(v) for v in old]
    assert fp16_model.graph.input[0].name == "image"
    assert fp16_model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert dims(fp16_model.graph.input[0]) == ["batch", "height", "width", 3]
    assert fp16_model.graph.output[0].name == "prob"
    assert fp16_model.graph.output[0].type.tensor_type.elem_type == FLOAT
    assert dims(fp16_model.graph.output[0]) == ["batch", 1, "height", "width"]
    assert fp16_model.opset_import == fp32_model.opset_import
    onnx.checker.check_model(fp16_model, full_check=True)


def test_metadata_has_spec_and_precision(fp32_model, fp16_model):
    assert spec_from_metadata(fp16_model) == spec_from_metadata(fp32_model)
    props = {p.key: p.value for p in fp16_model.metadata_props}
    assert props[PRECISION_KEY] == "fp16"
    assert PRECISION_KEY not in {p.key for p in fp32_model.metadata_props}


def test_input_model_not_modified(fp32_model):
    before = fp32_model.SerializeToString()
    to_float16(fp32_model)
    assert fp32_model.SerializeToString() == before


def test_convolution_weights_are_float16(fp16_model):
    graph = fp16_model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    tail, node = set(), producers["prob"]  # the Sigmoid back to the last convolution
    while node.op_type not in ("Conv", "ConvTranspose"):
        tail.add(node.name)
        node = producers[node.input[0]]
    tail.add(node.name)
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose") and n.name not in tail]
    assert len(convs) >= 60
    for conv in convs:
        for name in conv.input[1:]:
            assert inits[name].data_type == FLOAT16, (conv.name, name)
    float_inits = [i for i in graph.initializer if i.data_type == FLOAT]
    assert len(float_inits) < 0.15 * len(graph.initializer)  # preprocessing, the tail, Resize scales
    assert sum(numpy_helper.to_array(i).size for i in float_inits) < 2000  # the last conv: 16 x 96


def test_sensitive_nodes_stay_float32(fp16_model):
    graph = fp16_model.graph
    types = tensor_types(fp16_model)
    nodes = {n.name: n for n in graph.node}
    producers = {o: n for n in graph.node for o in n.output}

    preprocess = [n for n in graph.node if n.name.startswith("edgedb_preprocess/")]
    assert [n.op_type for n in preprocess] == ["Cast", "Mul", "Add", "Transpose"]
    for node in preprocess:
        assert types[node.output[0]] == FLOAT, node.name
        assert all(types[i] in (FLOAT, TensorProto.UINT8) for i in node.input), node.name
    # The cast to float16 comes right after the Transpose, before the first Conv.
    transpose_out = nodes["edgedb_preprocess/transpose"].output[0]
    after = [n for n in graph.node if transpose_out in n.input]
    assert len(after) == 1 and cast_to(after[0]) == FLOAT16
    first_conv = [n for n in graph.node if after[0].output[0] in n.input]
    assert [n.op_type for n in first_conv] == ["Conv"]

    sigmoid = producers["prob"]
    assert sigmoid.op_type == "Sigmoid"
    assert types[sigmoid.input[0]] == FLOAT
    last_conv = producers[sigmoid.input[0]]
    while last_conv.op_type in ("Add", "DepthToSpace"):  # a bias left unfolded; the sub-pixel head's last step
        assert all(types[i] == FLOAT for i in last_conv.input)
        last_conv = producers[last_conv.input[0]]
    assert last_conv.op_type in ("Conv", "ConvTranspose") and all(types[i] == FLOAT for i in last_conv.input)
    assert types[last_conv.output[0]] == FLOAT

    pools = [n for n in graph.node if n.op_type == "GlobalAveragePool"]
    assert pools and all(types[n.input[0]] == FLOAT and types[n.output[0]] == FLOAT for n in pools)

    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes
    for node in resizes:
        assert types[node.input[0]] == FLOAT16 and types[node.output[0]] == FLOAT16
        assert all(types[name] == FLOAT for name in node.input[1:] if name)  # roi, scales

    # The BatchNormalization layers (one has running variance ~1e8) are folded away.
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]


def test_types_are_consistent_for_strongly_typed_builds(fp16_model):
    """Every node but Cast and Resize has all its float inputs in one type; no float32
    tensor is rounded through float16 and back."""
    types = tensor_types(fp16_model)
    half = 0
    for node in fp16_model.graph.node:
        if node.op_type in ("Cast", "Resize"):
            continue
        floats = {types[i] for i in node.input if i and types[i] in (FLOAT, FLOAT16)}
        assert len(floats) <= 1, (node.name, floats)
        half += floats == {FLOAT16}
    assert half >= 150
    assert lossy_round_trips(fp16_model) == []


def test_keep_more_in_float32(fp32_model):
    """Extra op types and named nodes stay float32; consecutive float32 nodes are joined
    without a float16 round trip (the converter leaves those; to_float16 removes them)."""
    some_conv = next(n.name for n in fp32_model.graph.node if n.op_type == "Conv")
    model = to_float16(fp32_model, keep_float32_ops=(*DEFAULT_KEEP_FLOAT32_OPS, "HardSwish", "Add", "Mul"),
                       keep_float32_nodes=[some_conv])
    onnx.checker.check_model(model, full_check=True)
    types = tensor_types(model)
    for node in model.graph.node:
        if node.op_type in ("HardSwish", "Add", "Mul") or node.name == some_conv:
            assert types[node.output[0]] == FLOAT, node.name
    assert lossy_round_trips(model) == []

    everything = to_float16(fp32_model, keep_float32_ops=sorted({n.op_type for n in fp32_model.graph.node}))
    assert [n for n in everything.graph.node if cast_to(n) is not None and n.name != "edgedb_preprocess/cast"] == []
    assert all(i.data_type == FLOAT for i in everything.graph.initializer)


# ---------------------------------------------------------------------------- parity


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_float32(fp32_model, fp16_model, seed):
    image = make_text_image(seed, size=(480, 640)).image
    prepared = prepare_limit(image, 736, "min")
    feed = {"image": prepared.frame[None]}
    ref = session(fp32_model).run(None, feed)[0]
    out = session(fp16_model).run(None, feed)[0]
    assert out.dtype == np.float32 and out.shape == ref.shape
    diff = np.abs(out - ref)
    assert diff.max() <= MAX_ABS
    assert np.percentile(diff, 99.9) <= P999_ABS
    assert diff.mean() <= MEAN_ABS
    ref_bin, out_bin = ref > 0.3, out > 0.3
    assert (ref_bin & out_bin).sum() / (ref_bin | out_bin).sum() >= MIN_IOU

    ch, cw = prepared.content
    ref_boxes = boxes_from_prob(ref[0, 0][:ch, :cw], dest_size=image.shape[:2])
    out_boxes = boxes_from_prob(out[0, 0][:ch, :cw], dest_size=image.shape[:2])
    assert len(ref_boxes) >= 5
    assert len(out_boxes) == len(ref_boxes)
    pairs = match([b.points for b in ref_boxes], [b.points for b in out_boxes], min_iou=0.9)
    assert len(pairs) == len(ref_boxes)


def test_detector_runs_the_float16_file(fp16_model, tmp_path):
    path = tmp_path / "ppocrv4-det-fp16.onnx"
    onnx.save(fp16_model, str(path))
    image = make_text_image(0, size=(480, 640)).image
    with EdgeDetector(path, backend="cpu", threads=2) as fp16, EdgeDetector(backend="cpu", threads=2) as fp32:
        assert len(fp16.detect(image)) == len(fp32.detect(image)) > 0


# --------------------------------------------------------------------------- errors


def test_model_without_spec_is_rejected(fp32_model):
    bare = onnx.ModelProto()
    bare.CopyFrom(fp32_model)
    bare.ClearField("metadata_props")
    with pytest.raises(ModelError, match="deployable"):
        to_float16(bare)


def test_model_without_fused_preprocessing_is_rejected(fp32_model):
    unfused = onnx.ModelProto()
    unfused.CopyFrom(fp32_model)
    store_spec(unfused, spec_from_metadata(fp32_model).with_(fused_preprocessing=False))
    with pytest.raises(ModelError, match="fused preprocessing"):
        to_float16(unfused)


def test_float16_model_is_rejected(fp16_model):
    with pytest.raises(ModelError, match="already"):
        to_float16(fp16_model)
    # Without the precision entry, the float16 tensors give it away.
    stripped = onnx.ModelProto()
    stripped.CopyFrom(fp16_model)
    for prop in list(stripped.metadata_props):
        if prop.key == PRECISION_KEY:
            stripped.metadata_props.remove(prop)
    with pytest.raises(ModelError, match="float16"):
        to_float16(stripped)


def test_other_precision_is_rejected(fp32_model):
    marked = onnx.ModelProto()
    marked.CopyFrom(fp32_model)
    marked.metadata_props.add(key=PRECISION_KEY, value="int8")
    with pytest.raises(ModelError, match="int8"):
        to_float16(marked)


def test_bad_arguments(fp32_model):
    with pytest.raises(InvalidInputTypeError):
        to_float16(fp32_model.SerializeToString())
    with pytest.raises(InvalidInputTypeError):
        to_float16(fp32_model, keep_float32_ops="Conv")
    with pytest.raises(InvalidInputError, match="no_such_node"):
        to_float16(fp32_model, keep_float32_nodes=["no_such_node"])
    assert METADATA_KEY in {p.key for p in fp32_model.metadata_props}


# ------------------------------------------------------------- BatchNormalization fold


def bn_model(rng) -> onnx.ModelProto:
    """Conv -> BN (huge variance, as in PP-OCRv4's head) -> Relu -> ConvTranspose -> Add
    bias -> BN -> output."""
    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    c = 4
    inits = [
        const("w1", rng.normal(0, 50, (c, 3, 3, 3))),
        const("g1", rng.uniform(0.7, 1.1, c)), const("b1", rng.normal(0, 0.4, c)),
        const("m1", rng.normal(0, 300, c)), const("v1", rng.uniform(1e7, 1e8, c)),
        const("w2", rng.normal(0, 0.5, (c, c, 2, 2))), const("t2", rng.normal(0, 0.2, (1, c, 1, 1))),
        const("g2", rng.uniform(1.5, 3, c)), const("b2", rng.normal(0, 0.5, c)),
        const("m2", rng.normal(0, 0.1, c)), const("v2", rng.uniform(0.02, 0.1, c)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2"], ["d2"], strides=[2, 2]),
        helper.make_node("Add", ["d2", "t2"], ["a2"]),
        helper.make_node("BatchNormalization", ["a2", "g2", "b2", "m2", "v2"], ["y"], epsilon=1e-5),
    ]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", FLOAT, [1, c, 16, 16])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_batchnorm_folds_exactly():
    rng = np.random.default_rng(0)
    model = bn_model(rng)
    graph = gs.import_onnx(model)
    assert _fold_batchnorm(graph) == 2
    folded = gs.export_onnx(graph)
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu", "ConvTranspose"]
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    ref = session(model).run(None, {"x": x})[0]
    out = session(folded).run(None, {"x": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
