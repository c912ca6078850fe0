"""JetPack 6 runs Python 3.10 (aarch64): edgedb/ must need nothing newer. Checked
statically with vermin (pinned in constraints.txt), so a 3.11 feature fails here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgedb"


def _vermin() -> str:
    found = shutil.which("vermin", path=str(Path(sys.executable).parent))
    assert found, "vermin is not installed: it is in the dev extra with pytest (bash scripts/setup.sh)"
    return found


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_vermin(), "-t=3.10-", "--violations", "--no-tips", "--eval-annotations", str(path)],
                          capture_output=True, text=True, timeout=300)


def test_edgedb_needs_no_python_newer_than_3_10():
    result = _check(PACKAGE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_a_3_11_feature(tmp_path):
    (tmp_path / "new.py").write_text("try:\n    pass\nexcept* ValueError:\n    pass\n")
    result = _check(tmp_path)
    assert result.returncode != 0 and "3.11" in result.stdout
