"""Fine-tuning on ICDAR 2015: does a few minutes of CPU training carry to unseen images?

    python bench/bench_finetune.py [--data DIR] [--steps 200] [--loss db] [--int8]

Trains on ICDAR 2015 dev img_1..40, validates (checkpoint choice) on img_41..50 and
evaluates on img_51..100, never seen in training or selection, with EdgeDetector's
defaults on the exported ONNX (rewritten as any user model would be), against the base
model. ``--int8`` also quantizes the fine-tuned model for the CPU and TensorRT targets
as `edgedb quantize` writes them (post-training; calibrated on img_1..50 and the photos)
and evaluates them; ``--bias-correction`` corrects them first (`correct_biases`, which
costs a model fine-tuned on words recall: bench/RESULTS.md). ``--labels`` times label
generation for a 1280x720 image with 50 words.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def evaluate_model(model, held_out, threads=None) -> dict:
    """EdgeDetector's defaults on (name, path, truth) items: P, R, H and the counts behind them."""
    from edgedb import EdgeDetector
    from edgedb.evaluation import evaluate

    with EdgeDetector(model, threads=threads) as detector:
        result = evaluate([(name, detector.detect(path), truth) for name, path, truth in held_out])
    return {"precision": result.precision, "recall": result.recall, "hmean": result.hmean,
            "counts": [result.matched, result.det_care, result.gt_care]}


def time_labels(runs: int = 200) -> float:
    from edgedb.synthetic import make_text_image
    from edgedb.train.labels import make_labels

    scene = make_text_image(3, size=(720, 1280), words=(80, 80))  # some slots find no room
    polygons = scene.polygons[:50]
    # Into the same output maps each time, as a data loader would keep them: fresh
    # 15 MB of maps may be mapped anew by the allocator on every call (about 4 ms of page
    # faults, more than the labels themselves).
    out = make_labels((720, 1280), polygons)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        make_labels((720, 1280), polygons, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(polygons)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The fine-tuning settings, as `edgedb train` has them (bench_crossval uses them too)."""
    parser.add_argument("--base", default="ppocrv4-det")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--loss", default="db", choices=["db", "prob"])
    parser.add_argument("--binary-loss", default="bce", choices=["dice", "bce"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, nargs=2, default=(0.7, 1.4))
    parser.add_argument("--ema", type=float, default=0.95)
    parser.add_argument("--freeze", type=float, default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    add_training_arguments(parser)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: all cores; the trainer's own default, the free cores, "
                        "follows the load average, which a previous run leaves high)")
    parser.add_argument("--int8", action="store_true")
    parser.add_argument("--bias-correction", action="store_true", help="--int8: correct the biases as well")
    parser.add_argument("--labels", action="store_true")
    parser.add_argument("--output", type=Path, help="keep the fine-tuned ONNX here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgedb.evaluation import IcdarDataset
    from edgedb.train import finetune
    from edgedb.train.data import icdar_samples

    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": {k: str(v) for k, v in vars(args).items()}}
    if args.labels:
        ms, words = time_labels()
        figures["label_ms_1280x720"] = ms
        print(f"labels for 1280x720 with {words} words: {ms:.2f} ms (median of 200)")

    images = args.data / "icdar2015-dev" / "images"
    number = lambda name: int(name.split("_")[-1])  # noqa: E731
    samples = {s.name: s for s in icdar_samples(images)}
    train = [s for n, s in samples.items() if number(n) <= 40]
    val = [s for n, s in samples.items() if 40 < number(n) <= 50]
    held_out = [(name, path, truth) for name, path, truth in IcdarDataset(images) if number(name) > 50]

    result = finetune(train, val, base=args.base, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                      lr=args.lr, loss=args.loss, binary_loss=args.binary_loss, seed=args.seed,
                      scale=tuple(args.scale), ema=args.ema, freeze=args.freeze,
                      threads=args.threads)
    figures.update(train_seconds=result.seconds, best_step=result.best_step,
                   val_before=vars(result.base), val_after=vars(result.best),
                   losses=[(step, terms.total) for step, terms, _ in result.history],
                   val_curve=[(step, h) for step, _, h in result.history if h is not None])
    print(f"training: {result.seconds:.0f} s for {args.steps} steps; validation {result.base} -> {result.best} "
          f"(step {result.best_step})")
    if not result.improved:
        print("no checkpoint beat the base on validation")
        return 1

    with tempfile.TemporaryDirectory() as scratch:
        tuned = args.output or Path(scratch) / "tuned.onnx"
        result.save(tuned)
        from edgedb.models import resolve_model

        figures["held_out_base"] = evaluate_model(str(resolve_model(args.base)), held_out)
        figures["held_out_tuned"] = evaluate_model(str(tuned), held_out)
        print(f"held-out img_51..100: base H {figures['held_out_base']['hmean']:.4f} -> fine-tuned "
              f"H {figures['held_out_tuned']['hmean']:.4f}")
        if args.int8:
            from edgedb.detector import load_deployable
            from edgedb.precision.bias_correction import correct_biases
            from edgedb.precision.calibration import collect_stats
            from edgedb.precision.int8 import quantize_int8
            import onnx

            calibration = sorted((args.data / "photos").glob("*.jpg")) + [
                s.path for n, s in samples.items() if number(n) <= 50]
            deployable, _ = load_deployable(str(tuned))
            stats = collect_stats(deployable, calibration)
            for target in ("cpu", "tensorrt"):
                path = Path(scratch) / f"tuned-int8-{target}.onnx"
                quantized = quantize_int8(deployable, stats, target=target)
                if args.bias_correction:
                    quantized, _ = correct_biases(deployable, quantized, calibration, threads=args.threads)
                onnx.save(quantized, str(path))
                figures[f"held_out_tuned_int8_{target}"] = evaluate_model(str(path), held_out)
                print(f"  INT8 {target}: H {figures[f'held_out_tuned_int8_{target}']['hmean']:.4f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
