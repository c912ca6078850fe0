"""Shared fixtures: real probability maps from the default model on generated images.

The maps come from PP-OCRv4 det (shipped in rapidocr_onnxruntime) run by EdgeDetector
with ONNX Runtime on images edgedb generates, so the suite needs no data from outside the
project. Where ``../shared/data`` exists (developer machines), its photos are added.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import settings

from edgedb import EdgeDetector
from edgedb.synthetic import make_text_image

# CI must not turn red on an example no one has seen before: the property tests run a
# fixed, reproducible set of examples unless HYPOTHESIS_PROFILE=explore asks for new ones.
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("explore", max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

SHARED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "photos"


def _images():
    images = {
        "scene-0": make_text_image(0, size=(720, 1280)).image,
        "scene-1": make_text_image(1, size=(640, 480), rotate=True).image,
        "scene-2": make_text_image(2, size=(900, 700), perspective=True).image,
        "document-0": make_text_image(0, size=(720, 1280), document=True, perspective=False).image,
        "document-1": make_text_image(1, size=(960, 720), document=True).image,
    }
    if SHARED_PHOTOS.is_dir() and not os.environ.get("EDGEDB_NO_SHARED"):
        for path in sorted(SHARED_PHOTOS.glob("*.jpg"))[:6]:
            images[f"photo-{path.stem}"] = cv2.imread(str(path))
    return images


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Rewritten models go to a temporary cache, not the user's ~/.cache/edgedb."""
    previous = os.environ.get("EDGEDB_CACHE")
    os.environ["EDGEDB_CACHE"] = str(tmp_path_factory.mktemp("edgedb-cache"))
    yield
    if previous is None:
        os.environ.pop("EDGEDB_CACHE", None)
    else:
        os.environ["EDGEDB_CACHE"] = previous


@pytest.fixture(scope="session")
def fp32():
    """The default model's deployable (rewritten) FP32 graph, as the precision tests start from."""
    from edgedb.detector import load_deployable

    return load_deployable("ppocrv4-det")[0]


@pytest.fixture(scope="session")
def detector():
    with EdgeDetector(threads=2) as detector:
        yield detector


@pytest.fixture(scope="session")
def real_maps(detector):
    """name -> (probability map float32 (H', W'), original image shape (H, W)), at the
    resolution RapidOCR uses (shorter side 736)."""
    with EdgeDetector(threads=2, limit_type="min", limit_side_len=736) as mapper:
        return {name: (mapper.probability_map(image), image.shape[:2]) for name, image in _images().items()}


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


def _cuda_available() -> bool:
    """pycuda imports and sees an NVIDIA GPU."""
    try:
        import pycuda.driver as driver

        driver.init()
        return driver.Device.count() > 0
    except Exception:  # not installed, no driver, no device
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped unless tensorrt, pycuda and a CUDA device are
    present; tests marked ``cuda`` unless pycuda and a CUDA device are."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda")]
    if cuda_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU and pycuda (pip install pycuda; scripts/gpu_check.sh)")
        for item in cuda_items:
            item.add_marker(skip)
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from edgedb.backends.tensorrt import tensorrt_available

    if tensorrt_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with TensorRT and pycuda (pip install -e '.[tensorrt]')")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def small_images():
    """Four generated 360x640 text scenes: small frames keep the GPU-path tests quick."""
    from edgedb.synthetic import make_text_image

    return [make_text_image(seed, size=(360, 640)).image for seed in range(4)]


@pytest.fixture(scope="session")
def small_cpu_boxes(small_images):
    """ONNX Runtime's boxes for ``small_images``: what every GPU path must give back."""
    with EdgeDetector(backend="cpu", limit_type="max", limit_side_len=640, threads=2) as detector:
        return [detector.detect(image) for image in small_images]
