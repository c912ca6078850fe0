"""``edgedb detect``: EdgeDetector on images, folders, a generated sample, or one video
source (file, camera, stream, GStreamer pipeline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from edgedb._files import atomic_output
from edgedb.cli._common import (
    _add_detector_arguments,
    _add_strict_argument,
    _bounded_float,
    _bounded_int,
    _check_output,
    _counted,
    _detector,
    _Interruption,
    _Skipped,
    _write_text,
)
from edgedb.errors import EdgeDBError, InvalidInputError
from edgedb.preprocess import IMAGE_SUFFIXES


def add_parser(commands) -> None:
    detect = commands.add_parser("detect", help="detect text in images or video",
                                 description="Runs EdgeDetector on images or folders of images, or on one video "
                                 "source: a video file, a camera (0, /dev/video0), a stream URL (rtsp://, http://) or "
                                 "a GStreamer pipeline ending in appsink. Without images, on a generated sample image.")
    detect.add_argument("images", nargs="*", metavar="SOURCE",
                        help="image files or folders (default: a generated sample), or one video source")
    detect.add_argument("--sample", action="store_true", help="also run on a generated sample image")
    detect.add_argument("--json", metavar="FILE", help="write the boxes as JSON (- for stdout)")
    detect.add_argument("--draw", type=Path, metavar="PATH",
                        help="images: write each image with its boxes drawn into the folder PATH as NAME_EXT.png "
                             "(a.jpg -> a_jpg.png), never over an input image; video: write the annotated video to "
                             "PATH (.mp4, .avi, .mkv, .mov)")
    video = detect.add_argument_group("video sources (edgedb.sources.VideoSource, edgedb.video.VideoDetection)")
    video.add_argument("--jsonl", metavar="FILE",
                       help="write one JSON line per processed frame (frame, time, width, height, boxes), flushed "
                            "as it goes (- for stdout)")
    video.add_argument("--every", type=_bounded_int(1), default=1, metavar="N", help="process every Nth frame (default 1)")
    video.add_argument("--max-frames", type=_bounded_int(1), metavar="N", help="stop after N processed frames")
    video.add_argument("--open-timeout", type=_bounded_float(0, open_low=True), default=10.0, metavar="S",
                       help="seconds to wait for the source to open (default 10)")
    video.add_argument("--read-timeout", type=_bounded_float(0, open_low=True), default=5.0, metavar="S",
                       help="seconds a camera or stream may send nothing before it counts as stopped (default 5)")
    _add_strict_argument(detect)
    _add_detector_arguments(detect)
    detect.set_defaults(run=_cmd_detect)


def _image_paths(inputs: Sequence[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise EdgeDBError(f"{item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise EdgeDBError(f"{item}: no such file or folder")
    return paths


def _drawing_names(names: Sequence[str], folder: Path, inputs: Sequence[Path]) -> list[Path]:
    """Where each image's drawing goes: ``a.jpg`` -> ``a_jpg.png`` (so ``a.jpg`` and ``a.png``
    do not meet), with ``-2``, ``-3`` ... added when two names still meet (same file name in
    two folders) or a name is one of the input images: a drawing never replaces an input."""
    taken = {path.resolve() for path in inputs}
    targets = []
    for name in names:
        path = Path(name)
        stem = f"{path.stem}_{path.suffix[1:].lower()}" if path.suffix else path.stem
        target, n = folder / f"{stem}.png", 1
        while target.resolve() in taken:
            n += 1
            target = folder / f"{stem}-{n}.png"
        taken.add(target.resolve())
        targets.append(target)
    return targets


def _write_drawing(path: Path, drawing) -> None:
    import cv2

    with atomic_output(path) as temporary:
        try:
            written = cv2.imwrite(str(temporary), drawing)
        except cv2.error as error:
            raise EdgeDBError(f"cannot write the drawing {path}: {str(error).strip()}") from None
        if not written:
            raise EdgeDBError(f"cannot write the drawing {path}")


def _cmd_detect(args: argparse.Namespace) -> int:
    from edgedb.sources import looks_like_video

    videos = [item for item in args.images if looks_like_video(item)]
    if videos:
        if len(args.images) > 1 or args.sample:
            raise EdgeDBError(f"{videos[0]} is a video source: give it alone (one video source per run, no images "
                              "or --sample beside it)")
        return _detect_video(args, videos[0])
    for flag, value in (("--jsonl", args.jsonl), ("--max-frames", args.max_frames)):
        if value is not None:
            raise EdgeDBError(f"{flag} is for a video source; for images use --json")
    if args.every != 1:
        raise EdgeDBError("--every is for a video source")
    args.images = [Path(item) for item in args.images]
    return _detect_images(args)


def _detect_video(args: argparse.Namespace, source: str) -> int:
    from edgedb.sources import VideoSource
    from edgedb.video import VideoDetection

    if args.json:
        raise EdgeDBError("--json writes one document for images; for a video source use --jsonl FILE "
                          "(one line per frame, written as it goes)")
    _check_output(args.jsonl, "--jsonl")
    if args.draw is not None:
        from edgedb.video import writer_fourcc

        try:
            writer_fourcc(args.draw)
        except InvalidInputError as error:
            raise EdgeDBError(f"--draw {args.draw}: {error}") from None
        _check_output(args.draw, "--draw", [Path(source)], make_folder=True)
    if not args.verbose:
        _quiet_video_backends()
    skipped = _Skipped("detect", args.strict)
    jsonl = None
    interruption = _Interruption()
    with VideoSource(source, every=args.every, open_timeout=args.open_timeout, read_timeout=args.read_timeout,
                     max_frames=args.max_frames) as frames, _detector(args, skipped) as detector:
        try:
            jsonl = sys.stdout if args.jsonl == "-" else (open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None)
        except OSError as error:
            raise EdgeDBError(f"--jsonl {args.jsonl}: cannot write it: {error.strerror}") from None
        bar = _video_progress(frames, printing=jsonl is None)
        run = VideoDetection(detector, frames, jsonl=jsonl, draw=args.draw,
                             on_frame=(lambda frame, boxes: bar.update(1)) if bar else _print_frame)
        try:
            with interruption:
                run.run()
        finally:
            if bar:
                bar.close()
            if jsonl is not None and jsonl is not sys.stdout:
                jsonl.close()
    print(run.summary(), file=sys.stderr)
    if args.jsonl and args.jsonl != "-":
        print(f"wrote {args.jsonl}", file=sys.stderr)
    if args.draw:
        print(f"drawn: {args.draw}", file=sys.stderr)
    interruption.resume()
    return 0


def _quiet_video_backends() -> None:
    """OpenCV and FFmpeg print their own lines about a source they cannot open; the command
    says it in one (-v keeps theirs). FFmpeg reads its level when first used."""
    import os

    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def _video_progress(frames, *, printing: bool):
    """A progress bar while the lines go to a file (a file of known length shows its total);
    None when each frame is printed."""
    if printing:
        return None
    from tqdm import tqdm

    total = -(-frames.frame_count // frames.every) if frames.frame_count else None
    if frames.max_frames and total:
        total = min(total, frames.max_frames)
    return tqdm(total=total, desc="detect", unit="frame", file=sys.stderr)


def _print_frame(frame, boxes) -> None:
    print(f"frame {frame.index} ({frame.timestamp:.2f} s): {_counted(len(boxes), 'box', 'boxes')}", flush=True)


def _detect_images(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgedb.preprocess import as_bgr_image
    from edgedb.visualize import draw_boxes

    sources: list[tuple[str, object]] = []
    if args.sample or not args.images:
        from edgedb.synthetic import make_text_image

        sources.append(("sample", make_text_image(0, size=(720, 1280)).image))
    paths = _image_paths(args.images)
    sources += [(str(path), path) for path in paths]
    _check_output(args.json, "--json", paths)
    if args.draw:
        if args.draw.exists() and not args.draw.is_dir():
            raise EdgeDBError(f"--draw {args.draw} is a file; give a folder")
        args.draw.mkdir(parents=True, exist_ok=True)
        drawings = _drawing_names([name for name, _ in sources], args.draw, paths)
    skipped = _Skipped("detect", args.strict)
    report = []
    interruption = _Interruption()
    with _detector(args, skipped) as detector, interruption:
        for index, (name, source) in enumerate(
                tqdm(sources, desc="detect", unit="image", disable=len(sources) < 3, file=sys.stderr)):
            try:
                image = as_bgr_image(source)
                boxes = detector.detect(image)
            except InvalidInputError as error:
                skipped.add(name, error)
                continue
            report.append({"image": name, "height": image.shape[0], "width": image.shape[1],
                           "boxes": [box.to_dict() for box in boxes]})
            if not args.json:
                print(f"{name}: {_counted(len(boxes), 'box', 'boxes')}")
                for box in boxes:
                    print(f"  {box.score:.3f}  " + " ".join(f"{x:.0f},{y:.0f}" for x, y in box.points))
            if args.draw:
                out = drawings[index]
                _write_drawing(out, draw_boxes(image, boxes))
                print(f"  drawn: {out}", file=sys.stderr if str(args.json) == "-" else sys.stdout)
    if args.json:
        _write_text(args.json, json.dumps({"images": report, "skipped": skipped.items,
                                           "interrupted": interruption.happened}, indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json} ({_counted(len(report), 'image')}{skipped.summary()}{interruption.summary()})")
    elif skipped.items:
        print(f"{_counted(len(report), 'image')}{skipped.summary()}")
    interruption.resume()
    skipped.check_some_left(len(report))
    return 0
