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
