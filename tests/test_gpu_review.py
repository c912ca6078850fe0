"""The findings of the TensorRT/pycuda review (issue 20), each on the stricter stand-in
(``fake_tensorrt``), which behaves like the real bindings where these bugs lived. Each
test failed before its fix."""

from __future__ import annotations

import gc
import logging
import sys
import weakref

import numpy as np
import pytest

from edgedb import EdgeDetector, EdgeDBError, InvalidInputError
from edgedb.cli import main
from edgedb.synthetic import make_text_image
from fake_tensorrt import COMPUTE_MS, LINK_BYTES_PER_MS, TIMING_MAGIC
from fake_tensorrt import install as install_fakes

SMALL = dict(limit_type="max", limit_side_len=640, image_sizes=[(360, 640)], threads=2)
FRAME = (1, 384, 640, 3)


def install(monkeypatch, **options):
    """The stand-ins, as a GPU of its own: the engines these tests cache on demand are not
    the ones ``test_tensorrt_fake`` expects to build."""
    return install_fakes(monkeypatch, gpu_name="Fake GPU (review)", **options)


@pytest.fixture(scope="module")
def images():
    return [make_text_image(seed, size=(360, 640)).image for seed in range(3)]


@pytest.fixture
def engine(monkeypatch, tmp_path):
    """A static 384x640 engine built on the stand-in."""
    trt, cuda = install(monkeypatch)
    path = tmp_path / "det.engine"
    assert main(["build", "ppocrv4-det", "-o", str(path), "--input-size", "384x640"]) == 0
    return path, trt, cuda


def _gpu_objects(backend) -> list:
    """Weak references to every CUDA and TensorRT object a backend holds."""
    objects = [backend._engine, backend._runtime, backend._scratch, *backend._streams.values()]
    for slot in backend._slots:
        objects += [slot.context, *slot.events.values()]
        for name in ("image", "prob"):
            if name in slot.buffers:
                buffer = slot.buffers[name]
                objects += [buffer.host.base] + ([buffer._device] if buffer._device is not None else [])
    return [weakref.ref(o) for o in objects]


# 1 ------------------------------------------------------------------------------------------
def test_h2d_time_is_the_copy_not_the_host_write(monkeypatch, images):
    install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        detector.detect(images[0])
        times = detector._backend.last_times
    # On the stand-in's clock, writing 737 kB into pinned memory takes 0.74 ms of host time,
    # the copy 0.074 ms of device time: an event recorded before the write timed both.
    assert times.h2d_ms == pytest.approx(np.prod(FRAME) / LINK_BYTES_PER_MS)
    assert times.compute_ms == pytest.approx(COMPUTE_MS)
    assert times.d2h_ms == pytest.approx(384 * 640 * 4 / LINK_BYTES_PER_MS)


# 2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["detect", "detect_batch", "abandoned stream", "error mid-stream",
                                  "error mid-batch"])
def test_nothing_of_a_detector_survives_close(monkeypatch, images, path):
    trt, cuda = install(monkeypatch)
    detector = EdgeDetector(backend="tensorrt", max_batch=1, **SMALL)
    kept = []  # what a caller still holds after close(): a generator, an exception
    gc.disable()  # no cycle may be needed to free anything
    try:
        if path == "detect":
            detector.detect(images[0])
        elif path == "detect_batch":
            detector.detect_batch(images)
        elif path == "abandoned stream":
            frames = detector.stream(images * 2)
            next(frames)
            kept.append(frames)  # two frames still in flight
        elif path == "error mid-stream":
            frames = detector.stream([images[0], images[1], np.zeros((4, 4, 5), np.uint8)])
            next(frames)
            with pytest.raises(InvalidInputError) as error:
                list(frames)
            kept += [frames, error.value]
        else:
            calls = []

            def fail_second(context):
                calls.append(1)
                if len(calls) == 2:
                    raise RuntimeError("enqueue failed")

            trt.on_execute = fail_second
            with pytest.raises(RuntimeError, match="enqueue failed") as error:
                detector.detect_batch(images)
            kept.append(error.value)
        refs = _gpu_objects(detector._backend)
        assert len(refs) >= 8
        detector.close()
        alive = [ref() for ref in refs if ref() is not None]
        assert alive == [], f"alive after close(): {alive}"
    finally:
        gc.enable()
    assert cuda.check_clean() == []
    if path == "abandoned stream":  # a frame collected after close() says so
        with pytest.raises(EdgeDBError, match="closed"):
            next(kept[0])


# 3 ------------------------------------------------------------------------------------------
def test_primary_context_is_retained_once_and_never_left_current(monkeypatch, images):
    _, cuda = install(monkeypatch)
    from edgedb.engine.gpu import CudaDevice

    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        for _ in range(2):  # short-lived handles (cached_build makes one) reset nothing
            with CudaDevice(0) as device, device.activate():
                pass
        assert cuda.retained == 1
        assert len(detector.detect(images[0])) > 0  # the context is still alive
    assert cuda.driver_stack() == [] and cuda.pycuda_stack() == []
    assert cuda.check_clean() == []


# 4 ------------------------------------------------------------------------------------------
def test_a_broken_stderr_does_not_cancel_the_build(monkeypatch, tmp_path):
    trt, _ = install(monkeypatch)
    from edgedb.engine.builder import build_from_model

    class BrokenPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self):
            return False

    real = sys.stderr
    monkeypatch.setattr(sys, "stderr", BrokenPipe())
    try:
        build_from_model("ppocrv4-det", tmp_path / "det.engine", input_size=(384, 640))
    finally:
        monkeypatch.setattr(sys, "stderr", real)
    assert not trt.builds[-1].cancelled and (tmp_path / "det.engine").is_file()


# 5 ------------------------------------------------------------------------------------------
def test_one_logger_for_the_process_outlives_every_backend(engine):
    path, trt, _ = engine
    from edgedb.backends.tensorrt import TensorRTBackend

    first = TensorRTBackend(path)
    second = TensorRTBackend(path)
    first.close()
    del first
    third = TensorRTBackend(path, verbose=True)  # logs while the second lives: its logger must too
    assert any(text == "Loaded engine" for _, text in trt.messages)  # verbose=True is not ignored
    assert not any("differs" in text for _, text in trt.messages)
    second.close()
    third.close()


# 6 ------------------------------------------------------------------------------------------
def test_a_damaged_timing_cache_starts_empty_and_is_rewritten(monkeypatch, tmp_path, caplog):
    trt, _ = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(TIMING_MAGIC + b'{"truncat')
    engine = tmp_path / "det.engine"
    with caplog.at_level(logging.WARNING):
        assert main(["build", "ppocrv4-det", "-o", str(engine), "--input-size", "384x640",
                     "--timing-cache", str(cache)]) == 0
    assert "damaged" in caplog.text
    assert cache.read_bytes().startswith(TIMING_MAGIC) and b"measured" in cache.read_bytes()
    assert not list(tmp_path.glob("timing.cache.*tmp*"))


def test_timings_another_build_wrote_meanwhile_are_kept(monkeypatch, tmp_path):
    trt, cuda = install(monkeypatch)
    cache = tmp_path / "timing.cache"

    def other_build_writes():  # another process finishes a build while this one runs
        cache.write_bytes(TIMING_MAGIC + b'{"device": "Fake GPU (review)", "entries": {"other": "measured"}}')

    trt.on_build = other_build_writes
    assert main(["build", "ppocrv4-det", "-o", str(tmp_path / "det.engine"), "--input-size", "384x640",
                 "--timing-cache", str(cache)]) == 0
    content = cache.read_bytes()
    assert b'"other"' in content and content.count(b"measured") == 2


# 7 ------------------------------------------------------------------------------------------
def test_dla_keeps_float32_islands_on_the_gpu_and_loads_on_its_core(monkeypatch, tmp_path, capsys, images):
    trt, _ = install(monkeypatch, version="10.3.0.30", dla_cores=2)
    engine = tmp_path / "dla.engine"
    common = ["build", "ppocrv4-det", "-o", str(engine), "--input-size", "384x640", "--dla-core", "1",
              "--precision", "fp16"]
    assert main(common) == 2  # islands need the GPU
    assert "--gpu-fallback" in capsys.readouterr().err
    assert main(common + ["--gpu-fallback"]) == 0
    record = trt.builds[-1]
    assert "OBEY_PRECISION_CONSTRAINTS" in record.flags
    pinned = record.layer_devices
    assert pinned and set(pinned.values()) == {"GPU"}
    assert any("Sigmoid" in name for name in pinned)  # the logits before the final Sigmoid stay float32
    with EdgeDetector(model=str(engine), threads=2) as detector:
        detector.detect(images[0])
    assert trt.loaded_dla_cores[-1] == 1  # runtime.DLA_core from the sidecar


# the CUDA tier's own code, run here on the stand-in driver --------------------------------
def test_the_cuda_tier_runs_on_the_stand_in_driver(monkeypatch, tmp_path, images):
    """tests/test_cuda_tier.py runs only on a GPU; its stand-in engine over a driver is
    checked here with the fake pycuda in place of the real one."""
    _, fake_cuda = install(monkeypatch, integrated=True)  # a Jetson-like GPU: mapped memory too
    import test_cuda_tier
    from cuda_standin import install_on_gpu

    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path))
    gpu = install_on_gpu(monkeypatch)
    with EdgeDetector(backend="cpu", limit_type="max", limit_side_len=640, threads=2) as cpu:
        expected = [cpu.detect(image) for image in images]
    test_cuda_tier.test_detect_on_device_memory_with_real_events(gpu, images, expected)
    test_cuda_tier.test_stream_is_double_buffered_and_matches_detect(gpu, images, expected)
    test_cuda_tier.test_mapped_host_memory_is_device_memory(gpu)
    assert fake_cuda.check_clean() == []
