"""Fine-tuning: the DB loss, the threshold head, a few training steps on generated images,
the export's parity with the trained model, and the train command."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgedb import InvalidInputError, MissingDependencyError, ModelError  # noqa: E402
from edgedb.backends.onnxrt import OnnxRuntimeBackend  # noqa: E402
from edgedb.cli import main  # noqa: E402
from edgedb.synthetic import make_dataset  # noqa: E402
from edgedb.train import finetune  # noqa: E402
from edgedb.train.data import synthetic_samples  # noqa: E402
from edgedb.train.loss import approximate_binary, balanced_bce, db_loss, dice_loss  # noqa: E402
from edgedb.train.model import INITIAL_THRESHOLD, TrainableDBNet, head_features, load_base  # noqa: E402


def test_balanced_bce_keeps_three_negatives_per_positive():
    target = torch.zeros(1, 10, 10)
    target[0, :2, :5] = 1  # 10 positives, 90 negatives
    mask = torch.ones_like(target)
    pred = torch.full_like(target, 0.5)
    pred[0, 9, :] = 0.99  # 10 very wrong negatives: the hardest
    loss = balanced_bce(pred, target, mask)
    # 10 positives at -log(0.5), the 30 hardest negatives: 10 at -log(0.01), 20 at -log(0.5)
    expected = (10 * np.log(2) + 10 * -np.log(0.01) + 20 * np.log(2)) / 40
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    mask[0, 9, :] = 0  # masked pixels are neither
    assert float(balanced_bce(pred, target, mask)) == pytest.approx(np.log(2), rel=1e-4)


def test_db_loss_terms():
    prob = torch.rand(2, 1, 16, 16, requires_grad=True)
    thresh = torch.full((2, 1, 16, 16), 0.3, requires_grad=True)
    shrink = (torch.rand(2, 16, 16) > 0.7).float()
    labels = {"shrink": shrink, "shrink_mask": torch.ones(2, 16, 16),
              "threshold": torch.full((2, 16, 16), 0.5), "threshold_mask": torch.ones(2, 16, 16)}
    total, terms = db_loss(prob, thresh, labels)
    binary = approximate_binary(prob[:, 0], thresh[:, 0]).detach()
    assert terms.threshold == pytest.approx(0.2, abs=1e-6)  # |0.3 - 0.5| everywhere
    assert terms.binary == pytest.approx(float(dice_loss(binary, shrink, labels["shrink_mask"])), rel=1e-5)
    assert terms.total == pytest.approx(terms.shrink + terms.binary + 10 * terms.threshold, rel=1e-5)
    total.backward()
    assert prob.grad.abs().sum() > 0 and thresh.grad.abs().sum() > 0
    only_prob, terms = db_loss(prob, None, labels, mode="prob")
    assert terms.total == terms.shrink
    with pytest.raises(InvalidInputError, match="threshold"):
        db_loss(prob, None, labels)
    with pytest.raises(InvalidInputError, match="binary_loss"):
        db_loss(prob, thresh, labels, binary_loss="l2")


@pytest.fixture(scope="module")
def net():
    model, spec = load_base("ppocrv4-det")
    return TrainableDBNet(model, spec)


def test_threshold_head_starts_at_a_constant_near_the_binarization_threshold(net):
    assert head_features(net.model, net.spec.prob_output)  # the FPN output the head reads
    frames = torch.from_numpy(np.stack([s.image for s in synthetic_samples(1, size=(128, 160))]))
    net.train(False)
    with torch.no_grad():
        prob, thresh = net(frames)
    assert prob.shape == thresh.shape == (1, 1, 128, 160)
    np.testing.assert_allclose(thresh.numpy(), INITIAL_THRESHOLD, atol=1e-6)


def test_unexported_models_and_bad_arguments_are_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_base(tmp_path / "x.onnx")
    samples = synthetic_samples(2, size=(96, 96))
    with pytest.raises(InvalidInputError, match="no training images"):
        finetune([])
    with pytest.raises(InvalidInputError, match="steps"):
        finetune(samples, steps=0)
    with pytest.raises(InvalidInputError, match="threads"):
        finetune(samples, threads=-1)
    with pytest.raises(InvalidInputError, match="freeze"):
        finetune(samples, freeze=1.0)


def test_freeze_early_keeps_the_first_weights_in_graph_order():
    model, spec = load_base("ppocrv4-det")
    net = TrainableDBNet(model, spec)
    everything = len(net.parameters())
    count = net.freeze_early(0.3)
    frozen = [net.graph.onnx_names[k] for k, p in net.graph.weights.items() if not p.requires_grad]
    assert len(frozen) == count == int(len(net.graph.weights) * 0.3)
    assert len(net.parameters()) == everything - count  # the optimizer gets the rest
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert first_conv.input[1] in frozen  # the stem's weights
    last_conv = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")][-1]
    assert last_conv.input[1] not in frozen  # the head's
    net.freeze_early(0.0)
    assert len(net.parameters()) == everything


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependencyError, match=r"\.\[train\]"):
        finetune(synthetic_samples(2, size=(96, 96)))


@pytest.fixture(scope="module")
def trained():
    samples = synthetic_samples(6, seed=3, size=(256, 256))
    return finetune(samples[:4], samples[4:], steps=8, batch_size=2, crop=160, lr=1e-3, val_every=4,
                    threads=2, progress=False)


def test_a_few_steps_lower_the_loss_and_keep_the_interface(trained):
    losses = [terms.total for _, terms, _ in trained.history]
    assert len(losses) == 8 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert [step for step, _, h in trained.history if h is not None] == [4, 8]
    assert 0 <= trained.base.hmean <= 1 and trained.best.hmean >= trained.base.hmean


def test_export_reproduces_the_trained_model(tmp_path):
    """The export is the base graph with the trained weights: ONNX Runtime on it gives the
    PyTorch model's map."""
    model, spec = load_base("ppocrv4-det")
    net = TrainableDBNet(model, spec, threshold_head=False)
    with torch.no_grad():  # stand-in for training: move every weight
        for parameter in net.parameters():
            parameter.mul_(1.01)
    exported = net.export()
    assert [i.name for i in exported.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in exported.graph.output] == [o.name for o in model.graph.output]
    frame = synthetic_samples(1, seed=5, size=(160, 224))[0].image
    net.train(False)
    with torch.no_grad():
        expected = net(torch.from_numpy(frame)[None])[0].numpy()
    x = (frame[None].astype(np.float32) - np.array(spec.mean, np.float32) * 255) / (np.array(spec.std, np.float32) * 255)
    with OnnxRuntimeBackend(exported) as backend:
        got = backend.infer({spec.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[spec.prob_output]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    with OnnxRuntimeBackend(model) as backend:  # and it did change
        base = backend.infer({spec.input_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[spec.prob_output]
    assert np.abs(base - expected).max() > 1e-3


def test_a_model_no_better_than_the_base_is_not_written(trained, tmp_path):
    if trained.improved:
        path = trained.save(tmp_path / "tuned.onnx")
        assert path.is_file()
    worse = type(trained)(trained.base, trained.base, 0, 1, 0.0, None)
    with pytest.raises(ModelError, match="no checkpoint beat the base"):
        worse.save(tmp_path / "worse.onnx")
    assert not (tmp_path / "worse.onnx").exists()


def test_cli(tmp_path, capsys):
    make_dataset(tmp_path / "data", 4, size=(256, 256), seed=11)
    out = tmp_path / "tuned.onnx"
    code = main(["train", "--images", str(tmp_path / "data"), "--steps", "2", "--batch-size", "1",
                 "--crop", "128", "--threads", "2", "-o", str(out)])
    captured = capsys.readouterr()
    assert "validation before: P" in captured.out and "validation after:" in captured.out
    assert (code == 0 and out.is_file()) or (code == 2 and "no checkpoint beat the base" in captured.err)
    assert main(["train", "--images", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert main(["train", "--images", str(tmp_path / "data"), "-o", str(tmp_path / "no" / "x.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_head_features_see_through_biases_computed_from_constants():
    """PP-OCRv3 det adds its head's ConvTranspose bias through a Reshape of a Constant: that
    Add still has one variable input."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.ones((4, 1, 2, 2), np.float32), "wt"),
             numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "shape")]
    nodes = [helper.make_node("Concat", ["a", "b"], ["fpn"], axis=1),
             helper.make_node("Conv", ["fpn", "w"], ["c"]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["u"], strides=[2, 2]),
             helper.make_node("Constant", [], ["bias_flat"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Reshape", ["bias_flat", "shape"], ["bias"]),
             helper.make_node("Add", ["u", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["prob"])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 8, 8])
                                              for n in ("a", "b")],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)], inits)
    assert head_features(helper.make_model(graph), "prob") == "fpn"
