"""``edgedb eval``: EdgeDetector's ICDAR 2015 precision, recall and hmean."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
from edgedb.errors import InvalidInputError


def add_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="ICDAR 2015 precision, recall and hmean",
                                   description="Evaluates EdgeDetector on images with ICDAR 2015 ground truth "
                                   "(gt_img_N.txt per img_N.jpg; IoU > 0.5, one-to-one, ### regions don't care).")
    evaluate.add_argument("--images", type=Path, required=True, help="folder of images")
    evaluate.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    evaluate.add_argument("--json", metavar="FILE", help="write the figures as JSON (- for stdout)")
    _add_strict_argument(evaluate)
    _add_detector_arguments(evaluate)
    evaluate.set_defaults(run=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgedb.evaluation import EvalResult, IcdarDataset, evaluate_image

    _check_output(args.json, "--json")
    dataset = IcdarDataset(args.images, args.gt)
    skipped = _Skipped("eval", args.strict)
    results = []
    interruption = _Interruption()
    with _detector(args, skipped) as detector, interruption:
        for name, image_path, ground_truth in tqdm(dataset, desc="eval", unit="image", file=sys.stderr):
            try:
                boxes = detector.detect(image_path)
            except InvalidInputError as error:
                skipped.add(image_path, error)
                continue
            results.append(evaluate_image(boxes, ground_truth, name))
    if not results:
        interruption.resume()
    skipped.check_some_left(len(results))
    summary = EvalResult.from_images(results)
    print(f"{_counted(len(results), 'image')}{skipped.summary()}{interruption.summary()}: "
          f"precision {summary.precision:.4f}  recall {summary.recall:.4f}  hmean {summary.hmean:.4f}  "
          f"({summary.matched} matched, {summary.gt_care} ground truth, {summary.det_care} detections)")
    if args.json:
        _write_text(args.json, json.dumps({**summary.to_dict(), "skipped": skipped.items,
                                           "interrupted": interruption.happened}, indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json}")
    interruption.resume()
    return 0
