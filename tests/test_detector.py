"""EdgeDetector on generated images: accuracy, coordinates, modes, and bad input."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from boxmatch import match
from onnx import TensorProto, helper

import edgedb
from edgedb import EdgeDetector, InvalidInputError, InvalidInputTypeError, MissingDependencyError, ModelError
from edgedb.evaluation import EvalResult, evaluate_image
from edgedb.synthetic import make_text_image


@pytest.fixture(scope="module")
def scenes():
    return [make_text_image(seed, size=(480, 640)) for seed in range(4)]


def test_finds_generated_words(detector, scenes):
    results = [evaluate_image(detector.detect(s.image), s.polygons, str(i)) for i, s in enumerate(scenes)]
    summary = EvalResult.from_images(results)
    assert summary.recall >= 0.6 and summary.precision >= 0.6, summary


def test_boxes_are_in_original_pixels(detector, scenes):
    image = scenes[0].image
    big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    small_boxes = detector.detect(image)
    big_boxes = detector.detect(big)
    assert small_boxes
    for box in big_boxes:
        assert (box.points[:, 0] <= big.shape[1]).all() and (box.points[:, 1] <= big.shape[0]).all()
    halved = [b.points / 2 for b in big_boxes]
    assert len(match([b.points for b in small_boxes], halved, 0.6)) >= 0.8 * len(small_boxes)


def test_gray_and_bgra_and_path_inputs(detector, scenes, tmp_path):
    image = scenes[1].image
    reference = detector.detect(image)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert len(detector.detect(gray)) > 0
    assert len(detector.detect(gray[:, :, None])) > 0
    bgra = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    assert [b.points.tolist() for b in detector.detect(bgra)] == [b.points.tolist() for b in reference]
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), image)
    assert [b.points.tolist() for b in detector.detect(path)] == [b.points.tolist() for b in reference]
    assert [b.points.tolist() for b in detector.detect(str(path))] == [b.points.tolist() for b in reference]


def test_tiny_and_extreme_images(detector):
    assert detector.detect(np.zeros((1, 1, 3), np.uint8)) == []
    assert detector.detect(np.full((3, 5000, 3), 255, np.uint8)) == []
    huge = np.full((6000, 6000, 3), 255, np.uint8)  # capped at max_side_len, not run at 6000 px
    assert detector.detect(huge) == []


@pytest.mark.parametrize(
    "bad, error",
    [
        (None, InvalidInputTypeError),
        (np.zeros((32, 32, 3), np.float32), InvalidInputTypeError),
        (np.zeros((0, 32, 3), np.uint8), InvalidInputError),
        (np.zeros((32, 32, 2), np.uint8), InvalidInputError),
        (np.zeros((2, 32, 32, 3), np.uint8), InvalidInputError),
        ([[1, 2, 3]], InvalidInputTypeError),
        ("/no/such/image.png", InvalidInputError),
    ],
)
def test_bad_images(detector, bad, error):
    with pytest.raises(error):
        detector.detect(bad)


def test_file_that_is_not_an_image(detector, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(InvalidInputError, match="not an image"):
        detector.detect(path)


def test_a_bad_frame_ends_the_stream_after_the_boxes_before_it(detector, scenes):
    images = [s.image for s in scenes[:2]]
    stream = detector.stream(iter([images[0], images[1], np.zeros((4, 4, 5), np.uint8), images[0]]))
    assert len(next(stream)) and len(next(stream))  # both good frames, then the error
    with pytest.raises(InvalidInputError):
        next(stream)


def test_batch_and_stream_match_single(detector, scenes):
    images = [s.image for s in scenes] + [scenes[0].image[:300, :500]]
    single = [[b.points.tolist() for b in detector.detect(image)] for image in images]
    batch = [[b.points.tolist() for b in boxes] for boxes in detector.detect_batch(images)]
    stream = [[b.points.tolist() for b in boxes] for boxes in detector.stream(iter(images))]
    assert batch == single
    assert stream == single
    with pytest.raises(InvalidInputError):
        detector.detect_batch(images[0])


def test_fixed_input_size_letterboxes_and_maps_back(scenes):
    with EdgeDetector(input_size=(480, 640), threads=2) as fixed, EdgeDetector(threads=2) as free:
        for scene in scenes[:2]:
            image = cv2.resize(scene.image, (500, 300))  # not the input aspect: padded
            a = [b.points for b in fixed.detect(image)]
            b = [b.points for b in free.detect(image)]
            assert len(match(a, b, 0.5)) >= 0.7 * max(len(a), len(b))


def test_context_manager_and_close(scenes):
    detector = EdgeDetector(threads=1)
    with detector:
        assert detector.detect(scenes[0].image)
    detector.close()  # idempotent
    with pytest.raises(edgedb.EdgeDBError, match="closed"):
        detector.detect(scenes[0].image)


def test_bad_options():
    with pytest.raises(InvalidInputError):
        EdgeDetector(box_thresh=2.0)
    with pytest.raises(InvalidInputError):
        EdgeDetector(limit_type="middle")
    with pytest.raises(InvalidInputError):
        EdgeDetector(input_size=(500, 640))
    with pytest.raises(InvalidInputError, match="backend"):
        EdgeDetector(backend="gpu")


def test_tensorrt_without_the_extra_names_it():
    pytest.importorskip("pytest")  # always present; TensorRT is not on CPU machines
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"\[tensorrt\]"):
        EdgeDetector(backend="tensorrt")


def test_rewritten_model_needs_no_other_argument(tmp_path, scenes):
    from edgedb.graph import rewrite_file
    from edgedb.models import resolve_model, zoo_spec

    out = tmp_path / "deploy.onnx"
    rewrite_file(resolve_model("ppocrv4-det"), out, zoo_spec("ppocrv4-det"))
    with EdgeDetector(model=out, threads=2) as from_file, EdgeDetector(threads=2) as from_zoo:
        assert from_file.spec.fused_preprocessing
        a = [b.points.tolist() for b in from_file.detect(scenes[2].image)]
        b = [b.points.tolist() for b in from_zoo.detect(scenes[2].image)]
        assert a == b


def test_not_a_dbnet(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "mlp", [x], [y]))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="DBNet"):
        EdgeDetector(model=path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not a model")
    with pytest.raises(ModelError):
        EdgeDetector(model=garbage)
    with pytest.raises(ModelError, match="zoo"):
        EdgeDetector(model="no-such-model")
