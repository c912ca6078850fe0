"""Comparing box sets in tests: identical, or matched one to one by polygon IoU."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon


def assert_identical_boxes(ours, theirs, *, scores: bool = True) -> None:
    """The same boxes in the same order, point for point (scores to float tolerance)."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.points, b.points)
        if scores:
            assert abs(a.score - b.score) <= 1e-6 * max(1.0, abs(b.score))


def polygon(points) -> Polygon:
    poly = Polygon(np.asarray(points, dtype=np.float64))
    return poly if poly.is_valid else poly.buffer(0)


def iou(a, b) -> float:
    pa, pb = polygon(a), polygon(b)
    union = pa.union(pb).area
    return pa.intersection(pb).area / union if union > 0 else float(np.allclose(a, b))


def match(ours, theirs, min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, best IoU first; returns (i, j) index pairs."""
    pairs = sorted(
        ((iou(a, b), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)),
        reverse=True,
    )
    used_a, used_b, matched = set(), set(), []
    for value, i, j in pairs:
        if value < min_iou:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j), matched.append((i, j))
    return matched
