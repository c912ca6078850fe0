"""Tests for the ICDAR 2015 evaluation (edgedb.evaluation), on hand-made cases only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedb.boxes import TextBox
from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.evaluation import (
    EvalResult,
    GroundTruthBox,
    IcdarDataset,
    ImageResult,
    evaluate,
    evaluate_image,
    load_icdar_gt,
    parse_icdar_gt,
)
from edgedb.synthetic import make_dataset


def rect(x0, y0, x1, y1):
    """Clockwise quad (image coordinates) of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)


def gt(x0, y0, x1, y1, text="word"):
    return GroundTruthBox(rect(x0, y0, x1, y1), text, text == "###")


def care(*rects):
    return [gt(*r) for r in rects]


def dont_care(*rects):
    return [gt(*r, text="###") for r in rects]


def counts(result: ImageResult):
    return result.gt_care, result.det_care, result.matched, result.ignored_detections


# --------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------


def test_perfect_detection():
    truth = care((0, 0, 10, 10), (20, 5, 60, 25), (100, 100, 130, 140))
    result = evaluate_image([b.points for b in truth], truth, name="a")
    assert counts(result) == (3, 3, 3, 0)
    assert (result.precision, result.recall, result.hmean) == (1.0, 1.0, 1.0)
    assert result.name == "a"
    assert result.matches == [(0, 0), (1, 1), (2, 2)]


def test_iou_exactly_half_does_not_match():
    truth = care((0, 0, 10, 10))
    assert evaluate_image([rect(0, 0, 10, 5)], truth).matched == 0  # IoU 50/100
    assert evaluate_image([rect(0, 0, 10, 5.1)], truth).matched == 1  # IoU 0.51
    # Larger detection: IoU 100/200 = 0.5 does not match, 100/195 does.
    assert evaluate_image([rect(0, 0, 20, 10)], truth).matched == 0
    assert evaluate_image([rect(0, 0, 19.5, 10)], truth).matched == 1


def test_iou_half_rotated_polygon():
    # A diamond inscribed in a 2x2 square has half its area: IoU exactly 0.5.
    square = care((0, 0, 2, 2))
    diamond = np.array([[1, 0], [2, 1], [1, 2], [0, 1]], dtype=np.float32)
    assert evaluate_image([diamond], square).matched == 0
    # Grow the diamond slightly: IoU > 0.5.
    bigger = np.array([[1, -0.1], [2.1, 1], [1, 2.1], [-0.1, 1]], dtype=np.float32)
    assert evaluate_image([bigger], square).matched == 1


def test_two_detections_on_one_gt():
    truth = care((0, 0, 100, 20))
    result = evaluate_image([rect(0, 0, 100, 20), rect(2, 1, 98, 21)], truth)
    assert counts(result) == (1, 2, 1, 0)
    assert result.precision == 0.5 and result.recall == 1.0
    assert result.hmean == pytest.approx(2 / 3)


def test_one_detection_over_two_gts_matches_once():
    # Two overlapping GT boxes; the detection has IoU 95/105 with each.
    truth = care((0, 0, 10, 10), (1, 0, 11, 10))
    result = evaluate_image([rect(0.5, 0, 10.5, 10)], truth)
    assert counts(result) == (2, 1, 1, 0)
    assert result.matches == [(0, 0)]
    assert result.precision == 1.0 and result.recall == 0.5


def test_greedy_order_is_gt_major_first_qualifying_detection():
    truth = care((0, 0, 10, 10), (0, 0, 10, 9))
    # d0 has IoU 0.8 with GT 0, d1 is identical to GT 0 (IoU 1). GT 0 takes d0 (first
    # qualifying detection, not the best), GT 1 then takes d1 (IoU 0.9).
    result = evaluate_image([rect(0, 0, 10, 8), rect(0, 0, 10, 10)], truth)
    assert result.matches == [(0, 0), (1, 1)]
    assert result.matched == 2


def test_detection_mostly_inside_dont_care_is_ignored():
    truth = care((200, 200, 240, 220)) + dont_care((0, 0, 100, 100))
    inside = rect(10, 10, 50, 50)  # 100% inside the ### region
    mostly_in = rect(76, 0, 116, 40)  # 24/40 = 60% inside
    half = rect(80, 0, 120, 40)  # exactly 50% inside: not ignored -> FP
    outside = rect(90, 90, 130, 130)  # 100/1600 inside -> FP
    result = evaluate_image([inside, mostly_in, half, outside, rect(200, 200, 240, 220)], truth)
    assert result.ignored == [0, 1]
    assert counts(result) == (1, 3, 1, 2)
    assert result.precision == pytest.approx(1 / 3)
    assert result.recall == 1.0


def test_detection_on_dont_care_is_not_a_true_positive():
    truth = dont_care((0, 0, 100, 100))
    result = evaluate_image([rect(0, 0, 100, 100)], truth)
    assert counts(result) == (0, 0, 0, 1)
    assert (result.precision, result.recall, result.hmean) == (1.0, 1.0, 1.0)


def test_dont_care_gt_does_not_reduce_recall():
    truth = care((0, 0, 50, 20)) + dont_care((100, 0, 150, 20), (200, 0, 250, 20))
    result = evaluate_image([rect(0, 0, 50, 20)], truth)
    assert counts(result) == (1, 1, 1, 0)
    assert result.recall == 1.0 and result.precision == 1.0


def test_empty_images():
    none = evaluate_image([], [])
    assert counts(none) == (0, 0, 0, 0)
    assert (none.precision, none.recall, none.hmean) == (1.0, 1.0, 1.0)

    # Detections but no GT: all false positives; recall is 1 by convention.
    no_gt = evaluate_image([rect(0, 0, 5, 5)], [])
    assert counts(no_gt) == (0, 1, 0, 0)
    assert (no_gt.precision, no_gt.recall, no_gt.hmean) == (0.0, 1.0, 0.0)

    # GT but no detections.
    no_det = evaluate_image([], care((0, 0, 5, 5)))
    assert counts(no_det) == (1, 0, 0, 0)
    assert (no_det.precision, no_det.recall, no_det.hmean) == (0.0, 0.0, 0.0)

    # Only don't-care GT and no detections: nothing to find, nothing wrong.
    only_dc = evaluate_image([], dont_care((0, 0, 5, 5)))
    assert (only_dc.precision, only_dc.recall, only_dc.hmean) == (1.0, 1.0, 1.0)

    # None is accepted for "nothing".
    assert counts(evaluate_image(None, None)) == (0, 0, 0, 0)


def test_degenerate_polygons():
    truth = care((0, 0, 10, 10))
    # Zero-area detection: matches nothing and is a false positive.
    line = np.array([[0, 0], [10, 0], [10, 0], [0, 0]], dtype=np.float32)
    result = evaluate_image([line], truth)
    assert counts(result) == (1, 1, 0, 0)
    # Zero-area detection over a don't-care region is not ignored.
    assert counts(evaluate_image([line], dont_care((0, 0, 10, 10)))) == (0, 1, 0, 0)
    # Zero-area care GT counts toward recall but cannot be matched.
    flat = [GroundTruthBox(line, "x", False)]
    assert counts(evaluate_image([rect(0, 0, 10, 10)], flat)) == (1, 1, 0, 0)
    # A self-intersecting "bow-tie" quad is made valid instead of failing.
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=np.float32)
    result = evaluate_image([bowtie], truth)
    assert result.det_care == 1 and result.matched == 0  # area 50 of 100: IoU 0.5


def test_detection_input_forms():
    truth = care((0, 0, 10, 10), (20, 0, 30, 10))
    as_boxes = [TextBox(rect(0, 0, 10, 10), 0.9), TextBox(rect(20, 0, 30, 10), 0.8)]
    as_lists = [[[0, 0], [10, 0], [10, 10], [0, 10]], [(20, 0), (30, 0), (30, 10), (20, 10)]]
    as_array = np.stack([rect(0, 0, 10, 10), rect(20, 0, 30, 10)])
    # Polygons with more than four points (an octagon-ish outline of the second box).
    poly = np.array([[20, 0], [25, 0], [30, 0], [30, 5], [30, 10], [25, 10], [20, 10], [20, 5]])
    for dets in (as_boxes, as_lists, as_array, [as_boxes[0], poly], truth):
        result = evaluate_image(dets, truth)
        assert counts(result) == (2, 2, 2, 0)
    # Plain polygons as ground truth count as care regions.
    assert counts(evaluate_image(as_boxes, [b.points for b in truth])) == (2, 2, 2, 0)


def test_bad_inputs():
    truth = care((0, 0, 10, 10))
    with pytest.raises(InvalidInputError, match="K >= 3"):
        evaluate_image([np.zeros((2, 2))], truth)
    with pytest.raises(InvalidInputError, match="non-finite"):
        evaluate_image([rect(0, 0, np.nan, 10)], truth)
    with pytest.raises(InvalidInputError, match="wrap a single polygon"):
        evaluate_image(rect(0, 0, 10, 10), truth)
    with pytest.raises(InvalidInputTypeError):
        evaluate_image([object()], truth)
    with pytest.raises(InvalidInputTypeError, match="load_icdar_gt"):
        evaluate_image([], "gt_img_1.txt")


# --------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------


def test_micro_aggregation_differs_from_mean_of_images():
    easy = care((0, 0, 10, 10))
    hard = care(*[(20 * i, 0, 20 * i + 10, 10) for i in range(9)])
    result = evaluate({"easy": ([rect(0, 0, 10, 10)], easy), "hard": ([], hard)})
    assert isinstance(result, EvalResult)
    assert (result.gt_care, result.det_care, result.matched) == (10, 1, 1)
    assert result.precision == 1.0
    assert result.recall == pytest.approx(0.1)
    assert result.hmean == pytest.approx(2 * 0.1 / 1.1)
    per_image_recall = np.mean([image.recall for image in result.images])
    assert per_image_recall == pytest.approx(0.5)  # the macro mean would be 0.5
    assert [image.name for image in result.images] == ["easy", "hard"]


def test_evaluate_input_forms_and_json():
    truth = care((0, 0, 10, 10)) + dont_care((50, 50, 60, 60))
    dets = [rect(0, 0, 10, 10), rect(50, 50, 60, 60), rect(100, 0, 110, 10)]
    pairs = evaluate([(dets, truth), (dets, truth)])
    triples = evaluate([("x", dets, truth), ("y", dets, truth)])
    generator = evaluate((d, t) for d, t in [(dets, truth)] * 2)
    for result in (pairs, triples, generator):
        assert (result.gt_care, result.det_care, result.matched) == (2, 4, 2)
        assert result.ignored_detections == 2
        assert result.precision == 0.5 and result.recall == 1.0
    assert [i.name for i in pairs.images] == ["0", "1"]
    assert [i.name for i in triples.images] == ["x", "y"]

    data = json.loads(json.dumps(triples.to_dict()))
    assert data["precision"] == 0.5 and data["recall"] == 1.0
    assert data["images"][0]["name"] == "x"
    assert data["images"][0]["matches"] == [[0, 0]]
    assert data["images"][0]["ignored_detections"] == 1
    assert "hmean 0.6667" in str(triples)

    with pytest.raises(InvalidInputError):
        evaluate([(dets,)])
    with pytest.raises(InvalidInputError, match="name: str"):
        evaluate([dets])  # a bare list of three detections is not a triple
    with pytest.raises(InvalidInputTypeError):
        evaluate([rect(0, 0, 1, 1)])


def test_empty_dataset_aggregation():
    result = evaluate([([], []), ([rect(0, 0, 1, 1)], [])])
    assert (result.gt_care, result.det_care, result.matched) == (0, 1, 0)
    assert (result.precision, result.recall) == (0.0, 1.0)


# --------------------------------------------------------------------------
# Ground-truth files
# --------------------------------------------------------------------------


def test_parse_transcriptions_bom_crlf():
    text = (
        "\ufeff377,117,463,117,465,130,378,130,Genaxis Theatre\r\n"
        "493,115,519,115,519,131,493,131,[06]\r\n"
        "\r\n"
        "374,155,409,155,409,170,374,170,###\r\n"
        "1.5,2,3,4.25,5,6,7,8,Hello, world, again\r\n"
        '10,20,30,20,30,40,10,40,"say \\"hi\\", ok"\r\n'
        "-1, 2 ,3,4,5,6,7,8,,\n"
        "0,0,1,0,1,1,0,1,"
    )
    boxes = parse_icdar_gt(text)
    assert [b.text for b in boxes] == [
        "Genaxis Theatre",
        "[06]",
        "###",
        "Hello, world, again",
        'say "hi", ok',
        ",",
        "",
    ]
    assert [b.dont_care for b in boxes] == [False, False, True, False, False, False, False]
    assert boxes[0].points.dtype == np.float32 and boxes[0].points.shape == (4, 2)
    np.testing.assert_array_equal(boxes[0].points, [[377, 117], [463, 117], [465, 130], [378, 130]])
    np.testing.assert_array_equal(boxes[3].points[:2], [[1.5, 2], [3, 4.25]])
    assert boxes[5].points[0, 0] == -1


def test_parse_errors():
    assert parse_icdar_gt("") == []
    assert parse_icdar_gt("\ufeff\r\n\n") == []
    with pytest.raises(InvalidInputError, match="line 2"):
        parse_icdar_gt("0,0,1,0,1,1,0,1,a\n0,0,1,0,1,1,0,b\n")
    with pytest.raises(InvalidInputError):
        parse_icdar_gt("0,0,1,0,1,1,0,1\n")  # no transcription field
    with pytest.raises(InvalidInputTypeError):
        parse_icdar_gt(b"0,0,1,0,1,1,0,1,a")


def test_load_gt_file(tmp_path):
    path = tmp_path / "gt_img_1.txt"
    path.write_bytes("\ufeff0,0,10,0,10,10,0,10,caf\u00e9, bar\r\n".encode("utf-8"))
    (box,) = load_icdar_gt(path)
    assert box.text == "caf\u00e9, bar"
    (tmp_path / "bad.txt").write_bytes(b"0,0,1,0,1,1,0,1,\xff\xfe\n")
    with pytest.raises(InvalidInputError, match="UTF-8"):
        load_icdar_gt(tmp_path / "bad.txt")
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_icdar_gt(tmp_path / "missing.txt")
    (tmp_path / "broken.txt").write_text("1,2,3\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="broken.txt"):
        load_icdar_gt(tmp_path / "broken.txt")


# --------------------------------------------------------------------------
# Dataset folders
# --------------------------------------------------------------------------


def _write_icdar_layout(root, indices, ext=".jpg"):
    images, gts = root / "images", root / "gt"
    images.mkdir(parents=True)
    gts.mkdir()
    for i in indices:
        (images / f"img_{i}{ext}").write_bytes(b"not decoded by IcdarDataset")
        (gts / f"gt_img_{i}.txt").write_text(f"{i},0,{i + 10},0,{i + 10},10,{i},10,w{i}\n", encoding="utf-8")
    return images, gts


def test_dataset_icdar_layout_natural_order(tmp_path):
    images, gts = _write_icdar_layout(tmp_path, [10, 2, 1, 11])
    (images / "notes.txt").write_text("not an image")
    (images / "img_3.PNG").write_bytes(b"")
    (gts / "gt_img_3.txt").write_text("")
    dataset = IcdarDataset(images)
    assert dataset.gt_dir == gts
    assert len(dataset) == 5
    items = list(dataset)
    assert [name for name, _, _ in items] == ["img_1", "img_2", "img_3", "img_10", "img_11"]
    name, image_path, boxes = items[3]
    assert image_path == images / "img_10.jpg"
    assert [b.text for b in boxes] == ["w10"]
    assert items[2][2] == []  # empty GT file: no boxes
    # Explicit gt_dir, given as a string.
    assert len(IcdarDataset(str(images), gt_dir=str(gts))) == 5


def test_dataset_synthetic_layout(tmp_path):
    make_dataset(tmp_path, 3, seed=0, size=(120, 160), words=(2, 4))
    dataset = IcdarDataset(tmp_path)
    assert dataset.gt_dir == tmp_path / "gt"
    names = [name for name, _, _ in dataset]
    assert names == ["img_1", "img_2", "img_3"]
    # Ground truth evaluated as detections is perfect.
    result = evaluate({name: (boxes, boxes) for name, _, boxes in dataset})
    assert result.gt_care > 0
    assert (result.precision, result.recall, result.hmean) == (1.0, 1.0, 1.0)


def test_dataset_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        IcdarDataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no images"):
        IcdarDataset(empty)

    images, gts = _write_icdar_layout(tmp_path / "ds", [1, 2, 3])
    (gts / "gt_img_2.txt").unlink()
    with pytest.raises(InvalidInputError, match=r"gt_img_2\.txt.*img_N\.jpg pairs with gt_img_N\.txt"):
        IcdarDataset(images)
    with pytest.raises(InvalidInputError, match="does not exist"):
        IcdarDataset(images, gt_dir=tmp_path / "missing_gt")

    lonely = tmp_path / "lonely" / "images"
    lonely.mkdir(parents=True)
    (lonely / "img_1.jpg").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="pass gt_dir"):
        IcdarDataset(lonely)
