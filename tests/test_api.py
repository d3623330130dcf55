"""The public API (``import fpt``): lazy names, and the README's quick-start run exactly as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fpt

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", text, re.S)
    assert m, "README has no quick-start block"
    return m.group(1)


def test_quickstart_is_about_ten_lines():
    assert len(quickstart().strip().splitlines()) <= 12


def test_every_public_name_resolves():
    for name in fpt.__all__:
        assert getattr(fpt, name) is not None, name
    assert issubclass(fpt.InputError, fpt.FptError)
    with pytest.raises(AttributeError):
        fpt.no_such_name  # noqa: B018


def test_import_fpt_stays_light():
    code = "import sys, fpt; print(sorted(m for m in ('torch', 'numpy', 'h5py', 'rich', 'typer') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _save(folder: Path, stem: str, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8)).save(folder / f"{stem}.png")


def _model_a(rng) -> np.ndarray:  # nearest-neighbour 2x upsampling: a strong period-2 grid
    return np.repeat(np.repeat(rng.random((48, 48, 3)), 2, axis=0), 2, axis=1)


def _model_b(rng) -> np.ndarray:  # smooth content plus fine white noise: no grid
    base = np.repeat(np.repeat(rng.random((12, 12, 3)), 8, axis=0), 8, axis=1)
    return 0.7 * base + 0.3 * rng.random((96, 96, 3))


def test_readme_quickstart_runs(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):
        _save(tmp_path / "images" / "model-a", f"a{i}", _model_a(rng))
        _save(tmp_path / "images" / "model-b", f"b{i}", _model_b(rng))
    _save(tmp_path / "suspects", "s0", _model_a(rng))
    _save(tmp_path / "suspects", "s1", _model_b(rng))
    monkeypatch.chdir(tmp_path)
    exec(compile(quickstart(), "README quick-start", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert [ln.split()[0] for ln in lines[:2]] == ["suspects/s0.png", "suspects/s1.png"]
    assert all(ln.split()[1] in ("model-a", "model-b", "unknown") for ln in lines[:2])
    assert re.fullmatch(r"(same model|different models) -?\d\.\d{3}", lines[2])
    assert re.fullmatch(r"HP ratio of the mean spectrum: \d\.\d{3}", lines[3])
    g = fpt.open_gallery(tmp_path / "gallery.h5")
    assert sorted(g.models) == ["model-a", "model-b"] and all(m.count == 4 for m in g.models.values())
    # Enrolling the same folder again adds nothing (same sha256), and the gallery is unchanged.
    again = fpt.enroll("model-a", tmp_path / "images" / "model-a", tmp_path / "gallery.h5")
    assert (again.added, again.already_enrolled, again.total) == (0, 4, 4)


def test_enroll_commits_in_chunks_and_reports_failures(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(5):
        _save(tmp_path / "a", f"a{i}", _model_a(rng))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    res = fpt.enroll("a", tmp_path / "a", tmp_path / "g.h5", chunk=2)
    assert (res.added, res.total, len(res.failures)) == (5, 5, 1)
    assert res.threshold is None  # one model: nothing to calibrate against
    with pytest.raises(fpt.EmptyInputError, match="no readable images"):
        fpt.enroll("b", tmp_path / "a" / "broken.png", tmp_path / "g.h5")
    assert sorted(fpt.open_gallery(tmp_path / "g.h5").models) == ["a"]


def test_enroll_stores_absolute_paths_and_reports_failures_as_they_come(tmp_path, monkeypatch):
    """Relative inputs are stored as absolute paths (as `fpt enroll` always did); ``on_failure``
    hears of each unreadable file during the loop, so a caller can report it even when the
    enrolment then fails for want of readable images."""
    rng = np.random.default_rng(2)
    for i in range(2):
        _save(tmp_path / "a", f"a{i}", _model_a(rng))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    monkeypatch.chdir(tmp_path)
    heard = []
    res = fpt.enroll("a", "a", "g.h5", on_failure=heard.append)
    assert [Path(f.path).name for f in heard] == ["broken.png"] and res.failures == heard
    paths = fpt.open_gallery("g.h5").get("a").paths
    assert len(paths) == 2 and all(Path(p).is_absolute() and Path(p).exists() for p in paths)
    heard.clear()
    with pytest.raises(fpt.EmptyInputError):
        fpt.enroll("b", "a/broken.png", "g.h5", on_failure=heard.append)
    assert len(heard) == 1


def test_verify_decides_on_the_gallery_calibrated_likelihood_ratio_like_the_cli(tmp_path):
    """fpt.verify uses fpt verify's decision: log10 LR (fitted on the gallery) >= min_log10_lr;
    with a raw threshold the cosine decides and the LR is still reported."""
    rng = np.random.default_rng(1)
    for i in range(4):
        _save(tmp_path / "a", f"a{i}", _model_a(rng))
        _save(tmp_path / "b", f"b{i}", _model_b(rng))
    _save(tmp_path / "pa", "p0", _model_a(rng))
    _save(tmp_path / "pb", "p0", _model_b(rng))
    ex = fpt.load_extractor(device="cpu")
    gal = tmp_path / "g.h5"
    fpt.enroll("model-a", tmp_path / "a", gal, ex)
    fpt.enroll("model-b", tmp_path / "b", gal, ex)
    v = fpt.verify(tmp_path / "pa", tmp_path / "a", gal, ex)
    assert v.log10_lr is not None and v.verbal and v.min_log10_lr == 0.0
    assert v.threshold_source.startswith("log10 LR >= 0 (LR calibrated on g.h5")
    assert v.same_model == (v.log10_lr >= 0.0)
    strict = fpt.verify(tmp_path / "pa", tmp_path / "a", gal, ex, min_log10_lr=v.log10_lr + 1)
    assert not strict.same_model and strict.log10_lr == pytest.approx(v.log10_lr)
    raw = fpt.verify(tmp_path / "pa", tmp_path / "b", gal, ex, threshold=-1.0)
    assert raw.same_model and raw.threshold == -1.0 and raw.threshold_source == "--threshold"
    assert raw.log10_lr is not None  # reported, not deciding
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    failed = []
    with pytest.raises(fpt.EmptyInputError, match="side B"):
        fpt.verify(tmp_path / "pa", tmp_path / "bad", gal, ex, on_failure=failed.append)
    assert [f.path.name for f in failed] == ["x.png"]
