"""DBNet training labels: shrink map, threshold map and their masks.

Written from the paper (Liao et al., "Real-time Scene Text Detection with
Differentiable Binarization", AAAI 2020, section "Label generation"):

Shrink map
    Each text polygon is offset inward by ``D = A (1 - r^2) / L`` (``A`` area, ``L``
    perimeter, ``r`` the shrink ratio, 0.4) with the Vatti clipper (pyclipper, round
    joins); the pixels inside the shrunk polygon are 1. ``shrink_mask`` is 0 on regions
    the loss must not see: polygons marked ignore (``###`` words), polygons whose
    minimum-area rectangle has a side shorter than ``min_text_size``, degenerate
    polygons (area below one pixel) and polygons that vanish when shrunk.

Threshold map
    Within the polygon dilated by the same ``D``, a pixel's value is
    ``1 - d / D`` clipped to ``[0, 1]``, ``d`` its distance to the nearest edge of the
    polygon (the maximum over polygons where dilated polygons overlap), then rescaled to
    ``[thresh_min, thresh_max]``. ``threshold_mask`` is 1 inside the dilated polygons.
    As in the authors' code, ignored polygons get neither.

Conventions: ``x, y`` in pixels, the centre of pixel ``(row, col)`` at ``x = col,
y = row`` (ICDAR ground truth and :mod:`edgedb.synthetic` use it). Polygons are
not clipped to the image: the maps are the restriction to the image of the labels of
the whole polygon, so a word cut by the image border keeps its own shape (callers that
crop, such as :func:`edgedb.train.data.augment`, clip polygons to the crop first).

Where this differs from the authors' code (MhLiao/DB, copied by PaddleOCR), on purpose:

- Distances are exact point-to-segment distances. (Their ``_distance`` picks the
  end-point distance when the segment subtends an acute angle at the pixel, which is
  wrong near edges shorter than about 2D, e.g. of many-point curved-text polygons.)
- The dilated region is the exact set ``{d < D}`` plus the polygon (the Minkowski sum
  with a disk), rather than pyclipper's rounded polygon rasterized.
- Coordinates keep 1/256 pixel precision through the offset and ``cv2.fillPoly``
  (fixed point), instead of being truncated to whole pixels, and kernels take the
  pixels whose centre is inside the shrunk polygon (``_FILL_INSET``). A kernel less
  than a pixel thick counts as vanished.
- The short side is that of the minimum-area rectangle, not the axis-aligned box, so a
  thin word rotated by 45 degrees is still "too small".

Speed (labels are made for every crop of every step): convex quads are shrunk with a
few NumPy calls for all of them at once (the inward offset of a convex polygon has no
arcs: its corners are where the moved edge lines cross); other polygons go through
pyclipper. The threshold map is drawn by the C++ core (csrc/threshold_band.cpp): per
edge and row, only the pixels within D of the edge, a few vectorized flops each.
:func:`_draw_threshold_numpy` computes the same band with NumPy (boxes around the
edges, stacked into a few arrays) and is its reference in the tests.

:func:`make_labels` is the fast version; :func:`make_labels_reference` computes the same
labels pixel by pixel with shapely and pyclipper and is the tests' oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import pyclipper

from edgedb import _native
from edgedb._extras import import_optional
from edgedb.errors import InvalidInputError, InvalidInputTypeError

__all__ = ["DBLabels", "make_labels", "make_labels_reference"]

#: Fractional bits of the fixed-point coordinates given to pyclipper and cv2.fillPoly.
_SHIFT = 8
_ONE = 1 << _SHIFT
#: cv2.fillPoly also takes pixels whose centre lies up to about half a pixel outside
#: the polygon (it rounds the ends of each row's span). Kernels are drawn inset by this
#: much more, so that their pixels are those whose centre is inside the shrunk polygon:
#: exactly so for axis-aligned edges; along slanted ones about as many boundary pixels
#: are gained as lost. (Without it a 2 px thick kernel of a 14 px high word is drawn
#: 3 px thick.)
_FILL_INSET = 0.5
#: Largest chord-to-arc gap of pyclipper's round joins, in pixels.
_ARC_TOLERANCE = 0.05
#: Coordinates beyond this (pixels) would overflow the int32 fixed point of fillPoly.
_MAX_COORD = float(2 ** (31 - _SHIFT - 1))
#: Polygons with a smaller area (pixels) are degenerate and ignored, as in the
#: authors' code.
_MIN_AREA = 1.0
#: Cost of one more edge box of :func:`_draw_threshold_numpy`, in pixels of arithmetic;
#: long slanted edges are cut into pieces (a box each) while a piece saves more area than
#: this. (Tuned on a 2-core Xeon; from 1000 to 3000 made no measurable difference.)
_BOX_OVERHEAD_PX = 3000.0
#: Boxes stacked together are at least this fraction of the widest one's width (the
#: stack is as wide as its widest box; narrower rows are wasted work).
_STACKED_WIDTH_RATIO = 0.75
#: At most this many pixels in one stack. Small stacks keep OpenBLAS's matrix product
#: single-threaded (it starts threads above M*N*K = 262144, here 4 per pixel): with
#: threads, 50 large words took 16 ms instead of 7 ms while another process kept the
#: two cores busy, as the trainer does.
_STACKED_MAX_PIXELS = 1 << 16
_ZERO = np.float32(0.0)


@dataclass(frozen=True, eq=False)
class DBLabels:
    """The four training targets of DBNet, float32 ``(H, W)`` each.

    ``eq=False`` because element-wise numpy comparison makes a generated ``__eq__``
    meaningless; compare fields explicitly instead.
    """

    #: 1 inside the shrunk text polygons, else 0.
    shrink: np.ndarray
    #: 0 on ignored regions (``###``, too small, vanishing when shrunk), else 1. (Drawn
    #: by cv2.fillPoly: up to about half a pixel generous.)
    shrink_mask: np.ndarray
    #: ``thresh_min`` far from text edges, rising to ``thresh_max`` on them.
    threshold: np.ndarray
    #: 1 inside the dilated text polygons, else 0.
    threshold_mask: np.ndarray


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        dims = tuple(shape)
    except TypeError:
        raise InvalidInputTypeError(f"shape must be (height, width), got {shape!r}") from None
    if len(dims) not in (2, 3):
        raise InvalidInputError(f"shape must be (height, width) or an image's (H, W, C), got {shape!r}")
    height, width = dims[:2]
    for value in (height, width):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise InvalidInputTypeError(f"shape must hold integers, got {shape!r}")
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"shape must be positive, got {shape!r}")
    return int(height), int(width)


def _check_polygons(polygons: Any, ignore: Any) -> tuple[list[np.ndarray], list[bool]]:
    if polygons is None:
        polygons = []
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        raise InvalidInputError(
            f"polygons must be a list of (N, 2) arrays, got one array of shape {polygons.shape};"
            " wrap a single polygon in a list"
        )
    checked = []
    for index, polygon in enumerate(polygons):
        try:
            points = np.asarray(polygon, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputTypeError(
                f"polygons[{index}] must be an (N, 2) array of x, y points, got {type(polygon).__name__}"
            ) from None
        if points.size == 0:
            points = points.reshape(0, 2)
        if points.ndim != 2 or points.shape[1] != 2:
            raise InvalidInputError(f"polygons[{index}] must have shape (N, 2), got {points.shape}")
        checked.append(np.ascontiguousarray(points))  # as the C++ threshold band takes them
    # One pass over all coordinates; a bad polygon is looked for only on failure.
    if checked and not np.all(np.abs(np.concatenate(checked)) <= _MAX_COORD):
        index = next(i for i, p in enumerate(checked) if not np.all(np.abs(p) <= _MAX_COORD))
        raise InvalidInputError(
            f"polygons[{index}] has a non-finite coordinate or one beyond +-{_MAX_COORD:g} pixels"
        )
    if ignore is None:
        flags = [False] * len(checked)
    else:
        flags = [bool(flag) for flag in ignore]
        if len(flags) != len(checked):
            raise InvalidInputError(
                f"ignore has {len(flags)} flags for {len(checked)} polygons; give one per polygon"
            )
    return checked, flags


def _check_options(shrink_ratio: float, thresh_min: float, thresh_max: float, min_text_size: float) -> None:
    if not 0.0 <= shrink_ratio < 1.0:
        raise InvalidInputError(f"shrink_ratio must be in [0, 1), got {shrink_ratio!r}")
    if not 0.0 <= thresh_min < thresh_max <= 1.0:
        raise InvalidInputError(
            f"need 0 <= thresh_min < thresh_max <= 1, got {thresh_min!r} and {thresh_max!r}"
        )
    if not min_text_size >= 0:
        raise InvalidInputError(f"min_text_size must be >= 0, got {min_text_size!r}")


# --------------------------------------------------------------------------
# Geometry shared by both versions
# --------------------------------------------------------------------------


def _area_perimeter(points: np.ndarray) -> tuple[float, float]:
    """Unsigned area and perimeter of a closed polygon."""
    if len(points) < 3:
        return 0.0, 0.0
    contour = points.astype(np.float32)
    return abs(float(cv2.contourArea(contour))), float(cv2.arcLength(contour, True))


def _min_side(points: np.ndarray) -> float:
    """Short side of the minimum-area rectangle around the points."""
    (_, _), (side_a, side_b), _ = cv2.minAreaRect(points.astype(np.float32))
    return float(min(side_a, side_b))


def _shrink_distance(area: float, perimeter: float, shrink_ratio: float) -> float:
    """The paper's offset ``D = A (1 - r^2) / L``."""
    return area * (1.0 - shrink_ratio * shrink_ratio) / perimeter


# --------------------------------------------------------------------------
# Fast version
# --------------------------------------------------------------------------


def _fixed(points: np.ndarray) -> np.ndarray:
    """int32 fixed-point coordinates (``_SHIFT`` fractional bits)."""
    return np.round(points * _ONE).astype(np.int32)


def _offset_fixed(fixed: np.ndarray, distance: float) -> list[np.ndarray]:
    """pyclipper's round-join offset of a fixed-point polygon, as fixed-point paths."""
    offset = pyclipper.PyclipperOffset(2.0, _ARC_TOLERANCE * _ONE)
    offset.AddPath(fixed.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.array(path, dtype=np.int32) for path in offset.Execute(distance * _ONE)]


def _inset_convex_quads(quads: np.ndarray, distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Convex quads offset inward, all at once: ``(insets (n, 4, 2), ok (n,))``.

    Inside a convex polygon the inward round-join offset has no arcs: it is the
    polygon bounded by the edge lines moved inward, whose corners are where consecutive
    moved lines cross. That holds while every moved edge keeps its direction; ``ok``
    is false for quads where one does not (an edge vanished, or all did) or that are
    not strictly convex, and those go to pyclipper. pyclipper costs about 13 us a
    polygon; this is a few NumPy calls for all of them.
    """
    following = quads[:, [1, 2, 3, 0]]
    edges = following - quads
    lengths = np.hypot(edges[..., 0], edges[..., 1])
    turns = _cross(edges, edges[:, [1, 2, 3, 0]])  # edge i x edge i+1
    orientation = np.sign(turns.sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        # Inward unit normals: the left normal (-dy, dx) when the polygon turns left
        # (positive cross products), else the right one.
        normals = np.stack([-edges[..., 1], edges[..., 0]], axis=-1)
        normals *= (orientation[:, None] / lengths)[..., None]
        # Moved line i: normal_i . p = offset_i.
        offsets = np.einsum("nkd,nkd->nk", normals, quads) + distances[:, None]
        previous, previous_offsets = normals[:, [3, 0, 1, 2]], offsets[:, [3, 0, 1, 2]]
        determinant = _cross(previous, normals)
        insets = np.stack(
            [
                (previous_offsets * normals[..., 1] - offsets * previous[..., 1]) / determinant,
                (previous[..., 0] * offsets - normals[..., 0] * previous_offsets) / determinant,
            ],
            axis=-1,
        )
        kept = np.einsum("nkd,nkd->nk", insets[:, [1, 2, 3, 0]] - insets, edges)
    ok = (
        np.all(turns * orientation[:, None] > 0, axis=1)
        & np.all(kept > 0, axis=1)
        & np.all(np.isfinite(insets), axis=(1, 2))
    )
    insets[~ok] = 0.0
    return insets, ok


def _cross(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """z component of the cross products of 2D vectors (the last axis)."""
    return first[..., 0] * second[..., 1] - first[..., 1] * second[..., 0]


def _shrink_polygons(polygons: list[np.ndarray], distances: list[float]) -> list[list[np.ndarray]]:
    """Each polygon offset inward by its distance: fixed-point paths, [] if it vanished."""
    shrunk: list = [None] * len(polygons)
    quads = [index for index, points in enumerate(polygons) if len(points) == 4]
    if quads:
        insets, ok = _inset_convex_quads(
            np.stack([polygons[index] for index in quads]), np.array([distances[index] for index in quads])
        )
        fixed = _fixed(insets)
        for row, index in enumerate(quads):
            if ok[row]:
                shrunk[index] = [fixed[row]]
    for index, paths in enumerate(shrunk):
        if paths is None:
            shrunk[index] = _offset_fixed(_fixed(polygons[index]), -distances[index])
    return shrunk


@dataclass
class _EdgeBoxes:
    """Boxes that together cover every pixel closer than ``D`` to some edge.

    One row per box: the box (clipped to the image), the edge it belongs to (start
    point, unit direction, length) and its polygon's ``(thresh_max - thresh_min) / D``.
    """

    x0: np.ndarray
    y0: np.ndarray
    height: np.ndarray
    width: np.ndarray
    ax: np.ndarray
    ay: np.ndarray
    ux: np.ndarray
    uy: np.ndarray
    length: np.ndarray
    scale: np.ndarray


def _edge_boxes(polygons: list[np.ndarray], distances: np.ndarray, scales: np.ndarray, height: int,
                width: int) -> _EdgeBoxes:
    """The boxes of all edges of the polygons (``D`` and scale per polygon).

    A slanted edge's box is much larger than the band around it, so long slanted edges
    are cut into ``n`` pieces with a box each: they cover ``(|dx| + 2Dn)(|dy| + 2Dn)/n``
    pixels at ``n`` times the per-box cost, least at
    ``n = sqrt(|dx||dy| / (4D^2 + overhead))``.
    """
    points = np.concatenate(polygons)
    counts = np.array([len(polygon) for polygon in polygons])
    first = np.cumsum(counts) - counts
    following = np.arange(len(points)) + 1
    following[first + counts - 1] = first  # polygons are closed
    distance = np.repeat(distances, counts)
    scale = np.repeat(scales, counts)
    delta = points[following] - points
    length = np.hypot(delta[:, 0], delta[:, 1])
    real = length > 0.0
    start, delta, length, distance, scale = points[real], delta[real], length[real], distance[real], scale[real]

    pieces = np.sqrt(np.abs(delta[:, 0] * delta[:, 1]) / (4.0 * distance * distance + _BOX_OVERHEAD_PX))
    pieces = np.maximum(np.rint(pieces), 1).astype(np.int64)
    edge = np.repeat(np.arange(len(length)), pieces)
    index = np.arange(len(edge)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    step = delta[edge] / pieces[edge][:, None]
    begin = start[edge] + step * index[:, None]
    end = begin + step
    grow = distance[edge][:, None]
    low = np.floor(np.minimum(begin, end) - grow)
    high = np.ceil(np.maximum(begin, end) + grow)
    x0 = np.maximum(low[:, 0], 0).astype(np.int64)
    y0 = np.maximum(low[:, 1], 0).astype(np.int64)
    x1 = np.minimum(high[:, 0], width - 1).astype(np.int64)
    y1 = np.minimum(high[:, 1], height - 1).astype(np.int64)
    inside = (x1 >= x0) & (y1 >= y0)
    edge, x0, y0, x1, y1 = edge[inside], x0[inside], y0[inside], x1[inside], y1[inside]
    return _EdgeBoxes(
        x0=x0,
        y0=y0,
        height=y1 - y0 + 1,
        width=x1 - x0 + 1,
        ax=start[edge, 0],
        ay=start[edge, 1],
        ux=delta[edge, 0] / length[edge],
        uy=delta[edge, 1] / length[edge],
        length=length[edge],
        scale=scale[edge],
    )


def _draw_stacked(threshold: np.ndarray, boxes: _EdgeBoxes, chosen: np.ndarray, thresh_max: float) -> None:
    """Boxes ``chosen`` at once, stacked as the rows of one array as wide as the widest.

    Each array row is one box row, so the edge's coefficients are per-row vectors:
    along and across the edge for all rows come out of one matrix product with
    ``[x, 1]``, and a handful of whole-array operations replace about eight calls a
    box. Only the final maximum into the map is per box. Distances are scaled by
    ``(thresh_max - thresh_min) / D`` from the start, so the value is ``thresh_max``
    minus the scaled distance.
    """
    heights = boxes.height[chosen]
    row_box = np.repeat(np.arange(len(chosen)), heights)
    first_row = np.cumsum(heights) - heights
    edge = chosen[row_box]
    ux, uy, scale = boxes.ux[edge], boxes.uy[edge], boxes.scale[edge]
    rx = boxes.x0[edge] - boxes.ax[edge]  # box row start relative to the edge start
    ry = boxes.y0[edge] + (np.arange(len(edge)) - first_row[row_box]) - boxes.ay[edge]
    rows = len(edge)
    coefficients = np.empty((2, rows, 2), np.float32)
    coefficients[0, :, 0] = scale * ux
    coefficients[0, :, 1] = scale * (ux * rx + uy * ry)
    coefficients[1, :, 0] = -scale * uy
    coefficients[1, :, 1] = scale * (ux * ry - uy * rx)
    width = int(boxes.width[chosen].max())
    columns = np.ones((2, width), np.float32)
    columns[0] = np.arange(width)
    both = coefficients.reshape(2 * rows, 2) @ columns
    along, across = both[:rows], both[rows:]
    # Beyond an end of the segment the distance is to that end point. (Ufuncs with
    # float32 scalars: np.clip's Python wrapper costs more than the work here.)
    nearest = np.minimum(along, (scale * boxes.length[edge]).astype(np.float32)[:, None])
    np.maximum(nearest, _ZERO, out=nearest)
    along -= nearest
    value = cv2.magnitude(along, across)
    np.subtract(np.float32(thresh_max), value, out=value)
    placement = zip(
        boxes.x0[chosen].tolist(), boxes.y0[chosen].tolist(), heights.tolist(),
        boxes.width[chosen].tolist(), first_row.tolist(),
    )
    for x0, y0, height, box_width, row in placement:
        view = threshold[y0 : y0 + height, x0 : x0 + box_width]
        cv2.max(view, value[row : row + height, :box_width], dst=view)  # in place, unlike np.maximum


def _draw_threshold(
    threshold: np.ndarray, polygons: list[np.ndarray], distances: Any, scales: Any, thresh_max: float
) -> None:
    """Raise ``threshold`` to ``thresh_max - scale * d`` near the polygons' edges, in C++.

    The same band as :func:`_draw_threshold_numpy`, its reference, on maps that hold at
    least each polygon's ``thresh_min = thresh_max - scale * D`` (as :func:`make_labels`
    fills them): only pixels closer than ``D`` to an edge are visited, and values below
    ``thresh_min`` are not written. ``threshold`` must be a writable C-contiguous float32
    ``(H, W)`` array, ``polygons`` float64 ``(N, 2)`` arrays.

    Raises:
        InvalidInputTypeError: a map or polygon of another dtype, or not an array.
        InvalidInputError: a map that is not 2-D, C-contiguous and writable; a polygon not
            of shape ``(N, 2)`` or C-contiguous; a non-finite coordinate; a ``D`` or scale
            that is not finite and > 0; not one ``D`` and scale per polygon.
    """
    distances, scales = np.asarray(distances, np.float64), np.asarray(scales, np.float64)
    _native.draw_threshold_band(threshold, polygons, distances, scales, float(thresh_max))


def _draw_threshold_numpy(
    threshold: np.ndarray, polygons: list[np.ndarray], distances: Any, scales: Any, thresh_max: float
) -> None:
    """Raise ``threshold`` to ``thresh_max - scale * d`` near the polygons' edges, in NumPy.

    ``D`` and scale per polygon. ``d`` is the distance to one edge; the maximum over
    edges (and polygons) through ``threshold`` makes it the distance to the nearest edge.
    Only boxes around the edges that cover every pixel closer than ``D`` are computed:
    farther pixels fall to ``thresh_min`` or below and change nothing. Boxes are stacked
    in groups of similar width (a narrow box in a wide stack is wasted work) and bounded
    size (``_STACKED_MAX_PIXELS``). The reference of :func:`_draw_threshold`.
    """
    if not polygons:
        return
    height, width = threshold.shape
    distances, scales = np.asarray(distances, np.float64), np.asarray(scales, np.float64)
    boxes = _edge_boxes(polygons, distances, scales, height, width)
    order = np.argsort(-boxes.width, kind="stable")
    widths, heights = boxes.width[order].tolist(), boxes.height[order].tolist()
    start = 0
    while start < len(order):
        end, rows = start + 1, heights[start]
        while (
            end < len(order)
            and widths[end] >= _STACKED_WIDTH_RATIO * widths[start]
            and (rows + heights[end]) * widths[start] <= _STACKED_MAX_PIXELS
        ):
            rows += heights[end]
            end += 1
        _draw_stacked(threshold, boxes, order[start:end], thresh_max)
        start = end


def make_labels(
    shape: Sequence[int],
    polygons: Sequence[Any],
    ignore: Sequence[bool] | None = None,
    *,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: float = 8,
    out: DBLabels | None = None,
) -> DBLabels:
    """DBNet's training labels for an image of ``shape`` with text ``polygons``.

    Args:
        shape: ``(height, width)`` of the image (an image's ``(H, W, C)`` works too).
        polygons: Text regions, each an ``(N, 2)`` array of ``x, y`` pixel coordinates
            (quads or longer polygons, either orientation). Polygons may reach outside
            the image; they are not clipped.
        ignore: One flag per polygon, true for regions to leave out of the loss
            (``###`` words). None means no polygon is ignored.
        shrink_ratio: ``r`` in the paper's offset ``D = A (1 - r^2) / L``.
        thresh_min: Threshold map value away from text edges.
        thresh_max: Threshold map value on text edges.
        min_text_size: Polygons whose minimum-area rectangle has a shorter side are
            ignored (pixels).
        out: Maps to write into (float32, C-contiguous, ``(H, W)``), e.g. the previous
            call's. Four fresh 1280x720 maps are 15 MB that the allocator may map anew on
            every call: touching them first costs about 4 ms, more than the labels.

    Returns:
        The four float32 ``(H, W)`` maps (``out`` when given); see the module docstring.

    Raises:
        InvalidInputError: (a ValueError) on a bad shape, a polygon not of shape
            ``(N, 2)`` or with a non-finite or huge coordinate, a wrong number of
            ignore flags, or options out of range.
        InvalidInputTypeError: (a TypeError) on a shape that is not two integers or a
            polygon that is not numeric.
    """
    height, width = _check_shape(shape)
    points_list, ignore_flags = _check_polygons(polygons, ignore)
    _check_options(shrink_ratio, thresh_min, thresh_max, min_text_size)

    if out is None:
        shrink = np.zeros((height, width), np.float32)
        shrink_mask = np.ones((height, width), np.float32)
        threshold = np.full((height, width), thresh_min, np.float32)
        threshold_mask = None
    else:
        maps = (out.shrink, out.shrink_mask, out.threshold, out.threshold_mask)
        if not all(isinstance(m, np.ndarray) and m.dtype == np.float32 and m.shape == (height, width)
                   and m.flags.c_contiguous and m.flags.writeable for m in maps):
            raise InvalidInputError(f"out must hold four writable C-contiguous float32 maps of shape {(height, width)}")
        shrink, shrink_mask, threshold, threshold_mask = maps
        shrink.fill(0.0)
        shrink_mask.fill(1.0)
        threshold.fill(thresh_min)
    masked: list[np.ndarray] = []  # polygons left out of the loss
    labelled: list[np.ndarray] = []
    distances: list[float] = []
    for points, ignored in zip(points_list, ignore_flags):
        if len(points) == 0:
            continue
        area, perimeter = _area_perimeter(points)
        if ignored or area < _MIN_AREA or _min_side(points) < min_text_size:
            masked.append(points)
        else:
            labelled.append(points)
            distances.append(_shrink_distance(area, perimeter, shrink_ratio))

    kept: list[np.ndarray] = []  # labelled polygons
    kept_distances: list[float] = []
    # Kernels are drawn _FILL_INSET smaller, so that fillPoly takes the pixels whose
    # centre is inside the shrunk polygon.
    drawn = _shrink_polygons(labelled, [distance + _FILL_INSET for distance in distances])
    for points, distance, paths in zip(labelled, distances, drawn):
        if not paths:
            masked.append(points)  # vanished when shrunk
            continue
        # One call per polygon: fillPoly's even-odd rule turns pyclipper's hole paths
        # into holes, but would also cut overlaps between different polygons.
        cv2.fillPoly(shrink, paths, 1.0, cv2.LINE_8, _SHIFT)
        kept.append(points)
        kept_distances.append(distance)
    for points in masked:
        cv2.fillPoly(shrink_mask, [_fixed(points)], 0.0, cv2.LINE_8, _SHIFT)
    scales = (thresh_max - thresh_min) / np.array(kept_distances, np.float64)
    _draw_threshold(threshold, kept, kept_distances, scales, thresh_max)

    # The dilated polygons: every pixel closer than D to an edge (where the threshold
    # map rose above thresh_min) plus the polygons themselves. (Not plus the shrunk
    # polygons, which would do in exact arithmetic: fillPoly can miss a pixel that is
    # just inside a kernel and just too far from the edges, leaving a hole.)
    _, threshold_mask = cv2.threshold(threshold, thresh_min, 1.0, cv2.THRESH_BINARY, dst=threshold_mask)
    for points in kept:
        cv2.fillPoly(threshold_mask, [_fixed(points)], 1.0, cv2.LINE_8, _SHIFT)
    if out is not None:
        return out
    return DBLabels(shrink, shrink_mask, threshold, threshold_mask)


# --------------------------------------------------------------------------
# Reference version
# --------------------------------------------------------------------------


def _shapely():
    return import_optional("shapely", "make_labels_reference", "pip install 'shapely>=2'", name="shapely >= 2")


def _offset_float(points: np.ndarray, distance: float) -> list[np.ndarray]:
    """pyclipper's round-join offset at high precision (2^-16 pixel), float paths."""
    scale = float(1 << 16)
    offset = pyclipper.PyclipperOffset(2.0, 0.01 * scale)
    offset.AddPath(np.round(points * scale).astype(np.int64).tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return [np.asarray(path, dtype=np.float64) / scale for path in offset.Execute(distance * scale)]


def make_labels_reference(
    shape: Sequence[int],
    polygons: Sequence[Any],
    ignore: Sequence[bool] | None = None,
    *,
    shrink_ratio: float = 0.4,
    thresh_min: float = 0.3,
    thresh_max: float = 0.7,
    min_text_size: float = 8,
) -> DBLabels:
    """Same contract as :func:`make_labels`, computed pixel by pixel.

    Every pixel centre is tested against every polygon with shapely: inside the
    pyclipper-shrunk polygon (even-odd over its paths), distance to the polygon's
    boundary, distance to the polygon. Slow (about 35 s for 50 words on 1280x720);
    the oracle of the tests.
    """
    shapely = _shapely()
    height, width = _check_shape(shape)
    points_list, ignore_flags = _check_polygons(polygons, ignore)
    _check_options(shrink_ratio, thresh_min, thresh_max, min_text_size)

    rows, cols = np.mgrid[0:height, 0:width]
    pixels = shapely.points(cols.ravel().astype(np.float64), rows.ravel().astype(np.float64))
    shrink = np.zeros(height * width, bool)
    ignored_pixels = np.zeros(height * width, bool)
    border = np.zeros(height * width)  # 1 - d / D, the maximum over polygons
    dilated = np.zeros(height * width, bool)
    for points, ignored in zip(points_list, ignore_flags):
        if len(points) == 0:
            continue
        polygon = shapely.Polygon(points) if len(points) >= 3 else None
        area = abs(_signed_area(points))
        too_small = (
            polygon is None
            or area < _MIN_AREA
            or _min_side(points) < min_text_size
        )
        if ignored or too_small:
            ignored_pixels |= _covered(shapely, points, pixels)
            continue
        perimeter = float(shapely.LinearRing(points).length)
        distance = _shrink_distance(area, perimeter, shrink_ratio)
        paths = _offset_float(points, -distance)
        if not _offset_float(points, -(distance + _FILL_INSET)):  # less than a pixel thick
            ignored_pixels |= _covered(shapely, points, pixels)
            continue
        parity = np.zeros(height * width, bool)
        for path in paths:
            parity ^= shapely.covers(shapely.Polygon(path), pixels)
        shrink |= parity
        to_edges = shapely.distance(shapely.LinearRing(points), pixels)
        border = np.maximum(border, np.clip(1.0 - to_edges / distance, 0.0, 1.0))
        dilated |= shapely.distance(polygon, pixels) < distance
    threshold = thresh_min + (thresh_max - thresh_min) * border
    return DBLabels(
        shrink=shrink.reshape(height, width).astype(np.float32),
        shrink_mask=(~ignored_pixels).reshape(height, width).astype(np.float32),
        threshold=threshold.reshape(height, width).astype(np.float32),
        threshold_mask=dilated.reshape(height, width).astype(np.float32),
    )


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _covered(shapely, points: np.ndarray, pixels) -> np.ndarray:
    """Pixels whose centre lies on or inside the polygon (a line or point if degenerate)."""
    if len(points) >= 3:
        geometry = shapely.make_valid(shapely.Polygon(points))
    elif len(points) == 2:
        geometry = shapely.LineString(points)
    else:
        geometry = shapely.Point(points[0])
    return shapely.intersects(geometry, pixels)
