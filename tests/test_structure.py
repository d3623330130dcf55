"""The package's shape: every module imports, no import cycles, the core stays free of the CLI
toolkit (typer) and the terminal renderer (rich)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import fpt

PACKAGE = Path(fpt.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Dotted name -> source file for every module under fpt/ (packages by their __init__)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = ["fpt", *f.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at module level or inside functions (a lazy
    import still closes a cycle: it only moves the failure to run time)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # from pkg import submodule
    return names


def import_graph() -> dict[str, set[str]]:
    """fpt module -> the fpt modules it imports, including the packages whose ``__init__`` an
    import runs (``fpt.manifold.store`` runs ``fpt.manifold``). The root ``fpt`` is left out: it
    is the lazy public API, and every import runs it."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for name in _imported_names(path):
            while name and name not in mods:  # fpt.x.func -> fpt.x
                name = name.rpartition(".")[0]
            while name and name != "fpt":
                if name != mod and not mod.startswith(name + "."):
                    graph[mod].add(name)
                name = name.rpartition(".")[0]
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_a_known_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(fpt.__path__, "fpt.")]
    assert "fpt.cli" in names and "fpt.representations.artifact" in names
    for name in names:
        importlib.import_module(name)  # an ImportError here names the broken module


def test_no_import_cycle():
    graph = import_graph()
    assert "fpt.manifold" in graph["fpt.representations.artifact"]  # the graph sees package __init__s
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def _is_output_layer(mod: str) -> bool:
    last = mod.rpartition(".")[2]
    return mod == "fpt.cli" or mod.startswith("fpt.cli.") or last == "report" or last.startswith("report_")


def test_core_never_imports_typer_or_rich():
    offenders = {}
    for mod, path in _modules().items():
        if _is_output_layer(mod):
            continue
        bad = sorted(n for n in _imported_names(path) if n.split(".")[0] in ("typer", "rich"))
        if bad:
            offenders[mod] = bad
    assert not offenders, offenders


@pytest.mark.parametrize("mod", ["fpt.cli.spectrum", "fpt.report", "fpt.report_html"])
def test_output_layer_is_exempt(mod):
    assert _is_output_layer(mod)
    assert not _is_output_layer("fpt.gallery") and not _is_output_layer("fpt.reporting")
