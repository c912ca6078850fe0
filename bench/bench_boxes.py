"""Box formation speed: edgedb's C++ core against RapidOCR's DBPostProcess and against
the physical floor (one np.copyto of the same map), measured in one run on the same maps.

    python bench/bench_boxes.py [--images DIR] [--count N] [--json FILE]

Maps are real: PP-OCRv4 det run with ONNX Runtime on real images (ICDAR 2015 dev images
when ../shared/data is present, else generated scenes), plus a dense generated document
page with 100+ text regions. Timings are medians of interleaved repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
from tqdm import tqdm

import edgedb
from edgedb.synthetic import make_text_image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def load_maps(images_dir: Path, count: int) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    mapper = edgedb.EdgeDetector(limit_type="min", limit_side_len=736)  # RapidOCR's input size
    sources: list[tuple[str, np.ndarray]] = []
    if images_dir.is_dir():
        for path in sorted(images_dir.glob("*.jpg"), key=lambda p: p.name)[:count]:
            sources.append((f"real:{path.name}", cv2.imread(str(path))))
    else:
        print(f"{images_dir} not found: using generated scenes instead of real images", file=sys.stderr)
        for seed in range(count):
            sources.append((f"scene:{seed}", make_text_image(seed, size=(720, 1280)).image))
    dense = make_text_image(0, size=(720, 1280), document=True, perspective=False).image
    sources.append(("dense-document", dense))
    maps = []
    for name, image in tqdm(sources, desc="probability maps", unit="image"):
        maps.append((name, mapper.probability_map(image), image.shape[:2]))
    return maps


def measure(name: str, prob: np.ndarray, shape: tuple[int, int], repeats: int) -> dict:
    post = DBPostProcess(thresh=0.3, box_thresh=0.6, max_candidates=1000, unclip_ratio=1.5, score_mode="fast")
    prob_u8 = np.round(prob * 255).astype(np.uint8)
    copy_dst = np.empty_like(prob)
    batch = prob[None, None]
    ours = lambda: edgedb.boxes_from_prob(prob, dest_size=shape)  # noqa: E731
    ours_u8 = lambda: edgedb.boxes_from_prob(prob_u8, dest_size=shape)  # noqa: E731
    rapid = lambda: post(batch, shape)  # noqa: E731
    copy = lambda: np.copyto(copy_dst, prob)  # noqa: E731
    for fn in (ours, ours_u8, rapid, copy):  # warm caches and lazy initialisation
        fn()
    # Interleave rounds so drifts in clock or load hit every contender alike.
    rounds = {"ours": [], "ours_u8": [], "rapid": [], "copy": []}
    for _ in range(5):
        rounds["copy"].append(median_ms(copy, repeats))
        rounds["ours"].append(median_ms(ours, repeats))
        rounds["ours_u8"].append(median_ms(ours_u8, repeats))
        rounds["rapid"].append(median_ms(rapid, max(3, repeats // 5)))
    t = {key: statistics.median(values) for key, values in rounds.items()}
    regions = cv2.connectedComponents((prob > 0.3).astype(np.uint8), connectivity=8)[0] - 1
    return {
        "map": name,
        "shape": list(prob.shape),
        "regions": int(regions),
        "boxes": len(ours()),
        **{f"{key}_ms": round(value, 4) for key, value in t.items()},
        "speedup_vs_rapid": t["rapid"] / t["ours"],
        "ours_over_copy": t["ours"] / t["copy"],
        "ours_u8_over_copy": t["ours_u8"] / t["copy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of real images")
    parser.add_argument("--count", type=int, default=20, help="real images to use (default 20)")
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per round (default 40)")
    parser.add_argument("--json", type=Path, help="write all rows as JSON")
    args = parser.parse_args()

    maps = load_maps(args.images, args.count)
    rows = [measure(name, prob, shape, args.repeats) for name, prob, shape in tqdm(maps, desc="timing", unit="map")]

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, opencv {cv2.__version__}\n")
    header = f"{'map':<22}{'size':>10}{'regions':>8}{'boxes':>6}{'copy ms':>9}{'ours ms':>9}{'u8 ms':>8}" \
             f"{'rapid ms':>9}{'x rapid':>9}{'/copy':>7}{'u8/copy':>8}"
    print(header)
    for r in rows:
        print(f"{r['map'][:21]:<22}{r['shape'][0]:>5}x{r['shape'][1]:<4}{r['regions']:>8}{r['boxes']:>6}"
              f"{r['copy_ms']:>9.3f}{r['ours_ms']:>9.3f}{r['ours_u8_ms']:>8.3f}{r['rapid_ms']:>9.3f}"
              f"{r['speedup_vs_rapid']:>9.1f}{r['ours_over_copy']:>7.2f}{r['ours_u8_over_copy']:>8.2f}")
    real = [r for r in rows if r["map"] != "dense-document"]
    dense = [r for r in rows if r["map"] == "dense-document"]
    summary = {
        "real_maps": len(real),
        "median_speedup_vs_rapid_real": statistics.median(r["speedup_vs_rapid"] for r in real),
        "min_speedup_vs_rapid_real": min(r["speedup_vs_rapid"] for r in real),
        "speedup_vs_rapid_dense": dense[0]["speedup_vs_rapid"],
        "dense_regions": dense[0]["regions"],
        "median_ours_over_copy_real": statistics.median(r["ours_over_copy"] for r in real),
        "max_ours_over_copy_real": max(r["ours_over_copy"] for r in real),
        "median_ours_u8_over_copy_real": statistics.median(r["ours_u8_over_copy"] for r in real),
    }
    print()
    for key, value in summary.items():
        print(f"{key}: {value:.2f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
