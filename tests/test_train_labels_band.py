"""The threshold band of the training labels, drawn in C++ (csrc/threshold_band.cpp):
parity with its NumPy reference ``_draw_threshold_numpy``, argument errors, and
:func:`make_labels` giving the same labels with either."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.synthetic import make_text_image
from edgedb.train import labels
from edgedb.train.labels import make_labels

THRESH_MIN, THRESH_MAX = 0.3, 0.7
#: Both compute float32 distances from float64 edge coefficients, in a different order.
TOLERANCE = 1e-5


def paper_distance(points: np.ndarray) -> float:
    """D as make_labels takes it (at least half a pixel for the degenerate ones here)."""
    area, perimeter = labels._area_perimeter(points)
    return max(labels._shrink_distance(area, perimeter, 0.4), 0.5)


def rotated_rectangle(centre, width, height, degrees) -> np.ndarray:
    angle = np.radians(degrees)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return np.array([centre + sx * width / 2 * along + sy * height / 2 * across for sx, sy in corners])


def curved_word(rng, centre, radius, height, points_per_side) -> np.ndarray:
    """A word along a circular arc: ``points_per_side`` points on the outer arc, as many on
    the inner one (curved-text datasets use 7)."""
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.linspace(0, rng.uniform(0.3, 1.2), points_per_side)
    outer = centre + (radius + height / 2) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    inner = centre + (radius - height / 2) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.concatenate([outer, inner[::-1]])


def scene(kind: str, seed: int, shape: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    height, width = shape
    anywhere = lambda: rng.uniform([0, 0], [width, height])  # noqa: E731
    if kind == "quads":
        return [rotated_rectangle(anywhere(), rng.uniform(10, 150), rng.uniform(8, 50), rng.uniform(-30, 30))
                for _ in range(12)]
    if kind == "long-polygons":
        return [curved_word(rng, anywhere(), rng.uniform(60, 200), rng.uniform(10, 40), rng.integers(3, 9))
                for _ in range(6)]
    if kind == "slanted":
        return [rotated_rectangle(anywhere(), rng.uniform(150, 400), rng.uniform(10, 30), rng.uniform(5, 85))
                for _ in range(5)]
    if kind == "outside":  # centres within 30 px of the border, inside or out
        centres = rng.uniform([-30, -30], [width + 30, height + 30], size=(10, 2))
        centres[::2, 0] = rng.choice([-10.0, width + 10.0], size=len(centres[::2]))
        return [rotated_rectangle(c, rng.uniform(20, 120), rng.uniform(8, 40), rng.uniform(-45, 45))
                for c in centres]
    if kind == "tiny":  # edges of a pixel or two, off the grid, and a repeated point
        polygons = [rotated_rectangle(anywhere(), rng.uniform(0.5, 3), rng.uniform(0.5, 2), rng.uniform(0, 90))
                    for _ in range(20)]
        polygons.append(np.array([[5.5, 5.5], [8.25, 5.5], [8.25, 5.5], [8.25, 7.0]]))
        return polygons
    if kind == "overlapping":  # a star of words through one point, and a word inside another
        centre = anywhere()
        polygons = [rotated_rectangle(centre, rng.uniform(80, 200), rng.uniform(15, 40), degrees)
                    for degrees in rng.uniform(0, 180, size=5)]
        polygons.append(rotated_rectangle(centre + 5, 30, 10, 10))
        return polygons
    raise ValueError(kind)


def draw_both(shape, polygons, start=None, thresh_min=THRESH_MIN, thresh_max=THRESH_MAX):
    distances = np.array([paper_distance(p) for p in polygons])
    scales = (thresh_max - thresh_min) / distances
    native = np.full(shape, thresh_min, np.float32) if start is None else start.copy()
    reference = native.copy()
    labels._draw_threshold(native, polygons, distances, scales, thresh_max)
    labels._draw_threshold_numpy(reference, polygons, distances, scales, thresh_max)
    return native, reference


KINDS = ["quads", "long-polygons", "slanted", "outside", "tiny", "overlapping"]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_band_matches_numpy_reference(kind, seed):
    polygons = scene(kind, seed, (200, 300))
    native, reference = draw_both((200, 300), polygons)
    assert (reference > THRESH_MIN).sum() > 20, "the scene drew next to nothing"
    np.testing.assert_allclose(native, reference, rtol=0, atol=TOLERANCE)
    # Where the band is, both see it (threshold_mask is threshold > thresh_min).
    assert ((native > THRESH_MIN) != (reference > THRESH_MIN)).sum() == 0


def test_band_takes_the_maximum_with_what_the_map_holds():
    rng = np.random.default_rng(5)
    start = rng.uniform(THRESH_MIN, 0.6, size=(120, 160)).astype(np.float32)
    native, reference = draw_both((120, 160), scene("overlapping", 2, (120, 160)), start=start)
    np.testing.assert_allclose(native, reference, rtol=0, atol=TOLERANCE)
    assert (native == start).any() and (native > start).any()


@pytest.mark.parametrize("thresholds", [(0.0, 1.0), (0.1, 0.2)])
def test_band_matches_with_other_thresholds(thresholds):
    native, reference = draw_both((150, 200), scene("quads", 3, (150, 200)), thresh_min=thresholds[0],
                                  thresh_max=thresholds[1])
    np.testing.assert_allclose(native, reference, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("shape", [(1, 1), (9, 3), (40, 7), (3, 200), (0, 5)])
def test_band_on_maps_narrower_or_lower_than_the_words(shape):
    """Runs are widened to whole vectors of pixels, but never beyond the row."""
    polygons = [rotated_rectangle(np.array([2.0, 1.5]), 60, 12, 20), rotated_rectangle(np.array([150.0, 1.0]), 9, 4, 0)]
    native, reference = draw_both(shape, polygons)
    np.testing.assert_allclose(native, reference, rtol=0, atol=TOLERANCE)


def test_pixels_beyond_d_are_left_alone():
    """Values below thresh_min are never written, so a map below it changes only within D."""
    polygon = rotated_rectangle(np.array([60.3, 40.7]), 70, 20, 25)
    distance = paper_distance(polygon)
    band = np.zeros((90, 120), np.float32)
    labels._draw_threshold(band, [polygon], [distance], [(THRESH_MAX - THRESH_MIN) / distance], THRESH_MAX)
    rows, cols = np.mgrid[0:90, 0:120]
    pixels = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    to_edges = np.min([segment_distance(pixels, polygon[i], polygon[(i + 1) % 4]) for i in range(4)], axis=0)
    to_edges = to_edges.reshape(band.shape)
    assert np.all(band[to_edges > distance + 1e-3] == 0)
    want = THRESH_MAX - (THRESH_MAX - THRESH_MIN) * to_edges / distance
    near = to_edges < distance - 1e-3
    np.testing.assert_allclose(band[near], want[near], rtol=0, atol=TOLERANCE)


def segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    delta = end - start
    t = np.clip((points - start) @ delta / (delta @ delta), 0.0, 1.0)
    return np.hypot(*(points - (start + t[:, None] * delta)).T)


def test_threads_draw_at_once():
    """The binding releases the GIL and the core keeps no state: threads give one answer."""
    polygons = scene("slanted", 4, (300, 400))
    want, _ = draw_both((300, 400), polygons)
    results = [None] * 4

    def work(index):
        results[index], _ = draw_both((300, 400), polygons)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_array_equal(result, want)


# --------------------------------------------------------------------------
# Argument errors
# --------------------------------------------------------------------------

SQUARE = np.array([[5.0, 5.0], [30.0, 5.0], [30.0, 20.0], [5.0, 20.0]])


def good_map() -> np.ndarray:
    return np.full((40, 50), THRESH_MIN, np.float32)


def read_only_map() -> np.ndarray:
    band = good_map()
    band.flags.writeable = False
    return band


@pytest.mark.parametrize(
    "threshold, error, message",
    [
        (good_map().astype(np.float64), InvalidInputTypeError, "threshold map must be float32, not float64"),
        (good_map()[:, ::2], InvalidInputError, "C-contiguous"),
        (np.asfortranarray(good_map()), InvalidInputError, "C-contiguous"),
        (read_only_map(), InvalidInputError, "read-only"),
        (good_map()[None], InvalidInputError, r"2-D \(height, width\), got shape \(1, 40, 50\)"),
        (good_map()[0], InvalidInputError, "2-D"),
        (good_map().tolist(), InvalidInputTypeError, "threshold map must be a numpy array, not list"),
    ],
    ids=["float64", "column-step", "fortran", "read-only", "3-D", "1-D", "list"],
)
def test_bad_maps_are_refused(threshold, error, message):
    with pytest.raises(error, match=message):
        labels._draw_threshold(threshold, [SQUARE], [3.0], [0.1], THRESH_MAX)


@pytest.mark.parametrize(
    "polygons, distances, scales, error, message",
    [
        ([SQUARE.astype(np.float32)], [3.0], [0.1], InvalidInputTypeError, r"polygons\[0\] must be float64"),
        ([SQUARE, SQUARE.tolist()], [3.0, 3.0], [0.1, 0.1], InvalidInputTypeError, r"polygons\[1\] must be a numpy"),
        ([SQUARE[:, :1]], [3.0], [0.1], InvalidInputError, r"polygons\[0\] must have shape \(N, 2\), got \(4, 1\)"),
        ([SQUARE.ravel()], [3.0], [0.1], InvalidInputError, r"must have shape \(N, 2\)"),
        ([np.asfortranarray(SQUARE)], [3.0], [0.1], InvalidInputError, r"polygons\[0\] must be C-contiguous"),
        ([SQUARE], [3.0, 2.0], [0.1], InvalidInputError, r"distances must hold one value per polygon \(1\)"),
        ([SQUARE], [3.0], [[0.1]], InvalidInputError, "scales must hold one value per polygon"),
        ([SQUARE], [0.0], [0.1], InvalidInputError, r"distances\[0\] \(the polygon's D\) must be a finite number > 0"),
        ([SQUARE], [np.nan], [0.1], InvalidInputError, "finite number > 0, got nan"),
        ([SQUARE], [3.0], [-0.1], InvalidInputError, r"scales\[0\] must be a finite number > 0"),
        ([SQUARE, SQUARE * np.inf], [3.0, 3.0], [0.1, 0.1], InvalidInputError,
         r"polygons\[1\] has a non-finite coordinate"),
    ],
    ids=["float32", "list", "one-column", "flat", "fortran", "distances", "scales-2d", "zero-d", "nan-d",
         "negative-scale", "infinite"],
)
def test_bad_polygons_and_parameters_are_refused(polygons, distances, scales, error, message):
    band = good_map()
    with pytest.raises(error, match=message):
        labels._draw_threshold(band, polygons, distances, scales, THRESH_MAX)
    np.testing.assert_array_equal(band, np.float32(THRESH_MIN))  # nothing drawn before the error


def test_non_finite_thresh_max_is_refused():
    with pytest.raises(InvalidInputError, match="thresh_max must be a finite number"):
        labels._draw_threshold(good_map(), [SQUARE], [3.0], [0.1], np.inf)


def test_no_polygons_draw_nothing():
    band = good_map()
    labels._draw_threshold(band, [], [], [], THRESH_MAX)
    np.testing.assert_array_equal(band, np.float32(THRESH_MIN))


# --------------------------------------------------------------------------
# make_labels with either band
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_make_labels_is_unchanged_by_the_native_band(seed, monkeypatch):
    sample = make_text_image(seed, size=(360, 640), words=(20, 20))
    ignore = [index % 7 == 3 for index in range(len(sample.polygons))]
    native = make_labels((360, 640), sample.polygons, ignore)
    monkeypatch.setattr(labels, "_draw_threshold", labels._draw_threshold_numpy)
    reference = make_labels((360, 640), sample.polygons, ignore)
    np.testing.assert_array_equal(native.shrink, reference.shrink)
    np.testing.assert_array_equal(native.shrink_mask, reference.shrink_mask)
    np.testing.assert_allclose(native.threshold, reference.threshold, rtol=0, atol=TOLERANCE)
    # The mask is threshold > thresh_min: it may differ only where rounding puts a pixel
    # on thresh_min itself.
    differs = native.threshold_mask != reference.threshold_mask
    assert np.all(np.abs(reference.threshold[differs] - THRESH_MIN) < TOLERANCE)
    assert native.threshold_mask.sum() > 1000
