"""End-to-end detection, edgedb's EdgeDetector against RapidOCR's TextDetector (same
model, each with its own defaults), on the same real images in one run.

    python bench/bench_detector.py [--images DIR] [--count N] [--rounds R]

Times preprocessing + inference + box formation per image (decoding excluded; images
are decoded before timing). Each contender runs in its own process, alternating, so
their peak memory (max RSS) is measured separately. Also reports ICDAR 2015 hmean when
the images have ground truth.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"


def rapidocr_detector():
    import yaml
    from rapidocr_onnxruntime import ch_ppocr_det
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    package = Path(ch_ppocr_det.__file__).resolve().parents[1]
    config = yaml.safe_load((package / "config.yaml").read_text())["Det"]
    config["model_path"] = str(package / config["model_path"])
    detector = TextDetector(config)

    def detect(image):
        boxes, _ = detector(image)
        return [] if boxes is None else list(boxes)

    return detect


def edgedb_detector():
    from edgedb import EdgeDetector

    detector = EdgeDetector()
    return lambda image: [box.points for box in detector.detect(image)]


def worker(contender: str, images_dir: Path, count: int, warmup: int = 2) -> dict:
    import cv2

    from edgedb.evaluation import EvalResult, IcdarDataset, evaluate_image

    dataset = list(IcdarDataset(images_dir))[:count]
    images = [cv2.imread(str(path)) for _, path, _ in dataset]
    detect = edgedb_detector() if contender == "edgedb" else rapidocr_detector()
    for image in images[:warmup]:
        detect(image)
    times, results = [], []
    for (name, _, truth), image in zip(dataset, images):
        start = time.perf_counter()
        boxes = detect(image)
        times.append(time.perf_counter() - start)
        results.append(evaluate_image(boxes, truth, name))
    summary = EvalResult.from_images(results)
    return {
        "contender": contender,
        "images": len(images),
        "seconds": sum(times),
        "images_per_second": len(images) / sum(times),
        "median_ms": statistics.median(times) * 1e3,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "precision": summary.precision,
        "recall": summary.recall,
        "hmean": summary.hmean,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="ICDAR-style folder (images + gt)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per contender")
    parser.add_argument("--worker", choices=["edgedb", "rapidocr"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.count)))
        return 0

    runs: dict[str, list[dict]] = {"edgedb": [], "rapidocr": []}
    for _ in range(args.rounds):
        for contender in ("rapidocr", "edgedb"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", contender, "--images", str(args.images), "--count", str(args.count)],
                capture_output=True, text=True, check=True,
            ).stdout
            runs[contender].append(json.loads(out.strip().splitlines()[-1]))
            print(f"  {contender}: {runs[contender][-1]['images_per_second']:.2f} images/s", file=sys.stderr)
    best = {name: max(r["images_per_second"] for r in rs) for name, rs in runs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; images: {args.images} ({args.count})")
    print(f"{'contender':<10}{'img/s':>8}{'median ms':>11}{'peak MB':>9}{'P':>8}{'R':>8}{'H':>8}")
    for name, rs in runs.items():
        r = max(rs, key=lambda row: row["images_per_second"])
        print(f"{name:<10}{r['images_per_second']:>8.2f}{r['median_ms']:>11.1f}{r['peak_rss_mb']:>9.0f}"
              f"{r['precision']:>8.4f}{r['recall']:>8.4f}{r['hmean']:>8.4f}")
    median = {name: statistics.median(r["images_per_second"] for r in rs) for name, rs in runs.items()}
    worst_case = min(r["images_per_second"] for r in runs["edgedb"]) / max(r["images_per_second"] for r in runs["rapidocr"])
    print(f"throughput ratio edgedb / rapidocr: best runs {best['edgedb'] / best['rapidocr']:.2f}x, "
          f"median runs {median['edgedb'] / median['rapidocr']:.2f}x, slowest edgedb vs fastest rapidocr {worst_case:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
