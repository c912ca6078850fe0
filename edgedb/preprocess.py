"""Frame preparation: the part of preprocessing that stays outside the graph.

Rewritten models take uint8 BGR frames and normalize inside, so all that is left here is
choosing the input size and resizing, aspect kept, then padding to multiples of the
stride: to a side limit (``limit`` mode) or letterboxed into a fixed input size
(``fixed`` mode, what static TensorRT profiles want). The network sees the padding;
box formation reads only the part of the map that covers the image.
"""

from __future__ import annotations

import io
import operator
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Union

import cv2
import numpy as np

from edgedb._checks import as_integer
from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.memory import check_inference_memory

LIMIT_TYPES = ("min", "max")
# The resize EdgeDetector uses unless told otherwise, measured on ICDAR 2015
# (bench/RESULTS.md, "Detector defaults").
DEFAULT_LIMIT_SIDE_LEN = 736
DEFAULT_LIMIT_TYPE = "min"
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
# Below these, an input must also fit the memory budget (edgedb.memory, 4 GiB by default).
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
    ratio = _policy_ratio(height, width, limit_side_len, limit_type)
    return min(ratio, max_side_len / max(height, width))  # huge or very long images


def _policy_ratio(height: int, width: int, limit_side_len: int, limit_type: str) -> float:
    if limit_type == "min":
        return limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    return limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0


def policy_scale(height: int, width: int, limit_side_len: int, limit_type: str) -> float:
    """The scale the resize policy wants for an image, before ``max_side_len`` caps it."""
    limit_side_len, limit_type, _ = check_limits(limit_side_len, limit_type, MAX_INPUT_SIDE)
    return _policy_ratio(height, width, limit_side_len, limit_type)


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


def prepare_frame(image: np.ndarray, *, input_size: Optional[tuple[int, int]] = None,
                  limit_side_len: int = DEFAULT_LIMIT_SIDE_LEN, limit_type: str = DEFAULT_LIMIT_TYPE,
                  stride: int = 32, max_side_len: int = 4096) -> PreparedFrame:
    """The frame ``EdgeDetector`` makes of ``image``: letterboxed into ``input_size`` when
    one is given (``prepare_fixed``), else sized by the limits (``prepare_limit``)."""
    if input_size:
        return prepare_fixed(image, tuple(input_size))
    return prepare_limit(image, limit_side_len, limit_type, stride, max_side_len)


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
    check_inference_memory(height * width, f"a {height}x{width} network input", advice)


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

    The format is told from the file's first bytes (not its name) and the size read from
    its header, then checked against the pixel limit (see ``image_pixel_limit``) before any
    pixel is decoded: every format OpenCV decodes has a reader here (``_FORMATS``), and a
    file none of them knows, or whose header holds no size, is refused rather than decoded
    blind (a Radiance HDR named .png once decoded 20000 x 20000 pixels, 4 GB). A JPEG
    without its end marker or a PNG without its IEND chunk is refused as truncated: OpenCV
    decodes those partly (grey below the cut) and only prints a warning.

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
            _check_encoded(path, file, limit)
    except OSError as error:
        raise InvalidInputError(f"cannot read {path}: {error}") from None
    return _decoded(path, lambda: cv2.imread(str(path), cv2.IMREAD_COLOR), limit)


def decode_image(data: Union[bytes, bytearray, memoryview, np.ndarray], *, max_pixels: Optional[int] = None,
                 name: str = "the encoded image") -> np.ndarray:
    """``read_image`` for an image file's bytes in memory (a JPEG or PNG sent over the
    network, say): the same format, size and truncation checks before any pixel is
    decoded. ``name`` says which image in the errors.

    Raises:
        InvalidInputError: empty, over the pixel limit, truncated, or not an image OpenCV
            can decode.
    """
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    if buffer.dtype != np.uint8:
        raise InvalidInputTypeError(f"{name} must be bytes or a uint8 array, not {buffer.dtype}")
    if buffer.size == 0:
        raise InvalidInputError(f"{name} is empty (0 bytes)")
    limit = image_pixel_limit(max_pixels)
    _check_encoded(name, io.BytesIO(buffer.data), limit)  # reshape(-1) made it contiguous
    return _decoded(name, lambda: cv2.imdecode(buffer, cv2.IMREAD_COLOR), limit)


def _check_encoded(label, file: BinaryIO, limit: int) -> None:
    """What ``read_image`` checks before decoding: a known format, a size in its header
    within ``limit``, a complete file."""
    kind, size = _header_size(file)
    if not kind:
        raise InvalidInputError(f"{label} is not an image OpenCV can read: its content starts as none of "
                                f"{', '.join(name for name, _, _ in _FORMATS)}")
    if size is not None:
        _check_pixels(label, *size, limit)
    _check_complete(label, file)  # a file cut short is said as such, damaged header or not
    if size is None:
        raise InvalidInputError(f"{label} is not an image OpenCV can read: its {kind} header is damaged "
                                "(it holds no image size)")


def _decoded(label, decode, limit: int) -> np.ndarray:
    try:
        decoded = decode()
    except cv2.error as error:  # e.g. over $OPENCV_IO_MAX_IMAGE_PIXELS, checked after ours
        raise InvalidInputError(f"{label} cannot be decoded by OpenCV: {str(error).strip()}") from None
    if decoded is None:
        raise InvalidInputError(f"{label} is not an image OpenCV can read")
    _check_pixels(label, decoded.shape[1], decoded.shape[0], limit)  # a header that said less
    return decoded


def _check_pixels(path: Path, width: int, height: int, limit: int) -> None:
    pixels = width * height
    if pixels > limit:
        raise InvalidInputError(
            f"{path} is {width}x{height} = {pixels:,} pixels, over the limit of {limit:,} "
            f"(decoded it would take {pixels * 3 / 2**20:,.0f} MiB); if the file is trusted, raise the limit with "
            f"max_pixels=..., edgedb.preprocess.MAX_IMAGE_PIXELS or ${MAX_IMAGE_PIXELS_ENV}")


def _header_size(file: BinaryIO) -> tuple[str, Optional[tuple[int, int]]]:
    """The format of an image file, told from its first bytes as OpenCV tells it (never
    from its name), and its (width, height) read from the header: ("", None) for content
    none of ``_FORMATS`` starts with, (name, None) for a header too damaged to hold a size."""
    head = file.read(64)
    for name, starts, size in _FORMATS:
        if starts(head):
            try:
                found = size(head, file)
            except (struct.error, ValueError, IndexError, KeyError):
                found = None
            return name, found if found and all(side > 0 for side in found) else None
    return "", None


def _png_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    return struct.unpack(">II", head[16:24]) if head[12:16] == b"IHDR" else None


def _bmp_size(head: bytes, file: BinaryIO) -> tuple[int, int]:
    if struct.unpack("<I", head[14:18])[0] == 12:  # BITMAPCOREHEADER (OS/2 1.x)
        return struct.unpack("<HH", head[18:22])
    width, height = struct.unpack("<ii", head[18:26])
    return abs(width), abs(height)  # a negative height is a top-down bitmap


JPEG_STRAY_BYTES = 1 << 16  # stray bytes skipped between two segments, at most


def _jpeg_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    # Walks the marker segments to the first start-of-frame (SOF0..SOF15 but DHT C4,
    # JPG C8 and DAC CC), skipping APPn segments such as EXIF whatever their length, and
    # stray bytes between segments as libjpeg does ("extraneous bytes before marker").
    file.seek(2)
    while True:
        byte, stray = file.read(1), 0
        while byte and byte != b"\xff" and stray < JPEG_STRAY_BYTES:
            byte, stray = file.read(1), stray + 1
        while byte == b"\xff":  # fill bytes before a marker
            byte = file.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:  # stuffed byte, standalone markers
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header first
            return None
        (length,) = struct.unpack(">H", file.read(2))
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _precision, height, width = struct.unpack(">BHH", file.read(5))
            return width, height
        file.seek(length - 2, os.SEEK_CUR)


def _webp_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
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


def _tiff_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    # The first image file directory: tags ImageWidth (256) and ImageLength (257), SHORT or
    # LONG (LONG8 too in a BigTIFF, whose offsets and counts are 8 bytes).
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    offset_format, count_format, entry_format = ("Q", "Q", "HHQ8s") if big else ("I", "H", "HHI4s")
    (offset,) = struct.unpack(order + offset_format, head[8:16] if big else head[4:8])
    file.seek(offset)
    count_size = struct.calcsize(count_format)
    (count,) = struct.unpack(order + count_format, file.read(count_size))
    entry_size = struct.calcsize(order + entry_format)
    found = {}
    for _ in range(min(count, 4096)):
        tag, kind, _count, value = struct.unpack(order + entry_format, file.read(entry_size))
        if tag in (256, 257):
            code = {3: "H", 4: "I", 16: "Q"}[kind]
            found[tag] = struct.unpack(order + code, value[: struct.calcsize(code)])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _gif_size(head: bytes, file: BinaryIO) -> tuple[int, int]:
    return struct.unpack("<HH", head[6:10])


def _text_header(file: BinaryIO, limit: int = 1 << 16) -> str:
    """The start of a text header (PNM, PAM, PFM, Radiance), comments cut out."""
    file.seek(0)
    lines = file.read(limit).decode("latin-1").split("\n")
    return "\n".join(line.split("#", 1)[0] if not line.startswith("#?") else "" for line in lines)


def _pnm_size(head: bytes, file: BinaryIO) -> tuple[int, int]:
    # PBM/PGM/PPM (P1..P6) and PFM (PF, Pf): the magic, then width and height as text.
    _magic, width, height = _text_header(file, 4096).split()[:3]
    return int(width), int(height)


def _pam_size(head: bytes, file: BinaryIO) -> tuple[int, int]:
    header = _text_header(file, 4096).split("ENDHDR", 1)[0]
    fields = dict(line.split() for line in header.split("\n")[1:] if len(line.split()) == 2)
    return int(fields["WIDTH"]), int(fields["HEIGHT"])


_RADIANCE_AXES = re.compile(r"^\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)\s*$", re.MULTILINE)


def _radiance_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    # Header lines, a blank line, then the resolution line: "-Y 480 +X 640" (any
    # orientation; the axis letters say which number is which).
    header = _text_header(file)
    blank = header.find("\n\n")
    found = _RADIANCE_AXES.search(header, blank) if blank >= 0 else None
    if found is None or found.group(2) == found.group(5):
        return None
    sides = {found.group(2): int(found.group(3)), found.group(5): int(found.group(6))}
    return sides["X"], sides["Y"]


def _sun_raster_size(head: bytes, file: BinaryIO) -> tuple[int, int]:
    return struct.unpack(">II", head[4:12])


def _boxes(data: bytes, start: int = 0, end: Optional[int] = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, content start, content end) of the ISO base media / JP2 boxes in ``data``."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", data[start + 8:start + 16])
            header = 16
        elif size == 0:  # to the end
            size = end - start
        if size < header:
            return
        yield kind, start + header, min(start + size, end)
        start += size


_BOX_BYTES = 1 << 20  # where the boxes holding the size are looked for


def _jpeg2000_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    file.seek(0)
    data = file.read(_BOX_BYTES)
    if data.startswith(b"\xff\x4f\xff\x51"):  # a bare codestream: its SIZ segment
        xsiz, ysiz, x0, y0 = struct.unpack(">IIII", data[8:24])
        return xsiz - x0, ysiz - y0
    for kind, start, end in _boxes(data):
        if kind == b"jp2h":
            for inner, content, _ in _boxes(data, start, end):
                if inner == b"ihdr":
                    height, width = struct.unpack(">II", data[content:content + 8])
                    return width, height
    return None


def _avif_size(head: bytes, file: BinaryIO) -> Optional[tuple[int, int]]:
    # Every image item (the primary one, a grid's tiles, an alpha plane) has an ImageSpatial-
    # Extents box "ispe" in the meta box's item properties; the largest bounds the decode.
    file.seek(0)
    data = file.read(_BOX_BYTES)
    sizes = []
    for kind, start, end in _boxes(data):
        if kind == b"meta":
            at = data.find(b"ispe", start, end)
            while at >= 4:
                if struct.unpack(">I", data[at - 4:at])[0] == 20:  # size, type, version+flags, w, h
                    sizes.append(struct.unpack(">II", data[at + 8:at + 16]))
                at = data.find(b"ispe", at + 4, end)
    return max(sizes, key=lambda size: size[0] * size[1]) if sizes else None


def _is_avif(head: bytes) -> bool:
    """An ISO base media file whose major or compatible brands name AVIF (as libavif peeks)."""
    if head[4:8] != b"ftyp":
        return False
    end = min(struct.unpack(">I", head[:4])[0], len(head))
    return any(head[at:at + 4] in (b"avif", b"avis") for at in range(8, end - 3, 4) if at != 12)  # 12: minor version


def _is_pnm(head: bytes) -> bool:
    return len(head) > 2 and head[:1] == b"P" and head[1:2] in b"123456Ff" and head[2:3].isspace()


# (name, whether a file starts as one, its (width, height) from the header): every format
# the OpenCV build edgedb ships with decodes, as its decoders' signatures tell them apart.
_FORMATS = (
    ("PNG", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"), _png_size),
    ("JPEG", lambda head: head.startswith(b"\xff\xd8\xff"), _jpeg_size),
    ("BMP", lambda head: head.startswith(b"BM"), _bmp_size),
    ("WebP", lambda head: head.startswith(b"RIFF") and head[8:12] == b"WEBP", _webp_size),
    ("TIFF", lambda head: head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), _tiff_size),
    ("GIF", lambda head: head[:6] in (b"GIF87a", b"GIF89a"), _gif_size),
    ("PBM/PGM/PPM/PFM", _is_pnm, _pnm_size),
    ("PAM", lambda head: head.startswith(b"P7\n"), _pam_size),
    ("Radiance HDR", lambda head: head.startswith((b"#?RADIANCE", b"#?RGBE")), _radiance_size),
    ("Sun raster", lambda head: head.startswith(b"\x59\xa6\x6a\x95"), _sun_raster_size),
    ("JPEG 2000", lambda head: head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")),
     _jpeg2000_size),
    ("AVIF", _is_avif, _avif_size),
)


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
