"""Timing the whole detector the way trtexec times a network.

One *query* is one batch: its frames are prepared (resize, pad), inferred as one batch
and turned into boxes, each stage timed on one clock (``EdgeDetector.detect_timed``).
With ``infer_only`` a query is the backend call alone on frames prepared beforehand
(trtexec's view). Like trtexec, a run lasts at least ``duration_s`` seconds *and* at
least ``iterations`` queries after a warm-up of ``warm_up_ms`` milliseconds; queries that
started during the warm-up are dropped. With ``streams`` K > 1, K threads query at once,
each with its own detector (its own ONNX Runtime session, or its own execution contexts
and CUDA streams on TensorRT).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgedb.bench.stats import Summary, throughput
from edgedb.errors import EdgeDBError, InvalidInputError

log = logging.getLogger(__name__)

STAGES = ("preprocess", "infer", "h2d", "compute", "d2h", "boxes")


@dataclass(frozen=True)
class Query:
    """One timed query: seconds since the run's start, stage milliseconds, boxes found."""

    worker: int
    start: float
    end: float
    stages: dict
    boxes: int = 0

    @property
    def latency_ms(self) -> float:
        return (self.end - self.start) * 1e3


@dataclass
class BenchmarkResult:
    """A benchmark's queries (warm-up dropped) and how it was run."""

    label: str
    settings: dict
    system: dict
    queries: list = field(default_factory=list)
    interrupted: bool = False
    layers: Optional[list] = None  # per-layer profile, when asked for
    segments: list = field(default_factory=list)  # (start, end) of each timed stretch, seconds

    @property
    def batch(self) -> int:
        return int(self.settings.get("batch", 1))

    def latency(self) -> Summary:
        return Summary.of([q.latency_ms for q in self.queries])

    def stage_summaries(self) -> dict[str, Summary]:
        present = [s for s in STAGES if any(s in q.stages for q in self.queries)]
        return {s: Summary.of([q.stages[s] for q in self.queries if s in q.stages]) for s in present}

    def walltime_s(self) -> float:
        """Host walltime from the first kept query's start to the last one's end, summed
        over the stretches of a compare-mode run."""
        if not self.queries:
            return 0.0
        if self.segments:
            return sum(end - start for start, end in self.segments)
        return max(q.end for q in self.queries) - min(q.start for q in self.queries)

    def qps(self) -> float:
        if not self.queries:
            return 0.0
        return throughput(len(self.queries), 0.0, self.walltime_s())

    def stage_shares(self) -> dict[str, float]:
        """Each top-level stage's share of the summed query time (h2d/compute/d2h are
        parts of ``infer`` and are shared out of it)."""
        total = sum(q.latency_ms for q in self.queries)
        if not total:
            return {}
        shares = {}
        for stage in ("preprocess", "infer", "boxes", "h2d", "compute", "d2h"):
            values = [q.stages[stage] for q in self.queries if stage in q.stages]
            if values:
                shares[stage] = sum(values) / total
        return shares

    def to_dict(self) -> dict:
        latency = self.latency()
        return {
            "label": self.label,
            "settings": self.settings,
            "system": self.system,
            "interrupted": self.interrupted,
            "queries": len(self.queries),
            "throughput_qps": self.qps(),
            "throughput_images_per_s": self.qps() * self.batch,
            "walltime_s": self.walltime_s(),
            "latency_ms": latency.to_dict(),
            "stages_ms": {name: summary.to_dict() for name, summary in self.stage_summaries().items()},
            "stage_shares": self.stage_shares(),
            "mean_boxes": float(np.mean([q.boxes for q in self.queries])) if self.queries else 0.0,
            "layers": self.layers,
        }

    def times(self) -> list[dict]:
        """Every query as trtexec's ``--exportTimes`` lists them (milliseconds)."""
        return [{"worker": q.worker, "startMs": q.start * 1e3, "endMs": q.end * 1e3, "latencyMs": q.latency_ms,
                 **{f"{name}Ms": value for name, value in q.stages.items()}, "boxes": q.boxes}
                for q in self.queries]


def default_frames(count: int = 8, size: tuple[int, int] = (720, 1280)) -> list[np.ndarray]:
    """Generated scenes with text (``edgedb.synthetic``), so box formation has real work."""
    from edgedb.synthetic import make_text_image

    return [make_text_image(seed, size=size, document=seed % 4 == 3).image for seed in range(count)]


def load_frames(folder: Union[str, Path], limit: int = 64) -> list[np.ndarray]:
    """Decodes up to ``limit`` images of a folder (before any timing)."""
    from edgedb.preprocess import IMAGE_SUFFIXES, as_bgr_image

    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"no image folder {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise InvalidInputError(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [as_bgr_image(p) for p in paths]


def _frames(images: Union[str, Path, Sequence[np.ndarray], None]) -> list[np.ndarray]:
    if images is None:
        return default_frames()
    if isinstance(images, (str, Path)):
        return load_frames(images)
    frames = [np.asarray(image) for image in images]
    if not frames:
        raise InvalidInputError("images is empty")
    return frames


def check_streams_memory(frames: Sequence[np.ndarray], streams: int, batch: int, options: dict) -> None:
    """Refuses, before any detector is made, ``streams`` detectors whose queries at once
    (``batch`` of the largest frame each) would not fit the memory budget (edgedb.memory)."""
    from edgedb.memory import check_inference_memory
    from edgedb.preprocess import DEFAULT_LIMIT_SIDE_LEN, DEFAULT_LIMIT_TYPE, check_fixed_size, padded_to, resized_shape

    if options.get("input_size") is not None:
        height, width = check_fixed_size(options["input_size"], 1)
    else:  # as EdgeDetector prepares them, at the usual stride of 32
        limits = dict(limit_side_len=options.get("limit_side_len", DEFAULT_LIMIT_SIDE_LEN),
                      limit_type=options.get("limit_type", DEFAULT_LIMIT_TYPE),
                      max_side_len=options.get("max_side_len", 4096))
        shapes = [resized_shape(*frame.shape[:2], **limits) for frame in frames]
        height, width = max(((padded_to(h, 32), padded_to(w, 32)) for h, w in shapes), key=lambda s: s[0] * s[1])
    check_inference_memory(batch * height * width, f"{streams} streams of {batch}x{height}x{width} queries at once",
                           "use fewer streams, a smaller batch or smaller frames", detectors=streams)


# Streams per core at most, and 256 in all: each is a detector with its own threads and
# memory, and beyond a few per core they only queue (256 of them once took a 2-core machine
# past 4 GB). A few per core are still allowed: oversubscription is worth timing.
STREAMS_PER_CORE = 4
MAX_STREAMS = 256


def max_streams() -> int:
    """The most streams a benchmark takes on this machine."""
    return min(MAX_STREAMS, STREAMS_PER_CORE * (os.cpu_count() or 1))


def input_shape_range(shapes) -> dict:
    """The distinct (height, width) network inputs of a run: how many, smallest, largest."""
    distinct = sorted(set(map(tuple, shapes)), key=lambda shape: (shape[0] * shape[1], shape))
    return {"input_shapes": len(distinct), "smallest_input": list(distinct[0]), "largest_input": list(distinct[-1])}


def check_settings(*, batch: int, warm_up_ms: float, duration_s: float, iterations: int, streams: int) -> None:
    if batch < 1:
        raise InvalidInputError(f"batch must be at least 1, not {batch}")
    if streams < 1:
        raise InvalidInputError(f"streams must be at least 1, not {streams}")
    if streams > max_streams():
        raise InvalidInputError(f"streams={streams} on a machine with {os.cpu_count() or 1} cores: give at most "
                                f"{max_streams()} ({STREAMS_PER_CORE} per core, {MAX_STREAMS} in all)")
    if not (warm_up_ms >= 0 and math.isfinite(warm_up_ms)):  # an infinite warm-up never ends
        raise InvalidInputError(f"warm_up_ms must be a finite number of milliseconds >= 0, not {warm_up_ms}")
    if not duration_s > 0 and iterations < 1:
        raise InvalidInputError("a benchmark needs a positive duration or at least one iteration")
    if duration_s < 0 or not math.isfinite(duration_s):
        raise InvalidInputError(f"duration_s must be a finite number of seconds >= 0, not {duration_s}")
    if iterations < 0:
        raise InvalidInputError(f"iterations must be 0 or more, not {iterations}")


class _Worker:
    """One stream: a detector and its frames, making queries until told to stop."""

    def __init__(self, index: int, detector, frames: list, batch: int, infer_only: bool):
        self.index, self.detector, self.batch, self.infer_only = index, detector, batch, infer_only
        self.frames = frames
        self.position = 0
        if infer_only:  # frames prepared once, outside the timing, as the network sees them
            prepared = [detector._prepare(frame).frame for frame in frames]
            self.inputs = _batches(prepared, batch)

    def query(self, origin: float) -> Query:
        clock = time.perf_counter
        if self.infer_only:
            feed = self.inputs[self.position % len(self.inputs)]
            self.position += 1
            start = clock()
            self.detector._infer(feed)
            end = clock()
            stages = {"infer": (end - start) * 1e3}
            gpu = getattr(self.detector._backend, "last_times", None)
            if gpu is not None:
                stages.update(h2d=gpu.h2d_ms, compute=gpu.compute_ms, d2h=gpu.d2h_ms)
            return Query(self.index, start - origin, end - origin, stages)
        images = [self.frames[(self.position + i) % len(self.frames)] for i in range(self.batch)]
        self.position += self.batch
        start = clock()
        boxes, stages = self.detector.detect_timed(images)
        end = clock()
        return Query(self.index, start - origin, end - origin, stages, sum(len(b) for b in boxes))


def _batches(frames: list, batch: int) -> list[list]:
    return [[frames[(start + i) % len(frames)] for i in range(batch)] for start in range(0, len(frames), batch)]


def run_benchmark(
    model: Union[str, Path] = "ppocrv4-det",
    *,
    backend: str = "auto",
    input_size: Optional[tuple[int, int]] = None,
    batch: int = 1,
    warm_up_ms: float = 200.0,
    duration_s: float = 3.0,
    iterations: int = 10,
    streams: int = 1,
    images: Union[str, Path, Sequence[np.ndarray], None] = None,
    infer_only: bool = False,
    threads: Optional[int] = None,
    label: Optional[str] = None,
    progress: bool = True,
    detector_options: Optional[dict] = None,
    export_profile: bool = False,
    stop: Optional[threading.Event] = None,
    detectors: Optional[list] = None,
) -> BenchmarkResult:
    """Benchmarks ``EdgeDetector`` on ``model`` (see the module doc for what is timed).

    Args:
        model: zoo name, ONNX path or engine file (anything ``EdgeDetector`` takes).
        backend: ``"auto"``, ``"cpu"``, ``"openvino"`` or ``"tensorrt"``.
        input_size: letterbox every frame into (height, width); default: the detector's
            ``limit`` policy, so frames keep their images' aspect.
        batch: frames per query (trtexec's batch; ``--shapes NxHxW`` sets it with input_size).
        warm_up_ms, duration_s, iterations: trtexec's ``--warmUp``, ``--duration``,
            ``--iterations``: run at least ``duration_s`` and at least ``iterations`` queries
            after the warm-up; warm_up_ms and duration_s finite, >= 0.
        streams: concurrent workers, each with its own detector (trtexec's ``--infStreams``):
            at most ``STREAMS_PER_CORE`` per core and ``MAX_STREAMS`` in all.
        images: a folder of images or decoded BGR arrays; default generated text scenes.
        infer_only: time the backend call alone on prepared frames.
        threads: CPU threads per worker (default: the cores shared out among the streams).
        label: name in reports (default: the model).
        progress: show a progress bar.
        detector_options: more ``EdgeDetector`` arguments (precision, limit_side_len, ...).
        export_profile: after the timed run, profile the network's layers (a separate run,
            as trtexec's ``--separateProfileRun``: the profiler slows inference down).
        stop: an event that ends the run early (Ctrl-C sets it in the CLI).
        detectors: open detectors to use instead of making ``streams`` new ones (compare
            mode reuses them across rounds).

    Raises:
        InvalidInputError: bad settings, a missing or empty image folder.
        ModelError, MissingDependencyError: as ``EdgeDetector`` raises them.
    """
    from edgedb.bench.system import system_info
    from edgedb.detector import EdgeDetector

    check_settings(batch=batch, warm_up_ms=warm_up_ms, duration_s=duration_s, iterations=iterations, streams=streams)
    frames = _frames(images)
    options = dict(detector_options or {})
    if input_size is not None:
        options["input_size"] = input_size
    if batch > 1 and input_size is None and not options.get("input_size"):
        raise InvalidInputError("batches need frames of one size: give input_size (--input-size HxW or --shapes NxHxW)")
    owned = detectors is None
    if owned:
        check_streams_memory(frames, streams, batch, options)
        per_worker = threads or max(1, (os.cpu_count() or 1) // streams)
        detectors = [EdgeDetector(model, backend, threads=per_worker, max_batch=max(batch, 1), **options)
                     for _ in range(streams)]
    settings = {
        "model": str(model), "backend": detectors[0].backend_name, "batch": batch, "input_size": input_size,
        "warm_up_ms": warm_up_ms, "duration_s": duration_s, "iterations": iterations, "streams": len(detectors),
        "infer_only": infer_only, "frames": len(frames), "threads": threads,
        "frame_shape": list(detectors[0]._prepare(frames[0]).frame.shape),
        **input_shape_range(detectors[0]._prepare(frame).frame.shape[:2] for frame in frames),
        **{k: v for k, v in options.items() if isinstance(v, (int, float, str, bool, type(None), tuple))},
    }
    result = BenchmarkResult(label or Path(str(model)).name, settings, system_info())
    try:
        workers = [_Worker(i, d, frames, batch, infer_only) for i, d in enumerate(detectors)]
        result.queries, result.interrupted = _drive(workers, warm_up_ms / 1e3, duration_s, iterations, progress,
                                                    stop or threading.Event(), result.label)
        if result.queries:
            result.segments = [(result.queries[0].start, max(q.end for q in result.queries))]
        if export_profile:
            result.layers = profile_layers(detectors[0], frames[:batch] if batch > 1 else frames[:1])
    finally:
        if owned:
            for detector in detectors:
                detector.close()
    return result


def _drive(workers: list, warm_up_s: float, duration_s: float, iterations: int, progress: bool,
           stop: threading.Event, label: str) -> tuple[list, bool]:
    """Runs the workers (threads when more than one) until both limits are met."""
    from tqdm import tqdm

    origin = time.perf_counter()
    warm_end = warm_up_s
    kept: list[Query] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    bar = tqdm(total=None, desc=f"bench {label}", unit="query", disable=not progress, leave=False)

    def done() -> bool:
        elapsed = time.perf_counter() - origin
        return stop.is_set() or (elapsed >= warm_end + duration_s and len(kept) >= iterations)

    def loop(worker: _Worker) -> None:
        try:
            while not done():
                query = worker.query(origin)
                if query.start >= warm_end:
                    with lock:
                        kept.append(query)
                        bar.update(1)
        except BaseException as error:  # surfaced in the caller's thread
            errors.append(error)
            stop.set()

    threads: list[threading.Thread] = []
    try:
        if len(workers) == 1:
            loop(workers[0])
        else:
            threads = [threading.Thread(target=loop, args=(w,), name=f"edgedb-bench-{w.index}") for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)  # short joins let Ctrl-C reach this thread
    except KeyboardInterrupt:
        stop.set()
        for thread in threads:
            thread.join()  # each finishes its query in flight
    finally:
        bar.close()
    failures = [e for e in errors if not isinstance(e, KeyboardInterrupt)]
    if failures:
        raise failures[0]
    kept.sort(key=lambda q: q.start)
    return kept, stop.is_set()  # only Ctrl-C, the caller or a failure sets it


def run_comparison(
    models: Sequence[Union[str, Path]],
    *,
    rounds: int = 3,
    backend: str = "auto",
    duration_s: float = 3.0,
    iterations: int = 10,
    streams: int = 1,
    threads: Optional[int] = None,
    detector_options: Optional[dict] = None,
    progress: bool = True,
    stop: Optional[threading.Event] = None,
    **settings,
) -> list[BenchmarkResult]:
    """Benchmarks several models (or one model on several backends, as ``"model@backend"``)
    in one process, in ``rounds`` interleaved rounds: each round gives every contender
    ``duration_s / rounds`` seconds, so drifts of the machine (heat, other load) touch all
    alike. Returns one merged result per contender, in order; ratios go against the first.
    """
    from edgedb.detector import EdgeDetector

    if rounds < 1:
        raise InvalidInputError(f"rounds must be at least 1, not {rounds}")
    if not models:
        raise InvalidInputError("compare mode needs at least one model")
    stop = stop or threading.Event()
    options = dict(detector_options or {})
    if settings.get("input_size") is not None:
        options["input_size"] = settings["input_size"]
    check_settings(batch=settings.get("batch", 1), warm_up_ms=settings.get("warm_up_ms", 200.0),
                   duration_s=duration_s, iterations=iterations, streams=streams)
    settings["images"] = _frames(settings.get("images"))  # decoded once, for every round
    check_streams_memory(settings["images"], streams, settings.get("batch", 1), options)
    contenders = []
    try:
        for spec in models:
            model, _, chosen = str(spec).partition("@")
            per_worker = threads or max(1, (os.cpu_count() or 1) // streams)
            detectors = [EdgeDetector(model, chosen or backend, threads=per_worker,
                                      max_batch=max(settings.get("batch", 1), 1), **options) for _ in range(streams)]
            label = Path(model).name + (f"@{chosen}" if chosen else "")
            contenders.append((label, model, detectors))
        merged: dict[str, BenchmarkResult] = {}
        offsets = {label: 0.0 for label, _, _ in contenders}
        for _ in range(rounds):
            for label, model, detectors in contenders:
                part = run_benchmark(model, detectors=detectors, duration_s=duration_s / rounds,
                                     iterations=-(-iterations // rounds), streams=streams, threads=threads,
                                     label=label, progress=progress, stop=stop, detector_options=detector_options,
                                     **settings)
                target = merged.setdefault(label, BenchmarkResult(label, part.settings, part.system))
                shift = offsets[label] - (part.segments[0][0] if part.segments else 0.0)
                target.queries += [Query(q.worker, q.start + shift, q.end + shift, q.stages, q.boxes) for q in part.queries]
                target.segments += [(a + shift, b + shift) for a, b in part.segments]
                offsets[label] += part.walltime_s()
                target.interrupted = target.interrupted or part.interrupted
                if stop.is_set():
                    break
            if stop.is_set():
                break
        for result in merged.values():
            result.settings = {**result.settings, "duration_s": duration_s, "iterations": iterations, "rounds": rounds}
        return [merged[label] for label, _, _ in contenders if label in merged]
    finally:
        for _, _, detectors in contenders:
            for detector in detectors:
                detector.close()


def profile_layers(detector, frames: list, runs: int = 10, top: int = 15) -> list[dict]:
    """Per-layer times of the detector's network over ``runs`` inferences, the slowest
    first: ONNX Runtime's profiler on the CPU, TensorRT's IProfiler on a GPU."""
    prepared = [detector._prepare(frame).frame for frame in frames]
    feed = {detector.spec.input_name: prepared[0][None] if len(prepared) == 1 else np.stack(prepared)}
    profile = getattr(detector._backend, "profile_layers", None)
    if profile is None:
        raise EdgeDBError(f"the {detector.backend_name} backend cannot profile layers")
    totals: dict[str, list[float]] = profile(feed, runs)
    rows = [{"layer": name, "total_ms": sum(times), "mean_ms": sum(times) / len(times), "calls": len(times)}
            for name, times in totals.items()]
    rows.sort(key=lambda row: -row["total_ms"])
    everything = sum(row["total_ms"] for row in rows) or 1.0
    for row in rows:
        row["share"] = row["total_ms"] / everything
    return rows[:top]


def bare_loop(detector, frames: list, count: int) -> list[float]:
    """Milliseconds of ``count`` plain ``detector.detect`` calls: the yardstick of the
    benchmark's own overhead."""
    times = []
    for index in range(count):
        start = time.perf_counter()
        detector.detect(frames[index % len(frames)])
        times.append((time.perf_counter() - start) * 1e3)
    return times

