"""Every graph edgedb makes is clean as written: no initializer that no node uses. ONNX
Runtime warns "Removing initializer ... It is not used by any node and should be removed"
for each one at load, dozens a model once (issue 19), and a file carries dead weight."""

from __future__ import annotations

import cv2
import onnxruntime as ort
import pytest

from edgedb.precision import correct_biases, quantize_best, to_float16
from edgedb.precision.calibration import calibration_images, collect_stats
from edgedb.precision.int8 import quantize_int8
from edgedb.synthetic import make_text_image

SIZE = (320, 480)


def unused_initializers(model) -> list[str]:
    graph = model.graph
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    return [tensor.name for tensor in graph.initializer if tensor.name not in used]


@pytest.fixture(scope="module")
def calibration(fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hygiene-calib")
    for seed in range(2):
        cv2.imwrite(str(folder / f"scene_{seed}.jpg"), make_text_image(60 + seed, size=SIZE).image)
    images = calibration_images(folder)
    stats = collect_stats(fp32, images, input_size=SIZE, cache_dir=tmp_path_factory.mktemp("stats"), progress=False)
    return images, stats


@pytest.fixture(scope="module")
def made(fp32, calibration):
    images, stats = calibration
    graphs = {"fp32 (rewritten)": fp32, "fp16": to_float16(fp32)}
    for target in ("tensorrt", "cpu"):
        quantized = quantize_int8(fp32, stats, target=target)
        graphs[f"int8 {target}"] = quantized
        graphs[f"int8 {target}, bias-corrected"], _report = correct_biases(fp32, quantized, images, frames=2,
                                                                           input_size=SIZE, progress=False)
    graphs["best"] = quantize_best(fp32, stats)
    return graphs


@pytest.mark.parametrize("name", ["fp32 (rewritten)", "fp16", "int8 tensorrt", "int8 tensorrt, bias-corrected",
                                  "int8 cpu", "int8 cpu, bias-corrected", "best"])
def test_no_unused_initializers(made, name, capfd):
    model = made[name]
    assert unused_initializers(model) == []
    options = ort.SessionOptions()
    options.log_severity_level = 1  # info and up: the warning (level 2) surely shows
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert "should be removed" not in capfd.readouterr().err
