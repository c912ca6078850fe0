"""Calibration: activation statistics of a model over a set of real images.

Images are prepared exactly as at run time (the detector's resize and padding, uint8
frames into the fused-preprocessing graph), the FP32 model runs with the input of every
convolution exposed, and each such tensor gets its min, max and a histogram of |x|.
Exposed tensors stay alive until the run returns (1 GB at 736 x 1312 for PP-OCRv4), so
they are exposed in groups of at most ``ACTIVATION_BUDGET`` bytes, one run per group.
One pass serves every calibration method: the statistics are cached, by default in
``calibration/`` in edgedb's cache folder ($EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb or
~/.cache/edgedb), keyed by the model, the images and the preparation, so quantizing again
with another method, exclusions or target costs no new pass over the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from edgedb._files import atomic_output
from edgedb.errors import InvalidInputError, ModelError
from edgedb.preprocess import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 2048
STATS_FORMAT = 4  # bumped when what is collected changes
# Bytes of activations one run may expose. Issue 11, PP-OCRv4 on ICDAR 2015 (736 x 1312,
# one thread): all 1006 MB at once peaked at 1.28 GB; two runs of about 500 MB peak at
# 0.88 GB over 100 images, at the same speed (3.6 s an image: the histograms take 2.7 s,
# the run 0.7 s, and two runs that each return half as much take 0.9 s).
ACTIVATION_BUDGET = 512 * 2**20


class _DefaultCache:
    """The default statistics cache, resolved at each use: ``calibration/`` in edgedb's
    cache folder ($EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb or ~/.cache/edgedb), so the
    same rule holds wherever edgedb runs from (it once wrote into the checkout)."""

    def __repr__(self) -> str:
        return "<edgedb cache folder>/calibration"


DEFAULT_CACHE = _DefaultCache()


def stats_cache_dir(cache_dir=DEFAULT_CACHE) -> Optional[Path]:
    """The folder ``cache_dir`` names: DEFAULT_CACHE's rule, a path, or None (no cache)."""
    if isinstance(cache_dir, _DefaultCache):
        from edgedb.models import cache_dir as edgedb_cache

        return edgedb_cache() / "calibration"
    return Path(cache_dir) if cache_dir else None


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
        with atomic_output(path) as temporary:  # its suffix is .npz, so numpy adds none
            np.savez_compressed(temporary, meta=json.dumps(meta), **arrays)

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


def activation_bytes(model, names: Sequence[str], input_name: str, frame_shape: tuple[int, ...]) -> list[int]:
    """Bytes of each named activation when ``model`` runs on a frame of ``frame_shape``,
    from ONNX shape inference (no run). A tensor whose shape is not inferred counts as
    large as the largest one that is, so the groups stay within the budget."""
    import onnx

    sized = onnx.ModelProto()
    sized.CopyFrom(model)
    for graph_input in sized.graph.input:
        if graph_input.name == input_name:
            for dim, value in zip(graph_input.type.tensor_type.shape.dim, frame_shape):
                dim.Clear()
                dim.dim_value = int(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(sized).graph
    except Exception as error:  # onnx raises its own types for graphs it cannot type
        log.warning("no shape inference for the calibration model (%s): all activations in one run", error)
        inferred = sized.graph
    known: dict[str, int] = {}
    for info in list(inferred.value_info) + list(inferred.output):
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if tensor.HasField("shape") and all(d > 0 for d in dims):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize if tensor.elem_type else 4
            known[info.name] = int(np.prod(dims, dtype=np.int64)) * itemsize
    largest = max(known.values(), default=1)
    return [known.get(name, largest) for name in names]


def split_by_size(names: Sequence[str], sizes: Sequence[int], count: int) -> list[list[str]]:
    """``names`` cut into ``count`` consecutive groups (fewer if there are fewer names) of
    about the same total size."""
    total = sum(sizes)
    count = max(1, min(len(names), count))
    groups: list[list[str]] = [[]]
    done = 0
    for name, size in zip(names, sizes):
        if groups[-1] and len(groups) < count and done + size > total * len(groups) / count:
            groups.append([])
        groups[-1].append(name)
        done += size
    return groups


# Fusions that fold a following constant Mul/Add/BatchNorm into a convolution's weights:
# they round differently, and apply only where the convolution's output is not exposed,
# so with them a tensor's statistics would depend on the group it ran in. With every
# activation exposed (one run) they never apply; without them, any grouping gives the
# statistics of one run, to the bit (tests/test_memory.py; PP-OCRv4: 1 to 12 groups).
# ORT_DISABLE_ALL would be as safe but 40 % slower, and it changes the statistics.
_FOLDING_FUSIONS = ("ConvMulFusion", "ConvAddFusion", "ConvBNFusion")


class _ExposedActivations:
    """Runs a model with its activations exposed a group at a time: one ONNX Runtime
    session per group (within one session, every graph output stays alive until the run
    returns, requested or not). A frame gets as many groups as its activations need at
    ``budget`` bytes a run; frames needing the same number share the groups and sessions
    (cut where the first such frame's sizes balance them), so sizes that vary from image
    to image make no new sessions."""

    def __init__(self, model, names: Sequence[str], input_name: str, threads: Optional[int], budget: int):
        self._model, self._names, self._input_name = model, list(names), input_name
        self._threads, self._budget = threads, budget
        self._counts: dict[tuple[int, ...], int] = {}  # frame shape -> number of groups
        self._groups: dict[int, list[list[str]]] = {}  # number of groups -> the groups
        self._sessions: dict[tuple[str, ...], object] = {}

    def groups(self, frame_shape: tuple[int, ...]) -> list[list[str]]:
        if frame_shape not in self._counts:
            sizes = activation_bytes(self._model, self._names, self._input_name, frame_shape)
            count = max(1, -(-sum(sizes) // self._budget))
            self._counts[frame_shape] = count
            if count not in self._groups:
                self._groups[count] = split_by_size(self._names, sizes, count)
            log.info("calibration at %s: %.0f MB of activations in %d runs", frame_shape[1:3], sum(sizes) / 2**20,
                     len(self._groups[count]))
        return self._groups[self._counts[frame_shape]]

    def _session(self, group: list[str]):
        import onnxruntime as ort

        from edgedb.sessions import session_options

        key = tuple(group)
        if key not in self._sessions:
            self._sessions[key] = ort.InferenceSession(_with_outputs(self._model, group).SerializeToString(),
                                                       session_options(self._threads),
                                                       providers=["CPUExecutionProvider"],
                                                       disabled_optimizers=list(_FOLDING_FUSIONS))
        return self._sessions[key]

    def __call__(self, frame: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(name, value) of every activation for ``frame``, in graph order. Each value is
        the caller's alone: once dropped, its memory is free before the next run."""
        for group in self.groups(frame.shape):
            outputs = self._session(group).run(group, {self._input_name: frame})
            outputs.reverse()
            for name in group:
                yield name, outputs.pop()


def prepared_images(images: Iterable[Path], *, limit_side_len: int, limit_type: str,
                    input_size: Optional[tuple[int, int]] = None):
    """Yields the ``PreparedFrame`` the detector would make of each image (the frame, and
    where the image sits in it)."""
    from edgedb.preprocess import as_bgr_image, prepare_frame

    for path in images:
        try:
            image = as_bgr_image(path)
        except InvalidInputError as error:
            raise InvalidInputError(f"calibration image {path} cannot be read: {error}") from None
        yield prepare_frame(image, input_size=input_size, limit_side_len=limit_side_len, limit_type=limit_type)


def prepared_frames(images: Iterable[Path], *, limit_side_len: int, limit_type: str,
                    input_size: Optional[tuple[int, int]] = None):
    """Yields the uint8 frames (1, H, W, 3) the detector would feed for each image."""
    for prepared in prepared_images(images, limit_side_len=limit_side_len, limit_type=limit_type,
                                    input_size=input_size):
        yield prepared.frame[None]


def collect_stats(model, images: Sequence[Path], *, limit_side_len: int = 736, limit_type: str = "min",
                  input_size: Optional[tuple[int, int]] = None, cache_dir: Optional[Path] = DEFAULT_CACHE,
                  progress: bool = True, threads: Optional[int] = None,
                  activation_budget: int = ACTIVATION_BUDGET) -> CalibrationStats:
    """Statistics of every convolution input of ``model`` (a deployable ModelProto with
    fused preprocessing) over ``images``; from the cache when the same pass was made.

    ``input_size``: a fixed (height, width), multiples of the model's stride (default: the
    limit mode). ``cache_dir``: where statistics are kept (default ``DEFAULT_CACHE``:
    ``calibration/`` in edgedb's cache folder ($EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb
    or ~/.cache/edgedb); None for no cache). ``threads``: ONNX Runtime threads (default: all cores).
    ``activation_budget``: bytes of activations one run may expose (more runs per image,
    less memory); the statistics do not depend on it.
    """
    from tqdm import tqdm

    from edgedb.preprocess import check_fixed_size
    from edgedb.spec import spec_from_metadata

    spec = spec_from_metadata(model)
    if spec is None or not spec.fused_preprocessing:
        raise ModelError("calibration needs a model rewritten by edgedb (uint8 frames in); run `edgedb rewrite` first")
    input_size = check_fixed_size(input_size, spec.stride)  # 33x33 once failed deep in ONNX Runtime
    digest = hashlib.sha256(model.SerializeToString())
    for path in images:
        digest.update(f"{path.resolve()}|{path.stat().st_size}|{path.stat().st_mtime_ns}".encode())
    digest.update(f"{limit_side_len}|{limit_type}|{input_size}|{HISTOGRAM_BINS}|{STATS_FORMAT}".encode())
    key = digest.hexdigest()[:24]
    cache_dir = stats_cache_dir(cache_dir)
    cached = cache_dir / f"stats-{key}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        log.info("calibration statistics from cache %s", cached)
        return CalibrationStats.load(cached)

    from edgedb.precision.cpu_graph import decompose_activations

    observed = decompose_activations(model)  # its tensors cover both INT8 targets
    names = activation_names(observed)
    activations = _ExposedActivations(observed, names, spec.input_name, threads, activation_budget)
    stats = CalibrationStats({name: TensorStats.empty() for name in names})
    stats.key = key
    frames = prepared_frames(images, limit_side_len=limit_side_len, limit_type=limit_type, input_size=input_size)
    for frame in tqdm(frames, total=len(images), desc="calibrate", unit="image", disable=not progress):
        # Each activation is dropped once counted, so none is alive at the next run:
        # keeping a run's outputs until the next one returned doubled the peak (issue 11).
        for name, values in activations(frame):
            stats[name].add(values)
            del values
    if cached is not None:
        try:
            stats.save(cached)
        except OSError as error:
            log.warning("cannot cache calibration statistics in %s: %s", cached.parent, error)
    return stats
