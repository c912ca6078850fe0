"""Cross-validated fine-tuning: how `edgedb train`'s method does on images it never saw.

    python bench/bench_crossval.py [--folds 5] [--parallel 2] [finetune flags] [--json OUT]

The 100 ICDAR 2015 dev images are cut into ``--folds`` contiguous blocks (img_1..20,
img_21..40, ...: neighbouring frames of the same street stay on the same side, so a
held-back block is not a near copy of a training image). For each fold, the model is
fine-tuned on the other blocks the way `edgedb train --images/--gt` does it (the trainer
holds back its own 20% for checkpoint choice), exported, and evaluated on the held-back
block with EdgeDetector's defaults, against the base model on the same block.

Reports each fold, the mean and spread of the fold hmeans, and the pooled (micro)
hmean over all held-back images. Defaults are chosen by these figures; the images a
result is reported on are never among them.

``--variant steps=300,crop=320`` (repeatable) runs the folds again with those settings
changed, all variants' folds sharing one pool of workers.

``--parallel P`` trains P folds at a time, each on cores/P threads (two one-thread
trainings use two cores better than one two-thread training); fold results do not
depend on how many run at once, only on ``--threads`` per fold.
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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench_finetune import add_training_arguments, evaluate_model  # this folder is on the path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def _number(name: str) -> int:
    return int(name.split("_")[-1])


def fold_of(name: str, folds: int, total: int) -> int:
    """Contiguous blocks: img_1..(total/folds) is fold 0, and so on."""
    return (_number(name) - 1) * folds // total


BOX_GRID = [(box_thresh, unclip) for box_thresh in (0.5, 0.6, 0.7) for unclip in (1.3, 1.5, 1.8)]


def _box_grid(model: str, items, threads: int) -> dict:
    """hmean on ``items`` for each (box_thresh, unclip_ratio) of BOX_GRID, from one run of
    the network per image (``--box-grid``)."""
    from edgedb import EdgeDetector
    from edgedb.boxes import image_boxes
    from edgedb.evaluation import evaluate

    with EdgeDetector(model, threads=threads) as detector:
        maps = []
        for _, path, truth in items:
            prepared = detector._prepare(path)
            maps.append((prepared, detector._infer([prepared.frame])[0], truth))
        options = dict(detector._box_options)
    grid = {}
    for box_thresh, unclip in BOX_GRID:
        options.update(box_thresh=box_thresh, unclip_ratio=unclip)
        result = evaluate([(image_boxes(prob, prepared, **options), truth) for prepared, prob, truth in maps])
        grid[f"{box_thresh}/{unclip}"] = [result.matched, result.det_care, result.gt_care]
    return grid


def run_fold(job: tuple) -> dict:
    fold, args = job
    from edgedb.evaluation import IcdarDataset
    from edgedb.models import resolve_model
    from edgedb.train import finetune
    from edgedb.train.data import icdar_samples

    images = args.data / "icdar2015-dev" / "images"
    dataset = list(IcdarDataset(images))
    total = len(dataset)
    train_names = [name for name, _, _ in dataset if fold_of(name, args.folds, total) != fold]
    held_back = [item for item in dataset if fold_of(item[0], args.folds, total) == fold]
    train = icdar_samples(images, names=train_names)
    options = dict(steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr, loss=args.loss,
                   binary_loss=args.binary_loss, scale=tuple(args.scale), ema=args.ema, freeze=args.freeze,
                   val_fraction=args.val_fraction, val_every=args.val_every, seed=args.seed, threads=args.threads)
    result = finetune(train, None, base=args.base, progress=False, **options)
    row = {"variant": args.name, "fold": fold, "held_back": [held_back[0][0], held_back[-1][0]], "train_seconds": result.seconds,
           "best_step": result.best_step, "val_base": result.base.hmean, "val_best": result.best.hmean,
           "base": evaluate_model(str(resolve_model(args.base)), held_back, args.threads)}
    if result.improved:
        with tempfile.TemporaryDirectory() as scratch:
            tuned = result.save(Path(scratch) / "tuned.onnx")
            row["tuned"] = evaluate_model(str(tuned), held_back, args.threads)
            if args.box_grid:
                # The trainer's own validation split, drawn as finetune draws it.
                order = np.random.default_rng(args.seed).permutation(len(train))
                kept = max(1, int(round(len(train) * args.val_fraction)))
                val_names = {train[i].name for i in order[:kept]}
                row["grid_val"] = _box_grid(str(tuned), [item for item in dataset if item[0] in val_names],
                                            args.threads)
                row["grid_held_back"] = _box_grid(str(tuned), held_back, args.threads)
    else:  # `edgedb train` writes nothing then: the user keeps the base
        row["tuned"] = row["base"]
    return row


def _die_with_parent() -> None:
    """A worker gets SIGTERM when this process dies (Linux), so killing the benchmark does
    not leave its folds training in the background, beside the next measurement."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="run these folds only (0-based)")
    parser.add_argument("--parallel", type=int, default=1)
    add_training_arguments(parser)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--val-every", type=int, help="steps between validations, the best checkpoint kept (default: the trainer's, "
                                                        "--steps: the final weights, unless worse than the base)")
    parser.add_argument("--threads", type=int, help="torch and inference threads per fold (default: cores / --parallel)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also run the folds with these settings changed (scale as MIN/MAX)")
    parser.add_argument("--box-grid", action="store_true",
                        help="also score the tuned model's boxes over a grid of box_thresh and unclip_ratio, on the "
                             "trainer's validation split and on the held-back fold")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--name", default="defaults", help="what to call the settings of the flags in the report")
    args = parser.parse_args()
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.parallel)

    folds = args.only if args.only else list(range(args.folds))
    variants = [args] + [_variant(args, text) for text in args.variant]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn"), initializer=_die_with_parent) as pool:
        rows = []
        for row in pool.map(run_fold, [(fold, variant) for variant in variants for fold in folds]):
            rows.append(row)  # as they come (in order), for a long run's log
            print(f"[{row['variant']}] fold {row['fold']}: H {row['base']['hmean']:.4f} -> {row['tuned']['hmean']:.4f} "
                  f"(checkpoint of step {row['best_step']})",
                  flush=True)
    wall = time.perf_counter() - start
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "wall_seconds": wall, "variants": []}
    for variant in variants:
        report["variants"].append(_summary(variant, [row for row in rows if row["variant"] == variant.name]))
    print(f"wall {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _variant(args: argparse.Namespace, text: str) -> argparse.Namespace:
    changed = argparse.Namespace(**vars(args))
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in vars(args) or key in ("variant", "only", "folds", "parallel", "json", "data", "name"):
            raise SystemExit(f"--variant {text!r}: {key!r} is not a fine-tuning setting")
        old = getattr(args, key)
        if isinstance(old, tuple):
            parsed = tuple(float(v) for v in value.split("/"))
        elif isinstance(old, bool) or old is None:
            parsed = value
        else:
            parsed = type(old)(value)
        setattr(changed, key, parsed)
    changed.name = text
    return changed


def _summary(variant: argparse.Namespace, rows: list) -> dict:
    rows.sort(key=lambda row: row["fold"])
    print(f"== {variant.name}")
    for row in rows:
        print(f"fold {row['fold']} ({row['held_back'][0]}..{row['held_back'][1]}): base H {row['base']['hmean']:.4f} "
              f"-> tuned H {row['tuned']['hmean']:.4f} (P {row['tuned']['precision']:.3f} R {row['tuned']['recall']:.3f}); "
              f"val {row['val_base']:.3f} -> {row['val_best']:.3f} at step {row['best_step']}; "
              f"{row['train_seconds']:.0f} s training")
    tuned = [row["tuned"]["hmean"] for row in rows]
    base = [row["base"]["hmean"] for row in rows]
    matched, detections, truths = (sum(row["tuned"]["counts"][i] for row in rows) for i in range(3))
    precision, recall = matched / max(1, detections), matched / max(1, truths)
    pooled = 2 * precision * recall / max(1e-9, precision + recall)
    spread = statistics.stdev(tuned) if len(tuned) > 1 else 0.0
    print(f"tuned: mean H {statistics.mean(tuned):.4f} (sd {spread:.4f}, min {min(tuned):.4f}, max {max(tuned):.4f}); "
          f"pooled H {pooled:.4f} (P {precision:.3f} R {recall:.3f}); base mean H {statistics.mean(base):.4f}")
    return {"name": variant.name, "args": {k: str(v) for k, v in vars(variant).items()}, "folds": rows,
            "mean": statistics.mean(tuned), "sd": spread, "pooled": pooled}

if __name__ == "__main__":
    sys.exit(main())
