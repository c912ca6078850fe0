"""edgedb against RapidOCR 3.x's detector, on RapidOCR's own engines, on several DBNets.

    python bench/bench_peers.py [--models ppocrv4-det ppocrv5-det-mobile ppocrv6-det-small]
        [--images DIR] [--offset K] [--count N] [--int8 DIR] [--only PATTERN ...]
        [--block N] [--markdown FILE] [--json FILE]

For each model, in one process and interleaved in blocks of N images (default 5; the order
of the contenders rotates from one block to the next, and each contender makes one untimed
call before its block), end to end on decoded images (preprocessing, inference, box
formation; decoding excluded). Blocks, not single images: right after another runtime's
call, its threads still spin on the two cores and this one's are parked, which made
PP-OCRv4's INT8 model 77 ms a frame when alternating with FP32, against 46 ms alone.

- ``rapidocr-ort``, ``rapidocr-ov``: RapidOCR 3.x's ``TextDetector`` with its default
  settings (config.yaml) on its ONNX Runtime and its OpenVINO engine, given the same
  ONNX file; ``rapidocr-ov-f32``: its OpenVINO engine held to float32, as it runs on
  CPUs without BF16 (OpenVINO picks bfloat16 by itself on CPUs that have it);
- ``edgedb-ort``, ``edgedb-ov``: ``EdgeDetector(model, backend)`` with its defaults, FP32;
- ``edgedb-ov-bf16``: the FP32 model on OpenVINO in bfloat16 (``precision="bf16"``), which
  is what RapidOCR's OpenVINO engine does by itself on CPUs with AVX-512 BF16 or AMX;
- with ``--int8 DIR``: every INT8 model ``DIR/<model>-<label>.onnx`` on both backends, as
  ``edgedb-int8-<label>-ort|ov`` (e.g. ``<model>-cpu.onnx``, ``<model>-tensorrt.onnx`` from
  ``edgedb quantize <model> --target cpu|tensorrt --calib ...``, ``<model>-cpu-qat.onnx``).

Every contender uses all cores. Reports the median and mean milliseconds per image, the
ICDAR 2015 precision, recall and hmean (when the images have ground truth), and speed
ratios against both RapidOCR engines and against edgedb FP32 on ONNX Runtime.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "icdar2015-dev" / "images"
DEFAULT_MODELS = ("ppocrv4-det", "ppocrv5-det-mobile", "ppocrv6-det-small")


def rapidocr_detector(model_path: Path, engine: str, precision: str | None = None):
    """RapidOCR 3.x's TextDetector on ``model_path``, its defaults, engine "onnxruntime" or
    "openvino". ``precision`` ("f32") adds OpenVINO's inference precision hint to the CPU
    properties RapidOCR sets, which its config has no key for."""
    from rapidocr import RapidOCR
    from rapidocr.inference_engine.openvino.device_config import CPUConfig
    from rapidocr.utils.typings import EngineType

    kind = {"onnxruntime": EngineType.ONNXRUNTIME, "openvino": EngineType.OPENVINO}[engine]
    ocr = RapidOCR(params={"Det.engine_type": kind, "Det.model_path": str(model_path), "Global.log_level": "error",
                           "Global.use_cls": False, "Global.use_rec": False})
    plain = CPUConfig.get_config
    if precision is not None:
        CPUConfig.get_config = lambda self: {**plain(self), "INFERENCE_PRECISION_HINT": precision}
    try:
        detector = ocr._load_det_model()  # the detector alone, as edgedb's EdgeDetector is
    finally:
        CPUConfig.get_config = plain

    def detect(image):
        boxes = detector(image).boxes
        return [] if boxes is None else list(boxes)

    return detect


def edgedb_detector(model, backend: str, **options):
    from edgedb import EdgeDetector

    detector = EdgeDetector(model, backend, **options)
    return lambda image: [box.points for box in detector.detect(image)]


# Every run keeps these: the ratios are taken against them.
BASELINES = ("rapidocr-ort", "rapidocr-ov", "rapidocr-ov-f32", "edgedb-ort")


def contenders(model: str, int8: Path | None, only=()) -> dict:
    from edgedb.models import resolve_model

    path = resolve_model(model)
    found = {
        "rapidocr-ort": lambda: rapidocr_detector(path, "onnxruntime"),
        "rapidocr-ov": lambda: rapidocr_detector(path, "openvino"),
        # the same engine told to run float32: what it does on CPUs without BF16 (AVX2 ones)
        "rapidocr-ov-f32": lambda: rapidocr_detector(path, "openvino", precision="f32"),
        "edgedb-ort": lambda: edgedb_detector(model, "onnxruntime"),
        "edgedb-ov": lambda: edgedb_detector(model, "openvino"),
        # OpenVINO in bfloat16 (where the CPU has AVX-512 BF16 or AMX; float32 elsewhere), as
        # RapidOCR's OpenVINO engine runs by default on such CPUs
        "edgedb-ov-bf16": lambda: edgedb_detector(model, "openvino", precision="bf16"),
    }
    if int8 is not None:
        from edgedb.models import zoo_names

        stem = Path(model).stem if model.endswith(".onnx") else model  # a file: its INT8 models are <stem>-*.onnx
        longer = [name for name in zoo_names() if name.startswith(f"{stem}-")]  # not theirs
        quantized_models = sorted(q for q in int8.glob(f"{stem}-*.onnx")
                                  if not any(q.name.startswith(f"{name}-") for name in longer))
        if not quantized_models:
            sys.exit(f"bench_peers: no {int8}/{stem}-*.onnx; make them with edgedb quantize {model} "
                     f"--target cpu|tensorrt --calib IMAGES -o {int8}/{stem}-cpu.onnx (or -tensorrt.onnx)")
        for quantized in quantized_models:
            label = quantized.stem[len(stem) + 1:]  # cpu, tensorrt, cpu-qat, ...
            for backend, short in (("onnxruntime", "ort"), ("openvino", "ov")):
                found[f"edgedb-int8-{label}-{short}"] = (lambda q=quantized, b=backend: edgedb_detector(q, b))
    if only:
        found = {name: make for name, make in found.items()
                 if name in BASELINES or any(fnmatch.fnmatchcase(name, pattern) for pattern in only)}
    made, refused = {}, {}
    for name, make in found.items():
        try:
            made[name] = make()
        except Exception as error:  # e.g. OpenVINO refusing a Q/DQ model it computes wrongly
            refused[name] = f"{type(error).__name__}: {error}"
            print(f"bench_peers: {model}: {name} refused: {refused[name]}", file=sys.stderr)
    return made, refused


def run_model(model: str, dataset: list, images: list, int8: Path | None, warmup: int = 2, only=(),
              block_size: int = 5) -> dict:
    from edgedb.evaluation import EvalResult, evaluate_image

    detectors, refused = contenders(model, int8, only)
    for name in list(detectors):
        try:
            for image in images[:warmup]:
                detectors[name](image)
        except Exception as error:  # e.g. OpenVINO refusing a Q/DQ model on its first real frame
            refused[name] = f"{type(error).__name__}: {error}"
            print(f"bench_peers: {model}: {name} refused: {refused[name]}", file=sys.stderr)
            del detectors[name]
    names = list(detectors)
    times = {name: [] for name in names}
    results = {name: [] for name in names}
    for block, first in enumerate(range(0, len(images), block_size)):
        order = names[block % len(names):] + names[:block % len(names)]
        for name in order:
            # One untimed call first: the previous contender's runtime threads may still be
            # spinning, and this one's be parked; the block then runs as a lone deployment
            # would, frame after frame.
            detectors[name](images[first])
            for (image_name, _, truth), image in zip(dataset[first:first + block_size], images[first:first + block_size]):
                start = time.perf_counter()
                boxes = detectors[name](image)
                times[name].append(time.perf_counter() - start)
                if truth is not None:
                    results[name].append(evaluate_image(boxes, truth, image_name))
    rows = {}
    for name in names:
        summary = EvalResult.from_images(results[name]) if results[name] else None
        rows[name] = {
            "median_ms": statistics.median(times[name]) * 1e3,
            "mean_ms": statistics.fmean(times[name]) * 1e3,
            "precision": summary.precision if summary else None,
            "recall": summary.recall if summary else None,
            "hmean": summary.hmean if summary else None,
        }
    for name, row in rows.items():
        for peer in BASELINES:
            if peer in rows:
                row[f"x_{peer}"] = rows[peer]["mean_ms"] / row["mean_ms"]
    return {"model": model, "images": len(images), "contenders": rows, "refused": refused}


def machine_line() -> str:
    import onnxruntime
    import openvino

    from edgedb.bench.system import cpu_model

    return (f"{cpu_model()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}, "
            f"ONNX Runtime {onnxruntime.__version__}, OpenVINO {openvino.__version__.split('-')[0]}, "
            f"rapidocr {__import__('importlib.metadata').metadata.version('rapidocr')}")


def markdown(report: dict) -> str:
    first = f"{report['offset'] + 1}..{report['offset'] + report['count']}" if report.get("offset") else f"first {report['count']}"
    lines = [f"Machine: {report['machine']}. Images: {report['images_dir']} ({first}).", ""]
    for entry in report["models"]:
        lines += [f"**{entry['model']}** ({entry['images']} images, interleaved in blocks of {report.get('block', 1)}):", "",
                  "| contender | median ms | mean ms | hmean | P | R | " + " | ".join(f"x {p}" for p in BASELINES) + " |",
                  "|---|---:|---:|---:|---:|---:|" + "---:|" * len(BASELINES)]
        for name, row in entry["contenders"].items():
            h = "" if row["hmean"] is None else f"{row['hmean']:.3f} | {row['precision']:.3f} | {row['recall']:.3f}"
            ratios = " | ".join(f"{row[f'x_{p}']:.2f}" if f"x_{p}" in row else "" for p in BASELINES)
            lines.append(f"| {name} | {row['median_ms']:.1f} | {row['mean_ms']:.1f} | {h or ' | '} | {ratios} |")
        for name, why in entry.get("refused", {}).items():
            lines.append(f"| {name} | refused: {why.splitlines()[0][:160]} |" + " |" * (4 + len(BASELINES)))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="zoo names (default: three DBNets)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="ICDAR-style image folder")
    parser.add_argument("--offset", type=int, default=0, help="skip this many images first (e.g. those INT8 calibration saw)")
    parser.add_argument("--count", type=int, default=100, help="images per model (default 100)")
    parser.add_argument("--int8", type=Path, help="folder of INT8 models <model>-<label>.onnx (e.g. <model>-cpu.onnx, <model>-tensorrt.onnx; for a model file, its stem)")
    parser.add_argument("--only", nargs="+", default=(), metavar="PATTERN",
                        help="run only the contenders matching these patterns (e.g. 'edgedb-int8-cpu-*'), "
                             "besides the three the ratios need")
    parser.add_argument("--block", type=int, default=5,
                        help="images each contender runs in a row before the next one's turn (default 5; 1: "
                             "strict alternation, where each contender also pays for the previous one's threads)")
    parser.add_argument("--markdown", type=Path, help="append the tables to this file")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)

    import cv2

    from edgedb.errors import InvalidInputError
    from edgedb.evaluation import IcdarDataset
    from edgedb.preprocess import IMAGE_SUFFIXES

    try:
        dataset = list(IcdarDataset(args.images))
    except InvalidInputError:  # photos without ground truth: speed only
        dataset = [(path.stem, path, None) for path in sorted(args.images.iterdir())
                   if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES]
    dataset = dataset[args.offset: args.offset + args.count]
    images = [cv2.imread(str(path)) for _, path, _ in dataset]
    report = {"machine": machine_line(), "images_dir": str(args.images), "offset": args.offset, "count": len(images),
              "block": args.block, "models": []}
    for model in args.models:
        entry = run_model(model, dataset, images, args.int8, only=args.only, block_size=max(1, args.block))
        report["models"].append(entry)
        print(markdown({**report, "models": [entry]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        with open(args.markdown, "a", encoding="utf-8") as out:
            out.write(markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
