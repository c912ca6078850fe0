"""The JSON sidecar of every engine: how it was built, checked before it is loaded.

A TensorRT engine runs only with the TensorRT version that built it and on the GPU type it
was built for; loading it elsewhere fails deep inside TensorRT, or worse, runs. The
sidecar (``NAME.engine.json`` beside ``NAME.engine``) records the edgedb and TensorRT
versions, the GPU and its compute capability, the precision, the profiles, the model spec,
the source ONNX's sha256, the build options and the engine's own size and sha256, so that
loading refuses a mismatch, a truncated or replaced engine, or a file that is not an
edgedb engine, with a message that says how to rebuild. Nothing here imports TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from edgedb._files import write_atomically
from edgedb.engine.profiles import Profile
from edgedb.errors import EngineError
from edgedb.spec import ModelSpec

SIDECAR_FORMAT = 1
SIDECAR_SUFFIX = ".json"


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to: the TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {self.tensorrt_version} on {self.gpu_name} (compute capability {major}.{minor})"


@dataclass(frozen=True)
class EngineSidecar:
    """Everything recorded about one engine (see the module doc)."""

    edgedb_version: str
    device: DeviceInfo
    precision: str
    profiles: tuple[Profile, ...]
    spec: ModelSpec
    source_onnx: str
    source_sha256: str
    engine_sha256: str
    engine_bytes: int
    build_options: dict = field(default_factory=dict)
    machine: str = field(default_factory=platform.machine)
    built_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format: int = SIDECAR_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["device"]["compute_capability"] = list(self.device.compute_capability)
        data["profiles"] = [profile.to_dict() for profile in self.profiles]
        data["spec"] = json.loads(self.spec.to_json())
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "sidecar") -> "EngineSidecar":
        try:
            data = json.loads(text)
            if data.get("format") != SIDECAR_FORMAT:
                raise EngineError(f"{where} has format {data.get('format')!r}; this edgedb reads format "
                                  f"{SIDECAR_FORMAT}. Rebuild the engine with this edgedb (edgedb build).")
            device = data["device"]
            return cls(
                edgedb_version=str(data["edgedb_version"]),
                device=DeviceInfo(str(device["tensorrt_version"]), str(device["gpu_name"]),
                                  tuple(int(v) for v in device["compute_capability"])),
                precision=str(data["precision"]),
                profiles=tuple(Profile.from_dict(p) for p in data["profiles"]),
                spec=ModelSpec.from_json(json.dumps(data["spec"])),
                source_onnx=str(data["source_onnx"]),
                source_sha256=str(data["source_sha256"]),
                engine_sha256=str(data["engine_sha256"]),
                engine_bytes=int(data["engine_bytes"]),
                build_options=dict(data.get("build_options", {})),
                machine=str(data.get("machine", "")),
                built_at=str(data.get("built_at", "")),
            )
        except EngineError:
            raise
        except Exception as error:  # json, key, type and value errors alike: the file is not ours
            raise EngineError(f"{where} is not an edgedb engine sidecar ({type(error).__name__}: {error}); "
                              "rebuild the engine with edgedb build") from None

    def rebuild_command(self, engine_path: Union[str, Path]) -> str:
        """The ``edgedb build`` command that makes this engine again on the current machine."""
        words = ["edgedb", "build", self.source_onnx, "-o", str(engine_path), "--precision", self.precision]
        for option, value in sorted(self.build_options.items()):
            if value is None or value is False:
                continue
            flag = "--" + option.replace("_", "-")
            if value is True:
                words.append(flag)
            elif isinstance(value, (list, tuple)):
                words += [flag, *map(str, value)]
            else:
                words += [flag, str(value)]
        return " ".join(shlex.quote(w) for w in words)


def sidecar_path(engine_path: Union[str, Path]) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_engine(engine_path: Union[str, Path], plan, sidecar: EngineSidecar) -> None:
    """Writes the engine and then its sidecar, each atomically (a crash leaves no half file)."""
    engine_path = Path(engine_path)
    for path, payload in ((engine_path, memoryview(plan)), (sidecar_path(engine_path), sidecar.to_json().encode())):
        write_atomically(path, payload)


def read_sidecar(engine_path: Union[str, Path]) -> EngineSidecar:
    """The sidecar of an engine file, after checking that the engine is the one it describes.

    Raises:
        EngineError: no engine file, no sidecar, a sidecar that is not edgedb's, or an engine
            file whose size or sha256 differs from the recorded ones (truncated or replaced).
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise EngineError(f"no engine file at {engine_path}")
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EngineError(
            f"{engine_path} has no sidecar {side.name}: edgedb loads only engines it built, because the sidecar "
            f"says which TensorRT, GPU, precision and shapes the engine is for. Build it with "
            f"`edgedb build MODEL -o {engine_path}`."
        )
    sidecar = EngineSidecar.from_json(side.read_text(encoding="utf-8", errors="replace"), str(side))
    size = engine_path.stat().st_size
    if size != sidecar.engine_bytes:
        raise EngineError(
            f"{engine_path} is {size} bytes, but its sidecar records {sidecar.engine_bytes}: the engine is "
            f"truncated or was replaced. Rebuild it: {sidecar.rebuild_command(engine_path)}"
        )
    if file_sha256(engine_path) != sidecar.engine_sha256:
        raise EngineError(
            f"{engine_path} does not match the sha256 its sidecar records: the file was changed or damaged. "
            f"Rebuild it: {sidecar.rebuild_command(engine_path)}"
        )
    return sidecar


def check_compatible(sidecar: EngineSidecar, device: DeviceInfo, engine_path: Union[str, Path] = "the engine",
                     edgedb_version: Optional[str] = None) -> None:
    """Refuses an engine built for another TensorRT version or GPU than ``device``.

    TensorRT engines are tied to the exact TensorRT version (major.minor.patch.build) and
    to the GPU model they were built on; an engine built on an x86 GPU never runs on a
    Jetson. Engines are not portable, so the fix is always a rebuild on this machine.
    """
    problems = []
    if sidecar.device.tensorrt_version != device.tensorrt_version:
        problems.append(f"it was built with TensorRT {sidecar.device.tensorrt_version}, this is {device.tensorrt_version}")
    if sidecar.device.gpu_name != device.gpu_name or tuple(sidecar.device.compute_capability) != tuple(device.compute_capability):
        problems.append(f"it was built for {sidecar.device.gpu_name} (compute capability "
                        f"{'.'.join(map(str, sidecar.device.compute_capability))}), this GPU is {device.gpu_name} "
                        f"({'.'.join(map(str, device.compute_capability))})")
    if edgedb_version is not None and sidecar.edgedb_version.split(".")[:2] != edgedb_version.split(".")[:2]:
        problems.append(f"it was built by edgedb {sidecar.edgedb_version}, this is {edgedb_version}")
    if problems:
        raise EngineError(f"cannot load {engine_path}: " + "; ".join(problems)
                          + f". Engines are tied to one TensorRT version and GPU; rebuild it here: "
                          f"{sidecar.rebuild_command(engine_path)}")
