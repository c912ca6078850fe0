"""Text boxes from a DBNet probability map, formed by the C++ core.

The map is binarized at ``thresh``; each 8-connected region is a shrunk text kernel.
Per region: a minimum-area rectangle (``quad``) or a simplified contour (``poly``), a
score (mean probability inside it), and an outward offset by D' = A' * r' / L' (area,
perimeter, r' = ``unclip_ratio``) that recovers the full text extent.
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional, Tuple

import numpy as np

from edgedb import _native
from edgedb._checks import as_integer
from edgedb.errors import InvalidInputError, InvalidInputTypeError, ModelError

SCORE_MODES = ("fast", "slow")
BOX_TYPES = ("quad", "poly")
# Box formation as EdgeDetector does it unless told otherwise, measured on ICDAR 2015
# (bench/RESULTS.md, "Detector defaults").
DEFAULT_BOXES = dict(
    thresh=0.3, box_thresh=0.6, unclip_ratio=1.5, max_candidates=1000, min_size=3,
    score_mode="fast", box_type="quad", use_dilation=False,
)


class TextBox:
    """A detected text region.

    ``points`` is a float32 ``(K, 2)`` array of ``x, y`` in whole pixels; quads have four
    points clockwise from the top-left. ``score`` is the mean probability inside the region.
    Each call returns new arrays: a later call never overwrites boxes you hold.
    """

    __slots__ = ("points", "score")

    def __init__(self, points: np.ndarray, score: float):
        self.points = points
        self.score = score

    def __repr__(self) -> str:
        return f"TextBox(points={self.points.tolist()}, score={self.score:.4f})"

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"points": [[x, y], ...], "score": s}``."""
        return {"points": self.points.tolist(), "score": float(self.score)}


# Bounds of the parameters, checked here so that out-of-range values get a clear error
# rather than pybind11's "incompatible function arguments" (the C++ core takes 32-bit
# ints) or a Clipper "Coordinate outside allowed range".
MAX_CANDIDATES = 2**31 - 1
# Points are float32: whole pixels are exact up to 2**24.
MAX_DEST_SIDE = 2**24
# D' = A' * r' / L' grows a box by about r'/2 times its short side; PaddleOCR uses 1.5 to
# 2.0. Far larger ratios overflow Clipper's coordinates (1e30) or give boxes larger than
# any image, and the round joins take a number of points that grows with sqrt(D').
MAX_UNCLIP_RATIO = 100.0


def _number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InvalidInputTypeError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not low <= number <= high:  # NaN fails too
        raise InvalidInputError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return number


def _integer(name: str, value, low: int, high: int) -> int:
    integer = as_integer(name, value)
    if not low <= integer <= high:
        raise InvalidInputError(f"{name} must be an integer in [{low}, {high}], got {integer}")
    return integer


def _dest_size(dest_size) -> Tuple[int, int]:
    if dest_size is None:
        return 0, 0
    try:
        height, width = dest_size
    except (TypeError, ValueError):
        raise InvalidInputTypeError("dest_size must be None or (height, width)") from None
    if isinstance(height, (bool, np.bool_)) or isinstance(width, (bool, np.bool_)):
        raise InvalidInputTypeError("dest_size must be two integers (height, width), not bool")
    try:
        height, width = operator.index(height), operator.index(width)
    except TypeError:
        raise InvalidInputTypeError(f"dest_size must be two integers (height, width), got {dest_size!r}") from None
    if not (0 < height <= MAX_DEST_SIDE and 0 < width <= MAX_DEST_SIDE):
        raise InvalidInputError(f"dest_size sides must be in [1, {MAX_DEST_SIDE}], got ({height}, {width})")
    return height, width


def boxes_from_prob(
    prob: np.ndarray,
    *,
    thresh: float = 0.3,
    box_thresh: float = 0.6,
    unclip_ratio: float = 1.5,
    max_candidates: int = 1000,
    min_size: float = 3,
    score_mode: str = "fast",
    box_type: str = "quad",
    use_dilation: bool = False,
    dest_size: Optional[Tuple[int, int]] = None,
) -> list[TextBox]:
    """Forms text boxes from a DBNet probability map.

    Args:
        prob: 2-D map, float32 in [0, 1] or uint8 (0..255 meaning 0..1). C-contiguous or a
            row-strided view (a crop of a padded map), read without a copy.
        thresh: binarization threshold of the map.
        box_thresh: regions whose score is below it are dropped.
        unclip_ratio: r' in the offset distance D' = A' * r' / L'.
        max_candidates: at most this many regions are considered, in raster order.
        min_size: regions whose rectangle's short side is below it are dropped (and boxes
            whose short side after the offset is below ``min_size + 2``).
        score_mode: ``"fast"``, the mean inside the box or polygon; ``"slow"``, the mean
            inside the region's contour.
        box_type: ``"quad"`` (minimum-area rectangles) or ``"poly"`` (offset contours,
            simplified by Douglas-Peucker at 0.002 x perimeter).
        use_dilation: dilate the binary map by a 2x2 square first.
        dest_size: ``(height, width)`` to scale the points to (e.g. the original image),
            clipped to it; ``None`` keeps map pixels.

    Returns:
        The boxes in raster order of their regions.

    Raises:
        InvalidInputTypeError: ``prob`` is not a float32/uint8 array, or an argument has a
            wrong type.
        InvalidInputError: a bad value: NaN, inf or values far outside [0, 1] (beyond
            [-0.25, 1.25]; small overshoot is accepted) in the map, a map that
            is empty, not 2-D or has a non-unit column stride, a parameter out of range:
            ``thresh`` and ``box_thresh`` in [0, 1], ``unclip_ratio`` in [0,
            MAX_UNCLIP_RATIO], ``min_size`` finite and >= 0, ``max_candidates`` in [0,
            2**31 - 1], ``dest_size`` sides in [1, 2**24].
    """
    if not isinstance(prob, np.ndarray):
        raise InvalidInputTypeError(f"prob must be a numpy array, not {type(prob).__name__}")
    if not isinstance(score_mode, str) or score_mode not in SCORE_MODES:
        raise InvalidInputError(f"score_mode must be one of {SCORE_MODES}, not {score_mode!r}")
    if not isinstance(box_type, str) or box_type not in BOX_TYPES:
        raise InvalidInputError(f"box_type must be one of {BOX_TYPES}, not {box_type!r}")
    if not isinstance(use_dilation, (bool, np.bool_)):
        raise InvalidInputTypeError(f"use_dilation must be True or False, not {type(use_dilation).__name__}")
    dest_height, dest_width = _dest_size(dest_size)
    arguments = (
        _number("thresh", thresh, 0.0, 1.0),
        _number("box_thresh", box_thresh, 0.0, 1.0),
        _number("unclip_ratio", unclip_ratio, 0.0, MAX_UNCLIP_RATIO),
        _integer("max_candidates", max_candidates, 0, MAX_CANDIDATES),
        _number("min_size", min_size, 0.0, float(np.finfo(np.float64).max)),
        score_mode,
        box_type,
        bool(use_dilation),
        dest_height,
        dest_width,
    )
    try:
        points, counts, scores = _native.form_boxes(prob, *arguments)
    except RuntimeError as error:  # a C++ failure the checks above did not foresee (Clipper's range)
        raise InvalidInputError(f"box formation failed: {error}") from error
    if box_type == "quad":
        pieces = points.reshape(-1, 4, 2)
    else:
        pieces = np.split(points, np.cumsum(counts)[:-1]) if len(counts) else []
    return [TextBox(piece, score) for piece, score in zip(pieces, scores.tolist())]


def image_boxes(prob: np.ndarray, prepared, **box_options) -> list[TextBox]:
    """The boxes of a frame's probability map, in the pixels of the image ``prepared`` (an
    ``edgedb.preprocess.PreparedFrame``) was made from: the padding cut off, the scale
    undone; ``box_options`` go to ``boxes_from_prob``."""
    ch, cw = prepared.content
    if prob.shape != prepared.frame.shape[:2]:
        raise ModelError(f"the probability map is {prob.shape}, the input was {prepared.frame.shape[:2]}")
    return boxes_from_prob(prob[:ch, :cw], dest_size=prepared.original, **box_options)
