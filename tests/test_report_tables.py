"""Tables stay readable in a narrow terminal or a pipe: text columns fold, numbers never split."""

from __future__ import annotations

import io
import re

from rich.console import Console

from fpt.report import print_table


def _render(width: int) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width, markup=False, color_system=None)
    print_table("synth info", ["architecture family with a long name", "models", "reached", "loss p50", "steps"],
                [["K2-L1-post-deconv-relu-bn and more text", 147, 0.005123, 0.0075801946222782135, 100],
                 ["grid-D5", 12, 1.0, 0.0051, None]], console_=con)
    return buf.getvalue()


def test_numbers_are_never_split_over_lines():
    for width in (40, 50, 80):
        text = _render(width)
        lines = text.splitlines()
        # every number appears whole on one line ...
        for number in ("147", "0.005123", "0.00758", "100", "12", "0.0051"):
            assert any(re.search(rf"(?<![\d.]){re.escape(number)}(?![\d.])", ln) for ln in lines), (width, number, text)
        # ... and no cell of a number column holds a fragment of one ("0.0" over "05123")
        assert not any(re.search(r"│\s+0\.0\s+│", ln) for ln in lines), text
        assert max(len(ln) for ln in lines) <= width


def test_text_is_folded_not_lost():
    for width in (40, 50, 80):
        text = _render(width)
        columns: dict[int, str] = {}
        for line in text.splitlines():
            for k, cell in enumerate(line.split("│")[1:-1]):
                columns[k] = columns.get(k, "") + cell.strip()
        # folded over lines, but every character of the name is there, in order, in one column
        assert any("K2-L1-post-deconv-relu-bnandmoretext" in c.replace(" ", "") for c in columns.values()), text


def test_wide_enough_terminal_keeps_the_table_layout():
    header = next(ln for ln in _render(80).splitlines() if "models" in ln)
    assert "reached" in header and "loss p50" in header  # one header row, not one block per row
