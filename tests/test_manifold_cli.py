"""End-to-end CLI: fpt manifold build/info, fpt artifact, fpt analyse, on tiny generated images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fpt.cli import main


def _img(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(arr * 255, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def data(tmp_path, rng):
    """real/ = smooth colour ramps + mild noise; gen/<model>/ = the same kind of image plus a
    model-specific pattern (a period-2 grid or period-4 stripes)."""
    yy, xx = np.mgrid[:36, :36]

    def smooth():
        a, b, c = rng.random(3)
        ramp = (a * yy / 36 + (1 - a) * xx / 36)[..., None] * np.array([b, c, 1 - b])
        return 0.3 + 0.4 * ramp + rng.normal(size=(36, 36, 3)) * 0.03

    real = tmp_path / "real"
    for i in range(16):
        _img(real / f"r{i:02d}.png", smooth())
    gen = tmp_path / "gen"
    patterns = {
        "gridgan": 0.15 * ((yy % 2 == 0) & (xx % 2 == 0))[..., None],
        "stripevae": 0.15 * (xx % 4 < 2)[..., None],
    }
    for name, pat in patterns.items():
        for i in range(8):
            _img(gen / name / f"{name}{i}.png", smooth() + pat)
    return tmp_path, real, gen


def test_build_info_artifact_round_trip(data, capsys):
    tmp, real, gen = data
    m = tmp / "m.h5"
    assert main(["manifold", "build", str(real), "--space", "rgb,freq", "--size", "32", "--out", str(m), "--json",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 16 and set(out["spaces"]) == {"rgb", "freq"}

    assert main(["manifold", "info", str(m), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["references"] == 16
    assert info["spaces"]["freq"]["spec"] == {"space": "freq", "size": 32, "fit": "crop", "freq_eps": 1e-4,
                                             "extractor": "", "extractor_sha256": ""}

    outdir = tmp / "art"
    assert main(["artifact", str(real / "r03.png"), str(gen / "gridgan"), "--manifold", str(m), "--out", str(outdir),
                 "--json", "--device", "cpu", "--no-figures"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sign_convention"] == "a(x) = x - x*"
    member = [r for r in res["results"] if r["path"].endswith("r03.png")]
    assert {r["space"] for r in member} == {"rgb", "freq"}
    assert all(r["distance"] == 0 and r["nearest_path"].endswith("r03.png") for r in member)
    fake = [r for r in res["results"] if "gridgan" in r["path"]]
    assert len(fake) == 16 and all(r["distance"] > 0 for r in fake)
    saved = np.load(outdir / "gridgan0.freq.npz")
    assert saved["artifact"].shape == (3, 32, 32) and saved["query_view"].shape == (3, 32, 32)
    assert not list(outdir.glob("*.png"))
    assert json.loads((outdir / "artifacts.json").read_text())["results"]
    # figures: x, x*, a (and the spectra for freq)
    figs = tmp / "figs"
    assert main(["artifact", str(gen / "gridgan" / "gridgan0.png"), "--manifold", str(m), "--out", str(figs),
                 "--json"]) == 0
    capsys.readouterr()
    assert (figs / "gridgan0.freq.png").stat().st_size > 10_000 and (figs / "gridgan0.rgb.png").exists()

    # human table
    assert main(["artifact", str(real / "r03.png"), "--manifold", str(m), "--space", "rgb", "--device", "cpu"]) == 0
    assert "r03.png" in capsys.readouterr().out


def test_analyse_folder_with_artifacts_and_factors(data, capsys):
    tmp, real, gen = data
    m = tmp / "m.h5"
    assert main(["manifold", "build", str(real), "--space", "rgb", "--size", "32", "--out", str(m)]) == 0
    csv = tmp / "factors.csv"
    csv.write_text("model,upsampling,family\ngridgan,deconv,gan\nstripevae,none,vae\n")
    emb = tmp / "emb.npz"
    capsys.readouterr()
    assert main(["analyse", str(gen), "--representation", "artifact-rgb", "--manifold", str(m),
                 "--factors", str(csv), "--save", str(emb), "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    sep = res["separability"]
    assert sep["models"] == ["gridgan", "stripevae"] and sep["n"] == 16
    assert sep["fdr"] > 2 and sep["nmi_kmeans"] == pytest.approx(1.0) and sep["silhouette"] > 0
    assert {f["factor"] for f in res["factor_nmi"]} == {"upsampling", "family"}
    # the saved embeddings analyse the same from the .npz
    assert main(["analyse", str(emb), "--json", "--figure", str(tmp / "pca.png")]) == 0
    assert (tmp / "pca.png").stat().st_size > 5_000
    again = json.loads(capsys.readouterr().out)
    assert again["separability"]["fdr"] == pytest.approx(sep["fdr"])
    # raw-space representation, human output
    assert main(["analyse", str(gen), "--representation", "rgb"]) == 0
    assert "FD ratio" in capsys.readouterr().out


def test_bad_inputs_give_one_line_errors(data, tmp_path, capsys):
    tmp, real, gen = data
    assert main(["artifact", str(real / "r00.png"), "--manifold", str(tmp / "nope.h5")]) == 3
    assert "no such manifold" in capsys.readouterr().err
    junk = tmp / "junk.h5"
    junk.write_text("hello")
    assert main(["artifact", str(real / "r00.png"), "--manifold", str(junk)]) == 3
    assert main(["manifold", "build", str(real), "--space", "pixels", "--out", str(tmp / "x.h5")]) == 2
    assert "unknown space" in capsys.readouterr().err
    (tmp / "empty").mkdir()
    assert main(["manifold", "build", str(tmp / "empty"), "--out", str(tmp / "x.h5")]) == 2
    assert not (tmp / "x.h5").exists()
    assert main(["analyse", str(gen), "--representation", "artifact-rgb"]) == 2
    assert "needs --manifold" in capsys.readouterr().err
    assert main(["analyse", str(gen / "gridgan"), "--representation", "rgb"]) == 2  # one model only
    assert main(["analyse", str(gen), "--representation", "nonsense"]) == 2
    m = tmp / "m.h5"
    assert main(["manifold", "build", str(real), "--size", "32", "--out", str(m)]) == 0
    assert main(["artifact", str(real / "r00.png"), "--manifold", str(m), "--space", "freq"]) == 2
    assert "no 'freq' space" in capsys.readouterr().err
