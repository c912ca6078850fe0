"""Probability maps from a DBNet ONNX model on ONNX Runtime (CPU), PaddleOCR-style input.

A small, plain path from an image to the map P that box formation consumes; the full
detector with graph rewriting and backends builds on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from edgedb.errors import InvalidInputError, InvalidInputTypeError
from edgedb.models import DEFAULT_MODEL, resolve_model

STRIDE = 32  # DBNet's FPN needs sides that are multiples of the backbone's stride


def resized_shape(height: int, width: int, limit_side_len: int = 736, limit_type: str = "min") -> tuple[int, int]:
    """Input shape for an image: scaled so its shorter (``"min"``: at least) or longer
    (``"max"``: at most) side meets ``limit_side_len``, then rounded to multiples of 32."""
    if limit_type == "min":
        ratio = limit_side_len / min(height, width) if min(height, width) < limit_side_len else 1.0
    elif limit_type == "max":
        ratio = limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0
    else:
        raise InvalidInputError(f"limit_type must be 'min' or 'max', not {limit_type!r}")
    to_stride = lambda side: max(STRIDE, int(round(int(side * ratio) / STRIDE)) * STRIDE)  # noqa: E731
    return to_stride(height), to_stride(width)


class ProbabilityMapper:
    """Runs a DBNet ONNX model on BGR uint8 images and returns its probability map."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, limit_side_len: int = 736, limit_type: str = "min",
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), threads: Optional[int] = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.model_path = resolve_model(model)
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.limit_side_len, self.limit_type = limit_side_len, limit_type
        self.mean = np.asarray(mean, np.float32) * 255
        self.scale = 1 / (np.asarray(std, np.float32) * 255)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The (H', W') float32 map for a BGR uint8 image, H', W' multiples of 32."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidInputTypeError("image must be a BGR uint8 array of shape (H, W, 3)")
        h, w = resized_shape(image.shape[0], image.shape[1], self.limit_side_len, self.limit_type)
        resized = cv2.resize(image, (w, h))
        blob = ((resized.astype(np.float32) - self.mean) * self.scale).transpose(2, 0, 1)[None]
        return self.session.run(None, {self.input_name: blob})[0][0, 0]
