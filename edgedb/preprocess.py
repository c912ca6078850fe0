"""Frame preparation: the part of preprocessing that stays outside the graph.

Rewritten models take uint8 BGR frames and normalize inside, so all that is left here is
choosing the input size and resizing, aspect kept, then padding to multiples of the
stride: to a side limit (``limit`` mode) or letterboxed into a fixed input size
(``fixed`` mode, what static TensorRT profiles want). The network sees the padding;
box formation reads only the part of the map that covers the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

from edgedb.errors import InvalidInputError, InvalidInputTypeError

LIMIT_TYPES = ("min", "max")
# Files taken as images when a folder is given (the detect CLI, calibration sets).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def _scale(height: int, width: int, limit_side_len: int, limit_type: str, max_side_len: int) -> float:
    if limit_type not in LIMIT_TYPES:
        raise InvalidInputError(f"limit_type must be 'min' or 'max', not {limit_type!r}")
    if limit_side_len <= 0 or max_side_len <= 0:
        raise InvalidInputError("limit_side_len and max_side_len must be positive")
    if limit_type == "min":
        ratio = limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    else:
        ratio = limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0
    return min(ratio, max_side_len / max(height, width))  # huge or very long images


def resized_shape(
    height: int, width: int, limit_side_len: int = 736, limit_type: str = "min", *, stride: int = 32,
    max_side_len: int = 4096,
) -> tuple[int, int]:
    """Content (height, width) of an image scaled, aspect kept, so its shorter side reaches
    at least (``"min"``) or its longer side at most (``"max"``) ``limit_side_len``, and its
    longer side stays within ``max_side_len``. Never below one pixel."""
    ratio = _scale(height, width, limit_side_len, limit_type, max_side_len)
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def padded_to(side: int, stride: int) -> int:
    """The smallest multiple of ``stride`` that holds ``side``."""
    return max(stride, -(-side // stride) * stride)


@dataclass(frozen=True)
class PreparedFrame:
    """A frame sized for the network, and where the original image sits in it."""

    frame: np.ndarray  # uint8 (H', W', 3) BGR, H' and W' multiples of the stride
    content: tuple[int, int]  # (h, w) of the region of `frame` holding the image
    original: tuple[int, int]  # (height, width) of the original image


def prepare_limit(image: np.ndarray, limit_side_len: int, limit_type: str, stride: int = 32,
                  max_side_len: int = 4096) -> PreparedFrame:
    """Scales the image keeping its aspect (see ``resized_shape``), then pads it with black
    at the bottom and right to multiples of the stride."""
    h, w = image.shape[:2]
    ch, cw = resized_shape(h, w, limit_side_len, limit_type, stride=stride, max_side_len=max_side_len)
    content = image if (ch, cw) == (h, w) else cv2.resize(image, (cw, ch), interpolation=cv2.INTER_LINEAR)
    height, width = padded_to(ch, stride), padded_to(cw, stride)
    if (height, width) == (ch, cw):
        return PreparedFrame(np.ascontiguousarray(content), (ch, cw), (h, w))
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:ch, :cw] = content
    return PreparedFrame(frame, (ch, cw), (h, w))


def prepare_fixed(image: np.ndarray, input_size: tuple[int, int]) -> PreparedFrame:
    """Letterboxes into (height, width): scaled to fit, aspect kept, top-left, zero padding."""
    h, w = image.shape[:2]
    height, width = input_size
    ratio = min(height / h, width / w)
    ch, cw = max(1, min(height, round(h * ratio))), max(1, min(width, round(w * ratio)))
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:ch, :cw] = cv2.resize(image, (cw, ch), interpolation=cv2.INTER_LINEAR)
    return PreparedFrame(frame, (ch, cw), (h, w))


def as_bgr_image(image: Union[np.ndarray, str, Path, None]) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image from an array (BGR, grayscale or BGRA) or a file path.

    Raises:
        InvalidInputTypeError: None, or not an array or path, or not uint8.
        InvalidInputError: empty, wrong shape, or a path that is not a readable image.
    """
    if image is None:
        raise InvalidInputTypeError("image is None; pass a BGR uint8 array (H, W, 3) or an image path")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InvalidInputError(f"no image file at {path}")
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if decoded is None:
            raise InvalidInputError(f"{path} is not an image OpenCV can read")
        return decoded
    if not isinstance(image, np.ndarray):
        raise InvalidInputTypeError(f"image must be a numpy array or a path, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidInputTypeError(f"image must be uint8 (0..255), not {image.dtype}; convert with np.clip(...).astype(np.uint8)")
    if image.size == 0:
        raise InvalidInputError(f"image is empty (shape {image.shape})")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise InvalidInputError(f"image must be (H, W, 3) BGR, (H, W) gray or (H, W, 4) BGRA, not shape {image.shape}")


def check_fixed_size(input_size: Optional[tuple[int, int]], stride: int) -> Optional[tuple[int, int]]:
    if input_size is None:
        return None
    try:
        height, width = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise InvalidInputTypeError("input_size must be (height, width) or None") from None
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise InvalidInputError(f"input_size sides must be positive multiples of {stride}, got {input_size}")
    return height, width
