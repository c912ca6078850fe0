"""``edgedb build``: a TensorRT engine and its sidecar (edgedb.engine.build_from_model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgedb.cli._common import (
    _add_engine_shape_arguments,
    _add_spec_arguments,
    _add_strict_argument,
    _bounded_int,
    _calibration_set,
    _check_output,
    _count,
    _input_size,
    _model_spec,
    _side,
    _Skipped,
)
from edgedb.errors import EdgeDBError


def add_parser(commands) -> None:
    build = commands.add_parser(
        "build", help="build a TensorRT engine (needs the tensorrt extra and an NVIDIA GPU)",
        description="Builds a TensorRT engine and its JSON sidecar (edgedb.engine.build_from_model): the model "
        "rewritten, converted to the precision (as explicit types and Q/DQ in the ONNX, a strongly typed "
        "network for TensorRT 10 and 11), with an optimization profile from the detector's shape policy: "
        "static for --input-size, else covering the frames made from the --image-size sizes (opt = the first). "
        "Flag names follow trtexec's where the meaning is the same.")
    build.add_argument("model", help="zoo name, DBNet export, or ONNX from edgedb rewrite/quantize")
    build.add_argument("--output", "-o", type=Path, required=True, help="the engine file (e.g. engines/NAME.engine)")
    build.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"],
                       help="default: the model's own (fp32 for an export); best = INT8 convolutions, FP16 between")
    build.add_argument("--calib", help="calibration images for int8/best: a folder or a list file")
    build.add_argument("--method", choices=["max", "percentile", "entropy", "mse"], default="percentile",
                       help="INT8 activation ranges (default percentile)")
    shapes = build.add_argument_group("shapes (edgedb.engine.choose_profile)")
    shapes.add_argument("--input-size", type=_input_size, metavar="HxW",
                        help="static profile: every frame letterboxed into HxW, multiples of 32 (default: limit mode)")
    shapes.add_argument("--limit-side-len", type=_side, default=736, help="limit mode side limit (default 736)")
    shapes.add_argument("--limit-type", choices=["min", "max"], default="min", help="limit mode type (default min)")
    _add_engine_shape_arguments(shapes)
    shapes.add_argument("--min-shape", metavar="NxHxW", help="explicit profile instead (as trtexec --minShapes)")
    shapes.add_argument("--opt-shape", metavar="NxHxW", help="(default: min batch, max height and width)")
    shapes.add_argument("--max-shape", metavar="NxHxW", help="(with --min-shape; no default)")
    trt_options = build.add_argument_group("TensorRT (edgedb.engine.BuildOptions)")
    trt_options.add_argument("--workspace", type=_count, metavar="MiB",
                             help="workspace pool limit (trtexec --memPoolSize; default: TensorRT's, the GPU's memory)")
    trt_options.add_argument("--timing-cache", type=Path, metavar="FILE",
                             help="read and write kernel timings here (default: one per GPU and TensorRT version "
                                  "beside the engine)")
    trt_options.add_argument("--dla-core", type=_bounded_int(0), metavar="N",
                             help="build for DLA core N (static shapes, fp16/int8; default: the GPU, no DLA)")
    trt_options.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: unsupported layers on the GPU")
    trt_options.add_argument("--builder-optimization-level", type=_bounded_int(0, 5), metavar="L", help="0..5 (TensorRT default 3)")
    _add_spec_arguments(build)
    _add_strict_argument(build)
    build.set_defaults(run=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    from edgedb.backends.tensorrt import import_pycuda_driver, import_tensorrt
    from edgedb.engine import BuildOptions, build_from_model
    from edgedb.engine.profiles import explicit_profile, parse_shape
    from edgedb.models import resolve_model

    shapes = (args.min_shape, args.opt_shape, args.max_shape)
    profile = None
    if any(shapes):
        if args.input_size or args.image_sizes:
            raise EdgeDBError("give either --min-shape/--opt-shape/--max-shape or --input-size/--image-size, not both")
        if not (args.min_shape and args.max_shape):
            raise EdgeDBError("--min-shape and --max-shape go together (--opt-shape is optional)")
        profile = explicit_profile(parse_shape(args.min_shape), parse_shape(args.opt_shape) if args.opt_shape else None,
                                   parse_shape(args.max_shape))
    source = resolve_model(args.model)
    import_tensorrt()  # a missing extra is said before the output is looked at or any CPU work
    import_pycuda_driver()
    for path, what in ((args.output, "--output"), (args.timing_cache, "--timing-cache")):
        if path is not None:
            _check_output(path, what, [source], make_folder=True)
    spec = _model_spec(args, args.model)
    skipped = _Skipped("build", args.strict)
    calib = _calibration_set(args.calib, skipped)
    options = BuildOptions(workspace_mib=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                           gpu_fallback=args.gpu_fallback, builder_optimization_level=args.builder_optimization_level)
    sidecar = build_from_model(
        args.model, args.output, precision=args.precision, calib=calib, method=args.method,
        input_size=args.input_size, image_sizes=args.image_sizes, limit_side_len=args.limit_side_len,
        limit_type=args.limit_type, max_batch=args.max_batch, profile=profile, options=options, spec=spec,
        device=args.device, verbose=args.verbose,
    )
    profile = sidecar.profiles[0]
    print(f"{args.output}: {sidecar.precision}, {sidecar.device.describe()}, profile {profile.describe()} "
          f"(NxHxW, {profile.layout} uint8 frames){skipped.summary()}")
    return 0
