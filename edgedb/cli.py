"""The ``edgedb`` command line: a thin layer over the library; every flag is an argument
of the function or class it calls (named in each group's title)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgedb.errors import EdgeDBError

log = logging.getLogger("edgedb")

from edgedb.preprocess import IMAGE_SUFFIXES


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 736x1280, not {text!r}") from None
    return height, width


def _add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    from edgedb.detector import (
        DEFAULT_BOXES,
        DEFAULT_LIMIT_SIDE_LEN,
        DEFAULT_LIMIT_TYPE,
    )

    group = parser.add_argument_group("detector (edgedb.EdgeDetector)")
    group.add_argument("--model", default="ppocrv4-det", help="zoo name or DBNet ONNX path (default ppocrv4-det)")
    group.add_argument("--backend", default="auto", choices=["auto", "cpu", "onnxruntime", "tensorrt"],
                       help="where to run the model (default auto)")
    group.add_argument("--limit-side-len", type=int, default=DEFAULT_LIMIT_SIDE_LEN,
                       help=f"side limit of the resize (default {DEFAULT_LIMIT_SIDE_LEN})")
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE,
                       help=f"max: longer side at most the limit; min: shorter side at least (default {DEFAULT_LIMIT_TYPE})")
    group.add_argument("--input-size", type=_size, metavar="HxW",
                       help="letterbox every image into this fixed input size (multiples of 32)")
    group.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    group.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"],
                       help="convert the ONNX model to this precision first (default: its own); "
                            "int8 and best need --calib")
    group.add_argument("--calib", help="calibration images for int8/best: a folder or a list file")
    _add_engine_shape_arguments(group)
    boxes = parser.add_argument_group("box formation (edgedb.boxes_from_prob)")
    boxes.add_argument("--thresh", type=float, default=DEFAULT_BOXES["thresh"], help="binarization threshold")
    boxes.add_argument("--box-thresh", type=float, default=DEFAULT_BOXES["box_thresh"], help="minimum box score")
    boxes.add_argument("--unclip-ratio", type=float, default=DEFAULT_BOXES["unclip_ratio"],
                       help="r' of the offset D' = A'r'/L'")
    boxes.add_argument("--max-candidates", type=int, default=DEFAULT_BOXES["max_candidates"],
                       help="regions considered at most")
    boxes.add_argument("--min-size", type=float, default=DEFAULT_BOXES["min_size"], help="minimum short side of a region")
    boxes.add_argument("--score-mode", choices=["fast", "slow"], default=DEFAULT_BOXES["score_mode"],
                       help="mean inside the box (fast) or the region's contour (slow)")
    boxes.add_argument("--box-type", choices=["quad", "poly"], default=DEFAULT_BOXES["box_type"],
                       help="rectangles or polygons")
    boxes.add_argument("--use-dilation", action="store_true", help="dilate the binary map by 2x2 first")


def _add_engine_shape_arguments(group) -> None:
    group.add_argument("--image-size", type=_size, action="append", dest="image_sizes", metavar="HxW",
                       help="TensorRT, limit mode: an image size the engine must take (repeat; the most common "
                            "first: it is the profile's opt). Default: HD/Full HD video both ways, VGA, 1080x1440")
    group.add_argument("--max-batch", type=int, default=1, help="TensorRT: the largest batch (default 1)")
    group.add_argument("--device", type=int, default=0, help="TensorRT: CUDA device index (default 0)")


def _detector(args: argparse.Namespace):
    from edgedb.detector import EdgeDetector

    return EdgeDetector(
        args.model, args.backend, precision=args.precision, calib=args.calib, image_sizes=args.image_sizes,
        max_batch=args.max_batch, device=args.device, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
        input_size=args.input_size, threads=args.threads, thresh=args.thresh, box_thresh=args.box_thresh,
        unclip_ratio=args.unclip_ratio, max_candidates=args.max_candidates, min_size=args.min_size,
        score_mode=args.score_mode, box_type=args.box_type, use_dilation=args.use_dilation,
    )


def _image_paths(inputs: Sequence[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EdgeDBError(f"{item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise EdgeDBError(f"{item}: no such file or folder")
    return paths


def _cmd_detect(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from edgedb.preprocess import as_bgr_image
    from edgedb.visualize import draw_boxes

    sources: list[tuple[str, object]] = []
    if args.sample or not args.images:
        from edgedb.synthetic import make_text_image

        sources.append(("sample.png", make_text_image(0, size=(720, 1280)).image))
    sources += [(str(path), path) for path in _image_paths(args.images)]
    if args.draw:
        args.draw.mkdir(parents=True, exist_ok=True)
    report = []
    with _detector(args) as detector:
        for name, source in tqdm(sources, desc="detect", unit="image", disable=len(sources) < 3, file=sys.stderr):
            image = as_bgr_image(source)
            boxes = detector.detect(image)
            report.append({"image": name, "height": image.shape[0], "width": image.shape[1],
                           "boxes": [box.to_dict() for box in boxes]})
            if not args.json:
                print(f"{name}: {len(boxes)} boxes")
                for box in boxes:
                    print(f"  {box.score:.3f}  " + " ".join(f"{x:.0f},{y:.0f}" for x, y in box.points))
            if args.draw:
                out = args.draw / (Path(name).stem + ".png")
                cv2.imwrite(str(out), draw_boxes(image, boxes))
                print(f"  drawn: {out}")
    if args.json:
        text = json.dumps(report, indent=1)
        if str(args.json) == "-":
            print(text)
        else:
            Path(args.json).write_text(text)
            print(f"wrote {args.json} ({len(report)} images)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgedb.evaluation import EvalResult, IcdarDataset, evaluate_image

    dataset = IcdarDataset(args.images, args.gt)
    results = []
    with _detector(args) as detector:
        for name, image_path, ground_truth in tqdm(dataset, desc="eval", unit="image", file=sys.stderr):
            results.append(evaluate_image(detector.detect(image_path), ground_truth, name))
    summary = EvalResult.from_images(results)
    print(f"{len(results)} images: precision {summary.precision:.4f}  recall {summary.recall:.4f}  "
          f"hmean {summary.hmean:.4f}  ({summary.matched} matched, {summary.gt_care} ground truth, "
          f"{summary.det_care} detections)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_rewrite(args: argparse.Namespace) -> int:
    import onnx

    from edgedb.graph import rewrite_file
    from edgedb.models import resolve_model, zoo_spec
    from edgedb.spec import guess_spec, spec_from_metadata

    source = resolve_model(args.input)
    proto = onnx.load(str(source), load_external_data=False)
    spec = spec_from_metadata(proto) or zoo_spec(args.input) or guess_spec(proto)
    overrides = {key: value for key, value in (
        ("input_name", args.input_name), ("prob_output", args.prob_output), ("channel_order", args.channel_order),
        ("mean", tuple(args.mean) if args.mean else None), ("std", tuple(args.std) if args.std else None),
    ) if value is not None}
    spec = spec.with_(**overrides)
    new_spec = rewrite_file(
        source, args.output, spec, opset=args.opset, fold=not args.no_fold, prune=not args.no_prune,
        simplify=not args.no_simplify, fuse_preprocessing=not args.no_fuse_preprocessing, dynamic=not args.no_dynamic,
    )
    print(f"wrote {args.output}: input {new_spec.input_name!r}, output {new_spec.prob_output!r}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    import onnx

    from edgedb.detector import load_deployable
    from edgedb.precision.calibration import calibration_images, collect_stats
    from edgedb.spec import spec_from_metadata

    model, _ = load_deployable(args.model)
    if args.precision == "fp16":
        from edgedb.precision import to_float16

        result = to_float16(model)
    else:
        from edgedb.precision.calibration import DEFAULT_CACHE
        from edgedb.precision.int8 import quantize_int8, sensitive_layers

        if not args.calib:
            raise EdgeDBError(f"{args.precision} needs a calibration set: --calib DIR (a folder of images) or a list file")
        if args.precision == "best" and (args.target != "tensorrt" or args.full_range_weights):
            raise EdgeDBError("--precision best is for TensorRT (INT8 convolutions, float16 between them); "
                              "leave out --target cpu and --full-range-weights")
        images = calibration_images(args.calib)
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
    onnx.save(result, str(args.output))
    print(f"wrote {args.output} ({args.precision}{'' if args.precision == 'fp16' else ', ' + args.target + ', ' + args.method}); "
          f"spec: {spec_from_metadata(result).input_name!r} -> 'prob'")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgedb.evaluation import IcdarDataset
    from edgedb.precision.compare import compare_precisions, format_reports

    dataset = IcdarDataset(args.images, args.gt)
    samples = [(name, path, truth) for name, path, truth in dataset]
    models = {Path(m).stem if Path(m).suffix == ".onnx" else m: m for m in [args.reference, *args.models]}
    reports = compare_precisions(models, samples, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
                                 input_size=args.input_size)
    print(format_reports(reports))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from edgedb.engine import BuildOptions, build_from_model
    from edgedb.engine.profiles import explicit_profile, parse_shape

    shapes = (args.min_shape, args.opt_shape, args.max_shape)
    profile = None
    if any(shapes):
        if args.input_size or args.image_sizes:
            raise EdgeDBError("give either --min-shape/--opt-shape/--max-shape or --input-size/--image-size, not both")
        if not (args.min_shape and args.max_shape):
            raise EdgeDBError("--min-shape and --max-shape go together (--opt-shape is optional)")
        profile = explicit_profile(parse_shape(args.min_shape), parse_shape(args.opt_shape) if args.opt_shape else None,
                                   parse_shape(args.max_shape))
    options = BuildOptions(workspace_mib=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                           gpu_fallback=args.gpu_fallback, builder_optimization_level=args.builder_optimization_level)
    sidecar = build_from_model(
        args.model, args.output, precision=args.precision, calib=args.calib, method=args.method,
        input_size=args.input_size, image_sizes=args.image_sizes, limit_side_len=args.limit_side_len,
        limit_type=args.limit_type, max_batch=args.max_batch, profile=profile, options=options, device=args.device,
        verbose=args.verbose,
    )
    profile = sidecar.profiles[0]
    print(f"{args.output}: {sidecar.precision}, {sidecar.device.describe()}, profile {profile.describe()} "
          f"(NxHxW, {profile.layout} uint8 frames)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import threading

    from edgedb.bench import report, run_benchmark, run_comparison
    from edgedb.engine.profiles import parse_shape

    batch, input_size = args.batch, args.input_size
    if args.shapes:
        if args.input_size:
            raise EdgeDBError("give --shapes NxHxW or --input-size HxW, not both")
        batch, height, width = parse_shape(args.shapes)
        input_size = (height, width)
    for path, what in ((args.json, "--json"), (args.export_times, "--export-times"),
                       (args.export_profile, "--export-profile"), (args.plot, "--plot")):
        if path and not Path(path).resolve().parent.is_dir():
            raise EdgeDBError(f"{what}: the folder of {path} does not exist")
    if args.plot:
        from edgedb.bench.plot import _pyplot

        _pyplot()  # a missing matplotlib is reported before the run, not after it
    options = {key: value for key, value in (("limit_side_len", args.limit_side_len), ("limit_type", args.limit_type),
                                             ("precision", args.precision), ("calib", args.calib)) if value is not None}
    common = dict(backend=args.backend, input_size=input_size, batch=batch, warm_up_ms=args.warm_up,
                  duration_s=args.duration, iterations=args.iterations, streams=args.streams, images=args.images,
                  infer_only=args.infer_only, threads=args.threads, detector_options=options,
                  progress=sys.stderr.isatty(), stop=threading.Event())
    try:
        if len(args.models) == 1:
            model, _, backend = args.models[0].partition("@")
            results = [run_benchmark(model, **{**common, "backend": backend or args.backend},
                                     export_profile=bool(args.export_profile))]
        else:
            results = run_comparison(args.models, rounds=args.rounds, **common)
    except KeyboardInterrupt:  # while detectors were being made: nothing measured yet
        print("edgedb bench: interrupted before any query was measured", file=sys.stderr)
        return 130
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
        print(f"wrote {args.json}")
    if args.export_times:
        Path(args.export_times).write_text(json.dumps({r.label: r.times() for r in results}, indent=1))
        print(f"wrote {args.export_times}")
    if args.export_profile:
        Path(args.export_profile).write_text(json.dumps({r.label: r.layers for r in results}, indent=1))
        print(f"wrote {args.export_profile}")
    if args.plot:
        from edgedb.bench.plot import plot_results

        print(f"wrote {plot_results(results, args.plot)}")
    return 130 if any(r.interrupted for r in results) else 0


def _add_input_size_arguments(parser: argparse.ArgumentParser) -> None:
    from edgedb.detector import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE

    group = parser.add_argument_group("frames, as the detector prepares them")
    group.add_argument("--limit-side-len", type=int, default=DEFAULT_LIMIT_SIDE_LEN)
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE)
    group.add_argument("--input-size", type=_size, metavar="HxW", help="fixed (letterboxed) input size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedb",
        description="DBNet text detection for edge devices: TensorRT on GPUs, ONNX Runtime on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    detect = commands.add_parser("detect", help="detect text in images",
                                 description="Runs EdgeDetector on images or folders of images. "
                                 "Without images, on a generated sample image.")
    detect.add_argument("images", nargs="*", type=Path, help="image files or folders (default: a generated sample)")
    detect.add_argument("--sample", action="store_true", help="also run on a generated sample image")
    detect.add_argument("--json", metavar="FILE", help="write the boxes as JSON (- for stdout)")
    detect.add_argument("--draw", type=Path, metavar="DIR", help="write each image with its boxes drawn into DIR")
    _add_detector_arguments(detect)
    detect.set_defaults(run=_cmd_detect)

    evaluate = commands.add_parser("eval", help="ICDAR 2015 precision, recall and hmean",
                                   description="Evaluates EdgeDetector on images with ICDAR 2015 ground truth "
                                   "(gt_img_N.txt per img_N.jpg; IoU > 0.5, one-to-one, ### regions don't care).")
    evaluate.add_argument("--images", type=Path, required=True, help="folder of images")
    evaluate.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    evaluate.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    _add_detector_arguments(evaluate)
    evaluate.set_defaults(run=_cmd_eval)

    rewrite = commands.add_parser("rewrite", help="rewrite a DBNet ONNX export for deployment",
                                  description="Upgrades the opset, folds constants, prunes the threshold "
                                  "branch, folds affine layers into convolutions and fuses HardSwish, fuses preprocessing (uint8 NHWC BGR frames in), names the output "
                                  "'prob' and makes batch, height and width dynamic (edgedb.graph.rewrite_file).")
    rewrite.add_argument("input", help="zoo name or ONNX path")
    rewrite.add_argument("output", type=Path, help="where to write the rewritten ONNX")
    rewrite.add_argument("--opset", type=int, default=17, help="target opset (default 17)")
    rewrite.add_argument("--no-fold", action="store_true", help="skip constant folding")
    rewrite.add_argument("--no-prune", action="store_true", help="keep threshold/binary-map outputs")
    rewrite.add_argument("--no-simplify", action="store_true",
                         help="keep affine layers and the HardSwish decomposition as exported")
    rewrite.add_argument("--no-fuse-preprocessing", action="store_true", help="keep the float NCHW input")
    rewrite.add_argument("--no-dynamic", action="store_true", help="keep the input and output shapes as they are")
    spec = rewrite.add_argument_group("model spec (edgedb.ModelSpec), for exports without one")
    spec.add_argument("--input-name", help="the image input")
    spec.add_argument("--prob-output", help="the probability-map output")
    spec.add_argument("--channel-order", choices=["BGR", "RGB"], help="what the network was trained on")
    spec.add_argument("--mean", type=float, nargs=3, help="per-channel mean on the 0..1 scale")
    spec.add_argument("--std", type=float, nargs=3, help="per-channel std on the 0..1 scale")
    rewrite.set_defaults(run=_cmd_rewrite)

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
                          help="tensorrt: signed symmetric Q/DQ on convolutions; cpu: uint8 QDQ ONNX Runtime fuses")
    quantize.add_argument("--method", choices=["max", "percentile", "entropy", "mse"], default="percentile",
                          help="how activation ranges are chosen (default percentile)")
    quantize.add_argument("--exclude", nargs="*", default=[], metavar="NODE", help="Conv nodes to keep in float")
    quantize.add_argument("--auto-exclude", type=int, default=0, metavar="K",
                          help="also keep the K convolutions most hurt by INT8 in float (sensitivity search)")
    quantize.add_argument("--sensitivity-images", type=int, default=4, help="images the search uses (default 4)")
    quantize.add_argument("--full-range-weights", action="store_true",
                          help="--target cpu: 8-bit instead of 7-bit weights, for CPUs with VNNI or ARM dot products "
                               "(x86 without VNNI saturates them)")
    quantize.add_argument("--cache", type=Path, default=None,
                          help="calibration statistics cache folder (default calibration/cache)")
    _add_input_size_arguments(quantize)
    quantize.set_defaults(run=_cmd_quantize)

    compare = commands.add_parser(
        "compare", help="accuracy and map error of models against a reference",
        description="Per model: ICDAR 2015 hmean, max and mean absolute error of the probability map and "
        "IoU of the binarized maps against the reference (edgedb.precision.compare_precisions).")
    compare.add_argument("reference", help="the FP32 model (zoo name or ONNX path)")
    compare.add_argument("models", nargs="+", help="models to compare (ONNX paths)")
    compare.add_argument("--images", type=Path, required=True, help="ICDAR-style folder of images")
    compare.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    compare.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    _add_input_size_arguments(compare)
    compare.set_defaults(run=_cmd_compare)

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
    shapes.add_argument("--input-size", type=_size, metavar="HxW", help="static profile: every frame letterboxed into HxW")
    shapes.add_argument("--limit-side-len", type=int, default=736, help="limit mode side limit (default 736)")
    shapes.add_argument("--limit-type", choices=["min", "max"], default="min", help="limit mode type (default min)")
    _add_engine_shape_arguments(shapes)
    shapes.add_argument("--min-shape", metavar="NxHxW", help="explicit profile instead (as trtexec --minShapes)")
    shapes.add_argument("--opt-shape", metavar="NxHxW", help="(default: min batch, max height and width)")
    shapes.add_argument("--max-shape", metavar="NxHxW")
    trt_options = build.add_argument_group("TensorRT (edgedb.engine.BuildOptions)")
    trt_options.add_argument("--workspace", type=int, metavar="MiB", help="workspace pool limit (trtexec --memPoolSize)")
    trt_options.add_argument("--timing-cache", type=Path, metavar="FILE",
                             help="read and write kernel timings here (default: one per GPU and TensorRT version "
                                  "beside the engine)")
    trt_options.add_argument("--dla-core", type=int, metavar="N", help="build for DLA core N (static shapes, fp16/int8)")
    trt_options.add_argument("--gpu-fallback", action="store_true", help="with --dla-core: unsupported layers on the GPU")
    trt_options.add_argument("--builder-optimization-level", type=int, metavar="L", help="0..5 (TensorRT default 3)")
    build.set_defaults(run=_cmd_build)

    bench = commands.add_parser(
        "bench", help="trtexec-style benchmark of the whole detector",
        description="Times the whole detector (preprocessing, inference with its copies, box formation) the way "
        "trtexec times a network: throughput, latency percentiles (trtexec's nearest-rank method), per-stage "
        "figures and their shares (edgedb.bench.run_benchmark). Flags named as in trtexec mean the same: "
        "--shapes, --batch, --warm-up (--warmUp), --duration, --iterations, --streams (--infStreams), "
        "--export-times (--exportTimes), --export-profile (--exportProfile). Several models run in "
        "interleaved rounds and are compared with the first (model@backend picks a backend per model). "
        "Ctrl-C prints what was measured so far.")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="zoo name, ONNX or engine file; MODEL@cpu or "
                       "MODEL@tensorrt for its backend")
    bench.add_argument("--backend", default="auto", choices=["auto", "cpu", "onnxruntime", "tensorrt"],
                       help="default backend of the models (default auto)")
    bench.add_argument("--input-size", type=_size, metavar="HxW", help="letterbox every frame into HxW "
                       "(default: the detector's limit mode, aspect kept)")
    bench.add_argument("--shapes", metavar="NxHxW", help="batch and input size at once, as trtexec --shapes")
    bench.add_argument("--batch", type=int, default=1, help="frames per query (default 1; needs a fixed input size)")
    bench.add_argument("--warm-up", type=float, default=200.0, metavar="MS", help="warm-up in ms, dropped (default 200)")
    bench.add_argument("--duration", type=float, default=3.0, metavar="S", help="run at least S seconds (default 3)")
    bench.add_argument("--iterations", type=int, default=10, metavar="N", help="and at least N queries (default 10)")
    bench.add_argument("--streams", type=int, default=1, metavar="K",
                       help="K concurrent workers, each with its own detector (default 1)")
    bench.add_argument("--rounds", type=int, default=3, help="compare mode: interleaved rounds (default 3)")
    bench.add_argument("--images", type=Path, metavar="DIR",
                       help="real images, decoded before timing (default: generated text scenes)")
    bench.add_argument("--infer-only", action="store_true", help="time the network alone on prepared frames")
    bench.add_argument("--threads", type=int, help="CPU threads per worker (default: cores / streams)")
    bench.add_argument("--limit-side-len", type=int, help="detector side limit (default 736)")
    bench.add_argument("--limit-type", choices=["min", "max"], help="detector limit type (default min)")
    bench.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"], help="convert ONNX models first")
    bench.add_argument("--calib", help="calibration images for int8/best")
    bench.add_argument("--export-times", metavar="FILE", help="every query's start, end and stage times as JSON")
    bench.add_argument("--export-profile", metavar="FILE",
                       help="per-layer times (ONNX Runtime profiler / TensorRT IProfiler) as JSON, from a separate run")
    bench.add_argument("--plot", metavar="FILE.png", help="latency histogram, latency over time, stages (matplotlib)")
    bench.add_argument("--json", metavar="FILE", help="the figures as JSON")
    bench.set_defaults(run=_cmd_bench)

    train = commands.add_parser(
        "train", help="fine-tune a DBNet on your own images (needs PyTorch: the train extra)",
        description="Fine-tunes a DBNet with the DB paper's labels and loss on random crops of your images, keeps "
        "the checkpoint with the best validation hmean (edgedb's own box formation and ICDAR metric) and writes "
        "an ONNX with the base model's interface, which rewrite, quantize, build and EdgeDetector take "
        "(edgedb.train.finetune). Refuses to write a model no better than the base on validation.")
    train.add_argument("--images", type=Path, required=True, help="training images (ICDAR 2015 layout) or a "
                       "PaddleOCR label file (image<TAB>[{\"points\": ...}])")
    train.add_argument("--gt", type=Path, help="ground-truth folder (gt_<image>.txt); default: beside the images")
    train.add_argument("--val-images", type=Path, help="validation images (default: 20%% of the training images)")
    train.add_argument("--val-gt", type=Path, help="validation ground truth")
    train.add_argument("--base", default="ppocrv4-det", help="zoo name or DBNet ONNX to start from (default ppocrv4-det)")
    train.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    train.add_argument("--batch-size", type=int, default=4, help="crops per step (default 4)")
    train.add_argument("--crop", type=int, default=640, help="crop side in pixels (default 640)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam (default 1e-3)")
    train.add_argument("--loss", choices=["db", "prob"], default="db",
                       help="db: Ls + Lb + 10 Lt with a threshold head; prob: Ls only (default db)")
    train.add_argument("--binary-loss", choices=["dice", "bce"], default="dice", help="Lb's form (default dice)")
    train.add_argument("--threads", type=int, help="CPU threads (default: the free cores)")
    train.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when PyTorch sees a GPU")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--output", "-o", type=Path, required=True, help="where to write the fine-tuned ONNX")
    train.set_defaults(run=_cmd_train)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from edgedb.train import finetune
    from edgedb.train.data import load_samples

    if not args.output.parent.is_dir():
        raise EdgeDBError(f"output folder {args.output.parent} does not exist")
    train = load_samples(args.images, args.gt)
    val = load_samples(args.val_images, args.val_gt) if args.val_images else None
    result = finetune(train, val, base=args.base, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                      lr=args.lr, loss=args.loss, binary_loss=args.binary_loss, threads=args.threads,
                      device=args.device, seed=args.seed)
    print(f"validation before: {result.base}")
    print(f"validation after:  {result.best} (step {result.best_step} of {result.steps}, {result.seconds:.0f} s)")
    result.save(args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except EdgeDBError as error:
        print(f"edgedb {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. piped into head
        return 0


if __name__ == "__main__":
    sys.exit(main())
