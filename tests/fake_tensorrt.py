"""Stand-ins for ``tensorrt`` and ``pycuda.driver``, for testing edgedb's GPU code on a CPU.

They implement only the names edgedb uses, with the signatures of the real bindings
(TensorRT 10.3/10.16/11.1 ``python/src/infer/pyCore.cpp`` and ``pyGraph.cpp``, pycuda
2026.1 ``src/wrapper/wrap_cudadrv.cpp`` and ``src/cpp/cuda.hpp``), and they behave like
the real libraries where edgedb's GPU bugs live, so such a bug fails a CPU test:

- **Two context stacks per thread**, as in pycuda: pycuda's own (``Context.push``/``pop``)
  and the driver's (``cuCtxPushCurrent``/``cuCtxPopCurrent``). ``detach()`` of a primary
  context pushes it on the driver stack and releases it *without popping*
  (``cuda.hpp`` ``context::detach``, ``primary_context::detach_internal``); a primary
  context's reference count reaching 0 resets the context, and everything made in it dies.
  Every CUDA call needs a live context current on the *driver* stack of the calling thread.
- **Objects freed in their context**: an Event, Stream, device or pinned allocation,
  TensorRT engine or execution context deleted (``__del__``, not ``free()``) while its
  context is not current on the deleting thread is recorded in ``FakeCuda.violations``
  (pycuda warns "... in out-of-thread context could not be cleaned up", or skips the free).
- **A simulated device clock**: each stream runs its work after the host enqueued it and
  after what it waits for; events take the time of their stream's last work, so an event
  recorded on an idle stream completes at once (the host's time). Host work advances the
  host clock: writing into pinned memory, reading results out of it, waiting.
- **One logger pointer per process**, as TensorRT: the first Builder/Runtime sets it; one
  made with another logger while any exists logs through the first (TensorRT's warning,
  NVIDIA/TensorRT#1475), and pybind keeps each Logger alive only for the object made with
  it (``py::keep_alive<1, 2>``). Logging through a freed logger raises.
- **The build trampolines**: an exception in a progress callback is printed and, in
  ``step_complete``, cancels the build (``build_serialized_network`` returns None), as
  ``pyCore.cpp`` v10.3.0 l.978-994.
- **Timing caches**: ``create_timing_cache`` returns None for a blob it cannot read, and
  ``set_timing_cache(None, ...)`` raises TypeError (pybind: no reference from None).
- device memory lives in a registry keyed by address; copies and ``execute_async_v3``
  read and write it, so wrong addresses or sizes show up as wrong results; an "engine"
  is an ONNX model behind a header, run with ONNX Runtime, so a detector on the fake
  TensorRT must give ONNX Runtime's boxes. Everything runs synchronously underneath.

Nothing here proves what a GPU does; it proves edgedb's bookkeeping around the calls.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import types
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_MAGIC = b"FAKE-TIMING-CACHE\n"
HOST_BYTES_PER_MS = 1e6  # host memcpy into/out of pinned memory: 1 GB/s
LINK_BYTES_PER_MS = 1e7  # host <-> device copies: 10 GB/s
COMPUTE_MS = 2.0  # one execute_async_v3


# ------------------------------------------------------------------------------------- pycuda
class FakeCuda:
    """State of one fake CUDA driver: devices, contexts, memory, clocks, and a log of calls."""

    def __init__(self, *, devices=1, integrated=False, name="Fake GPU", capability=(8, 7)):
        self.devices, self.integrated, self.gpu_name, self.capability = devices, integrated, name, capability
        self.memory: dict[int, np.ndarray] = {}
        self.addresses = itertools.count(1 << 20, 1 << 16)
        self.local = threading.local()
        self.refcount = [0] * devices  # primary contexts: retain/release count per device
        self.generation = [0] * devices  # bumped when a primary context is reset (count 0)
        self.calls: list[tuple] = []
        self.violations: list[str] = []
        self.lock = threading.RLock()
        self.host_ms = 0.0  # the host's clock, advanced by host work
        self.streams = weakref.WeakValueDictionary()  # handle -> Stream, for execute_async_v3

    # thread-local stacks: pycuda's (Context objects) and the driver's (handles)
    def pycuda_stack(self) -> list:
        if not hasattr(self.local, "pycuda"):
            self.local.pycuda = []
        return self.local.pycuda

    def driver_stack(self) -> list:
        if not hasattr(self.local, "driver"):
            self.local.driver = []
        return self.local.driver

    def stack(self) -> list:
        return self.pycuda_stack()

    @property
    def retained(self) -> int:
        return sum(self.refcount)

    def live(self, handle) -> bool:
        device, generation = handle
        return self.refcount[device] > 0 and self.generation[device] == generation

    def current_handle(self):
        stack = self.driver_stack()
        return stack[-1] if stack else None

    def require_context(self, what: str) -> None:
        handle = self.current_handle()
        if handle is None:
            raise RuntimeError(f"{what}: no CUDA context is current on this thread (driver stack empty)")
        if not self.live(handle):
            raise RuntimeError(f"{what}: the current CUDA context was destroyed (primary context released to 0)")

    def released(self, device: int) -> None:
        self.refcount[device] -= 1
        if self.refcount[device] == 0:  # the driver resets the primary context
            self.generation[device] += 1

    def advance_host(self, ms: float) -> None:
        with self.lock:
            self.host_ms += ms

    def wait_host(self, until: float) -> None:
        with self.lock:
            self.host_ms = max(self.host_ms, until)

    def freed_outside(self, kind: str, handle) -> None:
        """``__del__`` of an object of ``handle``'s context: it must be current here."""
        if sys.is_finalizing():
            return
        if not self.live(handle):
            self.violations.append(f"{kind} freed after its context was destroyed")
        elif self.current_handle() != handle:
            message = f"{kind} in out-of-thread context could not be cleaned up"
            self.violations.append(message)
            warnings.warn(message, UserWarning, stacklevel=2)

    def log(self, *entry) -> None:
        with self.lock:
            self.calls.append(entry)

    def new_address(self, array: np.ndarray) -> int:
        address = next(self.addresses)
        self.memory[address] = array
        return address

    # the device memory the fake engine reads and writes (tests/cuda_standin.py: a real GPU's)
    def read_device(self, address: int, nbytes: int, stream_handle) -> np.ndarray:
        return self.memory[int(address)][:nbytes].copy()

    def write_device(self, address: int, data: np.ndarray, stream_handle) -> None:
        self.memory[int(address)][: data.nbytes] = data

    def computed(self, stream_handle, ms: float) -> None:
        self.streams[stream_handle].enqueue(ms)

    def check_clean(self) -> list:
        """What a finished test left behind on this thread: contexts on either stack,
        device memory, violations."""
        problems = list(self.violations)
        if self.pycuda_stack():
            problems.append(f"pycuda context stack not empty: {len(self.pycuda_stack())}")
        if self.driver_stack():
            problems.append(f"driver context stack not empty: {len(self.driver_stack())}")
        if self.memory:
            problems.append(f"{len(self.memory)} device allocations not freed")
        return problems

    def module(self) -> types.ModuleType:
        fake = self
        driver = types.ModuleType("pycuda.driver")

        class device_attribute:
            INTEGRATED = "INTEGRATED"
            CAN_MAP_HOST_MEMORY = "CAN_MAP_HOST_MEMORY"

        class host_alloc_flags:
            PORTABLE, DEVICEMAP, WRITECOMBINED = 1, 2, 4

        def prepare_context_switch():
            if fake.pycuda_stack():
                fake.driver_stack().pop()

        class Context:
            """A pycuda context object (here always a primary one)."""

            def __init__(self, device):
                self.device, self.handle, self.valid = device, (device, fake.generation[device]), True
                self.thread = threading.get_ident()

            def push(self):
                prepare_context_switch()
                fake.driver_stack().append(self.handle)
                fake.pycuda_stack().append(self)

            @staticmethod
            def pop():
                prepare_context_switch()
                stack = fake.pycuda_stack()
                if not stack:
                    raise RuntimeError("context::pop: cannot pop non-current context")
                stack.pop()
                if stack:
                    fake.driver_stack().append(stack[-1].handle)

            @staticmethod
            def get_current():
                stack = fake.pycuda_stack()
                return stack[-1] if stack else None

            @staticmethod
            def synchronize():
                fake.require_context("Context.synchronize")
                fake.wait_host(max([s.tail for s in fake.streams.values()], default=0.0))

            def detach(self):
                if not self.valid:
                    raise RuntimeError("context::detach: cannot detach from invalid context")
                stack = fake.pycuda_stack()
                active = bool(stack) and stack[-1] is self
                if active:
                    fake.released(self.device)  # cuDevicePrimaryCtxRelease: no pop
                elif threading.get_ident() == self.thread:
                    fake.driver_stack().append(self.handle)  # cuCtxPushCurrent, then release: no pop
                    fake.released(self.device)
                self.valid = False
                if active:
                    others = [c for c in stack if c is not self and c.valid]
                    if others:
                        fake.driver_stack().append(others[-1].handle)

        class Device:
            def __init__(self, index):
                if not 0 <= index < fake.devices:
                    raise RuntimeError("invalid device ordinal")
                self.index = index

            @staticmethod
            def count():
                return fake.devices

            def name(self):
                return fake.gpu_name

            def compute_capability(self):
                return fake.capability

            def get_attribute(self, attribute):
                return int(fake.integrated) if attribute in ("INTEGRATED", "CAN_MAP_HOST_MEMORY") else 0

            def retain_primary_context(self):
                if fake.refcount[self.index] == 0:
                    pass  # a fresh (or reset) primary context
                fake.refcount[self.index] += 1
                return Context(self.index)

        class _Owned:
            """An object of the context current at its creation, freed in it."""

            kind = "object"

            def __init__(self):
                fake.require_context(self.kind)
                self.owner_ctx, self.freed = fake.current_handle(), False

            def _release(self):
                pass

            def free(self):
                if not self.freed:
                    fake.require_context(f"{self.kind}.free")
                    self.freed = True
                    self._release()

            def __del__(self):
                if not getattr(self, "freed", True):
                    fake.freed_outside(self.kind, self.owner_ctx)
                    self.freed = True
                    self._release()

        class HostAllocation(_Owned):
            kind = "host allocation"

            def __init__(self, array, mapped):
                super().__init__()
                self.array, self.mapped = array, mapped
                self.address = fake.new_address(array) if mapped else None

            def get_device_pointer(self):
                if not self.mapped:
                    raise RuntimeError("not mapped")
                return self.address

            def _release(self):
                if self.address is not None:
                    fake.memory.pop(self.address, None)

        class PinnedArray(np.ndarray):
            """Pinned host memory: writing into it and reading out of it is host work."""

            @property
            def base(self):  # pycuda: the HostAllocation
                return self._allocation

            def __array_finalize__(self, obj):
                self._allocation = getattr(obj, "_allocation", None)

            def __setitem__(self, key, value):
                super().__setitem__(key, value)
                fake.advance_host(np.asarray(value).nbytes / HOST_BYTES_PER_MS)

            def copy(self, order="C"):
                fake.advance_host(self.nbytes / HOST_BYTES_PER_MS)
                return np.array(self, order=order, subok=False, copy=True)

        def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
            fake.require_context("pagelocked_empty")
            plain = np.zeros(shape, dtype)
            allocation = HostAllocation(plain, bool(mem_flags & host_alloc_flags.DEVICEMAP))
            array = plain.view(PinnedArray)
            array._allocation = allocation
            fake.log("pagelocked_empty", int(plain.nbytes), bool(mem_flags))
            return array

        class DeviceAllocation(_Owned):
            kind = "device allocation"

            def __init__(self, nbytes):
                super().__init__()
                self.address = fake.new_address(np.zeros(nbytes, np.uint8))

            def __int__(self):
                return self.address

            __index__ = __int__

            def _release(self):
                fake.memory.pop(self.address, None)

        def mem_alloc(nbytes):
            fake.require_context("mem_alloc")
            fake.log("mem_alloc", int(nbytes))
            return DeviceAllocation(int(nbytes))

        class Stream(_Owned):
            kind = "stream"
            handles = itertools.count(100)

            def __init__(self, flags=0):
                super().__init__()
                self.handle = next(Stream.handles)
                self.tail = 0.0  # device time its last work ends
                fake.streams[self.handle] = self

            def enqueue(self, duration_ms: float) -> None:
                with fake.lock:
                    start = max(fake.host_ms, self.tail)
                    self.tail = start + duration_ms

            def synchronize(self):
                fake.require_context("Stream.synchronize")
                fake.wait_host(self.tail)

            def wait_for_event(self, event):
                fake.require_context("wait_for_event")
                self.tail = max(self.tail, event.stamp)
                fake.log("wait_for_event", self.handle, event.recorded_on)

        class Event(_Owned):
            kind = "event"

            def __init__(self, flags=None):
                super().__init__()
                self.stamp, self.recorded_on = None, None

            def record(self, stream=None):
                fake.require_context("Event.record")
                with fake.lock:  # an idle stream: the event completes at once, at the host's time
                    self.stamp = max(fake.host_ms, stream.tail if stream is not None else 0.0)
                self.recorded_on = stream.handle if stream else None

            def synchronize(self):
                fake.require_context("Event.synchronize")
                fake.wait_host(self.stamp)

            def time_since(self, start):
                fake.require_context("Event.time_since")
                if self.stamp is None or start.stamp is None:
                    raise RuntimeError("cuEventElapsedTime failed: event not recorded")
                return self.stamp - start.stamp

        def _device_array(address):
            if int(address) not in fake.memory:
                raise RuntimeError(f"invalid device address {address}")
            return fake.memory[int(address)]

        def memcpy_htod_async(dest, src, stream=None):
            fake.require_context("memcpy_htod_async")
            data = np.asarray(src).reshape(-1).view(np.uint8)
            target = _device_array(dest)
            if data.nbytes > target.nbytes:
                raise RuntimeError("copy past the end of a device buffer")
            target[: data.nbytes] = data
            stream.enqueue(data.nbytes / LINK_BYTES_PER_MS)
            fake.log("htod", int(dest), data.nbytes, stream.handle)

        def memcpy_dtoh_async(dest, src, stream=None):
            fake.require_context("memcpy_dtoh_async")
            out = np.asarray(dest).reshape(-1).view(np.uint8)
            source = _device_array(src)
            if out.nbytes > source.nbytes:
                raise RuntimeError("copy past the end of a device buffer")
            np.copyto(out, source[: out.nbytes])
            stream.enqueue(out.nbytes / LINK_BYTES_PER_MS)
            fake.log("dtoh", int(src), out.nbytes, stream.handle)

        def memcpy_dtoh(dest, src):
            fake.require_context("memcpy_dtoh")
            out = np.asarray(dest).reshape(-1).view(np.uint8)
            np.copyto(out, _device_array(src)[: out.nbytes])

        def memcpy_htod(dest, src):
            fake.require_context("memcpy_htod")
            data = np.asarray(src).reshape(-1).view(np.uint8)
            _device_array(dest)[: data.nbytes] = data

        def init(flags=0):
            pass

        for name, value in dict(locals()).items():
            if name not in ("fake", "driver", "self"):
                setattr(driver, name, value)
        return driver


# ----------------------------------------------------------------------------------- tensorrt
def _shape_of(dims):
    return tuple(int(d) for d in dims)


@dataclass
class BuildRecord:
    """What the fake builder was asked to do (for the tests to check)."""

    network_flags: int = 0
    flags: list = field(default_factory=list)
    profiles: list = field(default_factory=list)
    workspace: int | None = None
    optimization_level: int | None = None
    device_type: str | None = None
    dla_core: int | None = None
    timing_cache_in: bytes = b""
    progress: bool = False
    layer_devices: dict = field(default_factory=dict)  # layer name -> device type set on it
    cancelled: bool = False


_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_OP_TO_LAYER = {"Cast": "CAST", "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE",
                "Constant": "CONSTANT", "Shape": "SHAPE"}


class FakeTensorRT:
    """A fake ``tensorrt`` module of one version ("10.3.0.30" or "11.1.0.7")."""

    def __init__(self, cuda: FakeCuda, version: str = "10.3.0.30", *, dla_cores: int = 0, fail_build=False):
        self.cuda, self.version, self.dla_cores, self.fail_build = cuda, version, dla_cores, fail_build
        self.builds: list[BuildRecord] = []
        self._contexts: list = []  # weak references: the fake keeps nothing alive
        self.messages: list[tuple[int, str]] = []  # what TensorRT logged, as (severity, text)
        self.logger_pointer = None  # weakref to the process's one logger while a user exists
        self.logger_users = weakref.WeakSet()  # live Builders and Runtimes
        self.loaded_dla_cores: list = []
        self.on_build = None  # test hooks, called inside build_serialized_network / execute_async_v3
        self.on_execute = None

    @property
    def contexts(self) -> list:
        return [c for c in (ref() for ref in self._contexts) if c is not None]

    def logs(self, severity: int, text: str) -> None:
        """TensorRT logging through its one logger pointer (which must still be alive)."""
        logger = self.logger_pointer() if self.logger_pointer is not None else None
        if logger is None:
            raise RuntimeError("TensorRT logged through a freed logger (use after free)")
        if severity <= logger.min_severity:
            self.messages.append((severity, text))

    def _new_user(self, user, logger) -> None:
        if not list(self.logger_users):
            self.logger_pointer = weakref.ref(logger)
        elif self.logger_pointer() is not logger:
            self.logs(2, "The logger passed into createInferRuntime differs from one already provided for an "
                         "existing builder, runtime, or refitter. ... the existing value ... will be used instead.")
        self.logger_users.add(user)

    def module(self) -> types.ModuleType:
        fake, cuda = self, self.cuda
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        major = int(self.version.split(".")[0])

        class Logger:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)  # ILogger::Severity

            def __init__(self, min_severity=2):
                self.min_severity = min_severity

        class TensorIOMode:
            NONE, INPUT, OUTPUT = "NONE", "INPUT", "OUTPUT"

        class DataType:
            FLOAT, HALF, INT8, INT32, BOOL, UINT8, INT64 = "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64"

        float32, float16 = DataType.FLOAT, DataType.HALF

        def nptype(dtype):
            return {"UINT8": np.uint8, "FLOAT": np.float32, "HALF": np.float16}[dtype]

        class ExecutionContextAllocationStrategy:
            STATIC, ON_PROFILE_CHANGE, USER_MANAGED = "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        flag_names = ["GPU_FALLBACK", "TF32", "VERSION_COMPATIBLE"]
        if major == 10:
            flag_names += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
        BuilderFlag = type("BuilderFlag", (), {n: n for n in flag_names})

        LayerType = type("LayerType", (), {n: n for n in (
            "CONVOLUTION", "ACTIVATION", "ELEMENTWISE", "CONSTANT", "SHAPE", "CAST", "QUANTIZE", "DEQUANTIZE",
            "RESIZE", "CONCATENATION", "UNARY", "REDUCE", "SHUFFLE", "PADDING", "DECONVOLUTION", "IDENTITY")})

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class DeviceType:
            GPU, DLA = "GPU", "DLA"

        class IProgressMonitor:
            def __init__(self):
                self.initialized = True

        class IProfiler:
            def __init__(self):
                self.initialized = True

        class Tensor:
            def __init__(self, name, dtype):
                self.name, self.dtype = name, dtype

        class Layer:
            def __init__(self, name, type_, outputs):
                self.name, self.type, self._outputs = name, type_, outputs
                self.precision, self.output_types = DataType.FLOAT, {}

            @property
            def num_outputs(self):
                return len(self._outputs)

            def get_output(self, index):
                return self._outputs[index]

            def set_output_type(self, index, dtype):
                self.output_types[index] = dtype

        class Network:
            def __init__(self, flags):
                self.flags, self.model_bytes, self.layers = flags, None, []

            @property
            def num_layers(self):
                return len(self.layers)

            def get_layer(self, index):
                return self.layers[index]

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            def parse_from_file(self, path):
                import onnx

                try:
                    model = onnx.load(path)
                except Exception as error:
                    self.errors.append(f"cannot read {path}: {error}")
                    return False
                self.network.model_bytes = model.SerializeToString()
                inferred = onnx.shape_inference.infer_shapes(model)
                types_ = {v.name: v.type.tensor_type.elem_type for v in (
                    *inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
                for node in model.graph.node:  # a layer per node, its outputs typed as in the ONNX
                    outputs = [Tensor(o, _ONNX_TO_TRT.get(types_.get(o), "FLOAT")) for o in node.output]
                    self.network.layers.append(Layer(node.name, _OP_TO_LAYER.get(node.op_type, node.op_type.upper()),
                                                     outputs))
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, index):
                return self.errors[index]

        class TimingCache:
            def __init__(self, entries, device):
                self.entries, self.device = dict(entries), device

            def serialize(self):
                return TIMING_MAGIC + json.dumps({"device": self.device, "entries": self.entries}).encode()

            def combine(self, input_cache, ignore_mismatch):
                if input_cache.device != self.device and not ignore_mismatch:
                    return False
                self.entries.update(input_cache.entries)
                return True

        class OptimizationProfile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, input, min, opt, max):
                self.shapes[input] = (_shape_of(min), _shape_of(opt), _shape_of(max))

        class BuilderConfig:
            def __init__(self):
                self.record = BuildRecord()
                self.progress_monitor = None
                self._cache = None

            def set_memory_pool_limit(self, pool, pool_size):
                self.record.workspace = pool_size

            def add_optimization_profile(self, profile):
                self.record.profiles.append(profile.shapes)
                return len(self.record.profiles) - 1

            def set_flag(self, flag):
                self.record.flags.append(flag)

            def set_device_type(self, layer, device_type):
                self.record.layer_devices[layer.name] = device_type

            def create_timing_cache(self, serialized_timing_cache):
                data = bytes(serialized_timing_cache)
                if not data:
                    return TimingCache({}, cuda.gpu_name)
                try:  # TensorRT returns nullptr (None) for a blob it cannot read
                    assert data.startswith(TIMING_MAGIC)
                    content = json.loads(data[len(TIMING_MAGIC):])
                    return TimingCache(content["entries"], content["device"])
                except Exception:
                    return None

            def set_timing_cache(self, cache, ignore_mismatch):
                if not isinstance(cache, TimingCache):  # pybind: a reference cannot come from None
                    raise TypeError("set_timing_cache(): incompatible function arguments")
                if cache.device != cuda.gpu_name and not ignore_mismatch:
                    return False
                self._cache = cache
                self.record.timing_cache_in = cache.serialize()
                return True

            def get_timing_cache(self):
                return self._cache

            def __setattr__(self, name, value):
                if name == "builder_optimization_level":
                    self.record.optimization_level = value
                elif name == "default_device_type":
                    self.record.device_type = value
                elif name == "DLA_core":
                    self.record.dla_core = value
                object.__setattr__(self, name, value)

        def _callback(monitor, method, *args, cancel_on_error=False):
            """TensorRT's trampoline: an exception is printed; in step_complete it cancels."""
            try:
                return getattr(monitor, method)(*args)
            except Exception as error:
                print(f"[ERROR] Exception caught in {method}(): {error}", file=sys.stderr)
                return False if cancel_on_error else None

        class Builder:
            def __init__(self, logger):
                cuda.require_context("Builder")
                self._logger = logger  # py::keep_alive<1, 2>
                fake._new_user(self, logger)
                self.num_DLA_cores = fake.dla_cores

            def create_network(self, flags=0):
                return Network(flags)

            def create_builder_config(self):
                return BuilderConfig()

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                cuda.require_context("build_serialized_network")
                fake.logs(Logger.INFO, "building")
                record = config.record
                record.network_flags = network.flags
                record.progress = config.progress_monitor is not None
                fake.builds.append(record)
                monitor = config.progress_monitor
                if monitor is not None:
                    assert getattr(monitor, "initialized", False), "the monitor must initialize its base"
                    _callback(monitor, "phase_start", "Building engine", None, 2)
                    _callback(monitor, "phase_start", "Tactic selection", "Building engine", 3)
                    for step in range(3):
                        if not _callback(monitor, "step_complete", "Tactic selection", step, cancel_on_error=True):
                            record.cancelled = True
                            fake.logs(Logger.ERROR, "build cancelled by the progress monitor")
                            return None
                    _callback(monitor, "phase_finish", "Tactic selection")
                    _callback(monitor, "step_complete", "Building engine", 0, cancel_on_error=True)
                    _callback(monitor, "phase_finish", "Building engine")
                if fake.on_build is not None:
                    fake.on_build()
                if fake.fail_build:
                    return None
                if config._cache is not None:  # the build's measurements go into its timing cache
                    config._cache.entries[str(len(network.model_bytes))] = "measured"
                header = json.dumps({"profiles": record.profiles, "version": fake.version}).encode()
                return ENGINE_MAGIC + len(header).to_bytes(4, "little") + header + network.model_bytes

        class Engine:
            def __init__(self, header, model_bytes):
                import onnx

                from edgedb.backends.onnxrt import cpu_session

                self.owner_ctx = cuda.current_handle()
                self.model = onnx.load_from_string(model_bytes)
                self.session, _ = cpu_session(model_bytes)  # as the ONNX Runtime backend runs it
                self.profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in header["profiles"][0].items()}
                self.inputs = [i.name for i in self.session.get_inputs()]
                self.outputs = [o.name for o in self.session.get_outputs()]
                types_ = {"tensor(uint8)": "UINT8", "tensor(float)": "FLOAT", "tensor(float16)": "HALF"}
                self.dtypes = {i.name: types_[i.type] for i in (*self.session.get_inputs(), *self.session.get_outputs())}
                self.device_memory_size_v2 = 4096

            def __del__(self):
                cuda.freed_outside("ICudaEngine", self.owner_ctx)

            @property
            def num_io_tensors(self):
                return len(self.inputs) + len(self.outputs)

            def get_tensor_name(self, index):
                return (self.inputs + self.outputs)[index]

            def get_tensor_mode(self, name):
                return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

            def get_tensor_dtype(self, name):
                return self.dtypes[name]

            def get_tensor_profile_shape(self, name, profile_index):
                return [list(s) for s in self.profile[name]]

            def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC):
                cuda.require_context("create_execution_context")
                context = ExecutionContext(self, strategy)
                fake._contexts.append(weakref.ref(context))
                return context

        class ExecutionContext:
            def __init__(self, engine, strategy):
                self.owner_ctx = cuda.current_handle()
                self.engine, self.strategy = engine, strategy  # keeps its engine alive, as TensorRT's
                self.shapes, self.addresses = {}, {}
                self.address_calls, self.executions, self.device_memory = [], 0, None
                self.profiler = None  # TensorRT reports each layer to it on every enqueue

            def __del__(self):
                cuda.freed_outside("IExecutionContext", self.owner_ctx)

            def set_device_memory(self, memory, size):
                self.device_memory = (memory, size)

            def set_input_shape(self, name, shape):
                lo, _, hi = self.engine.profile[name]
                shape = _shape_of(shape)
                if len(shape) != len(lo) or not all(a <= v <= b for a, v, b in zip(lo, shape, hi)):
                    return False
                self.shapes[name] = shape
                return True

            def get_tensor_shape(self, name):
                if name in self.shapes:
                    return self.shapes[name]
                n, h, w, _ = self.shapes[self.engine.inputs[0]]
                return (n, 1, h, w)  # a DBNet map: one channel at the input's resolution

            def set_tensor_address(self, name, memory):
                if name not in self.engine.dtypes:
                    return False
                self.addresses[name] = int(memory)
                self.address_calls.append(name)
                return True

            def execute_async_v3(self, stream_handle):
                cuda.require_context("execute_async_v3")
                if self.strategy == ExecutionContextAllocationStrategy.USER_MANAGED and self.device_memory is None:
                    raise RuntimeError("USER_MANAGED context without device memory")
                if fake.on_execute is not None:
                    fake.on_execute(self)
                feed = {}
                for name in self.engine.inputs:
                    shape, dtype = self.shapes[name], nptype(self.engine.dtypes[name])
                    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    data = cuda.read_device(self.addresses[name], count, stream_handle)
                    feed[name] = data.view(dtype).reshape(shape)
                outputs = self.engine.session.run(self.engine.outputs, feed)
                for name, value in zip(self.engine.outputs, outputs):
                    cuda.write_device(self.addresses[name], np.ascontiguousarray(value).reshape(-1).view(np.uint8),
                                      stream_handle)
                self.executions += 1
                cuda.computed(stream_handle, COMPUTE_MS)
                if self.profiler is not None:
                    for node in self.engine.model.graph.node[:5]:
                        self.profiler.report_layer_time(node.name, 0.5)
                cuda.log("execute", stream_handle, id(self))
                return True

        class Runtime:
            def __init__(self, logger):
                self._logger = logger  # py::keep_alive<1, 2>
                fake._new_user(self, logger)
                self.DLA_core = -1

            def deserialize_cuda_engine(self, serialized_engine):
                cuda.require_context("deserialize_cuda_engine")
                fake.logs(Logger.INFO, "Loaded engine")
                fake.loaded_dla_cores.append(self.DLA_core)
                data = bytes(serialized_engine)
                if not data.startswith(ENGINE_MAGIC):
                    fake.logs(Logger.ERROR, "deserializeCudaEngine failed")
                    return None  # TensorRT logs an error and returns nullptr
                start = len(ENGINE_MAGIC)
                size = int.from_bytes(data[start:start + 4], "little")
                header = json.loads(data[start + 4:start + 4 + size])
                return Engine(header, data[start + 4 + size:])

        for name, value in dict(locals()).items():
            if name not in ("fake", "cuda", "trt", "self", "major", "flag_names"):
                setattr(trt, name, value)
        return trt


def install(monkeypatch, *, version="10.3.0.30", devices=1, integrated=False, dla_cores=0, gpu_name="Fake GPU",
            fail_build=False):
    """Puts fake ``tensorrt`` and ``pycuda.driver`` modules in ``sys.modules`` for one test."""
    cuda = FakeCuda(devices=devices, integrated=integrated, name=gpu_name)
    trt = FakeTensorRT(cuda, version, dla_cores=dla_cores, fail_build=fail_build)
    driver = cuda.module()
    package = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "tensorrt", trt.module())
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return trt, cuda
