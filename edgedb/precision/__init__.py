"""Reduced-precision models: the precision lives in the ONNX graph's types, as TensorRT's
strongly typed networks (TensorRT 11 has no FP16 builder flag) want it.

``to_float16`` converts a deployable (rewritten) DBNet to float16 weights and activations
with float32 kept where it matters; ``quantize_best`` writes INT8 convolutions with float16
between them (``quantize_int8`` in ``edgedb.precision.int8`` keeps float32 between);
``correct_biases`` gives an INT8 model's convolutions FP32's output means on calibration
images. Importing this package loads no onnx code; that happens on first use.
"""

from edgedb.precision.best import quantize_best
from edgedb.precision.bias_correction import correct_biases
from edgedb.precision.fp16 import to_float16

__all__ = ["correct_biases", "quantize_best", "to_float16"]
