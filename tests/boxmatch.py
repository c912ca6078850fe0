"""One-to-one matching of boxes by polygon IoU, for comparing box sets in tests."""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon


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
