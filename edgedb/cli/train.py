"""``edgedb train``: fine-tuning a DBNet on your own images (edgedb.train.finetune)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from edgedb.cli._common import (
    MAX_SIDE,
    _add_spec_arguments,
    _add_strict_argument,
    _bounded_float,
    _bounded_int,
    _check_output,
    _count,
    _model_spec,
    _readable,
    _Skipped,
    _threads,
)


def add_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="fine-tune a DBNet on your own images (needs PyTorch: the train extra)",
        description="Fine-tunes a DBNet with the DB paper's labels and loss on random crops of your images, "
        "validates the final weights (or, with --val-every, keeps the checkpoint with the best validation hmean; "
        "edgedb's own box formation and ICDAR metric) and writes an ONNX with the base model's interface, which rewrite, quantize, build and EdgeDetector take "
        "(edgedb.train.finetune). Refuses to write a model no better than the base on validation.")
    train.add_argument("--images", type=Path, required=True, help="training images (ICDAR 2015 layout) or a "
                       "PaddleOCR label file (image<TAB>[{\"points\": ...}])")
    train.add_argument("--gt", type=Path, help="ground-truth folder (gt_<image>.txt); default: beside the images")
    train.add_argument("--val-images", type=Path, help="validation images (default: 10%% of the training images)")
    train.add_argument("--val-gt", type=Path, help="validation ground truth (default: beside the validation images)")
    train.add_argument("--base", default="ppocrv4-det", help="zoo name or DBNet ONNX to start from (default ppocrv4-det)")
    train.add_argument("--steps", type=_count, default=200, help="optimizer steps (default 200)")
    train.add_argument("--batch-size", type=_bounded_int(1, 1024), default=8, help="crops per step (default 8)")
    train.add_argument("--crop", type=_bounded_int(64, MAX_SIDE), default=384, help="crop side in pixels (default 384)")
    train.add_argument("--lr", type=_bounded_float(0, 10, open_low=True), default=3e-4, help="peak learning rate of Adam (default 3e-4)")
    train.add_argument("--scale", type=float, nargs=2, default=(0.7, 1.4), metavar=("MIN", "MAX"),
                       help="random scale range of the crops; 1 is the size the detector runs at (default 0.7 1.4)")
    train.add_argument("--loss", choices=["db", "prob"], default="db",
                       help="db: Ls + Lb + 10 Lt with a threshold head; prob: Ls only (default db)")
    train.add_argument("--ema", type=_bounded_float(0, 0.9999), default=0.95,
                       help="decay of the weight average that is validated and written; 0 for the raw weights "
                       "(default 0.95)")
    train.add_argument("--freeze", type=_bounded_float(0, 0.99), default=0.0,
                       help="fraction of the base's weights, from the input on, kept fixed: about 25%% cheaper steps "
                       "at 0.3 (default 0: all train)")
    train.add_argument("--binary-loss", choices=["dice", "bce"], default="bce",
                       help="Lb's form: bce as in the DB paper, or dice (default bce)")
    train.add_argument("--threads", type=_threads, help="CPU threads, at most the cores (default: the free cores)")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when PyTorch sees a GPU")
    train.add_argument("--val-every", type=_count, help="validate every N steps and keep the best checkpoint "
                       "(default: once, the final weights, which cross-validated better)")
    train.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=0, help="random seed, 0..2^32-1 (default 0)")
    train.add_argument("--output", "-o", type=Path, required=True, help="where to write the fine-tuned ONNX")
    _add_spec_arguments(train)
    _add_strict_argument(train)
    train.set_defaults(run=_cmd_train)


def _training_samples(images: Path, gt: Optional[Path], skipped: _Skipped) -> list:
    """Samples of an ICDAR folder or a list file, their unreadable images skipped."""
    from edgedb.evaluation import IcdarDataset
    from edgedb.train.data import icdar_samples, list_samples, load_samples

    if images.is_file():
        samples = list_samples(images, on_unreadable=skipped.add)
        skipped.check_some_left(len(samples), "training images")
        return samples
    if not images.is_dir():
        return load_samples(images, gt)
    paths = [image_path for _, image_path, _ in IcdarDataset(images, gt).items]
    good = _readable(paths, skipped)
    skipped.check_some_left(len(good), "training images")
    return icdar_samples(images, gt, names=[path.name for path in good])


def _cmd_train(args: argparse.Namespace) -> int:
    from edgedb.train import finetune

    _check_output(args.output, "--output", [args.base])
    spec = _model_spec(args, args.base)
    from edgedb.train.model import load_base
    from edgedb.train.onnx_torch import check_supported

    check_supported(load_base(args.base, spec)[0])  # before any image is read
    skipped = _Skipped("train", args.strict)
    train = _training_samples(args.images, args.gt, skipped)
    val = _training_samples(args.val_images, args.val_gt, skipped) if args.val_images else None
    result = finetune(train, val, base=args.base, spec=spec, steps=args.steps, batch_size=args.batch_size,
                      crop=args.crop, lr=args.lr, loss=args.loss, binary_loss=args.binary_loss, threads=args.threads,
                      device=args.device, seed=args.seed, scale=tuple(args.scale), ema=args.ema,
                      freeze=args.freeze, val_every=args.val_every)
    print(f"validation before: {result.base}")
    print(f"validation after:  {result.best} (step {result.best_step} of {result.steps}, {result.seconds:.0f} s)"
          f"{skipped.summary()}")
    result.save(args.output)
    print(f"wrote {args.output}")
    return 0
