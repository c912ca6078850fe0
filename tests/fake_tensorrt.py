"""Stand-ins for ``tensorrt`` and ``pycuda.driver``, for testing edgedb's GPU code on a CPU.

They implement only the names edgedb uses, with the signatures of the real bindings
(TensorRT 10.3/10.16/11.1 ``python/src/infer/pyCore.cpp``, pycuda 2026.1
``wrap_cudadrv.cpp``), and they check the contracts edgedb must keep:

- every CUDA call is made with a context current on the calling thread (pycuda's context
  stack is per thread), and ``Context.pop`` with an empty stack fails as in pycuda;
- device memory lives in a registry keyed by address; copies and ``execute_async_v3``
  read and write it, so wrong addresses or sizes show up as wrong results;
- an "engine" is an ONNX model behind a header; the execution context runs it with ONNX
  Runtime, so a detector on the fake TensorRT must give ONNX Runtime's boxes.

Everything runs synchronously: streams and events only record the order of calls.
Nothing here proves what a GPU does; it proves edgedb's bookkeeping around the calls.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import types
from dataclasses import dataclass, field

import numpy as np

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


# ------------------------------------------------------------------------------------- pycuda
class FakeCuda:
    """State of one fake CUDA driver: devices, contexts, memory, and a log of calls."""

    def __init__(self, *, devices=1, integrated=False, name="Fake GPU", capability=(8, 7)):
        self.devices, self.integrated, self.gpu_name, self.capability = devices, integrated, name, capability
        self.memory: dict[int, np.ndarray] = {}
        self.addresses = itertools.count(1 << 20, 1 << 16)
        self.local = threading.local()
        self.retained = 0
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def stack(self) -> list:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def require_context(self, what: str) -> None:
        if not self.stack():
            raise RuntimeError(f"{what}: no CUDA context is current on this thread")

    def log(self, *entry) -> None:
        with self.lock:
            self.calls.append(entry)

    def new_address(self, array: np.ndarray) -> int:
        address = next(self.addresses)
        self.memory[address] = array
        return address

    def module(self) -> types.ModuleType:
        fake = self
        driver = types.ModuleType("pycuda.driver")

        class device_attribute:
            INTEGRATED = "INTEGRATED"
            CAN_MAP_HOST_MEMORY = "CAN_MAP_HOST_MEMORY"

        class host_alloc_flags:
            PORTABLE, DEVICEMAP, WRITECOMBINED = 1, 2, 4

        class Context:
            def push(self):
                fake.stack().append(self)

            @staticmethod
            def pop():
                if not fake.stack():
                    raise RuntimeError("cannot pop non-current context")
                fake.stack().pop()

            def detach(self):
                fake.retained -= 1

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
                fake.retained += 1
                return Context()

        class HostAllocation:
            def __init__(self, array, mapped):
                self.array, self.mapped, self.freed = array, mapped, False
                self.address = fake.new_address(array) if mapped else None

            def get_device_pointer(self):
                if not self.mapped:
                    raise RuntimeError("not mapped")
                return self.address

            def free(self):
                self.freed = True
                if self.address is not None:
                    fake.memory.pop(self.address, None)

        class PinnedArray(np.ndarray):
            @property
            def base(self):  # pycuda: the HostAllocation
                return self._allocation

        def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
            fake.require_context("pagelocked_empty")
            plain = np.zeros(shape, dtype)
            array = plain.view(PinnedArray)
            array._allocation = HostAllocation(plain, bool(mem_flags & host_alloc_flags.DEVICEMAP))
            fake.log("pagelocked_empty", int(plain.nbytes), bool(mem_flags))
            return array

        class DeviceAllocation:
            def __init__(self, nbytes):
                self.address = fake.new_address(np.zeros(nbytes, np.uint8))
                self.freed = False

            def __int__(self):
                return self.address

            __index__ = __int__

            def free(self):
                fake.require_context("free")
                self.freed = True
                fake.memory.pop(self.address, None)

        def mem_alloc(nbytes):
            fake.require_context("mem_alloc")
            fake.log("mem_alloc", int(nbytes))
            return DeviceAllocation(int(nbytes))

        class Stream:
            handles = itertools.count(100)

            def __init__(self, flags=0):
                fake.require_context("Stream")
                self.handle = next(Stream.handles)

            def synchronize(self):
                fake.require_context("Stream.synchronize")

            def wait_for_event(self, event):
                fake.require_context("wait_for_event")
                fake.log("wait_for_event", self.handle, event.recorded_on)

        class Event:
            clock = itertools.count(1)

            def __init__(self, flags=None):
                fake.require_context("Event")
                self.stamp, self.recorded_on = 0, None

            def record(self, stream=None):
                fake.require_context("Event.record")
                self.stamp, self.recorded_on = next(Event.clock), stream.handle if stream else None

            def synchronize(self):
                fake.require_context("Event.synchronize")

            def time_since(self, start):
                return 0.25 * (self.stamp - start.stamp)

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
            fake.log("htod", int(dest), data.nbytes, stream.handle)

        def memcpy_dtoh_async(dest, src, stream=None):
            fake.require_context("memcpy_dtoh_async")
            out = np.asarray(dest).reshape(-1).view(np.uint8)
            source = _device_array(src)
            if out.nbytes > source.nbytes:
                raise RuntimeError("copy past the end of a device buffer")
            out[...] = source[: out.nbytes]
            fake.log("dtoh", int(src), out.nbytes, stream.handle)

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


class FakeTensorRT:
    """A fake ``tensorrt`` module of one version ("10.3.0.30" or "11.1.0.7")."""

    def __init__(self, cuda: FakeCuda, version: str = "10.3.0.30", *, dla_cores: int = 0, fail_build=False):
        self.cuda, self.version, self.dla_cores, self.fail_build = cuda, version, dla_cores, fail_build
        self.builds: list[BuildRecord] = []
        self.contexts: list = []

    def module(self) -> types.ModuleType:
        fake, cuda = self, self.cuda
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        major = int(self.version.split(".")[0])

        class Logger:
            VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = range(5)

            def __init__(self, min_severity=2):
                self.min_severity = min_severity

        class TensorIOMode:
            NONE, INPUT, OUTPUT = "NONE", "INPUT", "OUTPUT"

        class DataType:
            UINT8, FLOAT, HALF = "UINT8", "FLOAT", "HALF"

        def nptype(dtype):
            return {"UINT8": np.uint8, "FLOAT": np.float32, "HALF": np.float16}[dtype]

        class ExecutionContextAllocationStrategy:
            STATIC, ON_PROFILE_CHANGE, USER_MANAGED = "STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        flag_names = ["GPU_FALLBACK", "TF32", "VERSION_COMPATIBLE"] + (["FP16", "INT8"] if major == 10 else [])
        BuilderFlag = type("BuilderFlag", (), {n: n for n in flag_names})

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

        class Network:
            def __init__(self, flags):
                self.flags, self.model_bytes = flags, None

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
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, index):
                return self.errors[index]

        class TimingCache:
            def __init__(self, data):
                self.data = bytes(data)

            def serialize(self):
                return self.data + b"+"

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

            def create_timing_cache(self, serialized_timing_cache):
                return TimingCache(serialized_timing_cache)

            def set_timing_cache(self, cache, ignore_mismatch):
                self._cache = cache
                self.record.timing_cache_in = cache.data
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

        class Builder:
            def __init__(self, logger):
                cuda.require_context("Builder")
                self.num_DLA_cores = fake.dla_cores

            def create_network(self, flags=0):
                return Network(flags)

            def create_builder_config(self):
                return BuilderConfig()

            def create_optimization_profile(self):
                return OptimizationProfile()

            def build_serialized_network(self, network, config):
                cuda.require_context("build_serialized_network")
                record = config.record
                record.network_flags = network.flags
                record.progress = config.progress_monitor is not None
                fake.builds.append(record)
                monitor = config.progress_monitor
                if monitor is not None:
                    assert getattr(monitor, "initialized", False), "the monitor must initialize its base"
                    monitor.phase_start("Building engine", None, 2)
                    monitor.phase_start("Tactic selection", "Building engine", 3)
                    for step in range(3):
                        assert monitor.step_complete("Tactic selection", step) is True
                    monitor.phase_finish("Tactic selection")
                    monitor.step_complete("Building engine", 0)
                    monitor.phase_finish("Building engine")
                if fake.fail_build:
                    return None
                header = json.dumps({"profiles": record.profiles, "version": fake.version}).encode()
                return ENGINE_MAGIC + len(header).to_bytes(4, "little") + header + network.model_bytes

        class Engine:
            def __init__(self, header, model_bytes):
                import onnx

                from edgedb.backends.onnxrt import cpu_session

                self.model = onnx.load_from_string(model_bytes)

                self.session, _ = cpu_session(model_bytes)  # as the ONNX Runtime backend runs it
                self.profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in header["profiles"][0].items()}
                self.inputs = [i.name for i in self.session.get_inputs()]
                self.outputs = [o.name for o in self.session.get_outputs()]
                types_ = {"tensor(uint8)": "UINT8", "tensor(float)": "FLOAT", "tensor(float16)": "HALF"}
                self.dtypes = {i.name: types_[i.type] for i in (*self.session.get_inputs(), *self.session.get_outputs())}
                self.device_memory_size_v2 = 4096

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
                fake.contexts.append(context)
                return context

        class ExecutionContext:
            def __init__(self, engine, strategy):
                self.engine, self.strategy = engine, strategy
                self.shapes, self.addresses = {}, {}
                self.address_calls, self.executions, self.device_memory = [], 0, None
                self.profiler = None  # TensorRT reports each layer to it on every enqueue

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
                feed = {}
                for name in self.engine.inputs:
                    shape, dtype = self.shapes[name], nptype(self.engine.dtypes[name])
                    count = int(np.prod(shape)) * np.dtype(dtype).itemsize
                    feed[name] = cuda.memory[self.addresses[name]][:count].view(dtype).reshape(shape).copy()
                outputs = self.engine.session.run(self.engine.outputs, feed)
                for name, value in zip(self.engine.outputs, outputs):
                    data = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
                    cuda.memory[self.addresses[name]][: data.nbytes] = data
                self.executions += 1
                if self.profiler is not None:
                    for node in self.engine.model.graph.node[:5]:
                        self.profiler.report_layer_time(node.name, 0.5)
                cuda.log("execute", stream_handle, id(self))
                return True

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, serialized_engine):
                cuda.require_context("deserialize_cuda_engine")
                data = bytes(serialized_engine)
                if not data.startswith(ENGINE_MAGIC):
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
