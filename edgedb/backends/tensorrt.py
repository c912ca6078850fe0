"""The TensorRT backend: an engine built by edgedb, run with pycuda streams and pinned buffers.

It looks like the ONNX Runtime backend (``infer(feed) -> outputs`` by tensor name) and
adds what a GPU needs:

- buffers per tensor name: pinned host + device memory, allocated once for the largest
  shape seen and reused; ``set_tensor_address`` only when a buffer changes;
  ``set_input_shape`` on every call;
- three streams: host-to-device copies, compute (``execute_async_v3``) and device-to-host
  copies, ordered by events, so the copies of one frame overlap the compute of another;
- two *slots* (execution context + buffers) for ``submit``: while slot A computes frame i,
  slot B's frame i+1 is copied in. The two contexts share one scratch allocation
  (``USER_MANAGED``): their kernels run on the same compute stream, never at once;
- zero copy on integrated GPUs (Jetson): host buffers mapped into the device's address
  space, no copies at all;
- CUDA events time each call's copies and compute (``InferenceTimes``);
- results copied into arrays the caller owns: the next call never overwrites them;
- the primary CUDA context pushed around every call (``edgedb.engine.gpu``), so any
  thread may call, and two backends in one process do not disturb each other.

tensorrt and pycuda are imported lazily, so nothing else in edgedb needs them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

from edgedb.backends.base import Backend
from edgedb.engine.gpu import EXTRA, import_pycuda_driver, import_tensorrt, tensorrt_available, tensorrt_logger  # noqa: F401  (re-exported)
from edgedb.errors import EdgeDBError, EngineError, InvalidInputError

log = logging.getLogger(__name__)

SLOTS = 2  # frames in flight in submit(): one computing, one being copied


@dataclass(frozen=True)
class InferenceTimes:
    """One call's GPU times in milliseconds, from CUDA events (0 for copies skipped by zero copy)."""

    h2d_ms: float
    compute_ms: float
    d2h_ms: float


class _PinnedAllocation:
    """Pinned host memory and its device twin: a separate device buffer, or on an integrated
    GPU the host buffer itself, mapped (zero copy)."""

    def __init__(self, cuda, nbytes: int, mapped: bool):
        self.nbytes = nbytes
        self.mapped = mapped
        if mapped:
            self.host = cuda.pagelocked_empty((nbytes,), np.uint8, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
            self._device = None
            self.device_address = int(self.host.base.get_device_pointer())
        else:
            self.host = cuda.pagelocked_empty((nbytes,), np.uint8)
            self._device = cuda.mem_alloc(nbytes)
            self.device_address = int(self._device)

    def free(self) -> None:
        if self._device is not None:
            self._device.free()
            self._device = None
        if self.host is not None:
            self.host.base.free()
            self.host = None


class _Slot:
    """One execution context with its buffers and events: a frame in flight."""

    def __init__(self, backend: "TensorRTBackend", context):
        from edgedb.engine.buffers import AddressBook, TensorBuffers

        cuda = backend._cuda
        self.context = context
        self.buffers = TensorBuffers(lambda n: _PinnedAllocation(cuda, n, backend.zero_copy))
        self.addresses = AddressBook(context)
        self.events = {name: cuda.Event() for name in ("h2d_start", "h2d_end", "compute_start", "compute_end",
                                                       "d2h_start", "d2h_end")}
        self.pending: Optional["PendingInference"] = None
        self.shapes: dict[str, tuple[int, ...]] = {}

    def free(self) -> None:
        """Frees everything of the slot now (the primary context current): the buffers, the
        events, the execution context, and the link to a frame never collected, so no cycle
        (slot <-> pending frame) keeps any of it for the garbage collector to free later,
        outside the context (pycuda: "event in out-of-thread context could not be cleaned up")."""
        if self.pending is not None:
            self.pending._slot = None
            self.pending = None
        self.buffers.free()
        self.events.clear()
        self.addresses = None
        self.context = None


class PendingInference:
    """A frame enqueued by ``TensorRTBackend.submit``; ``result()`` waits and returns the
    outputs (arrays the caller owns) and fills ``times``."""

    def __init__(self, backend: "TensorRTBackend", slot: _Slot):
        self._backend, self._slot = backend, slot
        self._outputs: Optional[dict[str, np.ndarray]] = None
        self.times: Optional[InferenceTimes] = None

    def result(self) -> dict[str, np.ndarray]:
        if self._outputs is None:
            with self._backend._lock:
                if self._slot is None:
                    raise EdgeDBError("this frame was not collected before its backend was closed")
                try:
                    self._backend._collect(self)
                except BaseException as error:
                    _clear_finished_frames(error.__traceback__)
                    raise
        return self._outputs  # type: ignore[return-value]


def _clear_finished_frames(traceback) -> None:
    """Drops the locals of the finished frames below the first of ``traceback``.

    A caller may keep an exception after ``close()``; its traceback keeps the frames it
    passed through, and their locals (an execution context, a stream, a pinned buffer view
    in TensorRT's or pycuda's frames) would then be freed later, outside the CUDA context.
    The traceback keeps its file and line numbers."""
    tb = traceback.tb_next if traceback is not None else None
    while tb is not None:
        try:
            tb.tb_frame.clear()
        except RuntimeError:  # a frame still running (a generator's): leave it
            pass
        tb = tb.tb_next


def _layer_profiler(trt, times: dict):
    """A ``trt.IProfiler`` collecting each layer's milliseconds into ``times`` (made here:
    TensorRT types can be subclassed only once tensorrt is imported)."""

    class _Profiler(trt.IProfiler):
        def __init__(self):
            super().__init__()  # pybind11 bases must be initialized (IProfiler's docstring)

        def report_layer_time(self, layer_name, ms):
            times.setdefault(layer_name, []).append(float(ms))

    return _Profiler()


class TensorRTBackend(Backend):
    """Runs an edgedb-built TensorRT engine (``edgedb build``) on CUDA device ``device``.

    The engine's sidecar is checked first: an engine for another TensorRT version or GPU,
    a truncated file or one without a sidecar is refused with a message saying how to
    rebuild it.
    """

    name = "tensorrt"
    pipelined = True  # submit() overlaps frames; EdgeDetector.stream uses it

    def __init__(self, engine_path: Union[str, Path], *, device: int = 0, verbose: bool = False):
        from edgedb._version import __version__
        from edgedb.engine.gpu import CudaDevice
        from edgedb.engine import compat
        from edgedb.engine.sidecar import check_compatible, read_sidecar

        self.engine_path = Path(engine_path)
        self.sidecar = read_sidecar(self.engine_path)  # before any GPU work: clear errors first
        trt = import_tensorrt()
        compat.check_supported(trt)
        self._trt = trt
        self._device = CudaDevice(device)
        self._cuda = self._device.cuda
        self._lock = threading.RLock()
        self._slots: list[_Slot] = []
        self.last_times: Optional[InferenceTimes] = None
        try:
            check_compatible(self.sidecar, self._device.device_info(trt), self.engine_path, __version__)
            # Zero copy where the GPU shares host memory (Jetson): a mapped pinned buffer is
            # already device memory, so the copies disappear.
            self.zero_copy = self._device.integrated and self._device.can_map_host_memory
            with self._device.activate():
                self._runtime = trt.Runtime(tensorrt_logger(trt, verbose))
                dla_core = (self.sidecar.build_options or {}).get("dla_core")
                if dla_core is not None:  # a DLA engine loads onto the core it was built for (trtexec does the same)
                    self._runtime.DLA_core = int(dla_core)
                self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
                if self._engine is None:
                    raise EngineError(f"TensorRT {trt.__version__} cannot load {self.engine_path} (its messages "
                                      f"above say why); rebuild it: {self.sidecar.rebuild_command(self.engine_path)}")
                self._read_tensors()
                self._streams = {name: self._cuda.Stream() for name in ("h2d", "compute", "d2h")}
                self._scratch = self._cuda.mem_alloc(max(int(self._engine.device_memory_size_v2), 1))
                self._slots.append(self._new_slot())
        except BaseException:
            self.close()
            raise
        log.info("tensorrt engine %s: inputs %s, outputs %s, zero copy %s", self.engine_path, self.input_names,
                 self.output_names, self.zero_copy)

    # -- set-up ------------------------------------------------------------------------------
    def _read_tensors(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_names = tuple(inputs)
        self.output_names = tuple(n for n in names if n not in inputs)
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        # Profile 0 is the only one edgedb builds: (min, opt, max) per input.
        self.profile_shapes = {n: tuple(tuple(s) for s in engine.get_tensor_profile_shape(n, 0)) for n in inputs}

    @property
    def max_batch(self) -> int:
        """The largest batch the engine's profile takes."""
        return min(int(maximum[0]) for _, _, maximum in self.profile_shapes.values())

    @property
    def max_frame(self) -> tuple[int, int]:
        """(height, width) of the largest frame the engine's profile takes (EdgeDetector
        cuts tiles no larger)."""
        from edgedb.engine.profiles import frame_dims

        _, _, maximum = next(iter(self.profile_shapes.values()))
        _, height, width = frame_dims(maximum, self.sidecar.profiles[0].layout)  # the engine's shape, in the built layout
        return height, width

    def _new_slot(self) -> _Slot:
        strategy = self._trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = self._engine.create_execution_context(strategy)
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        context.set_device_memory(int(self._scratch), int(self._engine.device_memory_size_v2))
        return _Slot(self, context)

    # -- inference ---------------------------------------------------------------------------
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        pending = self.submit(feed)
        outputs = pending.result()
        return outputs

    def submit(self, feed: Mapping[str, np.ndarray]) -> PendingInference:
        """Enqueues one inference and returns at once; ``result()`` on the returned object
        waits for it. Up to two are in flight; a third waits for the oldest's copy-out."""
        from edgedb.engine.buffers import check_in_profile

        if self.closed:
            raise EdgeDBError("this backend is closed")
        missing = set(self.input_names) - set(feed)
        if missing:
            raise InvalidInputError(f"missing inputs {sorted(missing)}; the engine takes {list(self.input_names)}")
        arrays = {}
        for name in self.input_names:
            array = np.ascontiguousarray(feed[name])
            if array.dtype != self.dtypes[name]:
                raise InvalidInputError(f"input {name!r} must be {self.dtypes[name]}, not {array.dtype}")
            minimum, _, maximum = self.profile_shapes[name]
            check_in_profile(name, array.shape, minimum, maximum)
            arrays[name] = array

        with self._lock, self._device.activate():
            try:
                return self._enqueue(self._free_slot(), arrays)
            except BaseException as error:
                _clear_finished_frames(error.__traceback__)
                raise

    def _enqueue(self, slot: _Slot, arrays: dict[str, np.ndarray]) -> PendingInference:
        """Copies a frame in, enqueues its compute and copy-out on ``slot`` (lock held,
        context current). Reads GPU objects through ``self`` and ``slot`` only: an
        exception's frames may outlive close() (see ``_clear_finished_frames``)."""
        from edgedb.engine.buffers import tensor_nbytes

        for name, array in arrays.items():
            if not slot.context.set_input_shape(name, array.shape):
                raise InvalidInputError(f"TensorRT refused shape {array.shape} for input {name!r}")
        shapes = {name: tuple(slot.context.get_tensor_shape(name)) for name in self.output_names}
        for name in (*arrays, *shapes):
            shape = arrays[name].shape if name in arrays else shapes[name]
            buffer, _ = slot.buffers.ensure(name, tensor_nbytes(shape, self.dtypes[name]))
            slot.addresses.bind(name, buffer.device_address)
        slot.shapes = shapes

        # The frame into pinned memory first (host work, free: this slot's last frame was
        # collected), then the timed copy: on an idle stream an event completes when it is
        # recorded, so recording before the host copy would time the host copy too.
        for name, array in arrays.items():
            slot.buffers[name].host[: array.nbytes] = array.reshape(-1).view(np.uint8)
        slot.events["h2d_start"].record(self._streams["h2d"])
        if not self.zero_copy:
            for name, array in arrays.items():
                self._cuda.memcpy_htod_async(slot.buffers[name].device_address, slot.buffers[name].host[: array.nbytes],
                                             self._streams["h2d"])
        slot.events["h2d_end"].record(self._streams["h2d"])
        # Compute, after this frame's copies (and, on one stream, after the other slot's compute).
        self._streams["compute"].wait_for_event(slot.events["h2d_end"])
        slot.events["compute_start"].record(self._streams["compute"])
        if not slot.context.execute_async_v3(self._streams["compute"].handle):
            raise EdgeDBError("TensorRT could not enqueue the inference (see its messages above)")
        slot.events["compute_end"].record(self._streams["compute"])
        # Device -> host into this slot's pinned buffers.
        self._streams["d2h"].wait_for_event(slot.events["compute_end"])
        slot.events["d2h_start"].record(self._streams["d2h"])
        if not self.zero_copy:
            for name, shape in shapes.items():
                nbytes = tensor_nbytes(shape, self.dtypes[name])
                self._cuda.memcpy_dtoh_async(slot.buffers[name].host[:nbytes], slot.buffers[name].device_address,
                                             self._streams["d2h"])
        slot.events["d2h_end"].record(self._streams["d2h"])
        slot.pending = PendingInference(self, slot)
        return slot.pending

    def profile_layers(self, feed: Mapping[str, np.ndarray], runs: int = 10) -> dict[str, list[float]]:
        """Milliseconds per engine layer over ``runs`` inferences, from TensorRT's IProfiler
        (``enqueue_emits_profile`` is on by default, so each enqueue reports its layers)."""
        times: dict[str, list[float]] = {}
        profiler = _layer_profiler(self._trt, times)
        with self._lock:
            for slot in self._slots:
                if slot.pending is not None:
                    self._collect(slot.pending)
                slot.context.profiler = profiler
        try:
            for _ in range(runs):
                self.infer(feed)
        finally:
            with self._lock:
                for slot in self._slots:
                    slot.context.profiler = None
        return times

    def _free_slot(self) -> _Slot:
        """A slot with no frame in flight: an idle one, a new one (up to SLOTS), or the
        oldest busy one once its outputs are copied out for its caller."""
        for slot in self._slots:
            if slot.pending is None:
                return slot
        if len(self._slots) < SLOTS:
            self._slots.append(self._new_slot())
            return self._slots[-1]
        oldest = self._slots.pop(0)
        self._slots.append(oldest)
        self._collect(oldest.pending)
        return oldest

    def _collect(self, pending: PendingInference) -> None:
        """Waits for a frame and copies its outputs out of the slot (lock held)."""
        if pending._outputs is not None:
            return
        slot = pending._slot
        events = slot.events
        with self._device.activate():
            events["d2h_end"].synchronize()
            outputs = {}
            for name, shape in slot.shapes.items():
                dtype = self.dtypes[name]
                count = int(np.prod(shape, dtype=np.int64))
                # A copy: the caller's array must survive the slot's next frame.
                outputs[name] = slot.buffers[name].host[: count * dtype.itemsize].view(dtype).reshape(shape).copy()
            times = InferenceTimes(
                h2d_ms=0.0 if self.zero_copy else events["h2d_end"].time_since(events["h2d_start"]),
                compute_ms=events["compute_end"].time_since(events["compute_start"]),
                d2h_ms=0.0 if self.zero_copy else events["d2h_end"].time_since(events["d2h_start"]),
            )
        pending._outputs, pending.times = outputs, times
        self.last_times = times
        slot.pending = None

    # -- clean-up ----------------------------------------------------------------------------
    def _release(self) -> None:
        device = getattr(self, "_device", None)
        if device is None:
            return
        with self._lock:
            try:
                with device.activate():
                    # No loop variable may hold a CUDA object past this block: it would be
                    # freed after the context is popped.
                    streams, self._streams = list(getattr(self, "_streams", {}).values()), {}
                    while streams:
                        streams.pop().synchronize()
                    while self._slots:
                        self._slots.pop().free()
                    self.last_times = None
                    scratch = getattr(self, "_scratch", None)
                    if scratch is not None:
                        scratch.free()
                        self._scratch = None
                    # TensorRT objects go before the context they live in.
                    self._engine = self._runtime = None
            finally:
                device.close()
