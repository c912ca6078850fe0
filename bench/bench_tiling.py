"""Tiling very large images: does a mosaic keep the recall of its frames?

    python bench/bench_tiling.py [--data DIR] [--grid 6] [--offset 0] [--gutter 0] [--threads 2] [--json OUT]

Builds a mosaic of grid x grid real ICDAR 2015 frames (1280x720 each: 6x6 is 7680x4320),
their ground truth shifted with them, and detects it three ways in one run:

- ``frames``: each frame alone, as EdgeDetector runs a 1280x720 image (the target);
  also at the tiles' scale, where the policy's enlargement to 736 rows is left out;
- ``mosaic, tile=off``: the whole mosaic, scaled down to max_side_len (today's behaviour);
- ``mosaic, tile=auto``: the mosaic in overlapping tiles at full resolution, merged.

Also times every tile of the tiled run as a single frame (``detect`` on the tile's crop,
tiling off): the tiled detection should take at most 1.2x their sum. ICDAR 2015 scoring
(IoU 0.5, don't-care regions ignored) over all the mosaic's words.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def mosaic(items, grid: int, gutter: int = 0):
    """The frames of ``items`` on a grid x grid canvas, ``gutter`` black pixels between
    neighbours, and their ground truth moved with them."""
    import cv2

    from edgedb.evaluation import GroundTruthBox

    images = [cv2.imread(str(path)) for _, path, _ in items]
    height, width = images[0].shape[:2]
    step_y, step_x = height + gutter, width + gutter
    canvas = np.zeros((grid * step_y - gutter, grid * step_x - gutter, 3), np.uint8)
    truth = []
    for index, (image, (_, _, boxes)) in enumerate(zip(images, items)):
        row, col = divmod(index, grid)
        y, x = row * step_y, col * step_x
        canvas[y:y + height, x:x + width] = cv2.resize(image, (width, height))
        offset = np.array([x, y], np.float32)
        truth += [GroundTruthBox(box.points + offset, box.text, box.dont_care) for box in boxes]
    return canvas, truth, images


def scores(result) -> dict:
    return {"precision": result.precision, "recall": result.recall, "hmean": result.hmean,
            "matched": result.matched, "detections": result.det_care, "truths": result.gt_care}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--grid", type=int, default=6)
    parser.add_argument("--offset", type=int, default=0, help="first image of the mosaic (index into the set)")
    parser.add_argument("--model", default="ppocrv4-det")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--tile-overlap", type=int)
    parser.add_argument("--gutter", type=int, default=0,
                        help="black pixels between the frames (default 0: edge to edge, where boxes can cross "
                             "the junction of two unrelated photos, which frames alone cannot have)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgedb import EdgeDetector
    from edgedb.evaluation import IcdarDataset, evaluate

    items = list(IcdarDataset(args.data / "icdar2015-dev" / "images"))[args.offset:args.offset + args.grid ** 2]
    canvas, truth, images = mosaic(items, args.grid, args.gutter)
    tiling = {k: v for k, v in (("tile_size", args.tile_size), ("tile_overlap", args.tile_overlap)) if v}
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "mosaic": list(canvas.shape[:2]),
               "images": [items[0][0], items[-1][0]], "args": {k: str(v) for k, v in vars(args).items()}}
    with EdgeDetector(args.model, threads=args.threads, **tiling) as detector:
        detector.detect(images[0])  # warm-up
        start = time.perf_counter()
        per_frame = [detector.detect(image) for image in images]
        figures["frames_seconds"] = time.perf_counter() - start
        figures["frames"] = scores(evaluate([(item[0], boxes, item[2]) for item, boxes in zip(items, per_frame)]))

        tiles, tile_scale, _ = detector._tiles(*canvas.shape[:2])
        figures["tile_scale"] = tile_scale
        detector.detect(canvas)  # warm-up at the tile size
        start = time.perf_counter()
        tiled = detector.detect(canvas)
        figures["tiled_seconds"] = time.perf_counter() - start
        figures["tiled"] = scores(evaluate([("mosaic", tiled, truth)]))
        figures["tiles"] = len(tiles)
    # The frames again at the scale the tiles run at (1280x720 frames are enlarged to 736
    # rows by the policy, the tiles' content is not): what the same pixels give untiled.
    frame_side = min(images[0].shape[:2])
    with EdgeDetector(args.model, threads=args.threads, limit_side_len=max(1, round(frame_side * tile_scale)),
                      **tiling) as same_scale:
        same = [same_scale.detect(image) for image in images]
        figures["frames_tile_scale"] = scores(evaluate([(item[0], boxes, item[2]) for item, boxes in zip(items, same)]))
    with EdgeDetector(args.model, threads=args.threads, tile="off") as plain:
        crops = [canvas[t.y0:t.y1, t.x0:t.x1] for t in tiles]
        plain.detect(crops[0])
        start = time.perf_counter()
        for crop in crops:
            plain.detect(crop)
        figures["tiles_single_seconds"] = time.perf_counter() - start
        plain.detect(canvas)
        start = time.perf_counter()
        whole = plain.detect(canvas)
        figures["untiled_seconds"] = time.perf_counter() - start
        figures["untiled"] = scores(evaluate([("mosaic", whole, truth)]))

    for key, label in (("frames", "frames alone"), ("frames_tile_scale", "frames, tiles' scale"),
                       ("untiled", "mosaic, tile=off"), ("tiled", "mosaic, tile=auto")):
        s = figures[key]
        print(f"{label:20s} P {s['precision']:.4f}  R {s['recall']:.4f}  H {s['hmean']:.4f}  "
              f"({s['matched']} of {s['truths']} words, {s['detections']} boxes)")
    ratio = figures["tiled_seconds"] / figures["tiles_single_seconds"]
    print(f"time: frames {figures['frames_seconds']:.2f} s; tile=off {figures['untiled_seconds']:.2f} s; tiled "
          f"{figures['tiled_seconds']:.2f} s = {ratio:.3f}x the {figures['tiles']} tiles alone "
          f"({figures['tiles_single_seconds']:.2f} s)")
    figures["tiled_over_tiles"] = ratio
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
