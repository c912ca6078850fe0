"""Reduced-precision models: the precision lives in the ONNX graph's types, as TensorRT's
strongly typed networks (TensorRT 11 has no FP16 builder flag) want it.

``to_float16`` converts a deployable (rewritten) DBNet to float16 weights and activations
with float32 kept where it matters. Importing this package loads no onnx code; that
happens on first use.
"""

from edgedb.precision.fp16 import to_float16

__all__ = ["to_float16"]
