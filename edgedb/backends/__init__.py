"""Backends behind one protocol: ONNX Runtime and OpenVINO (CPUs), TensorRT (NVIDIA GPUs)."""

from __future__ import annotations

from pathlib import Path

from edgedb.backends.base import Backend
from edgedb.errors import EdgeDBError, InvalidInputError

BACKENDS = ("auto", "cpu", "onnxruntime", "openvino", "tensorrt")


def resolve_backend_name(name: str) -> str:
    """Maps a user's choice to a concrete backend: "onnxruntime", "openvino" or "tensorrt".

    "auto" is TensorRT where it is installed and a GPU is present, else ONNX Runtime;
    "cpu" is ONNX Runtime (OpenVINO is chosen by name: see ``auto_cpu_backend``).
    Asking for "tensorrt" or "openvino" without it raises MissingDependencyError naming
    the extra.
    """
    from edgedb.backends import openvino, tensorrt

    if name not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, not {name!r}")
    if name == "tensorrt":
        tensorrt.import_tensorrt()
        tensorrt.import_pycuda_driver()
        return "tensorrt"
    if name == "openvino":
        openvino.import_openvino()
        return "openvino"
    if name == "auto" and tensorrt.tensorrt_available():
        return "tensorrt"
    return "onnxruntime"


def create_backend(name: str, model, **options) -> Backend:
    """A backend for ``model``: an ONNX model (path, bytes or ModelProto) on ONNX Runtime or
    OpenVINO, or an engine file built by edgedb on TensorRT. Options: ``threads`` (the CPU
    backends), ``inference_precision`` (OpenVINO: "f32" or "bf16"), ``device`` (TensorRT)."""
    concrete = resolve_backend_name(name)
    if concrete == "onnxruntime":
        from edgedb.backends.onnxrt import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, threads=options.get("threads"))
    if concrete == "openvino":
        from edgedb.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(model, threads=options.get("threads"),
                               inference_precision=options.get("inference_precision", "f32"))
    from edgedb.backends.tensorrt import TensorRTBackend

    if not isinstance(model, (str, Path)):
        raise EdgeDBError("the TensorRT backend runs engine files; build one with edgedb.engine.build_from_model "
                          "(edgedb build) or let EdgeDetector build and cache it")
    return TensorRTBackend(model, device=options.get("device", 0))


__all__ = ["Backend", "BACKENDS", "create_backend", "resolve_backend_name"]
