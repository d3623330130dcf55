"""fpt.separability: separability summary, NMI by design factor, factor tables, .npz input."""

from __future__ import annotations

import numpy as np
import pytest

from fpt.errors import ConfigError, InputError
from fpt.separability import (
    factor_nmi,
    folder_labels,
    load_npz,
    read_factor_csv,
    separability,
    synth_factor_table,
)


def _factor_data(rng, n_per=12):
    """8 models over factors U (2 values) x A (2) x N (2); fingerprints depend on U only."""
    table, xs, labels = {}, [], []
    for u in ("deconv", "nearest"):
        for a in ("relu", "tanh"):
            for nrm in ("bn", "none"):
                m = f"{u}-{a}-{nrm}"
                table[m] = {"U": u, "A": a, "N": nrm}
                centre = np.zeros(6)
                centre[0] = 8.0 if u == "deconv" else -8.0
                xs.append(centre + rng.normal(size=(n_per, 6)))
                labels += [m] * n_per
    return np.concatenate(xs), labels, table


def test_factor_nmi_finds_the_factor_that_shapes_fingerprints(rng):
    x, labels, table = _factor_data(rng)
    res = {r.factor: r for r in factor_nmi(x, labels, table)}
    assert res["U"].nmi == pytest.approx(1.0)
    assert res["A"].nmi < 0.1 and res["N"].nmi < 0.1
    assert res["U"].k == 2 and res["U"].values == {"deconv": 48, "nearest": 48}
    per_model = {r.factor: r.nmi for r in factor_nmi(x, labels, table, unit="model")}
    assert per_model["U"] == pytest.approx(1.0)


def test_factor_nmi_rejects_missing_models_and_constant_factors(rng):
    x, labels, table = _factor_data(rng)
    del table["deconv-relu-bn"]
    with pytest.raises(ConfigError, match="no design factors"):
        factor_nmi(x, labels, table)
    flat = {m: {"U": "same"} for m in set(labels)}
    with pytest.raises(ConfigError, match="no factor varies"):
        factor_nmi(x, labels, flat)


def test_separability_summary(rng):
    x, labels, _ = _factor_data(rng)
    sep = separability(x, labels)
    assert sep.n == 96 and len(sep.models) == 8 and sep.counts["deconv-relu-bn"] == 12
    assert sep.fdr is not None and sep.fdr == pytest.approx(sep.inter_fd / sep.intra_fd)
    assert -1 <= sep.silhouette <= 1 and sep.davies_bouldin > 0
    # models with < 4 images are left out of FDR, with a note
    sep2 = separability(np.concatenate([x, x[:2]]), labels + ["tiny", "tiny"])
    assert any("tiny" in n for n in sep2.notes) and sep2.fdr is not None
    with pytest.raises(ConfigError, match="two models"):
        separability(x, ["one"] * len(labels))


def test_read_factor_csv(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("model,upsampling,activation\nstylegan2,conv,lrelu\nldm, vae-decoder ,silu\n\n")
    assert read_factor_csv(p) == {"stylegan2": {"upsampling": "conv", "activation": "lrelu"},
                                  "ldm": {"upsampling": "vae-decoder", "activation": "silu"}}
    bad = tmp_path / "bad.csv"
    bad.write_text("model,upsampling\na,x,extra\n")
    with pytest.raises(InputError, match="line 2"):
        read_factor_csv(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("model,u\na,x\na,y\n")
    with pytest.raises(InputError, match="twice"):
        read_factor_csv(dup)
    with pytest.raises(InputError):
        read_factor_csv(tmp_path / "none.csv")


def test_synth_factor_table_from_ids():
    t = synth_factor_table(["K2-L1-post-deconv-relu-bn/s003", "K1-L2-pre-nearest-none-in-s01"])
    assert t["K2-L1-post-deconv-relu-bn/s003"]["U"] == "deconv"
    assert t["K1-L2-pre-nearest-none-in-s01"]["N"] == "in"
    with pytest.raises(ConfigError, match="architecture id"):
        synth_factor_table(["stylegan2"])


def test_load_npz_keys_and_errors(tmp_path, rng):
    p = tmp_path / "e.npz"
    np.savez(p, embeddings=rng.normal(size=(4, 3)), paths=np.array(["a/m1/x.png", "a/m1/y.png", "a/m2/x.png", "a/m2/z.png"]))
    x, labels = load_npz(p)
    assert x.shape == (4, 3) and labels == ["m1", "m1", "m2", "m2"]
    q = tmp_path / "f.npz"
    np.savez(q, features=rng.normal(size=(2, 3)), labels=np.array(["a", "b"]))
    assert load_npz(q)[1] == ["a", "b"]
    r = tmp_path / "g.npz"
    np.savez(r, other=np.zeros(3))
    with pytest.raises(InputError, match="no embeddings"):
        load_npz(r)
    s = tmp_path / "h.npz"
    s.write_bytes(b"garbage")
    with pytest.raises(InputError):
        load_npz(s)


def test_folder_labels(tmp_path):
    root = tmp_path / "root"
    files = [root / "stylegan" / "a.png", root / "cnn" / "biggan" / "fake" / "b.png"]
    assert folder_labels(root, files) == ["stylegan", "cnn/biggan/fake"]


def test_pool_analysis_end_to_end(tmp_path, rng, capsys):
    """A tiny pool of (untrained) synthetic models: rows per model, factors parsed from arch ids."""
    import json

    import torch
    from PIL import Image

    from fpt.cli import main
    from fpt.synth.nets import build_model
    from fpt.synth.pool import PoolWriter
    from fpt.synth.space import select_archs
    from fpt.synth.train import ModelRecord, model_id

    pool = tmp_path / "pool.h5"
    archs = select_archs("K1-L1-post-*-relu-none")  # nearest / bilinear / deconv
    with PoolWriter(pool, {"test": 1}) as w:
        for a in archs:
            for s in range(2):
                torch.manual_seed(s)
                st = {k: v.detach().numpy() for k, v in build_model(a, 8, 3).state_dict().items()}
                w.add(st, ModelRecord(model_id(a, s), a.id, a.family, s, 0, 0.0, 0.0, False, 0.005, 32, 8, 3))
    real = tmp_path / "real"
    real.mkdir()
    for i in range(6):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(real / f"{i}.png")

    from fpt.separability import embed_pool

    x, labels = embed_pool(pool, real, lambda imgs: torch.stack(imgs).flatten(1).numpy(), per_model=4)
    assert x.shape == (6 * 4, 3 * 32 * 32) and len(set(labels)) == 6

    assert main(["analyse", str(pool), "--real", str(real), "-r", "freq", "--per-model", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["separability"]["n"] == 24
    assert [f["factor"] for f in res["factor_nmi"]] == ["U"]  # the only factor that varies here
    assert main(["analyse", str(pool), "-r", "freq"]) == 2  # --real missing

    # The pool's rows saved and read back as an .npz: the same rows and labels, unit "model".
    from fpt.separability import load_fingerprints, load_npz

    fp = load_fingerprints(pool, representation="freq", real=real, per_model=4, device="cpu")
    assert (fp.kind, fp.default_unit, fp.default_factors) == ("pool", "model", "synth")
    saved = fp.save(tmp_path / "pool-rows.npz")
    x2, labels2 = load_npz(saved)
    assert np.allclose(x2, fp.x.astype(np.float32)) and labels2 == fp.labels
    back = load_fingerprints(saved)
    assert (back.kind, back.default_unit, back.name) == ("npz", "image", "pool-rows.npz")
