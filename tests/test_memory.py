"""Memory (issue 11), the cheap checks: calibration in groups of activations gives the
statistics one run gives, and comparing precisions image by image gives the figures
that keeping every map gave. Peak RSS itself is measured by bench/bench_soak.py and the
figures in bench/SOAK.md, not here."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedb import EdgeDetector
from edgedb.detector import DEFAULT_BOXES
from edgedb.precision.calibration import (
    _ExposedActivations,
    activation_bytes,
    activation_names,
    calibration_images,
    collect_stats,
    split_by_size,
)
from edgedb.compare import compare_precisions
from edgedb.precision.cpu_graph import decompose_activations
from edgedb.synthetic import make_text_image

SIZE = (128, 192)  # tiny frames: these tests check arithmetic, not memory


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    for seed in range(2):
        cv2.imwrite(str(folder / f"scene_{seed}.png"), make_text_image(60 + seed, size=SIZE).image)
    return calibration_images(folder)


def test_split_by_size_keeps_order_and_balances():
    names = [f"t{i}" for i in range(6)]
    sizes = [40, 30, 10, 10, 5, 5]
    assert split_by_size(names, sizes, 1) == [names]
    assert split_by_size(names, sizes, 2) == [names[:1], names[1:]]
    assert split_by_size(names, sizes, 6) == split_by_size(names, sizes, 9) == [[n] for n in names]


def test_activation_bytes_match_a_run(fp32):
    import onnxruntime as ort

    from edgedb.backends.onnxrt import session_options
    from edgedb.precision.calibration import _with_outputs

    observed = decompose_activations(fp32)
    names = activation_names(observed)
    frame = np.zeros((1, *SIZE, 3), np.uint8)
    session = ort.InferenceSession(_with_outputs(observed, names).SerializeToString(), session_options(1),
                                   providers=["CPUExecutionProvider"])
    measured = [value.nbytes for value in session.run(names, {"image": frame})]
    assert activation_bytes(observed, names, "image", frame.shape) == measured


@pytest.mark.parametrize("runs", [3, 12])  # 3 differed in 20 tensors before fusions were turned off
def test_calibration_in_groups_gives_the_statistics_of_one_run(fp32, images, runs):
    observed = decompose_activations(fp32)
    names = activation_names(observed)
    total = sum(activation_bytes(observed, names, "image", (1, *SIZE, 3)))
    budget = total // runs + 1
    assert len(_ExposedActivations(observed, names, "image", 1, budget).groups((1, *SIZE, 3))) == runs
    whole = collect_stats(fp32, images, input_size=SIZE, cache_dir=None, progress=False, threads=1,
                          activation_budget=2**62)
    grouped = collect_stats(fp32, images, input_size=SIZE, cache_dir=None, progress=False, threads=1,
                            activation_budget=budget)
    assert list(whole) == list(grouped) == names
    for name in names:
        a, b = whole[name], grouped[name]
        assert (a.minimum, a.maximum, a.edge) == (b.minimum, b.maximum, b.edge), name
        np.testing.assert_array_equal(a.histogram, b.histogram, err_msg=name)


def _figures_keeping_every_map(models, samples, reference):
    """What compare_precisions computed before issue 11: every map kept, figures at the end."""
    maps = {}
    for name, model in models.items():
        with EdgeDetector(model, threads=1, input_size=SIZE) as detector:
            maps[name] = [detector.probability_map(image) for _, image, _ in samples]
    threshold = DEFAULT_BOXES["thresh"]
    figures = {}
    for name in models:
        pairs = list(zip(maps[name], maps[reference]))
        errors = [np.abs(a - b) for a, b in pairs]
        inter = sum(np.logical_and(a > threshold, b > threshold).sum() for a, b in pairs)
        union = sum(np.logical_or(a > threshold, b > threshold).sum() for a, b in pairs)
        figures[name] = (float(max(e.max() for e in errors)), float(np.mean([e.mean() for e in errors])),
                         float(inter / union) if union else 1.0)
    return figures


def test_compare_image_by_image_gives_the_figures_of_all_maps(fp32, tmp_path):
    import onnx

    from edgedb.precision import to_float16

    fp16, fp32_file = tmp_path / "fp16.onnx", tmp_path / "fp32.onnx"
    onnx.save(to_float16(fp32), str(fp16))
    onnx.save(fp32, str(fp32_file))
    samples = []
    for seed in range(2):
        generated = make_text_image(70 + seed, size=SIZE)
        samples.append((f"scene_{seed}", generated.image, generated.polygons))
    models = {"fp32": fp32, "fp16": str(fp16)}
    reports = compare_precisions(models, samples, reference="fp16", progress=False, threads=1, input_size=SIZE)
    expected = _figures_keeping_every_map({"fp32": str(fp32_file), "fp16": str(fp16)}, samples, "fp16")
    assert [r.name for r in reports] == ["fp32", "fp16"]
    for report in reports:
        assert report.images == 2 and report.hmean is not None
        assert (report.max_abs_error, report.mean_abs_error, report.binary_iou) == expected[report.name]
    assert reports[1].max_abs_error == 0.0 and reports[1].binary_iou == 1.0
