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
from edgedb.sessions import cpu_session, fuses_qdq, ort_run_options, session_options  # noqa: F401  (re-exported)
from edgedb.errors import EdgeDBError, InvalidInputError, ModelError

log = logging.getLogger(__name__)


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
