"""The package's layers, read from the source (no module is imported): every import inside
``edgedb/``, at the top of a module or inside a function, goes to the same layer or one
below, and no modules import each other in a circle.

``LAYERS`` is the one statement of the order (ARCHITECTURE.md explains it). A module
belongs to the first entry that is its name or a package above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgedb"

#: Lowest first. A module may import from its own layer and from the layers before it.
LAYERS = [
    ("foundation", ["edgedb.errors", "edgedb._extras", "edgedb._version", "edgedb._native"]),
    ("basics", ["edgedb.spec", "edgedb._checks", "edgedb._files", "edgedb.memory"]),
    ("data", ["edgedb.preprocess", "edgedb.boxes", "edgedb.reference", "edgedb.evaluation", "edgedb.synthetic",
              "edgedb.visualize", "edgedb.sessions", "edgedb.sources", "edgedb.tiling"]),
    ("graph", ["edgedb.graph"]),
    ("models", ["edgedb.models"]),
    ("precision", ["edgedb.precision"]),
    ("engine", ["edgedb.engine"]),
    ("backends", ["edgedb.backends"]),
    ("detector", ["edgedb.detector"]),
    ("applications", ["edgedb.compare", "edgedb.video", "edgedb.bench", "edgedb.train", "edgedb.serving"]),
    ("interfaces", ["edgedb.cli", "edgedb.__main__", "edgedb"]),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    for native in PACKAGE.glob("_native*"):  # the C++ core, an extension module
        modules["edgedb._native"] = native
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The edgedb modules ``name`` imports (``from edgedb.x import y`` counts as edgedb.x.y
    when that is a module, else edgedb.x)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target != "edgedb" and not target.startswith("edgedb."):
                continue
            if isinstance(node, ast.Import):
                while target not in modules:  # import edgedb.x.y reads edgedb.x too
                    target = target.rpartition(".")[0]
            assert target in modules, f"{name} imports {target}, which is no module of edgedb (line {node.lineno})"
            if target != name:
                found.add(target)
    return found


def _layer(name: str) -> int:
    for index, (_, members) in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members if member != "edgedb"):
            return index
    if name == "edgedb":
        return len(LAYERS) - 1
    raise AssertionError(f"{name} is in no layer: add it to LAYERS in tests/test_layers.py and to ARCHITECTURE.md")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items() if path.suffix == ".py"}


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
              for name, targets in _graph().items() for target in sorted(targets) if _layer(target) > _layer(name)]
    assert not upward, "imports that climb a layer:\n" + "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    circles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_imports_of_every_form(tmp_path):
    """The parser itself: absolute, relative, function-local and ``from package import module``."""
    package = tmp_path / "edgedb"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__", "errors", "sub/__init__", "sub/a", "sub/b"):
        (package / f"{name}.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\nfrom ..errors import X\ndef f():\n    import edgedb.sub.b\n")
    (package / "sub" / "b.py").write_text("from edgedb.sub import a\nfrom edgedb import errors\n")
    modules = {"edgedb": package / "__init__.py", "edgedb.errors": package / "errors.py",
               "edgedb.sub": package / "sub/__init__.py", "edgedb.sub.a": package / "sub/a.py",
               "edgedb.sub.b": package / "sub/b.py"}
    assert _imported("edgedb.sub.a", modules["edgedb.sub.a"], modules) == {"edgedb.sub.b", "edgedb.errors"}
    assert _imported("edgedb.sub.b", modules["edgedb.sub.b"], modules) == {"edgedb.sub.a", "edgedb.errors"}
