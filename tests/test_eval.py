"""`fpt eval`: folder discovery, shared splits, protocols and baselines on toy generators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_embed import FakeExtractor, model_images, save_png, write_model_folder

from fpt.cli import main
from fpt.errors import InputError
from fpt.evaluation import discover_models, evaluate, make_splits
from fpt.representations import (
    PRNURepresentation,
    SpectrumRepresentation,
    build_representation,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("evalroot")
    for m in range(4):
        write_model_folder(r, m, 40, size=48, seed=m)
    # CNNDetection-style nested layout: <gen>/fake is the model, <gen>/real is skipped
    for m, gen in ((5, "ganx"), (6, "gany")):
        d = write_model_folder(r / "cnnlike" / gen, m, 12, size=64)
        d.rename(d.parent / "fake")
        for i, img in enumerate(torch.rand(3, 3, 64, 64)):
            save_png(img, r / "cnnlike" / gen / "real" / f"r{i}.png")
    # tiny images form their own group
    for m in (7, 8):
        d = r / f"tiny{m}"
        for i, img in enumerate(model_images(m, 12, 28)):
            save_png(img, d / f"{i}.png")
    return r


def test_discover_layout(root):
    found = {f.label: (f.group, len(f.paths)) for f in discover_models(root)}
    assert found == {
        "model0": ("main", 40), "model1": ("main", 40), "model2": ("main", 40), "model3": ("main", 40),
        "cnnlike/ganx": ("cnnlike", 12), "cnnlike/gany": ("cnnlike", 12),
        "tiny7": ("small-images", 12), "tiny8": ("small-images", 12),
    }
    with pytest.raises(InputError, match="images directly in ROOT"):
        discover_models(root / "model0")


def test_splits_are_disjoint_and_balanced():
    labels = np.repeat(np.array(["a", "b", "c", "d"]), 24)
    s = make_splits(labels, seed=0, n_pairs=100, k_shot=10, repeats=2, unknown_fraction=0.3)
    ca, cb, cs, ta, tb, ts = s.pairs[5]
    assert not (set(ca.ravel()) | set(cb.ravel())) & (set(ta.ravel()) | set(tb.ravel()))  # cal vs test images
    assert ts.sum() == 50 and cs.sum() * 2 == cs.size
    gal, probe = s.id_splits[0]
    assert gal.size == 40 and probe.size == 56 and not set(gal) & set(probe)
    unk, gal, probe = s.open_splits[0]
    assert len(unk) == 1 and not np.isin(labels[gal], unk).any() and np.isin(labels[probe], unk).sum() == 24
    s2 = make_splits(labels, seed=0, n_pairs=100, k_shot=10, repeats=2, unknown_fraction=0.3)
    np.testing.assert_array_equal(s2.pairs[1][3], s.pairs[1][3])  # seeded


def test_evaluate_all_methods_same_splits(root):
    res = evaluate(root, ["fpt", "prnu", "spectrum"], n_pairs=300, repeats=2,
                   representation_kwargs={"extractor": FakeExtractor(), "baseline_crop": 48})
    groups = {g.group: g for g in res.groups}
    assert list(groups) == ["main", "cnnlike", "small-images"]
    main_g = groups["main"]
    f = main_g.methods["fpt"]
    # the fake extractor reads the kernels' spectra: near-perfect on toy generators
    assert f.verification[1].auc > 0.95 and f.verification[10].auc > 0.99
    assert f.id_accuracy > 0.9 and f.id_macro_f1 > 0.9 and f.open_auroc > 0.9
    assert f.silhouette > 0 and f.davies_bouldin > 0
    # near-perfect separation: models lie farther apart than two halves of one model
    assert f.fd_ratio is not None and f.fd_ratio > 2
    for m in ("prnu", "spectrum"):
        r = main_g.methods[m]
        assert 0 <= r.verification[1].auc <= 1 and r.id_accuracy is not None
        # same pairs for every method
        np.testing.assert_array_equal(r.verification[1].test_same, f.verification[1].test_same)
    assert set(f.id_per_model) == {"model0", "model1", "model2", "model3"}
    for m, r in main_g.methods.items():  # confusion rows are shares; the diagonal is the per-model accuracy
        assert set(r.id_confusion) == set(r.id_per_model)
        for name, row in r.id_confusion.items():
            assert sum(row.values()) == pytest.approx(1.0)
            assert row.get(name, 0.0) == pytest.approx(r.id_per_model[name])
    # 12 images a model: N_S=10 needs 20 per half -> skipped with a note, not a crash
    assert groups["cnnlike"].methods["fpt"].verification[10] is None
    assert any("N_S=10" in n for n in groups["cnnlike"].notes)
    assert res.settings["rank"] == "whitened" and res.settings["rank_shrinkage"] > 0


def test_evaluate_ranking_changes_only_the_order(root):
    """--rank cosine vs whitened: the same pairs and verification scores (no gallery there); only the
    identification and open-set rankings may differ, and the cosine ranking is the plain argmax."""
    kw = dict(n_pairs=300, repeats=2, representation_kwargs={"extractor": FakeExtractor(), "baseline_crop": 48})
    res_w, res_c = evaluate(root, ["spectrum"], **kw), evaluate(root, ["spectrum"], rank="cosine", **kw)
    assert res_c.settings["rank"] == "cosine" and res_c.settings["rank_shrinkage"] is None
    white = {g.group: g for g in res_w.groups}["main"].methods["spectrum"]
    plain = {g.group: g for g in res_c.groups}["main"].methods["spectrum"]
    for n_s in (1, 5):
        np.testing.assert_array_equal(white.verification[n_s].test_scores, plain.verification[n_s].test_scores)
    assert white.silhouette == plain.silhouette


def test_most_confused_with():
    from fpt.evaluation import confusion_shares, most_confused_with

    conf = confusion_shares(["a", "a", "a", "a", "b", "b"], ["a", "b", "c", "c", "b", "b"])
    assert conf == {"a": {"a": 0.25, "b": 0.25, "c": 0.5}, "b": {"b": 1.0}}
    assert most_confused_with(conf["a"], "a") == ("c", 0.5)
    assert most_confused_with(conf["b"], "b") is None


def test_eval_cli_json_and_figures(root, tmp_path, monkeypatch, capsys):
    ex = FakeExtractor()
    monkeypatch.setattr("fpt.extractor.checkpoint.load_extractor", lambda path, device="auto": ex)
    out = tmp_path / "ev"
    code = main(["eval", str(root), "--methods", "fpt,spectrum", "--out", str(out), "--pairs", "200",
                 "--repeats", "1", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert [g["group"] for g in data["groups"]] == ["main", "cnnlike", "small-images"]
    v = data["groups"][0]["methods"]["fpt"]["verification"]["1"]
    assert set(v) >= {"auc", "eer", "accuracy_at_calibrated_threshold", "oracle_accuracy"}
    assert (out / "eval.json").exists() and (out / "eval_main_roc.png").stat().st_size > 1000
    assert (out / "eval_main_hist.png").exists()
    # human output
    code = main(["eval", str(root), "--methods", "fpt", "--out", str(out), "--pairs", "100", "--repeats", "1",
                 "--no-figures"])
    text = capsys.readouterr().out
    assert code == 0 and "verification AUC, N_S=1" in text and "model3" in text
    assert main(["eval", str(root), "--methods", "nope"]) == 2


def test_baselines_known_behaviour():
    # PRNU: identical residual pattern -> cosine 1 whatever the content brightness
    g = torch.Generator().manual_seed(0)
    pattern = torch.rand(1, 64, 64, generator=g) * 0.1
    a = (torch.full((3, 64, 64), 0.3) + pattern).clamp(0, 1)
    b = (torch.full((3, 64, 64), 0.6) + pattern).clamp(0, 1)
    e = PRNURepresentation(crop=64).embed_images([a, b])
    assert e.shape == (2, 64 * 64) and float(e[0] @ e[1]) == pytest.approx(1.0, abs=1e-4)
    # spectrum: white noise has a flat azimuthal integral -> mean-removed log AI close to 0
    s = SpectrumRepresentation(crop=128).embed_images([torch.rand(3, 128, 128, generator=g)])
    assert s.shape == (1, 63)
    with pytest.raises(Exception, match="unknown method"):
        build_representation("nope")


def test_eval_cli_without_out_writes_nothing(root, tmp_path, monkeypatch, capsys):
    """--out is optional: the tables are printed and no file or folder is created (it used to fail
    with an AttributeError after the whole evaluation)."""
    ex = FakeExtractor()
    monkeypatch.setattr("fpt.extractor.checkpoint.load_extractor", lambda path, device="auto": ex)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code = main(["eval", str(root), "--methods", "fpt", "--pairs", "100", "--repeats", "1"])
    assert code == 0 and "verification AUC, N_S=1" in capsys.readouterr().out
    assert list(cwd.iterdir()) == []
