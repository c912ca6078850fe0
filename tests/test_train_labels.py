"""DBNet training labels: hand-made cases with known answers, and parity of the fast
:func:`make_labels` with the pixel-by-pixel :func:`make_labels_reference`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import shapely

from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.synthetic import make_text_image
from edgedb.train.labels import DBLabels, make_labels, make_labels_reference

# The 100 x 40 rectangle of the paper's formula: D = A (1 - r^2) / L = 4000 * 0.84 / 280 = 12.
RECT = np.array([[50, 30], [150, 30], [150, 70], [50, 70]], np.float32)
RECT_SHAPE = (110, 200)
D = 12.0

#: Both versions compute exact distances; only float32 rounding separates them.
THRESHOLD_TOLERANCE = 1e-4


def rect_distance(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance of points to the boundary of RECT, inside or outside."""
    dx = np.maximum(np.maximum(50 - xs, xs - 150), 0)
    dy = np.maximum(np.maximum(30 - ys, ys - 70), 0)
    outside = np.hypot(dx, dy)
    inside = np.minimum.reduce([xs - 50, 150 - xs, ys - 30, 70 - ys])
    return np.where(outside > 0, outside, np.maximum(inside, 0))


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3 x 3 neighbourhood is not constant in ``mask``."""
    kernel = np.ones((3, 3), np.uint8)
    binary = (mask > 0.5).astype(np.uint8)
    return cv2.dilate(binary, kernel) != cv2.erode(binary, kernel)


def assert_matches_reference(fast: DBLabels, reference: DBLabels) -> None:
    """Region maps may differ on boundary pixels only (cv2.fillPoly takes pixels within
    half a pixel of a polygon, the reference those whose centre is inside); the
    threshold maps are the same numbers up to float32 rounding."""
    for name in ("shrink", "shrink_mask", "threshold_mask"):
        got, want = getattr(fast, name), getattr(reference, name)
        off_boundary = (got != want) & ~boundary_band(want)
        assert not off_boundary.any(), f"{name} differs away from boundaries at {np.argwhere(off_boundary)[:5]}"
    assert np.abs(fast.threshold - reference.threshold).max() < THRESHOLD_TOLERANCE


def check_maps(labels: DBLabels, shape: tuple[int, int]) -> None:
    for name in ("shrink", "shrink_mask", "threshold", "threshold_mask"):
        array = getattr(labels, name)
        assert array.shape == shape and array.dtype == np.float32, name


# --------------------------------------------------------------------------
# Hand-made cases
# --------------------------------------------------------------------------


def test_rectangle_is_shrunk_by_the_paper_distance():
    # A quarter pixel off the grid, so that no pixel centre lies on the kernel's edge.
    labels = make_labels(RECT_SHAPE, [RECT + 0.25])
    check_maps(labels, RECT_SHAPE)
    want = np.zeros(RECT_SHAPE, np.float32)
    want[43:59, 63:139] = 1  # centres inside [62.25, 138.25] x [42.25, 58.25], the rectangle inset by 12
    np.testing.assert_array_equal(labels.shrink, want)
    np.testing.assert_array_equal(labels.shrink_mask, 1)
    # On the grid, centres on the kernel's edge may go either way.
    on_grid = make_labels(RECT_SHAPE, [RECT]).shrink
    assert on_grid[43:58, 63:138].all() and on_grid.sum() - on_grid[42:59, 62:139].sum() == 0


def test_polygons_offset_by_pyclipper_agree_with_convex_quads():
    """A fifth, collinear vertex sends the rectangle through pyclipper instead of the
    closed-form inset of convex quads: the labels must not change."""
    pentagon = np.array([[50, 30], [100, 30], [150, 30], [150, 70], [50, 70]], np.float32)
    quad, through_clipper = make_labels(RECT_SHAPE, [RECT]), make_labels(RECT_SHAPE, [pentagon])
    for name in ("shrink", "shrink_mask", "threshold_mask"):
        np.testing.assert_array_equal(getattr(quad, name), getattr(through_clipper, name))
    np.testing.assert_allclose(quad.threshold, through_clipper.threshold, atol=1e-5)


def test_rectangle_threshold_map_falls_from_the_edges():
    labels = make_labels(RECT_SHAPE, [RECT], thresh_min=0.3, thresh_max=0.7)
    ys, xs = np.mgrid[0 : RECT_SHAPE[0], 0 : RECT_SHAPE[1]].astype(np.float64)
    distance = rect_distance(xs, ys)
    want = 0.3 + 0.4 * np.clip(1 - distance / D, 0, 1)
    np.testing.assert_allclose(labels.threshold, want, atol=1e-5)
    # thresh_max on the edges, thresh_min exactly from D on.
    np.testing.assert_allclose(labels.threshold[30, 50:151], 0.7, atol=1e-6)
    np.testing.assert_allclose(labels.threshold[30:71, 150], 0.7, atol=1e-6)
    far = distance >= D
    assert far.sum() > 0.5 * far.size
    np.testing.assert_array_equal(labels.threshold[far], np.float32(0.3))
    # Inside the polygon dilated by D (away from its rim) and nowhere else.
    np.testing.assert_array_equal(labels.threshold_mask[distance < D - 0.5], 1)
    inside = (xs > 50) & (xs < 150) & (ys > 30) & (ys < 70)
    np.testing.assert_array_equal(labels.threshold_mask[inside], 1)
    np.testing.assert_array_equal(labels.threshold_mask[(distance > D + 0.5) & ~inside], 0)


def test_dont_care_regions_leave_the_loss():
    other = RECT + [0, 0]
    dont_care = np.array([[10, 80], [60, 80], [60, 100], [10, 100]], np.float32)
    labels = make_labels(RECT_SHAPE, [other, dont_care], [False, True])
    alone = make_labels(RECT_SHAPE, [other])
    region = np.zeros(RECT_SHAPE, np.uint8)
    cv2.fillPoly(region, [dont_care.astype(np.int32)], 1)
    region = region.astype(bool)
    np.testing.assert_array_equal(labels.shrink_mask[region], 0)
    np.testing.assert_array_equal(labels.shrink_mask[~region], 1)
    # No kernel, threshold ridge or threshold mask for the ignored word.
    np.testing.assert_array_equal(labels.shrink, alone.shrink)
    np.testing.assert_array_equal(labels.threshold, alone.threshold)
    np.testing.assert_array_equal(labels.threshold_mask, alone.threshold_mask)


@pytest.mark.parametrize(
    "polygon",
    [
        np.array([[20, 20], [80, 20], [80, 26], [20, 26]], np.float32),  # 6 px high
        # 5 px thick, rotated by 45 degrees: its axis-aligned box is 40 x 40.
        np.array([[20, 60], [60, 20], [63.5, 23.5], [23.5, 63.5]], np.float32),
        np.array([[10, 10], [50, 50], [90, 90], [30, 30]], np.float32),  # collinear: no area
        np.array([[10, 10], [50, 50]], np.float32),  # not a polygon
    ],
    ids=["thin", "thin-rotated", "degenerate", "two-points"],
)
def test_small_or_degenerate_polygons_are_ignored(polygon):
    labels = make_labels((100, 100), [polygon])
    assert labels.shrink.sum() == 0 and labels.threshold_mask.sum() == 0
    np.testing.assert_array_equal(labels.threshold, np.float32(0.3))
    assert 0 < (labels.shrink_mask == 0).sum() < 0.5 * labels.shrink_mask.size
    # A smaller limit keeps the non-degenerate ones.
    if cv2.contourArea(polygon.astype(np.float32)) >= 1:
        assert make_labels((100, 100), [polygon], min_text_size=4).shrink.sum() > 0


def test_polygons_over_the_border_are_cut_by_the_image():
    """A polygon partly outside gets the labels of the whole polygon, cropped (up to
    boundary pixels: cv2.fillPoly rounds slanted edges differently when a polygon
    reaches outside the image)."""
    polygon = np.array([[-30.5, 40.2], [60.7, 35.0], [62.1, 80.9], [-28.0, 84.4]], np.float32)
    corner = np.array([[100, 70], [140, 75], [138, 130], [98, 126]], np.float32)
    cropped = make_labels((100, 120), [polygon, corner])
    whole = make_labels((200, 220), [polygon + [100, 0], corner + [100, 0]])
    for name in ("shrink", "shrink_mask", "threshold_mask"):
        want = getattr(whole, name)[:100, 100:]
        assert not ((getattr(cropped, name) != want) & ~boundary_band(want)).any(), name
    np.testing.assert_allclose(cropped.threshold, whole.threshold[:100, 100:], atol=1e-5)
    assert cropped.shrink[:, 0].any() and cropped.threshold[:, 0].max() > 0.3

    outside = make_labels((50, 50), [np.array([[60, 60], [90, 60], [90, 80], [60, 80]], np.float32)])
    np.testing.assert_array_equal(outside.shrink, 0)
    np.testing.assert_array_equal(outside.threshold, np.float32(0.3))


def test_no_polygons_give_empty_targets_and_full_masks():
    for labels in (make_labels((30, 40), []), make_labels((30, 40, 3), None)):
        check_maps(labels, (30, 40))
        np.testing.assert_array_equal(labels.shrink, 0)
        np.testing.assert_array_equal(labels.shrink_mask, 1)
        np.testing.assert_array_equal(labels.threshold, np.float32(0.3))
        np.testing.assert_array_equal(labels.threshold_mask, 0)


def test_bad_arguments_are_refused():
    with pytest.raises(InvalidInputError, match="ignore has 1 flags for 2"):
        make_labels((10, 10), [RECT, RECT], [True])
    with pytest.raises(InvalidInputError, match="non-finite"):
        make_labels((10, 10), [np.array([[0, 0], [np.nan, 1], [1, 1]])])
    with pytest.raises(InvalidInputError, match="shape"):
        make_labels((10, 10), [np.zeros((4, 3))])
    with pytest.raises(InvalidInputError, match="wrap a single polygon"):
        make_labels((10, 10), RECT)
    with pytest.raises(InvalidInputError, match="positive"):
        make_labels((0, 10), [])
    with pytest.raises(InvalidInputTypeError):
        make_labels((10.0, 10), [])
    with pytest.raises(InvalidInputError, match="thresh_min < thresh_max"):
        make_labels((10, 10), [], thresh_min=0.7, thresh_max=0.3)
    with pytest.raises(InvalidInputError, match="shrink_ratio"):
        make_labels((10, 10), [], shrink_ratio=1.0)


# --------------------------------------------------------------------------
# Parity with the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_on_synthetic_words(seed):
    sample = make_text_image(seed, size=(120, 160))
    ignore = [index == 1 for index in range(len(sample.polygons))]
    fast = make_labels((120, 160), sample.polygons, ignore)
    assert fast.shrink.sum() > 0
    assert_matches_reference(fast, make_labels_reference((120, 160), sample.polygons, ignore))


def test_matches_reference_on_odd_polygons():
    polygons = [
        np.array([[100, 20], [160, 20], [130, 50], [160, 80], [100, 80]], np.float32),  # not convex
        np.array([[190, 60], [240, 65], [226, 90]], np.float32),  # triangle
        np.array([[10, 10], [60, 12], [58, 40], [12, 35]], np.float32),  # skewed quad
        np.array([[200, 100], [240, 100], [240, 112], [200, 140]], np.float32),  # trapezoid
        np.array([[30, 60], [60, 60], [30, 90], [60, 90]], np.float32),  # bow-tie: no area
        np.array([[-20, 100], [50, 100], [50, 140], [-20, 140]], np.float32),  # over the border
    ]
    shape = (150, 250)
    assert_matches_reference(make_labels(shape, polygons), make_labels_reference(shape, polygons))


def test_matches_reference_on_long_slanted_words():
    """Long slanted edges are cut into several boxes, large and small boxes are stacked
    together; overlapping words take the larger threshold value."""
    polygons = [
        np.array([[10, 150], [260, 6], [270, 23], [20, 167]], np.float32),  # 290 px at 30 degrees
        np.array([[40, 40], [180, 100], [170, 125], [30, 65]], np.float32),  # crosses the first
        np.array([[150, 130], [270, 130], [270, 175], [150, 175]], np.float32),  # large box
    ]
    shape = (180, 280)
    assert_matches_reference(make_labels(shape, polygons), make_labels_reference(shape, polygons))


def test_reference_rectangle_is_right():
    """The oracle itself, against the closed form."""
    reference = make_labels_reference(RECT_SHAPE, [RECT])
    ys, xs = np.mgrid[0 : RECT_SHAPE[0], 0 : RECT_SHAPE[1]].astype(np.float64)
    distance = rect_distance(xs, ys)
    np.testing.assert_allclose(reference.threshold, 0.3 + 0.4 * np.clip(1 - distance / D, 0, 1), atol=1e-6)
    inset = shapely.box(62, 42, 138, 58)
    kernel = shapely.covers(inset, shapely.points(xs.ravel(), ys.ravel())).reshape(RECT_SHAPE)
    np.testing.assert_array_equal(reference.shrink, kernel)


def test_out_maps_are_reused_and_give_the_same_labels():
    from edgedb.synthetic import make_text_image

    polygons = make_text_image(4, size=(240, 320)).polygons
    fresh = make_labels((240, 320), polygons)
    out = make_labels((240, 320), polygons[:1])  # stale content must be overwritten
    again = make_labels((240, 320), polygons, out=out)
    assert again is out
    for name in ("shrink", "shrink_mask", "threshold", "threshold_mask"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name))
    with pytest.raises(InvalidInputError, match="out must hold"):
        make_labels((100, 100), polygons, out=out)
