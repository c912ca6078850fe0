"""Limits (issue 11): image files over the pixel limit are refused from their header,
truncated files are reported, sizes and counts are bounded, and box formation refuses
out-of-range numbers with edgedb's own errors. Nothing here allocates a large image."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

import edgedb
from edgedb import EdgeDetector, InvalidInputError, InvalidInputTypeError
from edgedb import preprocess
from edgedb.preprocess import DEFAULT_MAX_IMAGE_PIXELS, MAX_INPUT_SIDE, image_pixel_limit, read_image

FORMATS = ("jpg", "png", "bmp", "webp", "tif")


def small_image(height=30, width=50) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write(path, image=None) -> bytes:
    assert cv2.imwrite(str(path), small_image() if image is None else image)
    return path.read_bytes()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height, with one tiny IDAT and IEND: what a
    decompression bomb's header looks like, a few dozen bytes on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails the test if OpenCV is asked to decode: the refusal must come from the header."""

    def imread(*args, **kwargs):
        raise AssertionError("cv2.imread was called")

    monkeypatch.setattr(preprocess.cv2, "imread", imread)


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("EDGEDB_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", None)


# -- pixel limit ------------------------------------------------------------------------


def test_a_bomb_header_is_refused_before_decoding(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100_000, 100_000))
    with pytest.raises(InvalidInputError, match=r"100000x100000 = 10,000,000,000 pixels") as raised:
        read_image(path)
    message = str(raised.value)
    assert f"{DEFAULT_MAX_IMAGE_PIXELS:,}" in message
    assert "MAX_IMAGE_PIXELS" in message and "EDGEDB_MAX_IMAGE_PIXELS" in message and "max_pixels" in message


def test_as_bgr_image_applies_the_limit_to_paths(tmp_path, no_decoding):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(20_000, 20_000))
    with pytest.raises(InvalidInputError, match="over the limit"):
        preprocess.as_bgr_image(path)
    with pytest.raises(InvalidInputError, match="over the limit"):
        preprocess.as_bgr_image(str(path))


def test_a_patched_jpeg_frame_header_is_refused(tmp_path, no_decoding):
    data = bytearray(write(tmp_path / "small.jpg"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    path = tmp_path / "patched.jpg"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="60000x60000"):
        read_image(path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_header_size_matches_the_decoded_size(tmp_path, suffix):
    path = tmp_path / f"image.{suffix}"
    write(path, small_image(30, 50))
    assert read_image(path, max_pixels=30 * 50).shape == (30, 50, 3)


@pytest.mark.parametrize("suffix", FORMATS)
def test_one_pixel_over_the_limit_is_refused_from_the_header(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"image.{suffix}"
    write(path, small_image(30, 50))
    monkeypatch.setattr(preprocess.cv2, "imread", lambda *a, **k: pytest.fail("decoded"))
    with pytest.raises(InvalidInputError, match="50x30 = 1,500 pixels, over the limit of 1,499"):
        read_image(path, max_pixels=30 * 50 - 1)


def test_the_limit_comes_from_the_call_then_the_module_then_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "image.png"
    write(path, small_image(30, 50))
    assert image_pixel_limit() == DEFAULT_MAX_IMAGE_PIXELS
    monkeypatch.setenv("EDGEDB_MAX_IMAGE_PIXELS", "1_000")
    assert image_pixel_limit() == 1000
    with pytest.raises(InvalidInputError, match="over the limit of 1,000"):
        read_image(path)
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 2000)
    assert read_image(path).shape == (30, 50, 3)
    with pytest.raises(InvalidInputError, match="over the limit of 100"):
        read_image(path, max_pixels=100)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e9"])
def test_a_bad_environment_limit_is_named(value, monkeypatch):
    monkeypatch.setenv("EDGEDB_MAX_IMAGE_PIXELS", value)
    with pytest.raises(InvalidInputError, match="EDGEDB_MAX_IMAGE_PIXELS must be a positive whole number"):
        image_pixel_limit()


@pytest.mark.parametrize("value, error", [(0, InvalidInputError), (-1, InvalidInputError),
                                          (True, InvalidInputTypeError), (1e9, InvalidInputTypeError)])
def test_a_bad_max_pixels_is_refused(value, error):
    with pytest.raises(error, match="max_pixels"):
        image_pixel_limit(value)


def test_a_header_that_says_less_is_caught_once_decoded(tmp_path, monkeypatch):
    path = tmp_path / "image.ppm"
    write(path, small_image(30, 50))
    monkeypatch.setattr(preprocess, "_header_size", lambda file: ("PPM", (1, 1)))
    with pytest.raises(InvalidInputError, match="over the limit of 1,000"):
        read_image(path, max_pixels=1000)
    assert read_image(path, max_pixels=1500).shape == (30, 50, 3)


# -- truncated files --------------------------------------------------------------------


@pytest.mark.parametrize("suffix, kind", [("jpg", "JPEG"), ("png", "PNG")])
@pytest.mark.parametrize("keep", [0.5, 0.9, -2])
def test_a_truncated_file_is_reported(tmp_path, suffix, kind, keep):
    data = write(tmp_path / f"whole.{suffix}")
    cut = len(data) + keep if keep < 0 else int(len(data) * keep)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[:cut])
    with pytest.raises(InvalidInputError, match=f"truncated .*a {kind} without"):
        read_image(path)


def test_opencv_alone_decodes_a_truncated_jpeg_silently(tmp_path):
    # Why the check exists: libjpeg fills the missing rows and only warns.
    data = write(tmp_path / "whole.jpg")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert cv2.imread(str(path)) is not None


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_bytes_after_the_end_marker_are_accepted(tmp_path, suffix):
    path = tmp_path / f"padded.{suffix}"
    path.write_bytes(write(tmp_path / f"whole.{suffix}") + b"\0" * 100)
    assert read_image(path).shape == small_image().shape


def test_a_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(InvalidInputError, match="not an image OpenCV can read"):
        read_image(path)
    with pytest.raises(InvalidInputError, match="no image file"):
        read_image(tmp_path / "missing.png")


# -- sizes and counts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_size": (100_000, 100_000)}, InvalidInputError, "at most 16384"),
        ({"input_size": (16384, 16384)}, InvalidInputError, "MAX_INPUT_PIXELS"),
        ({"input_size": (True, 640)}, InvalidInputTypeError, "two integers"),
        ({"input_size": (640.0, 640)}, InvalidInputTypeError, "two integers"),
        ({"limit_side_len": 10**9}, InvalidInputError, "limit_side_len must be in"),
        ({"limit_side_len": 0}, InvalidInputError, "limit_side_len must be in"),
        ({"limit_side_len": float("nan")}, InvalidInputTypeError, "limit_side_len must be an integer"),
        ({"limit_side_len": True}, InvalidInputTypeError, "limit_side_len must be an integer"),
        ({"max_side_len": 2**40}, InvalidInputError, "max_side_len must be in"),
        ({"max_side_len": -1}, InvalidInputError, "max_side_len must be in"),
        ({"limit_type": "avg"}, InvalidInputError, "limit_type"),
        ({"threads": 0}, InvalidInputError, "threads must be >= 1"),
        ({"threads": -4}, InvalidInputError, "threads must be >= 1"),
        ({"threads": 2.5}, InvalidInputTypeError, "threads must be an integer"),
        ({"threads": True}, InvalidInputTypeError, "threads must be an integer"),
        ({"max_batch": 0}, InvalidInputError, "max_batch must be >= 1"),
        ({"device": -1}, InvalidInputError, "device must be >= 0"),
    ],
)
def test_detector_sizes_and_counts_are_bounded(kwargs, error, match, monkeypatch):
    # Refused before the model is loaded: loading it would fail this test.
    monkeypatch.setattr("edgedb.detector.load_deployable", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(error, match=match):
        EdgeDetector(**kwargs)


def test_a_limit_frame_over_the_area_bound_is_refused_before_resizing(monkeypatch):
    monkeypatch.setattr(preprocess.cv2, "resize", lambda *a, **k: pytest.fail("resized"))
    with pytest.raises(InvalidInputError, match="MAX_INPUT_PIXELS.*lower max_side_len"):
        preprocess.prepare_limit(np.zeros((16, 16, 3), np.uint8), MAX_INPUT_SIDE, "min", max_side_len=MAX_INPUT_SIDE)


def test_a_long_thin_frame_within_the_area_bound_is_prepared():
    prepared = preprocess.prepare_limit(np.zeros((4, 256, 3), np.uint8), 16, "min", max_side_len=MAX_INPUT_SIDE)
    assert prepared.frame.shape == (32, 1024, 3)


# -- box formation ----------------------------------------------------------------------


def text_map():
    prob = np.zeros((64, 96), np.float32)
    prob[20:40, 10:80] = 0.9
    return prob


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"dest_size": (10**12, 10**12)}, InvalidInputError),
        ({"dest_size": (2**31, 10)}, InvalidInputError),
        ({"dest_size": (2**24 + 1, 10)}, InvalidInputError),
        ({"dest_size": (10, -1)}, InvalidInputError),
        ({"dest_size": (True, 10)}, InvalidInputTypeError),
        ({"dest_size": (np.float32(10), 10)}, InvalidInputTypeError),
        ({"max_candidates": 2**40}, InvalidInputError),
        ({"max_candidates": 2**31}, InvalidInputError),
        ({"max_candidates": -1}, InvalidInputError),
        ({"max_candidates": True}, InvalidInputTypeError),
        ({"max_candidates": np.bool_(True)}, InvalidInputTypeError),
        ({"max_candidates": 10.0}, InvalidInputTypeError),
        ({"unclip_ratio": 1e30}, InvalidInputError),
        ({"unclip_ratio": 101.0}, InvalidInputError),
        ({"unclip_ratio": -0.5}, InvalidInputError),
        ({"unclip_ratio": float("nan")}, InvalidInputError),
        ({"unclip_ratio": np.float32("inf")}, InvalidInputError),
        ({"unclip_ratio": True}, InvalidInputTypeError),
        ({"thresh": float("nan")}, InvalidInputError),
        ({"thresh": 1.0000001}, InvalidInputError),
        ({"thresh": False}, InvalidInputTypeError),
        ({"box_thresh": -1e-9}, InvalidInputError),
        ({"box_thresh": "0.6"}, InvalidInputTypeError),
        ({"min_size": float("inf")}, InvalidInputError),
        ({"min_size": -1}, InvalidInputError),
        ({"min_size": None}, InvalidInputTypeError),
        ({"use_dilation": "no"}, InvalidInputTypeError),
        ({"use_dilation": 1}, InvalidInputTypeError),
    ],
)
def test_out_of_range_box_parameters_are_refused(kwargs, error):
    with pytest.raises(error) as raised:
        edgedb.boxes_from_prob(text_map(), **kwargs)
    name = next(iter(kwargs))
    assert name in str(raised.value)
    assert "incompatible function arguments" not in str(raised.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dest_size": (2**24, 2**24)},
        {"max_candidates": 2**31 - 1},
        {"max_candidates": np.int64(5)},
        {"unclip_ratio": 100.0},
        {"unclip_ratio": 0},
        {"thresh": np.float32(0.5)},
        {"min_size": 1e300},
        {"use_dilation": np.bool_(True)},
    ],
)
def test_edge_of_range_box_parameters_are_accepted(kwargs):
    edgedb.boxes_from_prob(text_map(), **kwargs)


def test_a_failure_inside_the_core_becomes_an_edgedb_error(monkeypatch):
    def form_boxes(*args):
        raise RuntimeError("Coordinate outside allowed range")

    monkeypatch.setattr("edgedb.boxes._native.form_boxes", form_boxes)
    with pytest.raises(InvalidInputError, match="box formation failed: Coordinate outside allowed range"):
        edgedb.boxes_from_prob(text_map())
