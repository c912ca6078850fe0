"""ICDAR 2015 text-localisation evaluation (Robust Reading Challenge 4, task 4.1).

The protocol, as implemented here (written from the task description, not copied):

Ground truth
    One text file per image, one quadrilateral a line:
    ``x1,y1,x2,y2,x3,y3,x4,y4,transcription``. Files are UTF-8 and may start with a
    byte-order mark; lines may end in CRLF. The transcription is everything after the
    eighth comma (it may contain commas); a transcription wrapped in double quotes is
    unquoted (``\\"`` and ``\\\\`` unescaped). Transcription ``###`` marks a
    *don't-care* region (illegible text).

Detections
    Polygons of K >= 3 points, ``x, y`` in pixels of the original image: edgedb
    :class:`~edgedb.boxes.TextBox` objects (their ``.points``), anything else with a
    ``.points`` attribute (e.g. :class:`GroundTruthBox`), numpy arrays or lists of points.

Per image
    1. A detection is *ignored* (neither true nor false positive) when its
       intersection with some don't-care GT polygon covers more than 50% (strictly) of
       the detection's own area. A zero-area detection is never ignored.
    2. Matching is one-to-one and greedy in the official order: for each GT polygon in
       file order, for each detection in the given order, the pair matches when both
       are still unmatched, neither is don't-care / ignored, and IoU > 0.5 (strictly).
       The first qualifying detection wins, not the best one.
    3. Counts: ``gt_care`` = GT minus don't-care, ``det_care`` = detections minus ignored,
       ``matched`` = number of pairs.
    4. ``recall = matched / gt_care``, ``precision = matched / det_care``,
       ``hmean = 2PR / (P + R)``. Zero denominators follow the official per-image rule:
       no care GT -> recall 1 and precision 1 if there is no care detection either,
       else 0; care GT but no care detection -> precision 0; hmean is 0 when P + R = 0.

Dataset
    Counts are summed over all images and P/R/H are computed once from the sums
    (micro average), as the official script does. The per-image zero-denominator rule
    above is applied to the sums as well, so a dataset behaves like one big image. This
    differs from the official script only when the whole dataset has no care GT
    (the official script then reports P = R = H = 0).

Geometry uses shapely 2. Polygons are made valid with ``shapely.make_valid`` (a
self-intersecting "bow-tie" keeps both lobes); only the polygonal part is kept.
Polygons of zero area match nothing (IoU 0) but still count: a zero-area care GT lowers
recall, a zero-area detection is a false positive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgedb._extras import import_optional
from edgedb.errors import InvalidInputError, InvalidInputTypeError

__all__ = [
    "DONT_CARE",
    "IOU_THRESHOLD",
    "IGNORE_THRESHOLD",
    "IMAGE_EXTENSIONS",
    "EvalResult",
    "GroundTruthBox",
    "IcdarDataset",
    "ImageResult",
    "evaluate",
    "evaluate_image",
    "load_icdar_gt",
    "parse_icdar_gt",
]

#: Transcription that marks a don't-care GT region.
DONT_CARE = "###"
#: A detection matches a GT polygon when IoU is strictly greater than this.
IOU_THRESHOLD = 0.5
#: A detection is ignored when more than this fraction of its area lies in one
#: don't-care region.
IGNORE_THRESHOLD = 0.5
#: Image file extensions :class:`IcdarDataset` lists (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


def _scores(matched: int, gt_care: int, det_care: int) -> tuple[float, float, float]:
    """Precision, recall, hmean with the official zero-denominator rule."""
    if gt_care == 0:
        recall = 1.0
        precision = 0.0 if det_care > 0 else 1.0
    else:
        recall = matched / gt_care
        precision = 0.0 if det_care == 0 else matched / det_care
    total = precision + recall
    hmean = 0.0 if total == 0 else 2.0 * precision * recall / total
    return precision, recall, hmean


@dataclass
class ImageResult:
    """Counts for one image; precision/recall/hmean are derived from them.

    ``matches`` lists the matched ``(gt_index, detection_index)`` pairs (indices into the
    inputs as given) and ``ignored`` the indices of ignored detections; both are for
    inspection and excluded from comparisons.
    """

    name: str
    gt_care: int
    det_care: int
    matched: int
    ignored_detections: int
    matches: list[tuple[int, int]] = field(default_factory=list, repr=False, compare=False)
    ignored: list[int] = field(default_factory=list, repr=False, compare=False)

    @property
    def precision(self) -> float:
        return _scores(self.matched, self.gt_care, self.det_care)[0]

    @property
    def recall(self) -> float:
        return _scores(self.matched, self.gt_care, self.det_care)[1]

    @property
    def hmean(self) -> float:
        return _scores(self.matched, self.gt_care, self.det_care)[2]

    def to_dict(self) -> dict:
        """JSON-ready form (counts, scores and matched pairs)."""
        return {"name": self.name, **_summary(self), "matches": [list(pair) for pair in self.matches]}


def _summary(result) -> dict:
    """Scores and counts shared by the per-image and dataset-level results."""
    return {
        "precision": result.precision,
        "recall": result.recall,
        "hmean": result.hmean,
        "gt_care": result.gt_care,
        "det_care": result.det_care,
        "matched": result.matched,
        "ignored_detections": result.ignored_detections,
    }


@dataclass
class EvalResult:
    """Dataset-level (micro-averaged) result plus the per-image results."""

    precision: float
    recall: float
    hmean: float
    gt_care: int
    det_care: int
    matched: int
    images: list[ImageResult] = field(default_factory=list)

    @property
    def ignored_detections(self) -> int:
        return sum(image.ignored_detections for image in self.images)

    @classmethod
    def from_images(cls, images: Sequence[ImageResult]) -> "EvalResult":
        """Sum the counts of ``images`` and score the sums."""
        images = list(images)
        gt_care = sum(image.gt_care for image in images)
        det_care = sum(image.det_care for image in images)
        matched = sum(image.matched for image in images)
        precision, recall, hmean = _scores(matched, gt_care, det_care)
        return cls(precision, recall, hmean, gt_care, det_care, matched, images)

    def to_dict(self) -> dict:
        """JSON-ready form; ``images`` holds each image's :meth:`ImageResult.to_dict`."""
        return {**_summary(self), "images": [image.to_dict() for image in self.images]}

    def __str__(self) -> str:
        return (
            f"precision {self.precision:.4f}  recall {self.recall:.4f}  hmean {self.hmean:.4f}"
            f"  (matched {self.matched}, care GT {self.gt_care}, care detections"
            f" {self.det_care}, {len(self.images)} images)"
        )


# --------------------------------------------------------------------------
# Ground truth files
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GroundTruthBox:
    """One GT quadrilateral: float32 ``(4, 2)`` points, its transcription, don't-care flag.

    ``eq=False`` because element-wise numpy comparison makes a generated ``__eq__``
    meaningless.
    """

    points: np.ndarray
    text: str
    dont_care: bool


_NUMBER = r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_GT_LINE = re.compile(r"^" + ",".join([_NUMBER] * 8) + r",(.*)$", re.DOTALL)
_QUOTED = re.compile(r'^\s*"(.*)"\s*$', re.DOTALL)


def parse_icdar_gt(text: str) -> list[GroundTruthBox]:
    """Parse the contents of one ICDAR 2015 GT file.

    Blank lines are skipped; a leading BOM and CR line endings are accepted. Coordinates
    may be integers or decimals.

    Raises:
        InvalidInputTypeError: ``text`` is not a string.
        InvalidInputError: A line is not ``8 numbers,transcription`` (the message gives
            the line number and the line).
    """
    if isinstance(text, (bytes, bytearray)):
        raise InvalidInputTypeError("text must be a str; decode the file first (or use load_icdar_gt)")
    if not isinstance(text, str):
        raise InvalidInputTypeError(f"text must be a str, not {type(text).__name__}")
    text = text.lstrip("\ufeff")
    boxes: list[GroundTruthBox] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.replace("\r", "")
        if not line.strip():
            continue
        match = _GT_LINE.match(line)
        if match is None:
            raise InvalidInputError(
                f"line {number} is not an ICDAR 2015 GT line "
                f"'x1,y1,x2,y2,x3,y3,x4,y4,transcription': {line!r}"
            )
        points = np.array([float(v) for v in match.groups()[:8]], dtype=np.float32).reshape(4, 2)
        if not np.all(np.isfinite(points)):
            raise InvalidInputError(f"line {number} has a non-finite coordinate: {line!r}")
        transcription = match.group(9)
        quoted = _QUOTED.match(transcription)
        if quoted is not None:
            transcription = quoted.group(1).replace("\\\\", "\\").replace('\\"', '"')
        boxes.append(GroundTruthBox(points, transcription, transcription.strip() == DONT_CARE))
    return boxes


def load_icdar_gt(path: str | Path) -> list[GroundTruthBox]:
    """Read and parse one GT file (UTF-8, BOM optional).

    Raises:
        InvalidInputError: The file does not exist, is not UTF-8, or has a bad line
            (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"ground-truth file {path} does not exist")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"ground-truth file {path} is not UTF-8: {error}") from None
    try:
        return parse_icdar_gt(content)
    except InvalidInputError as error:
        raise InvalidInputError(f"{path}: {error}") from None


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------


def _shapely():
    return import_optional("shapely", "evaluation", "pip install 'shapely>=2'", name="shapely >= 2")


def _as_points(item: Any, what: str) -> np.ndarray:
    """float64 ``(K, 2)`` points of a TextBox / GroundTruthBox / array / list of points."""
    points = getattr(item, "points", item)
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputTypeError(
            f"{what} must be a polygon: a TextBox, an array of shape (K, 2) or a list of"
            f" [x, y] points; got {type(item).__name__}"
        ) from None
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] < 3:
        raise InvalidInputError(f"{what} must have shape (K, 2) with K >= 3, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError(f"{what} has a non-finite coordinate")
    return array


def _polygonal_parts(geometry) -> list:
    if geometry.is_empty:
        return []
    kind = geometry.geom_type
    if kind == "Polygon":
        return [geometry]
    if kind in ("MultiPolygon", "GeometryCollection"):
        return [part for sub in geometry.geoms for part in _polygonal_parts(sub)]
    return []


def _geometry(points: np.ndarray):
    """A valid polygonal shapely geometry (possibly empty) for ``points``."""
    shapely = _shapely()
    polygon = shapely.Polygon(points)
    if polygon.is_valid:
        return polygon
    parts = _polygonal_parts(shapely.make_valid(polygon))
    if not parts:
        return shapely.Polygon()
    if len(parts) == 1:
        return parts[0]
    return shapely.unary_union(parts)


class _Polygons:
    """Geometries, areas and bounding boxes of a list of polygons."""

    def __init__(self, point_lists: list[np.ndarray]):
        shapely = _shapely()
        self.geoms = np.array([_geometry(p) for p in point_lists], dtype=object)
        self.areas = shapely.area(self.geoms) if len(point_lists) else np.zeros(0)
        if len(point_lists):
            self.bounds = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
                                    for p in point_lists])
        else:
            self.bounds = np.zeros((0, 4))

    def __len__(self) -> int:
        return len(self.geoms)


def _intersection_areas(a: _Polygons, b: _Polygons) -> np.ndarray:
    """``(len(a), len(b))`` intersection areas; only bounding-box-overlapping pairs are computed."""
    out = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return out
    ab, bb = a.bounds[:, None, :], b.bounds[None, :, :]
    overlap = (
        (np.minimum(ab[..., 2], bb[..., 2]) > np.maximum(ab[..., 0], bb[..., 0]))
        & (np.minimum(ab[..., 3], bb[..., 3]) > np.maximum(ab[..., 1], bb[..., 1]))
        & (a.areas[:, None] > 0)
        & (b.areas[None, :] > 0)
    )
    rows, cols = np.nonzero(overlap)
    if rows.size:
        shapely = _shapely()
        out[rows, cols] = shapely.area(shapely.intersection(a.geoms[rows], b.geoms[cols]))
    return out


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def _ground_truth(ground_truth: Any) -> tuple[list[np.ndarray], list[bool]]:
    if isinstance(ground_truth, (str, bytes, Path)):
        raise InvalidInputTypeError(
            "ground_truth must be a list of GroundTruthBox (use load_icdar_gt(path) or"
            " parse_icdar_gt(text) first)"
        )
    if ground_truth is None:
        return [], []
    points, dont_care = [], []
    for index, box in enumerate(ground_truth):
        points.append(_as_points(box, f"ground_truth[{index}]"))
        dont_care.append(bool(getattr(box, "dont_care", False)))
    return points, dont_care


def _detections(detections: Any) -> list[np.ndarray]:
    if detections is None:
        return []
    if isinstance(detections, np.ndarray) and detections.ndim == 2:
        raise InvalidInputError(
            f"detections must be a list of polygons (or an (N, K, 2) array), got an array of"
            f" shape {detections.shape}; wrap a single polygon in a list"
        )
    return [_as_points(box, f"detections[{index}]") for index, box in enumerate(detections)]


def evaluate_image(detections: Iterable[Any], ground_truth: Iterable[Any], name: str = "") -> ImageResult:
    """Evaluate the detections of one image against its ground truth.

    Args:
        detections: Polygons in the image's pixel coordinates, in the detector's order:
            ``TextBox`` objects, ``(K, 2)`` arrays, lists of ``[x, y]`` points, or an
            ``(N, K, 2)`` array. The order matters only for the greedy matching.
        ground_truth: :class:`GroundTruthBox` objects (anything with ``.points`` and
            ``.dont_care``; plain polygons count as care regions), in file order.
        name: Image name stored in the result.

    Returns:
        The counts; see the module docstring for the protocol (ignored detections, then
        greedy one-to-one matching GT-major, IoU > 0.5).
    """
    _shapely()  # fail early with a clear message when shapely is missing
    gt_points, dont_care = _ground_truth(ground_truth)
    det_points = _detections(detections)
    gts, dets = _Polygons(gt_points), _Polygons(det_points)
    inter = _intersection_areas(gts, dets)

    # 1. Detections lying mostly (> 50% of their own area) in one don't-care region.
    dont_care_rows = np.flatnonzero(np.asarray(dont_care, dtype=bool))
    ignored = np.zeros(len(dets), dtype=bool)
    if dont_care_rows.size and len(dets):
        with np.errstate(divide="ignore", invalid="ignore"):
            covered = inter[dont_care_rows] / dets.areas[None, :]
        covered[:, dets.areas <= 0] = 0.0
        ignored = (covered > IGNORE_THRESHOLD).any(axis=0)

    # 2. IoU and greedy matching: GT in order, then detections in order.
    union = gts.areas[:, None] + dets.areas[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    # A GT polygon leaves the inner loop as soon as it is matched, so only detections
    # need a "taken" flag; ignored detections start out taken.
    det_taken = ignored.copy()
    matches: list[tuple[int, int]] = []
    for g in range(len(gts)):
        if dont_care[g]:
            continue
        for d in range(len(dets)):
            if not det_taken[d] and iou[g, d] > IOU_THRESHOLD:
                det_taken[d] = True
                matches.append((g, d))
                break

    n_ignored = int(ignored.sum())
    return ImageResult(
        name=str(name),
        gt_care=len(gts) - int(dont_care_rows.size),
        det_care=len(dets) - n_ignored,
        matched=len(matches),
        ignored_detections=n_ignored,
        matches=matches,
        ignored=[int(i) for i in np.flatnonzero(ignored)],
    )


def evaluate(results: Iterable[Any] | Mapping[str, Any]) -> EvalResult:
    """Evaluate a dataset; counts are summed over images (micro average).

    Args:
        results: Either a mapping ``name -> (detections, ground_truth)``, or an iterable
            of ``(detections, ground_truth)`` pairs (named ``"0"``, ``"1"``...) or of
            ``(name, detections, ground_truth)`` triples with a ``str`` name. ``detections`` and
            ``ground_truth`` are as for :func:`evaluate_image`.

    Returns:
        The dataset result with every image's :class:`ImageResult` in ``images``.
    """
    if isinstance(results, Mapping):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in results.items())
    else:
        items = ((None, v) for v in results)
    images: list[ImageResult] = []
    for index, (name, item) in enumerate(items):
        if not isinstance(item, (tuple, list)):
            raise InvalidInputTypeError(
                f"results item {index} must be a (detections, ground_truth) pair, got"
                f" {type(item).__name__}"
            )
        if name is None and len(item) == 3 and isinstance(item[0], str):
            name, dets, gt = item
        elif len(item) == 2:
            dets, gt = item
        else:
            raise InvalidInputError(
                f"results item {index} must be (detections, ground_truth)"
                f"{'' if name is not None else ' or (name: str, detections, ground_truth)'},"
                f" got {len(item)} elements"
            )
        images.append(evaluate_image(dets, gt, name=str(index) if name is None else str(name)))
    return EvalResult.from_images(images)


# --------------------------------------------------------------------------
# Dataset folders
# --------------------------------------------------------------------------


def gt_path(gt_dir: str | Path, image: str | Path) -> Path:
    """Where an image's ground truth lives in ``gt_dir`` (ICDAR 2015 naming: img_N.jpg
    pairs with gt_img_N.txt)."""
    return Path(gt_dir) / f"gt_{Path(image).stem}.txt"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class IcdarDataset:
    """Images of an ICDAR 2015 style folder paired with their ground truth.

    ``images_dir/img_N.jpg`` pairs with ``gt_dir/gt_img_N.txt`` (the GT file is named
    ``gt_`` + the image's stem + ``.txt``). Images (``.jpg .jpeg .png .bmp``, any case)
    are listed in natural order, so ``img_2`` comes before ``img_10``.

    When ``gt_dir`` is None it is ``images_dir/../gt`` (the ICDAR layout ``images/`` +
    ``gt/`` side by side) if that directory exists, else ``images_dir/gt`` (the layout
    :func:`edgedb.synthetic.make_dataset` writes). If both exist, the one holding the
    first image's GT file is used (``../gt`` when both do).

    Every image must have its GT file; this is checked on construction. GT files are
    parsed while iterating.

    Iterating yields ``(name, image_path, gt_boxes)`` with ``name`` the image stem.

    Raises:
        InvalidInputError: ``images_dir`` (or a given ``gt_dir``) is not a directory,
            holds no images, no GT directory is found, or an image has no GT file.
    """

    def __init__(self, images_dir: str | Path, gt_dir: str | Path | None = None):
        images_dir = Path(images_dir)
        if not images_dir.is_dir():
            raise InvalidInputError(f"image folder {images_dir} does not exist or is not a directory")
        images = sorted(
            (p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: _natural_key(p.name),
        )
        if not images:
            raise InvalidInputError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}"
            )
        if gt_dir is None:
            gt_dir = self._find_gt_dir(images_dir, images[0])
        else:
            gt_dir = Path(gt_dir)
            if not gt_dir.is_dir():
                raise InvalidInputError(f"ground-truth folder {gt_dir} does not exist or is not a directory")
        self.images_dir = images_dir
        self.gt_dir = gt_dir
        self.items: list[tuple[str, Path, Path]] = []
        for image in images:
            truth = gt_path(gt_dir, image)
            if not truth.is_file():
                raise InvalidInputError(
                    f"image {image} has no ground-truth file: expected {truth}"
                    f" (ICDAR 2015 naming: img_N.jpg pairs with gt_img_N.txt)"
                )
            self.items.append((image.stem, image, truth))

    @staticmethod
    def _find_gt_dir(images_dir: Path, first_image: Path) -> Path:
        candidates = [images_dir.parent / "gt", images_dir / "gt"]
        existing = [c for c in candidates if c.is_dir()]
        if not existing:
            raise InvalidInputError(
                f"no ground-truth folder for {images_dir}: looked for {candidates[0]} and"
                f" {candidates[1]}; pass gt_dir"
            )
        for candidate in existing:
            if gt_path(candidate, first_image).is_file():
                return candidate
        return existing[0]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[str, Path, list[GroundTruthBox]]]:
        for name, image_path, truth in self.items:
            yield name, image_path, load_icdar_gt(truth)

    def __repr__(self) -> str:
        return f"IcdarDataset({str(self.images_dir)!r}, gt_dir={str(self.gt_dir)!r}, {len(self)} images)"
