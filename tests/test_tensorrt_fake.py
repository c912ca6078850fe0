"""edgedb's TensorRT path end to end on stand-in tensorrt and pycuda modules.

``fake_tensorrt`` implements the binding names edgedb calls and runs the "engine" with
ONNX Runtime, so these tests prove the bookkeeping around the GPU calls (buffers by name,
addresses set once, contexts pushed on every thread, two frames in flight, zero copy,
sidecar checks, profiles, build options, the engine cache), not what a GPU computes:
that is ``tests/test_gpu.py``, run on a GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgedb import EdgeDetector, EngineError, InvalidInputError
from edgedb.cli import main
from edgedb.engine import read_sidecar, sidecar_path
from edgedb.synthetic import make_text_image

from boxmatch import assert_identical_boxes
from fake_tensorrt import install

# Small frames keep ONNX Runtime quick: 360x640 images -> 384x640 frames.
SMALL = dict(limit_type="max", limit_side_len=640, image_sizes=[(360, 640)], threads=2)


def test_detector_on_tensorrt_gives_onnxruntime_boxes_and_caches_its_engine(monkeypatch, small_images, small_cpu_boxes):
    trt, cuda = install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        assert detector.backend_name == "tensorrt"
        for image, expected in zip(small_images, small_cpu_boxes):
            assert_identical_boxes(detector.detect(image), expected)
        engine = detector._backend.engine_path
        times = detector._backend.last_times
        assert times.h2d_ms > 0 and times.compute_ms > 0 and times.d2h_ms > 0
    assert len(trt.builds) == 1 and trt.builds[0].profiles == [{"image": ((1, 384, 640, 3),) * 3}]
    assert trt.builds[0].network_flags == 2  # strongly typed: precision from the ONNX
    with EdgeDetector(backend="tensorrt", **SMALL) as again:  # from the cache: no second build
        assert_identical_boxes(again.detect(small_images[0]), small_cpu_boxes[0])
    assert len(trt.builds) == 1
    assert read_sidecar(engine).precision == "fp32"
    # Every CUDA call ran with the context pushed (the fake checks); all of it was undone,
    # but the primary context, retained once for the process.
    assert cuda.check_clean() == [] and cuda.retained == 1


def test_outputs_survive_the_next_call_and_addresses_are_set_once(monkeypatch, small_images):
    trt, _ = install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        first = detector.probability_map(small_images[0])
        kept = first.copy()
        for image in small_images[1:] * 2:
            detector.probability_map(image)
        np.testing.assert_array_equal(first, kept)
        backend = detector._backend
        outputs = backend.infer({"image": np.zeros((1, 384, 640, 3), np.uint8)})
        again = backend.infer({"image": np.full((1, 384, 640, 3), 200, np.uint8)})
        assert not np.shares_memory(outputs["prob"], again["prob"])
        (context,) = trt.contexts
        assert context.address_calls == ["image", "prob"]  # not once per call
        assert context.strategy == "USER_MANAGED" and context.device_memory is not None
        del context  # the test's reference must not outlive close()


def test_stream_keeps_two_frames_in_flight_and_matches_detect(monkeypatch, small_images, small_cpu_boxes):
    trt, cuda = install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        streamed = list(detector.stream(small_images * 2))
        broken = detector.stream([small_images[0], small_images[1], np.zeros((4, 4, 5), np.uint8)])
        assert len(next(broken)) and len(next(broken))  # the frames before a bad one keep their boxes
        with pytest.raises(InvalidInputError):
            next(broken)
        for boxes, expected in zip(streamed, small_cpu_boxes * 2):
            assert_identical_boxes(boxes, expected)
        assert len(trt.contexts) == 2  # two slots, sharing one scratch allocation
        assert trt.contexts[0].device_memory == trt.contexts[1].device_memory
        executed = [entry[2] for entry in cuda.calls if entry[0] == "execute"]
        assert executed[:4] == [id(trt.contexts[0]), id(trt.contexts[1])] * 2  # they alternate
        assert [c.address_calls for c in trt.contexts] == [["image", "prob"]] * 2
        # compute waits for its frame's copies, the copy-out for its compute
        assert sum(entry[0] == "wait_for_event" for entry in cuda.calls) == 2 * len(executed)


def test_zero_copy_on_an_integrated_gpu(monkeypatch, small_images, small_cpu_boxes):
    trt, cuda = install(monkeypatch, integrated=True)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        assert detector._backend.zero_copy
        assert_identical_boxes(detector.detect(small_images[1]), small_cpu_boxes[1])
        assert detector._backend.last_times.h2d_ms == 0.0
    kinds = {entry[0] for entry in cuda.calls}
    assert "htod" not in kinds and "dtoh" not in kinds
    assert all(mapped for kind, _, mapped in (e for e in cuda.calls if e[0] == "pagelocked_empty"))


def test_threads_and_two_detectors_do_not_disturb_each_other(monkeypatch, small_images, small_cpu_boxes):
    install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as one, EdgeDetector(backend="tensorrt", **SMALL) as two:
        results: dict = {}
        errors = []

        def work(detector, index):
            try:
                results[(id(detector), index)] = [detector.detect(small_images[index]) for _ in range(3)]
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(d, i)) for d in (one, two) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for (_, index), runs in results.items():
            for boxes in runs:
                assert_identical_boxes(boxes, small_cpu_boxes[index])


def test_batches_are_split_to_the_engines_max_batch(monkeypatch, small_images, small_cpu_boxes):
    install(monkeypatch)
    with EdgeDetector(backend="tensorrt", max_batch=2, **SMALL) as detector:
        assert detector._backend.max_batch == 2
        for boxes, expected in zip(detector.detect_batch(small_images), small_cpu_boxes):
            assert_identical_boxes(boxes, expected)


def test_tiles_fit_the_engines_profile(monkeypatch):
    # An engine built for 360x640 images takes frames up to 384x640: a large image is cut
    # into tiles that size, not the 640x640 that tile_size asks for, and gives the boxes
    # ONNX Runtime gives with the same tiles.
    install(monkeypatch)
    options = dict(limit_type="min", limit_side_len=360, threads=2, tile="on", tile_size=640, tile_overlap=96)
    image = make_text_image(7, size=(1000, 1700), words=(30, 30)).image
    with EdgeDetector(backend="tensorrt", image_sizes=[(360, 640)], **options) as detector:
        assert detector._backend.max_frame == (384, 640)
        tiles, _, frame = detector._tiles(*image.shape[:2])
        assert frame == (384, 640) and all(t.y1 - t.y0 <= 384 and t.x1 - t.x0 <= 640 for t in tiles)
        tiled = detector.detect(image)
    with EdgeDetector(backend="cpu", **options) as cpu:
        cpu._backend.max_frame = (384, 640)  # the same tiles
        assert_identical_boxes(tiled, cpu.detect(image))
    assert len(tiled) >= 10


def test_frames_outside_the_profile_say_how_to_rebuild(monkeypatch):
    install(monkeypatch)
    with EdgeDetector(backend="tensorrt", **SMALL) as detector:
        with pytest.raises(InvalidInputError, match="outside the engine's profile.*image sizes"):
            detector.detect(np.zeros((640, 360, 3), np.uint8))  # portrait: not a stated size


def test_cli_build_records_its_options_and_reuses_the_timing_cache(monkeypatch, tmp_path, small_images, small_cpu_boxes, capsys):
    trt, _ = install(monkeypatch)
    engine = tmp_path / "det.engine"
    args = ["build", "ppocrv4-det", "-o", str(engine), "--input-size", "384x640", "--workspace", "256",
            "--builder-optimization-level", "4"]
    assert main(args) == 0
    assert main(args) == 0
    first, second = trt.builds
    assert first.profiles == [{"image": ((1, 384, 640, 3),) * 3}]
    assert first.workspace == 256 << 20 and first.optimization_level == 4 and first.progress
    # written after the first build, then read back by the second
    assert b'"entries": {}' in first.timing_cache_in and b'"measured"' in second.timing_cache_in
    err = capsys.readouterr().err
    assert "building det.engine" in err and "wrote" in err
    sidecar = read_sidecar(engine)
    assert sidecar.build_options["workspace"] == 256 and sidecar.profiles[0].static
    assert sidecar.device.gpu_name == "Fake GPU" and sidecar.device.tensorrt_version == "10.3.0.30"
    assert "--input-size" not in sidecar.rebuild_command(engine) and "--min-shape 1x384x640" in sidecar.rebuild_command(engine)
    with EdgeDetector(model=str(engine), threads=2) as detector:  # a static engine letterboxes into its size
        assert detector.input_size == (384, 640) and detector.backend_name == "tensorrt"
        assert_identical_boxes(detector.detect(small_images[0]), small_cpu_boxes[0])
    with pytest.raises(InvalidInputError, match="built for input size 384x640"):
        EdgeDetector(model=str(engine), input_size=(320, 640))
    # One frame size with batches of 1 to 2 is still a fixed-size engine.
    batched = tmp_path / "det-b2.engine"
    assert main(["build", "ppocrv4-det", "-o", str(batched), "--input-size", "384x640", "--max-batch", "2"]) == 0
    with EdgeDetector(model=str(batched), threads=2) as detector:
        assert detector.input_size == (384, 640) and detector._backend.max_batch == 2
        assert_identical_boxes(detector.detect_batch(small_images[:2])[0], small_cpu_boxes[0])


def test_dla_builds_per_tensorrt_version(monkeypatch, tmp_path):
    engine = str(tmp_path / "dla.engine")
    trt, _ = install(monkeypatch, version="10.3.0.30", dla_cores=2)
    common = ["build", "ppocrv4-det", "-o", engine, "--input-size", "384x640", "--dla-core", "1"]
    assert main(common + ["--precision", "fp16", "--gpu-fallback"]) == 0
    record = trt.builds[-1]
    # weakly typed + flags on 10.x, the float32 islands pinned (edgedb.engine.dla)
    assert record.network_flags == 0 and record.flags == ["FP16", "GPU_FALLBACK", "OBEY_PRECISION_CONSTRAINTS"]
    assert record.device_type == "DLA" and record.dla_core == 1
    assert main(common[:-1] + ["2", "--precision", "fp16"]) == 2  # no DLA core 2
    assert main(["build", "ppocrv4-det", "-o", engine, "--dla-core", "0", "--precision", "fp16"]) == 2  # dynamic
    assert main(common) == 2  # fp32 on the DLA
    trt11, _ = install(monkeypatch, version="11.1.0.7", dla_cores=2)
    assert main(common + ["--precision", "fp16"]) == 0
    assert trt11.builds[-1].network_flags == 2 and trt11.builds[-1].flags == []  # strongly typed, no flags on 11.x


def test_foreign_or_broken_engines_are_refused(monkeypatch, tmp_path, capsys):
    engine = tmp_path / "det.engine"
    install(monkeypatch, gpu_name="GPU A")
    assert main(["build", "ppocrv4-det", "-o", str(engine), "--input-size", "384x640"]) == 0
    install(monkeypatch, gpu_name="GPU B")
    with pytest.raises(EngineError, match="built for GPU A.*this GPU is GPU B.*edgedb build ppocrv4-det"):
        EdgeDetector(model=str(engine))
    assert main(["detect", "--model", str(engine)]) == 2
    assert "rebuild it here" in capsys.readouterr().err
    # bytes TensorRT cannot deserialize, behind a sidecar that vouches for them
    install(monkeypatch, gpu_name="GPU A")
    sidecar = read_sidecar(engine)
    import dataclasses
    import hashlib

    from edgedb.engine.sidecar import write_engine

    junk = b"not an engine" * 10
    write_engine(engine, junk, dataclasses.replace(sidecar, engine_sha256=hashlib.sha256(junk).hexdigest(),
                                                    engine_bytes=len(junk)))
    with pytest.raises(EngineError, match="cannot load"):
        EdgeDetector(model=str(engine))
    with pytest.raises(InvalidInputError, match="runs on backend 'tensorrt'"):
        EdgeDetector(model=str(engine), backend="cpu")


def test_engine_errors_come_before_missing_extras(tmp_path):
    """Without tensorrt installed, a bad engine file still gets its own clear message."""
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineError, match="no sidecar"):
        EdgeDetector(model=str(engine))
    assert not sidecar_path(engine).exists()


def test_failed_builds_and_auto_backend(monkeypatch, tmp_path):
    install(monkeypatch, fail_build=True, gpu_name="GPU with no cached engine")
    with pytest.raises(EngineError, match="could not build"):
        EdgeDetector(backend="tensorrt", **SMALL)
    from edgedb.backends import resolve_backend_name

    assert resolve_backend_name("auto") == "tensorrt"
    install(monkeypatch, devices=0)
    assert resolve_backend_name("auto") == "onnxruntime"
