"""What a precision costs: each model's detections and probability maps against FP32's.

Per model: ICDAR 2015 precision/recall/hmean (when ground truth is given), the max and
mean absolute error of the probability map against the reference's, the IoU of the two
maps binarized at the detector's threshold, and the time per image on this machine.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from edgedb.errors import InvalidInputError
from edgedb.precision.agreement import binarized_overlap


@dataclass
class PrecisionReport:
    name: str
    images: int
    precision: Optional[float]
    recall: Optional[float]
    hmean: Optional[float]
    max_abs_error: float
    mean_abs_error: float
    binary_iou: float
    seconds_per_image: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _MapFigures:
    """One model's probability maps against the reference's, summed image by image."""

    max_abs_error: float = 0.0
    mean_errors: list[float] = field(default_factory=list)  # one per image
    intersection: int = 0
    union: int = 0

    def add(self, prob: np.ndarray, reference: np.ndarray, threshold: float) -> None:
        error = np.abs(prob - reference)
        self.max_abs_error = max(self.max_abs_error, float(error.max()))
        self.mean_errors.append(error.mean())
        intersection, union = binarized_overlap(prob, reference, threshold)
        self.intersection += intersection
        self.union += union

    @property
    def mean_abs_error(self) -> float:
        return float(np.mean(self.mean_errors))

    @property
    def binary_iou(self) -> float:
        return self.intersection / self.union if self.union else 1.0


def compare_precisions(
    models: Mapping[str, Union[str, Path, "onnx.ModelProto"]],  # noqa: F821
    samples: Sequence[tuple[str, Union[str, Path, np.ndarray], Optional[list]]],
    *,
    reference: Optional[str] = None,
    progress: bool = True,
    backends: Optional[Mapping[str, str]] = None,
    **detector_options,
) -> list[PrecisionReport]:
    """Runs every model over ``samples`` (name, image, ground truth or None) and reports
    each against ``reference`` (default: the first model).

    ``detector_options`` go to each ``EdgeDetector`` (input size, box formation), so all
    models see the same frames and the same box settings; ``backends`` maps a model's name
    to the backend it runs on (default: ``detector_options``' backend, else "auto"), so
    one model can be checked on OpenVINO against itself on ONNX Runtime. All models are open at once
    and run image by image; memory does not grow with the number of images.
    """
    import onnx
    from tqdm import tqdm

    from edgedb.boxes import DEFAULT_BOXES, boxes_from_prob
    from edgedb.detector import EdgeDetector
    from edgedb.evaluation import EvalResult, evaluate_image
    from edgedb.preprocess import as_bgr_image

    if not models:
        raise InvalidInputError("compare_precisions needs at least one model")
    if not samples:
        raise InvalidInputError("compare_precisions needs at least one image")
    reference = reference or next(iter(models))
    if reference not in models:
        raise InvalidInputError(f"reference {reference!r} is not one of the models {list(models)}")
    box_options = {k: detector_options.get(k, v) for k, v in DEFAULT_BOXES.items()}
    threshold = box_options["thresh"]
    order = [reference, *(name for name in models if name != reference)]  # the reference map comes first
    figures = {name: _MapFigures() for name in models}
    results: dict[str, list] = {name: [] for name in models}
    seconds = dict.fromkeys(models, 0.0)
    with tempfile.TemporaryDirectory(prefix="edgedb-compare-") as scratch, ExitStack() as stack:
        detectors = {}
        for index, name in enumerate(order):
            model = models[name]
            if isinstance(model, onnx.ModelProto):
                path = Path(scratch) / f"{index}.onnx"
                onnx.save(model, str(path))
                model = path
            options = dict(detector_options)
            if backends and name in backends:
                options["backend"] = backends[name]
            detectors[name] = stack.enter_context(EdgeDetector(model, **options))
        # Image by image, every model, the reference first: each map is compared with the
        # reference's as soon as both exist and only figures are kept (issue 11: keeping
        # every map of every model grew with the number of images).
        for number, (image_name, image, truth) in enumerate(tqdm(samples, desc="compare", unit="image",
                                                                 disable=not progress)):
            image = as_bgr_image(image)
            reference_map = None
            for name in order:
                detector = detectors[name]
                if number == 0:
                    detector.probability_map(image)  # warm-up
                start = time.perf_counter()
                prob = detector.probability_map(image)
                boxes = boxes_from_prob(prob, dest_size=image.shape[:2], **box_options)
                seconds[name] += time.perf_counter() - start
                if reference_map is None:
                    reference_map = prob
                figures[name].add(prob, reference_map, threshold)
                if truth is not None:
                    results[name].append(evaluate_image(boxes, truth, image_name))
    reports = []
    for name in models:
        result = EvalResult.from_images(results[name]) if results[name] else None
        reports.append(PrecisionReport(
            name=name, images=len(samples),
            precision=result.precision if result else None, recall=result.recall if result else None,
            hmean=result.hmean if result else None,
            max_abs_error=figures[name].max_abs_error, mean_abs_error=figures[name].mean_abs_error,
            binary_iou=figures[name].binary_iou, seconds_per_image=seconds[name] / len(samples),
        ))
    return reports


def format_reports(reports: Sequence[PrecisionReport]) -> str:
    """The reports as a text table, hmean change in points against the first."""
    lines = [f"{'model':<32}{'P':>8}{'R':>8}{'H':>8}{'dH pts':>8}{'max err':>9}{'mean err':>10}{'bin IoU':>9}{'ms/img':>8}"]
    base = reports[0]

    def figure(value, width, digits):
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for r in reports:
        change = None if r.hmean is None or base.hmean is None else 100 * (r.hmean - base.hmean)
        lines.append(f"{r.name[:31]:<32}{figure(r.precision, 8, 4)}{figure(r.recall, 8, 4)}{figure(r.hmean, 8, 4)}"
                     f"{figure(change, 8, 2)}{r.max_abs_error:>9.4f}{r.mean_abs_error:>10.5f}{r.binary_iou:>9.4f}"
                     f"{1e3 * r.seconds_per_image:>8.1f}")
    return "\n".join(lines)
