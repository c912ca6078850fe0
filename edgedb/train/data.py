"""Training samples for fine-tuning: where they come from, how they are augmented and
batched.

Sources
    :func:`icdar_samples` (ICDAR 2015 folders, read through :mod:`edgedb.evaluation`),
    :func:`list_samples` (a list file: PaddleOCR's detection label format, or image and
    ICDAR ground-truth paths), :func:`synthetic_samples` (:mod:`edgedb.synthetic`), and
    :func:`load_samples`, which picks the first two from a path. Images are decoded
    once, when the samples are made (a 1280x720 image takes 2.7 MB).

Augmentation (:func:`augment`)
    A random scale, a random rotation and a fixed-size crop that keeps words whole
    where it can, done as one affine warp into the crop; then colour jitter. Polygons
    go through the same transform, are clipped to the crop, and those left mostly
    outside it become don't-care regions.

Batches (:func:`batches`)
    An endless shuffled stream of augmented crops with the DB paper's labels
    (:func:`edgedb.train.labels.make_labels`) at full crop resolution, as NumPy arrays.

Nothing here imports torch: the trainer converts the arrays.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from edgedb._checks import integer_at_least
from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.evaluation import IcdarDataset, load_icdar_gt
from edgedb.preprocess import read_image
from edgedb.train.labels import make_labels

__all__ = [
    "Sample",
    "augment",
    "batches",
    "icdar_samples",
    "list_samples",
    "load_samples",
    "synthetic_samples",
]

#: Transcriptions PaddleOCR's DetLabelEncode treats as don't-care.
PADDLE_DONT_CARE = ("###", "*")
#: A word the crop cuts keeps its labels when at least this fraction of its area is
#: inside the crop; a smaller visible part becomes a don't-care region (it is text,
#: but not a word the model should be made to find).
MIN_VISIBLE_FRACTION = 0.5
#: Colour jitter: brightness and contrast factors in ``1 +- 0.2``, saturation in
#: ``1 +- 0.2``, hue shifted by up to 6 degrees.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE_DEGREES = 0.2, 0.2, 0.2, 6.0


@dataclass(eq=False)
class Sample:
    """One training image and its text regions.

    ``eq=False`` because element-wise numpy comparison makes a generated ``__eq__``
    meaningless.
    """

    #: uint8 ``(H, W, 3)`` BGR image.
    image: np.ndarray
    #: Text regions, float32 ``(N, 2)`` ``x, y`` pixel coordinates each (quads or longer).
    polygons: list[np.ndarray] = field(default_factory=list)
    #: One flag per polygon: true for don't-care regions (``###``).
    ignore: list[bool] = field(default_factory=list)
    #: A name for messages and splits: the image file's stem (``img_12``) for files.
    name: str = ""
    #: The image file the sample was read from, if any.
    path: Path | None = None


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InvalidInputError(f"no image file at {path}")
    return read_image(path)  # the pixel limit and the truncation check of every edgedb read


def icdar_samples(
    images_dir: str | Path, gt_dir: str | Path | None = None, names: Iterable[str] | None = None
) -> list[Sample]:
    """Samples of an ICDAR 2015 style folder (``img_N.jpg`` with ``gt_img_N.txt``).

    Args:
        images_dir: The images.
        gt_dir: Their ground truth; by default found as :class:`edgedb.evaluation.IcdarDataset`
            does (``../gt`` or ``gt`` beside the images).
        names: Only these images, by stem or file name (``img_3`` or ``img_3.jpg``), in
            the folder's order. None takes all.

    Returns:
        One sample per image; ``###`` words are don't-care.

    Raises:
        InvalidInputError: the folders are missing or incomplete (see ``IcdarDataset``),
            a ground-truth line is malformed, an image is unreadable, or a name in
            ``names`` is not in the folder.
    """
    dataset = IcdarDataset(images_dir, gt_dir)
    items = dataset.items
    if names is not None:
        if isinstance(names, str):
            raise InvalidInputTypeError("names must be a list of image names, not one string")
        wanted = set(names)
        items = [item for item in items if item[0] in wanted or item[1].name in wanted]
        found = {item[0] for item in items} | {item[1].name for item in items}
        missing = sorted(wanted - found)
        if missing:
            raise InvalidInputError(f"not in {dataset.images_dir}: {', '.join(missing[:5])}")
    samples = []
    for name, image_path, gt_path in items:
        boxes = load_icdar_gt(gt_path)
        samples.append(
            Sample(
                _read_image(image_path),
                [np.asarray(box.points, np.float32) for box in boxes],
                [box.dont_care for box in boxes],
                name=name,
                path=image_path,
            )
        )
    return samples


def _paddle_regions(text: str, where: str) -> tuple[list[np.ndarray], list[bool]]:
    """Polygons and don't-care flags of one PaddleOCR label: a JSON list of
    ``{"transcription": ..., "points": [[x, y], ...]}``."""
    try:
        regions = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{where}: the label is not valid JSON ({error})") from None
    if not isinstance(regions, list):
        raise InvalidInputError(f"{where}: the label must be a JSON list of regions")
    polygons, ignore = [], []
    for index, region in enumerate(regions):
        try:
            points = np.asarray(region["points"], dtype=np.float32)
        except (TypeError, KeyError, ValueError):
            raise InvalidInputError(
                f"{where}: region {index} needs \"points\": [[x, y], ...] (got {str(region)[:80]})"
            ) from None
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.all(np.isfinite(points)):
            raise InvalidInputError(f"{where}: region {index} must have at least 3 finite [x, y] points")
        polygons.append(points)
        ignore.append(str(region.get("transcription", "")).strip() in PADDLE_DONT_CARE)
    return polygons, ignore


def list_samples(list_file: str | Path, on_unreadable: Callable[[Path, Exception], None] | None = None) -> list[Sample]:
    """Samples listed in a text file, one image a line, paths relative to the file.

    Two line formats (tab-separated):

    - PaddleOCR's detection labels:
      ``image_path<TAB>[{"transcription": "text", "points": [[x1, y1], [x2, y2], ...]}, ...]``;
      transcriptions ``###`` and ``*`` are don't-care, as in PaddleOCR.
    - ``image_path<TAB>gt_path``, ``gt_path`` an ICDAR 2015 ground-truth file.

    Blank lines are skipped; the file is UTF-8 (a byte-order mark is accepted).
    ``on_unreadable(path, error)``, when given, is told of each image that cannot be
    read, which is then left out instead of ending the listing.

    Raises:
        InvalidInputError: the file is missing, a line has no tab or a bad label, or an
            image or ground-truth file is missing or unreadable (messages give the line).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise InvalidInputError(f"no list file at {list_file}")
    base = list_file.parent
    samples = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{list_file}, line {number}"
        if "\t" not in line:
            raise InvalidInputError(f"{where}: expected 'image_path<TAB>label', found no tab")
        image_part, label = (part.strip() for part in line.split("\t", 1))
        if label.startswith("["):
            polygons, ignore = _paddle_regions(label, where)
        else:
            boxes = load_icdar_gt(base / label)
            polygons = [np.asarray(box.points, np.float32) for box in boxes]
            ignore = [box.dont_care for box in boxes]
        image_path = base / image_part
        try:
            image = _read_image(image_path)
        except InvalidInputError as error:
            if on_unreadable is None:
                raise InvalidInputError(f"{where}: {error}") from None
            on_unreadable(image_path, error)
            continue
        samples.append(Sample(image, polygons, ignore, name=image_path.stem, path=image_path))
    return samples


def synthetic_samples(count: int, seed: int = 0, size: tuple[int, int] = (640, 640), **kwargs: Any) -> list[Sample]:
    """``count`` generated images with exact word polygons (:func:`edgedb.synthetic.make_text_image`).

    Per-image seeds come from ``(seed, index)`` as in :func:`edgedb.synthetic.make_dataset`;
    ``kwargs`` go to ``make_text_image`` (``words``, ``document``...).
    """
    from edgedb.synthetic import make_text_image

    count = integer_at_least("count", count, 0)
    samples = []
    for index in range(1, count + 1):
        image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        generated = make_text_image(image_seed, size=size, **kwargs)
        samples.append(
            Sample(generated.image, list(generated.polygons), [False] * len(generated.polygons), name=f"synthetic_{index}")
        )
    return samples


def load_samples(path: str | Path, gt_dir: str | Path | None = None) -> list[Sample]:
    """Samples from an ICDAR 2015 image folder (``gt_dir`` as for :func:`icdar_samples`)
    or from a list file (:func:`list_samples`)."""
    path = Path(path)
    if path.is_dir():
        return icdar_samples(path, gt_dir)
    if path.is_file():
        if gt_dir is not None:
            raise InvalidInputError(f"{path} is a list file; its lines name the ground truth, so drop gt_dir")
        return list_samples(path)
    raise InvalidInputError(f"{path} is neither an image folder nor a list file")


# --------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------


def _check_pair(value: Any, name: str, kind: type) -> tuple:
    try:
        first, second = value
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a pair, got {value!r}") from None
    if kind is int and not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (first, second)):
        raise InvalidInputTypeError(f"{name} must be two integers, got {value!r}")
    return first, second


def _free_positions(intervals: np.ndarray, size: int) -> np.ndarray:
    """Which window borders cut no word, for a window side ``size`` pixels long.

    ``free[p]`` is true when the line between pixels ``p - 1`` and ``p`` (at
    ``p - 0.5``) crosses none of the ``(low, high)`` word extents.
    """
    free = np.ones(size + 1, bool)
    for low, high in intervals:
        start, stop = max(math.floor(low + 0.5) + 1, 0), min(math.ceil(high + 0.5), size + 1)
        if start < stop:
            free[start:stop] = False
    return free


def _crop_start(rng: np.random.Generator, extent: int, crop: int, word: tuple[float, float] | None,
                free: np.ndarray) -> int:
    """First pixel of a ``crop``-pixel window within ``extent`` pixels.

    The window holds ``word`` (its low and high coordinates) if it can, else shows a
    part of it; among such windows, one whose borders cut no word is preferred.
    """
    if extent <= crop:
        return 0  # the image is padded instead
    low, high = 0, extent - crop
    if word is not None:
        if word[1] - word[0] <= crop - 1:  # pixels x0 .. x0 + crop - 1 can hold the word
            low, high = max(low, math.ceil(word[1]) - crop + 1), min(high, math.floor(word[0]))
        else:
            low, high = max(low, math.floor(word[0])), min(high, math.ceil(word[1]) - crop + 1)
        if low > high:
            low, high = 0, extent - crop
    starts = np.arange(low, high + 1)
    clean = starts[free[starts] & free[starts + crop]]
    pool = clean if len(clean) else starts
    return int(pool[rng.integers(len(pool))])


def _clip_to_crop(polygon: np.ndarray, width: int, height: int) -> tuple[list[np.ndarray], float]:
    """Parts of ``polygon`` inside ``[0, width-1] x [0, height-1]`` and the visible area fraction."""
    import shapely

    low, high = polygon.min(axis=0), polygon.max(axis=0)
    if low[0] >= 0 and low[1] >= 0 and high[0] <= width - 1 and high[1] <= height - 1:
        return [polygon], 1.0
    if high[0] < 0 or high[1] < 0 or low[0] > width - 1 or low[1] > height - 1:
        return [], 0.0
    shape = shapely.make_valid(shapely.Polygon(polygon))
    area = shape.area
    if area <= 0:
        return [], 0.0
    clipped = shapely.clip_by_rect(shape, 0, 0, width - 1, height - 1)
    parts = [clipped] if clipped.geom_type == "Polygon" else list(getattr(clipped, "geoms", []))
    kept = [np.asarray(part.exterior.coords[:-1], np.float32) for part in parts
            if part.geom_type == "Polygon" and part.area > 0]
    return kept, float(clipped.area / area)


def _jitter_colours(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue changed a little, through HSV lookup tables."""
    brightness = rng.uniform(1 - _BRIGHTNESS, 1 + _BRIGHTNESS)
    contrast = rng.uniform(1 - _CONTRAST, 1 + _CONTRAST)
    saturation = rng.uniform(1 - _SATURATION, 1 + _SATURATION)
    hue = rng.uniform(-_HUE_DEGREES, _HUE_DEGREES) / 2.0  # OpenCV's 8-bit hue is degrees / 2
    levels = np.arange(256, dtype=np.float32)
    table = np.empty((256, 1, 3), np.uint8)
    table[:, 0, 0] = np.mod(np.round(levels + hue), 180).astype(np.uint8) if hue else levels
    table[:, 0, 1] = np.clip(np.round(levels * saturation), 0, 255)
    table[:, 0, 2] = np.clip(np.round((levels * brightness - 127.5) * contrast + 127.5), 0, 255)
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, table), cv2.COLOR_HSV2BGR)


def augment(
    sample: Sample,
    rng: np.random.Generator,
    *,
    crop: tuple[int, int] = (640, 640),
    scale: tuple[float, float] = (0.5, 2.0),
    max_rotation: float = 10.0,
    jitter: bool = True,
) -> Sample:
    """A random training crop of ``sample``: scaled, rotated, cropped, colour-jittered.

    1. Scale by ``s``, log-uniform in ``scale``. The default ``(0.5, 2.0)`` is centred
       (in log) on 1: :class:`~edgedb.EdgeDetector` runs images at about their own
       size (shorter side at least 736), so the model sees text as small as half and as
       large as twice its size at inference, as often smaller as larger. (PaddleOCR's
       ``[0.5, 3]`` is uniform, mean 1.75, and feeds a crop that is then resized to fit
       640, which scales back down; with a fixed-size crop it would mostly show
       enlarged text and few words per crop.) Shrinking uses area interpolation.
    2. Rotate by up to ``max_rotation`` degrees either way (PaddleOCR's det training
       uses 10) about the image centre, on a canvas large enough to keep every corner.
    3. Crop ``crop = (height, width)``: around a randomly chosen care word, on borders
       that cut no word when there are such (PaddleOCR's EastRandomCropData idea); a
       random window when there is no care word. An image smaller than the crop is
       padded with black at the bottom and right, as the detector pads its input.
    4. Polygons are transformed with the image and clipped to the crop; a word with
       less than ``MIN_VISIBLE_FRACTION`` of its area left inside becomes don't-care,
       one with nothing inside is dropped.
    5. ``jitter``: brightness and contrast ``x 0.8..1.2``, saturation ``x 0.8..1.2``,
       hue ``+-6`` degrees.

    No horizontal flip: mirrored words are not text.

    The result depends only on ``sample`` and the state of ``rng``.

    Raises:
        InvalidInputError: a bad option, or an image that is not uint8 ``(H, W, 3)``.
    """
    crop_h, crop_w = _check_pair(crop, "crop", int)
    if crop_h <= 0 or crop_w <= 0:
        raise InvalidInputError(f"crop must be positive (height, width), got {crop!r}")
    low_scale, high_scale = _check_pair(scale, "scale", float)
    if not 0 < low_scale <= high_scale:
        raise InvalidInputError(f"scale must satisfy 0 < low <= high, got {scale!r}")
    if not max_rotation >= 0:
        raise InvalidInputError(f"max_rotation must be >= 0 degrees, got {max_rotation!r}")
    image = sample.image
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        raise InvalidInputError("sample.image must be a uint8 (H, W, 3) BGR array")
    if len(sample.ignore) != len(sample.polygons):
        raise InvalidInputError(
            f"sample has {len(sample.polygons)} polygons but {len(sample.ignore)} ignore flags"
        )

    factor = math.exp(rng.uniform(math.log(low_scale), math.log(high_scale)))
    angle = rng.uniform(-max_rotation, max_rotation) if max_rotation > 0 else 0.0
    regions = [(np.asarray(p, np.float64).reshape(-1, 2), bool(i)) for p, i in zip(sample.polygons, sample.ignore)]
    regions = [(points, ignored) for points, ignored in regions if len(points) >= 3]  # others are no region
    polygons = [points for points, _ in regions]
    ignore = [ignored for _, ignored in regions]

    image, polygons, factor = _shrink_first(image, polygons, factor)
    matrix, (width, height) = _scale_rotate(image.shape[:2], factor, angle)
    polygons = [p @ matrix[:, :2].T + matrix[:, 2] for p in polygons]
    x0, y0 = _crop_window(rng, polygons, ignore, (width, height), (crop_w, crop_h))
    matrix[:, 2] -= (x0, y0)
    cropped = cv2.warpAffine(
        image, matrix, (crop_w, crop_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )

    kept_polygons: list[np.ndarray] = []
    kept_ignore: list[bool] = []
    for polygon, ignored in zip(polygons, ignore):
        parts, fraction = _clip_to_crop(polygon - (x0, y0), crop_w, crop_h)
        for part in parts:
            kept_polygons.append(part.astype(np.float32))
            kept_ignore.append(ignored or fraction < MIN_VISIBLE_FRACTION)
    if jitter:
        cropped = _jitter_colours(cropped, rng)
    return Sample(cropped, kept_polygons, kept_ignore, name=sample.name)


def _shrink_first(image: np.ndarray, polygons: list[np.ndarray], factor: float):
    """Shrinking goes through cv2.resize with area interpolation (a warp would alias);
    pixel centres move as resize moves them. Returns the image, polygons and the
    factor left for the warp."""
    if factor >= 1.0:
        return image, polygons, factor
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    ratio = np.array([size[0] / width, size[1] / height])
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), [(p + 0.5) * ratio - 0.5 for p in polygons], 1.0


def _scale_rotate(shape: tuple[int, int], factor: float, angle: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Affine matrix scaling and rotating an image of ``shape`` about its centre, shifted
    so all of it lands at ``x, y >= 0``, and the ``(width, height)`` it then covers."""
    height, width = shape
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), angle, factor)
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    matrix[:, 2] -= moved.min(axis=0)
    extent = np.ceil(moved.max(axis=0) - moved.min(axis=0)).astype(int) + 1
    return matrix, (int(extent[0]), int(extent[1]))


def _crop_window(rng: np.random.Generator, polygons: list[np.ndarray], ignore: list[bool],
                 extent: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """Top-left ``(x0, y0)`` of the crop in the transformed image: around a random care
    word, with borders that cut no word where possible."""
    width, height = extent
    boxes = np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()] for p in polygons]).reshape(-1, 4)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - 1)  # ground truth may reach outside the image
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - 1)
    visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    care = [index for index, ignored in enumerate(ignore) if not ignored and visible[index]]
    word = boxes[care[rng.integers(len(care))]] if care else None
    x0 = _crop_start(rng, width, crop[0], None if word is None else (word[0], word[2]),
                     _free_positions(boxes[:, [0, 2]], width))
    y0 = _crop_start(rng, height, crop[1], None if word is None else (word[1], word[3]),
                     _free_positions(boxes[:, [1, 3]], height))
    return x0, y0


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------

LABEL_KEYS = ("shrink", "shrink_mask", "threshold", "threshold_mask")


def _training_item(sample: Sample, seed: int, crop: tuple[int, int], options: dict) -> dict:
    crop_sample = augment(sample, np.random.default_rng(seed), crop=crop, **options)
    labels = make_labels(crop, crop_sample.polygons, crop_sample.ignore)
    return {"image": crop_sample.image, **{key: getattr(labels, key) for key in LABEL_KEYS}}


def batches(
    samples: Sequence[Sample],
    batch_size: int,
    rng: np.random.Generator,
    crop: tuple[int, int] = (640, 640),
    *,
    workers: int = 0,
    **augment_options: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """An endless stream of training batches: augmented crops and their labels.

    Samples are visited in a new random order every pass. Each batch is a dict of
    NumPy arrays: ``image`` uint8 ``(B, H, W, 3)`` BGR and ``shrink``, ``shrink_mask``,
    ``threshold``, ``threshold_mask`` float32 ``(B, H, W)``, at the crop's full
    resolution (``crop = (H, W)``).

    Args:
        samples: The training samples.
        batch_size: Crops per batch.
        rng: Drives everything; the same state gives the same stream, whatever
            ``workers`` is (each crop gets its own seed, drawn in order).
        crop: ``(height, width)`` of the crops.
        workers: Threads that augment and label a batch's crops in parallel (OpenCV
            and NumPy release the GIL); 0 does it in the caller's thread.
        **augment_options: ``scale``, ``max_rotation``, ``jitter`` for :func:`augment`.

    Raises:
        InvalidInputError: no samples, or a batch size or worker count below what works.
    """
    samples = list(samples)
    if not samples:
        raise InvalidInputError("no training samples")
    batch_size = integer_at_least("batch_size", batch_size, 1)
    workers = integer_at_least("workers", workers, 0)
    crop = tuple(int(side) for side in _check_pair(crop, "crop", int))
    return _stream(samples, batch_size, rng, crop, workers, augment_options)


def _stream(samples: list[Sample], batch_size: int, rng: np.random.Generator, crop: tuple[int, int],
            workers: int, options: dict) -> Iterator[dict[str, np.ndarray]]:
    pool = ThreadPoolExecutor(workers, thread_name_prefix="edgedb-batches") if workers else None
    try:
        order: list[int] = []
        while True:
            jobs = []
            for _ in range(batch_size):
                if not order:
                    order = rng.permutation(len(samples)).tolist()
                jobs.append((samples[order.pop()], int(rng.integers(2**63))))
            if pool is None:
                items = [_training_item(sample, seed, crop, options) for sample, seed in jobs]
            else:
                items = list(pool.map(lambda job: _training_item(job[0], job[1], crop, options), jobs))
            yield {key: np.stack([item[key] for item in items]) for key in ("image",) + LABEL_KEYS}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
