"""The CUDA tier: edgedb's TensorRT backend on a real GPU, with a stand-in engine doing its
work on real device memory (``cuda_standin``), so everything but TensorRT itself runs on
hardware. Marked ``cuda``: skipped without pycuda and an NVIDIA GPU; ``scripts/gpu_check.sh``
runs it where TensorRT is absent."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgedb import EdgeDetector
from boxmatch import assert_identical_boxes

pytestmark = pytest.mark.cuda

SMALL = dict(limit_type="max", limit_side_len=640, image_sizes=[(360, 640)], threads=2)


@pytest.fixture
def gpu(monkeypatch, tmp_path):
    from cuda_standin import install_on_gpu

    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path))  # engines of this GPU's stand-in only
    return install_on_gpu(monkeypatch)


def test_detect_on_device_memory_with_real_events(gpu, small_images, small_cpu_boxes):
    _, cuda = gpu
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        first = detector.probability_map(small_images[0])
        kept = first.copy()
        for image, expected in zip(small_images, small_cpu_boxes):
            assert_identical_boxes(detector.detect(image), expected, scores=False)
        np.testing.assert_array_equal(first, kept)  # outputs are the caller's
        times = detector._backend.last_times
        assert times.compute_ms >= 0 and (detector._backend.zero_copy or times.h2d_ms > 0 and times.d2h_ms > 0)
    assert cuda.driver.Context.get_current() is None  # nothing left current on this thread


def test_stream_is_double_buffered_and_matches_detect(gpu, small_images, small_cpu_boxes):
    trt, _ = gpu
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        for boxes, expected in zip(detector.stream(small_images * 3), small_cpu_boxes * 3):
            assert_identical_boxes(boxes, expected, scores=False)
        assert len(trt.contexts) == 2


def test_contexts_pushed_from_several_threads(gpu, small_images, small_cpu_boxes):
    with EdgeDetector(backend="tensorrt", **SMALL) as one, EdgeDetector(backend="tensorrt", **SMALL) as two:
        errors, results = [], {}

        def work(detector, index):
            try:
                results[(id(detector), index)] = [detector.detect(small_images[index]) for _ in range(3)]
            except Exception as error:
                errors.append(error)

        threads = [threading.Thread(target=work, args=(d, i)) for d in (one, two) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for (_, index), runs in results.items():
            for boxes in runs:
                assert_identical_boxes(boxes, small_cpu_boxes[index], scores=False)


def test_mapped_host_memory_is_device_memory(gpu):
    _, cuda = gpu
    from edgedb.engine.gpu import CudaDevice
    from edgedb.backends.tensorrt import _PinnedAllocation

    with CudaDevice(0) as device, device.activate():
        if not device.can_map_host_memory:
            pytest.skip("this GPU cannot map host memory")
        mapped = _PinnedAllocation(cuda.driver, 1 << 16, mapped=True)
        try:
            mapped.host[:] = np.arange(1 << 16) % 251
            seen = np.empty(1 << 16, np.uint8)
            cuda.driver.memcpy_dtoh(seen, mapped.device_address)  # read through the device pointer
            np.testing.assert_array_equal(seen, mapped.host)
        finally:
            mapped.free()
