"""What a precision costs: each model's detections and probability maps against FP32's.

Per model: ICDAR 2015 precision/recall/hmean (when ground truth is given), the max and
mean absolute error of the probability map against the reference's, the IoU of the two
maps binarized at the detector's threshold, and the time per image on this machine.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from edgedb.errors import InvalidInputError


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


def compare_precisions(
    models: Mapping[str, Union[str, Path, "onnx.ModelProto"]],  # noqa: F821
    samples: Sequence[tuple[str, Union[str, Path, np.ndarray], Optional[list]]],
    *,
    reference: Optional[str] = None,
    progress: bool = True,
    **detector_options,
) -> list[PrecisionReport]:
    """Runs every model over ``samples`` (name, image, ground truth or None) and reports
    each against ``reference`` (default: the first model).

    ``detector_options`` go to each ``EdgeDetector`` (input size, box formation), so all
    models see the same frames and the same box settings.
    """
    import onnx
    from tqdm import tqdm

    from edgedb.boxes import boxes_from_prob
    from edgedb.detector import DEFAULT_BOXES, EdgeDetector
    from edgedb.evaluation import EvalResult, evaluate_image
    from edgedb.preprocess import as_bgr_image

    if not models:
        raise InvalidInputError("compare_precisions needs at least one model")
    if not samples:
        raise InvalidInputError("compare_precisions needs at least one image")
    reference = reference or next(iter(models))
    box_options = {k: detector_options.get(k, v) for k, v in DEFAULT_BOXES.items()}
    images = [(name, as_bgr_image(image), truth) for name, image, truth in samples]
    maps: dict[str, list[np.ndarray]] = {}
    timings: dict[str, float] = {}
    evaluations: dict[str, Optional[EvalResult]] = {}
    with tempfile.TemporaryDirectory(prefix="edgedb-compare-") as scratch:
        for name, model in models.items():
            if isinstance(model, onnx.ModelProto):
                path = Path(scratch) / f"{len(maps)}.onnx"
                onnx.save(model, str(path))
                model = path
            results, model_maps, seconds = [], [], 0.0
            with EdgeDetector(model, **detector_options) as detector:
                detector.probability_map(images[0][1])  # warm-up
                for image_name, image, truth in tqdm(images, desc=name, unit="image", disable=not progress):
                    start = time.perf_counter()
                    prob = detector.probability_map(image)
                    boxes = boxes_from_prob(prob, dest_size=image.shape[:2], **box_options)
                    seconds += time.perf_counter() - start
                    model_maps.append(prob)
                    if truth is not None:
                        results.append(evaluate_image(boxes, truth, image_name))
            maps[name], timings[name] = model_maps, seconds / len(images)
            evaluations[name] = EvalResult.from_images(results) if results else None
    threshold = box_options["thresh"]
    reports = []
    for name in models:
        errors = [np.abs(a - b) for a, b in zip(maps[name], maps[reference])]
        inter = sum(np.logical_and(a > threshold, b > threshold).sum() for a, b in zip(maps[name], maps[reference]))
        union = sum(np.logical_or(a > threshold, b > threshold).sum() for a, b in zip(maps[name], maps[reference]))
        result = evaluations[name]
        reports.append(PrecisionReport(
            name=name, images=len(images),
            precision=result.precision if result else None, recall=result.recall if result else None,
            hmean=result.hmean if result else None,
            max_abs_error=float(max(e.max() for e in errors)),
            mean_abs_error=float(np.mean([e.mean() for e in errors])),
            binary_iou=float(inter / union) if union else 1.0,
            seconds_per_image=timings[name],
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
