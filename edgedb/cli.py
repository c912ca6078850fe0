"""The ``edgedb`` command line: a thin layer over the library; every flag is an argument
of the function it calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgedb.errors import EdgeDBError

log = logging.getLogger("edgedb")


def _add_box_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of edgedb.boxes_from_prob."""
    group = parser.add_argument_group("box formation (edgedb.boxes_from_prob)")
    group.add_argument("--thresh", type=float, default=0.3, help="binarization threshold of the map (default 0.3)")
    group.add_argument("--box-thresh", type=float, default=0.6, help="minimum box score (default 0.6)")
    group.add_argument("--unclip-ratio", type=float, default=1.5, help="r' of the offset D' = A'r'/L' (default 1.5)")
    group.add_argument("--max-candidates", type=int, default=1000, help="regions considered at most (default 1000)")
    group.add_argument("--min-size", type=float, default=3, help="minimum short side of a region (default 3)")
    group.add_argument("--score-mode", choices=["fast", "slow"], default="fast", help="box (fast) or contour (slow) mean")
    group.add_argument("--box-type", choices=["quad", "poly"], default="quad", help="rectangles or polygons")
    group.add_argument("--use-dilation", action="store_true", help="dilate the binary map by 2x2 first")


def _box_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        thresh=args.thresh,
        box_thresh=args.box_thresh,
        unclip_ratio=args.unclip_ratio,
        max_candidates=args.max_candidates,
        min_size=args.min_size,
        score_mode=args.score_mode,
        box_type=args.box_type,
        use_dilation=args.use_dilation,
    )


def _read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EdgeDBError(f"cannot read {path} as an image (missing, unreadable or not an image file)")
    return image


def _cmd_boxes(args: argparse.Namespace) -> int:
    from edgedb.boxes import boxes_from_prob
    from edgedb.probmap import ProbabilityMapper

    inputs: list[tuple[str, np.ndarray]] = []
    if args.sample or not args.images:
        from edgedb.synthetic import make_text_image

        inputs.append(("sample (generated, seed 0)", make_text_image(0, size=(720, 1280)).image))
    inputs += [(str(path), _read_image(path)) for path in args.images]

    mapper = ProbabilityMapper(args.model, limit_side_len=args.limit_side_len, limit_type=args.limit_type)
    report = []
    for name, image in inputs:
        prob = mapper(image)
        start = time.perf_counter()
        boxes = boxes_from_prob(prob, dest_size=image.shape[:2], **_box_kwargs(args))
        elapsed = time.perf_counter() - start
        print(f"{name}: {image.shape[1]}x{image.shape[0]} image, {prob.shape[1]}x{prob.shape[0]} map, "
              f"{len(boxes)} boxes formed in {elapsed * 1e3:.2f} ms")
        for box in boxes:
            corners = " ".join(f"{x:.0f},{y:.0f}" for x, y in box.points)
            print(f"  {box.score:.3f}  {corners}")
        report.append({"image": name, "boxes": [box.to_dict() for box in boxes]})
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedb",
        description="DBNet text detection for edge devices: TensorRT on GPUs, ONNX Runtime on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    boxes = commands.add_parser(
        "boxes",
        help="run the model on images and form text boxes from its probability map",
        description="Computes the probability map of each image with the model on ONNX Runtime (CPU), "
        "forms the text boxes with edgedb's C++ core and prints them. Without images, uses a generated sample.",
    )
    boxes.add_argument("images", nargs="*", type=Path, help="image files (default: a generated sample image)")
    boxes.add_argument("--sample", action="store_true", help="also run on a generated sample image")
    boxes.add_argument("--model", default="ppocrv4-det", help="zoo name or ONNX path (default ppocrv4-det)")
    boxes.add_argument("--limit-side-len", type=int, default=736, help="side limit of the resize (default 736)")
    boxes.add_argument("--limit-type", choices=["min", "max"], default="min",
                       help="min: shorter side at least the limit; max: longer side at most (default min)")
    boxes.add_argument("--json", metavar="FILE", help="also write the boxes as JSON")
    _add_box_arguments(boxes)
    boxes.set_defaults(run=_cmd_boxes)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except EdgeDBError as error:
        print(f"edgedb {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
