"""Quantization-aware training by distillation: does it bring INT8 back to FP32's hmean?

    python bench/bench_qat.py [--model ppocrv4-det FILE ...] [--targets tensorrt cpu] [--steps 300]

Per model and target: post-training INT8 (`quantize_int8`, what `edgedb quantize`
writes), then `distill_int8` (`edgedb quantize --qat`: it also tries the bias correction
and starts from whichever agrees better with FP32 on the frames the correction did not
fit), all on the same calibration images (the 12 photos and ICDAR 2015 dev img_1..50);
every model evaluated with EdgeDetector's defaults on img_51..100, which neither
calibration nor training sees.
Prints a Markdown row per model and target, with QAT's time. ``--no-qat``: post-training
and bias correction (`correct_biases`) only. ``--labels``: QAT gets the calibration images'
ICDAR labels (`distill_int8(ground_truth=)`, `edgedb quantize --qat --gt`) and chooses its
start by hmean against them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def evaluate_model(model, held_out) -> float:
    """Held-out hmean of a ModelProto, run from a file as a user would."""
    import onnx

    from edgedb import EdgeDetector
    from edgedb.evaluation import evaluate

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        onnx.save(model, str(path))
        with EdgeDetector(str(path)) as detector:
            return evaluate([(name, detector.detect(p), truth) for name, p, truth in held_out]).hmean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", nargs="+", default=["ppocrv4-det"], help="zoo names or DBNet ONNX files")
    parser.add_argument("--targets", nargs="+", default=["tensorrt", "cpu"], choices=["tensorrt", "cpu"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--scale-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ONNX Runtime threads in QAT")
    parser.add_argument("--no-qat", action="store_true", help="post-training and bias correction only")
    parser.add_argument("--no-bias-correction", action="store_true", help="QAT starts from the post-training model")
    parser.add_argument("--labels", action="store_true",
                        help="give QAT the ICDAR labels of the calibration images (img_1..50; the photos have none) "
                        "to choose its start by")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import onnx  # noqa: F401

    from edgedb.detector import load_deployable
    from edgedb.evaluation import IcdarDataset
    from edgedb.precision.bias_correction import correct_biases
    from edgedb.precision.calibration import collect_stats
    from edgedb.precision.int8 import quantize_int8
    from edgedb.train.qat import distill_int8

    icdar = list(IcdarDataset(args.data / "icdar2015-dev" / "images"))
    held_out = [(name, path, truth) for name, path, truth in icdar if int(name.split("_")[-1]) > 50]
    photos = sorted((args.data / "photos").glob("*.jpg"))
    labelled = [(path, truth) for name, path, truth in icdar if int(name.split("_")[-1]) <= 50]
    calibration = photos + [path for path, _ in labelled]
    ground_truth = [None] * len(photos) + [truth for _, truth in labelled] if args.labels else None
    figures = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": {k: str(v) for k, v in vars(args).items()},
               "runs": []}
    rows = []
    for model_name in args.model:
        fp32, _ = load_deployable(model_name)
        stats = collect_stats(fp32, calibration)
        fp32_h = evaluate_model(fp32, held_out)
        for target in args.targets:
            ptq = quantize_int8(fp32, stats, target=target)
            ptq_h = evaluate_model(ptq, held_out)
            run = dict(model=Path(model_name).name, target=target, fp32=fp32_h, ptq=ptq_h)
            row = f"| {run['model']} | {target} | {fp32_h:.4f} | {ptq_h:.4f} ({(ptq_h - fp32_h) * 100:+.2f}) |"
            if args.no_qat:
                corrected, report = correct_biases(fp32, ptq, calibration, threads=args.threads)
                bc_h = evaluate_model(corrected, held_out)
                run.update(bc=bc_h, bc_seconds=report.seconds, bc_corrected=report.corrected)
                row += f" {bc_h:.4f} ({(bc_h - fp32_h) * 100:+.2f}) | {report.seconds:.0f} |"
            else:
                outcome = distill_int8(fp32, ptq, calibration, steps=args.steps, lr=args.lr, crop=args.crop,
                                       scale_lr=args.scale_lr, seed=args.seed, threads=args.threads,
                                       bias_correction=not args.no_bias_correction, ground_truth=ground_truth)
                qat_h = evaluate_model(outcome.model, held_out) if outcome.improved else ptq_h
                choice = outcome.choice
                run.update(qat=qat_h, start=outcome.start, ptq_agreement=vars(outcome.ptq),
                           choice=({**vars(choice), "post_training": vars(choice.post_training),
                                    "corrected": vars(choice.corrected)} if choice else None),
                           best_agreement=vars(outcome.best), best_step=outcome.best_step, steps=outcome.steps,
                           seconds=outcome.seconds, improved=outcome.improved,
                           history=[(step, loss, vars(a) if a else None) for step, loss, a in outcome.history])
                chosen = f"{choice.post_training.boxes:.3f} / {choice.corrected.boxes:.3f}" if choice else "-"
                if choice and choice.labelled:
                    chosen += f"; labels: {choice.post_training_hmean:.3f} / {choice.corrected_hmean:.3f}"
                row += (f" {chosen} | {outcome.start} | {outcome.ptq.boxes:.3f} -> {outcome.best.boxes:.3f} "
                        f"({outcome.best.iou:.3f}) | {outcome.best_step}/{outcome.steps} | "
                        f"{qat_h:.4f} ({(qat_h - fp32_h) * 100:+.2f}) | {outcome.seconds:.0f} |")
            figures["runs"].append(run)
            rows.append(row)
            print(row, flush=True)
    if args.no_qat:
        print("| model | target | FP32 H | post-training H (ΔH) | bias-corrected H (ΔH) | correction s |")
        print("|---|---|---|---|---|---|")
    else:
        print("| model | target | FP32 H | post-training H (ΔH) | box agreement, frames the correction did not fit:"
              " post-training / corrected (with --labels: hmean against the labels) | start | held-back box agreement: post-training -> chosen (IoU) |"
              " best step / run | QAT H (ΔH) | QAT s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
