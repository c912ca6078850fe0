"""Video sources and detection over them, on videos the tests write (cv2.VideoWriter over
generated text scenes): files, truncated files, live reading with dropped frames, stalls
and timeouts (stand-in captures), a real HTTP stream cut mid-way, the CLI and Ctrl-C."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from edgedb import EdgeDetector
from edgedb import sources as sources_module
from edgedb.cli import main
from edgedb.errors import InvalidInputError, MissingDependencyError
from edgedb.sources import VideoSource, looks_like_video, source_kind
from edgedb.synthetic import make_text_image
from edgedb.video import VideoDetection

SIZE = (192, 320)  # height, width: small, so the suite stays quick


def _write_video(path, frames: int, fourcc: str = "MJPG", fps: float = 10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (SIZE[1], SIZE[0]))
    assert writer.isOpened()
    scenes = [make_text_image(seed, size=SIZE).image for seed in range(3)]
    for index in range(frames):
        writer.write(scenes[index % 3])
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return _write_video(tmp_path_factory.mktemp("video") / "scenes.avi", 12)


@pytest.fixture(scope="module")
def detector():
    with EdgeDetector(threads=1) as detector:
        yield detector


@pytest.mark.parametrize("text, kind", [
    ("0", "camera"), ("/dev/video2", "camera"), ("rtsp://cam/live", "stream"), ("http://x:8080/a.mjpg", "stream"),
    ("nvarguscamerasrc ! video/x-raw(memory:NVMM) ! nvvidconv ! appsink", "pipeline"), ("clip.mp4", "file"),
    ("file:///tmp/a.avi", "file"),
])
def test_sources_are_told_apart_by_how_they_are_written(text, kind):
    assert source_kind(text) == kind
    assert source_kind(3) == "camera"
    assert looks_like_video("a.MKV") and looks_like_video("0") and not looks_like_video("photo.jpg")


def test_a_file_gives_every_frame_in_order_with_its_time(video):
    with VideoSource(video) as source:
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert [f.timestamp for f in frames] == pytest.approx([i / 10 for i in range(12)])
    assert frames[0].image.shape == (*SIZE, 3) and frames[0].image.dtype == np.uint8
    assert source.stats.read == 12 and source.stats.delivered == 12 and source.stats.ended == "end of file"


def test_every_and_max_frames(video):
    with VideoSource(video, every=4) as source:
        assert [f.index for f in source] == [0, 4, 8]
    assert (source.stats.read, source.stats.skipped) == (12, 9)
    with VideoSource(video, max_frames=2) as source:
        assert len(list(source)) == 2
    assert "max_frames" in source.stats.ended


def test_stream_frames_pairs_each_frame_with_its_boxes_as_detect_would(video, detector):
    with VideoSource(video, max_frames=3) as source:
        pairs = list(detector.stream_frames(source))
    assert [frame.index for frame, _ in pairs] == [0, 1, 2]
    for frame, boxes in pairs:
        expected = detector.detect(frame.image)
        assert len(boxes) == len(expected) > 0
        assert all(np.array_equal(a.points, b.points) for a, b in zip(boxes, expected))


def test_a_truncated_file_ends_cleanly_with_the_frames_it_has(tmp_path, detector):
    whole = _write_video(tmp_path / "whole.avi", 20).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: len(whole) // 2])
    lines = tmp_path / "out.jsonl"
    with VideoSource(cut) as source, lines.open("w") as out:
        summary = VideoDetection(detector, source, jsonl=out).run()
    assert 0 < summary.processed < 20
    assert "ended early" in summary.ended and "truncated" in summary.ended
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [row["frame"] for row in rows] == list(range(summary.processed))


@pytest.mark.parametrize("content, message", [(None, "no video file"), (b"\x00not a video" * 50, "cannot open the video")])
def test_a_missing_or_unreadable_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        VideoSource(path)


def test_a_gstreamer_pipeline_without_gstreamer_names_the_fix(monkeypatch):
    monkeypatch.setattr(sources_module, "has_gstreamer", lambda: False)
    with pytest.raises(MissingDependencyError, match="JetPack's OpenCV"):
        VideoSource("videotestsrc ! videoconvert ! appsink")


def test_a_missing_camera_is_refused_within_the_open_timeout():
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="camera 9"):
        VideoSource("9", open_timeout=2)
    assert time.perf_counter() - start < 4


class _StandInCapture:
    """Behaves like cv2.VideoCapture for the reader: ``read()`` gives frames at ``fps``, then
    blocks (``stall``) or fails (a stream that stopped)."""

    def __init__(self, frames: int, fps: float, stall: bool = False):
        self.left, self.period, self.stall = frames, 1 / fps, stall
        self.image = make_text_image(0, size=SIZE).image
        self.released = threading.Event()

    def isOpened(self):
        return True

    def get(self, prop):
        return 0.0

    def read(self):
        if self.left <= 0:
            if self.stall:
                self.released.wait(30)
            return False, None
        time.sleep(self.period)
        self.left -= 1
        return True, self.image.copy()

    def release(self):
        self.released.set()


def test_a_live_source_keeps_the_newest_frame_and_counts_the_dropped(monkeypatch):
    capture = _StandInCapture(frames=40, fps=200)
    monkeypatch.setattr(sources_module, "_open_capture", lambda *args: capture)
    taken = []
    with VideoSource("rtsp://stand-in/live") as source:
        for frame in source:
            taken.append(frame.index)
            time.sleep(0.03)  # a consumer slower than the source
    stats = source.stats
    assert stats.read == 40 and stats.dropped > 10
    assert stats.delivered + stats.dropped == 40 and taken == sorted(taken)
    assert "stopped sending after 40 frames" in stats.ended


def test_a_stalled_live_source_ends_after_the_read_timeout(monkeypatch):
    monkeypatch.setattr(sources_module, "_open_capture", lambda *args: _StandInCapture(frames=3, fps=100, stall=True))
    start = time.perf_counter()
    with VideoSource("0", read_timeout=0.5) as source:
        frames = list(source)
    assert len(frames) >= 1 and "no frame for 0.5 s" in source.stats.ended
    assert time.perf_counter() - start < 5


def test_a_source_that_never_opens_times_out(monkeypatch):
    def hang(*args):
        time.sleep(30)

    monkeypatch.setattr(cv2, "VideoCapture", hang)
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="did not open within 0.5 s"):
        VideoSource("rtsp://192.0.2.1/never", open_timeout=0.5)
    assert time.perf_counter() - start < 3


class _CutServer(http.server.SimpleHTTPRequestHandler):
    """Serves a file, then closes the connection half-way through: a stream dropping."""

    def copyfile(self, source, outputfile):
        data = source.read()
        outputfile.write(data[: len(data) // 2])

    def log_message(self, *args):
        pass


def test_a_real_http_stream_that_drops_mid_way_ends_cleanly(tmp_path, detector):
    _write_video(tmp_path / "live.avi", 40)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_CutServer, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.avi"
        with VideoSource(url, open_timeout=10, read_timeout=3) as source:
            summary = VideoDetection(detector, source).run()
    finally:
        server.shutdown()
    assert source.live and 0 < summary.processed and summary.read < 40
    assert summary.read == summary.processed + summary.dropped
    assert "stopped sending" in summary.ended


def test_cli_writes_json_lines_and_an_annotated_video(tmp_path, video, capsys):
    lines, drawn = tmp_path / "boxes.jsonl", tmp_path / "out" / "drawn.mp4"
    assert main(["detect", str(video), "--every", "2", "--jsonl", str(lines), "--draw", str(drawn)]) == 0
    rows = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [row["frame"] for row in rows] == [0, 2, 4, 6, 8, 10]
    assert rows[2]["time"] == pytest.approx(0.4) and rows[0]["boxes"] and set(rows[0]) == {
        "frame", "time", "width", "height", "boxes"}
    err = capsys.readouterr().err
    assert "12 frames read, 6 processed, 6 skipped, 0 dropped" in err and "latency ms p50" in err
    written = cv2.VideoCapture(str(drawn))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    ok, first = written.read()
    assert ok and first.shape == (*SIZE, 3)


def test_cli_refuses_mixed_inputs_and_image_flags(tmp_path, video, capsys):
    assert main(["detect", str(video), str(video)]) == 2
    assert "give it alone" in capsys.readouterr().err
    assert main(["detect", str(video), "--json", str(tmp_path / "a.json")]) == 2
    assert "use --jsonl" in capsys.readouterr().err
    assert main(["detect", str(video), "--draw", str(tmp_path / "a.gif")]) == 2
    assert "--draw" in capsys.readouterr().err
    assert main(["detect", "--every", "2"]) == 2
    assert "--every is for a video source" in capsys.readouterr().err


def test_cli_errors_on_a_bad_source_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.mkv").write_bytes(b"\x1a\x45\xdf\xa3 not really")
    assert main(["detect", str(tmp_path / "bad.mkv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgedb detect: error: cannot open the video file")


def test_ctrl_c_during_a_video_leaves_whole_lines_and_a_summary(tmp_path):
    long_video = _write_video(tmp_path / "long.avi", 400)
    lines = tmp_path / "boxes.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "edgedb", "detect", str(long_video), "--jsonl", "-",
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = process.stdout.readline()
    assert json.loads(first)["frame"] == 0
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    lines.write_text(first + out)
    rows = [json.loads(line) for line in lines.read_text().splitlines()]  # every line whole
    assert [row["frame"] for row in rows] == list(range(len(rows))) and len(rows) < 400
    assert process.returncode == 130
    assert "interrupted (Ctrl-C)" in err and err.strip().splitlines()[-1] == "edgedb detect: interrupted"
