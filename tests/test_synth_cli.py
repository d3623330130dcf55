"""End-to-end `fpt synth` on tiny generated images: build, resume, info, sample, shard/merge, ffd."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fpt.cli import main




@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(4):
        img = rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"p{i}.png")
    return d


COMMON = ["--arch", "K1-L1-post-nearest-*-none", "--grid-depths", "3", "--size", "16", "--width", "4",
          "--batch", "4", "--max-steps", "3", "--crops", "16", "--device", "cpu"]


def test_synth_build_resume_info_sample(tmp_path, photos, capsys):
    pool = tmp_path / "pool.h5"
    assert main(["--threads", "1", "synth", "--images", str(photos), "--out", str(pool), *COMMON, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trained"] == 5 and out["skipped"] == 0
    assert {r["group"] for r in out["summary"]} == {"fd", "grid", "all"}
    assert main(["--threads", "1", "synth", "--images", str(photos), "--out", str(pool), *COMMON, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trained"] == 0 and out["skipped"] == 5
    assert main(["synth", "info", str(pool), "--json", "--models", "--by", "A"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["models"] == 5 and len(info["records"]) == 5 and info["config"]["size"] == 16
    assert main(["synth", "info", str(pool)]) == 0
    assert "reached" in capsys.readouterr().out
    samples = tmp_path / "samples"
    assert main(["synth", "sample", str(pool), "grid-D3/s000", str(photos / "p0.png"), "--out", str(samples), "--device", "cpu"]) == 0
    written = list(samples.glob("*.png"))
    assert len(written) == 1
    arr = np.asarray(Image.open(written[0]))
    assert arr.shape == (36, 44, 3)


def test_synth_shard_merge_and_errors(tmp_path, photos, capsys):
    for i in range(2):
        assert main(["synth", "--images", str(photos), "--out", str(tmp_path / f"s{i}.h5"), *COMMON, "--shard", f"{i}/2"]) == 0
    assert main(["synth", "merge", str(tmp_path / "m.h5"), str(tmp_path / "s0.h5"), str(tmp_path / "s1.h5")]) == 0
    assert "merged 5 models" in capsys.readouterr().out
    capsys.readouterr()
    assert main(["synth", "--out", str(tmp_path / "x.h5")]) == 2  # --images is required
    assert "--images is required" in capsys.readouterr().err
    assert main(["synth", "--images", str(photos), "--arch", "K9-*"]) == 2
    assert main(["synth", "--images", str(photos), "--shard", "2/2", *COMMON[:2]]) == 2
    assert main(["synth", "info", str(photos / "p0.png")]) == 3  # not a pool
    for missing in ("nope/s000", "K2-L2-pre-deconv-tanh-bn/s009"):  # not in the pool
        assert main(["synth", "sample", str(tmp_path / "m.h5"), missing, str(photos), "--out", str(tmp_path / "o")]) == 3
        assert "no model" in capsys.readouterr().err


def test_synth_ffd_prints_a_number(tmp_path, photos, capsys):
    pool = tmp_path / "pool.h5"
    assert main(["synth", "--images", str(photos), "--out", str(pool), *COMMON]) == 0
    rng = np.random.default_rng(1)
    for k in range(3):
        d = tmp_path / "real" / f"gen{k}"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"{i}.png")
    capsys.readouterr()
    assert main(["synth", "ffd", str(pool), "--real", str(tmp_path / "real"), "--images", str(photos),
                 "--n", "3", "--size", "16", "--ablation", "--per-model", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    rows = {r["set"]: r for r in res["ffd"]}
    assert rows["All"]["models"] == 4 and rows["All"]["ffd"] > 0
    assert "w/o A" in rows and "grid generators" in rows
    assert res["real_models"] == ["gen0", "gen1", "gen2"] and len(res["per_model"]) == 3
