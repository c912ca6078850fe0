"""Faults and bad input that once ended in a traceback, a hang or lost data (issue 19):
Ctrl-C, a full disk while writing, a frame source that fails, image headers of every
format OpenCV reads, runs too large for the memory of an edge device, and model
arguments of the wrong type."""

from __future__ import annotations

import errno
import json
import os

import cv2
import numpy as np
import onnx
import pytest

from edgedb import EdgeDetector
from edgedb import _files, memory, preprocess
from edgedb.cli import main
from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.preprocess import read_image
from edgedb.synthetic import make_text_image


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three small text images."""
    root = tmp_path_factory.mktemp("faults")
    for index in range(3):
        cv2.imwrite(str(root / f"scan-{index}.png"), make_text_image(index, size=(96, 128)).image)
    return root


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_during_detect_reports_what_finished_and_exits_130(folder, tmp_path, monkeypatch, capsys):
    detect = EdgeDetector.detect
    calls = []

    def interrupted_on_the_second(self, image, *args, **kwargs):
        calls.append(image)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return detect(self, image, *args, **kwargs)

    monkeypatch.setattr(EdgeDetector, "detect", interrupted_on_the_second)
    out = tmp_path / "o.json"
    assert main(["detect", str(folder), "--json", str(out)]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == "edgedb detect: interrupted"
    assert "Traceback" not in captured.err
    written = json.loads(out.read_text())
    assert written["interrupted"] is True and len(written["images"]) == 1


def test_ctrl_c_while_loading_is_one_line(tmp_path, monkeypatch, capsys):
    from edgedb.synthetic import make_dataset

    make_dataset(tmp_path, 1, seed=3, size=(96, 128))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EdgeDetector, "__init__", interrupted)
    assert main(["eval", "--images", str(tmp_path), "--gt", str(tmp_path / "gt")]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == "edgedb eval: interrupted"
    assert "Traceback" not in captured.err


def test_a_real_sigint_during_detect_over_a_folder(tmp_path):
    import signal
    import subprocess
    import sys

    for index in range(150):  # far more than the moment the signal takes to arrive
        cv2.imwrite(str(tmp_path / f"scan-{index:03d}.png"), make_text_image(index % 3, size=(96, 128)).image)
    process = subprocess.Popen([sys.executable, "-m", "edgedb", "detect", str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               # a job started in the background inherits SIGINT ignored, and Python
                               # then leaves it so: the child gets the default a terminal gives
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "scan-000.png" in process.stdout.readline()  # unbuffered: the folder is being detected now
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1] == "edgedb detect: interrupted" and "Traceback" not in err


# -- a full disk ------------------------------------------------------------------------


def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "o.json"
    path.write_text('{"earlier": true}')
    monkeypatch.setattr(_files, "_flush_to_disk", full_disk)
    with pytest.raises(OSError) as raised:
        _files.write_atomically(path, '{"later": true}')
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_text() == '{"earlier": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_a_fresh_output_is_whole_or_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "_flush_to_disk", full_disk)
    with pytest.raises(OSError):
        _files.write_atomically(tmp_path / "fresh.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "shared.json"
    path.write_text("{}")
    path.chmod(0o640)
    _files.write_atomically(path, "[]")
    assert path.read_text() == "[]" and (path.stat().st_mode & 0o777) == 0o640


def test_detect_json_on_a_full_disk_keeps_the_earlier_json(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "o.json"
    out.write_text('{"images": []}')
    monkeypatch.setattr(_files, "_flush_to_disk", full_disk)
    assert main(["detect", str(folder), "--json", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_text() == '{"images": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_a_full_disk_while_caching_the_rewrite_leaves_no_temporary(tmp_path, monkeypatch):
    from edgedb.detector import load_deployable

    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx, "save", full_disk)  # what _files.save_onnx calls
    model, _spec = load_deployable("ppocrv4-det")  # the rewrite still comes back
    assert model.graph.node
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


# -- a frame source that fails ----------------------------------------------------------


def test_stream_yields_every_frame_before_the_sources_error(detector):
    frames = [make_text_image(index, size=(96, 128)).image for index in range(3)]

    def source():
        yield from frames
        raise RuntimeError("camera unplugged")

    results = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for boxes in detector.stream(source()):
            results.append(boxes)
    assert len(results) == 3
    assert [len(b) for b in results] == [len(detector.detect(f)) for f in frames]


# -- image headers ----------------------------------------------------------------------

# Every format this OpenCV writes (and so reads) beside the five of test_limits.
WRITTEN = {
    "ppm": lambda image: image,
    "pgm": lambda image: cv2.cvtColor(image, cv2.COLOR_BGR2GRAY),
    "pam": lambda image: image,
    "pfm": lambda image: image.astype(np.float32) / 255,
    "hdr": lambda image: image.astype(np.float32) / 255,
    "ras": lambda image: image,
    "gif": lambda image: image,
    "avif": lambda image: image,
}


@pytest.mark.parametrize("suffix", sorted(WRITTEN))
def test_every_formats_header_gives_the_decoded_size(tmp_path, suffix):
    image = make_text_image(0, size=(40, 72)).image
    path = tmp_path / f"image.{suffix}"
    if not cv2.imwrite(str(path), WRITTEN[suffix](image)):
        pytest.skip(f"this OpenCV build writes no .{suffix}")
    with open(path, "rb") as file:
        kind, size = preprocess._header_size(file)
    assert kind and size == (72, 40)
    assert read_image(path).shape[:2] == (40, 72)


def radiance_declaring(width: int, height: int) -> bytes:
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (height, width) + b"\x02\x02" * 64


def test_a_radiance_bomb_named_png_is_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "innocent.png"
    path.write_bytes(radiance_declaring(20000, 20000))
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded a file over the limit"))
    monkeypatch.setattr(cv2, "imread", lambda *a, **k: pytest.fail("decoded a file over the limit"))
    with pytest.raises(InvalidInputError, match="over the limit"):
        read_image(path)


def test_content_no_format_starts_with_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x00\x01\x02 this is no image format" * 10)
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded an unknown format"))
    with pytest.raises(InvalidInputError, match="not an image OpenCV can read"):
        read_image(path)


def test_a_radiance_header_without_a_size_is_refused(tmp_path):
    path = tmp_path / "broken.hdr"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\nno size here\n")
    with pytest.raises(InvalidInputError, match="header is damaged"):
        read_image(path)


# -- memory of an edge device -----------------------------------------------------------


def test_an_input_over_the_memory_budget_is_refused_before_any_work(capsys):
    assert main(["detect", "--input-size", "8192x8192"]) == 2
    err = capsys.readouterr().err
    assert "GiB needed" in err and "--input-size" in err and len(err.strip().splitlines()) == 1


def test_the_memory_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "64M")
    with pytest.raises(InvalidInputError, match="memory budget of 0.1 GiB"):
        memory.check_inference_memory(736 * 1280, "a frame", "use a smaller one")
    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "lots")
    with pytest.raises(InvalidInputError, match=memory.MEMORY_BUDGET_ENV):
        memory.check_inference_memory(1, "a frame", "")


def test_streams_over_the_budget_are_refused_before_any_detector(monkeypatch):
    from edgedb.bench.runner import run_benchmark

    monkeypatch.setenv(memory.MEMORY_BUDGET_ENV, "1G")
    monkeypatch.setattr(EdgeDetector, "__init__", lambda *a, **k: pytest.fail("made a detector"))
    frames = [np.zeros((720, 1280, 3), np.uint8)]
    with pytest.raises(InvalidInputError, match="fewer streams"):
        run_benchmark("ppocrv4-det", images=frames, streams=8, iterations=1)


# -- model arguments of the wrong type --------------------------------------------------


@pytest.mark.parametrize("model", [None, 123, b"ppocrv4-det", ["ppocrv4-det"]])
def test_a_model_of_the_wrong_type_is_named(model):
    with pytest.raises(InvalidInputTypeError, match="model must be"):
        EdgeDetector(model)


def test_a_path_like_model_is_accepted(tmp_path):
    from edgedb.models import resolve_model

    path = resolve_model("ppocrv4-det")
    assert resolve_model(os.fspath(path)) == path
