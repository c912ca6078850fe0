"""Buffer bookkeeping of the TensorRT runtime, kept apart from the CUDA calls it drives.

- ``TensorBuffers``: one host + device buffer pair per tensor *name*, allocated the first
  time a tensor is seen and grown only when a larger shape arrives, so a stream of
  frames of one size allocates once.
- ``AddressBook``: what address each tensor of an execution context is bound to, so
  ``set_tensor_address`` is called only when a buffer really changed (TensorRT's samples
  set every address on every call).
- ``check_in_profile`` / ``tensor_nbytes``: shape checks and sizes.

The allocator and the context are passed in: the runtime gives pycuda's pinned and device
memory and a TensorRT execution context, the tests give plain stand-ins.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from edgedb.errors import InvalidInputError

ALIGNMENT = 256  # TensorRT wants tensor addresses 256-byte aligned; so is cuMemAlloc


class Allocation(Protocol):
    """A host buffer (uint8, 1-D, ``nbytes`` long) and the device address of its twin."""

    host: np.ndarray
    device_address: int
    nbytes: int

    def free(self) -> None: ...


def tensor_nbytes(shape: Sequence[int], dtype) -> int:
    if any(int(d) < 0 for d in shape):
        raise InvalidInputError(f"shape {tuple(shape)} is not concrete (a dimension is -1)")
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def rounded(nbytes: int) -> int:
    """At least one aligned block, in whole blocks."""
    return max(ALIGNMENT, -(-int(nbytes) // ALIGNMENT) * ALIGNMENT)


class TensorBuffers:
    """Buffers by tensor name, each as large as the largest shape seen (see the module doc)."""

    def __init__(self, allocate: Callable[[int], Allocation]):
        self._allocate = allocate
        self._buffers: dict[str, Allocation] = {}

    def ensure(self, name: str, nbytes: int) -> tuple[Allocation, bool]:
        """The buffer of ``name`` holding at least ``nbytes``, and whether it is new."""
        current = self._buffers.get(name)
        if current is not None and current.nbytes >= nbytes:
            return current, False
        if current is not None:
            current.free()
            del self._buffers[name]
        buffer = self._allocate(rounded(nbytes))
        self._buffers[name] = buffer
        return buffer, True

    def __getitem__(self, name: str) -> Allocation:
        return self._buffers[name]

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers.values())

    def free(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()


class AddressBook:
    """Binds tensor addresses on an execution context, calling it only for changes."""

    def __init__(self, context):
        self._context = context
        self._bound: dict[str, int] = {}

    def bind(self, name: str, address: int) -> bool:
        """Sets the address of ``name`` if it differs from the bound one; True if it did."""
        address = int(address)
        if self._bound.get(name) == address:
            return False
        if not self._context.set_tensor_address(name, address):
            raise InvalidInputError(f"TensorRT refused the address of tensor {name!r} (not an engine tensor, "
                                    "or not 256-byte aligned)")
        self._bound[name] = address
        return True


def check_in_profile(name: str, shape: Sequence[int], minimum: Sequence[int], maximum: Sequence[int]) -> None:
    """Raises InvalidInputError, saying what to rebuild, when ``shape`` is outside [min, max]."""
    shape, minimum, maximum = (tuple(int(v) for v in s) for s in (shape, minimum, maximum))
    if len(shape) != len(minimum) or not all(lo <= v <= hi for lo, v, hi in zip(minimum, shape, maximum)):
        raise InvalidInputError(
            f"input {name!r} has shape {shape}, outside the engine's profile (min {minimum}, max {maximum}). "
            "Build the engine for these frames: state your image sizes (image_sizes=[(H, W), ...], "
            "--image-size HxW), use a fixed input_size, or raise max_batch."
        )
