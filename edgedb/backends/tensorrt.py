"""TensorRT support: imported lazily, so nothing else needs tensorrt or pycuda."""

from __future__ import annotations

from edgedb.errors import MissingDependencyError

EXTRA = "pip install 'edgedb[tensorrt]'  (TensorRT 10.x or 11.x and pycuda; on Jetson, TensorRT comes with JetPack)"


def import_tensorrt():
    """Returns the tensorrt module, or raises MissingDependencyError naming the extra."""
    try:
        import tensorrt
    except ImportError as error:
        raise MissingDependencyError(f"the TensorRT backend needs tensorrt, which is not installed: {EXTRA}") from error
    return tensorrt


def import_pycuda_driver():
    """Returns pycuda.driver (initialized, no global context), or raises MissingDependencyError."""
    try:
        import pycuda.driver as cuda
    except ImportError as error:
        raise MissingDependencyError(f"the TensorRT backend needs pycuda, which is not installed: {EXTRA}") from error
    cuda.init()
    return cuda


def tensorrt_available() -> bool:
    """True when tensorrt and pycuda import and a CUDA device is present."""
    try:
        import_tensorrt()
        return import_pycuda_driver().Device.count() > 0
    except Exception:  # any failure means: not usable here
        return False
