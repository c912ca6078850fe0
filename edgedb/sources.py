"""Frames from video files, cameras, network streams and GStreamer pipelines.

``open_source(text)`` reads whatever OpenCV's ``VideoCapture`` can: a video file, a camera
(``0``, ``/dev/video0``), an RTSP/HTTP/UDP URL, or a GStreamer pipeline string ending in
``appsink`` (what a Jetson CSI camera needs). Iterating it gives :class:`Frame` objects
(index, timestamp, BGR image), which ``EdgeDetector.stream_frames`` runs with its pipelining.

A file is read frame by frame, none lost. A live source (camera, stream, pipeline) is read
by a thread that keeps only the newest frame: frames that arrive while the consumer is
busy replace the one waiting and are counted as dropped, so a slow detector sees the
present, never a queue that grows. Opening and reading live sources time out; a stream
that stops ends the iteration cleanly after the frames already given, and
``stats.ended`` says why.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from edgedb.errors import InvalidInputError, MissingDependencyError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv",
                            ".3gp", ".mjpeg", ".mjpg", ".y4m"})
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_CAMERA_DEVICE = re.compile(r"^/dev/video(\d+)$")
GSTREAMER_HELP = ("the OpenCV wheels on PyPI (opencv-python and friends) are built with FFmpeg but without GStreamer. "
                  "On a Jetson use JetPack's OpenCV, which has it: pip uninstall opencv-python opencv-python-headless, "
                  "then sudo apt install python3-opencv (in a venv made with --system-site-packages). Elsewhere "
                  "build OpenCV with -DWITH_GSTREAMER=ON")


@dataclass(frozen=True)
class Frame:
    """One frame of a source.

    Attributes:
        index: the frame's position in the source, from 0, counting the frames skipped
            (``every``) and dropped (live sources) too.
        timestamp: seconds: for files the frame's time in the video (index / fps where the
            file states its rate); for live sources the time since the source opened.
        image: the BGR uint8 image, (H, W, 3).
        captured: ``time.perf_counter()`` when the frame was read, for latencies.
    """

    index: int
    timestamp: float
    image: np.ndarray
    captured: float


@dataclass
class SourceStats:
    """What a source did: frames ``read`` from it, ``delivered`` to the caller, ``skipped``
    (``every``), ``dropped`` (a live source's frames replaced before anyone took them),
    and why it ``ended`` ("" while it runs)."""

    read: int = 0
    delivered: int = 0
    skipped: int = 0
    dropped: int = 0
    ended: str = ""


def source_kind(source: Union[str, int, os.PathLike]) -> str:
    """``"camera"``, ``"stream"``, ``"pipeline"`` or ``"file"``, by how ``source`` is written:
    an integer or /dev/videoN is a camera, ``scheme://...`` a stream (``file://`` a file), a
    string with ``!`` between elements a GStreamer pipeline, anything else a file path."""
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return "camera"
    text = os.fspath(source)
    if text.strip().isdigit() or _CAMERA_DEVICE.match(text.strip()):
        return "camera"
    if " ! " in text or text.rstrip().endswith("appsink"):
        return "pipeline"
    if _URL.match(text) and not text.startswith("file://"):
        return "stream"
    return "file"


def looks_like_video(source: Union[str, os.PathLike]) -> bool:
    """Whether ``source`` names a video source rather than an image: any camera, stream or
    pipeline, or a file with a video suffix."""
    kind = source_kind(source)
    return kind != "file" or Path(os.fspath(source)).suffix.lower() in VIDEO_SUFFIXES


def has_gstreamer() -> bool:
    """Whether the installed OpenCV was built with GStreamer."""
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


class VideoSource:
    """Frames of a video file, camera, stream or pipeline (see the module doc).

    Args:
        source: a file path, a camera index or ``/dev/videoN``, a URL, or a GStreamer
            pipeline string (ending in ``appsink``).
        every: deliver every Nth frame (the others are grabbed without decoding where the
            backend allows).
        live: treat as live (newest frame only, frames dropped while busy); default: True
            for cameras, streams and pipelines, False for files.
        open_timeout: seconds to wait for the source to open.
        read_timeout: seconds a live source may go without a frame before it counts as
            stopped.
        max_frames: stop after delivering this many frames (None: until the source ends).

    Raises (on construction):
        InvalidInputError: a file that does not exist or OpenCV cannot read as video, a
            camera or stream that does not open within ``open_timeout``, bad arguments.
        MissingDependencyError: a GStreamer pipeline with an OpenCV built without GStreamer.
    """

    def __init__(self, source: Union[str, int, os.PathLike], *, every: int = 1, live: Optional[bool] = None,
                 open_timeout: float = 10.0, read_timeout: float = 5.0, max_frames: Optional[int] = None):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise InvalidInputError(f"every must be an integer >= 1, got {every!r}")
        for name, value in (("open_timeout", open_timeout), ("read_timeout", read_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value!r}")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise InvalidInputError(f"max_frames must be an integer >= 1 or None, got {max_frames!r}")
        self.kind = source_kind(source)
        self.name = os.fspath(source) if not isinstance(source, (int, np.integer)) else str(int(source))
        self.live = self.kind != "file" if live is None else bool(live)
        self.every, self.read_timeout, self.max_frames = int(every), float(read_timeout), max_frames
        self.stats = SourceStats()
        self._closed = False
        self._capture = _open_capture(self.kind, self.name, float(open_timeout), float(read_timeout))
        import cv2

        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "file" else 0
        self._opened_at = time.perf_counter()
        self._iterating = False
        # Live sources: the reader thread's newest frame, guarded by a condition.
        self._condition = threading.Condition()
        self._latest: Optional[Frame] = None
        self._stop = threading.Event()
        self._reader: Optional[threading.Thread] = None

    # -- iteration --------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise InvalidInputError(f"the source {self.name} is closed")
        if self._iterating:
            raise InvalidInputError(f"the source {self.name} is already being read: iterate it once")
        self._iterating = True
        frames = self._live_frames() if self.live else self._file_frames()
        for frame in frames:
            self.stats.delivered += 1
            yield frame
            if self.max_frames is not None and self.stats.delivered >= self.max_frames:
                self.stats.ended = self.stats.ended or f"stopped after {self.max_frames} frames (max_frames)"
                break

    def _file_frames(self) -> Iterator[Frame]:
        capture, index = self._capture, 0
        while not self._closed:
            if index % self.every:
                if not capture.grab():  # skipped frames are not decoded
                    break
                self.stats.read += 1
                self.stats.skipped += 1
                index += 1
                continue
            ok, image = capture.read()
            if not ok or image is None:
                break
            self.stats.read += 1
            timestamp = index / self.fps if self.fps > 0 else _position_seconds(capture)
            yield Frame(index, timestamp, _as_bgr(image), time.perf_counter())
            index += 1
        if not self.stats.ended:
            self.stats.ended = self._file_end(index)

    def _file_end(self, read: int) -> str:
        if self._closed:
            return "closed"
        if self.frame_count > 0 and read < self.frame_count - 1:  # containers round their counts
            return (f"the file ended early: {read} of the {self.frame_count} frames it announces could be read "
                    "(truncated or damaged)")
        return "end of file"

    def _live_frames(self) -> Iterator[Frame]:
        self._reader = threading.Thread(target=self._read_live, name="edgedb-source", daemon=True)
        self._reader.start()
        while True:
            with self._condition:
                if self._latest is None and not self.stats.ended:
                    self._condition.wait_for(lambda: self._latest is not None or bool(self.stats.ended),
                                             timeout=self.read_timeout)
                frame, self._latest = self._latest, None
                if frame is None:
                    if not self.stats.ended:
                        self.stats.ended = f"no frame for {self.read_timeout:g} s (the source stalled)"
                        self._stop.set()
                    return
            yield frame

    def _read_live(self) -> None:
        """The reader thread: reads as fast as the source sends, keeps the newest frame."""
        capture, index = self._capture, 0
        try:
            while not self._stop.is_set():
                ok, image = capture.read()
                if not ok or image is None:
                    reason = "closed" if self._stop.is_set() else f"the source stopped sending after {index} frames"
                    break
                captured = time.perf_counter()
                with self._condition:
                    self.stats.read += 1
                    if index % self.every:
                        self.stats.skipped += 1
                    else:
                        if self._latest is not None:
                            self.stats.dropped += 1
                        self._latest = Frame(index, captured - self._opened_at, _as_bgr(image), captured)
                        self._condition.notify_all()
                index += 1
            else:
                reason = "closed"
        except Exception as error:  # a backend failing mid-stream ends it, with the reason kept
            reason = f"reading failed after {index} frames: {error}"
        with self._condition:
            self.stats.ended = self.stats.ended or reason
            self._condition.notify_all()

    # -- life -------------------------------------------------------------------------
    def close(self) -> None:
        """Stops the reader and releases the capture; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        reader = self._reader
        if reader is not None and reader.is_alive():
            reader.join(self.read_timeout + 1.0)
            if reader.is_alive():  # stuck inside the backend's read: leave it (daemon) rather than free under it
                self.stats.ended = self.stats.ended or "closed"
                return
        self._capture.release()
        self.stats.ended = self.stats.ended or "closed"

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def open_source(source: Union[str, int, os.PathLike], **options) -> VideoSource:
    """A :class:`VideoSource` over ``source``; ``options`` as for VideoSource."""
    return VideoSource(source, **options)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Grey or BGRA frames (some cameras, some pipelines) as BGR."""
    import cv2

    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _position_seconds(capture) -> float:
    import cv2

    return float(capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1e3


def _open_capture(kind: str, name: str, open_timeout: float, read_timeout: float):
    """Opens the capture in a thread so that a source that never answers cannot hang the
    caller; OpenCV's own timeouts are passed too where its backend takes them."""
    import cv2

    if kind == "pipeline" and not has_gstreamer():
        raise MissingDependencyError(f"{name!r} is a GStreamer pipeline, and this OpenCV ({cv2.__version__}) has no "
                                     f"GStreamer: {GSTREAMER_HELP}")
    if kind == "file":
        path = Path(name[len("file://"):] if name.startswith("file://") else name)
        if not path.is_file():
            raise InvalidInputError(f"no video file {str(path)!r}" + (" (it is a folder)" if path.is_dir() else ""))
        target, api = str(path), cv2.CAP_ANY
    elif kind == "camera":
        device = _CAMERA_DEVICE.match(name.strip())
        target, api = int(device.group(1) if device else name.strip()), cv2.CAP_ANY
    elif kind == "pipeline":
        target, api = name, cv2.CAP_GSTREAMER
    else:
        target, api = name, cv2.CAP_FFMPEG
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1e3), cv2.CAP_PROP_READ_TIMEOUT_MSEC,
              int(read_timeout * 1e3)]
    result: dict = {}

    def open_it() -> None:
        try:
            capture = cv2.VideoCapture(target, api, params)
        except cv2.error as error:
            result["error"] = str(error).strip()
            return
        if result.get("abandoned"):  # the caller gave up: do not leak the device
            capture.release()
        result["capture"] = capture

    opener = threading.Thread(target=open_it, name="edgedb-source-open", daemon=True)
    opener.start()
    opener.join(open_timeout + 1.0)
    capture = result.get("capture")
    if opener.is_alive() or (capture is None and "error" not in result):
        result["abandoned"] = True
        raise InvalidInputError(f"{_described(kind, name)} did not open within {open_timeout:g} s"
                                f"{_hint(kind)}")
    if capture is None or not capture.isOpened():
        if capture is not None:
            capture.release()
        detail = f": {result['error']}" if "error" in result else ""
        raise InvalidInputError(f"cannot open {_described(kind, name)}{detail}{_hint(kind)}")
    return capture


def _described(kind: str, name: str) -> str:
    return {"file": f"the video file {name!r}", "camera": f"camera {name}", "stream": f"the stream {name}",
            "pipeline": f"the GStreamer pipeline {name!r}"}[kind]


def _hint(kind: str) -> str:
    if kind == "file":
        return " (not a video OpenCV's FFmpeg can read, or damaged before its first frame)"
    if kind == "camera":
        present = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
        return (f" (no such camera, or it is in use; this machine has {', '.join(present)})" if present
                else " (this machine shows no /dev/video* camera)")
    if kind == "stream":
        return " (unreachable, a wrong address or credentials, or a codec this OpenCV lacks)"
    return (" (GStreamer could not start it: check the element names and caps; gst-launch-1.0 with the same "
            "pipeline, appsink replaced by fakesink, names the element that fails)")
