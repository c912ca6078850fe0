"""Quantization-aware training by distillation: the fake-quant model reproduces the
post-training Q/DQ model, the export writes the same kind of model back, the loss
weighs text, and the loop and `edgedb quantize --qat` run end to end on generated images."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from edgedb import InvalidInputError, ModelError  # noqa: E402
from edgedb.cli import main  # noqa: E402
from edgedb.precision.bias_correction import FRAMES  # noqa: E402
from edgedb.precision.calibration import calibration_images, collect_stats  # noqa: E402
from edgedb.precision.int8 import quantize_int8  # noqa: E402
from edgedb.preprocess import prepare_fixed  # noqa: E402
from edgedb.spec import PRECISION_KEY  # noqa: E402
from edgedb.synthetic import make_text_image  # noqa: E402
from edgedb.train.qat import (  # noqa: E402
    QAT_SUFFIX,
    Agreement,
    binary_iou,
    distill_int8,
    distillation_loss,
    export_qdq,
    fake_quant_graph,
    fake_quant_module,
)

SIZE = (320, 480)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat_calib")
    for seed in range(5):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(60 + seed, size=SIZE).image)
    return folder


@pytest.fixture(scope="module")
def quantized(fp32, calib_dir, tmp_path_factory):
    stats = collect_stats(fp32, calibration_images(calib_dir), input_size=SIZE,
                          cache_dir=tmp_path_factory.mktemp("qat_stats"), progress=False)
    return {target: quantize_int8(fp32, stats, target=target) for target in ("tensorrt", "cpu")}


@pytest.fixture(scope="module")
def frame():
    return prepare_fixed(make_text_image(91, size=SIZE).image, SIZE).frame[None]


def ort_map(model, frame):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["prob"], {"image": frame})[0][0, 0]


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_fake_quant_module_reproduces_the_post_training_model(quantized, frame, target):
    graph = fake_quant_graph(quantized[target])
    module = fake_quant_module(graph)
    with torch.no_grad():
        prob = module(torch.from_numpy(frame))["prob"][0, 0].numpy()
    reference = ort_map(quantized[target], frame)
    # Float sums in another order can put a value on the other side of a rounding
    # boundary now and then; the maps agree but for those.
    assert np.abs(prob - reference).mean() < 2e-3
    assert binary_iou([prob], [reference]) > 0.97


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_untrained_export_is_the_post_training_model(quantized, target):
    model = quantized[target]
    graph = fake_quant_graph(model)
    exported = export_qdq(fake_quant_module(graph), graph, model)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in model.graph.node]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    precision = {p.key: p.value for p in exported.metadata_props}[PRECISION_KEY]
    assert precision.startswith(f"int8-{target}") and precision.endswith(QAT_SUFFIX)
    assert not any(n.domain for n in exported.graph.node)  # no training-only operators left


def test_weights_stay_in_the_post_training_range(quantized):
    model = quantized["cpu"]
    graph = fake_quant_graph(model)
    module = fake_quant_module(graph)
    weight = next(l for l in graph.latents.values() if l.dtype == np.int8 and l.integer_units)
    assert (weight.qmin, weight.qmax) == (-64, 64)  # 7-bit CPU weights
    key = next(k for k, n in module.onnx_names.items() if n == weight.name)
    with torch.no_grad():
        module.weights[key].fill_(1000.0)
    exported = export_qdq(module, graph, model)
    written = next(numpy_helper.to_array(t) for t in exported.graph.initializer if t.name == weight.target)
    assert written.dtype == np.int8 and np.all(written == 64)
    tensorrt = fake_quant_graph(quantized["tensorrt"])
    assert {(l.qmin, l.qmax) for l in tensorrt.latents.values()} == {(-127, 127)}  # symmetric int8


def test_gradients_reach_every_integer_weight(quantized, frame):
    graph = fake_quant_graph(quantized["tensorrt"])
    module = fake_quant_module(graph)
    logit = module(torch.from_numpy(frame), outputs=[graph.logit])[graph.logit]
    logit.mean().backward()
    latents = [p for k, p in module.weights.items() if module.onnx_names[k] in graph.latents]
    assert len(latents) == sum(n.op_type == "Conv" for n in quantized["tensorrt"].graph.node)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in latents)
    # (A squeeze-excite block whose hard-sigmoid saturates on a frame passes no gradient.)
    assert sum(float(p.grad.abs().sum()) > 0 for p in latents) >= 0.9 * len(latents)


def test_distillation_loss_weighs_text_like_the_rest():
    teacher = torch.zeros(1, 1, 64, 64)
    teacher[..., 30:34, 10:50] = 0.9  # one word
    logit = torch.logit(teacher.clamp(1e-4, 1 - 1e-4)).requires_grad_(True)
    distillation_loss(logit, teacher).backward()
    assert logit.grad.abs().max() < 1e-3  # a perfect student: nothing to learn
    missed = logit.detach().clone()
    missed[..., 30:34, 10:50] = -5.0  # the word lost
    false = logit.detach().clone()
    false[..., 0:4, 10:50] = 5.0  # as many false pixels in the empty part
    lost, alarm = float(distillation_loss(missed, teacher)), float(distillation_loss(false, teacher))
    assert lost > 1.0 and alarm > 1.0  # either costs about as much as a region's mean
    plain = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(plain(missed, teacher)) < lost / 10  # a plain mean would hardly see the lost word


def test_binary_iou():
    a = np.zeros((4, 4), np.float32)
    b = a.copy()
    a[:2] = 1
    b[1:3] = 1
    assert binary_iou([a], [b]) == pytest.approx(4 / 12)
    assert binary_iou([np.zeros((2, 2))], [np.zeros((2, 2))]) == 1.0


def test_box_agreement():
    from edgedb.precision.agreement import box_agreement

    reference = np.zeros((96, 160), np.float32)
    reference[20:32, 10:70] = 0.9  # two words
    reference[60:72, 40:140] = 0.9
    same = reference.copy()
    same[20, 10:70] = 0.2  # a border row lost: every box kept
    merged = reference.copy()
    merged[32:60, 40:70] = 0.9  # the two words joined into one region
    extra = reference.copy()
    extra[80:90, 5:40] = 0.9  # a false word
    assert box_agreement([same], [reference]) == 1.0 and binary_iou([same], [reference]) < 1.0
    assert box_agreement([merged], [reference]) == 0.0  # one box that matches neither word
    assert box_agreement([extra], [reference]) == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert box_agreement([np.zeros_like(reference)], [np.zeros_like(reference)]) == 1.0
    with pytest.raises(InvalidInputError, match="2 maps against 1"):
        box_agreement([same, same], [reference])


def test_distill_int8_runs_and_never_returns_a_worse_model(fp32, quantized, calib_dir):
    images = calibration_images(calib_dir)
    result = distill_int8(fp32, quantized["tensorrt"], images, steps=3, batch_size=2, crop=96, held_back=2,
                          val_every=1, input_size=SIZE, progress=False, threads=1)
    assert result.held_back == 2 and result.steps <= 3 and len(result.history) == result.steps
    assert 0 <= result.ptq.boxes <= 1 and 0 <= result.ptq.iou <= 1
    choice = result.choice
    assert choice.frames == len(images) - min(FRAMES, len(images) - 2)  # all but the correction's frames
    assert choice.labelled == 0 and choice.post_training_hmean is None
    assert result.start == ("bias-corrected" if choice.corrected > choice.post_training else "post-training")
    if result.improved:
        assert result.best_step >= 1 or result.start == "bias-corrected"
        assert result.best > result.ptq or result.start == "bias-corrected"
        assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in quantized["tensorrt"].graph.node]
    else:
        assert result.model is None and result.best_step == 0 and result.best == result.ptq


def test_distill_int8_chooses_its_start_by_labels(fp32, quantized, calib_dir):
    images = calibration_images(calib_dir)
    truth = {path: make_text_image(60 + seed, size=SIZE).polygons for seed, path in
             enumerate(sorted(calib_dir.glob("scene_*.jpg")))}
    labels = [truth[path] for path in images]
    labels[0] = None  # an unlabelled image
    result = distill_int8(fp32, quantized["tensorrt"], images, steps=1, batch_size=1, crop=96, held_back=2,
                          ground_truth=labels, input_size=SIZE, progress=False, threads=1)
    choice = result.choice
    judged = choice.frames
    assert choice.labelled in (judged - 1, judged)  # all judged frames but the unlabelled one, if judged
    assert 0 <= choice.post_training_hmean <= 1 and 0 <= choice.corrected_hmean <= 1
    assert result.start == ("bias-corrected" if choice.corrected_better else "post-training")
    with pytest.raises(InvalidInputError, match="one per image"):
        distill_int8(fp32, quantized["tensorrt"], images, ground_truth=labels[:2], progress=False)


def test_start_choice_by_labels_then_agreement():
    from edgedb.train.qat import MIN_LABELLED, StartChoice

    better, worse = Agreement(0.9, 0.9), Agreement(0.8, 0.9)
    # Labels decide when enough frames have them, whatever the agreement says...
    assert StartChoice(better, worse, 50, MIN_LABELLED, 0.40, 0.43).corrected_better
    assert not StartChoice(worse, better, 50, MIN_LABELLED, 0.43, 0.40).corrected_better
    # ... the agreement on a tie, or with too few labelled frames, or none.
    assert StartChoice(worse, better, 50, MIN_LABELLED, 0.4, 0.4).corrected_better
    assert not StartChoice(better, worse, 50, MIN_LABELLED - 1, 0.40, 0.43).corrected_better
    assert StartChoice(worse, better, 50).corrected_better
    assert "labels of 10" in str(StartChoice(better, worse, 50, 10, 0.4, 0.43))
    assert "the agreement decides" in str(StartChoice(better, worse, 50, 1, 0.4, 0.43))


def test_label_hmean_in_the_images_pixels():
    from edgedb.precision.agreement import label_hmean
    from edgedb.preprocess import PreparedFrame

    prob = np.zeros((64, 96), np.float32)
    prob[10:20, 10:50] = 0.9  # a word in the top-left content region (48x80 of the padded frame)
    frame = PreparedFrame(np.zeros((64, 96, 3), np.uint8), (48, 80), (96, 160))  # image at twice the frame's size
    word = [(12, 12), (108, 12), (108, 48), (12, 48)]  # roughly the region, dilated, in image pixels
    assert label_hmean([prob], [frame], [[word]]) == 1.0
    assert label_hmean([prob], [frame], [[[(p[0] + 60, p[1] + 60) for p in word]]]) == 0.0
    with pytest.raises(InvalidInputError, match="one of each"):
        label_hmean([prob], [frame, frame], [[word]])


def test_distill_int8_without_bias_correction(fp32, quantized, calib_dir):
    images = calibration_images(calib_dir)
    result = distill_int8(fp32, quantized["cpu"], images, steps=2, batch_size=1, crop=96, held_back=2,
                          bias_correction=False, input_size=SIZE, progress=False, threads=1)
    assert result.choice is None and result.start == "post-training"
    assert result.improved == (result.best > result.ptq)


def test_distill_int8_stops_at_its_time_limit(fp32, quantized, calib_dir):
    images = calibration_images(calib_dir)
    result = distill_int8(fp32, quantized["tensorrt"], images, steps=50, batch_size=1, crop=96, held_back=2,
                          bias_correction=False, time_limit=1e-3, input_size=SIZE, progress=False, threads=1)
    assert result.steps == 1 and result.history[0][2] is not None  # one step, then a last measurement
    with pytest.raises(InvalidInputError, match="time_limit"):
        distill_int8(fp32, quantized["tensorrt"], images, time_limit=0, progress=False)


def test_agreement_orders_boxes_first():
    assert Agreement(0.9, 0.5) > Agreement(0.8, 0.99) > Agreement(0.8, 0.9)
    assert "boxes 0.9000" in str(Agreement(0.9, 0.5))


def test_distill_int8_errors(fp32, quantized, calib_dir):
    images = calibration_images(calib_dir)
    with pytest.raises(InvalidInputError, match="at least 4"):
        distill_int8(fp32, quantized["cpu"], images[:3], progress=False)
    with pytest.raises(InvalidInputError, match="steps"):
        distill_int8(fp32, quantized["cpu"], images, steps=0, progress=False)
    with pytest.raises(ModelError, match="DequantizeLinear"):
        fake_quant_graph(fp32)


def test_quantize_qat_cli(fp32, calib_dir, tmp_path, capsys):
    out, gt = tmp_path / "qat.onnx", tmp_path / "gt"
    gt.mkdir()
    for seed in range(4):  # labels for four of the five images
        lines = [",".join(str(int(round(v))) for v in polygon.reshape(-1)) + ",word"
                 for polygon in make_text_image(60 + seed, size=SIZE).polygons]
        (gt / f"gt_scene_{seed}.txt").write_text("\n".join(lines) + "\n")
    code = main(["quantize", "ppocrv4-det", "--calib", str(calib_dir), "--qat", "--steps", "2", "--gt", str(gt),
                 "--input-size", f"{SIZE[0]}x{SIZE[1]}", "--cache", str(tmp_path), "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "quantization-aware training" in printed and "IoU" in printed and "bias-corrected" in printed
    assert "labels for 4 of 5 calibration images" in printed and "hmean against the labels" in printed
    model = onnx.load(str(out))
    precision = {p.key: p.value for p in model.metadata_props}[PRECISION_KEY]
    assert precision.startswith("int8-tensorrt")


def test_qat_flag_needs_int8(calib_dir, tmp_path, capsys):
    code = main(["quantize", "ppocrv4-det", "--calib", str(calib_dir), "--qat", "--precision", "fp16",
                 "-o", str(tmp_path / "x.onnx")])
    assert code != 0
    assert "--qat" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--no-bias-correction"], "is for --qat"),
    (["--gt", "."], "use it with --qat"),
    (["--qat", "--no-bias-correction", "--gt", "."], "without --no-bias-correction"),
    (["--qat", "--gt", "no-such-folder"], "not a folder"),
    (["--qat", "--bias-correction", "--no-bias-correction"], "contradict"),
])
def test_bias_correction_flags(calib_dir, tmp_path, capsys, flags, message):
    code = main(["quantize", "ppocrv4-det", "--calib", str(calib_dir), *flags, "-o", str(tmp_path / "x.onnx")])
    assert code != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_learned_scales_are_written_to_both_nodes_of_a_pair(quantized, frame, target):
    model = quantized[target]
    graph = fake_quant_graph(model)
    module = fake_quant_module(graph, learn_scales=True)
    keys = {n: k for k, n in module.onnx_names.items()}
    with torch.no_grad():
        for name in graph.activation_scales:
            module.weights[keys[name]].mul_(1.25)
        prob = module(torch.from_numpy(frame))["prob"][0, 0].numpy()
    exported = export_qdq(module, graph, model)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    for q_scale, dq_scale, ratio in graph.scales:
        assert float(after[q_scale]) == pytest.approx(1.25 * float(before[q_scale]), rel=1e-6)
        assert float(after[dq_scale]) == pytest.approx(ratio * float(after[q_scale]), rel=1e-6)
        assert after[q_scale].shape == before[q_scale].shape
    if target == "cpu":
        assert any(ratio != 1.0 for _, _, ratio in graph.scales)  # scalar Muls folded into pairs
    # The exported model computes what the module does with those scales, up to the
    # rounding of ONNX Runtime's integer kernels (QLinearConv requantizes its output; the
    # biases are back on the grid those kernels need), which fake quantization models
    # only approximately.
    assert binary_iou([ort_map(exported, frame)], [prob]) > 0.95


def test_models_torch_cannot_run_are_refused_before_any_image(calib_dir, tmp_path, capsys):
    """quantize --qat and train name the missing operators before calibration, bias
    correction or reading the training images (the folders given do not exist: reading
    them first would fail with another error)."""
    from test_graph import tiny_dbnet

    model = tiny_dbnet(opset=12)
    relu = next(n for n in model.graph.node if n.name == "relu1")
    relu.op_type = "Celu"  # ONNX Runtime runs it; OnnxModule does not
    path = tmp_path / "celu.onnx"
    onnx.save(model, str(path))
    code = main(["quantize", str(path), "--calib", str(tmp_path / "missing"), "--qat", "-o", str(tmp_path / "q.onnx")])
    assert code == 2 and "unsupported operators Celu" in capsys.readouterr().err
    code = main(["train", "--base", str(path), "--images", str(tmp_path / "missing"), "-o", str(tmp_path / "t.onnx")])
    assert code == 2 and "unsupported operators Celu" in capsys.readouterr().err


def test_biases_go_back_on_the_grid_onnx_runtime_fuses():
    """After QAT moved an activation scale, int32 biases are put back on input scale x
    weight scale (else ONNX Runtime runs the convolution in float), keeping their values."""
    from onnx import TensorProto, helper, numpy_helper

    from edgedb.train.qat import _regrid_biases

    rng = np.random.default_rng(0)
    sx, sx_before = np.float32(0.04), np.float32(0.05)  # the trained scale, and the one the bias was made for
    sw = rng.uniform(0.005, 0.02, 4).astype(np.float32)
    bias = rng.normal(0, 0.5, 4)
    inits = {"sx": sx, "zx": np.uint8(128), "w": rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8),
             "sw": sw, "zw": np.zeros(4, np.int8), "b": np.round(bias / (sx_before * sw)).astype(np.int32),
             "sb": (sx_before * sw).astype(np.float32), "zb": np.zeros(4, np.int32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "qconv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert _regrid_biases(model) == 1
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(values["sb"], sx * sw, rtol=1e-6)
    np.testing.assert_allclose(values["b"] * values["sb"], bias, atol=float((sx * sw).max()))
    np.testing.assert_allclose(run(model), before, atol=float((sx * sw).max()))
    assert _regrid_biases(model) == 0  # on the grid already
