"""The zoo: every name resolves to a DBNet inside an installed package (nothing downloaded),
with the spec it is fed by, and detects text; a missing package names the extra."""

from __future__ import annotations

import importlib.util

import pytest

from edgedb import EdgeDetector
from edgedb.errors import ModelError
from edgedb.models import _ZOO, resolve_model, zoo_names, zoo_spec
from edgedb.synthetic import make_text_image


def installed(name: str) -> bool:
    return importlib.util.find_spec(_ZOO[name][0]) is not None


def test_names():
    assert {"ppocrv4-det", "ppocrv5-det-mobile", "ppocrv6-det-small"} <= set(zoo_names())
    for name in zoo_names():
        spec = zoo_spec(name)
        assert spec is not None and spec.channel_order == "BGR"


@pytest.mark.parametrize("name", ["ppocrv5-det-mobile", "ppocrv6-det-small"])
def test_newer_dbnets_detect_text(name):
    if not installed(name):
        pytest.skip(f"{_ZOO[name][0]} (the zoo extra) is not installed")
    path = resolve_model(name)
    assert path.is_file() and path.suffix == ".onnx"
    scene = make_text_image(3, size=(480, 640))
    with EdgeDetector(name, "onnxruntime", limit_side_len=480) as detector:
        boxes = detector.detect(scene.image)
    assert len(boxes) >= len(scene.polygons) // 2 > 0


def test_missing_package_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    with pytest.raises(ModelError, match=r"dbnet-edge\[zoo\]"):
        resolve_model("ppocrv6-det-small")
