"""EdgeDetector: text boxes from images with one object.

It loads a DBNet export (a zoo name or an ONNX path), rewrites it once for deployment
(uint8 frames in, preprocessing fused, only the probability map out), runs it on a
backend, and forms boxes with the C++ core, mapped back to original image pixels.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from edgedb._checks import thread_count
from edgedb.backends import create_backend, resolve_backend_name
from edgedb.boxes import DEFAULT_BOXES, TextBox, boxes_from_prob, image_boxes  # noqa: F401  (re-exported)
from edgedb.errors import EdgeDBError, InvalidInputError, InvalidInputTypeError, ModelError
from edgedb.models import DEFAULT_MODEL, is_engine_file, load_deployable, resolve_model  # noqa: F401  (re-exported)
from edgedb.preprocess import (  # noqa: F401  (the limits re-exported)
    DEFAULT_LIMIT_SIDE_LEN,
    DEFAULT_LIMIT_TYPE,
    PreparedFrame,
    as_bgr_image,
    check_fixed_size,
    check_limits,
    policy_scale,
    prepare_frame,
)
from edgedb.spec import ModelSpec
from edgedb.tiling import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, Tile, check_tiling, merge_tile_boxes, tile_grid

log = logging.getLogger(__name__)

ImageLike = Union[np.ndarray, str, Path]


class _SourceError:
    """What a frame source raised, carried as an item to where the frames before it are
    finished: raised straight out of the ``for`` it lost the frame still forming."""

    def __init__(self, error: Exception):
        self.error = error


def _until_error(images: Iterable) -> Iterator:
    """The items of ``images``, then, if iterating them raised, a _SourceError."""
    try:
        yield from images
    except Exception as error:
        yield _SourceError(error)


def _finished(value):
    """A future already holding ``value``, queued with the ones still forming."""
    from concurrent.futures import Future

    future = Future()
    future.set_result(value)
    return future


def _check_count(name: str, value, *, minimum: int, optional: bool = False) -> None:
    """Refuses a count or index that is not an integer >= ``minimum`` (bool included)."""
    if value is None and optional:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidInputTypeError(f"{name} must be an integer{' or None' if optional else ''}, "
                                    f"not {type(value).__name__}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}")


class EdgeDetector:
    """DBNet text detection: ``detect(image) -> list[TextBox]`` in original image pixels.

    Args:
        model: a zoo name (default ``"ppocrv4-det"``), a path to a DBNet ONNX export
            (rewritten by ``edgedb rewrite`` or not: a plain export is rewritten once), or
            a TensorRT engine built by ``edgedb build`` (``.engine``, ``.plan``, ``.trt``).
        backend: ``"auto"`` (TensorRT where tensorrt, pycuda and a GPU are present, else
            ONNX Runtime), ``"cpu"``/``"onnxruntime"``, ``"openvino"`` (the openvino extra)
            or ``"tensorrt"``. On TensorRT an ONNX model is built into an engine once and
            cached (``$EDGEDB_CACHE/engines``); the CPU backends run the ONNX model itself.
        spec: how to feed the model, for exports without edgedb metadata; a guess from the
            graph and the zoo's normalization otherwise.
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"best"`` (INT8 convolutions, FP16
            between them): the precision the ONNX model is converted to (default: its own).
            ONNX Runtime runs the same graph TensorRT builds (to check its accuracy; for
            CPU speed use ``edgedb quantize --target cpu``). ``"bf16"``: on ``backend="openvino"``
            only, the FP32 graph run in bfloat16, on CPUs with AVX-512 BF16 or AMX (where
            it is 1.7x faster than float32 on PP-OCRv4, bench/RESULTS.md).
        calib: calibration images (a folder or a list file) for int8 and best.
        image_sizes: TensorRT in ``limit`` mode: the (height, width) of the images the
            engine must take, the most common first (its profile's opt; see
            ``edgedb.engine.profiles``). Default: common camera and photo sizes.
        max_batch: TensorRT: the largest batch ``detect_batch`` runs at once.
        device: TensorRT: the CUDA device index.
        limit_side_len, limit_type: input size in ``limit`` mode: the longer side at most
            (``"max"``) or the shorter side at least (``"min"``) ``limit_side_len``, rounded
            to multiples of 32.
        input_size: ``(height, width)``, multiples of 32: letterbox every image into this
            fixed size instead (what a static TensorRT profile wants).
        max_side_len: cap on the longer input side, for huge images (but see ``tile``).
            ``limit_side_len``, ``max_side_len`` and ``input_size`` sides are at most
            ``edgedb.preprocess.MAX_INPUT_SIDE`` (16384), and a network input at most
            ``MAX_INPUT_PIXELS`` (8192 x 8192): larger values raise InvalidInputError.
        threads: CPU threads for the backend, 1 .. this machine's cores (default: all cores).
        tile: ``"auto"`` (the default): an image that ``max_side_len`` alone would scale
            down runs instead at the scale the policy wants (at most 1), cut into overlapping tiles of
            ``tile_size`` network pixels (on TensorRT, no larger than the engine's profile
            takes) sharing at least ``tile_overlap``, run in batches of ``tile_batch``
            (at most the engine's ``max_batch``), their boxes merged (``edgedb.tiling``): small text survives an 8K
            frame. ``"on"`` (or True) tiles every image larger than one tile; ``"off"`` (or
            False) never tiles. ``detect``, ``detect_batch`` and ``stream`` tile;
            ``probability_map`` does not. Limit mode only (not with ``input_size``).
        thresh, box_thresh, unclip_ratio, max_candidates, min_size, score_mode, box_type,
        use_dilation: box formation, as in :func:`edgedb.boxes_from_prob`.

    Use it as a context manager, or call ``close()``, to free the backend.
    """

    def __init__(
        self,
        model: Union[str, Path] = DEFAULT_MODEL,
        backend: str = "auto",
        *,
        spec: Optional[ModelSpec] = None,
        precision: Optional[str] = None,
        calib: Optional[Union[str, Path]] = None,
        image_sizes: Optional[Sequence[tuple[int, int]]] = None,
        max_batch: int = 1,
        device: int = 0,
        limit_side_len: int = DEFAULT_LIMIT_SIDE_LEN,
        limit_type: str = DEFAULT_LIMIT_TYPE,
        input_size: Optional[tuple[int, int]] = None,
        max_side_len: int = 4096,
        threads: Optional[int] = None,
        tile: Union[str, bool] = "auto",
        tile_size: int = DEFAULT_TILE_SIZE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        tile_batch: int = 4,
        thresh: float = DEFAULT_BOXES["thresh"],
        box_thresh: float = DEFAULT_BOXES["box_thresh"],
        unclip_ratio: float = DEFAULT_BOXES["unclip_ratio"],
        max_candidates: int = DEFAULT_BOXES["max_candidates"],
        min_size: float = DEFAULT_BOXES["min_size"],
        score_mode: str = DEFAULT_BOXES["score_mode"],
        box_type: str = DEFAULT_BOXES["box_type"],
        use_dilation: bool = DEFAULT_BOXES["use_dilation"],
    ):
        self._box_options = dict(
            thresh=thresh, box_thresh=box_thresh, unclip_ratio=unclip_ratio, max_candidates=max_candidates,
            min_size=min_size, score_mode=score_mode, box_type=box_type, use_dilation=use_dilation,
        )
        boxes_from_prob(np.zeros((1, 1), np.float32), **self._box_options)  # checks the options now
        self.limit_side_len, self.limit_type, self.max_side_len = check_limits(limit_side_len, limit_type, max_side_len)
        _check_count("threads", threads, minimum=1, optional=True)
        thread_count("threads", threads)  # before the model loads
        _check_count("max_batch", max_batch, minimum=1)
        _check_count("device", device, minimum=0)
        check_fixed_size(input_size, 1)  # bounds before the model loads; the stride is checked below
        self.tile, self.tile_size, self.tile_overlap = check_tiling(tile, tile_size, tile_overlap)
        _check_count("tile_batch", tile_batch, minimum=1)
        self.tile_batch = tile_batch
        if self.tile == "on" and input_size is not None:
            raise InvalidInputError("tile='on' runs in limit mode: leave input_size out, or tile='off'")
        self._backend = None
        if is_engine_file(model):
            self._open_engine(model, backend, spec, precision, input_size, device)
        else:
            self.model_proto, self.spec = load_deployable(model, spec)
            self.input_size = check_fixed_size(input_size, self.spec.stride)
            concrete = resolve_backend_name(backend)
            if precision == "bf16" and concrete != "openvino":
                raise InvalidInputError(f"precision 'bf16' runs on backend 'openvino' (its bfloat16 inference on CPUs "
                                        f"with AVX-512 BF16 or AMX), not {concrete!r}")
            if concrete == "tensorrt":
                from edgedb.engine import cached_build, choose_profile

                profile = choose_profile(
                    input_size=self.input_size, image_sizes=image_sizes, limit_side_len=limit_side_len,
                    limit_type=limit_type, max_side_len=max_side_len, max_batch=max_batch, stride=self.spec.stride)
                engine = cached_build(model, self.model_proto, profile, precision=precision, calib=calib,
                                      limit_side_len=limit_side_len, limit_type=limit_type,
                                      input_size=self.input_size, device=device)
                self._backend = create_backend("tensorrt", engine, device=device)
            else:
                from edgedb.engine.precision import precision_model

                options = {"threads": threads}
                if precision == "bf16":  # the FP32 graph, run by OpenVINO in bfloat16
                    options["inference_precision"], precision = "bf16", "fp32"
                runnable = precision_model(self.model_proto, precision, calib=calib, limit_side_len=limit_side_len,
                                           limit_type=limit_type, input_size=self.input_size)
                self._backend = create_backend(concrete, runnable, **options)
        self.backend_name = self._backend.name
        if self.spec.input_name not in self._backend.input_names or "prob" not in self._backend.output_names:
            raise ModelError(f"the rewritten model lacks input {self.spec.input_name!r} or output 'prob'")

    def _open_engine(self, path, backend, spec, precision, input_size, device) -> None:
        """An engine carries its spec, precision and profile in its sidecar."""
        from edgedb.engine.sidecar import read_sidecar

        if backend not in ("auto", "tensorrt"):
            raise InvalidInputError(f"{path} is a TensorRT engine, which runs on backend 'tensorrt' (or 'auto'), "
                                    f"not {backend!r}; give the ONNX model to run on ONNX Runtime")
        sidecar = read_sidecar(path)
        if spec is not None and spec != sidecar.spec:
            raise InvalidInputError("an engine carries its own spec; build a new engine to change it")
        if precision is not None and precision != sidecar.precision:
            raise InvalidInputError(f"{path} is a {sidecar.precision} engine, not {precision}; "
                                    f"build one with edgedb build --precision {precision}")
        self.model_proto, self.spec = None, sidecar.spec
        profile = sidecar.profiles[0]
        if profile.static:  # a static engine takes one frame size: letterbox into it
            if input_size is not None and tuple(input_size) != profile.min[1:]:
                raise InvalidInputError(f"{path} was built for input size {profile.min[1]}x{profile.min[2]}, not "
                                        f"{input_size[0]}x{input_size[1]}; leave input_size out or rebuild")
            input_size = profile.min[1:]
        self.input_size = check_fixed_size(input_size, self.spec.stride)
        self._backend = create_backend("tensorrt", path, device=device)

    # -- public API -------------------------------------------------------------------

    def detect(self, image: ImageLike) -> list[TextBox]:
        """Text boxes of one image (BGR uint8 (H, W, 3), gray, BGRA, or a file path)."""
        bgr = as_bgr_image(image)
        if self._tiled(bgr.shape):
            return self._detect_tiled(bgr)
        prepared = self._prepare(bgr)
        return self._form(self._infer([prepared.frame])[0], prepared)

    def probability_map(self, image: ImageLike) -> np.ndarray:
        """The probability map P of one image: float32, over the part of the network input
        the image covers (multiples of 32 in ``limit`` mode)."""
        prepared = self._prepare(image)
        ch, cw = prepared.content
        return self._infer([prepared.frame])[0][:ch, :cw]

    def detect_batch(self, images: Sequence[ImageLike]) -> list[list[TextBox]]:
        """Text boxes of several images; frames of equal input size run as one batch."""
        if isinstance(images, (np.ndarray, str, Path)):
            raise InvalidInputError("detect_batch takes a sequence of images; use detect() for one")
        bgrs = [as_bgr_image(image) for image in images]
        tiled = [self._tiled(bgr.shape) for bgr in bgrs]
        prepared = [None if tile else self._prepare(bgr) for bgr, tile in zip(bgrs, tiled)]
        results: list[Optional[list[TextBox]]] = [None] * len(prepared)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(prepared):
            if item is None:
                results[index] = self._detect_tiled(bgrs[index])
            else:
                groups.setdefault(item.frame.shape, []).append(index)
        limit = getattr(self._backend, "max_batch", None) or len(prepared)  # an engine's profile caps batches
        for group in groups.values():
            for start in range(0, len(group), limit):
                indices = group[start:start + limit]
                maps = self._infer([prepared[i].frame for i in indices])
                for i, prob in zip(indices, maps):
                    results[i] = self._form(prob, prepared[i])
        return results  # type: ignore[return-value]

    def detect_timed(self, images: Sequence[np.ndarray]) -> tuple[list[list[TextBox]], dict[str, float]]:
        """``detect_batch`` of frames that share one input size, with each stage timed.

        For benchmarks (``edgedb.bench``): the same work as ``detect_batch``, as one
        batch, returning the boxes and the milliseconds of ``preprocess`` (resize and
        pad), ``infer`` (the backend call, copies included) and ``boxes`` (box
        formation), read from one clock so they add up to the whole. On TensorRT,
        ``h2d``, ``compute`` and ``d2h`` (CUDA events, inside ``infer``) are added.
        """
        clock = time.perf_counter
        start = clock()
        prepared = [self._prepare(image) for image in images]
        if len({item.frame.shape for item in prepared}) != 1:
            raise InvalidInputError("detect_timed takes images that share one input size (use input_size=...)")
        prepared_at = clock()
        maps = self._infer([item.frame for item in prepared])
        inferred_at = clock()
        boxes = [self._form(prob, item) for prob, item in zip(maps, prepared)]
        end = clock()
        times = {"preprocess": (prepared_at - start) * 1e3, "infer": (inferred_at - prepared_at) * 1e3,
                 "boxes": (end - inferred_at) * 1e3}
        gpu = getattr(self._backend, "last_times", None)
        if gpu is not None:
            times.update(h2d=gpu.h2d_ms, compute=gpu.compute_ms, d2h=gpu.d2h_ms)
        return boxes, times

    def stream(self, images: Iterable[ImageLike]) -> Iterator[list[TextBox]]:
        """Detects a stream of frames, yielding their boxes in order. Box formation of
        one frame (C++, GIL released) overlaps inference of the next; on TensorRT the
        copies of the next frame also overlap the compute of the current one. A frame
        that cannot be read or run, or an error raised by ``images`` itself, ends the
        stream with that error, after the boxes of every frame before it."""
        if getattr(self._backend, "pipelined", False):
            yield from self._stream_pipelined(images)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgedb-boxes") as pool:
            pending = None
            for image in _until_error(images):
                try:
                    if isinstance(image, _SourceError):
                        raise image.error
                    bgr = as_bgr_image(image)
                    if self._tiled(bgr.shape):  # many tiles: already batched, formed here
                        future = _finished(self._detect_tiled(bgr))
                    else:
                        prepared = self._prepare(bgr)
                        prob = self._infer([prepared.frame])[0]
                        future = pool.submit(self._form, prob, prepared)
                except Exception:
                    if pending is not None:  # the frames before a bad one keep their boxes
                        yield pending.result()
                    raise
                if pending is not None:
                    yield pending.result()
                pending = future
            if pending is not None:
                yield pending.result()

    def stream_frames(self, frames: Iterable) -> Iterator[tuple]:
        """``stream()`` over the frames of a source (``edgedb.sources.VideoSource``, or
        anything yielding objects with an ``image``), yielding ``(frame, boxes)`` in order,
        with the same pipelining::

            with EdgeDetector() as detector, open_source("/dev/video0") as frames:
                for frame, boxes in detector.stream_frames(frames):
                    print(frame.index, frame.timestamp, len(boxes))

        The stream reads at most one frame ahead of the boxes it yields (two on
        TensorRT), so a live source's newest-frame policy still holds."""
        from collections import deque

        taken: deque = deque()

        def images() -> Iterator:
            for frame in frames:
                taken.append(frame)
                yield frame.image

        for boxes in self.stream(images()):
            yield taken.popleft(), boxes

    def _stream_pipelined(self, images: Iterable[ImageLike]) -> Iterator[list[TextBox]]:
        # Frame i+1 is enqueued (copy in, compute, copy out on the backend's streams) before
        # the host waits for frame i; boxes of frame i then form while i+1 computes.
        from collections import deque

        in_flight: deque = deque()
        forming: deque = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgedb-boxes") as pool:
            for image in _until_error(images):
                if self._backend.closed:
                    raise EdgeDBError("this EdgeDetector is closed")
                try:
                    if isinstance(image, _SourceError):
                        raise image.error
                    bgr = as_bgr_image(image)
                    if self._tiled(bgr.shape):  # the frames before it first, in order
                        while in_flight:
                            pending, earlier = in_flight.popleft()
                            forming.append(pool.submit(self._form, self._prob_of(pending.result(), 1)[0], earlier))
                        forming.append(_finished(self._detect_tiled(bgr)))
                        continue
                    prepared = self._prepare(bgr)
                    submitted = self._backend.submit({self.spec.input_name: prepared.frame[None]})
                except Exception:
                    # The frames before a bad one keep their boxes; the error comes after them.
                    while in_flight:
                        pending, earlier = in_flight.popleft()
                        forming.append(pool.submit(self._form, self._prob_of(pending.result(), 1)[0], earlier))
                    while forming:
                        yield forming.popleft().result()
                    raise
                in_flight.append((submitted, prepared))
                if len(in_flight) > 1:
                    pending, earlier = in_flight.popleft()
                    forming.append(pool.submit(self._form, self._prob_of(pending.result(), 1)[0], earlier))
                if len(forming) > 1:
                    yield forming.popleft().result()
            while in_flight:
                pending, earlier = in_flight.popleft()
                forming.append(pool.submit(self._form, self._prob_of(pending.result(), 1)[0], earlier))
            while forming:
                yield forming.popleft().result()

    def close(self) -> None:
        """Frees the backend; safe to call more than once."""
        backend = getattr(self, "_backend", None)
        if backend is not None:
            backend.close()

    def __enter__(self) -> "EdgeDetector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = f"input_size={self.input_size}" if self.input_size else f"limit={self.limit_type}:{self.limit_side_len}"
        return f"EdgeDetector(backend={self.backend_name!r}, {mode}, spec={self.spec})"

    # -- steps ------------------------------------------------------------------------

    def _prepare(self, image: ImageLike) -> PreparedFrame:
        return prepare_frame(as_bgr_image(image), input_size=self.input_size, limit_side_len=self.limit_side_len,
                             limit_type=self.limit_type, stride=self.spec.stride, max_side_len=self.max_side_len)

    def _tiled(self, shape: tuple[int, ...]) -> bool:
        """Whether an image of ``shape`` runs in tiles (see ``tile`` in the class doc)."""
        if self.tile == "off" or self.input_size is not None:
            return False
        height, width = shape[:2]
        scaled = max(height, width) * self._tile_scale(height, width)
        if self.tile == "on":
            return scaled > self.tile_size
        return scaled > self.max_side_len  # "auto": only where max_side_len would scale it down

    def _tile_scale(self, height: int, width: int) -> float:
        """Tiles run at the policy's scale, but never enlarged: a long thin strip would
        otherwise be scaled up into thousands of tiles."""
        return min(1.0, policy_scale(height, width, self.limit_side_len, self.limit_type))

    def _tiles(self, height: int, width: int) -> tuple[list[Tile], float, tuple[int, int]]:
        """The tiles of an image, the scale they run at, and their frame (height, width):
        ``tile_size`` square, or smaller where an engine's profile takes no larger frame."""
        scale = self._tile_scale(height, width)
        stride = self.spec.stride
        side = -(-self.tile_size // stride) * stride
        largest = getattr(self._backend, "max_frame", None) or (side, side)
        frame = tuple(max(stride, min(side, limit // stride * stride)) for limit in largest)
        tile = tuple(max(1, int(length / scale)) for length in frame)
        overlap = min(min(tile) // 2 - 1, math.ceil(self.tile_overlap / scale))
        return tile_grid(height, width, tile, overlap), scale, frame

    def _detect_tiled(self, bgr: np.ndarray) -> list[TextBox]:
        """Tiles at the policy's scale, in batches; boxes mapped back and merged."""
        import cv2

        height, width = bgr.shape[:2]
        tiles, scale, (frame_height, frame_width) = self._tiles(height, width)
        limit = min(self.tile_batch, getattr(self._backend, "max_batch", None) or self.tile_batch)
        found: list[list[TextBox]] = []
        for start in range(0, len(tiles), limit):
            batch = tiles[start:start + limit]
            prepared = []
            for tile in batch:
                crop = bgr[tile.y0:tile.y1, tile.x0:tile.x1]
                th, tw = crop.shape[:2]
                ch, cw = min(frame_height, max(1, round(th * scale))), min(frame_width, max(1, round(tw * scale)))
                frame = np.zeros((frame_height, frame_width, 3), np.uint8)
                frame[:ch, :cw] = crop if (ch, cw) == (th, tw) else cv2.resize(crop, (cw, ch),
                                                                                interpolation=cv2.INTER_LINEAR)
                prepared.append(PreparedFrame(frame, (ch, cw), (th, tw)))
            for tile, item, prob in zip(batch, prepared, self._infer([p.frame for p in prepared])):
                offset = np.array([tile.x0, tile.y0], np.float32)
                found.append([TextBox(box.points + offset, box.score) for box in self._form(prob, item)])
        return merge_tile_boxes(tiles, found, (height, width), self._box_options["box_type"])

    def _infer(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self._backend.closed:
            raise EdgeDBError("this EdgeDetector is closed")
        batch = frames[0][None] if len(frames) == 1 else np.stack(frames)
        return self._prob_of(self._backend.infer({self.spec.input_name: batch}), len(frames))

    @staticmethod
    def _prob_of(outputs: dict, count: int) -> list[np.ndarray]:
        prob = outputs["prob"]
        if prob.ndim != 4 or prob.shape[1] != 1 or prob.shape[0] != count:
            raise ModelError(f"the model's output has shape {prob.shape}, not (N, 1, H, W): not a DBNet probability map")
        return [prob[i, 0] for i in range(count)]

    def _form(self, prob: np.ndarray, prepared: PreparedFrame) -> list[TextBox]:
        return image_boxes(prob, prepared, **self._box_options)
