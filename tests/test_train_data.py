"""Training samples: sources (ICDAR folders, PaddleOCR / ICDAR list files, synthetic),
augmentation that moves polygons with the image, and the batch stream."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgedb.errors import InvalidInputError
from edgedb.synthetic import make_dataset
from edgedb.train.data import (
    Sample,
    augment,
    batches,
    icdar_samples,
    list_samples,
    load_samples,
    synthetic_samples,
)

INK, PAPER = 250, 40


def painted_sample(seed: int = 0, size: tuple[int, int] = (240, 400), count: int = 12) -> Sample:
    """Dark paper with bright, slanted boxes exactly where the polygons are, so pixels
    tell whether a polygon still sits on its box after augmentation."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.full((height, width, 3), PAPER, np.uint8)
    polygons = []
    for _ in range(count):
        w, h, angle = rng.uniform(30, 90), rng.uniform(12, 30), rng.uniform(-0.5, 0.5)
        centre = rng.uniform([50, 30], [width - 50, height - 30])
        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        quad = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) @ rotation + centre
        polygons.append(quad.astype(np.float32))
        cv2.fillPoly(image, [np.round(quad * 16).astype(np.int32)], (INK,) * 3, cv2.LINE_AA, 4)
    return Sample(image, polygons, [False] * count)


def inner_mean(image: np.ndarray, polygon: np.ndarray, keep: float = 0.6) -> float | None:
    """Mean brightness inside the polygon shrunk about its centre (clear of edge blur)."""
    centre = polygon.mean(axis=0)
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round((polygon - centre) * keep + centre).astype(np.int32)], 1)
    return float(image[mask > 0].mean()) if mask.sum() >= 4 else None


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


def test_icdar_samples_read_the_folder(tmp_path):
    paths = make_dataset(tmp_path, 3, seed=5, size=(96, 128), ext=".png")
    gt = tmp_path / "gt" / "gt_img_2.txt"
    gt.write_text(gt.read_text(encoding="utf-8") + "1,2,30,2,30,12,1,12,###\n", encoding="utf-8")

    samples = icdar_samples(tmp_path)
    assert len(samples) == 3
    for sample, path in zip(samples, paths):
        np.testing.assert_array_equal(sample.image, cv2.imread(str(path)))
        assert len(sample.polygons) == len(sample.ignore)
        assert all(p.dtype == np.float32 and p.shape == (4, 2) for p in sample.polygons)
    assert samples[1].ignore[-1] and not any(samples[1].ignore[:-1])
    np.testing.assert_array_equal(samples[1].polygons[-1], [[1, 2], [30, 2], [30, 12], [1, 12]])

    assert [s.name for s in samples] == ["img_1", "img_2", "img_3"] and samples[0].path == paths[0]
    only = icdar_samples(tmp_path, names=["img_3", "img_1.png"])
    assert len(only) == 2 and np.array_equal(only[1].image, samples[2].image)
    with pytest.raises(InvalidInputError, match="img_9"):
        icdar_samples(tmp_path, names=["img_9"])


def test_list_samples_read_paddleocr_and_icdar_lines(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for index in range(3):
        cv2.imwrite(str(images / f"{index}.png"), np.full((40, 60, 3), index * 50, np.uint8))
    (tmp_path / "gt_2.txt").write_text("5,5,20,5,20,15,5,15,word\n", encoding="utf-8")
    regions = [
        {"transcription": "Hello", "points": [[1, 2], [30, 2], [30, 12], [1, 12]]},
        {"transcription": "###", "points": [[3, 20], [20, 20], [20, 30], [3, 30]]},
        {"transcription": "curved", "points": [[0, 0], [10, 1], [20, 3], [20, 9], [10, 7], [0, 6]]},
    ]
    lines = [
        "imgs/0.png\t" + json.dumps(regions, ensure_ascii=False),
        "",
        f"{images / '1.png'}\t" + json.dumps([{"transcription": "*", "points": [[1, 1], [9, 1], [9, 9]]}]),
        "imgs/2.png\tgt_2.txt",
    ]
    list_file = tmp_path / "train.txt"
    list_file.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")

    first, second, third = list_samples(list_file)
    assert first.image.shape == (40, 60, 3) and second.image[0, 0, 0] == 50
    assert [len(p) for p in first.polygons] == [4, 4, 6] and first.ignore == [False, True, False]
    np.testing.assert_array_equal(first.polygons[0], [[1, 2], [30, 2], [30, 12], [1, 12]])
    assert second.ignore == [True]  # PaddleOCR's "*" is don't-care too
    assert [s.name for s in (first, second, third)] == ["0", "1", "2"] and third.path == images / "2.png"
    np.testing.assert_array_equal(third.polygons[0], [[5, 5], [20, 5], [20, 15], [5, 15]])
    assert load_samples(list_file)[2].ignore == [False]


@pytest.mark.parametrize(
    "line, message",
    [
        ("imgs/0.png [ ]", "no tab"),
        ("imgs/0.png\t[{\"points\": [[1, 2]]}]", "at least 3"),
        ("imgs/0.png\t[{\"transcription\": \"a\"}]", "points"),
        ("imgs/0.png\t[{", "JSON"),
        ("imgs/none.png\t[]", "no image file"),
    ],
)
def test_list_samples_name_the_bad_line(tmp_path, line, message):
    (tmp_path / "imgs").mkdir()
    cv2.imwrite(str(tmp_path / "imgs" / "0.png"), np.zeros((8, 8, 3), np.uint8))
    list_file = tmp_path / "list.txt"
    list_file.write_text("imgs/0.png\t[]\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match=message) as error:
        list_samples(list_file)
    assert "line 2" in str(error.value)


def test_load_samples_takes_folders_and_list_files(tmp_path):
    make_dataset(tmp_path / "set", 2, size=(64, 64))
    assert len(load_samples(tmp_path / "set")) == 2
    with pytest.raises(InvalidInputError, match="neither"):
        load_samples(tmp_path / "missing")


def test_synthetic_samples_are_reproducible():
    first, again = synthetic_samples(2, seed=3, size=(96, 128)), synthetic_samples(2, seed=3, size=(96, 128))
    assert [s.image.shape for s in first] == [(96, 128, 3)] * 2
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
        assert len(a.polygons) == len(a.ignore) > 0 and not any(a.ignore)
    assert not np.array_equal(first[0].image, synthetic_samples(1, seed=4, size=(96, 128))[0].image)


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------


def test_augmented_polygons_stay_on_their_text():
    sample = painted_sample()
    for seed in range(8):
        crop = augment(sample, np.random.default_rng(seed), crop=(160, 160), jitter=False)
        assert crop.image.shape == (160, 160, 3) and crop.image.dtype == np.uint8
        assert len(crop.polygons) == len(crop.ignore) > 0
        text = np.zeros((160, 160), np.uint8)
        for polygon in crop.polygons:
            assert polygon.dtype == np.float32
            assert polygon.min() >= 0 and polygon[:, 0].max() <= 159 and polygon[:, 1].max() <= 159
            mean = inner_mean(crop.image, polygon)
            assert mean is None or mean > INK - 20, f"seed {seed}: polygon off its box (mean {mean})"
            cv2.fillPoly(text, [np.round(polygon).astype(np.int32)], 1)
        # Away from every polygon there is only paper (or black padding): no box was lost.
        # (Not on the outermost pixels: a box just outside the crop blurs into them.)
        away = cv2.dilate(text, np.ones((7, 7), np.uint8)) == 0
        away[[0, -1], :] = away[:, [0, -1]] = False
        assert crop.image[away].max() < PAPER + 30


def test_scale_moves_points_as_the_image():
    image = np.zeros((50, 80, 3), np.uint8)
    image[20, 30] = 255  # a marked pixel: x 30, y 20
    square = np.array([[10, 10], [40, 10], [40, 30], [10, 30]], np.float32)
    sample = Sample(image, [square], [False])
    options = dict(crop=(200, 200), max_rotation=0, jitter=False)

    same = augment(sample, np.random.default_rng(0), scale=(1, 1), **options)
    np.testing.assert_array_equal(same.image[:50, :80], image)  # top-left, padded with black
    assert same.image[50:].max() == 0 and same.image[:, 80:].max() == 0
    np.testing.assert_allclose(same.polygons[0], square, atol=1e-4)

    double = augment(sample, np.random.default_rng(0), scale=(2, 2), **options)
    np.testing.assert_allclose(double.polygons[0], square * 2, atol=1e-4)
    assert np.unravel_index(double.image[..., 0].argmax(), (200, 200)) == (40, 60)

    half = augment(sample, np.random.default_rng(0), scale=(0.5, 0.5), **options)
    np.testing.assert_allclose(half.polygons[0], (square + 0.5) * 0.5 - 0.5, atol=1e-4)


def test_rotation_moves_points_as_the_image():
    sample = painted_sample(1, size=(200, 200), count=6)
    for seed in range(4):
        crop = augment(sample, np.random.default_rng(seed), crop=(320, 320), scale=(1, 1),
                       max_rotation=30, jitter=False)
        assert len(crop.polygons) == 6 and not any(crop.ignore)  # the canvas keeps all corners
        for polygon in crop.polygons:
            assert inner_mean(crop.image, polygon) > INK - 20


def test_cut_words_become_dont_care_or_are_dropped():
    image = np.full((100, 400, 3), PAPER, np.uint8)
    left = np.array([[10, 40], [60, 40], [60, 60], [10, 60]], np.float32)
    right = np.array([[170, 40], [300, 40], [300, 60], [170, 60]], np.float32)
    sample = Sample(image, [left, right], [False, False])
    outcomes = set()
    for seed in range(12):
        crop = augment(sample, np.random.default_rng(seed), crop=(100, 200), scale=(1, 1),
                       max_rotation=0, jitter=False)
        care = [p for p, ignored in zip(crop.polygons, crop.ignore) if not ignored]
        assert len(care) == 1, "the crop is chosen around one whole word"
        width = np.ptp(care[0][:, 0])
        if width < 100:  # around the left word: the right one is cut to a third, don't-care
            assert len(crop.polygons) == 2 and crop.ignore == [False, True]
            outcomes.add("left")
        else:  # around the right word: the left one is out of the crop
            assert len(crop.polygons) == 1
            outcomes.add("right")
    assert outcomes == {"left", "right"}


def test_augment_is_deterministic_given_the_rng():
    sample = painted_sample(2)
    first = augment(sample, np.random.default_rng(7), crop=(128, 128))
    again = augment(sample, np.random.default_rng(7), crop=(128, 128))
    np.testing.assert_array_equal(first.image, again.image)
    assert first.ignore == again.ignore
    for a, b in zip(first.polygons, again.polygons, strict=True):
        np.testing.assert_array_equal(a, b)
    other = augment(sample, np.random.default_rng(8), crop=(128, 128))
    assert not np.array_equal(first.image, other.image)


def test_colour_jitter_is_small():
    sample = painted_sample(3)
    plain = augment(sample, np.random.default_rng(1), crop=(128, 128), jitter=False)
    jittered = augment(sample, np.random.default_rng(1), crop=(128, 128), jitter=True)
    for a, b in zip(plain.polygons, jittered.polygons, strict=True):
        np.testing.assert_array_equal(a, b)
    difference = np.abs(plain.image.astype(int) - jittered.image.astype(int))
    assert 0 < difference.mean() < 40


def test_augment_refuses_bad_options():
    sample = painted_sample()
    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="crop"):
        augment(sample, rng, crop=(0, 64))
    with pytest.raises(InvalidInputError, match="scale"):
        augment(sample, rng, scale=(2.0, 1.0))
    with pytest.raises(InvalidInputError, match="uint8"):
        augment(Sample(sample.image.astype(np.float32), [], []), rng)
    with pytest.raises(InvalidInputError, match="ignore flags"):
        augment(Sample(sample.image, sample.polygons, []), rng)


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------


def test_batches_hold_crops_and_labels():
    samples = synthetic_samples(3, size=(120, 160))
    stream = batches(samples, 2, np.random.default_rng(0), crop=(96, 128))
    for _ in range(2):
        batch = next(stream)
        assert batch["image"].shape == (2, 96, 128, 3) and batch["image"].dtype == np.uint8
        for key in ("shrink", "shrink_mask", "threshold", "threshold_mask"):
            assert batch[key].shape == (2, 96, 128) and batch[key].dtype == np.float32, key
        assert batch["shrink"].max() == 1 and batch["threshold"].min() >= 0.3 - 1e-6


def test_batches_are_reproducible_with_or_without_threads():
    samples = synthetic_samples(3, size=(120, 160))
    plain = batches(samples, 3, np.random.default_rng(4), crop=(64, 64))
    threaded = batches(samples, 3, np.random.default_rng(4), crop=(64, 64), workers=2)
    for _ in range(2):
        a, b = next(plain), next(threaded)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    threaded.close()


def test_batches_refuse_bad_arguments():
    with pytest.raises(InvalidInputError, match="no training samples"):
        batches([], 2, np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="batch_size"):
        batches(synthetic_samples(1, size=(64, 64)), 0, np.random.default_rng(0))


def test_list_file_images_that_cannot_be_read_are_reported_and_left_out(tmp_path):
    from edgedb.train.data import list_samples

    cv2.imwrite(str(tmp_path / "good.png"), np.full((64, 64, 3), 255, np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    label = '[{"transcription": "a", "points": [[1, 1], [30, 1], [30, 12], [1, 12]]}]'
    (tmp_path / "list.txt").write_text(f"good.png\t{label}\nbad.png\t{label}\n")
    with pytest.raises(InvalidInputError, match="line 2"):
        list_samples(tmp_path / "list.txt")
    seen = []
    samples = list_samples(tmp_path / "list.txt", on_unreadable=lambda path, error: seen.append(path.name))
    assert [s.name for s in samples] == ["good"] and seen == ["bad.png"]
