"""What INT8 and FP16 cost in accuracy, and what INT8 gains in speed on the CPU.

    python bench/bench_precision.py [--data DIR] [--methods entropy percentile max]

Calibrates on images that are not evaluated (the photos and ICDAR 2015 dev img_1..50),
evaluates on ICDAR 2015 dev img_51..100 with the detector's defaults: hmean, map errors
against FP32, and time per image, all models in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="ppocrv4-det", help="zoo name or DBNet ONNX file")
    parser.add_argument("--methods", nargs="+", default=["entropy", "percentile", "max"])
    parser.add_argument("--cpu-method", default="percentile")
    parser.add_argument("--exclude", nargs="*", default=[], help="Conv nodes kept float in the TensorRT INT8 model")
    parser.add_argument("--auto-exclude", type=int, nargs="*", default=[4],
                        help="also TensorRT INT8 (first method) keeping the K most sensitive convolutions float")
    parser.add_argument("--fp16", action="store_true", help="also the FP16 model (slow on CPUs)")
    parser.add_argument("--best", action="store_true",
                        help="also INT8 convolutions with float16 between them (first method; slow on CPUs)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU INT8 model")
    parser.add_argument("--speed-rounds", type=int, default=3,
                        help="interleaved end-to-end timing rounds of FP32 against INT8-CPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgedb.detector import load_deployable
    from edgedb.evaluation import IcdarDataset
    from edgedb.precision.calibration import calibration_images, collect_stats
    from edgedb.compare import compare_precisions, format_reports
    from edgedb.precision.int8 import quantize_int8, sensitive_layers

    icdar = list(IcdarDataset(args.data / "icdar2015-dev" / "images"))
    held_out = [(name, path, truth) for name, path, truth in icdar if int(name.split("_")[-1]) > 50]
    calibration = sorted((args.data / "photos").glob("*.jpg")) + [
        path for name, path, _ in icdar if int(name.split("_")[-1]) <= 50
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(str(p) for p in calibration))
    images = calibration_images(Path(listing.name))
    os.unlink(listing.name)

    fp32, _ = load_deployable(args.model)
    stats = collect_stats(fp32, images)
    models = {"fp32": fp32}
    for method in args.methods:
        models[f"int8-tensorrt-{method}"] = quantize_int8(fp32, stats, target="tensorrt", method=method,
                                                         exclude=args.exclude)
    if args.auto_exclude:
        ranked = sensitive_layers(fp32, stats, images[:4], target="tensorrt", method=args.methods[0])
        for k in args.auto_exclude:
            keep = [name for name, _ in ranked[:k]]
            print(f"keep {k} float: {keep}")
            models[f"int8-tensorrt-{args.methods[0]}-keep{k}"] = quantize_int8(
                fp32, stats, target="tensorrt", method=args.methods[0], exclude=keep)
    if not args.no_cpu:
        models[f"int8-cpu-{args.cpu_method}"] = quantize_int8(fp32, stats, target="cpu", method=args.cpu_method)
    if args.best:
        from edgedb.precision import quantize_best

        models[f"best-{args.methods[0]}"] = quantize_best(fp32, stats, method=args.methods[0])
    if args.fp16:
        from edgedb.precision import to_float16

        models["fp16"] = to_float16(fp32)
    reports = compare_precisions(models, held_out)

    print(f"\nmodel {args.model}; machine: {platform.machine()}, {os.cpu_count()} cores; calibration {len(images)} images, "
          f"evaluation {len(held_out)} images")
    print(format_reports(reports))
    base = reports[0]
    for r in reports[1:]:
        print(f"{r.name}: {base.seconds_per_image / r.seconds_per_image:.2f}x the speed of fp32")
    if args.speed_rounds and not args.no_cpu:
        speeds = interleaved_speed({"fp32": fp32, "int8-cpu": models[f"int8-cpu-{args.cpu_method}"]},
                                   [path for _, path, _ in held_out], args.speed_rounds)
        for name, times in speeds.items():
            print(f"{name}: ms/image per round {[round(t, 1) for t in times]}")
        ratio = statistics.median(speeds["fp32"]) / statistics.median(speeds["int8-cpu"])
        print(f"INT8-CPU end-to-end speed-up over FP32 (median of {args.speed_rounds} interleaved rounds): {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in reports], indent=1))
    return 0


def interleaved_speed(models: dict, images: list, rounds: int) -> dict:
    """End-to-end ms per image (detect: prepare + inference + boxes; images decoded
    before timing), contenders alternating round by round."""
    import tempfile
    import time

    import cv2
    import onnx

    from edgedb import EdgeDetector

    frames = [cv2.imread(str(p)) for p in images]
    times = {name: [] for name in models}
    with tempfile.TemporaryDirectory() as scratch:
        detectors = {}
        for name, model in models.items():
            path = Path(scratch) / f"{name}.onnx"
            onnx.save(model, str(path))
            detectors[name] = EdgeDetector(path)
            detectors[name].detect(frames[0])
        for _ in range(rounds):
            for name, detector in detectors.items():
                start = time.perf_counter()
                for frame in frames:
                    detector.detect(frame)
                times[name].append((time.perf_counter() - start) / len(frames) * 1e3)
        for detector in detectors.values():
            detector.close()
    return times


if __name__ == "__main__":
    sys.exit(main())
