"""Running a real Triton server on a model repository: finding ``tritonserver``, starting
it bound to loopback, waiting for readiness, and shutting it down with nothing left behind.

Where the binary comes from, first found wins: the ``tritonserver`` argument,
``$EDGEDB_TRITONSERVER``, ``tritonserver`` on PATH (NVIDIA's containers, JetPack), or the
one inside the ``nvidia-pytriton`` wheel (its Python backend only), installed as a package
or unpacked under ``<env>/opt/nvidia-pytriton`` (``scripts/setup.sh`` puts it there:
PyTriton itself pins NumPy < 2, so it is not installed into edgedb's environment).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from edgedb.errors import InvalidInputError, ServingError
from edgedb.serving.repository import PLATFORM_BACKENDS

log = logging.getLogger(__name__)

ENV_TRITONSERVER = "EDGEDB_TRITONSERVER"
INSTALL_HINT = ("install one: run edgedb inside NVIDIA's Triton container (nvcr.io/nvidia/tritonserver), or "
                "pip install --no-deps --target \"$(python -c 'import sys; print(sys.prefix)')/opt/nvidia-pytriton\" "
                "nvidia-pytriton==0.7.0 (what scripts/setup.sh does), or set $EDGEDB_TRITONSERVER to its path")
#: Seconds Triton gets to finish in-flight requests at shutdown before it is killed.
EXIT_TIMEOUT_S = 1
#: How often the watchdog counts the Python-backend stubs.
WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` binary and, for the PyTriton wheel's, what its Python backend needs."""

    binary: Path
    python_backend: Optional[Path] = None  # libtriton_python.so's folder, when not the server's default
    stub: Optional[Path] = None  # triton_python_backend_stub for this Python version
    libraries: Optional[Path] = None  # the wheel's bundled shared libraries

    def backends(self) -> Optional[set[str]]:
        """The backends this server can load (None where it cannot be told): the wheel's
        Python backend alone, or the folders of the server's own backend directory."""
        if self.stub is not None:
            return {"python"}
        folder = self.binary.resolve().parent.parent / "backends"
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else None


def check_backends(repository: Path, install: TritonInstall) -> None:
    """Refuses, before starting, a repository with a model that ``install`` has no
    backend for (an ensemble's ONNX Runtime or TensorRT step on the wheel's server)."""
    have = install.backends()
    if have is None:
        return
    for config in sorted(repository.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        match = re.search(r'^\s*platform:\s*"([^"]+)"', text, re.M) or re.search(r'^\s*backend:\s*"([^"]+)"', text, re.M)
        needed = PLATFORM_BACKENDS.get(match.group(1), match.group(1)) if match else None
        if needed and needed != "ensemble" and needed not in have:
            raise ServingError(
                f"model {config.parent.name!r} needs Triton's {needed} backend, which {install.binary} lacks (it has "
                f"{', '.join(sorted(have))}). The nvidia-pytriton wheel's server has the Python backend only: serve "
                f"this repository in NVIDIA's Triton container (README), or export it in the python layout "
                f"(layout='python', --layout python)")


def _pytriton_roots() -> list[Path]:
    roots = []
    spec = importlib.util.find_spec("pytriton")  # finds the package without importing it (numpy<2 pin)
    if spec is not None and spec.submodule_search_locations:
        roots.append(Path(list(spec.submodule_search_locations)[0]).parent)
    roots.append(Path(sys.prefix) / "opt" / "nvidia-pytriton")
    return roots


def find_tritonserver(tritonserver: Optional[Union[str, Path]] = None) -> TritonInstall:
    """The Triton server to run (see the module's docstring for the order).

    Raises:
        ServingError: none found; the message says how to get one.
    """
    given = tritonserver or os.environ.get(ENV_TRITONSERVER)
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            where = "tritonserver" if tritonserver else f"${ENV_TRITONSERVER}"
            raise ServingError(f"{where} = {given} is not an executable file; {INSTALL_HINT}")
        return _install_of(path)
    on_path = shutil.which("tritonserver")
    if on_path:
        return _install_of(Path(on_path))
    for root in _pytriton_roots():
        binary = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            return _install_of(binary)
    raise ServingError(f"no tritonserver found (not on PATH, no nvidia-pytriton); {INSTALL_HINT}")


def _install_of(binary: Path) -> TritonInstall:
    """A PyTriton-style layout (``backends/`` and ``python_backend_stubs/`` beside ``bin/``)
    gets its stub and libraries named; any other server uses its own backend directory."""
    home = binary.resolve().parent.parent
    stubs = home / "python_backend_stubs"
    if not stubs.is_dir():
        return TritonInstall(binary)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = ", ".join(sorted(p.name for p in stubs.iterdir()))
        raise ServingError(f"{binary} has Python backend stubs for Python {have}, not {version}: run edgedb on one "
                           "of those, or use NVIDIA's Triton container")
    return TritonInstall(binary, home / "backends" / "python", stub, home.parent.parent / "nvidia_pytriton.libs")


def _ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class TritonServer:
    """A ``tritonserver`` process serving ``repository``; a context manager.

    Args:
        repository: a model repository (``export_triton``).
        host: the address the HTTP, gRPC and metrics endpoints bind (loopback unless told).
        http_port, grpc_port, metrics_port: 0 for metrics turns metrics off.
        tritonserver: the binary (default: ``find_tritonserver``).
        startup_timeout: seconds to wait for readiness before giving up.
        watch: restart a model whose Python-backend stub died. Triton 2.51 neither restarts
            a dead stub nor reports it in its health endpoints (requests fail, ready stays
            200); with ``watch`` the server runs in explicit model-control mode and a
            thread unloads the model (ready answers 400 meanwhile) and loads it again.
        log_file: where Triton's log goes (default: the server's scratch folder, removed at
            close); its tail is quoted if the server fails to start.

    ``close()`` (idempotent; also on leaving the ``with`` block) stops the server: SIGTERM,
    then SIGKILL to its whole process group after ``EXIT_TIMEOUT_S`` + 2 seconds, so no
    Python-backend stub outlives it, and removes its scratch folder.
    """

    def __init__(self, repository: Union[str, Path], *, host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, tritonserver: Optional[Union[str, Path]] = None,
                 startup_timeout: float = 120.0, watch: bool = True, log_file: Optional[Union[str, Path]] = None):
        self.repository = Path(repository)
        if not self.repository.is_dir():
            raise InvalidInputError(f"no model repository at {self.repository}; write one with export_triton")
        for label, port in (("http_port", http_port), ("grpc_port", grpc_port), ("metrics_port", metrics_port)):
            if not (isinstance(port, int) and 0 <= port <= 65535) or (port == 0 and label != "metrics_port"):
                raise InvalidInputError(f"{label} must be a port 1..65535, not {port!r}")
        self.host, self.http_port, self.grpc_port, self.metrics_port = host, http_port, grpc_port, metrics_port
        self.install = find_tritonserver(tritonserver)
        check_backends(self.repository, self.install)
        self._scratch = Path(tempfile.mkdtemp(prefix="edgedb-triton-"))
        self.log_file = Path(log_file) if log_file else self._scratch / "tritonserver.log"
        self._process: Optional[subprocess.Popen] = None
        self.startup_seconds: Optional[float] = None
        self.watch, self.restarts = watch, 0
        self._stop = threading.Event()
        self._watchdog: Optional[threading.Thread] = None
        try:
            self._start(startup_timeout)
            if watch:
                self._watchdog = threading.Thread(target=self._watch, name="edgedb-triton-watchdog", daemon=True)
                self._watchdog.start()
        except BaseException:
            self.close()
            raise

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def _ready_url(self) -> str:
        return f"http://{self.http_url}/v2/health/ready"

    def _command_and_env(self) -> tuple[list[str], dict]:
        command = [str(self.install.binary), f"--model-repository={self.repository}",
                   f"--http-address={self.host}", f"--http-port={self.http_port}",
                   f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
                   f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--allow-gpu-metrics=false"]
        if self.watch:
            command += ["--model-control-mode=explicit", "--load-model=*"]
        if self.metrics_port:
            command += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        else:
            command += ["--allow-metrics=false"]
        env = dict(os.environ)
        if self.install.stub is not None:  # the wheel's layout: a backend folder of links
            backends = self._scratch / "backends" / "python"
            backends.mkdir(parents=True)
            for item in self.install.python_backend.iterdir():
                (backends / item.name).symlink_to(item)
            (backends / "triton_python_backend_stub").symlink_to(self.install.stub)
            command.append(f"--backend-directory={backends.parent}")
            libraries = [str(self.install.libraries)]
            if sysconfig.get_config_var("Py_ENABLE_SHARED"):  # the stub then runs this very Python
                libraries.append(str(sysconfig.get_config_var("LIBDIR")))
            env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        return command, env

    def _start(self, timeout: float) -> None:
        command, env = self._command_and_env()
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            # its own session: a terminal's Ctrl-C reaches edgedb, which then stops the whole group
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self._process.poll() is not None:
                raise ServingError(f"tritonserver exited with code {self._process.returncode} before it was ready:"
                                   f"\n{self.log_tail()}")
            if _ready(self._ready_url):
                self.startup_seconds = time.monotonic() - started
                return
            time.sleep(0.1)
        raise ServingError(f"tritonserver was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stubs(self) -> dict[str, int]:
        """Live Python-backend stubs of this server, counted per model folder."""
        counts: dict[str, int] = {}
        if self._process is None:
            return counts
        group = self._process.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != group:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            if argv and argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 1:
                model = Path(os.fsdecode(argv[1])).parent.parent.name  # .../<model>/<version>/model.py
                counts[model] = counts.get(model, 0) + 1
        return counts

    def _watch(self) -> None:
        expected = self.stubs()  # at readiness: one stub per instance of every model
        while not self._stop.wait(WATCH_INTERVAL_S):
            if not self.alive():
                return
            found = self.stubs()
            for model, count in expected.items():
                if found.get(model, 0) < count and not self._stop.is_set():
                    log.warning("a Python-backend stub of %s died: reloading the model", model)
                    self._repository_call(model, "unload")  # ready answers 400 until the load ends
                    self._repository_call(model, "load")
                    self.restarts += 1

    def _repository_call(self, model: str, action: str) -> None:
        request = urllib.request.Request(f"http://{self.http_url}/v2/repository/models/{model}/{action}",
                                         data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120):
                pass
        except (urllib.error.URLError, OSError) as error:
            log.warning("could not %s %s: %s", action, model, error)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        # a CPU node's Triton always says it has no NVML/DCGM: noise in a failure's reason
        text = [line for line in text if "NVML" not in line and "DCGM" not in line]
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def ready(self) -> bool:
        return self.alive() and _ready(self._ready_url)

    def wait(self) -> int:
        """Blocks until the server exits on its own; its exit code."""
        return self._process.wait() if self._process else 0

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(WATCH_INTERVAL_S * 4)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=EXIT_TIMEOUT_S + 2)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if process is not None:
            try:  # stubs left by a server that died or overran its exit timeout
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        shutil.rmtree(self._scratch, ignore_errors=True)  # the links and the default log

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_process", None) is not None:
            self.close()
