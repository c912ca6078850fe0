"""How the detector's defaults were chosen: a sweep over preprocessing (normalization,
input size) and box formation (thresholds, offset ratio) on ICDAR 2015 dev images.

    python bench/tune_defaults.py [--images DIR] [--model M]

Probability maps are computed once per preprocessing setting and reused for every box
setting. Prints hmean tables; the chosen values are recorded in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import edgedb
from edgedb.evaluation import EvalResult, IcdarDataset, evaluate_image
from edgedb.models import resolve_model
from edgedb.preprocess import prepare_limit
from edgedb.spec import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half": ((0.5,) * 3, (0.5,) * 3)}
SIZES = [("min", 736), ("max", 960), ("max", 1280), ("max", 1600)]


def probability_maps(session, images, normalization, size):
    mean, std = (np.array(v, np.float32) * 255 for v in NORMALIZATIONS[normalization])
    maps, seconds = [], 0.0
    for image in images:
        prepared = prepare_limit(image, size[1], size[0])
        blob = ((prepared.frame.astype(np.float32) - mean) / std).transpose(2, 0, 1)[None]
        start = time.perf_counter()
        prob = session.run(None, {session.get_inputs()[0].name: blob})[0][0, 0]
        seconds += time.perf_counter() - start
        maps.append(prob[: prepared.content[0], : prepared.content[1]])
    return maps, seconds / len(images)


def hmean(maps, images, truths, names, **box_options) -> EvalResult:
    results = [
        evaluate_image(edgedb.boxes_from_prob(prob, dest_size=image.shape[:2], **box_options), truth, name)
        for prob, image, truth, name in zip(maps, images, truths, names)
    ]
    return EvalResult.from_images(results)


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--gt", type=Path)
    parser.add_argument("--model", default="ppocrv4-det")
    args = parser.parse_args()
    dataset = IcdarDataset(args.images, args.gt)
    names, images, truths = [], [], []
    for name, path, truth in dataset:
        names.append(name), images.append(cv2.imread(str(path))), truths.append(truth)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(resolve_model(args.model)), options, providers=["CPUExecutionProvider"])

    base = dict(thresh=0.3, box_thresh=0.6, unclip_ratio=1.5)
    print(f"{len(images)} images; preprocessing sweep with boxes {base}")
    print(f"{'normalization':<14}{'limit':<10}{'P':>8}{'R':>8}{'H':>8}{'ms/image':>10}")
    cached = {}
    for normalization, size in tqdm(list(itertools.product(NORMALIZATIONS, SIZES)), file=sys.stderr):
        maps, seconds = probability_maps(session, images, normalization, size)
        cached[(normalization, size)] = maps
        r = hmean(maps, images, truths, names, **base)
        tqdm.write(f"{normalization:<14}{size[0] + ':' + str(size[1]):<10}{r.precision:>8.4f}{r.recall:>8.4f}"
                   f"{r.hmean:>8.4f}{seconds * 1e3:>10.0f}")

    print("\nbox-formation sweep (imagenet normalization)")
    print(f"{'limit':<10}{'thresh':>7}{'box_th':>7}{'unclip':>7}{'dil':>5}{'mode':>6}{'P':>8}{'R':>8}{'H':>8}")
    grid = itertools.product([0.2, 0.3], [0.5, 0.6, 0.7], [1.5, 1.6, 1.8, 2.0], [False, True], ["fast", "slow"])
    rows = []
    for thresh, box_thresh, unclip, dilation, mode in tqdm(list(grid), file=sys.stderr):
        for size in SIZES[:3]:
            r = hmean(cached[("imagenet", size)], images, truths, names, thresh=thresh, box_thresh=box_thresh,
                      unclip_ratio=unclip, use_dilation=dilation, score_mode=mode)
            rows.append((r.hmean, size, thresh, box_thresh, unclip, dilation, mode, r))
    for h, size, thresh, box_thresh, unclip, dilation, mode, r in sorted(rows, key=lambda row: -row[0])[:25]:
        print(f"{size[0] + ':' + str(size[1]):<10}{thresh:>7}{box_thresh:>7}{unclip:>7}{str(dilation)[0]:>5}{mode:>6}"
              f"{r.precision:>8.4f}{r.recall:>8.4f}{h:>8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
