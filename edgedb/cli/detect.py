"""``edgedb detect``: EdgeDetector on images, folders or a generated sample."""

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
    detect = commands.add_parser("detect", help="detect text in images",
                                 description="Runs EdgeDetector on images or folders of images. "
                                 "Without images, on a generated sample image.")
    detect.add_argument("images", nargs="*", type=Path, help="image files or folders (default: a generated sample)")
    detect.add_argument("--sample", action="store_true", help="also run on a generated sample image")
    detect.add_argument("--json", metavar="FILE", help="write the boxes as JSON (- for stdout)")
    detect.add_argument("--draw", type=Path, metavar="DIR",
                        help="write each image with its boxes drawn into DIR as NAME_EXT.png (a.jpg -> a_jpg.png); "
                             "never over an input image")
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
