"""The stand-in TensorRT of ``fake_tensorrt`` on a real GPU: its engine does its work on
the GPU's memory through real pycuda (device -> host copy, ONNX Runtime, host -> device),
so the CUDA tier (``pytest -m cuda``) runs everything of edgedb's TensorRT backend on
hardware except TensorRT itself: buffers, mapped memory, streams, events, the context
pushed from several threads, the double-buffered ``stream()``.

Only imported where pycuda and an NVIDIA GPU are present (tests/test_cuda_tier.py).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from fake_tensorrt import FakeTensorRT


class RealCuda:
    """What ``FakeTensorRT`` asks of its CUDA driver, answered by real pycuda."""

    def __init__(self):
        import pycuda.driver as driver

        driver.init()
        self.driver = driver
        self.gpu_name = str(driver.Device(0).name())
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def require_context(self, what: str) -> None:
        if self.driver.Context.get_current() is None:
            raise RuntimeError(f"{what}: no CUDA context is current on this thread")

    def current_handle(self):
        return self.driver.Context.get_current()

    def freed_outside(self, kind: str, handle) -> None:
        pass  # real pycuda checks this itself (and warns)

    def log(self, *entry) -> None:
        with self.lock:
            self.calls.append(entry)

    def read_device(self, address: int, nbytes: int, stream_handle) -> np.ndarray:
        # The compute stream waited for this frame's copy-in event: finishing all work in
        # the context makes the copied bytes visible to a synchronous copy.
        self.driver.Context.synchronize()
        host = np.empty(nbytes, np.uint8)
        self.driver.memcpy_dtoh(host, int(address))
        return host

    def write_device(self, address: int, data: np.ndarray, stream_handle) -> None:
        self.driver.memcpy_htod(int(address), np.ascontiguousarray(data))
        self.driver.Context.synchronize()

    def computed(self, stream_handle, ms: float) -> None:
        pass  # the work above was real


def install_on_gpu(monkeypatch):
    """The stand-in ``tensorrt`` over real pycuda, for one test."""
    cuda = RealCuda()
    trt = FakeTensorRT(cuda, "10.3.0.30")
    monkeypatch.setitem(sys.modules, "tensorrt", trt.module())
    return trt, cuda
