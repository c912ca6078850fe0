"""The ``edgedb`` command line: a thin layer over the library; every flag is an argument
of the function or class it calls (named in each group's title).

Every error is one line on stderr, ``edgedb COMMAND: error: ...``, and exit code 2. Batch
commands skip an image they cannot read (saying which and why, and listing it under
``skipped`` in their JSON) unless ``--strict`` asks them to stop at it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from edgedb._files import atomic_output, save_onnx, write_atomically
from edgedb.backends import BACKENDS
from edgedb.bench.runner import MAX_STREAMS, STREAMS_PER_CORE, max_streams
from edgedb.errors import EdgeDBError, InvalidInputError
from edgedb.preprocess import IMAGE_SUFFIXES

log = logging.getLogger("edgedb")

#: The largest side --input-size and --limit-side-len take: an 8192x8192 float32 frame is
#: already 800 MB, more than an edge device should be asked for by a typing slip.
MAX_SIDE = 8192
#: The network's stride: every DBNet downsamples by 32, so a fixed input is a multiple of it.
INPUT_STRIDE = 32
#: Cores of this machine: --threads takes no more (thousands of ONNX Runtime threads once
#: put a 2-core machine's load past 3,000); --streams is bounded by edgedb.bench.max_streams.
CORES = os.cpu_count() or 1


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block above them)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 736x1280, not {text!r}") from None
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be 1..{MAX_SIDE}")
    return height, width


def _input_size(text: str) -> tuple[int, int]:
    """A fixed network input HxW, checked as the detector checks it (multiples of the
    stride, within the memory budget: edgedb.preprocess.check_fixed_size) before any model
    loads: 33x33 once got as far as an ONNX Runtime broadcast error."""
    from edgedb.preprocess import check_fixed_size

    height, width = _size(text)
    if height % INPUT_STRIDE or width % INPUT_STRIDE:  # said with the nearest size that works
        up = f"{-(-height // INPUT_STRIDE) * INPUT_STRIDE}x{-(-width // INPUT_STRIDE) * INPUT_STRIDE}"
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be multiples of {INPUT_STRIDE}, the network's "
                                         f"stride (such as {up})")
    try:
        return check_fixed_size((height, width), INPUT_STRIDE)
    except InvalidInputError as error:
        raise argparse.ArgumentTypeError(_in_cli_words(str(error), {"input_size": "--input-size"})) from None


def _bounded_int(low: int, high: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: at least {low}" + (f", at most {high}" if high is not None else ""))
        return value

    parse.__name__ = "int"
    return parse


def _bounded_float(low: float, high: Optional[float] = None, *, open_low: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value):  # an infinite warm-up or duration never ends
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        too_low = value <= low if open_low else value < low
        if too_low or (high is not None and value > high):
            bounds = f"{'above' if open_low else 'at least'} {low}" + (f", at most {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: {bounds}")
        return value

    parse.__name__ = "float"
    return parse


_count = _bounded_int(1)
_side = _bounded_int(1, MAX_SIDE)


def _threads(text: str) -> int:
    value = _count(text)
    if value > CORES:
        raise argparse.ArgumentTypeError(f"{value} threads on a machine with {CORES} cores: give at most {CORES}")
    return value


def _streams(text: str) -> int:
    value = _count(text)
    if value > max_streams():
        raise argparse.ArgumentTypeError(f"{value} streams on a machine with {CORES} cores: give at most "
                                         f"{max_streams()} ({STREAMS_PER_CORE} per core, {MAX_STREAMS} in all)")
    return value


def _counted(count: int, one: str, many: Optional[str] = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


# Library arguments whose flag is not their name with dashes (the rest are found from the
# parser): a CLI error names the flag, never the Python argument ("pass gt_dir" once).
_FLAG_OF_ARGUMENT = {"gt_dir": "--gt", "images_dir": "--images", "warm_up_ms": "--warm-up", "duration_s": "--duration",
                     "workspace_mib": "--workspace", "image_sizes": "--image-size", "cache_dir": "--cache"}


def _flags_of(parser: argparse.ArgumentParser) -> dict:
    """Python argument name -> flag, for the long flags of ``parser``."""
    flags = dict(_FLAG_OF_ARGUMENT)
    actions: list[argparse.Action] = parser._actions  # argparse keeps no public list of them
    for action in actions:
        options: list[str] = getattr(action, "option_strings", [])  # an instance attribute trt-api-check cannot see
        for option in options:
            if option.startswith("--") and option != "--help":
                flags.setdefault(option[2:].replace("-", "_"), option)
    return flags


def _in_cli_words(message: str, flags: dict) -> str:
    """``message`` with each Python argument name said as its flag: a name with an
    underscore wherever it stands, a plain word ("seed") only as the subject of a check
    ("seed must ...", "threads=9"), where it cannot be ordinary prose. Names inside dotted
    or $-prefixed names (edgedb.memory.MEMORY_BUDGET) are left."""
    if not flags:
        return message
    names = "|".join(sorted((re.escape(name) for name in flags), key=len, reverse=True))

    def said(found: re.Match) -> str:
        name = found.group(1)
        checked = re.match(r"(=| must\b)", message[found.end():])
        return flags[name] if "_" in name or checked else name

    return re.sub(rf"(?<![\w.$-])({names})(?![\w])", said, message)


# ---------------------------------------------------------------------------
# Shared arguments
# ---------------------------------------------------------------------------


def _add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "model spec (edgedb.ModelSpec), for exports edgedb cannot read by itself; used before any guess")
    known = "(default: what edgedb knows of the model, else a guess)"
    group.add_argument("--input-name", help=f"the image input {known}")
    group.add_argument("--prob-output", help=f"the probability-map output {known}")
    group.add_argument("--channel-order", choices=["BGR", "RGB"], help=f"what the network was trained on {known}")
    group.add_argument("--mean", type=_bounded_float(-10, 10), nargs=3,
                       help=f"per-channel mean on the 0..1 scale {known}")
    group.add_argument("--std", type=_bounded_float(0, open_low=True), nargs=3,
                       help=f"per-channel std on the 0..1 scale {known}")


def _spec_overrides(args: argparse.Namespace) -> dict:
    return {key: value for key, value in (
        ("input_name", getattr(args, "input_name", None)), ("prob_output", getattr(args, "prob_output", None)),
        ("channel_order", getattr(args, "channel_order", None)),
        ("mean", tuple(args.mean) if getattr(args, "mean", None) else None),
        ("std", tuple(args.std) if getattr(args, "std", None) else None),
    ) if value is not None}


def _read_onnx(path: Path):
    """An ONNX file's graph (weights left on disk), or a one-line ModelError."""
    import onnx

    from edgedb.errors import ModelError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model onnx can read ({type(error).__name__}: {error})") from None
    if not proto.graph.node:  # an empty or foreign file can parse as an empty ModelProto
        raise ModelError(f"{path} is not an ONNX model with a graph (no nodes parsed from it)")
    return proto


def _model_spec(args: argparse.Namespace, model: str, *, required: bool = True):
    """The spec the spec flags give ``model``, or None without flags (edgedb then reads or
    guesses it). The flags start from what edgedb knows of the model (a zoo entry, or the
    names given); a guess fills only what they leave out."""
    from edgedb.models import is_engine_file, resolve_model, zoo_spec
    from edgedb.spec import ModelSpec, guess_spec, spec_from_metadata

    overrides = _spec_overrides(args)
    if not overrides:
        return None
    if is_engine_file(model):
        raise EdgeDBError(f"{model} is an engine: it carries its own spec, so leave out the spec flags")
    proto = _read_onnx(resolve_model(model))
    stored = spec_from_metadata(proto)
    if stored is not None and stored.fused_preprocessing:
        if not required:
            return None
        raise EdgeDBError(f"{model} was written by edgedb and carries its own spec; leave out the spec flags "
                          "(they describe exports)")
    base = stored or zoo_spec(model)
    if base is None and {"input_name", "prob_output"} <= overrides.keys():
        base = ModelSpec(extra_outputs=tuple(o.name for o in proto.graph.output if o.name != overrides["prob_output"]))
    if base is None:
        base = guess_spec(proto)
    return base.with_(**overrides)


def _check_output(path, what: str, inputs: Sequence = (), *, make_folder: bool = False) -> None:
    """Fails before any work when ``path`` cannot be written or would replace an input;
    ``make_folder`` creates its folder instead of refusing a missing one."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise EdgeDBError(f"{what} {path} is a folder; give a file name")
    if make_folder and not path.resolve().parent.exists():
        try:
            path.resolve().parent.mkdir(parents=True)
        except OSError as error:
            raise EdgeDBError(f"{what} {path}: cannot create the folder {path.parent}: {error.strerror}") from None
    if not path.resolve().parent.is_dir():
        raise EdgeDBError(f"{what} {path}: the folder {path.parent} does not exist")
    for item in inputs:
        if item is not None and Path(item).exists() and Path(item).resolve() == path.resolve():
            raise EdgeDBError(f"{what} {path} is also an input; write somewhere else")


def _write_text(path, text: str) -> None:
    if str(path) == "-":
        print(text)
    else:
        write_atomically(path, text)


def _without_name(reason: str, name) -> str:
    """``reason`` without the file it starts with: "x.jpg is not an image" -> "not an image"."""
    for said in dict.fromkeys((str(name), Path(name).name)):
        if reason.startswith(said):
            rest = reason[len(said):].lstrip(" :")
            return rest[3:] if rest.startswith("is ") else rest
    return reason


class _Skipped:
    """The images a batch command could not read: each said on stderr as it happens, all
    counted in the summary and the JSON; with ``strict`` the first one ends the run."""

    def __init__(self, command: str, strict: bool):
        self.command, self.strict, self.items = command, strict, []

    def add(self, name, error: Exception) -> None:
        if self.strict:
            reason = str(error) if str(name) in str(error) else f"{name}: {error}"
            raise EdgeDBError(f"{reason} (--strict; leave it out to skip such images)")
        reason = str(error)
        print(f"edgedb {self.command}: skipped {name}: {_without_name(reason, name)}", file=sys.stderr)
        self.items.append({"file": str(name), "reason": reason})

    def summary(self) -> str:
        return f", {len(self.items)} skipped (unreadable)" if self.items else ""

    def check_some_left(self, kept: int, what: str = "images") -> None:
        if kept == 0 and self.items:
            if len(self.items) == 1:
                raise EdgeDBError(f"the one {what[:-1]} could not be read")
            raise EdgeDBError(f"none of the {len(self.items)} {what} could be read")


class _Interruption:
    """Ctrl-C inside ``with`` ends the block early: the command then reports what it
    finished (marked as cut short) and calls ``resume()``, which hands the interrupt on to
    main() for its one line and exit code 130."""

    def __init__(self):
        self.happened = False

    def __enter__(self) -> "_Interruption":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        self.happened = kind is KeyboardInterrupt
        return self.happened

    def summary(self) -> str:
        return ", interrupted" if self.happened else ""

    def resume(self) -> None:
        if self.happened:
            raise KeyboardInterrupt


def _readable(paths: Sequence[Path], skipped: _Skipped) -> list[Path]:
    """The paths whose images decode (each decoded once and dropped: for sets read later)."""
    from edgedb.preprocess import as_bgr_image

    good = []
    for path in paths:
        try:
            as_bgr_image(path)
        except InvalidInputError as error:
            skipped.add(path, error)
        else:
            good.append(path)
    return good


def _calibration_set(calib, skipped: _Skipped):
    """``calib`` as given when every image reads, else the list of those that do."""
    if calib is None:
        return None
    from edgedb.precision.calibration import calibration_images

    paths = calibration_images(calib)
    good = _readable(paths, skipped)
    skipped.check_some_left(len(good), "calibration images")
    return calib if len(good) == len(paths) else good


def _add_strict_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable image (exit 2) instead of skipping it")


def _add_detector_arguments(parser: argparse.ArgumentParser) -> None:
    from edgedb.detector import (
        DEFAULT_BOXES,
        DEFAULT_LIMIT_SIDE_LEN,
        DEFAULT_LIMIT_TYPE,
    )

    group = parser.add_argument_group("detector (edgedb.EdgeDetector)")
    group.add_argument("--model", default="ppocrv4-det", help="zoo name or DBNet ONNX path (default ppocrv4-det)")
    group.add_argument("--backend", default="auto", choices=list(BACKENDS),
                       help="where to run the model (default auto)")
    group.add_argument("--limit-side-len", type=_side, default=DEFAULT_LIMIT_SIDE_LEN,
                       help=f"side limit of the resize (default {DEFAULT_LIMIT_SIDE_LEN})")
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE,
                       help=f"max: longer side at most the limit; min: shorter side at least (default {DEFAULT_LIMIT_TYPE})")
    group.add_argument("--input-size", type=_input_size, metavar="HxW",
                       help="letterbox every image into this fixed input size (multiples of 32; default: the "
                            "limit mode, aspect kept)")
    group.add_argument("--threads", type=_threads, help=f"CPU threads, at most the {CORES} cores (default: all cores)")
    group.add_argument("--precision", choices=["fp32", "fp16", "int8", "best", "bf16"],
                       help="convert the ONNX model to this precision first (default: its own); "
                            "int8 and best need --calib; bf16: --backend openvino runs the FP32 model in bfloat16")
    group.add_argument("--calib", help="calibration images for int8/best: a folder or a list file")
    _add_engine_shape_arguments(group)
    defaults = DEFAULT_BOXES
    boxes = parser.add_argument_group("box formation (edgedb.boxes_from_prob)")
    boxes.add_argument("--thresh", type=_bounded_float(0, 1), default=defaults["thresh"],
                       help=f"binarization threshold (default {defaults['thresh']})")
    boxes.add_argument("--box-thresh", type=_bounded_float(0, 1), default=defaults["box_thresh"],
                       help=f"minimum box score (default {defaults['box_thresh']})")
    boxes.add_argument("--unclip-ratio", type=_bounded_float(0, 100), default=defaults["unclip_ratio"],
                       help=f"r' of the offset D' = A'r'/L' (default {defaults['unclip_ratio']})")
    boxes.add_argument("--max-candidates", type=_bounded_int(1, 1_000_000), default=defaults["max_candidates"],
                       help=f"regions considered at most (default {defaults['max_candidates']})")
    boxes.add_argument("--min-size", type=_bounded_float(0, MAX_SIDE), default=defaults["min_size"],
                       help=f"minimum short side of a region (default {defaults['min_size']})")
    boxes.add_argument("--score-mode", choices=["fast", "slow"], default=defaults["score_mode"],
                       help=f"mean inside the box (fast) or the region's contour (slow) (default {defaults['score_mode']})")
    boxes.add_argument("--box-type", choices=["quad", "poly"], default=defaults["box_type"],
                       help=f"rectangles or polygons (default {defaults['box_type']})")
    boxes.add_argument("--use-dilation", action="store_true", help="dilate the binary map by 2x2 first (default off)")
    _add_spec_arguments(parser)


def _add_engine_shape_arguments(group) -> None:
    group.add_argument("--image-size", type=_size, action="append", dest="image_sizes", metavar="HxW",
                       help="TensorRT, limit mode: an image size the engine must take (repeat; the most common "
                            "first: it is the profile's opt). Default: HD/Full HD video both ways, VGA, 1080x1440")
    group.add_argument("--max-batch", type=_bounded_int(1, 1024), default=1, help="TensorRT: the largest batch (default 1)")
    group.add_argument("--device", type=_bounded_int(0), default=0, help="TensorRT: CUDA device index (default 0)")


def _detector(args: argparse.Namespace, skipped: _Skipped):
    from edgedb.detector import EdgeDetector
    from edgedb.models import is_engine_file, resolve_model

    if not is_engine_file(args.model):
        _read_onnx(resolve_model(args.model))  # a damaged file is said as such, not as an odd graph
    if args.precision == "bf16" and args.backend != "openvino":
        raise InvalidInputError(f"--precision bf16 needs --backend openvino (got --backend {args.backend})")

    return EdgeDetector(
        args.model, args.backend, spec=_model_spec(args, args.model), precision=args.precision,
        calib=_calibration_set(args.calib, skipped), image_sizes=args.image_sizes,
        max_batch=args.max_batch, device=args.device, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
        input_size=args.input_size, threads=args.threads, thresh=args.thresh, box_thresh=args.box_thresh,
        unclip_ratio=args.unclip_ratio, max_candidates=args.max_candidates, min_size=args.min_size,
        score_mode=args.score_mode, box_type=args.box_type, use_dilation=args.use_dilation,
    )


def _image_paths(inputs: Sequence[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise EdgeDBError(f"{item} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise EdgeDBError(f"{item}: no such file or folder")
    return paths


def _drawing_names(names: Sequence[str], folder: Path, inputs: Sequence[Path]) -> list[Path]:
    """Where each image's drawing goes: ``a.jpg`` -> ``a_jpg.png`` (so ``a.jpg`` and ``a.png``
    do not meet), with ``-2``, ``-3`` ... added when two names still meet (same file name in
    two folders) or a name is one of the input images: a drawing never replaces an input."""
    taken = {path.resolve() for path in inputs}
    targets = []
    for name in names:
        path = Path(name)
        stem = f"{path.stem}_{path.suffix[1:].lower()}" if path.suffix else path.stem
        target, n = folder / f"{stem}.png", 1
        while target.resolve() in taken:
            n += 1
            target = folder / f"{stem}-{n}.png"
        taken.add(target.resolve())
        targets.append(target)
    return targets


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def _write_drawing(path: Path, drawing) -> None:
    import cv2

    with atomic_output(path) as temporary:
        try:
            written = cv2.imwrite(str(temporary), drawing)
        except cv2.error as error:
            raise EdgeDBError(f"cannot write the drawing {path}: {str(error).strip()}") from None
        if not written:
            raise EdgeDBError(f"cannot write the drawing {path}")


def _cmd_detect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgedb.preprocess import as_bgr_image
    from edgedb.visualize import draw_boxes

    sources: list[tuple[str, object]] = []
    if args.sample or not args.images:
        from edgedb.synthetic import make_text_image

        sources.append(("sample", make_text_image(0, size=(720, 1280)).image))
    paths = _image_paths(args.images)
    sources += [(str(path), path) for path in paths]
    _check_output(args.json, "--json", paths)
    if args.draw:
        if args.draw.exists() and not args.draw.is_dir():
            raise EdgeDBError(f"--draw {args.draw} is a file; give a folder")
        args.draw.mkdir(parents=True, exist_ok=True)
        drawings = _drawing_names([name for name, _ in sources], args.draw, paths)
    skipped = _Skipped("detect", args.strict)
    report = []
    interruption = _Interruption()
    with _detector(args, skipped) as detector, interruption:
        for index, (name, source) in enumerate(
                tqdm(sources, desc="detect", unit="image", disable=len(sources) < 3, file=sys.stderr)):
            try:
                image = as_bgr_image(source)
                boxes = detector.detect(image)
            except InvalidInputError as error:
                skipped.add(name, error)
                continue
            report.append({"image": name, "height": image.shape[0], "width": image.shape[1],
                           "boxes": [box.to_dict() for box in boxes]})
            if not args.json:
                print(f"{name}: {_counted(len(boxes), 'box', 'boxes')}")
                for box in boxes:
                    print(f"  {box.score:.3f}  " + " ".join(f"{x:.0f},{y:.0f}" for x, y in box.points))
            if args.draw:
                out = drawings[index]
                _write_drawing(out, draw_boxes(image, boxes))
                print(f"  drawn: {out}", file=sys.stderr if str(args.json) == "-" else sys.stdout)
    if args.json:
        _write_text(args.json, json.dumps({"images": report, "skipped": skipped.items,
                                           "interrupted": interruption.happened}, indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json} ({_counted(len(report), 'image')}{skipped.summary()}{interruption.summary()})")
    elif skipped.items:
        print(f"{_counted(len(report), 'image')}{skipped.summary()}")
    interruption.resume()
    skipped.check_some_left(len(report))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgedb.evaluation import EvalResult, IcdarDataset, evaluate_image

    _check_output(args.json, "--json")
    dataset = IcdarDataset(args.images, args.gt)
    skipped = _Skipped("eval", args.strict)
    results = []
    interruption = _Interruption()
    with _detector(args, skipped) as detector, interruption:
        for name, image_path, ground_truth in tqdm(dataset, desc="eval", unit="image", file=sys.stderr):
            try:
                boxes = detector.detect(image_path)
            except InvalidInputError as error:
                skipped.add(image_path, error)
                continue
            results.append(evaluate_image(boxes, ground_truth, name))
    if not results:
        interruption.resume()
    skipped.check_some_left(len(results))
    summary = EvalResult.from_images(results)
    print(f"{_counted(len(results), 'image')}{skipped.summary()}{interruption.summary()}: "
          f"precision {summary.precision:.4f}  recall {summary.recall:.4f}  hmean {summary.hmean:.4f}  "
          f"({summary.matched} matched, {summary.gt_care} ground truth, {summary.det_care} detections)")
    if args.json:
        _write_text(args.json, json.dumps({**summary.to_dict(), "skipped": skipped.items,
                                           "interrupted": interruption.happened}, indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json}")
    interruption.resume()
    return 0


def _cmd_rewrite(args: argparse.Namespace) -> int:
    from edgedb.graph import rewrite_file
    from edgedb.models import resolve_model, zoo_spec
    from edgedb.spec import guess_spec, spec_from_metadata

    source = resolve_model(args.input)
    _check_output(args.output, "output", [source])
    model = _read_onnx_full(source)
    spec = _model_spec(args, args.input) or spec_from_metadata(model) or zoo_spec(args.input) or guess_spec(model)
    new_spec = rewrite_file(
        model, args.output, spec, opset=args.opset, fold=not args.no_fold, prune=not args.no_prune,
        simplify=not args.no_simplify, fuse_preprocessing=not args.no_fuse_preprocessing, dynamic=not args.no_dynamic,
    )
    print(f"wrote {args.output}: input {new_spec.input_name!r}, output {new_spec.prob_output!r}")
    return 0


def _read_onnx_full(path: Path):
    """An ONNX file with its weights, or a one-line ModelError."""
    from edgedb.graph.rewrite import load_model

    return load_model(path)


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


def _deployable_models(args: argparse.Namespace, models: Sequence[str], scratch: Path) -> list:
    """Each model checked to exist and load (before any run); with spec flags, the exports
    among them rewritten with that spec into ``scratch`` (edgedb-written models carry their own)."""
    import onnx

    from edgedb.detector import load_deployable
    from edgedb.models import is_engine_file, resolve_model

    resolved = []
    for index, model in enumerate(models):
        path = resolve_model(model)
        if is_engine_file(model):
            resolved.append(model)
            continue
        _read_onnx(path)
        spec = _model_spec(args, model, required=False)
        if spec is None:
            resolved.append(model)
            continue
        rewritten, _ = load_deployable(model, spec)
        target = scratch / f"{index}-{path.stem}.onnx"
        onnx.save(rewritten, str(target))
        resolved.append(str(target))
    return resolved


def _cmd_compare(args: argparse.Namespace) -> int:
    from edgedb.evaluation import IcdarDataset
    from edgedb.precision.compare import compare_precisions, format_reports
    from edgedb.preprocess import as_bgr_image

    _check_output(args.json, "--json")
    names = [args.reference, *args.models]
    with tempfile.TemporaryDirectory(prefix="edgedb-compare-") as scratch:
        paths = _deployable_models(args, names, Path(scratch))
        dataset = IcdarDataset(args.images, args.gt)
        skipped = _Skipped("compare", args.strict)
        samples = []
        for name, path, truth in dataset:
            try:
                samples.append((name, as_bgr_image(path), truth))
            except InvalidInputError as error:
                skipped.add(path, error)
        skipped.check_some_left(len(samples))
        models, backends = {}, {}
        reference_backend = args.reference_backend or args.backend
        for index, (name, path) in enumerate(zip(names, paths)):
            label = Path(name).stem if Path(name).suffix == ".onnx" else name
            backend = reference_backend if index == 0 else args.backend
            if reference_backend != args.backend:
                label += f"@{backend}"
            while label in models:
                label += "'"
            models[label], backends[label] = path, backend
        reports = compare_precisions(models, samples, limit_side_len=args.limit_side_len, limit_type=args.limit_type,
                                     input_size=args.input_size, backends=backends)
    print(format_reports(reports))
    if skipped.items:
        print(f"{_counted(len(samples), 'image')}{skipped.summary()}")
    if args.json:
        _write_text(args.json, json.dumps({"models": [r.to_dict() for r in reports], "skipped": skipped.items},
                                          indent=1))
        if str(args.json) != "-":
            print(f"wrote {args.json}")
    return 0


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


def _add_input_size_arguments(parser: argparse.ArgumentParser) -> None:
    from edgedb.detector import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE

    group = parser.add_argument_group("frames, as the detector prepares them")
    group.add_argument("--limit-side-len", type=_side, default=DEFAULT_LIMIT_SIDE_LEN,
                       help=f"side limit of the resize (default {DEFAULT_LIMIT_SIDE_LEN})")
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE,
                       help=f"max: longer side at most the limit; min: shorter side at least (default {DEFAULT_LIMIT_TYPE})")
    group.add_argument("--input-size", type=_input_size, metavar="HxW",
                       help="fixed (letterboxed) input size, multiples of 32 (default: the limit mode, aspect kept)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgedb",
        description="DBNet text detection for edge devices: TensorRT on GPUs, ONNX Runtime on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions")
    # -v after the command too (edgedb detect -v); SUPPRESS keeps the one given before it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress and decisions")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_parser = commands.add_parser

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return add_parser(name, parents=[verbose], **kwargs)

    commands.add_parser = command  # type: ignore[method-assign]

    detect = commands.add_parser("detect", help="detect text in images",
                                 description="Runs EdgeDetector on images or folders of images. "
                                 "Without images, on a generated sample image.")
    detect.add_argument("images", nargs="*", type=Path, help="image files or folders (default: a generated sample)")
    detect.add_argument("--sample", action="store_true", help="also run on a generated sample image")
    detect.add_argument("--json", metavar="FILE", help="write the boxes as JSON (- for stdout)")
    detect.add_argument("--draw", type=Path, metavar="DIR",
                        help="write each image with its boxes drawn into DIR as NAME_EXT.png (a.jpg -> a_jpg.png); "
                             "never over an input image")
    _add_strict_argument(detect)
    _add_detector_arguments(detect)
    detect.set_defaults(run=_cmd_detect)

    evaluate = commands.add_parser("eval", help="ICDAR 2015 precision, recall and hmean",
                                   description="Evaluates EdgeDetector on images with ICDAR 2015 ground truth "
                                   "(gt_img_N.txt per img_N.jpg; IoU > 0.5, one-to-one, ### regions don't care).")
    evaluate.add_argument("--images", type=Path, required=True, help="folder of images")
    evaluate.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    evaluate.add_argument("--json", metavar="FILE", help="write the figures as JSON (- for stdout)")
    _add_strict_argument(evaluate)
    _add_detector_arguments(evaluate)
    evaluate.set_defaults(run=_cmd_eval)

    rewrite = commands.add_parser("rewrite", help="rewrite a DBNet ONNX export for deployment",
                                  description="Upgrades the opset, folds constants, prunes the threshold "
                                  "branch, folds affine layers into convolutions and fuses HardSwish, fuses preprocessing (uint8 NHWC BGR frames in), names the output "
                                  "'prob' and makes batch, height and width dynamic (edgedb.graph.rewrite_file).")
    rewrite.add_argument("input", help="zoo name or ONNX path")
    rewrite.add_argument("output", type=Path, help="where to write the rewritten ONNX")
    rewrite.add_argument("--opset", type=_bounded_int(11, 21), default=17, help="target opset (default 17)")
    rewrite.add_argument("--no-fold", action="store_true", help="skip constant folding")
    rewrite.add_argument("--no-prune", action="store_true", help="keep threshold/binary-map outputs")
    rewrite.add_argument("--no-simplify", action="store_true",
                         help="keep affine layers and the HardSwish decomposition as exported")
    rewrite.add_argument("--no-fuse-preprocessing", action="store_true", help="keep the float NCHW input")
    rewrite.add_argument("--no-dynamic", action="store_true", help="keep the input and output shapes as they are")
    _add_spec_arguments(rewrite)
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

    compare = commands.add_parser(
        "compare", help="accuracy and map error of models against a reference",
        description="Per model: ICDAR 2015 hmean, max and mean absolute error of the probability map and "
        "IoU of the binarized maps against the reference (edgedb.precision.compare_precisions).")
    compare.add_argument("reference", help="the FP32 model (zoo name or ONNX path)")
    compare.add_argument("models", nargs="+", help="models to compare (ONNX paths)")
    compare.add_argument("--images", type=Path, required=True, help="ICDAR-style folder of images")
    compare.add_argument("--gt", type=Path, help="folder of gt_*.txt files (default: ../gt or ./gt)")
    compare.add_argument("--json", metavar="FILE", help="write the figures as JSON (- for stdout)")
    compare.add_argument("--backend", default="auto", choices=list(BACKENDS),
                         help="where the models run (default auto)")
    compare.add_argument("--reference-backend", choices=list(BACKENDS),
                         help="where the reference runs (default: --backend); e.g. --reference-backend onnxruntime "
                              "--backend openvino checks OpenVINO against ONNX Runtime, the reference given again "
                              "as a model")
    _add_input_size_arguments(compare)
    _add_spec_arguments(compare)
    _add_strict_argument(compare)
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
    train.add_argument("--seed", type=_bounded_int(0, 2**32 - 1), default=0, help="random seed, 0..2^32-1 (default 0)")
    train.add_argument("--output", "-o", type=Path, required=True, help="where to write the fine-tuned ONNX")
    _add_spec_arguments(train)
    _add_strict_argument(train)
    train.set_defaults(run=_cmd_train)
    for subparser in commands.choices.values():
        subparser.set_defaults(cli_flags=_flags_of(subparser))
    return parser


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
                      freeze=args.freeze)
    print(f"validation before: {result.base}")
    print(f"validation after:  {result.best} (step {result.best_step} of {result.steps}, {result.seconds:.0f} s)"
          f"{skipped.summary()}")
    result.save(args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    command = None
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as done:  # --help, or a usage error already printed on one line
            return done.code if isinstance(done.code, int) else 2
        command = args.command
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
        if not command:
            parser.print_help()
            return 0
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C wherever it lands (imports, model load, a batch): 128 + SIGINT
        print(f"edgedb{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """The command's exit code; the errors it may raise on purpose become one line and 2."""
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. piped into head
        return 0
    except EdgeDBError as error:
        message = _in_cli_words(str(error), getattr(args, "cli_flags", {}))
    except MemoryError:
        message = "out of memory: try a smaller --input-size / --limit-side-len or fewer images at once"
    except OSError as error:  # permission denied, disk full, ...
        where = f": {error.filename}" if error.filename else ""
        message = f"{error.strerror or error}{where}"
    print(f"edgedb {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
