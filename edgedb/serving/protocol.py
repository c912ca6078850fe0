"""What crosses the wire between a Triton client and edgedb's served model: the tensor
names, and how a batch of per-image box lists is packed into fixed-rank tensors and back.

One request carries B images, either as ``IMAGE`` (uint8 B x H x W x C, BGR like
``EdgeDetector`` takes, C = 1, 3 or 4) or as ``ENCODED`` (uint8 B x N: each row the bytes
of a JPEG/PNG file, B = 1 unless the files are the same length). The response holds, per
image b and box n < ``COUNTS[b]``: ``BOXES[b, n, :SIZES[b, n]]`` its points (x, y) and
``SCORES[b, n]`` its score (float64, as in-process). Padding is NaN (points) and 0 (scores,
sizes), so a packed response can be unpacked without knowing the box type.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgedb.boxes import TextBox
from edgedb.errors import InvalidInputError

INPUT_IMAGE = "IMAGE"
INPUT_ENCODED = "ENCODED"
OUTPUT_BOXES = "BOXES"
OUTPUT_SIZES = "SIZES"
OUTPUT_SCORES = "SCORES"
OUTPUT_COUNTS = "COUNTS"
OUTPUTS = (OUTPUT_BOXES, OUTPUT_SIZES, OUTPUT_SCORES, OUTPUT_COUNTS)

#: The served model's name in the repository, unless export_triton is told another.
DEFAULT_MODEL_NAME = "edgedb_det"


def pack_boxes(results: Sequence[Sequence[TextBox]]) -> dict[str, np.ndarray]:
    """Per-image box lists -> the four response tensors, each with the batch first."""
    batch = len(results)
    # at least one (padded) slot: Triton's stub refuses zero-size DLPack tensors as "not
    # contiguous", which failed every frame without text
    most = max(1, max((len(boxes) for boxes in results), default=0))
    points = max((len(box.points) for boxes in results for box in boxes), default=4)
    packed = {
        OUTPUT_BOXES: np.full((batch, most, points, 2), np.nan, np.float32),
        OUTPUT_SIZES: np.zeros((batch, most), np.int32),
        OUTPUT_SCORES: np.zeros((batch, most), np.float64),
        OUTPUT_COUNTS: np.array([[len(boxes)] for boxes in results], np.int32).reshape(batch, 1),
    }
    for b, boxes in enumerate(results):
        for n, box in enumerate(boxes):
            packed[OUTPUT_BOXES][b, n, :len(box.points)] = box.points
            packed[OUTPUT_SIZES][b, n] = len(box.points)
            packed[OUTPUT_SCORES][b, n] = box.score
    return packed


def unpack_boxes(packed: dict[str, np.ndarray]) -> list[list[TextBox]]:
    """The inverse of ``pack_boxes``: new arrays per box, as ``EdgeDetector`` returns them."""
    missing = [name for name in OUTPUTS if packed.get(name) is None]
    if missing:
        raise InvalidInputError(f"the response lacks {', '.join(missing)}: is this edgedb's served model?")
    boxes, sizes = packed[OUTPUT_BOXES], packed[OUTPUT_SIZES]
    scores, counts = packed[OUTPUT_SCORES], packed[OUTPUT_COUNTS].reshape(-1)
    return [
        [TextBox(np.array(boxes[b, n, :sizes[b, n]], np.float32), float(scores[b, n])) for n in range(int(count))]
        for b, count in enumerate(counts)
    ]
