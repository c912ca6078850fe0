"""Backends behind one protocol: ONNX Runtime (CPU) and TensorRT (NVIDIA GPUs)."""

from __future__ import annotations

from edgedb.backends.base import Backend
from edgedb.errors import EdgeDBError, InvalidInputError

BACKENDS = ("auto", "cpu", "onnxruntime", "tensorrt")


def resolve_backend_name(name: str) -> str:
    """Maps a user's choice to a concrete backend: "onnxruntime" or "tensorrt".

    "auto" is TensorRT where it is installed and a GPU is present, else ONNX Runtime.
    Asking for "tensorrt" without it raises MissingDependencyError naming the extra.
    """
    from edgedb.backends import tensorrt

    if name not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, not {name!r}")
    if name == "tensorrt":
        tensorrt.import_tensorrt()
        tensorrt.import_pycuda_driver()
        return "tensorrt"
    # "auto" picks ONNX Runtime until the TensorRT runtime lands; then it will prefer
    # TensorRT where tensorrt.tensorrt_available() says a GPU is usable.
    return "onnxruntime"


def create_backend(name: str, model, **options) -> Backend:
    concrete = resolve_backend_name(name)
    if concrete == "onnxruntime":
        from edgedb.backends.onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, threads=options.get("threads"))
    raise EdgeDBError(
        "TensorRT is installed, but this version of edgedb runs detection on ONNX Runtime only; "
        "engine building and the TensorRT runtime come next. Use backend='cpu'."
    )


__all__ = ["Backend", "BACKENDS", "create_backend", "resolve_backend_name"]
