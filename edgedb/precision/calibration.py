"""Calibration: activation statistics of a model over a set of real images.

Images are prepared exactly as at run time (the detector's resize and padding, uint8
frames into the fused-preprocessing graph), the FP32 model runs with the input of every
convolution exposed, and each such tensor gets its min, max and a histogram of |x|. One
pass serves every calibration method: the statistics are cached (``calibration/cache/``
by default), keyed by the model, the images and the preparation, so quantizing again
with another method, exclusions or target costs no new pass over the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from edgedb.errors import InvalidInputError, ModelError
from edgedb.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 2048
STATS_FORMAT = 4  # bumped when what is collected changes
DEFAULT_CACHE = Path(__file__).resolve().parents[2] / "calibration" / "cache"


def calibration_images(source: Union[str, Path, Sequence[Union[str, Path]]]) -> list[Path]:
    """The images of a calibration set: a folder (its image files, sorted), a list file
    (one path per line, relative to the file; # comments), or a sequence of paths.

    Raises:
        InvalidInputError: missing folder or file, or no images in it.
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
    else:
        source = Path(source)
        if source.is_dir():
            paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif source.is_file():
            lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
            paths = [(source.parent / line) for line in lines if line and not line.startswith("#")]
        else:
            raise InvalidInputError(f"calibration set {source} does not exist (give a folder of images or a list file)")
    if not paths:
        raise InvalidInputError(f"calibration set {source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InvalidInputError(f"calibration images not found: {missing[:5]}")
    return paths


def activation_names(model) -> list[str]:
    """Float activations a quantizer may need ranges for: the input of every convolution
    and the output of every node after the fused preprocessing."""
    initializers = {init.name for init in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.name.startswith("edgedb_preprocess/") and node.op_type != "Transpose":
            continue
        candidates = list(node.output)
        if node.op_type in ("Conv", "ConvTranspose"):
            candidates.insert(0, node.input[0])
        for name in candidates:
            if name and name not in initializers and name not in names:
                names.append(name)
    return names


@dataclass
class TensorStats:
    """Range and |x| histogram of one activation over the calibration set."""

    minimum: float
    maximum: float
    histogram: np.ndarray  # counts of |x| in HISTOGRAM_BINS equal bins over [0, edge]
    edge: float

    def absmax(self) -> float:
        return max(abs(self.minimum), abs(self.maximum))

    def add(self, values: np.ndarray) -> None:
        low, high = float(values.min()), float(values.max())
        self.minimum, self.maximum = min(self.minimum, low), max(self.maximum, high)
        magnitude = np.abs(values).ravel()
        top = float(magnitude.max())
        if top > self.edge:  # widen the range: old counts move into the wider bins
            new_edge = top * 1.25 if self.edge > 0 else top
            centres = (np.arange(HISTOGRAM_BINS) + 0.5) * (self.edge / HISTOGRAM_BINS)
            moved = np.minimum((centres / new_edge * HISTOGRAM_BINS).astype(np.int64), HISTOGRAM_BINS - 1)
            histogram = np.zeros(HISTOGRAM_BINS, np.int64)
            np.add.at(histogram, moved, self.histogram)
            self.histogram, self.edge = histogram, new_edge
        if self.edge > 0:
            counts, _ = np.histogram(magnitude, bins=HISTOGRAM_BINS, range=(0.0, self.edge))
            self.histogram += counts

    @classmethod
    def empty(cls) -> "TensorStats":
        return cls(np.inf, -np.inf, np.zeros(HISTOGRAM_BINS, np.int64), 0.0)


class CalibrationStats(dict):
    """tensor name -> TensorStats, with the key that identifies how they were made."""

    key: str = ""

    def save(self, path: Path) -> None:
        arrays = {}
        for i, (name, s) in enumerate(self.items()):
            arrays[f"h{i}"] = s.histogram
        meta = {"key": self.key, "tensors": [[n, s.minimum, s.maximum, s.edge] for n, s in self.items()]}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, meta=json.dumps(meta), **arrays)

    @classmethod
    def load(cls, path: Path) -> "CalibrationStats":
        data = np.load(path, allow_pickle=False)
        meta = json.loads(str(data["meta"]))
        stats = cls()
        stats.key = meta["key"]
        for i, (name, low, high, edge) in enumerate(meta["tensors"]):
            stats[name] = TensorStats(low, high, data[f"h{i}"].astype(np.int64), edge)
        return stats


def _with_outputs(model, names: Sequence[str]):
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in existing:
            augmented.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return augmented


def prepared_frames(images: Iterable[Path], *, limit_side_len: int, limit_type: str,
                    input_size: Optional[tuple[int, int]] = None):
    """Yields the uint8 frames the detector would feed for each image."""
    from edgedb.preprocess import as_bgr_image, prepare_fixed, prepare_limit

    for path in images:
        try:
            image = as_bgr_image(path)
        except InvalidInputError as error:
            raise InvalidInputError(f"calibration image {path} cannot be read: {error}") from None
        prepared = prepare_fixed(image, input_size) if input_size else prepare_limit(image, limit_side_len, limit_type)
        yield prepared.frame[None]


def collect_stats(model, images: Sequence[Path], *, limit_side_len: int = 736, limit_type: str = "min",
                  input_size: Optional[tuple[int, int]] = None, cache_dir: Optional[Path] = DEFAULT_CACHE,
                  progress: bool = True) -> CalibrationStats:
    """Statistics of every convolution input of ``model`` (a deployable ModelProto with
    fused preprocessing) over ``images``; from the cache when the same pass was made."""
    import onnxruntime as ort
    from tqdm import tqdm

    from edgedb.backends.onnxrt import session_options
    from edgedb.spec import spec_from_metadata

    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("calibration needs a model rewritten by edgedb (uint8 frames in); run `edgedb rewrite` first")
    digest = hashlib.sha256(model.SerializeToString())
    for path in images:
        digest.update(f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}".encode())
    digest.update(f"{limit_side_len}|{limit_type}|{input_size}|{HISTOGRAM_BINS}|{STATS_FORMAT}".encode())
    key = digest.hexdigest()[:24]
    cached = cache_dir / f"stats-{key}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        log.info("calibration statistics from cache %s", cached)
        return CalibrationStats.load(cached)

    from edgedb.precision.cpu_graph import decompose_activations

    observed = decompose_activations(model)  # its tensors cover both INT8 targets
    names = activation_names(observed)
    session = ort.InferenceSession(_with_outputs(observed, names).SerializeToString(), session_options(),
                                   providers=["CPUExecutionProvider"])
    stats = CalibrationStats({name: TensorStats.empty() for name in names})
    stats.key = key
    frames = prepared_frames(images, limit_side_len=limit_side_len, limit_type=limit_type, input_size=input_size)
    for frame in tqdm(frames, total=len(images), desc="calibrate", unit="image", disable=not progress):
        # Every activation of a frame comes back at once (about 1 GB at 736 x 1312). Each
        # is dropped once counted, so none is alive when the next frame runs: keeping the
        # previous frame's list until the next run returned doubled the peak (issue 11:
        # 2.5 GB for 3 images, 3.4 GB for 10; 1.4 GB for either now).
        outputs = session.run(names, {spec.input_name: frame})
        outputs.reverse()
        for name in names:
            stats[name].add(outputs.pop())
    if cached is not None:
        try:
            stats.save(cached)
        except OSError as error:
            log.warning("cannot cache calibration statistics in %s: %s", cached.parent, error)
    return stats
