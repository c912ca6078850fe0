"""The GPU libraries as edgedb uses them, shared by the engine builder and the TensorRT
runtime: tensorrt and pycuda imported lazily (naming the extra to install when missing),
the process's one TensorRT logger, and a CUDA device's primary context.

Why the primary context: TensorRT uses the CUDA runtime, which works in the device's
*primary* context. pycuda's ``autoinit`` instead creates a second context that is current
only on the importing thread: TensorRT called from another thread then runs in a different
context than the buffers pycuda allocated. So edgedb never creates a context: it retains
the primary context once and pushes it around every call (``with device.activate(): ...``)
on whichever thread makes the call; pycuda's context stack is per thread, so this works
from any thread and for any number of detectors in one process.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Iterator

from edgedb._extras import import_optional
from edgedb.errors import EdgeDBError


EXTRA = ("pip install 'dbnet-edge[tensorrt]', or pip install -e '.[tensorrt]' in a checkout (TensorRT 10.x or 11.x and pycuda; on a Jetson "
         "TensorRT comes with JetPack: see the README's Jetson section)")


def import_tensorrt():
    """Returns the tensorrt module, or raises MissingDependencyError naming the extra."""
    return import_optional("tensorrt", "the TensorRT backend", EXTRA)


def import_pycuda_driver():
    """Returns pycuda.driver (initialized, no global context), or raises MissingDependencyError."""
    cuda = import_optional("pycuda.driver", "the TensorRT backend", EXTRA)
    cuda.init()
    return cuda


# tensorrt module -> the one Logger every Builder and Runtime of the process gets.
_LOGGERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOGGER_LOCK = threading.Lock()


def tensorrt_logger(trt, verbose: bool = False):
    """The process's one ``trt.Logger``, kept alive for the process.

    TensorRT "maintains only a single logger pointer at any given time": a Builder or
    Runtime made with another logger while one exists logs through the first (its
    warning, NVIDIA/TensorRT#1475), while pybind ties each Logger's life to the one
    object made with it (``py::keep_alive<1, 2>`` on ``Builder``/``Runtime``,
    ``python/src/infer/pyCore.cpp`` v10.3.0 l.1509, l.1538). A logger per object could so
    be freed while TensorRT still logs through it. ``verbose`` lowers the threshold to INFO
    for the rest of the process (it never rises again: an earlier verbose user keeps its
    messages).
    """
    with _LOGGER_LOCK:
        logger = _LOGGERS.get(trt)
        if logger is None:
            logger = _LOGGERS[trt] = trt.Logger(trt.Logger.WARNING)
        if verbose:
            logger.min_severity = trt.Logger.INFO
        return logger


def tensorrt_available() -> bool:
    """True when a supported tensorrt (10.x or 11.x) and pycuda import and a CUDA device is present."""
    from edgedb.engine.compat import check_supported

    try:
        check_supported(import_tensorrt())
        return import_pycuda_driver().Device.count() > 0
    except Exception:  # any failure means: not usable here
        return False

# pycuda driver module -> {device index: its retained primary context}. Keyed by module so
# that stand-in drivers in tests each get their own; the real pycuda has one.
_PRIMARY_CONTEXTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_PRIMARY_LOCK = threading.Lock()


def primary_context(cuda, index: int):
    """Device ``index``'s primary context, retained the first time it is asked for."""
    with _PRIMARY_LOCK:
        contexts = _PRIMARY_CONTEXTS.setdefault(cuda, {})
        if index not in contexts:
            contexts[index] = cuda.Device(index).retain_primary_context()
        return contexts[index]


class CudaDevice:
    """Device ``index`` and its primary context (retained for the process, see the module
    doc); ``close()`` ends this handle (idempotent) and leaves the context to other users."""

    def __init__(self, index: int = 0):
        self.cuda = import_pycuda_driver()
        count = self.cuda.Device.count()
        if not 0 <= int(index) < count:
            raise EdgeDBError(f"no CUDA device {index}: this machine has {count}" + (
                " (is the NVIDIA driver loaded? nvidia-smi or, on a Jetson, tegrastats tells)" if count == 0 else ""))
        self.index = int(index)
        self.device = self.cuda.Device(self.index)
        self._context = primary_context(self.cuda, self.index)
        self._closed = False

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Makes the primary context current on this thread for the block."""
        if self._closed:
            raise EdgeDBError("this CUDA device handle is closed")
        self._context.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    @property
    def name(self) -> str:
        return str(self.device.name())

    @property
    def compute_capability(self) -> tuple[int, int]:
        major, minor = self.device.compute_capability()
        return int(major), int(minor)

    @property
    def integrated(self) -> bool:
        """True on a Jetson: the GPU shares the host's memory."""
        return bool(self.device.get_attribute(self.cuda.device_attribute.INTEGRATED))

    @property
    def can_map_host_memory(self) -> bool:
        return bool(self.device.get_attribute(self.cuda.device_attribute.CAN_MAP_HOST_MEMORY))

    def device_info(self, trt):
        from edgedb.engine.sidecar import DeviceInfo

        return DeviceInfo(str(trt.__version__), self.name, self.compute_capability)

    def close(self) -> None:
        self._closed = True
        self._context = None

    def __enter__(self) -> "CudaDevice":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
