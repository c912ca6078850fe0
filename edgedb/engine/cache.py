"""Engines built on demand for ``EdgeDetector(model=onnx, backend="tensorrt")``, kept in the
user's cache folder and reused while nothing they depend on changes.

The key covers everything an engine depends on: the source file's bytes, the model spec,
the precision and its calibration set, the profile, the TensorRT version, the GPU and its
compute capability, and the edgedb version with its rewrite revision. A cached engine is
still checked against its sidecar on every load, so a damaged file is rebuilt, not run.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional, Sequence

from edgedb.engine.profiles import Profile
from edgedb.engine.sidecar import DeviceInfo
from edgedb.errors import EngineError

log = logging.getLogger(__name__)


def calibration_identity(images: Optional[Sequence[Path]]) -> str:
    """Names, sizes and modification times of the calibration images (empty without)."""
    if not images:
        return ""
    digest = hashlib.sha256()
    for path in images:
        stat = Path(path).stat()
        digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def engine_cache_key(
    *,
    source_sha256: str,
    spec_json: str,
    precision: str,
    method: str,
    calibration: str,
    profile: Profile,
    device: DeviceInfo,
    edgedb_version: str,
    rewrite_revision: int,
    options: Optional[dict] = None,
) -> str:
    """A short hex key; any change in what an engine depends on changes it."""
    fields = [
        source_sha256, spec_json, precision, method if precision in ("int8", "best") else "", calibration,
        repr(profile.to_dict()), device.tensorrt_version, device.gpu_name, repr(tuple(device.compute_capability)),
        edgedb_version, str(rewrite_revision), repr(sorted((options or {}).items())),
    ]
    return hashlib.sha256("\x1f".join(fields).encode()).hexdigest()[:24]


def cached_engine_path(cache_dir: Path, stem: str, precision: str, key: str) -> Path:
    return Path(cache_dir) / "engines" / f"{stem}-{precision}-{key}.engine"


def usable_cached_engine(path: Path, device: DeviceInfo) -> bool:
    """Whether a cached engine exists and its sidecar vouches for it on ``device``."""
    from edgedb._version import __version__
    from edgedb.engine.sidecar import check_compatible, read_sidecar

    if not path.is_file():
        return False
    try:
        check_compatible(read_sidecar(path), device, path, __version__)
        return True
    except EngineError as error:
        log.warning("rebuilding the cached engine: %s", error)
        return False
