"""Optional dependencies: import one, or say what needs it and how to install it.

Everything beyond the CPU path (TensorRT and pycuda, OpenVINO, PyTorch, the Triton
client, matplotlib, ...) is imported only when a feature asks for it, through
:func:`import_optional`, so ``import edgedb`` and the CPU path work without them and a
missing one is a :class:`MissingDependencyError` that names the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

from edgedb.errors import MissingDependencyError


def import_optional(module: str, needed_by: str, install: str, *, name: Optional[str] = None) -> ModuleType:
    """The module ``module`` (a dotted name), or MissingDependencyError: "``needed_by`` needs
    ``name`` (default: the top-level package), which is not installed: ``install``"."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        name = name or module.split(".")[0]
        raise MissingDependencyError(f"{needed_by} needs {name}, which is not installed: {install}") from error
