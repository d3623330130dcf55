"""The CLI stays a thin shell: no function in fpt/cli/ longer than 60 lines (signature, docstring
and body), so that a command reads as parse -> one core call -> render."""

from __future__ import annotations

import ast
from pathlib import Path

import fpt.cli

CLI = Path(fpt.cli.__file__).resolve().parent
MAX_LINES = 60


def long_functions(folder: Path, limit: int = MAX_LINES) -> dict[tuple[str, str], int]:
    """(file name, function name) -> lines, for every (nested) function longer than ``limit``."""
    out = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out[(path.name, node.name)] = n
    return out


def test_long_functions_finds_a_long_one(tmp_path):
    (tmp_path / "m.py").write_text("def short():\n    pass\n\n\ndef long():\n" + "    x = 1\n" * 60)
    assert long_functions(tmp_path) == {("m.py", "long"): 61}


def test_no_cli_function_is_longer_than_60_lines():
    found = long_functions(CLI)
    assert not found, f"functions in fpt/cli/ over {MAX_LINES} lines: {found}"
