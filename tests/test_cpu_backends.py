"""The CPU backends, ONNX Runtime and OpenVINO, through one suite: the Backend protocol
(names, owned outputs, dynamic shapes, batches, threads, close), EdgeDetector on each,
every precision of the same deployable graphs, and the ONNX Runtime arena's shrinking.

The OpenVINO cases are skipped where the openvino extra is not installed (CI installs it).
"""

from __future__ import annotations

import importlib.util
import sys

import cv2
import numpy as np
import pytest

from edgedb import EdgeDetector
from edgedb.backends import create_backend, resolve_backend_name
from edgedb.backends.base import OversizedRuns
from edgedb.errors import EdgeDBError, InvalidInputError, MissingDependencyError, ModelError
from edgedb.preprocess import prepare_fixed
from edgedb.synthetic import make_text_image

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="the openvino extra is not installed")
BACKENDS = ["onnxruntime", pytest.param("openvino", marks=needs_openvino)]
SIZE = (320, 480)


def frame(seed: int = 3, size=SIZE) -> np.ndarray:
    return prepare_fixed(make_text_image(seed, size=size).image, size).frame[None]


def iou(a: np.ndarray, b: np.ndarray, thresh: float = 0.3) -> float:
    x, y = a > thresh, b > thresh
    return float(np.logical_and(x, y).sum() / max(np.logical_or(x, y).sum(), 1))


@pytest.fixture(scope="module")
def reference(fp32):
    with create_backend("onnxruntime", fp32) as backend:
        return backend.infer({"image": frame()})["prob"]


@pytest.mark.parametrize("name", BACKENDS)
def test_protocol(name, fp32, tmp_path):
    import onnx

    path = tmp_path / "model.onnx"
    onnx.save(fp32, str(path))
    for source in (fp32, fp32.SerializeToString(), path, str(path)):
        with create_backend(name, source, threads=1) as backend:
            assert backend.name == name
            assert backend.input_names == ("image",) and backend.output_names == ("prob",)
            first = backend.infer({"image": frame(1)})["prob"]
            kept = first.copy()
            second = backend.infer({"image": frame(2)})["prob"]
            assert first.dtype == np.float32 and first.shape == (1, 1, *SIZE)
            np.testing.assert_array_equal(first, kept)  # the next call did not overwrite it
            assert not np.array_equal(first, second)
            with pytest.raises(InvalidInputError, match="missing inputs"):
                backend.infer({"x": frame()})
        assert backend.closed
        backend.close()  # idempotent
        with pytest.raises(EdgeDBError, match="closed"):
            backend.infer({"image": frame()})


@pytest.mark.parametrize("name", BACKENDS)
def test_dynamic_shapes_and_batches(name, fp32, reference):
    with create_backend(name, fp32) as backend:
        for size in [(256, 256), (320, 480), (96, 640)]:
            assert backend.infer({"image": frame(4, size)})["prob"].shape == (1, 1, *size)
        batch = np.concatenate([frame(), frame(5)])
        maps = backend.infer({"image": batch})["prob"]
        assert maps.shape == (2, 1, *SIZE)
        assert iou(maps[:1], reference) > 0.999  # the batch's first frame is the single frame
        # a view that is not contiguous is taken as well
        wide = frame(4, (320, 960))[:, :, :480]
        assert backend.infer({"image": wide})["prob"].shape == (1, 1, *SIZE)


@pytest.mark.parametrize("name", BACKENDS)
def test_fp32_agrees_with_onnxruntime(name, fp32, reference):
    with create_backend(name, fp32) as backend:
        prob = backend.infer({"image": frame()})["prob"]
    assert iou(prob, reference) >= 0.99
    assert np.abs(prob - reference).max() < 1e-3


@pytest.mark.parametrize("name", BACKENDS)
def test_fp16_and_int8_models(name, fp32, reference, tmp_path_factory):
    from edgedb.precision import to_float16
    from edgedb.precision.calibration import calibration_images, collect_stats
    from edgedb.precision.int8 import quantize_int8

    folder = tmp_path_factory.mktemp("calib")
    for seed in range(3):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(40 + seed, size=SIZE).image)
    stats = collect_stats(fp32, calibration_images(folder), input_size=SIZE,
                          cache_dir=tmp_path_factory.mktemp("stats"), progress=False)
    models = {"fp16": to_float16(fp32)}
    for target in ("tensorrt", "cpu"):
        models[f"int8-{target}"] = quantize_int8(fp32, stats, target=target)
    for precision, model in models.items():
        try:
            backend = create_backend(name, model)
        except ModelError as error:
            # OpenVINO 2026.4 computes PP-OCRv4's TensorRT target wrongly on AVX-512 CPUs; the
            # backend finds it out on a test frame and refuses, saying what to do instead
            assert name == "openvino" and precision == "int8-tensorrt", error
            assert "--target" in str(error) and "onnxruntime" in str(error)
            continue
        with backend:
            prob = backend.infer({"image": frame()})["prob"]
            if name == "openvino":
                assert backend.static_shapes == precision.startswith("int8")
        assert prob.dtype == np.float32
        assert iou(prob, reference) > (0.97 if precision == "fp16" else 0.8), precision


@pytest.mark.parametrize("name", BACKENDS)
def test_detector_on_each_backend(name):
    image = make_text_image(7, size=(480, 640)).image
    with EdgeDetector(backend=name, limit_side_len=480) as detector, \
            EdgeDetector(backend="onnxruntime", limit_side_len=480) as reference:
        assert detector.backend_name == name
        boxes = detector.detect(image)
        assert len(boxes) == len(reference.detect(image)) > 0
        batch = detector.detect_batch([image, image[:, ::-1].copy()])
        assert len(batch) == 2 and len(batch[0]) == len(boxes)
        streamed = list(detector.stream([image, image]))
        assert [len(b) for b in streamed] == [len(boxes)] * 2


@pytest.mark.parametrize("name", BACKENDS)
def test_threads_and_bad_models(name, fp32):
    with pytest.raises(InvalidInputError, match="threads"):
        create_backend(name, fp32, threads=10_000)
    with pytest.raises(ModelError, match="cannot load"):
        create_backend(name, b"not an onnx model")


@needs_openvino
def test_openvino_compiles_recurring_sizes_for_themselves(fp32):
    """A float model runs on its dynamic compilation until a size recurs, then on one
    compiled for that size, with the same maps; sizes that never come back cost nothing."""
    from edgedb.backends import openvino

    sizes = [(256 + 32 * i, 256) for i in range(12)]
    with create_backend("openvino", fp32) as backend:
        for size in sizes:  # every size once: nothing compiled beyond the dynamic model
            backend.infer({"image": frame(1, size)})
        assert backend.compiled_shapes == 1
        dynamic = backend.infer({"image": frame()})["prob"]
        for _ in range(12):
            prob = backend.infer({"image": frame()})["prob"]
        assert backend.compiled_shapes == 2
        np.testing.assert_allclose(prob, dynamic, atol=1e-4)
        for size in sizes[:openvino.MAX_FLOAT_SIZES + 1]:  # more recurring sizes than it keeps
            for _ in range(12):
                backend.infer({"image": frame(1, size)})
        assert backend.compiled_shapes == 1 + openvino.MAX_FLOAT_SIZES
    recurring = openvino.RecurringSizes(window=8, share=0.25)
    for shapes in ["a", "b", "a", "c", "a"]:
        recurring.record(shapes)
    assert recurring.recurring("a") and not recurring.recurring("b")


@needs_openvino
def test_openvino_refuses_a_quantized_model_it_computes_wrongly(fp32, monkeypatch):
    from edgedb.backends import openvino

    monkeypatch.setattr(openvino, "_has_qdq", lambda model: True)  # check this float model as if quantized
    with create_backend("openvino", fp32) as backend:  # agrees: loads, one shape compiled per size
        assert backend.static_shapes and backend.compiled_shapes == 1
        backend.infer({"image": frame()})
        backend.infer({"image": frame(2, (256, 256))})
        assert backend.compiled_shapes == 3
    from edgedb.backends.onnxrt import OnnxRuntimeBackend

    real_infer = OnnxRuntimeBackend.infer  # the reference now says every pixel is text: they disagree
    monkeypatch.setattr(OnnxRuntimeBackend, "infer",
                        lambda self, feed: {k: 1 - v * 0 for k, v in real_infer(self, feed).items()})
    with pytest.raises(ModelError, match=r"differently from ONNX Runtime.*256x384 test frame.*--target"):
        create_backend("openvino", fp32)
    monkeypatch.setattr(OnnxRuntimeBackend, "infer", real_infer)
    with create_backend("openvino", fp32) as backend:
        monkeypatch.setattr(OnnxRuntimeBackend, "infer",
                            lambda self, feed: {k: 1 - v * 0 for k, v in real_infer(self, feed).items()})
        with pytest.raises(ModelError, match="320x480 test frame"):  # each new size is checked
            backend.infer({"image": frame()})


@needs_openvino
def test_openvino_checks_the_callers_own_frame(fp32, monkeypatch):
    """A model right on the generated frame can be wrong on real ones (PP-OCRv6 small det's
    TensorRT target): the caller's first input of each size is compared too, and a model
    refused at one size is refused at all."""
    from edgedb.backends import openvino
    from edgedb.backends.onnxrt import OnnxRuntimeBackend

    monkeypatch.setattr(openvino, "_has_qdq", lambda model: True)
    real_infer = OnnxRuntimeBackend.infer
    marked = np.full((1, 256, 256, 3), 7, np.uint8)  # the caller's frame; ONNX Runtime "finds" text on it
    monkeypatch.setattr(OnnxRuntimeBackend, "infer", lambda self, feed: {
        k: (1 - v * 0 if np.array_equal(feed["image"], marked) else v) for k, v in real_infer(self, feed).items()})
    with create_backend("openvino", fp32) as backend:
        backend.infer({"image": frame()})  # another frame: agrees
        with pytest.raises(ModelError, match="first 256x256 input it was given"):
            backend.infer({"image": marked})  # a new size, checked on this very frame
        with pytest.raises(ModelError, match="first 256x256 input"):  # and refused from then on
            backend.infer({"image": frame()})


@needs_openvino
def test_openvino_crashes_cost_a_child_not_the_caller(fp32, monkeypatch, tmp_path):
    import subprocess

    from edgedb.backends import openvino

    monkeypatch.setenv("EDGEDB_CACHE", str(tmp_path))
    monkeypatch.setattr(openvino, "_has_qdq", lambda model: True)
    runs = []

    def crashing(command, **kwargs):
        runs.append(command)
        return subprocess.CompletedProcess(command, -11, "", "")

    monkeypatch.setattr(subprocess, "run", crashing)
    for _ in range(2):  # the verdict is kept: one child per model, OpenVINO version and CPU
        with pytest.raises(ModelError, match=r"crashes \(signal 11\).*backend 'onnxruntime'"):
            create_backend("openvino", fp32)
    assert len(runs) == 1 and runs[0][1:3] == ["-m", "edgedb.backends.openvino"]


@needs_openvino
def test_openvino_runs_float_models_in_float32(fp32):
    with create_backend("openvino", fp32, threads=1) as backend:
        assert backend.threads == 1
        compiled, _ = next(iter(backend._compiled.values()))
        assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_openvino_missing_names_the_extra(monkeypatch, fp32):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"dbnet-edge\[openvino\]"):
        resolve_backend_name("openvino")
    with pytest.raises(MissingDependencyError, match="openvino"):
        EdgeDetector(backend="openvino")
    assert resolve_backend_name("cpu") == "onnxruntime"


def test_memory_goes_back_after_oversized_runs_only():
    shrinker = OversizedRuns(window=4, factor=2.0)
    assert shrinker.oversized(100)  # the first run: nothing to compare with
    assert [shrinker.oversized(n) for n in (100, 120, 90, 100)] == [False] * 4
    assert shrinker.oversized(1000)  # an oversized frame gives its memory back
    assert not shrinker.oversized(100)
    # a new usual size becomes the usual one once it is most of the recent runs
    assert [shrinker.oversized(400) for _ in range(4)][-1] is False


def test_onnxruntime_backend_shrinks_the_arena_after_a_huge_frame(fp32, monkeypatch):
    with create_backend("onnxruntime", fp32) as backend:
        calls = []
        run = backend._session.run

        def spy(names, feed, options=None):
            calls.append(options is not None and
                         options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0")
            return run(names, feed, options)

        monkeypatch.setattr(backend._session, "run", spy)
        small = frame(1, (128, 128))
        for _ in range(3):
            backend.infer({"image": small})
        backend.infer({"image": frame(1, (640, 640))})
        backend.infer({"image": small})
        assert backend._session.get_session_options().enable_cpu_mem_arena
    assert calls == [True, False, False, True, False]


@needs_openvino
def test_cli_runs_on_openvino(tmp_path, capsys):
    from edgedb.cli import main
    from edgedb.synthetic import make_dataset

    data = tmp_path / "eval"
    make_dataset(data, 2, seed=9, size=SIZE)
    assert main(["compare", "ppocrv4-det", "ppocrv4-det", "--images", str(data),
                 "--reference-backend", "onnxruntime", "--backend", "openvino", "--input-size", "320x480"]) == 0
    table = capsys.readouterr().out
    assert "ppocrv4-det@onnxruntime" in table and "ppocrv4-det@openvino" in table
    assert main(["eval", "--images", str(data), "--backend", "openvino", "--limit-side-len", "320"]) == 0
    assert "hmean" in capsys.readouterr().out
    image = data / "img_1.jpg"
    assert main(["detect", str(image), "--backend", "openvino", "--json", str(tmp_path / "boxes.json")]) == 0


@needs_openvino
def test_bf16_runs_the_fp32_graph_on_openvino(capsys):
    from edgedb.cli import main

    image = make_text_image(8, size=(480, 640)).image
    with EdgeDetector(backend="openvino", precision="bf16", limit_side_len=480) as detector, \
            EdgeDetector(backend="onnxruntime", limit_side_len=480) as reference:
        assert detector._backend.inference_precision == "bf16"
        assert iou(detector.probability_map(image), reference.probability_map(image)) > 0.9
    with pytest.raises(InvalidInputError, match="precision 'bf16' runs on backend 'openvino'"):
        EdgeDetector(backend="onnxruntime", precision="bf16")
    with pytest.raises(InvalidInputError, match="inference_precision"):
        create_backend("openvino", b"", inference_precision="f8")
    assert main(["detect", "--precision", "bf16", "--backend", "cpu"]) == 2
    assert "--precision bf16 needs --backend openvino" in capsys.readouterr().err
