"""Cohort store and CLI: round trip, extractor binding, identify/verify with a cohort, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_embed import FakeExtractor, real_extractor, write_model_folder

import fpt.cli.attribution as cli_attr
from fpt.cli import main
from fpt.cohort import cohort_path_for, find_cohort, load_cohort, make_cohort, save_cohort
from fpt.errors import ExtractorMismatchError, StoreError

REPO = Path(__file__).resolve().parents[1]


def _toy_cohort(sha: str = "a" * 64, n_models: int = 6, per_model: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_models, 16))
    emb = np.repeat(centres, per_model, axis=0) + 0.3 * rng.normal(size=(n_models * per_model, 16))
    labels = np.repeat(np.arange(n_models), per_model)
    return make_cohort([f"c{i}" for i in range(n_models)], emb, labels, sha, {"kind": "test"}, top_n=4)


def test_cohort_round_trip_and_refuses_other_extractor(tmp_path):
    c = _toy_cohort()
    p = save_cohort(c, tmp_path / "x.cohort.h5")
    d = load_cohort(p, "a" * 64)
    assert d.names == c.names and np.array_equal(d.labels, c.labels)
    assert np.allclose(d.embeddings, c.embeddings) and d.source == {"kind": "test"}
    s = np.linspace(-2, 2, 5)
    for k, cal in c.calibration.calibrators.items():
        assert np.allclose(d.calibration.calibrators[k].log10_lr(s), cal.log10_lr(s))
    assert d.fingerprints().shape == (6, 16)
    with pytest.raises(ExtractorMismatchError) as e:
        load_cohort(p, "b" * 64)
    assert e.value.exit_code == 4 and "fpt cohort build" in e.value.one_line()
    # found beside a checkpoint by name; absent -> None; an explicit missing file is an error
    assert cohort_path_for(tmp_path / "x.pt") == p
    assert find_cohort("a" * 64, tmp_path / "x.pt").names == c.names
    assert find_cohort("a" * 64, tmp_path / "y.pt") is None
    with pytest.raises(Exception, match="no such cohort"):
        find_cohort("a" * 64, None, tmp_path / "none.h5")
    # another fpt store is refused as a cohort
    from fpt.gallery import Gallery, save_gallery

    save_gallery(Gallery(path=tmp_path / "g.h5"), tmp_path / "g.h5")
    with pytest.raises(StoreError, match="not an fpt cohort"):
        load_cohort(tmp_path / "g.h5")


@pytest.fixture
def toy(tmp_path, monkeypatch):
    ex = FakeExtractor()
    monkeypatch.setattr(cli_attr, "load_extractor", lambda path, device: ex)
    enroll = {m: write_model_folder(tmp_path / "enroll", m, 8, size=64, seed=1) for m in range(3)}
    probes = {m: write_model_folder(tmp_path / "probe", m, 2, size=64, seed=2) for m in range(4)}
    cohort_dir = tmp_path / "cohort"
    for m in range(10, 16):  # toy generators that are never enrolled
        write_model_folder(cohort_dir, m, 12, size=64, seed=3)
    g = tmp_path / "g.h5"
    for m, d in enroll.items():
        assert main(["enroll", f"model{m}", str(d), "--gallery", str(g)]) == 0
    return tmp_path, g, probes, cohort_dir


def test_cohort_build_from_folders_and_identify_verify_with_it(toy, capsys):
    tmp_path, g, probes, cohort_dir = toy
    out = tmp_path / "c.cohort.h5"
    capsys.readouterr()
    assert main(["cohort", "build", "--images", str(cohort_dir), "--out", str(out), "--top-n", "4", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"] == 6 and info["images"] == 72 and info["extractor_sha256"] == "a" * 64
    assert {(r["n_probe"], r["n_model"]) for r in info["calibration"]["sizes"]} >= {(1, 5), (1, 10), (5, 5)}
    assert main(["cohort", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == 6
    for src in ("cohort", "gallery"):
        code = main(["identify", str(probes[1]), "--gallery", str(g), "--cohort", str(out), "--lr-from", src,
                     "--json"])
        res = json.loads(capsys.readouterr().out)
        assert code in (0, 10) and res["lr_from"] == src
        for r in res["results"]:
            assert r["best_model"] == "model1"
            assert isinstance(r["score"], float) and isinstance(r["score_norm"], float)
            assert isinstance(r["log10_lr"], float) and r["verbal"]
            assert (r["model"] == "model1") == (r["log10_lr"] >= 0)
    code = main(["lineage", "--gallery", str(g), "--scores", "snorm", "--cohort", str(out), "--json",
                 "--out", str(tmp_path / "lin.png")])
    lin = json.loads(capsys.readouterr().out)
    d = np.array(lin["cosine_distance"])
    assert code == 0 and lin["models"] == ["model0", "model1", "model2"] and d.min() >= 0 and d.max() == 1.0
    code = main(["verify", str(probes[2]), str(probes[2]), "--gallery", str(g), "--cohort", str(out),
                 "--lr-from", "cohort", "--json"])
    v = json.loads(capsys.readouterr().out)
    assert v["score_norm"] is not None and v["log10_lr"] is not None and v["verbal"]
    assert code == (0 if v["same_model"] else 10) and v["same_model"] == (v["log10_lr"] >= 0)


def test_identify_refuses_another_extractors_cohort(toy, capsys, monkeypatch):
    tmp_path, g, probes, _ = toy
    other = save_cohort(_toy_cohort(sha="b" * 64), tmp_path / "other.cohort.h5")
    capsys.readouterr()
    code = main(["identify", str(probes[0]), "--gallery", str(g), "--cohort", str(other)])
    err = capsys.readouterr().err
    assert code == 4 and "cohort was built with extractor bbbbbbbbbbbb" in err
    code = main(["identify", str(probes[0]), "--gallery", str(g), "--lr-from", "cohort"])
    assert code == 2 and "no calibrated cohort" in capsys.readouterr().err
    code = main(["identify", str(probes[0]), "--gallery", str(g), "--lr-from", "magic"])
    assert code == 2
    # a stale cohort beside the checkpoint (weights replaced, cohort not rebuilt): refused for
    # --lr-from cohort; the default gallery-calibrated LR warns and carries on without it
    ex = FakeExtractor()
    ex.path = tmp_path / "x.pt"
    monkeypatch.setattr(cli_attr, "load_extractor", lambda path, device: ex)
    save_cohort(_toy_cohort(sha="b" * 64), tmp_path / "x.cohort.h5")
    code = main(["identify", str(probes[0]), "--gallery", str(g), "--json"])
    cap = capsys.readouterr()
    assert code == 0 and "cohort was built with extractor bbbbbbbbbbbb" in cap.err
    assert json.loads(cap.out)["results"][0]["score_norm"] is None
    assert main(["identify", str(probes[0]), "--gallery", str(g), "--lr-from", "cohort"]) == 4


def _fpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FPT_THREADS="1")
    return subprocess.run(["fpt", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_cohort_cli_end_to_end(tmp_path):
    ckpt = real_extractor(tmp_path / "tiny.pt")
    root = tmp_path / "cohort"
    for m in range(20, 24):
        write_model_folder(root, m, 7, size=48, seed=4)
    out = tmp_path / "tiny.cohort.h5"
    r = _fpt("cohort", "build", "--images", str(root), "--extractor", str(ckpt), "--device", "cpu",
             "--out", str(out), "--top-n", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 models, 28 images" in " ".join(r.stdout.split())
    r = _fpt("cohort", "info", str(out), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["images"] == 28
    # bad input: one clear line, non-zero exit, nothing written
    r = _fpt("cohort", "build", "--out", str(tmp_path / "x.h5"), cwd=tmp_path)
    assert r.returncode == 2 and "exactly one of" in r.stderr and not (tmp_path / "x.h5").exists()
    r = _fpt("cohort", "build", "--pool", "p.h5", "--out", str(tmp_path / "x.h5"), cwd=tmp_path)
    assert r.returncode == 2 and "--photos" in r.stderr
    r = _fpt("cohort", "info", str(tmp_path / "missing.h5"), cwd=tmp_path)
    assert r.returncode == 2 and "no such cohort file" in r.stderr
