"""Frame preparation: the part of preprocessing that stays outside the graph.

Rewritten models take uint8 BGR frames and normalize inside, so all that is left here is
choosing the input size and resizing, aspect kept, then padding to multiples of the
stride: to a side limit (``limit`` mode) or letterboxed into a fixed input size
(``fixed`` mode, what static TensorRT profiles want). The network sees the padding;
box formation reads only the part of the map that covers the image.
"""

from __future__ import annotations

import operator
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

import cv2
import numpy as np

from edgedb._checks import as_integer
from edgedb.errors import InvalidInputError, InvalidInputTypeError

LIMIT_TYPES = ("min", "max")
# Files taken as images when a folder is given (the detect CLI, calibration sets).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Decompression bombs: a few kilobytes of PNG can declare 100000 x 100000 pixels (30 GB
# decoded). Image files are refused above this many pixels, read from the file header
# before any pixel is decoded. The default is Pillow's (its DecompressionBombError
# threshold): 178,956,970 pixels, about 512 MiB as BGR, so a 200-megapixel phone photo
# needs a higher limit. Raise it per call (``max_pixels=``), for the process
# (``edgedb.preprocess.MAX_IMAGE_PIXELS = n``) or from the environment
# ($EDGEDB_MAX_IMAGE_PIXELS); the first of these that is set wins.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
MAX_IMAGE_PIXELS: Optional[int] = None  # None: $EDGEDB_MAX_IMAGE_PIXELS, else the default
MAX_IMAGE_PIXELS_ENV = "EDGEDB_MAX_IMAGE_PIXELS"

# Network input bounds, checked before anything is allocated. PP-OCRv4 on ONNX Runtime
# takes about 2 GB above the image at 4096 x 4096 (the default max_side_len; issue 11);
# activations grow with the area, so MAX_INPUT_PIXELS (8192 x 8192, about 8 GB) is already
# far beyond an edge device, and a side above MAX_INPUT_SIDE is a slip, not a request.
MAX_INPUT_SIDE = 16384
MAX_INPUT_PIXELS = 8192 * 8192


def _side(name: str, value) -> int:
    """A side length argument: an integer in [1, MAX_INPUT_SIDE]."""
    side = as_integer(name, value)
    if not 0 < side <= MAX_INPUT_SIDE:
        raise InvalidInputError(f"{name} must be in [1, {MAX_INPUT_SIDE}] pixels, got {side}")
    return side


def check_limits(limit_side_len: int, limit_type: str, max_side_len: int) -> tuple[int, str, int]:
    """Validated ``limit`` mode options (see ``resized_shape``).

    Raises:
        InvalidInputTypeError: a side that is not an integer.
        InvalidInputError: an unknown ``limit_type``, or a side outside [1, MAX_INPUT_SIDE].
    """
    if not isinstance(limit_type, str) or limit_type not in LIMIT_TYPES:
        raise InvalidInputError(f"limit_type must be 'min' or 'max', not {limit_type!r}")
    return _side("limit_side_len", limit_side_len), limit_type, _side("max_side_len", max_side_len)


def _scale(height: int, width: int, limit_side_len: int, limit_type: str, max_side_len: int) -> float:
    limit_side_len, limit_type, max_side_len = check_limits(limit_side_len, limit_type, max_side_len)
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
    _check_input_area(padded_to(ch, stride), padded_to(cw, stride), "lower max_side_len")
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


def as_bgr_image(image: Union[np.ndarray, str, Path, None], *, max_pixels: Optional[int] = None) -> np.ndarray:
    """A BGR uint8 (H, W, 3) image from an array (BGR, grayscale or BGRA) or a file path
    (read by ``read_image``, with its pixel limit ``max_pixels``).

    Raises:
        InvalidInputTypeError: None, or not an array or path, or not uint8.
        InvalidInputError: empty, wrong shape, or a path that is not a readable image
            (missing, truncated, or over the pixel limit).
    """
    if image is None:
        raise InvalidInputTypeError("image is None; pass a BGR uint8 array (H, W, 3) or an image path")
    if isinstance(image, (str, Path)):
        return read_image(image, max_pixels=max_pixels)
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
        height, width = input_size
        if any(isinstance(v, (bool, np.bool_)) for v in (height, width)):
            raise TypeError
        height, width = operator.index(height), operator.index(width)
    except (TypeError, ValueError):
        raise InvalidInputTypeError(f"input_size must be (height, width), two integers, or None; got {input_size!r}") from None
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise InvalidInputError(f"input_size sides must be positive multiples of {stride}, got {input_size}")
    if height > MAX_INPUT_SIDE or width > MAX_INPUT_SIDE:
        raise InvalidInputError(f"input_size sides must be at most {MAX_INPUT_SIDE}, got {input_size}")
    _check_input_area(height, width, "choose a smaller input_size")
    return height, width


def _check_input_area(height: int, width: int, advice: str) -> None:
    if height * width > MAX_INPUT_PIXELS:
        raise InvalidInputError(
            f"a {height}x{width} network input is {height * width:,} pixels, over edgedb.preprocess."
            f"MAX_INPUT_PIXELS ({MAX_INPUT_PIXELS:,}, about 8 GB of activations on the CPU); {advice}")


# -- image files ----------------------------------------------------------------------


def image_pixel_limit(max_pixels: Optional[int] = None) -> int:
    """The pixel limit of image files: ``max_pixels`` if given, else ``MAX_IMAGE_PIXELS``
    if set, else $EDGEDB_MAX_IMAGE_PIXELS if set, else ``DEFAULT_MAX_IMAGE_PIXELS``."""
    source = "max_pixels"
    if max_pixels is None:
        max_pixels, source = MAX_IMAGE_PIXELS, "edgedb.preprocess.MAX_IMAGE_PIXELS"
    if max_pixels is None:
        text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip().replace("_", "")
        if not text:
            return DEFAULT_MAX_IMAGE_PIXELS
        if not text.isdigit() or int(text) <= 0:
            raise InvalidInputError(f"${MAX_IMAGE_PIXELS_ENV} must be a positive whole number of pixels, "
                                    f"not {os.environ[MAX_IMAGE_PIXELS_ENV]!r}")
        return int(text)
    limit = as_integer(source, max_pixels)
    if limit <= 0:
        raise InvalidInputError(f"{source} must be positive, got {limit}")
    return limit


def read_image(path: Union[str, Path], *, max_pixels: Optional[int] = None) -> np.ndarray:
    """Decodes an image file to BGR uint8 (H, W, 3): the one place edgedb reads images.

    The size is read from the header (PNG, JPEG, BMP, WebP, TIFF, GIF; other formats
    through Pillow when it is installed) and checked against the pixel limit (see
    ``image_pixel_limit``) before any pixel is decoded; formats whose header neither
    knows are checked once decoded. A JPEG without its end marker or a PNG without its
    IEND chunk is refused as truncated: OpenCV decodes those partly (grey below the cut)
    and only prints a warning.

    Raises:
        InvalidInputError: no such file, over the pixel limit, truncated, or not an image
            OpenCV can decode.
    """
    path = Path(path)
    limit = image_pixel_limit(max_pixels)
    if not path.is_file():
        raise InvalidInputError(f"no image file at {path}")
    try:
        with open(path, "rb") as file:
            size = _header_size(file) or _pillow_size(path)
            if size is not None:
                _check_pixels(path, *size, limit)
            _check_complete(path, file)
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error}") from None
    try:
        decoded = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as error:  # e.g. over $OPENCV_IO_MAX_IMAGE_PIXELS, checked after ours
        raise InvalidInputError(f"{path} cannot be decoded by OpenCV: {str(error).strip()}") from None
    if decoded is None:
        raise InvalidInputError(f"{path} is not an image OpenCV can read")
    if size is None:
        _check_pixels(path, decoded.shape[1], decoded.shape[0], limit)
    return decoded


def _check_pixels(path: Path, width: int, height: int, limit: int) -> None:
    pixels = width * height
    if pixels > limit:
        raise InvalidInputError(
            f"{path} is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            f"(decoded it would take {pixels * 3 / 2**20:,.0f} MiB); if the file is trusted, raise the limit with "
            f"max_pixels=..., edgedb.preprocess.MAX_IMAGE_PIXELS or ${MAX_IMAGE_PIXELS_ENV}")


def _header_size(file: BinaryIO) -> Optional[tuple[int, int]]:
    """(width, height) from the header of a PNG, JPEG, BMP, WebP, TIFF or GIF file; None
    for another format or a header too damaged to read (the decoder then says why)."""
    head = file.read(32)
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head.startswith(b"\xff\xd8"):
            return _jpeg_size(file)
        if head.startswith(b"BM"):
            if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER (OS/2 1.x)
                return struct.unpack("<HH", head[18:22])
            width, height = struct.unpack("<ii", head[18:26])
            return abs(width), abs(height)  # a negative height is a top-down bitmap
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            return _webp_size(head)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(file, "<" if head[:2] == b"II" else ">")
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
    except (struct.error, ValueError):
        return None
    return None


def _jpeg_size(file: BinaryIO) -> Optional[tuple[int, int]]:
    # Walks the marker segments to the first start-of-frame (SOF0..SOF15 but DHT C4,
    # JPG C8 and DAC CC), skipping APPn segments such as EXIF whatever their length.
    file.seek(2)
    while True:
        byte = file.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = file.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header first
            return None
        (length,) = struct.unpack(">H", file.read(2))
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _precision, height, width = struct.unpack(">BHH", file.read(5))
            return width, height
        file.seek(length - 2, os.SEEK_CUR)
        if file.read(1) != b"\xff":
            return None
        file.seek(-1, os.SEEK_CUR)


def _webp_size(head: bytes) -> Optional[tuple[int, int]]:
    chunk = head[12:16]
    if chunk == b"VP8X":  # extended: 24-bit width - 1 and height - 1
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L":  # lossless: 14-bit width - 1 and height - 1 after the signature byte
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _tiff_size(file: BinaryIO, order: str) -> Optional[tuple[int, int]]:
    # The first image file directory: tags ImageWidth (256) and ImageLength (257), SHORT or LONG.
    file.seek(4)
    (offset,) = struct.unpack(order + "I", file.read(4))
    file.seek(offset)
    (count,) = struct.unpack(order + "H", file.read(2))
    found = {}
    for _ in range(min(count, 4096)):
        tag, kind, _count, value = struct.unpack(order + "HHI4s", file.read(12))
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[: 2 if kind == 3 else 4])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _pillow_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) from Pillow's header parsers, for the formats ``_header_size`` does
    not read; None without Pillow (it is optional) or when it cannot tell."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as opened:  # lazy: reads the header only
            return opened.size
    except Exception:  # not an image Pillow knows, or over Pillow's own bomb limit
        return None


JPEG_TAIL_BYTES = 1 << 16  # where the end marker of a complete JPEG is looked for
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an IEND chunk: length 0, type, CRC


def _check_complete(path: Path, file: BinaryIO) -> None:
    """Refuses a JPEG or PNG cut short. Only the file's tail is read: a complete JPEG has
    its end-of-image marker after its last start-of-scan (fill and entropy-coded bytes
    never hold FF D9, so a truncated one has no marker there, unless the tail reaches
    back into an EXIF thumbnail, which lies before the scans); a PNG ends with IEND."""
    file.seek(0)
    head = file.read(8)
    if head.startswith(b"\xff\xd8"):
        end, start = b"\xff\xd9", b"\xff\xda"
    elif head == b"\x89PNG\r\n\x1a\n":
        end, start = PNG_END, None
    else:
        return
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - JPEG_TAIL_BYTES))
    tail = file.read()
    last_end = tail.rfind(end)
    if last_end < 0 or (start is not None and tail.rfind(start) > last_end):
        kind = "JPEG without its end-of-image marker" if start else "PNG without its IEND chunk"
        raise InvalidInputError(f"{path} is truncated ({size:,} bytes, a {kind}); the file was cut short "
                                "while being written or copied")
