"""TensorRT engines: precision, profiles, building, sidecars and the engine cache.

Everything that needs no GPU (profiles from the detector's shape policy, buffer sizing,
sidecar checks, cache keys, version gates, the ONNX in each precision) is importable and
tested without tensorrt or pycuda; only ``build_engine`` and the runtime in
``edgedb.backends.tensorrt`` call TensorRT.
"""

from edgedb.engine.builder import BuildOptions, build_engine, build_from_model, cached_build, choose_profile
from edgedb.engine.precision import PRECISIONS, model_precision, precision_model
from edgedb.engine.profiles import DEFAULT_IMAGE_SIZES, Profile, limit_profile, static_profile
from edgedb.engine.sidecar import DeviceInfo, EngineSidecar, read_sidecar, sidecar_path

__all__ = [
    "BuildOptions", "DEFAULT_IMAGE_SIZES", "DeviceInfo", "EngineSidecar", "PRECISIONS", "Profile",
    "build_engine", "build_from_model", "cached_build", "choose_profile", "limit_profile", "model_precision",
    "precision_model", "read_sidecar", "sidecar_path", "static_profile",
]
