"""Reduced-precision models: the precision lives in the ONNX graph's types, as TensorRT's
strongly typed networks (TensorRT 11 has no FP16 builder flag) want it.

``to_float16`` converts a deployable (rewritten) DBNet to float16 weights and activations
with float32 kept where it matters; ``quantize_best`` writes INT8 convolutions with float16
between them (``quantize_int8`` in ``edgedb.precision.int8`` keeps float32 between). Importing this package loads no onnx code; that
happens on first use.
"""

from edgedb.precision.best import quantize_best
from edgedb.precision.fp16 import to_float16

__all__ = ["quantize_best", "to_float16"]
