"""How far a model's probability maps are from a reference's, in what a detector's user
sees: the binarized maps' overlap, and the boxes formed from them against the reference's
boxes or against labels. Quantization, its training and the precision comparison use them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from edgedb.boxes import DEFAULT_BOXES, boxes_from_prob, image_boxes
from edgedb.errors import InvalidInputError
from edgedb.evaluation import EvalResult, evaluate_image


def binarized_overlap(prob: np.ndarray, reference: np.ndarray, threshold: float) -> tuple[int, int]:
    """(intersection, union) in pixels of the two maps binarized at ``threshold``."""
    above, reference_above = prob > threshold, reference > threshold
    return int(np.logical_and(above, reference_above).sum()), int(np.logical_or(above, reference_above).sum())


def box_agreement(maps: Sequence[np.ndarray], references: Sequence[np.ndarray], **box_options) -> float:
    """How well the boxes formed from ``maps`` reproduce those formed from ``references``
    (the FP32 maps of the same frames): the ICDAR 2015 hmean of the first against the
    second as ground truth, pooled over the frames; 1.0 when neither has a box.

    This, not the binarized map's IoU, is what a detector's user sees: a quantized map
    can lose IoU at every text border and keep every box, or keep most pixels and split,
    merge or invent boxes. ``box_options`` go to ``boxes_from_prob`` (default: the
    detector's).
    """
    if len(maps) != len(references):
        raise InvalidInputError(f"{len(maps)} maps against {len(references)} reference maps")
    options = {**DEFAULT_BOXES, **box_options}
    images = [evaluate_image(boxes_from_prob(prob, **options), boxes_from_prob(reference, **options))
              for prob, reference in zip(maps, references)]
    result = EvalResult.from_images(images)
    if not any(image.gt_care or image.det_care for image in images):
        return 1.0
    return result.hmean


def label_hmean(maps: Sequence[np.ndarray], prepared: Sequence, ground_truths: Sequence, **box_options) -> float:
    """The ICDAR 2015 hmean, pooled over the frames, of the boxes formed from ``maps``
    against labels: ``prepared`` gives each map's ``PreparedFrame`` (where the image sits
    in the frame, and its size), ``ground_truths`` each image's boxes in its own pixels
    (``GroundTruthBox`` objects or polygons), the detector's box formation
    (``box_options`` override it)."""
    if not len(maps) == len(prepared) == len(ground_truths):
        raise InvalidInputError(f"{len(maps)} maps, {len(prepared)} frames and {len(ground_truths)} label sets: "
                                "give one of each per image")
    options = {**DEFAULT_BOXES, **box_options}
    images = [evaluate_image(image_boxes(prob, frame, **options), truth)
              for prob, frame, truth in zip(maps, prepared, ground_truths)]
    return EvalResult.from_images(images).hmean
