"""TensorRT version gates: every call whose name or meaning differs between the versions
edgedb supports goes through here, so the rest of the code reads the same on all of them.

Supported: TensorRT 10.x (10.3 is what JetPack 6 ships; 10.16 the newest 10.x) and 11.x.
Facts from the bindings' source (NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` at the
tags v10.3.0, v10.16 and v11.1; summarized in ``../shared/TENSORRT.md``):

- ``BuilderFlag.FP16`` and ``INT8`` exist in 10.x (deprecated from 10.12 in favour of
  strong typing) and are gone in 11.x.
- ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists in every supported version (a
  no-op in 11.x, where networks are always strongly typed); ``EXPLICIT_BATCH`` is gone in
  11.x, so it is never used (10.x networks are always explicit batch).
- DLA builds need a weakly typed network with the FP16 (or INT8) flag on 10.x; NVIDIA's
  notes say 10.7 was the last 10.x with DLA, 11.0-11.3 have none, and 11.4.1 brings it
  back for strongly typed networks on AGX Orin only.

The functions take the imported ``tensorrt`` module as an argument: they hold no state and
import nothing, so tests drive them with stand-in modules.
"""

from __future__ import annotations

import re

from edgedb.errors import EdgeDBError

SUPPORTED_MAJORS = (10, 11)


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; suffixes such as ``rc1`` or ``+cuda12`` are ignored."""
    numbers = []
    for part in str(text).split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
    if not numbers:
        raise EdgeDBError(f"cannot read the TensorRT version {text!r}")
    return tuple(numbers)


def tensorrt_version(trt) -> tuple[int, ...]:
    return parse_version(trt.__version__)


def check_supported(trt) -> None:
    """Raises EdgeDBError for a TensorRT major version edgedb was not written for."""
    version = tensorrt_version(trt)
    if version[0] not in SUPPORTED_MAJORS:
        raise EdgeDBError(
            f"TensorRT {trt.__version__} is not supported: edgedb needs TensorRT 10.x or 11.x "
            "(JetPack 6 ships 10.3)"
        )


def has_precision_flags(trt) -> bool:
    """True where the builder still has the FP16/INT8 flags (10.x)."""
    return getattr(trt.BuilderFlag, "FP16", None) is not None


def network_flags(trt, strongly_typed: bool) -> int:
    """The ``create_network`` flags: strongly typed, or 0 (weakly typed, explicit batch on 10.x)."""
    if not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def precision_flags(trt, *, fp16: bool, int8: bool) -> list:
    """The builder flags a weakly typed (DLA) build needs, or EdgeDBError where they are gone."""
    wanted = [name for name, on in (("FP16", fp16), ("INT8", int8)) if on]
    flags = [getattr(trt.BuilderFlag, name, None) for name in wanted]
    if any(flag is None for flag in flags):
        raise EdgeDBError(
            f"TensorRT {trt.__version__} has no {'/'.join(wanted)} builder flags (removed in 11.x); "
            "a DLA build needs TensorRT 10.x (JetPack 6 ships 10.3)"
        )
    return flags

