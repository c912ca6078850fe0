"""What several subcommands share: argument types, the spec, detector and frame flags,
output checks and the skipping of unreadable images."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from edgedb._files import write_atomically
from edgedb.backends import BACKENDS
from edgedb.errors import EdgeDBError, InvalidInputError

#: The largest side --input-size and --limit-side-len take: an 8192x8192 float32 frame is
#: already 800 MB, more than an edge device should be asked for by a typing slip.
MAX_SIDE = 8192
#: The network's stride: every DBNet downsamples by 32, so a fixed input is a multiple of it.
INPUT_STRIDE = 32
#: Cores of this machine: --threads takes no more (thousands of ONNX Runtime threads once
#: put a 2-core machine's load past 3,000); --streams is bounded by edgedb.bench.max_streams.
CORES = os.cpu_count() or 1


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


def _counted(count: int, one: str, many: Optional[str] = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


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
    from edgedb.tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE

    group.add_argument("--tile", choices=["auto", "on", "off"], default="auto",
                       help="cut very large images into overlapping tiles at full resolution and merge their boxes: "
                            "auto, where the 4096-pixel side cap would scale the image down; on, any image larger "
                            "than one tile; off, never (default auto)")
    group.add_argument("--tile-size", type=_bounded_int(64, MAX_SIDE), default=DEFAULT_TILE_SIZE, metavar="PX",
                       help=f"tile side in network pixels (default {DEFAULT_TILE_SIZE})")
    group.add_argument("--tile-overlap", type=_bounded_int(0, MAX_SIDE), default=DEFAULT_TILE_OVERLAP, metavar="PX",
                       help=f"pixels neighbouring tiles share at least, more than the tallest word "
                            f"(default {DEFAULT_TILE_OVERLAP})")
    group.add_argument("--tile-batch", type=_bounded_int(1, 1024), default=4, metavar="N",
                       help="tiles run at once (default 4)")
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
        tile=args.tile, tile_size=args.tile_size, tile_overlap=args.tile_overlap, tile_batch=args.tile_batch,
    )


def _add_input_size_arguments(parser: argparse.ArgumentParser) -> None:
    from edgedb.detector import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE

    group = parser.add_argument_group("frames, as the detector prepares them")
    group.add_argument("--limit-side-len", type=_side, default=DEFAULT_LIMIT_SIDE_LEN,
                       help=f"side limit of the resize (default {DEFAULT_LIMIT_SIDE_LEN})")
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE,
                       help=f"max: longer side at most the limit; min: shorter side at least (default {DEFAULT_LIMIT_TYPE})")
    group.add_argument("--input-size", type=_input_size, metavar="HxW",
                       help="fixed (letterboxed) input size, multiples of 32 (default: the limit mode, aspect kept)")


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


def _add_repository_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of edgedb.serving.export_triton, shared by export and serve."""
    from edgedb.preprocess import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE
    from edgedb.serving.protocol import DEFAULT_MODEL_NAME
    from edgedb.serving.repository import DEFAULT_MAX_PIXELS, DEFAULT_MAX_QUEUE, DEFAULT_QUEUE_DELAY_US

    parser.add_argument("model", nargs="?", default="ppocrv4-det",
                        help="zoo name, DBNet ONNX, or a TensorRT engine (default ppocrv4-det)")
    group = parser.add_argument_group("the served model (edgedb.serving.export_triton)")
    group.add_argument("--name", default=DEFAULT_MODEL_NAME, help=f"model name in the repository (default {DEFAULT_MODEL_NAME})")
    group.add_argument("--backend", default="auto", choices=list(BACKENDS),
                       help="what each instance's detector runs on (default auto: TensorRT on a GPU node)")
    group.add_argument("--precision", choices=["fp32", "fp16", "int8", "best"],
                       help="convert the ONNX model once, at export (default: its own); int8/best need --calib")
    group.add_argument("--calib", help="calibration images for int8/best: a folder or a list file")
    group.add_argument("--max-batch", type=_bounded_int(1, 1024), default=8,
                       help="Triton max_batch_size: same-size frames of concurrent requests run together (default 8)")
    group.add_argument("--instances", type=_bounded_int(1, 64), default=2,
                       help="model instances, each a process with its own detector (default 2)")
    group.add_argument("--threads", type=_threads, help="CPU threads per instance (default: the cores shared out)")
    group.add_argument("--max-queue", type=_bounded_int(1), default=DEFAULT_MAX_QUEUE,
                       help=f"requests waiting at most; more are refused at once (default {DEFAULT_MAX_QUEUE})")
    group.add_argument("--queue-delay-us", type=_bounded_int(0), default=DEFAULT_QUEUE_DELAY_US,
                       help=f"how long the batcher waits to fill a batch (default {DEFAULT_QUEUE_DELAY_US})")
    group.add_argument("--max-pixels", type=_bounded_int(1), default=DEFAULT_MAX_PIXELS,
                       help=f"larger frames get an error response (default {DEFAULT_MAX_PIXELS:,})")
    group.add_argument("--limit-side-len", type=_side, default=DEFAULT_LIMIT_SIDE_LEN,
                       help=f"side limit of the resize (default {DEFAULT_LIMIT_SIDE_LEN})")
    group.add_argument("--limit-type", choices=["min", "max"], default=DEFAULT_LIMIT_TYPE,
                       help=f"max: longer side at most the limit; min: shorter side at least (default {DEFAULT_LIMIT_TYPE})")
    group.add_argument("--box-thresh", type=_bounded_float(0, 1), help="minimum box score (default the detector's)")
    group.add_argument("--box-type", choices=["quad", "poly"], help="rectangles or polygons (default quad)")
    group.add_argument("--layout", choices=["python", "ensemble"], default="python",
                       help="python: EdgeDetector in each instance (default); ensemble: Triton runs the network "
                            "(a TensorRT engine, or the ONNX on its ONNX Runtime backend) between a Python resize "
                            "step and a box-formation step; IMAGE input only, no tiling")


def _export_options(args: argparse.Namespace) -> dict:
    """export_triton's keywords from _add_repository_arguments' flags."""
    detector = {"limit_side_len": args.limit_side_len, "limit_type": args.limit_type}
    detector.update({key: value for key, value in (("box_thresh", args.box_thresh), ("box_type", args.box_type))
                     if value is not None})
    return dict(name=args.name, backend=args.backend, precision=args.precision, calib=args.calib,
                max_batch=args.max_batch, instances=args.instances, threads=args.threads, max_queue=args.max_queue,
                queue_delay_us=args.queue_delay_us, max_pixels=args.max_pixels, detector_options=detector,
                layout=args.layout)
