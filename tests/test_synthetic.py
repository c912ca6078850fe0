"""Tests for the synthetic text-image generator (edgedb.synthetic)."""

from __future__ import annotations

import itertools
import re

import cv2
import numpy as np
import pytest

from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.synthetic import (
    SyntheticImage,
    make_dataset,
    make_text_image,
    order_quad_clockwise,
)

# Word shapes the generator may produce: letters/digits with an optional
# separator inside numbers (prices, times...).
WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:/-]{0,8}[A-Za-z0-9]$")
GT_RE = re.compile(r"^(-?\d+,){8}[^,\n]+$")

FLAG_COMBOS = [
    dict(rotate=False, perspective=False),
    dict(rotate=True, perspective=False),
    dict(rotate=True, perspective=True),
    dict(document=True, perspective=False),
    dict(document=True, perspective=True),
]


def _signed_area(quad: np.ndarray) -> float:
    """Shoelace area; positive means clockwise on screen (y axis down)."""
    x, y = quad[:, 0].astype(np.float64), quad[:, 1].astype(np.float64)
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _check_sample(sample: SyntheticImage, size: tuple[int, int]) -> None:
    height, width = size
    assert isinstance(sample, SyntheticImage)
    assert sample.image.dtype == np.uint8
    assert sample.image.shape == (height, width, 3)
    assert len(sample.polygons) == len(sample.texts)
    for quad, text in zip(sample.polygons, sample.texts):
        assert quad.dtype == np.float32 and quad.shape == (4, 2)
        assert np.all(quad[:, 0] >= 0) and np.all(quad[:, 0] <= width - 1)
        assert np.all(quad[:, 1] >= 0) and np.all(quad[:, 1] <= height - 1)
        assert _signed_area(quad) > 4.0, "quads must be clockwise and non-degenerate"
        assert WORD_RE.match(text), text


# ---------------------------------------------------------------- generation


def test_deterministic_for_seed() -> None:
    a = make_text_image(7)
    b = make_text_image(7)
    np.testing.assert_array_equal(a.image, b.image)
    assert a.texts == b.texts
    assert len(a.polygons) == len(b.polygons)
    for pa, pb in zip(a.polygons, b.polygons):
        np.testing.assert_array_equal(pa, pb)
    c = make_text_image(8)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("flags", FLAG_COMBOS, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_shapes_bounds_and_order(flags: dict) -> None:
    for seed in range(2):
        sample = make_text_image(seed, **flags)
        _check_sample(sample, (480, 640))
        assert len(sample.texts) >= 1


def test_custom_size_is_height_width() -> None:
    sample = make_text_image(3, size=(200, 360))
    _check_sample(sample, (200, 360))


def test_words_do_not_overlap() -> None:
    for seed, flags in enumerate(FLAG_COMBOS):
        sample = make_text_image(seed + 20, **flags)
        for p, q in itertools.combinations(sample.polygons, 2):
            area, _ = cv2.intersectConvexConvex(p, q)
            assert area < 0.5, f"overlapping words with {flags}"


def test_words_range_respected() -> None:
    assert make_text_image(1, words=(0, 0)).texts == []
    for seed in range(3):
        assert 1 <= len(make_text_image(seed, words=(1, 3)).texts) <= 3


def test_document_is_dense_and_horizontal() -> None:
    for seed in range(3):
        sample = make_text_image(seed, document=True, perspective=False)
        assert len(sample.texts) >= 60
        for quad in sample.polygons:
            # Top edge (TL -> TR) must be horizontal without rotation/warp.
            dx, dy = quad[1] - quad[0]
            assert dx > 0 and abs(dy) < 1e-3
    warped = make_text_image(0, document=True)  # perspective on by default
    assert len(warped.texts) >= 60


def test_no_rotation_gives_axis_aligned_boxes() -> None:
    sample = make_text_image(5, rotate=False, perspective=False)
    for quad in sample.polygons:
        assert quad[0, 1] == pytest.approx(quad[1, 1])
        assert quad[0, 0] == pytest.approx(quad[3, 0])


def test_text_is_inside_its_box() -> None:
    """Crude check that boxes sit on drawn text: each one contains edges."""
    sample = make_text_image(11, rotate=True, perspective=False)
    gray = cv2.cvtColor(sample.image, cv2.COLOR_BGR2GRAY)
    edges = cv2.Canny(gray, 50, 150)
    for quad in sample.polygons:
        mask = np.zeros_like(gray)
        cv2.fillConvexPoly(mask, np.round(quad).astype(np.int32), 255)
        assert np.count_nonzero(edges[mask > 0]) > 10


# ------------------------------------------------------------ quad ordering


def test_order_quad_clockwise_any_input_order() -> None:
    rect = ((100.0, 50.0), (80.0, 20.0), 25.0)  # centre, size, angle (deg)
    expected = None
    for perm in itertools.permutations(cv2.boxPoints(rect)):
        ordered = order_quad_clockwise(np.array(perm))
        assert ordered.dtype == np.float32 and ordered.shape == (4, 2)
        assert _signed_area(ordered) > 0
        if expected is None:
            expected = ordered
        np.testing.assert_array_equal(ordered, expected)


def test_order_quad_clockwise_axis_aligned() -> None:
    pts = [[10, 20], [0, 0], [10, 0], [0, 20]]  # BR, TL, TR, BL
    np.testing.assert_array_equal(
        order_quad_clockwise(pts), np.array([[0, 0], [10, 0], [10, 20], [0, 20]], np.float32)
    )


@pytest.mark.parametrize("angle", [-30.0, -10.0, 10.0, 30.0])
def test_order_quad_starts_at_reading_top_left(angle: float) -> None:
    # A wide word box rotated by `angle` (counter-clockwise on screen), built
    # in reading order; shuffling and re-ordering must recover that order.
    theta = np.deg2rad(angle)
    u = np.array([np.cos(theta), -np.sin(theta)])  # baseline direction
    v = np.array([np.sin(theta), np.cos(theta)])  # downwards normal
    tl = np.array([200.0, 200.0])
    quad = np.array([tl, tl + 120 * u, tl + 120 * u + 25 * v, tl + 25 * v], np.float32)
    shuffled = quad[[2, 0, 3, 1]]
    np.testing.assert_allclose(order_quad_clockwise(shuffled), quad, atol=1e-4)


def test_order_quad_clockwise_rejects_bad_shape() -> None:
    with pytest.raises(InvalidInputError):
        order_quad_clockwise(np.zeros((3, 2)))
    with pytest.raises(InvalidInputError):
        order_quad_clockwise(np.full((4, 2), np.nan))


# ------------------------------------------------------------------ dataset


def _parse_gt(path) -> tuple[list[np.ndarray], list[str]]:
    quads, texts = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        assert GT_RE.match(line), line
        parts = line.split(",", 8)
        quads.append(np.array([int(v) for v in parts[:8]], np.float32).reshape(4, 2))
        texts.append(parts[8])
    return quads, texts


def test_make_dataset_icdar_roundtrip(tmp_path) -> None:
    size = (160, 240)
    paths = make_dataset(tmp_path / "ds", 3, seed=4, size=size, words=(2, 5))
    assert [p.name for p in paths] == ["img_1.jpg", "img_2.jpg", "img_3.jpg"]
    for i, path in enumerate(paths, start=1):
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (*size, 3)
        gt = tmp_path / "ds" / "gt" / f"gt_img_{i}.txt"
        quads, texts = _parse_gt(gt)
        assert 1 <= len(texts) <= 5
        for quad, text in zip(quads, texts):
            assert WORD_RE.match(text)
            assert np.all(quad >= 0)
            assert np.all(quad[:, 0] <= size[1] - 1) and np.all(quad[:, 1] <= size[0] - 1)
            assert _signed_area(quad) > 0  # order survives integer rounding

    # Same seed -> same ground truth; different seed -> different data.
    again = make_dataset(tmp_path / "again", 3, seed=4, size=size, words=(2, 5))
    other = make_dataset(tmp_path / "other", 3, seed=5, size=size, words=(2, 5))
    assert len(again) == len(other) == 3
    for i in range(1, 4):
        a = (tmp_path / "ds" / "gt" / f"gt_img_{i}.txt").read_text(encoding="utf-8")
        b = (tmp_path / "again" / "gt" / f"gt_img_{i}.txt").read_text(encoding="utf-8")
        assert a == b
    ds_gt = [(tmp_path / "ds" / "gt" / f"gt_img_{i}.txt").read_text() for i in range(1, 4)]
    other_gt = [(tmp_path / "other" / "gt" / f"gt_img_{i}.txt").read_text() for i in range(1, 4)]
    assert ds_gt != other_gt


def test_make_dataset_png_and_empty(tmp_path) -> None:
    paths = make_dataset(tmp_path, 1, size=(64, 96), ext=".png")
    assert paths[0].suffix == ".png" and paths[0].exists()
    assert make_dataset(tmp_path / "empty", 0) == []
    assert (tmp_path / "empty" / "gt").is_dir()


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=(0, 640)),
        dict(size=(480, -1)),
        dict(size=(480,)),
        dict(words=(5, 2)),
        dict(words=(-1, 3)),
        dict(words=3),
    ],
)
def test_make_text_image_bad_values(kwargs: dict) -> None:
    with pytest.raises(InvalidInputError) as info:
        make_text_image(0, **kwargs)
    assert isinstance(info.value, ValueError)  # what callers are promised


@pytest.mark.parametrize("kwargs", [dict(size=(48.0, 64.0)), dict(words=(1.5, 3))])
def test_make_text_image_bad_types(kwargs: dict) -> None:
    with pytest.raises(InvalidInputTypeError):
        make_text_image(0, **kwargs)


def test_bad_seed() -> None:
    with pytest.raises(ValueError):
        make_text_image(-1)
    with pytest.raises(TypeError):
        make_text_image(1.0)  # type: ignore[arg-type]


def test_make_dataset_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError):
        make_dataset(tmp_path, -1)
    with pytest.raises(TypeError):
        make_dataset(tmp_path, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_dataset(tmp_path, 1, ext=".bmp")
    with pytest.raises(ValueError):
        make_dataset(tmp_path, 1, size=(0, 10))
    with pytest.raises(ValueError):
        make_dataset(tmp_path, 1, words=(3, 1))
