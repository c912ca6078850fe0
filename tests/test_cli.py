"""The edgedb command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import onnx
import pytest

from edgedb.cli import main
from edgedb.synthetic import make_dataset, make_text_image


@pytest.mark.parametrize("command", [[], ["detect"], ["eval"], ["rewrite"]])
def test_help(command):
    result = subprocess.run([sys.executable, "-m", "edgedb", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: edgedb" in result.stdout


def test_detect_writes_json_and_drawings(tmp_path, capsys):
    image_path = tmp_path / "scene.png"
    cv2.imwrite(str(image_path), make_text_image(3, size=(480, 640)).image)
    out_json, draw_dir = tmp_path / "boxes.json", tmp_path / "drawn"
    assert main(["detect", str(image_path), "--json", str(out_json), "--draw", str(draw_dir)]) == 0
    report = json.loads(out_json.read_text())
    assert report["skipped"] == []
    first = report["images"][0]
    assert first["image"] == str(image_path) and len(first["boxes"]) > 0
    box = first["boxes"][0]
    assert len(box["points"]) == 4 and 0 <= box["score"] <= 1
    drawn = cv2.imread(str(draw_dir / "scene_png.png"))
    assert drawn.shape == (480, 640, 3)


def test_detect_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "missing.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_eval_on_generated_dataset(tmp_path, capsys):
    make_dataset(tmp_path, 3, seed=5, size=(480, 640))
    out = tmp_path / "eval.json"
    assert main(["eval", "--images", str(tmp_path), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["hmean"] > 0.5
    assert "hmean" in capsys.readouterr().out


def test_rewrite(tmp_path):
    out = tmp_path / "deploy.onnx"
    assert main(["rewrite", "ppocrv4-det", str(out)]) == 0
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["prob"]
    assert any(p.key == "edgedb.spec" for p in model.metadata_props)
