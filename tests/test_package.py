"""The package imports and its CLI answers --help without TensorRT or pycuda."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_does_not_load_gpu_modules():
    result = run_python(
        "import sys, edgedb; "
        "loaded = [m for m in ('tensorrt', 'pycuda', 'pycuda.driver') if m in sys.modules]; "
        "print(loaded)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_cli_help_works_without_gpu_modules():
    result = subprocess.run([sys.executable, "-m", "edgedb", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "edgedb" in result.stdout


def test_public_api():
    import edgedb

    for name in ("boxes_from_prob", "TextBox", "EdgeDBError", "InvalidInputError", "MissingDependencyError"):
        assert hasattr(edgedb, name)


def test_a_missing_optional_dependency_names_what_needs_it_and_the_install(monkeypatch):
    from edgedb._extras import import_optional
    from edgedb.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r"^the TensorRT backend needs tensorrt, which is not installed: "
                                                     r"pip install 'dbnet-edge\[tensorrt\]'"):
        import_optional("tensorrt", "the TensorRT backend", "pip install 'dbnet-edge[tensorrt]'")
    with pytest.raises(ImportError, match="fine-tuning needs PyTorch"):  # still an ImportError
        import_optional("edgedb_no_such_package.sub", "fine-tuning", "pip install x", name="PyTorch")
    assert import_optional("json", "anything", "nothing").dumps([]) == "[]"
