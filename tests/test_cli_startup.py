"""Commands that compute nothing answer without importing torch (its import alone takes seconds)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

PROBE = """
import sys
from fpt.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code)
"""


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    from fpt.gallery import add_embeddings, edit_gallery

    path = tmp_path_factory.mktemp("startup") / "g.h5"
    with edit_gallery(path, create=True) as g:
        for name in ("a", "b"):
            add_embeddings(g, name, np.eye(2, 4, dtype=np.float32), [f"/{name}0", f"/{name}1"], [f"{name}0", f"{name}1"],
                           np.zeros(2, bool), "s" * 64, 4)
    return path


@pytest.mark.parametrize("args, code", [
    (["--help"], 0), (["--version"], 0), (["identify", "--help"], 0), (["train", "--help"], 0),
    (["gallery", "list", "-g", "{g}"], 0), (["gallery", "show", "a", "-g", "{g}"], 0),
    (["identify", "--top-k", "0", "x.png"], 2), (["--bogus"], 2), (["train", "--width", "0", "--out", "x.pt"], 2),
], ids=["help", "version", "identify-help", "train-help", "gallery-list", "gallery-show", "bad-top-k",
        "bad-option", "train-bad-width"])
def test_no_torch_import(gallery, args, code):
    argv = [a.format(g=gallery) for a in args]
    res = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    last = res.stdout.strip().splitlines()[-1]
    assert last == f"NO-TORCH {code}", res.stdout[-500:] + res.stderr[-500:]


def test_help_shows_flags_without_type_and_marks_required():
    res = subprocess.run([sys.executable, "-m", "fpt", "train", "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert res.returncode == 0, res.stderr
    assert "<bool>" not in res.stdout and "--json" in res.stdout
    out_line = next(ln for ln in res.stdout.splitlines() if "--out" in ln)
    assert "required" in out_line or "*" in out_line  # --out is required and marked so
    assert "--p" in res.stdout and "--k" in res.stdout
