"""The backend protocol: a graph that takes named arrays and returns named arrays.

ONNX Runtime and TensorRT backends look alike, so ``EdgeDetector`` drives either
without knowing which: tensors are matched by name, never by position, and every
backend is a context manager whose ``close()`` may be called any number of times.
"""

from __future__ import annotations

import abc
from typing import Mapping

import numpy as np


class Backend(abc.ABC):
    """Runs one model. Subclasses set ``input_names`` and ``output_names``."""

    name: str = "backend"
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    @abc.abstractmethod
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model. Returned arrays belong to the caller: a later call never
        overwrites them."""

    def _release(self) -> None:
        """Frees the backend's resources; called once by close()."""

    @property
    def closed(self) -> bool:
        return getattr(self, "_closed", False)

    def close(self) -> None:
        if not self.closed:
            self._closed = True
            self._release()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class OversizedRuns:
    """Decides after which runs a CPU runtime should hand its working memory back.

    Runtimes keep the buffers of their largest run for reuse: ONNX Runtime's arena held
    2.2 GB for the life of a session after one 4096x4096 frame, OpenVINO's compiled model
    1.9 GB. Keeping buffers makes usual frames faster (PP-OCRv4 at 720p: 144 vs 179 ms with
    ONNX Runtime's arena), so memory goes back only after a run whose input is more than
    ``factor`` times the median of the last ``window`` runs (and after the first run, which
    has nothing to compare with): the memory of one oversized frame goes back as soon as it
    is done, and frames of the usual size keep what they reuse.
    """

    def __init__(self, window: int = 16, factor: float = 2.0):
        from collections import deque

        self.factor = factor
        self._sizes: "deque[int]" = deque(maxlen=window)

    def oversized(self, elements: int) -> bool:
        """Records a run of ``elements`` input values; True when its memory should go back."""
        usual = sorted(self._sizes)[len(self._sizes) // 2] if self._sizes else 0
        self._sizes.append(elements)
        return elements > self.factor * usual
