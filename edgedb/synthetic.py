"""Synthetic text images with exact word-level ground truth.

Used by the tests (a detector can be checked against known boxes without
shipping any data) and as a cheap source of calibration images. Everything is
drawn with numpy + OpenCV's built-in fonts (cv2.putText), so no fonts, files or
network access are needed and a given seed always yields the same image.
(OpenCV 5 draws the FONT_HERSHEY_* faces with its embedded outline fonts
rather than stroke fonts, and reports different text metrics than OpenCV 4;
sizes are therefore measured on rendered glyphs, never taken from metrics.)

Ground truth is one quadrilateral per word, float32 ``(4, 2)`` in ``x, y``
pixel coordinates, ordered clockwise from the word's top-left corner (image
coordinates, y pointing down), which is what ICDAR 2015 style evaluation
expects.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgedb.errors import InvalidInputError, InvalidInputTypeError

__all__ = [
    "SyntheticImage",
    "make_dataset",
    "make_text_image",
    "order_quad_clockwise",
]

#: Reference size the pixel ranges below are tuned for (height, width).
_REF_SIZE = (480, 640)

#: Fonts used for scattered words, with sampling weights. Script faces are
#: rarer because they are the least "print-like" and harder to read when small.
_WORD_FONTS: tuple[tuple[int, float], ...] = (
    (cv2.FONT_HERSHEY_SIMPLEX, 3.0),
    (cv2.FONT_HERSHEY_DUPLEX, 2.0),
    (cv2.FONT_HERSHEY_COMPLEX, 2.0),
    (cv2.FONT_HERSHEY_TRIPLEX, 2.0),
    (cv2.FONT_HERSHEY_PLAIN, 1.0),
    (cv2.FONT_HERSHEY_COMPLEX_SMALL, 1.0),
    (cv2.FONT_HERSHEY_SCRIPT_SIMPLEX, 0.5),
)
#: Fonts for document pages: plain book-like faces only.
_DOC_FONTS: tuple[int, ...] = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)

#: A pixel belongs to a glyph when its anti-aliased coverage is at least this.
_GLYPH_THRESHOLD = 64

_MARGIN = 0.06  # border kept free of text when perspective is on (fraction)
_JITTER = 0.03  # maximum perspective corner displacement (fraction)
_WORD_TRIES = 6  # different words tried per word slot
_POSITION_TRIES = 12  # positions tried per word

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiouy"


@dataclass(frozen=True, eq=False)
class SyntheticImage:
    """One generated sample.

    ``eq=False`` because element-wise numpy comparison makes a generated
    ``__eq__`` meaningless; compare fields explicitly instead.
    """

    #: uint8 ``(H, W, 3)`` BGR image.
    image: np.ndarray
    #: One float32 ``(4, 2)`` quad per word, clockwise from top-left.
    polygons: list[np.ndarray]
    #: Transcription of each word, aligned with ``polygons``.
    texts: list[str]


# --------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------


def order_quad_clockwise(points: Any) -> np.ndarray:
    """Return 4 points as float32 ``(4, 2)``, clockwise, top-left first.

    Clockwise is meant on screen (image coordinates, y down): TL, TR, BR, BL.
    Points are sorted by angle around their centroid (valid for convex
    quads), then rotated so the list starts at the upper of the two leftmost
    points. Unlike "smallest x + y", that choice stays on the reading-order
    top-left corner for any wide box tilted by less than 45 degrees.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if pts.shape != (4, 2):
        raise InvalidInputError(f"expected 4 points, got array of shape {np.shape(points)}")
    if not np.all(np.isfinite(pts)):
        raise InvalidInputError("quad points must be finite")
    centre = pts.mean(axis=0)
    angles = np.arctan2(pts[:, 1] - centre[1], pts[:, 0] - centre[0])
    # Increasing atan2 angle is clockwise on screen because y points down.
    pts = pts[np.argsort(angles, kind="stable")]
    leftmost = np.lexsort((pts[:, 1], pts[:, 0]))[:2]
    start = min(leftmost, key=lambda i: (pts[i, 1], pts[i, 0]))
    return np.ascontiguousarray(np.roll(pts, -int(start), axis=0), dtype=np.float32)


def make_text_image(
    seed: int,
    *,
    size: tuple[int, int] = _REF_SIZE,
    words: tuple[int, int] = (4, 14),
    rotate: bool = True,
    perspective: bool = True,
    document: bool = False,
) -> SyntheticImage:
    """Generate one image with text and its word-level ground truth.

    Args:
        seed: Non-negative seed; the same arguments always give the same image.
        size: ``(height, width)`` of the output image.
        words: Inclusive ``(min, max)`` number of scattered words to attempt.
            A word is dropped when no free, high-contrast spot is found within
            a bounded number of tries, so crowded settings may yield fewer.
            Ignored when ``document`` is true (a page is filled instead).
        rotate: Rotate each scattered word by up to +-30 degrees.
        perspective: Apply a mild global perspective warp after drawing.
        document: Render a page of small, horizontal, dense lines of text on
            white-ish paper (60-150 words at the default size) instead of
            scattered words.

    Returns:
        A :class:`SyntheticImage`; every polygon lies inside the image.

    Raises:
        InvalidInputError: (a ValueError) on a negative seed, a non-positive
            size or an invalid ``words`` range.
        InvalidInputTypeError: (a TypeError) on non-integer arguments.
    """
    _check_seed(seed)
    height, width = _check_size(size)
    lo, hi = _check_words(words)
    rng = np.random.default_rng(seed)
    # Perspective can move content by up to _JITTER of the size; keeping text
    # a bit further from the border guarantees it stays inside after warping.
    margin = (
        (math.ceil(_MARGIN * height) + 2, math.ceil(_MARGIN * width) + 2)
        if perspective
        else (2, 2)
    )
    if document:
        image, polys, texts = _make_document(rng, height, width, margin)
    else:
        image, polys, texts = _make_scene(
            rng, height, width, margin, int(rng.integers(lo, hi + 1)), rotate
        )
    if perspective:
        image, polys = _warp_perspective(rng, image, polys)
    image = _camera_degrade(rng, image)
    polygons = [order_quad_clockwise(_clip(p, width, height)) for p in polys]
    return SyntheticImage(image=image, polygons=polygons, texts=texts)


def make_dataset(
    out_dir: str | Path,
    count: int,
    *,
    seed: int = 0,
    ext: str = ".jpg",
    **kwargs: Any,
) -> list[Path]:
    """Write ``count`` images plus ICDAR 2015 style ground truth.

    Layout (1-based like ICDAR 2015)::

        out_dir/img_1.jpg ...            images
        out_dir/gt/gt_img_1.txt ...      "x1,y1,x2,y2,x3,y3,x4,y4,text" lines

    Coordinates are rounded to integers; files are UTF-8 without BOM.
    Per-image seeds are derived from ``(seed, index)`` so datasets built with
    different ``seed`` values do not share images.

    Args:
        out_dir: Output directory (created if missing).
        count: Number of images (0 writes nothing but the directories).
        seed: Dataset seed.
        ext: Image extension, ``".jpg"`` or ``".png"``.
        **kwargs: Forwarded to :func:`make_text_image` (``size``, ``words``...).

    Returns:
        The image paths, in index order.

    Raises:
        InvalidInputError: (a ValueError) on ``count < 0``, an unsupported
            ``ext`` or invalid forwarded arguments; checked before writing.
        InvalidInputTypeError: (a TypeError) on a non-integer ``count``.
        OSError: If an image cannot be written.
    """
    if not _is_int(count):
        raise InvalidInputTypeError(f"count must be an integer, got {count!r}")
    if count < 0:
        raise InvalidInputError(f"count must be >= 0, got {count}")
    _check_seed(seed)
    if not isinstance(ext, str):
        raise InvalidInputTypeError(f"ext must be a string such as '.jpg', got {ext!r}")
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in (".jpg", ".jpeg", ".png"):
        raise InvalidInputError(f"ext must be .jpg or .png, got {ext!r}")
    # Validate forwarded kwargs before touching the file system.
    _check_size(kwargs.get("size", _REF_SIZE))
    _check_words(kwargs.get("words", (4, 14)))

    out = Path(out_dir)
    gt_dir = out / "gt"
    gt_dir.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext.lower() != ".png" else []
    paths: list[Path] = []
    for index in range(1, int(count) + 1):
        image_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        sample = make_text_image(image_seed, **kwargs)
        path = out / f"img_{index}{ext}"
        if not cv2.imwrite(str(path), sample.image, params):
            raise OSError(f"failed to write {path}")
        lines = []
        for quad, text in zip(sample.polygons, sample.texts):
            coords = ",".join(str(int(round(float(v)))) for v in quad.reshape(-1))
            lines.append(f"{coords},{text}\n")
        (gt_dir / f"gt_img_{index}.txt").write_text("".join(lines), encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_seed(seed: Any) -> None:
    if not _is_int(seed):
        raise InvalidInputTypeError(f"seed must be an integer, got {seed!r}")
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}")


def _int_pair(value: Any, name: str, form: str) -> tuple[int, int]:
    """``value`` unpacked as two integers; errors name the argument and its ``form``."""
    try:
        first, second = value
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be {form}, got {value!r}") from None
    if not (_is_int(first) and _is_int(second)):
        raise InvalidInputTypeError(f"{name} must be two integers, got {value!r}")
    return int(first), int(second)


def _check_size(size: Any) -> tuple[int, int]:
    height, width = _int_pair(size, "size", "(height, width)")
    if height <= 0 or width <= 0:
        raise InvalidInputError(f"size must be positive (height, width), got {size!r}")
    return height, width


def _check_words(words: Any) -> tuple[int, int]:
    lo, hi = _int_pair(words, "words", "(min, max)")
    if lo < 0 or hi < lo:
        raise InvalidInputError(f"words must satisfy 0 <= min <= max, got {words!r}")
    return lo, hi


# --------------------------------------------------------------------------
# Text rendering
# --------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _x_height_per_scale(font: int) -> float:
    """Rendered height of 'x' per unit of fontScale.

    Measured rather than taken from getTextSize because the reported metrics
    differ between OpenCV versions, while the drawn glyphs do not.
    """
    scale = 8.0
    canvas = np.zeros((400, 400), np.uint8)
    cv2.putText(canvas, "x", (50, 300), font, scale, 255, 1, cv2.LINE_8)
    rows = np.flatnonzero(canvas.max(axis=1))
    return float(rows[-1] - rows[0] + 1) / scale


def _random_word(rng: np.random.Generator, min_len: int = 2, max_len: int = 10) -> str:
    """A random ASCII token: pronounceable word, number or mixed code."""
    length = int(rng.integers(min_len, max_len + 1))
    kind = rng.choice(
        ["lower", "title", "upper", "number", "code"], p=[0.35, 0.25, 0.12, 0.14, 0.14]
    )
    if kind == "number":
        digits = "".join(rng.choice(list(string.digits), length))
        if length >= 4 and rng.random() < 0.35:
            # Prices, times, versions: a separator inside the digits.
            cut = int(rng.integers(1, length - 1))
            digits = digits[:cut] + str(rng.choice(list(".:-/"))) + digits[cut + 1 :]
        return digits
    if kind == "code":
        pool = list(string.ascii_letters + string.digits)
        return "".join(rng.choice(pool, length))
    # Alternating consonant/vowel looks like real words to a text detector.
    start_vowel = rng.random() < 0.3
    chars = [
        str(rng.choice(list(_VOWELS if (i % 2 == 0) == start_vowel else _CONSONANTS)))
        for i in range(length)
    ]
    word = "".join(chars)
    if kind == "title":
        word = word.capitalize()
    elif kind == "upper":
        word = word.upper()
    return word


def _render_mask(
    text: str, font: int, scale: float, thickness: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Draw ``text`` into a tight uint8 coverage mask.

    Returns the mask (1 px empty border for anti-aliasing) and the position
    of the text origin (left end of the baseline) in mask coordinates, so
    callers can align words on a common baseline.
    """
    (text_w, _), _ = cv2.getTextSize(text, font, scale, thickness)
    em = int(math.ceil(_x_height_per_scale(font) * scale * 3)) + thickness
    pad = 2 * thickness + 4
    # Generous canvas: italic/script glyphs and OpenCV-version-dependent
    # metrics may draw outside the reported text box.
    canvas = np.zeros((3 * em + 2 * pad, text_w + em + 2 * pad), np.uint8)
    origin = (pad + em // 2, pad + 2 * em)
    cv2.putText(canvas, text, origin, font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    y0, y1 = max(ys.min() - 1, 0), ys.max() + 2
    x0, x1 = max(xs.min() - 1, 0), xs.max() + 2
    return np.ascontiguousarray(canvas[y0:y1, x0:x1]), (origin[0] - x0, origin[1] - y0)


def _rotate_mask(mask: np.ndarray, angle: float) -> np.ndarray:
    """Rotate a mask counter-clockwise on screen, enlarging it to fit."""
    h, w = mask.shape
    rot = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, 1.0)
    cos, sin = abs(rot[0, 0]), abs(rot[0, 1])
    new_w = int(math.ceil(w * cos + h * sin)) + 2
    new_h = int(math.ceil(w * sin + h * cos)) + 2
    rot[0, 2] += new_w / 2.0 - w / 2.0
    rot[1, 2] += new_h / 2.0 - h / 2.0
    return cv2.warpAffine(
        mask, rot, (new_w, new_h), flags=cv2.INTER_LINEAR, borderValue=0
    )


def _tight_quad(mask: np.ndarray, angle: float) -> np.ndarray | None:
    """Tight box of the glyph pixels, aligned with the text direction.

    The word's angle is known, so the box is the axis-aligned bounding box in
    the word's own frame, rotated back. (cv2.minAreaRect was tried first but
    tilts the box of ~18% of short horizontal words by 2-7 degrees, because a
    slanted rectangle can have a smaller area; that is wrong ground truth.)
    Pixel centres are expanded by half a pixel so the box covers the pixels.
    """
    ys, xs = np.nonzero(mask >= _GLYPH_THRESHOLD)
    if xs.size == 0:
        return None
    theta = math.radians(angle)
    # Baseline direction and its downward normal, in image coordinates.
    u = np.array([math.cos(theta), -math.sin(theta)])
    v = np.array([math.sin(theta), math.cos(theta)])
    pts = np.stack([xs, ys], axis=1).astype(np.float64)
    s, t = pts @ u, pts @ v
    s0, s1 = s.min() - 0.5, s.max() + 0.5
    t0, t1 = t.min() - 0.5, t.max() + 0.5
    corners = [s0 * u + t0 * v, s1 * u + t0 * v, s1 * u + t1 * v, s0 * u + t1 * v]
    return np.asarray(corners, dtype=np.float32)


# --------------------------------------------------------------------------
# Backgrounds and colours
# --------------------------------------------------------------------------


def _luma(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, amplitude: float, channels: int
) -> np.ndarray:
    """Low-frequency noise: a small random grid upscaled and blurred."""
    grid_h, grid_w = int(rng.integers(2, 9)), int(rng.integers(2, 11))
    grid = rng.normal(0.0, amplitude, (grid_h, grid_w, channels)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    sigma = max(min(height, width) / 40.0, 0.5)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise.reshape(height, width, channels)


def _scene_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Flat, gradient or smooth-noise background as float32 BGR."""
    kind = rng.choice(["flat", "gradient", "noise"])
    if kind == "flat":
        img = np.empty((height, width, 3), np.float32)
        img[:] = rng.uniform(0, 255, 3)
    elif kind == "gradient":
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        ramp = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    else:
        base = rng.uniform(40, 215, 3)
        img = base + _smooth_noise(rng, height, width, rng.uniform(15, 45), 3)
    return np.clip(img, 0, 255).astype(np.float32)


def _draw_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Blend a few random lines/shapes in, so the background is not trivial."""
    height, width = img.shape[:2]
    for _ in range(int(rng.integers(0, 7))):
        layer = img.copy()
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        thick = int(rng.integers(1, 5))
        shape = rng.choice(["line", "rect", "circle", "ellipse"])
        if shape == "line":
            cv2.line(layer, p1, p2, colour, thick, cv2.LINE_AA)
        elif shape == "rect":
            cv2.rectangle(layer, p1, p2, colour, -1 if rng.random() < 0.4 else thick)
        elif shape == "circle":
            radius = int(rng.integers(5, max(6, min(height, width) // 4)))
            cv2.circle(layer, p1, radius, colour, -1 if rng.random() < 0.4 else thick, cv2.LINE_AA)
        else:
            axes = (int(rng.integers(5, max(6, width // 4))), int(rng.integers(5, max(6, height // 4))))
            cv2.ellipse(
                layer, p1, axes, float(rng.uniform(0, 180)), 0, 360, colour,
                -1 if rng.random() < 0.4 else thick, cv2.LINE_AA,
            )
        alpha = float(rng.uniform(0.3, 0.9))
        cv2.addWeighted(layer, alpha, img, 1 - alpha, 0, dst=img)


def _pick_text_colour(
    rng: np.random.Generator, under: np.ndarray, min_contrast: float = 80.0
) -> np.ndarray | None:
    """A text colour clearly readable on the background pixels ``under``.

    Contrast is the 10th percentile of the luma difference, so a word is not
    accepted when a part of it sits on a region of similar brightness.
    Returns None when even near-black/near-white are not good enough; the
    caller then tries another position.
    """
    lum = _luma(under.astype(np.float32))

    def contrast(colour: np.ndarray) -> float:
        return float(np.percentile(np.abs(_luma(colour) - lum), 10))

    for _ in range(6):
        colour = rng.uniform(0, 255, 3)
        if contrast(colour) >= min_contrast + 10:
            return colour
    dark = rng.uniform(0, 45, 3)
    light = rng.uniform(215, 255, 3)
    best = max((dark, light), key=contrast)
    return best if contrast(best) >= min_contrast else None


def _composite(img: np.ndarray, mask: np.ndarray, x: int, y: int, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` into ``img`` through the coverage ``mask``."""
    h, w = mask.shape
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    roi = img[y : y + h, x : x + w]
    roi *= 1.0 - alpha
    roi += alpha * colour.astype(np.float32)


# --------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------


def _make_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    margin: tuple[int, int],
    n_words: int,
    rotate: bool,
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Scattered words of varied style on a varied background."""
    img = _scene_background(rng, height, width)
    _draw_clutter(rng, img)
    background = img.copy()  # contrast is judged against text-free pixels
    occupied = np.zeros((height, width), np.uint8)
    gap = max(3, int(round(min(height, width) / 80)))  # keeps words separable
    factor = min(height, width) / _REF_SIZE[0]
    fonts = [f for f, _ in _WORD_FONTS]
    weights = np.array([w for _, w in _WORD_FONTS])
    weights /= weights.sum()
    my, mx = margin
    polys: list[np.ndarray] = []
    texts: list[str] = []

    for _ in range(n_words):
        placed = False
        for _ in range(_WORD_TRIES):
            text = _random_word(rng)
            font = int(rng.choice(fonts, p=weights))
            if font != cv2.FONT_HERSHEY_SCRIPT_SIMPLEX and rng.random() < 0.15:
                font |= cv2.FONT_ITALIC
            # Log-uniform x-height: small text is more common, as in photos.
            x_height = math.exp(rng.uniform(math.log(10), math.log(40))) * factor
            x_height = max(x_height, 6.0)
            scale = x_height / _x_height_per_scale(font)
            thickness = max(1, int(round(x_height / rng.uniform(6.0, 11.0))))
            angle = float(rng.uniform(-30, 30)) if rotate else 0.0
            mask, _ = _render_mask(text, font, scale, thickness)
            if angle:
                mask = _rotate_mask(mask, angle)
            mh, mw = mask.shape
            if mw > width - 2 * mx or mh > height - 2 * my:
                continue  # too big for this image, try a smaller word
            quad = _tight_quad(mask, angle)
            if quad is None:
                continue
            glyph = mask >= _GLYPH_THRESHOLD
            for _ in range(_POSITION_TRIES):
                x = int(rng.integers(mx, width - mx - mw + 1))
                y = int(rng.integers(my, height - my - mh + 1))
                local = np.zeros((mh, mw), np.uint8)
                cv2.fillConvexPoly(local, np.round(quad).astype(np.int32), 1)
                if np.any(occupied[y : y + mh, x : x + mw] & local):
                    continue
                colour = _pick_text_colour(rng, background[y : y + mh, x : x + mw][glyph])
                if colour is None:
                    continue
                _composite(img, mask, x, y, colour)
                poly = quad + np.array([x, y], np.float32)
                # Reserve the quad plus a gap so later words keep their distance.
                ipoly = np.round(poly).astype(np.int32)
                cv2.fillConvexPoly(occupied, ipoly, 1)
                cv2.polylines(occupied, [ipoly], True, 1, 2 * gap + 1)
                polys.append(poly)
                texts.append(text)
                placed = True
                break
            if placed:
                break
    return img, polys, texts


def _make_document(
    rng: np.random.Generator, height: int, width: int, margin: tuple[int, int]
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """A page of horizontal text lines: a dense map with ~60-150 words."""
    paper = rng.uniform(215, 250) + rng.uniform(-8, 8, 3)  # white-ish, slight tint
    img = np.empty((height, width, 3), np.float32)
    img[:] = paper
    # Uneven lighting, as in a photographed page.
    img += _smooth_noise(rng, height, width, rng.uniform(3, 10), 1)
    np.clip(img, 0, 255, out=img)

    if rng.random() < 0.7:
        ink = rng.uniform(0, 60, 3)
    else:
        ink = np.array([rng.uniform(90, 150), rng.uniform(20, 60), rng.uniform(0, 40)])  # blue
    font = int(rng.choice(_DOC_FONTS))
    if rng.random() < 0.15:
        font |= cv2.FONT_ITALIC
    factor = min(height, width) / _REF_SIZE[0]
    x_height = max(rng.uniform(8.0, 10.5) * factor, 5.0)
    line_h = x_height * rng.uniform(2.2, 2.7)
    target = int(rng.integers(60, 151))

    my, mx = margin
    left = mx + int(width * rng.uniform(0.02, 0.06))
    right = width - mx - int(width * rng.uniform(0.02, 0.06))
    top = my + int(height * rng.uniform(0.01, 0.04))
    bottom = height - my

    polys: list[np.ndarray] = []
    texts: list[str] = []
    baseline = top + 2.0 * x_height
    # Optional larger heading line.
    lines_left_in_par = -1 if rng.random() < 0.5 else 0
    while len(texts) < target:
        heading = lines_left_in_par == -1
        xh = x_height * (1.6 if heading else 1.0)
        scale = xh / _x_height_per_scale(font)
        thickness = max(1, int(round(xh / 7.0))) + (1 if heading else 0)
        if heading:
            n_line_words = int(rng.integers(1, 5))
            lines_left_in_par = 0
        indent = 0.0
        if not heading and lines_left_in_par == 0:
            lines_left_in_par = int(rng.integers(2, 7))  # new paragraph
            indent = x_height * 2 if rng.random() < 0.4 else 0.0
        # The last line of a paragraph ends early, like real text.
        line_end = right if lines_left_in_par != 1 else left + (right - left) * rng.uniform(0.3, 0.8)
        cursor = float(left + indent)
        line_words = 0
        while len(texts) < target:
            text = _random_word(rng, 2, int(rng.choice([5, 7, 10])))
            mask, (ox, oy) = _render_mask(text, font, scale, thickness)
            x = max(int(round(cursor)) - ox, 0)  # italic glyphs may reach left of the origin
            y = int(round(baseline)) - oy
            mh, mw = mask.shape
            if x + mw > line_end or (heading and line_words >= n_line_words):
                break
            if y < 0 or y + mh > bottom:
                break
            quad = _tight_quad(mask, 0.0)
            if quad is None:
                continue
            _composite(img, mask, x, y, ink + rng.uniform(-10, 10, 3))
            polys.append(quad + np.array([x, y], np.float32))
            texts.append(text)
            line_words += 1
            # Gaps wide enough that detectors see words, not lines (as in forms and tables).
            cursor = x + mw + xh * rng.uniform(2.2, 3.5)
        if line_words == 0 and baseline + line_h > bottom:
            break  # page full
        step = line_h * (1.6 if heading else 1.0)
        lines_left_in_par = max(lines_left_in_par - 1, 0)
        if lines_left_in_par == 0 and not heading:
            step += line_h * 0.4  # paragraph gap
        baseline += step
        if baseline + x_height > bottom:
            break
    np.clip(img, 0, 255, out=img)
    return img, polys, texts


# --------------------------------------------------------------------------
# Global effects
# --------------------------------------------------------------------------


def _warp_perspective(
    rng: np.random.Generator, img: np.ndarray, polys: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mild camera-like keystone: jitter the corners by up to _JITTER."""
    height, width = img.shape[:2]
    src = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    jitter = rng.uniform(-_JITTER, _JITTER, (4, 2)) * np.array([width, height])
    dst = (src + jitter).astype(np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    # Reflection fills the uncovered border with nearby background; text is
    # kept _MARGIN (> _JITTER) away from the edge, so no unlabelled text is
    # mirrored in.
    warped = cv2.warpPerspective(
        img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    moved = [
        cv2.perspectiveTransform(p.reshape(-1, 1, 2).astype(np.float32), matrix).reshape(4, 2)
        for p in polys
    ]
    return warped, moved


def _camera_degrade(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Slight blur and sensor noise, then quantise to uint8."""
    sigma = rng.uniform(0.0, 0.8)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    noise_sigma = rng.uniform(0.0, 4.0)
    img = img + rng.normal(0.0, noise_sigma, img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _clip(poly: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keep quad corners on valid pixel coordinates."""
    out = np.asarray(poly, np.float32).reshape(4, 2).copy()
    out[:, 0] = np.clip(out[:, 0], 0, width - 1)
    out[:, 1] = np.clip(out[:, 1], 0, height - 1)
    return out
