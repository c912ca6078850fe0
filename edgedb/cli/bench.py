"""``edgedb bench``: trtexec-style timing of the whole detector (edgedb.bench)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from edgedb.backends import BACKENDS
from edgedb.bench.runner import MAX_STREAMS, STREAMS_PER_CORE, max_streams
from edgedb.cli._common import (
    CORES,
    _add_spec_arguments,
    _add_strict_argument,
    _bounded_float,
    _bounded_int,
    _calibration_set,
    _check_output,
    _count,
    _deployable_models,
    _input_size,
    _side,
    _Skipped,
    _threads,
    _write_text,
)
from edgedb.errors import EdgeDBError, InvalidInputError
from edgedb.preprocess import IMAGE_SUFFIXES


def add_parser(commands) -> None:
    bench = commands.add_parser(
        "bench", help="trtexec-style benchmark of the whole detector",
        description="Times the whole detector (preprocessing, inference with its copies, box formation) the way "
        "trtexec times a network: throughput, latency percentiles (trtexec's nearest-rank method), per-stage "
        "figures and their shares (edgedb.bench.run_benchmark). Flags named as in trtexec mean the same: "
        "--shapes, --batch, --warm-up (--warmUp), --duration, --iterations, --streams (--infStreams), "
        "--export-times (--exportTimes), --export-profile (--exportProfile). Several models run in "
        "interleaved rounds and are compared with the first (model@backend picks a backend per model). "
        "Ctrl-C prints what was measured so far.")
    bench.add_argument("models", nargs="*", default=["ppocrv4-det"], metavar="MODEL",
                       help="zoo name, ONNX or engine file; MODEL@cpu, MODEL@openvino or MODEL@tensorrt for its backend (default "
                       "ppocrv4-det, as detect)")
    bench.add_argument("--backend", default="auto", choices=list(BACKENDS),
                       help="default backend of the models (default auto)")
    bench.add_argument("--input-size", type=_input_size, metavar="HxW", help="letterbox every frame into HxW, "
                       "multiples of 32 (default: the detector's limit mode, aspect kept)")
    bench.add_argument("--shapes", metavar="NxHxW", help="batch and input size at once, as trtexec --shapes")
    bench.add_argument("--batch", type=_bounded_int(1, 1024), default=1, help="frames per query (default 1; needs a fixed input size)")
    bench.add_argument("--warm-up", type=_bounded_float(0), default=200.0, metavar="MS", help="warm-up in ms, dropped (default 200)")
    bench.add_argument("--duration", type=_bounded_float(0), default=3.0, metavar="S", help="run at least S seconds (default 3)")
    bench.add_argument("--iterations", type=_bounded_int(0), default=10, metavar="N", help="and at least N queries (default 10)")
    bench.add_argument("--streams", type=_streams, default=1, metavar="K",
                       help=f"K concurrent workers, each with its own detector: at most {STREAMS_PER_CORE} per core "
                       f"and {MAX_STREAMS} in all ({max_streams()} here), within the memory budget (default 1)")
    bench.add_argument("--rounds", type=_count, default=3, help="compare mode: interleaved rounds (default 3)")
    bench.add_argument("--images", type=Path, metavar="DIR",
                       help="real images, decoded before timing (default: generated text scenes)")
    bench.add_argument("--infer-only", action="store_true", help="time the network alone on prepared frames")
    bench.add_argument("--threads", type=_threads,
                       help="CPU threads per worker, at most the cores (default: cores / streams)")
    bench.add_argument("--limit-side-len", type=_side, help="detector side limit (default 736)")
    bench.add_argument("--limit-type", choices=["min", "max"], help="detector limit type (default min)")
    bench.add_argument("--precision", choices=["fp32", "fp16", "int8", "best", "bf16"],
                       help="convert ONNX models first (default: each model's own)")
    bench.add_argument("--calib", help="calibration images for int8/best")
    bench.add_argument("--export-times", metavar="FILE", help="every query's start, end and stage times as JSON")
    bench.add_argument("--export-profile", metavar="FILE",
                       help="per-layer times (ONNX Runtime profiler / TensorRT IProfiler) as JSON, from a separate run")
    bench.add_argument("--plot", metavar="FILE.png", help="latency histogram, latency over time, stages (matplotlib)")
    bench.add_argument("--json", metavar="FILE", help="the figures as JSON")
    _add_spec_arguments(bench)
    _add_strict_argument(bench)
    bench.set_defaults(run=_cmd_bench)


def _streams(text: str) -> int:
    value = _count(text)
    if value > max_streams():
        raise argparse.ArgumentTypeError(f"{value} streams on a machine with {CORES} cores: give at most "
                                         f"{max_streams()} ({STREAMS_PER_CORE} per core, {MAX_STREAMS} in all)")
    return value


def _bench_frames(folder: Path, skipped: _Skipped, limit: int = 64) -> list:
    """Up to ``limit`` decoded images of a folder, the unreadable ones skipped."""
    from edgedb.preprocess import as_bgr_image

    if not folder.is_dir():
        raise EdgeDBError(f"--images {folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise EdgeDBError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    frames = []
    for path in paths:
        if len(frames) == limit:
            break
        try:
            frames.append(as_bgr_image(path))
        except InvalidInputError as error:
            skipped.add(path, error)
    skipped.check_some_left(len(frames))
    return frames


def _cmd_bench(args: argparse.Namespace) -> int:
    import threading

    from edgedb.bench import report, run_benchmark, run_comparison
    from edgedb.engine.profiles import parse_shape

    batch, input_size = args.batch, args.input_size
    if args.shapes:
        if args.input_size:
            raise EdgeDBError("give --shapes NxHxW or --input-size HxW, not both")
        batch, height, width = parse_shape(args.shapes)
        try:
            input_size = _input_size(f"{height}x{width}")
        except argparse.ArgumentTypeError as error:
            raise EdgeDBError(f"--shapes {args.shapes}: {error}") from None
    for path, what in ((args.json, "--json"), (args.export_times, "--export-times"),
                       (args.export_profile, "--export-profile"), (args.plot, "--plot")):
        _check_output(path, what)
    if args.plot:
        from edgedb.bench.plot import _pyplot

        _pyplot()  # a missing matplotlib is reported before the run, not after it
    skipped = _Skipped("bench", args.strict)
    options = {key: value for key, value in (("limit_side_len", args.limit_side_len), ("limit_type", args.limit_type),
                                             ("precision", args.precision),
                                             ("calib", _calibration_set(args.calib, skipped))) if value is not None}
    images = _bench_frames(args.images, skipped) if args.images else None
    with tempfile.TemporaryDirectory(prefix="edgedb-bench-") as scratch:
        models = [model.partition("@") for model in args.models]
        paths = _deployable_models(args, [model for model, _, _ in models], Path(scratch))
        models = [f"{path}@{backend}" if backend else path for path, (_, _, backend) in zip(paths, models)]
        common = dict(backend=args.backend, input_size=input_size, batch=batch, warm_up_ms=args.warm_up,
                      duration_s=args.duration, iterations=args.iterations, streams=args.streams, images=images,
                      infer_only=args.infer_only, threads=args.threads, detector_options=options,
                      progress=sys.stderr.isatty(), stop=threading.Event())
        # Ctrl-C while the detectors are made reaches main(); during the run it stops the
        # queries, and what was measured is reported before main() is told.
        if len(models) == 1:
            model, _, backend = models[0].partition("@")
            results = [run_benchmark(model, **{**common, "backend": backend or args.backend},
                                     export_profile=bool(args.export_profile))]
        else:
            results = run_comparison(models, rounds=args.rounds, **common)
    print(report(results))
    if skipped.items:
        print(f"images{skipped.summary()}")
    if args.json:
        figures = [{**r.to_dict(), "skipped": skipped.items} for r in results]
        _write_text(args.json, json.dumps(figures, indent=1, default=str))
        print(f"wrote {args.json}")
    if args.export_times:
        _write_text(args.export_times, json.dumps({r.label: r.times() for r in results}, indent=1))
        print(f"wrote {args.export_times}")
    if args.export_profile:
        _write_text(args.export_profile, json.dumps({r.label: r.layers for r in results}, indent=1))
        print(f"wrote {args.export_profile}")
    if args.plot:
        from edgedb.bench.plot import plot_results

        print(f"wrote {plot_results(results, args.plot)}")
    if any(r.interrupted for r in results):
        raise KeyboardInterrupt
    return 0
