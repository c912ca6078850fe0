"""Detection over a video source, with its outputs: JSON Lines as it goes, an annotated
video, and a summary (frames read, processed, skipped, dropped; fps; latencies).

``VideoDetection(detector, source, jsonl=..., draw=...).run()`` is what ``edgedb detect
VIDEO`` does; a Python app that wants only the boxes iterates
``detector.stream_frames(source)`` itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO, Union

from edgedb.bench.stats import median, percentile
from edgedb.boxes import TextBox
from edgedb.errors import EdgeDBError, InvalidInputError

# Writer codecs the PyPI OpenCV wheels carry, by container.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclass
class VideoSummary:
    """The end of a run. ``latency_ms``: from a frame being read to its boxes being ready
    (p50, p90, p99); ``fps``: processed frames over the run's wall time."""

    source: str
    kind: str
    read: int = 0
    processed: int = 0
    skipped: int = 0
    dropped: int = 0
    boxes: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    latency_ms: dict = field(default_factory=dict)
    ended: str = ""
    interrupted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        latency = ", ".join(f"{k} {v:.1f}" for k, v in self.latency_ms.items())
        return (f"{self.source}: {self.read} frames read, {self.processed} processed, {self.skipped} skipped, "
                f"{self.dropped} dropped; {self.boxes} boxes; {self.fps:.1f} fps"
                + (f"; latency ms {latency}" if latency else "")
                + f"; ended: {'interrupted (Ctrl-C)' if self.interrupted else self.ended or 'running'}")


def writer_fourcc(path: Union[str, Path]) -> str:
    """The codec ``--draw`` uses for a file, by its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FOURCC:
        raise InvalidInputError(f"cannot write a video as {suffix or 'a file without a suffix'}: "
                                f"use one of {', '.join(sorted(_FOURCC))}")
    return _FOURCC[suffix]


class VideoDetection:
    """Runs ``detector`` over ``source`` (an ``edgedb.sources.VideoSource``).

    Args:
        detector: an ``EdgeDetector``.
        source: the frames; its ``stats`` feed the summary.
        jsonl: a text stream; one JSON object per processed frame (``frame``, ``time``,
            ``width``, ``height``, ``boxes``) is written and flushed as each frame is done,
            so a run cut off at any point leaves whole lines.
        draw: write the frames with their boxes drawn to this video file (``.mp4``, ``.avi``,
            ``.mkv``, ``.mov``), at the source's rate divided by its ``every``.
        on_frame: called with ``(frame, boxes)`` after each frame's outputs.
    """

    def __init__(self, detector, source, *, jsonl: Optional[TextIO] = None,
                 draw: Optional[Union[str, Path]] = None, on_frame: Optional[Callable] = None):
        self.detector, self.source, self.jsonl, self.on_frame = detector, source, jsonl, on_frame
        self.draw = Path(draw) if draw is not None else None
        if self.draw is not None:
            writer_fourcc(self.draw)
            if self.draw.is_dir():
                raise InvalidInputError(f"the drawing {self.draw} is a folder: give a video file such as out.mp4")
            if not self.draw.parent.is_dir():
                raise InvalidInputError(f"the drawing's folder {self.draw.parent} does not exist")
        self._writer = None
        self._latencies: list[float] = []
        self._summary = VideoSummary(source.name, source.kind)
        self._started = None

    def run(self) -> VideoSummary:
        """Runs to the source's end (or ``max_frames``). Ctrl-C ends the run with the
        outputs finished (the last JSON line whole, the video file closed) and is raised
        again; ``summary()`` then tells what was done."""
        self._started = time.perf_counter()
        try:
            for frame, boxes in self.detector.stream_frames(self.source):
                self._done(frame, boxes)
        except KeyboardInterrupt:
            self._summary.interrupted = True
            raise
        finally:
            self._finish()
        return self._summary

    def summary(self) -> VideoSummary:
        return self._summary

    def _done(self, frame, boxes) -> None:
        self._latencies.append((time.perf_counter() - frame.captured) * 1e3)
        self._summary.processed += 1
        self._summary.boxes += len(boxes)
        if self.jsonl is not None:
            height, width = frame.image.shape[:2]
            line = {"frame": frame.index, "time": round(frame.timestamp, 4), "width": width, "height": height,
                    "boxes": [box.to_dict() for box in boxes]}
            self.jsonl.write(json.dumps(line) + "\n")
            self.jsonl.flush()
        if self.draw is not None:
            self._write(frame.image, boxes)
        if self.on_frame is not None:
            self.on_frame(frame, boxes)

    def _write(self, image, boxes) -> None:
        import cv2

        from edgedb.visualize import draw_boxes

        height, width = image.shape[:2]
        if self._writer is None:
            rate = self.source.fps / self.source.every if self.source.fps > 0 else 25.0
            fourcc = cv2.VideoWriter_fourcc(*writer_fourcc(self.draw))
            self._writer = cv2.VideoWriter(str(self.draw), fourcc, rate, (width, height))
            self._size = (width, height)
            if not self._writer.isOpened():
                self._writer = None
                raise EdgeDBError(f"OpenCV cannot write the video {self.draw} ({writer_fourcc(self.draw)})")
        if (width, height) != self._size:  # a stream that changes its size mid-way
            image = cv2.resize(image, self._size)
            scale = (self._size[0] / width, self._size[1] / height)
            drawn = draw_boxes(image, [TextBox(b.points * scale, b.score) for b in boxes])
        else:
            drawn = draw_boxes(image, boxes)
        self._writer.write(drawn)

    def _finish(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        stats, summary = self.source.stats, self._summary
        summary.read, summary.skipped, summary.dropped = stats.read, stats.skipped, stats.dropped
        summary.ended = stats.ended
        summary.seconds = time.perf_counter() - self._started if self._started else 0.0
        summary.fps = summary.processed / summary.seconds if summary.seconds > 0 else 0.0
        if self._latencies:
            summary.latency_ms = {"p50": median(self._latencies), "p90": percentile(self._latencies, 90),
                                  "p99": percentile(self._latencies, 99)}
