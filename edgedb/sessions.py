"""ONNX Runtime CPU sessions as edgedb opens them, for the runtime backend and for the
passes that run a graph (calibration, bias correction): threads, the memory arena, and
which models ONNX Runtime may fuse into its integer kernels."""

from __future__ import annotations

import os
from typing import Optional, Union

from edgedb._checks import thread_count


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
