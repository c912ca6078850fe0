"""What a benchmark ran on: the header of every report.

CPU model and cores, memory, OS, Python, ONNX Runtime, and where present TensorRT, CUDA
and the GPU; on a Jetson the L4T release, the power mode (``nvpmodel -q``) and whether the
CPU clocks are pinned (``jetson_clocks`` sets each core's minimum frequency to its
maximum). Every probe is best effort: what cannot be read is left out, never guessed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _command(*args: str) -> str:
    try:
        return subprocess.check_output(args, text=True, timeout=5, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.SubprocessError):  # absent, failing or hanging: nothing to report
        return ""


def jetson_info() -> dict:
    release = _read("/etc/nv_tegra_release").strip()
    if not release:
        return {}
    info = {"l4t": release.splitlines()[0]}
    mode = _command("nvpmodel", "-q")
    if mode:
        info["power_mode"] = " ".join(line.strip() for line in mode.splitlines() if line.strip())
    cpu = "/sys/devices/system/cpu/cpu0/cpufreq/"
    low, high = _read(cpu + "scaling_min_freq").strip(), _read(cpu + "scaling_max_freq").strip()
    if low and high:
        info["clocks_locked"] = low == high
    return info


def gpu_info() -> dict:
    """TensorRT, CUDA and GPU facts where tensorrt and pycuda import and a GPU answers."""
    info: dict = {}
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        return info
    try:
        from edgedb.engine.gpu import import_pycuda_driver

        cuda = import_pycuda_driver()
        info["cuda_driver"] = cuda.get_driver_version()
        if cuda.Device.count():
            device = cuda.Device(0)
            info["gpu"] = device.name()
            info["compute_capability"] = ".".join(map(str, device.compute_capability()))
    except Exception as error:  # a broken CUDA set-up must not stop a CPU benchmark
        info["gpu_error"] = str(error)
    return info


def openvino_version() -> str | None:
    """OpenVINO's version where the openvino extra is installed (read without importing it)."""
    from importlib import metadata

    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def system_info() -> dict:
    import onnxruntime

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "onnxruntime": onnxruntime.__version__,
    }
    info["openvino"] = openvino_version()
    info.update(gpu_info())
    info.update(jetson_info())
    return {key: value for key, value in info.items() if value not in (None, "")}
