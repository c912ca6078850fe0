"""The OpenVINO backend: the same deployable ONNX graphs on Intel's CPU runtime.

OpenVINO reads the ONNX edgedb writes (FP32, FP16 and the Q/DQ INT8 models of both
targets) as it is: its low-precision transformations turn the Q/DQ pairs of either target
into integer convolutions. Callers see dynamic shapes (batch, height and width), as on ONNX
Runtime; underneath, a size that keeps coming back gets a model compiled for it alone.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgedb._extras import import_optional
from edgedb._checks import thread_count
from edgedb.backends.base import Backend, OversizedRuns
from edgedb.errors import EdgeDBError, InvalidInputError, ModelError

log = logging.getLogger(__name__)

EXTRA = "pip install 'dbnet-edge[openvino]' (OpenVINO, for Intel and other x86/ARM CPUs)"


def import_openvino():
    """Returns the openvino module, or raises MissingDependencyError naming the extra."""
    return import_optional("openvino", "the OpenVINO backend", EXTRA)


INFERENCE_PRECISIONS = ("f32", "bf16")


def compile_config(threads: Optional[int], inference_precision: str = "f32") -> dict[str, str]:
    """The CPU plugin's settings: one inference at a time on every core (or ``threads``),
    in float32 wherever the model is float unless ``inference_precision="bf16"``. OpenVINO
    would otherwise pick bfloat16 by itself on CPUs that have it (AVX-512 BF16, AMX):
    faster, but another precision than the one the model was checked in, so it is asked
    for by name (EdgeDetector's ``precision="bf16"``)."""
    if inference_precision not in INFERENCE_PRECISIONS:
        raise InvalidInputError(f"inference_precision must be one of {INFERENCE_PRECISIONS}, "
                                f"not {inference_precision!r}")
    threads = thread_count("threads", threads) or os.cpu_count() or 1
    return {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": inference_precision,
            "INFERENCE_NUM_THREADS": str(threads)}


def _graph_names(proto) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ONNX graph's input and output names, in order."""
    initializers = {init.name for init in proto.graph.initializer}
    inputs = tuple(value.name for value in proto.graph.input if value.name not in initializers)
    return inputs, tuple(value.name for value in proto.graph.output)


def _has_qdq(proto) -> bool:
    return any(node.op_type == "QuantizeLinear" for node in proto.graph.node)


def _with_integer_stem(proto):
    """``proto`` with ``precision.cpu_graph.pad_pixel_channels`` applied, where it applies:
    a fourth, all-zero input channel on the first convolutions, which OpenVINO then runs as
    integer convolutions rather than in float32 (see there)."""
    import onnx_graphsurgeon as gs

    from edgedb.precision.cpu_graph import pad_pixel_channels

    graph = gs.import_onnx(proto)
    if not pad_pixel_channels(graph):
        return proto
    padded = gs.export_onnx(graph)
    del padded.metadata_props[:]
    padded.metadata_props.extend(proto.metadata_props)
    return padded


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def probe_in_child(source: Union[str, bytes], where: str) -> None:
    """Compiles and checks a Q/DQ model in a child process first, once per model, OpenVINO
    version and CPU (the verdict is kept in the cache folder): OpenVINO 2026.4.1 crashes
    the process (SIGSEGV in compile_model) on the CPU target of PP-OCRv6 small det, and a
    crash must cost the child, not the caller.

    Raises:
        ModelError: the child crashed, or found the model computed wrongly.
    """
    import hashlib
    import json
    import subprocess
    import sys
    import tempfile

    from edgedb.models import cache_dir

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    version = import_openvino().__version__.split("-")[0]
    key = hashlib.sha256(data + version.encode() + _cpu_flags().encode()).hexdigest()[:24]
    verdict_file = cache_dir() / "openvino-probes" / f"{key}.json"
    try:
        verdict = json.loads(verdict_file.read_text())
    except (OSError, ValueError):
        verdict = None
    if verdict is None:
        with tempfile.TemporaryDirectory(prefix="edgedb-openvino-probe-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(data)
            child = subprocess.run([sys.executable, "-m", "edgedb.backends.openvino", str(path)],
                                   capture_output=True, text=True, timeout=600)
        if child.returncode == 0:
            verdict = {"ok": True}
        elif child.returncode == _PROBE_DISAGREES:
            verdict = {"ok": False, "why": child.stdout.strip().replace(str(path), "{model}").removesuffix(_ADVICE)}
        elif child.returncode < 0:
            verdict = {"ok": False, "why": f"OpenVINO {version} crashes (signal {-child.returncode}) compiling "
                                           "{model} on this CPU"}
        else:  # not a verdict on the model (e.g. out of memory): say it, keep nothing
            raise ModelError(f"checking {where} on OpenVINO failed (exit {child.returncode}): "
                             f"{child.stderr.strip()[-500:]}")
        try:
            verdict_file.parent.mkdir(parents=True, exist_ok=True)
            verdict_file.write_text(json.dumps(verdict))
        except OSError:  # a read-only cache means probing again next time
            pass
    if not verdict["ok"]:
        raise ModelError(verdict["why"].replace("{model}", where) + _ADVICE)


class RecurringSizes:
    """Tells which input shapes come back often enough to earn a model compiled for them.

    OpenVINO runs a float model compiled for one fixed size 8-18% faster than the same model
    compiled with dynamic shapes (PP-OCRv4, v5 mobile and v6 small det at 736x1312, two
    threads; outputs equal to 1e-6), and compiling one takes 0.1-0.3 s and holds 120-160 MB
    at 720p. So a shape earns its own model once it fills more than ``share`` of the last
    ``window`` calls (a camera, a video, a folder of one phone's photos: after a few frames);
    a folder of sizes that never repeat never pays a compilation. With ``share`` above a
    quarter, at most three shapes are recurring at once, so three compiled sizes never
    evict one that is still recurring.
    """

    def __init__(self, window: int = 32, share: float = 0.25):
        from collections import deque

        self.share = share
        self._recent: "deque[tuple]" = deque(maxlen=window)

    def record(self, shapes: tuple) -> None:
        self._recent.append(shapes)

    def recurring(self, shapes: tuple) -> bool:
        return self._recent.count(shapes) > self.share * self._recent.maxlen


# at most this many elements in one call's input for a size-specific float model: above it
# (about 2048x2048 pixels), a frame runs on the dynamic model, whose memory goes back after
# oversized runs, rather than pinning a model's buffers of that size
STATIC_MAX_ELEMENTS = 2048 * 2048 * 3
MAX_FLOAT_SIZES = 3

_PROBE_DISAGREES = 3
# binarized-map IoU against ONNX Runtime on the test frame below which a Q/DQ model is refused
MIN_AGREEMENT = 0.9
PROBE_SIZE = (256, 384)
_ADVICE = ": run it with backend 'onnxruntime', or quantize it with the other --target (edgedb quantize)"


class OpenVINOBackend(Backend):
    """An OpenVINO CPU model over an ONNX file, serialized bytes or a ModelProto.

    Float models are compiled once with dynamic shapes, and again for each input shape that
    recurs (``RecurringSizes``; up to three, frames of at most about 2048x2048): compiled
    for one size, OpenVINO runs them 8-18% faster. A Q/DQ (INT8) model is compiled
    for each input shape it meets (the ``max_shapes`` most recent are kept): OpenVINO
    2026.4's integer path is wrong with dynamic shapes (a GlobalAveragePool after an INT8
    convolution, as in every squeeze-excite block, comes out near 0: binarized-map IoU 0.0
    against ONNX Runtime on PP-OCRv4) and right with static ones. A new frame size then
    costs one compilation (about 0.5 s); video and camera frames keep one size.

    One inference request per compiled model serves every call, under a lock: calls from
    several threads run one after another (each already uses every core it was given).
    """

    name = "openvino"

    def __init__(self, model: Union[str, Path, bytes, "onnx.ModelProto"], *, threads: Optional[int] = None,  # noqa: F821
                 max_shapes: int = 8, probe: bool = True, inference_precision: str = "f32"):
        from collections import OrderedDict

        ov = import_openvino()
        self._config = compile_config(threads, inference_precision)
        self.inference_precision = inference_precision
        if hasattr(model, "SerializeToString"):
            model = model.SerializeToString()
        source = model if isinstance(model, bytes) else str(model)
        self._source = source
        self._where = "the given model" if isinstance(source, bytes) else source
        try:
            import onnx

            proto = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
            self._core = ov.Core()
            self._model = self._core.read_model(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Exception as error:  # onnx and OpenVINO raise their own types; say what failed
            raise ModelError(f"OpenVINO cannot load {self._where}: {error}") from error
        # A port carries every name of the tensors OpenVINO merged into it ("x" and "image",
        # where an Identity was removed); the ONNX graph's own names are the ones callers use.
        self.input_names, self.output_names = _graph_names(proto)
        self.static_shapes = _has_qdq(proto)
        self._proto = _with_integer_stem(proto) if self.static_shapes else proto  # fixed to each size in _static_onnx
        self._recurring = None if self.static_shapes else RecurringSizes()
        self.threads = int(self._config["INFERENCE_NUM_THREADS"])
        self.max_shapes = max_shapes
        self._compiled: "OrderedDict[Optional[tuple], tuple]" = OrderedDict()  # shapes -> (compiled, request)
        self._lock = threading.Lock()
        self._refused: Optional[ModelError] = None
        self._oversized = OversizedRuns()
        if not self.static_shapes:
            self._request_for(None)  # a float model compiles now, once
        else:
            if probe:
                probe_in_child(source, self._where)
            with self._lock:  # a first size, so that a model computed wrongly is refused now
                self._request_for(((1, *PROBE_SIZE, 3),) if len(self.input_names) == 1 else None)
        log.info("openvino model: inputs %s, outputs %s, %d threads, %s shapes", self.input_names, self.output_names,
                 self.threads, "static" if self.static_shapes else "dynamic")

    def _compile(self, shapes: Optional[tuple]):
        try:
            model = self._model if shapes is None else self._core.read_model(io.BytesIO(self._static_onnx(shapes)))
            compiled = self._core.compile_model(model, "CPU", self._config)
        except Exception as error:
            raise ModelError(f"OpenVINO cannot compile {self._where}: {error}") from error
        return compiled, compiled.create_infer_request()

    def _static_onnx(self, shapes: tuple) -> bytes:
        """The ONNX model with its inputs fixed to ``shapes``. Fixed in the ONNX itself:
        reshaping the model OpenVINO read with dynamic dimensions keeps the wrong results."""
        import onnx

        proto = onnx.ModelProto()
        proto.CopyFrom(self._proto)
        for value in proto.graph.input:
            if value.name in self.input_names:
                shape = shapes[self.input_names.index(value.name)]
                for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                    dim.Clear()
                    dim.dim_value = size
        return proto.SerializeToString()

    def _request_for(self, shapes: Optional[tuple], feed: Optional[dict] = None):
        if self._refused is not None:
            raise self._refused
        entry = self._compiled.get(shapes)
        if entry is None:
            entry = self._compile(shapes)
            if shapes is not None:
                try:
                    self._check_against_onnxruntime(shapes, entry[1], feed)
                except ModelError as error:  # wrong at one size: not trusted at any
                    self._refused = error
                    raise
            self._compiled[shapes] = entry
            while len(self._compiled) > self.max_shapes:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(shapes)
        return entry

    def _float_request_for(self, shapes: tuple, elements: int):
        """The float model's request for ``shapes``: its own compiled model where the size
        recurs, else the dynamic one."""
        self._recurring.record(shapes)
        entry = self._compiled.get(shapes)
        if entry is not None:
            self._compiled.move_to_end(shapes)
            return entry
        if elements > STATIC_MAX_ELEMENTS or not self._recurring.recurring(shapes):
            return self._compiled[None]
        stale = [key for key in self._compiled if key is not None and not self._recurring.recurring(key)]
        if len(self._compiled) - 1 >= MAX_FLOAT_SIZES:
            if not stale:
                return self._compiled[None]
            del self._compiled[stale[0]]  # the least recently used size that no longer recurs
        entry = self._compiled[shapes] = self._compile(shapes)
        # the dynamic model's buffers were sized for this shape; the new model has its own
        self._compiled[None][0].release_memory()
        log.info("openvino: compiled for recurring input shapes %s", shapes)
        return entry

    def _check_against_onnxruntime(self, shapes: tuple, request, feed: Optional[dict] = None) -> None:
        """Refuses a Q/DQ model that OpenVINO, compiled for ``shapes``, computes differently
        from ONNX Runtime on a generated text frame of that size and on ``feed``, the
        caller's own first input of that size. OpenVINO 2026.4.1 on an AVX-512 VNNI CPU
        turns the TensorRT target of PP-OCRv4 into a map of zeros (IoU 0.0 against ONNX
        Runtime: the squeeze-excite blocks of its FPN lose a dequantization scale), where
        PP-OCRv5 mobile's and the CPU targets of v4, v5 and v6 small det agree on real
        photos too (0.94-0.99). The TensorRT target of v6 small det agrees on generated
        frames (0.95-0.97) and not on real photos (0.12-0.65): hence the caller's frame.
        Every size is checked once, when it is compiled (one ONNX Runtime run more), and
        once one is refused the model is refused at every size: wrong boxes never pass for
        fast ones."""
        from edgedb.backends.onnxrt import OnnxRuntimeBackend
        from edgedb.preprocess import prepare_fixed
        from edgedb.synthetic import make_text_image

        tests = []
        shape = shapes[0]
        if len(self.input_names) == 1 and len(shape) == 4 and shape[3] == 3 and min(shape[1:3]) >= 32:
            size = tuple(shape[1:3])  # a frame edgedb makes: generate one with text
            frame = prepare_fixed(make_text_image(0, size=size).image, size).frame[None]
            tests.append((f"a {size[0]}x{size[1]} test frame", {self.input_names[0]: np.repeat(frame, shape[0], axis=0)}))
        if feed is not None:
            dims = "x".join(str(d) for d in (shape[1:3] if len(shape) == 4 else shape))
            tests.append((f"the first {dims} input it was given", feed))
        if not tests:
            return
        with OnnxRuntimeBackend(self._source, threads=self.threads) as reference:
            for what, inputs in tests:
                expected = reference.infer(inputs)
                got = request.infer(inputs, share_inputs=True, share_outputs=False)
                for name in self.output_names:
                    a, b = expected[name] > 0.3, got[name] > 0.3
                    union = np.logical_or(a, b).sum()
                    agreement = np.logical_and(a, b).sum() / union if union else 1.0  # nothing found: no verdict
                    if agreement < MIN_AGREEMENT:
                        raise ModelError(f"OpenVINO computes {self._where} differently from ONNX Runtime on this "
                                         f"CPU (binarized {name!r} IoU {agreement:.2f} on {what}){_ADVICE}")

    @property
    def compiled_shapes(self) -> int:
        """How many compiled models are held (for a float model: 1, the dynamic one, plus one
        per recurring size)."""
        return len(self._compiled)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(feed)
        if missing:
            raise InvalidInputError(f"missing inputs {sorted(missing)}; the model takes {list(self.input_names)}")
        inputs = {name: np.ascontiguousarray(feed[name]) for name in self.input_names}
        shapes = tuple(inputs[name].shape for name in self.input_names)
        elements = sum(a.size for a in inputs.values())
        with self._lock:
            if self.closed:
                raise EdgeDBError("this backend is closed")
            if self.static_shapes:
                compiled, request = self._request_for(shapes, inputs)
            else:
                compiled, request = self._float_request_for(shapes, elements)
            # The inputs are read in place (they are not kept past the call); the outputs are
            # copied out of the request's tensors, so the next call cannot overwrite them.
            results = request.infer(inputs, share_inputs=True, share_outputs=False)
            outputs = {name: results[name] for name in self.output_names}
            if self._oversized.oversized(elements):
                # what one huge frame made OpenVINO allocate goes back (1.9 GB after a 4096x4096
                # PP-OCRv4 frame, 0.1 GB above the steady state after release)
                compiled.release_memory()
            return outputs

    def _release(self) -> None:
        with self._lock:
            self._compiled.clear()
            del self._model, self._core, self._source, self._proto


if __name__ == "__main__":  # the child of probe_in_child: python -m edgedb.backends.openvino MODEL
    import sys

    try:
        OpenVINOBackend(sys.argv[1], threads=1, probe=False).close()
    except ModelError as error:
        print(str(error).removesuffix(_ADVICE))
        sys.exit(_PROBE_DISAGREES)
