"""edgedb on a real NVIDIA GPU: engines built by TensorRT, run against ONNX Runtime.

``test_tensorrt_fake.py`` proves the bookkeeping around the GPU calls on stand-in modules;
these tests prove what the GPU computes. Every test is marked ``gpu`` and skipped without
tensorrt, pycuda and a CUDA device (``scripts/gpu_check.sh`` runs them and reports).
Engines are built once per module into a temporary folder, from the default model.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from boxmatch import match
from edgedb import EdgeDetector, EngineError, InvalidInputError
from edgedb.backends.tensorrt import InferenceTimes, tensorrt_available
from edgedb.engine import build_from_model, read_sidecar, sidecar_path
from edgedb.synthetic import make_text_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not tensorrt_available(),
                       reason="needs an NVIDIA GPU with TensorRT and pycuda (pip install -e '.[tensorrt]')"),
]

# Static engines: every frame letterboxed into 736x736, one at a time (what `edgedb build
# --input-size 736x736` makes); the detector reads the size from the sidecar.
STATIC = dict(input_size=(736, 736))
# Dynamic engines: limit mode (longer side at most 960) for the test images' sizes, whose
# frames are 736x960, 640x480 and 544x960: a profile dynamic in both sides, batches of up to
# MAX_BATCH.
LIMIT = dict(limit_type="max", limit_side_len=960)
IMAGE_SIZES = [(720, 960), (640, 480), (720, 1280)]
MAX_BATCH = 2

# (IoU, least share of boxes matched at it), pooled over the images, against ONNX Runtime
# FP32; the share is matched / the larger count, a lower bound of the hmean.
# fp32: TensorRT runs FP32 convolutions in TF32 on Ampere and newer by default (10-bit
#   mantissa), which can move a steep map edge across the 0.3 threshold by a pixel: most
#   boxes stay within IoU 0.99, nearly all within 0.5.
# fp16: float16 activations move edges by up to ~0.2 in probability (tests/test_fp16.py
#   measured this on the CPU): boxes keep IoU 0.9, a borderline box may appear or vanish.
# int8, best: calibrated on four images only, so loosely: most boxes found at IoU 0.5.
# (ONNX Runtime running the same graphs on these images matched, at IoU 0.99 / 0.9 / 0.5:
# fp16 97% / 99% / 100%, int8 17% / 78% / 100%.)
TOLERANCE = {
    "fp32": ((0.99, 0.90), (0.5, 0.98)),
    "fp16": ((0.9, 0.85), (0.5, 0.95)),
    "int8": ((0.5, 0.80),),
    "best": ((0.5, 0.80),),
}


def agreement(expected, got, min_iou):
    """Boxes matched one to one at ``min_iou`` over the larger count, pooled over images."""
    assert len(expected) == len(got)
    matched = total = 0
    for a, b in zip(expected, got):
        matched += len(match([box.points for box in a], [box.points for box in b], min_iou))
        total += max(len(a), len(b))
    return matched / max(total, 1)


def assert_same(expected, got):
    # The same engine on the same frames. Another batch size or execution context may run
    # other kernels, so a last-bit difference may move a box edge; it must not lose a box.
    assert agreement(expected, got, 0.95) >= 0.98


def detect_all(model, images, **options):
    with EdgeDetector(model, **options) as detector:
        return [detector.detect(image) for image in images]


@pytest.fixture(scope="module")
def images():
    return [
        make_text_image(0, size=(720, 960)).image,
        make_text_image(1, size=(640, 480)).image,
        make_text_image(2, size=(720, 1280), perspective=False).image,
        make_text_image(3, size=(720, 960), document=True).image,
    ]


@pytest.fixture(scope="module")
def reference(images):
    """ONNX Runtime FP32 boxes, keyed by dynamic (limit mode) or not (static)."""
    boxes = {False: detect_all("ppocrv4-det", images, backend="onnxruntime", **STATIC),
             True: detect_all("ppocrv4-det", images, backend="onnxruntime", **LIMIT)}
    assert all(boxes[False]) and all(boxes[True]), "the reference finds no text: nothing to compare"
    return boxes


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for seed in range(4):
        cv2.imwrite(str(folder / f"scene-{seed}.png"), make_text_image(100 + seed, size=(720, 960)).image)
    return folder


@pytest.fixture(scope="module")
def engine(tmp_path_factory, calib):
    """engine(precision, dynamic=False) -> the engine's path, built on first use. All share
    one folder, so the timing cache beside them speeds up the later builds."""
    folder, built = tmp_path_factory.mktemp("engines"), {}

    def get(precision, dynamic=False):
        if (precision, dynamic) not in built:
            path = folder / f"ppocrv4-det-{precision}-{'dynamic' if dynamic else 'static'}.engine"
            shapes = dict(LIMIT, image_sizes=IMAGE_SIZES) if dynamic else STATIC
            build_from_model("ppocrv4-det", path, precision=precision, max_batch=MAX_BATCH if dynamic else 1,
                             calib=calib if precision in ("int8", "best") else None, progress=False, **shapes)
            built[precision, dynamic] = path
        return built[precision, dynamic]

    return get


@pytest.mark.parametrize("precision, dynamic", [
    ("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True), ("int8", False), ("best", False)])
def test_engine_agrees_with_onnxruntime(engine, images, reference, precision, dynamic):
    path = engine(precision, dynamic)
    sidecar = read_sidecar(path)
    assert sidecar.precision == precision and sidecar.profiles[0].static != dynamic
    got = detect_all(path, images, **(LIMIT if dynamic else {}))
    for min_iou, share in TOLERANCE[precision]:
        assert agreement(reference[dynamic], got, min_iou) >= share, (precision, dynamic, min_iou)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_probability_maps_agree_with_onnxruntime(engine, images, precision):
    """The maps binarized at 0.3 (what box formation reads): IoU >= 0.99 against ONNX
    Runtime FP32 on the same letterboxed frames (ONNX Runtime's own FP16 graph gives
    0.999 on held-out ICDAR images, bench/RESULTS.md)."""
    with EdgeDetector("ppocrv4-det", backend="onnxruntime", **STATIC) as cpu, \
            EdgeDetector(engine(precision)) as gpu:
        for image in images:
            a, b = cpu.probability_map(image) > 0.3, gpu.probability_map(image) > 0.3
            assert a.shape == b.shape and a.any()
            assert (a & b).sum() / (a | b).sum() >= 0.99, precision


def test_frames_outside_the_profile_are_refused(engine):
    with EdgeDetector(engine("fp32", dynamic=True), **LIMIT) as detector:
        with pytest.raises(InvalidInputError, match="outside the engine's profile"):
            detector.detect(make_text_image(0, size=(200, 1280)).image)  # a 160x960 frame


def test_outputs_survive_the_next_call(engine, images):
    with EdgeDetector(engine("fp32")) as detector:
        first = detector.probability_map(images[0])
        kept = first.copy()
        for image in images[1:]:
            detector.probability_map(image)
        np.testing.assert_array_equal(first, kept)

        # Three frames submitted: the third reuses the first one's slot (two in flight).
        backend, name = detector._backend, detector.spec.input_name
        frames = [detector._prepare(image).frame[None] for image in images[:3]]
        pending = [backend.submit({name: frame}) for frame in frames]
        results = [p.result()["prob"] for p in pending]
        for frame, result in zip(frames, results):
            np.testing.assert_allclose(result, backend.infer({name: frame})["prob"], atol=1e-5)
        assert not np.shares_memory(results[0], results[2])


def test_detect_batch_runs_batches_up_to_max_batch(engine, images):
    # Three 720x960 images (one frame size: a batch of 2, then 1) among two of other sizes.
    mixed = [*images, make_text_image(4, size=(720, 960)).image]
    with EdgeDetector(engine("fp32", dynamic=True), **LIMIT) as detector:
        assert detector._backend.max_batch == MAX_BATCH
        single = [detector.detect(image) for image in mixed]
        assert_same(single, detector.detect_batch(mixed))


def test_stream_gives_the_boxes_of_detect(engine, images):
    with EdgeDetector(engine("fp16")) as detector:
        single = [detector.detect(image) for image in images]
        streamed = list(detector.stream(images * 2))  # twice: the pipeline reuses its slots
        assert_same(single, streamed[:len(images)])
        assert_same(single, streamed[len(images):])


def test_threads_give_the_serial_results(engine, images):
    path = engine("fp32")

    def own_detector(_):
        with EdgeDetector(path) as detector:
            return [detector.detect(image) for image in images]

    with EdgeDetector(path) as shared:
        serial = [shared.detect(image) for image in images]
        with ThreadPoolExecutor(2) as pool:
            together = list(pool.map(lambda _: [shared.detect(image) for image in images], range(2)))
    with ThreadPoolExecutor(2) as pool:
        apart = list(pool.map(own_detector, range(2)))
    for result in (*together, *apart):
        assert_same(serial, result)


def test_damaged_engines_are_refused(engine, tmp_path):
    source = engine("fp32")
    path = tmp_path / source.name
    shutil.copy(source, path)
    shutil.copy(sidecar_path(source), sidecar_path(path))
    data = path.read_bytes()

    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EngineError, match="truncated"):
        EdgeDetector(path)
    path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])  # same size, one byte changed
    with pytest.raises(EngineError, match="sha256"):
        EdgeDetector(path)

    path.write_bytes(data)
    record = json.loads(sidecar_path(path).read_text())
    record["device"]["gpu_name"] += " (another)"
    sidecar_path(path).write_text(json.dumps(record))
    with pytest.raises(EngineError, match="rebuild it here"):
        EdgeDetector(path)
    sidecar_path(path).unlink()
    with pytest.raises(EngineError, match="no sidecar"):
        EdgeDetector(path)


def test_inference_times_are_measured(engine, images):
    with EdgeDetector(engine("fp32")) as detector:
        detector.detect(images[0])
        backend = detector._backend
        times = backend.last_times
        assert isinstance(times, InferenceTimes) and times.compute_ms > 0
        if backend.zero_copy:  # Jetson: mapped host memory, no copies
            assert times.h2d_ms == times.d2h_ms == 0
        else:
            assert times.h2d_ms > 0 and times.d2h_ms > 0
        _, stages = detector.detect_timed(images[:1])
        assert stages["compute"] > 0 and stages["infer"] >= stages["compute"]
