"""Every third-party import under fpt/ is a declared, bounded dependency, pinned in constraints.txt.

Guards against the failure where a package that happens to be installed (click, once pulled in by
typer) is imported but not declared: the suite passed while a fresh install crashed.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import names that differ from their distribution's name on PyPI.
IMPORT_TO_DIST = {"PIL": "pillow"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def third_party_imports(root: Path) -> dict[str, set[str]]:
    """Top-level module name -> files importing it, for absolute imports outside the stdlib."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "fpt" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_import_is_declared():
    declared = {_requirement_name(r) for r in _pyproject()["project"]["dependencies"]}
    imports = third_party_imports(REPO / "fpt")
    assert {"torch", "typer", "numpy"} <= set(imports)  # the scan sees real imports
    missing = {m: sorted(files) for m, files in imports.items()
               if _norm(IMPORT_TO_DIST.get(m, m)) not in declared}
    assert not missing, f"imported under fpt/ but not in [project] dependencies: {missing}"


def test_every_dependency_is_bounded_both_ways():
    proj = _pyproject()["project"]
    reqs = proj["dependencies"] + [r for extra in proj["optional-dependencies"].values() for r in extra]
    unbounded = [r for r in reqs if ">=" not in r or "<" not in r.replace("<=", "")]
    assert not unbounded, f"each dependency needs >=tested,<next-major: {unbounded}"


def test_constraints_pin_every_dependency_inside_its_bounds():
    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line is not an exact pin: {line!r}"
            pins[_norm(name)] = version
    proj = _pyproject()["project"]
    for text in proj["dependencies"] + proj["optional-dependencies"]["test"]:
        req = Requirement(text)
        assert _norm(req.name) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[_norm(req.name)], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[_norm(req.name)]}, outside {req.specifier}")
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"

