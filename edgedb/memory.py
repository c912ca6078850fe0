"""What inference needs in memory, and the budget edgedb keeps a run within.

A run whose estimate is over the budget is refused before any work: an 8192 x 8192 input,
or 256 benchmark streams, each pushed the process past 4 GB, more than an edge device has.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from edgedb.errors import InvalidInputError

# Peak RSS of PP-OCRv4 det on ONNX Runtime (CPU, float32) above the process before the
# model loaded, detectors inferring at once: 208 MiB each at 736x1280 (8 of them), 241 MiB
# at 1024x1024 (4), 0.6-0.7 GiB at 2048x2048, 1.0 GiB at 3072x3072, 1.7 GiB at 4096x4096.
# A fixed part per detector (session, arena, thread pool) and a part that grows with the
# input area fit these within 15%, overstating the large sizes rather than understating.
# TensorRT's activations are no larger (FP16/INT8 smaller), so the figure bounds it too.
# With ONNX Runtime's CPU arena back (issue 21) a 4096x4096 frame peaks at 2.4 GB (2.3 GB
# above the process before the model), so 140 bytes a pixel, not the 120 of the arena-less
# session.
DETECTOR_BYTES = 128 << 20
BYTES_PER_INPUT_PIXEL = 140

DEFAULT_MEMORY_BUDGET = 4 << 30  # bytes: an edge device has a few GB
MEMORY_BUDGET: Optional[int] = None  # None: $EDGEDB_MEMORY_BUDGET, else the default
MEMORY_BUDGET_ENV = "EDGEDB_MEMORY_BUDGET"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def inference_bytes(pixels: int, *, detectors: int = 1) -> int:
    """The estimated peak of ``detectors`` detectors each inferring ``pixels`` input pixels
    (a batch counts all its frames' pixels) at the same time."""
    return detectors * (DETECTOR_BYTES + BYTES_PER_INPUT_PIXEL * pixels)


def _configured_budget() -> int:
    if MEMORY_BUDGET is not None:
        return MEMORY_BUDGET
    text = os.environ.get(MEMORY_BUDGET_ENV, "").strip().upper().replace("_", "")
    if not text:
        return DEFAULT_MEMORY_BUDGET
    found = re.fullmatch(r"(\d+)\s*([KMGT]?)I?B?", text)
    if found is None or int(found.group(1)) == 0:
        raise InvalidInputError(f"${MEMORY_BUDGET_ENV} must be a positive number of bytes, optionally with K, M, G "
                                f"or T (such as 8G), not {os.environ[MEMORY_BUDGET_ENV]!r}")
    return int(found.group(1)) * _UNITS[found.group(2)]


def available_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes; None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def check_inference_memory(pixels: int, what: str, advice: str, *, detectors: int = 1) -> None:
    """Refuses a run whose estimate (``inference_bytes``) is over the budget: the configured
    one (edgedb.memory.MEMORY_BUDGET, else $EDGEDB_MEMORY_BUDGET, else 4 GiB) or the memory
    this machine has available, whichever is smaller. ``what`` names the run, ``advice``
    says what to change.

    Raises:
        InvalidInputError: the estimate, the budget and what to do.
    """
    needed = inference_bytes(pixels, detectors=detectors)
    configured, available = _configured_budget(), available_memory()
    if needed <= configured and (available is None or needed <= available):
        return
    if available is not None and available < configured:
        budget = f"the {_gib(available)} this machine has available"
    else:
        budget = (f"the memory budget of {_gib(configured)} (${MEMORY_BUDGET_ENV}, or edgedb.memory.MEMORY_BUDGET in Python; "
                  "raise it if this machine has the memory)")
    raise InvalidInputError(
        f"{what}: about {_gib(needed)} needed ({DETECTOR_BYTES >> 20} MiB per detector + {BYTES_PER_INPUT_PIXEL} "
        f"bytes per input pixel, measured on ONNX Runtime), over {budget}; {advice}")
