"""Very large images by tiles: where they are cut, and how their boxes become one set.

An image that the resize policy would scale down only because of ``max_side_len`` (an 8K
frame, a scanned poster) loses its small text. Tiled, it runs at the scale the policy
wants, in overlapping tiles. Their boxes are mapped back to image pixels and merged:

- copies of one word seen whole by two tiles overlap each other almost entirely;
- pieces of a word cut by a tile's inner edge overlap the whole word in the neighbour, or
  the neighbour's piece of it, across the overlap.

So boxes of different tiles that overlap by a good part of the smaller one form a group
(union-find; bounding boxes, vectorized, find the pairs that may touch, their polygons'
intersection decides). Where tiles saw a group whole (their boxes in it span it, none at
an inner edge), the group is the boxes of one of them: the one whose boxes score highest.
Tiles see the same words with different surroundings and do not always agree: one keeps
two close words apart, another joins them across the gap, and the join scores lower (its
score is the mean probability inside it, the gap included). Taking the largest box, as
once, kept the joins (`bench/RESULTS.md`, "Tiling"). Otherwise the group is pieces
(a line longer than the overlap, a slanted word across a corner): the largest if it holds
the others, else the minimum-area rectangle, or the convex hull for polygons, of all of
them. A piece alone, at a tile's inner edge and inside a tile that found nothing there,
is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgedb.boxes import TextBox
from edgedb.errors import InvalidInputError
from edgedb.reference.boxes import order_quad

DEFAULT_TILE_SIZE = 1280  # network pixels; bench/RESULTS.md, "Tiling"
DEFAULT_TILE_OVERLAP = 256  # more than the tallest word expected at the detector's scale
TILE_MODES = ("auto", "on", "off")
_EDGE = 0.5  # of a box's smaller extent: that close to a tile's inner edge, the edge cut it
_HELD = 0.8  # of a piece's area inside another box of its group: the other saw it whole
_GROUP_OVERLAP = 0.2  # of the smaller box's bounding box: pieces of one word
_SPAN = 0.8  # of a group's width and height: a tile's boxes that span it saw it whole


@dataclass(frozen=True)
class Tile:
    """A tile's rectangle in image pixels, [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int


def check_tiling(mode, size, overlap) -> tuple[str, int, int]:
    """Validated ``(mode, size, overlap)``; ``mode`` True/False read as "on"/"off"."""
    if mode is True or mode is False:
        mode = "on" if mode else "off"
    if mode not in TILE_MODES:
        raise InvalidInputError(f"tile must be one of {', '.join(TILE_MODES)} (or True/False), not {mode!r}")
    for name, value, low in (("tile_size", size, 64), ("tile_overlap", overlap, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    if overlap * 2 >= size:
        raise InvalidInputError(f"tile_overlap ({overlap}) must be less than half of tile_size ({size})")
    return mode, int(size), int(overlap)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one side: as few tiles as keep at least ``overlap`` shared, spread
    evenly (the last tile ends at the edge)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_grid(height: int, width: int, tile, overlap: int) -> list[Tile]:
    """Overlapping tiles of at most ``tile`` x ``tile`` pixels (or ``(tile_height,
    tile_width)``) covering the image, row by row."""
    tile_height, tile_width = (tile, tile) if np.isscalar(tile) else tile
    rows, cols = _starts(height, tile_height, overlap), _starts(width, tile_width, overlap)
    return [Tile(y, x, min(height, y + tile_height), min(width, x + tile_width)) for y in rows for x in cols]


def merge_tile_boxes(tiles: Sequence[Tile], boxes: Sequence[Sequence[TextBox]], image_size: tuple[int, int],
                     box_type: str = "quad") -> list[TextBox]:
    """One set of boxes from the boxes of each tile (already in image pixels), in reading
    order of their tiles; see the module doc."""
    import cv2

    height, width = image_size
    owner, items = [], []
    for index, tile_boxes in enumerate(boxes):
        for box in tile_boxes:
            owner.append(index)
            items.append(box)
    if not items:
        return []
    owner = np.asarray(owner)
    bounds = np.array([[b.points[:, 0].min(), b.points[:, 1].min(), b.points[:, 0].max(), b.points[:, 1].max()]
                       for b in items], np.float64)  # x0, y0, x1, y1
    others = np.array([[t.x0, t.y0, t.x1, t.y1] for t in tiles], np.float64)
    rects = others[owner]  # each box's own tile
    # Cut: near an edge of its tile that is not the image's edge.
    inner = np.stack([rects[:, 0] > 0, rects[:, 1] > 0, rects[:, 2] < width, rects[:, 3] < height], axis=1)
    # (a slanted word's rectangle ends short of the edge that cut it)
    margin = np.maximum(2.0, _EDGE * np.minimum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1]))
    near = np.stack([bounds[:, 0] <= rects[:, 0] + margin, bounds[:, 1] <= rects[:, 1] + margin,
                     bounds[:, 2] >= rects[:, 2] - margin, bounds[:, 3] >= rects[:, 3] - margin], axis=1)
    cut = (inner & near).any(axis=1)
    # A piece inside a tile other than its own: that tile saw all of it.
    contained = ((bounds[:, None, 0] >= others[None, :, 0]) & (bounds[:, None, 2] <= others[None, :, 2])
                 & (bounds[:, None, 1] >= others[None, :, 1]) & (bounds[:, None, 3] <= others[None, :, 3]))
    contained[np.arange(len(items)), owner] = False
    contained = contained.any(axis=1)
    parent = np.arange(len(items))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Copies and pieces meet only where two tiles overlap: pair the boxes of each two
    # overlapping tiles that reach into their shared rectangle (memory per seam, not per
    # image). Bounding boxes pick the pairs that may touch (vectorized); the polygons
    # decide: slanted neighbours' bounding boxes overlap where the words do not.
    first, second = np.nonzero(np.triu(
        (others[:, None, 0] < others[None, :, 2]) & (others[None, :, 0] < others[:, None, 2])
        & (others[:, None, 1] < others[None, :, 3]) & (others[None, :, 1] < others[:, None, 3]), 1))
    for ti, tj in zip(first, second):
        shared_rect = np.maximum(others[ti], others[tj])[:2].tolist() + np.minimum(others[ti], others[tj])[2:].tolist()
        reach = ((bounds[:, 2] > shared_rect[0]) & (bounds[:, 0] < shared_rect[2])
                 & (bounds[:, 3] > shared_rect[1]) & (bounds[:, 1] < shared_rect[3]))
        left, right = np.flatnonzero(reach & (owner == ti)), np.flatnonzero(reach & (owner == tj))
        if not len(left) or not len(right):
            continue
        bl, br = bounds[left], bounds[right]
        iw = np.minimum(bl[:, None, 2], br[None, :, 2]) - np.maximum(bl[:, None, 0], br[None, :, 0])
        ih = np.minimum(bl[:, None, 3], br[None, :, 3]) - np.maximum(bl[:, None, 1], br[None, :, 1])
        for i, j in zip(*np.nonzero((iw > 0) & (ih > 0))):
            a, c = items[left[i]].points, items[right[j]].points
            if _shared_area(a, c) >= _GROUP_OVERLAP * min(_polygon_area(a), _polygon_area(c)):
                ri, rj = root(left[i]), root(right[j])
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(len(items)):
        groups.setdefault(root(i), []).append(i)
    merged = []
    for members in groups.values():  # keyed by the first member: reading order of the tiles
        if len(members) == 1:
            only = members[0]
            if not (cut[only] and contained[only]):  # a piece another tile saw all of, and found nothing at
                merged.append(items[only])
            continue
        # Tiles that saw the group whole: the boxes of the one that scores highest.
        by_tile: dict[int, list[int]] = {}
        for i in members:
            by_tile.setdefault(int(owner[i]), []).append(i)
        # (spanning the group: a piece the edge test missed, fading near its tile's edge, does not)
        extent = _extent(bounds[members])
        whole = [boxes for boxes in by_tile.values()
                 if not cut[boxes].any() and np.all(_extent(bounds[boxes]) >= _SPAN * extent)]
        if whole:
            best = max(whole, key=lambda boxes: float(np.mean([items[i].score for i in boxes])))
            merged.extend(items[i] for i in best)
            continue
        # Pieces only: one holding the others is the word; else the word is their union.
        areas = {i: _polygon_area(items[i].points) for i in members}
        largest = max(members, key=areas.get)
        if all(_shared_area(items[i].points, items[largest].points) >= _HELD * areas[i]
               for i in members if i != largest):
            merged.append(items[largest])
            continue
        points = np.concatenate([items[i].points for i in members]).astype(np.float32)
        score = float(np.mean([items[i].score for i in members]))
        if box_type == "poly":
            outline = cv2.convexHull(points.reshape(-1, 1, 2)).reshape(-1, 2)
        else:
            outline = order_quad(cv2.boxPoints(cv2.minAreaRect(points.reshape(-1, 1, 2))))  # as the core orders quads
        merged.append(TextBox(np.round(outline).astype(np.float32), score))
    return merged


def _extent(bounds: np.ndarray) -> np.ndarray:
    """Width and height of the bounding box around ``(N, 4)`` x0, y0, x1, y1 bounds."""
    return np.array([bounds[:, 2].max() - bounds[:, 0].min(), bounds[:, 3].max() - bounds[:, 1].min()])


def _polygon_area(points: np.ndarray) -> float:
    import cv2

    return max(1.0, float(cv2.contourArea(points.astype(np.float32))))


def _shared_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area shared by two boxes (their convex outlines: quads are convex, polygons nearly)."""
    import cv2

    hull_a = cv2.convexHull(a.astype(np.float32).reshape(-1, 1, 2))
    hull_b = cv2.convexHull(b.astype(np.float32).reshape(-1, 1, 2))
    area, _ = cv2.intersectConvexConvex(hull_a, hull_b)
    return float(area)

