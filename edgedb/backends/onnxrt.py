"""The ONNX Runtime backend: the CPU path, and the reference TensorRT results are
checked against."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgedb._checks import thread_count
from edgedb.backends.base import Backend, OversizedRuns
from edgedb.errors import EdgeDBError, InvalidInputError, ModelError

log = logging.getLogger(__name__)


def session_options(threads: Optional[int] = None, *, qdq_transforms: bool = True, arena: bool = False):
    """ONNX Runtime session options. ``arena``: keep the CPU memory arena, for sessions that
    run many frames (the backend, which shrinks it after oversized ones: ``OversizedRuns``);
    the one-off sessions of calibration and correction run without it, so their memory
    goes back as soon as a run ends."""
    import onnxruntime as ort

    threads = thread_count("threads", threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    if not qdq_transforms:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One inference at a time uses every core inside each operator.
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    return options


def fuses_qdq(precision: str) -> bool:
    """Whether ONNX Runtime may fuse a model's Q/DQ pairs into its integer kernels, by
    the model's precision metadata ("" for FP32, "fp16", "int8-cpu-...", ...).

    Only models made for the CPU: those made for TensorRT ("int8-tensorrt-...", "best-...")
    run as the float emulation TensorRT computes exactly (int8 products, int32 sums).
    ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv only
    where the Conv's output feeds nothing else and is no graph output, so with the fusions
    on, a convolution's value changes with which tensors a caller asks for (bias
    correction asks for some, a test for all, a detector for none); and its u8s8 kernels
    saturate the full-range int8 weights of the TensorRT target on x86 without VNNI. For
    "best" models (float16 scales) ONNX Runtime 1.32's fusions are plainly wrong:
    binarized-map IoU 0.59 against FP32, where the unfused graph gives 0.90.
    """
    return not (precision.startswith("int8-tensorrt") or precision.startswith("best"))


def _precision(session) -> str:
    from edgedb.spec import PRECISION_KEY

    return session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY, "")


def cpu_session(source: Union[str, bytes], threads: Optional[int] = None, *, arena: bool = False):
    """(session, qdq_transforms): an ONNX Runtime CPU session over a file or serialized
    model, opened again without the QDQ fusions for models made for TensorRT
    (``fuses_qdq``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(source, session_options(threads, arena=arena), providers=["CPUExecutionProvider"])
    if fuses_qdq(_precision(session)):
        return session, True
    options = session_options(threads, qdq_transforms=False, arena=arena)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]), False


def ort_run_options(*, shrink_arena: bool = False):
    """Run options; ``shrink_arena``: hand the CPU arena's free chunks back when the run ends."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if shrink_arena:
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class OnnxRuntimeBackend(Backend):
    """An ONNX Runtime CPU session over a model file, serialized bytes or a ModelProto."""

    name = "onnxruntime"

    def __init__(self, model: Union[str, Path, bytes, "onnx.ModelProto"], *, threads: Optional[int] = None):  # noqa: F821
        if hasattr(model, "SerializeToString"):
            model = model.SerializeToString()
        source = model if isinstance(model, bytes) else str(model)
        self._source, self._threads = source, thread_count("threads", threads)  # a bad count is not a bad model
        try:
            self._session, self._qdq_transforms = cpu_session(source, threads, arena=True)
        except Exception as error:  # ORT raises its own exception types; say what failed
            where = "the given model" if isinstance(source, bytes) else source
            raise ModelError(f"ONNX Runtime cannot load {where}: {error}") from error
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        log.info("onnxruntime session: inputs %s, outputs %s", self.input_names, self.output_names)
        self._arena = OversizedRuns()
        self._shrink = ort_run_options(shrink_arena=True)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise EdgeDBError("this backend is closed")
        missing = set(self.input_names) - set(feed)
        if missing:
            raise InvalidInputError(f"missing inputs {sorted(missing)}; the model takes {list(self.input_names)}")
        inputs = {name: feed[name] for name in self.input_names}
        elements = sum(int(np.size(value)) for value in inputs.values())
        options = self._shrink if self._arena.oversized(elements) else None
        outputs = self._session.run(list(self.output_names), inputs, options)
        return dict(zip(self.output_names, outputs))

    def profile_layers(self, feed: Mapping[str, np.ndarray], runs: int = 10) -> dict[str, list[float]]:
        """Milliseconds per node over ``runs`` inferences, from ONNX Runtime's profiler (a
        separate session: profiling slows every run down)."""
        import json
        import tempfile

        import onnxruntime as ort

        options = session_options(self._threads, qdq_transforms=self._qdq_transforms)
        options.enable_profiling = True
        with tempfile.TemporaryDirectory(prefix="edgedb-profile-") as folder:
            options.profile_file_prefix = os.path.join(folder, "ort")
            session = ort.InferenceSession(self._source, options, providers=["CPUExecutionProvider"])
            for _ in range(runs):
                session.run(list(self.output_names), {name: feed[name] for name in self.input_names})
            with open(session.end_profiling(), encoding="utf-8") as trace:
                events = json.load(trace)
        times: dict[str, list[float]] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = name[: -len("_kernel_time")]
                op = event.get("args", {}).get("op_name", "")
                times.setdefault(f"{node} ({op})" if op else node, []).append(event["dur"] / 1e3)
        return times

    def _release(self) -> None:
        del self._session
