"""``edgedb quantize``: an INT8, FP16 or best ONNX (edgedb.precision), optionally with QAT."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgedb._files import save_onnx
from edgedb.cli._common import (
    _add_input_size_arguments,
    _add_spec_arguments,
    _add_strict_argument,
    _bounded_float,
    _bounded_int,
    _check_output,
    _count,
    _counted,
    _model_spec,
    _readable,
    _Skipped,
)
from edgedb.errors import EdgeDBError


def add_parser(commands) -> None:
    quantize = commands.add_parser(
        "quantize", help="INT8 (calibrated Q/DQ) or FP16 model for TensorRT or the CPU",
        description="Writes an explicitly quantized ONNX: INT8 with QuantizeLinear/DequantizeLinear pairs from "
        "a calibration set (edgedb.precision.quantize_int8; with float16 between them, "
        "edgedb.precision.quantize_best), or float16 weights and activations "
        "(edgedb.precision.to_float16). Calibration statistics are cached: quantizing again with another "
        "method, target or exclusions makes no new pass over the images.")
    quantize.add_argument("model", help="zoo name or ONNX path (rewritten or not)")
    quantize.add_argument("--output", "-o", type=Path, required=True, help="where to write the model")
    quantize.add_argument("--precision", choices=["int8", "fp16", "best"], default="int8",
                          help="int8: Q/DQ convolutions, float32 between (default); fp16: float16 weights and "
                          "activations; best: INT8 convolutions with float16 between them, for TensorRT")
    quantize.add_argument("--calib", help="calibration images: a folder or a list file (INT8)")
    quantize.add_argument("--target", choices=["tensorrt", "cpu"], default="tensorrt",
                          help="tensorrt: signed symmetric Q/DQ on convolutions; cpu: uint8 QDQ ONNX Runtime fuses "
                          "(default tensorrt)")
    quantize.add_argument("--method", choices=["max", "percentile", "entropy", "mse"], default="percentile",
                          help="how activation ranges are chosen (default percentile)")
    quantize.add_argument("--exclude", nargs="*", default=[], metavar="NODE",
                          help="Conv nodes to keep in float (default: none)")
    quantize.add_argument("--auto-exclude", type=_bounded_int(0), default=0, metavar="K",
                          help="also keep the K convolutions most hurt by INT8 in float (sensitivity search; "
                          "default 0: none)")
    quantize.add_argument("--sensitivity-images", type=_count, default=4, help="images the search uses (default 4)")
    quantize.add_argument("--full-range-weights", action="store_true",
                          help="--target cpu: 8-bit instead of 7-bit weights, for CPUs with VNNI or ARM dot products "
                               "(x86 without VNNI saturates them)")
    quantize.add_argument("--bias-correction", action="store_true",
                          help="int8: then move each convolution's bias so its per-channel output means are FP32's on "
                          "the calibration images (edgedb.precision.correct_biases); helps some models, hurts others: "
                          "check with edgedb compare, or use --qat, which tries it and keeps it only when it helps")
    quantize.add_argument("--qat", action="store_true",
                          help="then quantization-aware training by distillation: train the INT8 weights so the map "
                          "matches FP32's on the calibration images (edgedb.train.qat.distill_int8; needs the "
                          "train extra, PyTorch); starts from the post-training or the bias-corrected model, whichever "
                          "agrees better with FP32 on the calibration images the correction did not fit (or scores "
                          "higher against --gt), and writes that start if no trained step beats it on held-back images")
    quantize.add_argument("--no-bias-correction", action="store_true",
                          help="--qat: do not try the bias correction; start from the post-training model")
    quantize.add_argument("--gt", type=Path, metavar="DIR",
                          help="--qat: ICDAR ground truth of calibration images (gt_<image>.txt; images without a "
                          "file are unlabelled): the start, post-training or bias-corrected, is then the one with "
                          "the higher hmean against it, not the one that agrees better with FP32")
    quantize.add_argument("--steps", type=_count, default=300, help="--qat: optimizer steps (default 300)")
    quantize.add_argument("--time-limit", type=_bounded_float(0, open_low=True), default=600.0, metavar="SECONDS",
                          help="--qat: stop training so the whole call ends within this many seconds (default 600)")
    quantize.add_argument("--cache", type=Path, default=None,
                          help="calibration statistics cache folder (default: calibration/ in edgedb's cache folder "
                          "($EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb or ~/.cache/edgedb))")
    _add_input_size_arguments(quantize)
    _add_spec_arguments(quantize)
    _add_strict_argument(quantize)
    quantize.set_defaults(run=_cmd_quantize)


def _cmd_quantize(args: argparse.Namespace) -> int:
    from edgedb.detector import load_deployable
    from edgedb.models import resolve_model
    from edgedb.spec import spec_from_metadata

    if args.precision != "fp16" and not args.calib:
        raise EdgeDBError(f"{args.precision} needs a calibration set: --calib DIR (a folder of images) or a list file")
    if args.qat and args.precision != "int8":
        raise EdgeDBError("--qat trains INT8 models: use it with --precision int8 (the default)")
    if args.qat and args.bias_correction and args.no_bias_correction:
        raise EdgeDBError("--bias-correction and --no-bias-correction contradict each other: give one")
    if args.gt is not None and (not args.qat or args.no_bias_correction):
        raise EdgeDBError("--gt chooses where --qat starts, post-training or bias-corrected: use it with --qat and "
                          "without --no-bias-correction")
    if args.gt is not None and not args.gt.is_dir():
        raise EdgeDBError(f"--gt {args.gt} is not a folder: give the folder of gt_<image>.txt files")
    if args.no_bias_correction and not args.qat:
        raise EdgeDBError("--no-bias-correction is for --qat (without --qat, bias correction is off unless "
                          "--bias-correction asks for it)")
    if args.precision == "best" and (args.target != "tensorrt" or args.full_range_weights):
        raise EdgeDBError("--precision best is for TensorRT (INT8 convolutions, float16 between them); "
                          "leave out --target cpu and --full-range-weights")
    _check_output(args.output, "--output", [resolve_model(args.model)])
    model, _ = load_deployable(args.model, _model_spec(args, args.model))
    if args.qat:  # before calibration and bias correction spend minutes
        from edgedb.train.onnx_torch import check_supported

        check_supported(model)
    skipped = _Skipped("quantize", args.strict)
    images = None
    if args.precision != "fp16":
        from edgedb.precision.calibration import calibration_images

        images = _readable(calibration_images(args.calib), skipped)
        skipped.check_some_left(len(images), "calibration images")
    if args.precision == "fp16":
        from edgedb.precision import to_float16

        result = to_float16(model)
    else:
        from edgedb.precision.calibration import DEFAULT_CACHE, collect_stats
        from edgedb.precision.int8 import quantize_int8, sensitive_layers

        stats = collect_stats(model, images, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
                              input_size=args.input_size, cache_dir=args.cache or DEFAULT_CACHE)
        exclude = list(args.exclude)
        if args.auto_exclude:
            ranked = sensitive_layers(model, stats, images[: args.sensitivity_images], target=args.target,
                                      method=args.method, limit_side_len=args.limit_side_len,
                                      limit_type=args.limit_type, input_size=args.input_size)
            chosen = [name for name, _ in ranked[: args.auto_exclude] if name not in exclude]
            print("kept in float (most sensitive): " + ", ".join(f"{n} ({db:.1f} dB)" for n, db in ranked[: args.auto_exclude]))
            exclude += chosen
        if args.precision == "best":
            from edgedb.precision import quantize_best

            result = quantize_best(model, stats, method=args.method, exclude=exclude)
        else:
            result = quantize_int8(model, stats, target=args.target, method=args.method, exclude=exclude,
                                   full_range_weights=args.full_range_weights)
            if args.bias_correction and not args.qat:  # --qat tries it and keeps it when it helps
                from edgedb.precision.bias_correction import correct_biases

                result, report = correct_biases(model, result, images, limit_side_len=args.limit_side_len,
                                                limit_type=args.limit_type, input_size=args.input_size)
                print(f"bias correction: {_counted(report.corrected, 'convolution')} given FP32's output means on "
                      f"{_counted(report.frames, 'calibration image')} ({report.seconds:.0f} s)")
            if args.qat:
                if args.bias_correction:
                    print("--qat tries the bias correction itself and starts from it when it agrees better with FP32")
                result = _quantization_aware(args, model, result, images)
    save_onnx(result, args.output)
    print(f"wrote {args.output} ({args.precision}{'' if args.precision == 'fp16' else ', ' + args.target + ', ' + args.method}"
          f"{skipped.summary()}); spec: {spec_from_metadata(result).input_name!r} -> 'prob'")
    return 0


def _quantization_aware(args: argparse.Namespace, model, quantized, images):
    """--qat: the distilled model, or the one it started from when distillation did not help."""
    from edgedb.train.qat import distill_int8

    ground_truth = None
    if args.gt is not None:
        from edgedb.evaluation import gt_path, load_icdar_gt

        files = [gt_path(args.gt, image) for image in images]
        if not any(f.is_file() for f in files):
            raise EdgeDBError(f"--gt {args.gt} holds no gt_<image>.txt for any of the "
                              f"{_counted(len(images), 'calibration image')}")
        ground_truth = [load_icdar_gt(f) if f.is_file() else None for f in files]
        print(f"labels for {sum(g is not None for g in ground_truth)} of {_counted(len(images), 'calibration image')}")
    outcome = distill_int8(model, quantized, images, steps=args.steps, limit_side_len=args.limit_side_len,
                           limit_type=args.limit_type, input_size=args.input_size,
                           bias_correction=not args.no_bias_correction, ground_truth=ground_truth,
                           time_limit=args.time_limit)
    if outcome.choice:
        print(outcome.choice)
    print(f"quantization-aware training from the {outcome.start} model; "
          f"on {_counted(outcome.held_back, 'held-back image')}: "
          f"post-training {outcome.ptq}, best {outcome.best} (step {outcome.best_step} of {outcome.steps}, "
          f"{outcome.seconds:.0f} s)")
    if not outcome.improved:
        print("nothing beat the post-training model on the held-back images: writing that one")
        return quantized
    if outcome.best_step == 0:
        print("no trained step beat the bias-corrected model: writing that one")
    return outcome.model
