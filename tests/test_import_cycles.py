"""No import circles inside addon/ or lipsync_core/.

Every import counts, module-level and inside functions alike: a function-level import is how a circle is usually
hidden, and it still ties the two modules to each other (and makes the order of first calls matter). Only imports
of the package's own modules are edges; `from .pkg import name` points at pkg/name.py when that is a module,
else at pkg/__init__.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(pkg_root: Path, path: Path) -> str:
    parts = [pkg_root.name, *path.relative_to(pkg_root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(pkg_root: Path) -> dict[str, set[str]]:
    """module -> the package's own modules it imports (dotted names rooted at the package folder's name)."""
    files = {module_name(pkg_root, p): p for p in pkg_root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}

    def resolve(dotted: str) -> str | None:
        while dotted:
            if dotted in files:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        here = mod if is_pkg else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # `from . import x` / `from .pkg import mod`: the submodule when there is one, else the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                if t.split(".")[0] != pkg_root.name:
                    continue
                found = resolve(t)
                if found is not None and found != mod:
                    graph[mod].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


@pytest.mark.parametrize("package", ["addon", "lipsync_core"])
def test_no_import_circles(package):
    graph = import_graph(ROOT / package)
    assert len(graph) > 5 and any(graph.values()), "the import graph came out empty: the parser is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_check_sees_circles(tmp_path):
    """A made package with a function-level circle through a sub-package is caught and named."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import thing\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from . import a\nfrom .sub import b\n")  # imports into the circle, not part of it
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None
