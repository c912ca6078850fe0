"""The ONNX an engine is built from, in the requested precision.

Precision lives in the ONNX (TensorRT 11 has no FP16/INT8 flags): fp32 is the rewritten
model, fp16 its float16 conversion, int8 calibrated Q/DQ convolutions, best Q/DQ
convolutions with float16 between them. A model ``edgedb quantize`` already wrote
carries its precision in its metadata and is taken as it is. Nothing here imports
TensorRT: this is the CPU half of a build, also what ONNX Runtime checks for accuracy.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from edgedb.errors import InvalidInputError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8", "best")


def model_precision(model) -> str:
    """The precision recorded in a model's metadata: "fp32", "fp16", "int8" or "best"."""
    from edgedb.spec import PRECISION_KEY

    for prop in model.metadata_props:
        if prop.key == PRECISION_KEY:
            return prop.value.split("-")[0]
    return "fp32"


def precision_model(
    model,
    precision: Optional[str] = None,
    *,
    calib: Union[str, Path, Sequence[Union[str, Path]], None] = None,
    method: str = "percentile",
    limit_side_len: int = 736,
    limit_type: str = "min",
    input_size: Optional[tuple[int, int]] = None,
    cache_dir: Optional[Path] = None,
):
    """A deployable ModelProto in ``precision`` (default: the model's own).

    Args:
        model: a deployable (rewritten) ModelProto.
        precision: "fp32", "fp16", "int8" or "best"; None keeps the model's.
        calib: calibration images (folder, list file or paths), for int8 and best.
        method: how activation ranges are chosen from the calibration statistics.
        limit_side_len, limit_type, input_size: how calibration frames are prepared (as
            the detector will prepare frames at run time).
        cache_dir: calibration statistics cache (default: ``calibration/`` in edgedb's
            cache folder, as ``edgedb.precision.calibration.DEFAULT_CACHE``).

    Raises:
        InvalidInputError: unknown precision, a model already in another reduced precision,
            or int8/best without calibration images.
    """
    current = model_precision(model)
    if precision is None or precision == current:
        return model
    if precision not in PRECISIONS:
        raise InvalidInputError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if current != "fp32":
        raise InvalidInputError(
            f"the model is already {current}; build it as is (leave precision unset) or start from the FP32 model"
        )
    if precision == "fp32":
        return model
    if precision == "fp16":
        from edgedb.precision import to_float16

        return to_float16(model)
    if calib is None:
        raise InvalidInputError(f"{precision} needs calibration images (calib=DIR, --calib DIR): a folder of "
                                "images like the ones the detector will see, or a list file")
    from edgedb.precision.calibration import DEFAULT_CACHE, calibration_images, collect_stats

    images = calibration_images(calib)
    stats = collect_stats(model, images, limit_side_len=limit_side_len, limit_type=limit_type,
                          input_size=input_size, cache_dir=cache_dir or DEFAULT_CACHE)
    if precision == "int8":
        from edgedb.precision.int8 import quantize_int8

        return quantize_int8(model, stats, target="tensorrt", method=method)
    from edgedb.precision import quantize_best

    return quantize_best(model, stats, method=method)
