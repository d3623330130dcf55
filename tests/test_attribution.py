"""End-to-end attribution through the CLI: enroll -> calibrate -> identify / verify / lineage / embed."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_embed import FakeExtractor, model_images, real_extractor, save_png, write_model_folder

import fpt.cli.attribution as cli_attr
from fpt.attribution import identify_embeddings, lineage, verify_embeddings
from fpt.cli import main
from fpt.gallery import Gallery, ModelEntry, load_gallery

REPO = Path(__file__).resolve().parents[1]
N_MODELS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    enroll = {m: write_model_folder(root / "enroll", m, 12, size=64, seed=1) for m in range(N_MODELS)}
    probes = {m: write_model_folder(root / "probe", m, 3, size=64, seed=2) for m in range(N_MODELS + 1)}
    return root, enroll, probes


def _run_json(capsys, args):
    code = main(args + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture(scope="module")
def _built_gallery(data, tmp_path_factory):
    """Enroll the toy models once per module (through the CLI); tests get a private copy."""
    _, enroll, _ = data
    g = tmp_path_factory.mktemp("gallery") / "g.h5"
    ex = FakeExtractor()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_attr, "load_extractor", lambda path, device: ex)
        for m, d in enroll.items():
            assert main(["enroll", f"model{m}", str(d), "--gallery", str(g), "--meta", f"seed={m}"]) == 0
    return g


@pytest.fixture
def gallery(_built_gallery, tmp_path, fake, capsys):
    g = tmp_path / "g.h5"
    g.write_bytes(_built_gallery.read_bytes())
    capsys.readouterr()
    return g


def test_enroll_identify_right_model_and_unknown(gallery, data, capsys):
    _, _, probes = data
    g = load_gallery(gallery)
    assert g.names() == [f"model{m}" for m in range(N_MODELS)]
    assert g.calibration is not None and g.calibration.models == N_MODELS  # auto-calibrated at FAR 0.05
    assert g.get("model2").meta == {"seed": "2"}
    for m in range(N_MODELS):
        code, res = _run_json(capsys, ["identify", str(probes[m]), "--gallery", str(gallery)])
        assert code == 0, res
        assert [r["model"] for r in res["results"]] == [f"model{m}"] * 3
        assert res["summary"]["unknown"] == 0
    # model 4 was never enrolled: below the calibrated threshold -> unknown, exit code 10
    code, res = _run_json(capsys, ["identify", str(probes[N_MODELS]), "--gallery", str(gallery)])
    assert code == cli_attr.EXIT_UNKNOWN, res
    assert all(r["model"] == "unknown" for r in res["results"])
    # decided on the gallery-calibrated likelihood ratio: each unknown's best LR is below the level
    assert res["min_log10_lr"] == 0.0 and res["decision"].startswith("log10 LR >= 0")
    assert all(r["log10_lr"] < 0 and r["verbal"] for r in res["results"])
    for r in res["results"]:
        assert set(r) >= {"score", "score_norm", "log10_lr", "verbal", "ranked_by"}
        # ordered by what ranked them: the whitened score (default), else the raw cosine's LR
        key = "rank_score" if r["ranked_by"] == "whitened" else "log10_lr"
        assert [t[key] for t in r["top"]] == sorted((t[key] for t in r["top"]), reverse=True)
    assert res["ranked_by"] == "whitened"


def test_identify_table_csv_and_threshold_override(gallery, data, capsys):
    _, _, probes = data
    code = main(["identify", str(probes[1]), str(probes[N_MODELS]), "--gallery", str(gallery), "--csv", "-k", "2"])
    assert code == cli_attr.EXIT_UNKNOWN
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6 and [r["model"] for r in rows[:3]] == ["model1"] * 3
    assert {r["model"] for r in rows[3:]} == {"unknown"} and "top2_score" in rows[0]
    # a threshold of -1 accepts everything
    assert main(["identify", str(probes[N_MODELS]), "--gallery", str(gallery), "--threshold", "-1"]) == 0
    out = capsys.readouterr().out
    assert "model" in out and "threshold -1" in out


def test_identify_folder_with_broken_file(gallery, data, tmp_path, capsys):
    _, _, probes = data
    d = tmp_path / "mixed"
    d.mkdir()
    for p in sorted(probes[0].iterdir()):
        (d / p.name).write_bytes(p.read_bytes())
    (d / "broken.png").write_bytes(b"\x89PNG garbage")
    code = main(["identify", str(d), "--gallery", str(gallery)])
    captured = capsys.readouterr()
    assert code == cli_attr.EXIT_SOME_FAILED
    assert "broken.png" in captured.err and "model0 3" in captured.out


def test_reenroll_noop_and_per_file_failures(gallery, data, tmp_path, capsys):
    _, enroll, _ = data
    before = load_gallery(gallery).get("model0").count
    code, res = _run_json(capsys, ["enroll", "model0", str(enroll[0]), "--gallery", str(gallery)])
    assert code == 0 and res["added"] == 0 and res["already_enrolled"] == before
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    extra = tmp_path / "extra.png"

    save_png(model_images(0, 1, 64, seed=9)[0], extra)
    code, res = _run_json(capsys, ["enroll", "model0", str(bad), str(extra), "--gallery", str(gallery)])
    assert code == 0 and res["added"] == 1 and len(res["failed"]) == 1
    assert load_gallery(gallery).get("model0").count == before + 1
    # nothing readable for a new model: clean error, gallery unchanged
    code = main(["enroll", "ghost", str(bad), "--gallery", str(gallery)])
    assert code == 2 and "ghost" not in load_gallery(gallery).models


def test_verify_same_and_different(gallery, data, capsys):
    _, enroll, probes = data
    code, v = _run_json(capsys, ["verify", str(probes[2]), str(enroll[2]), "--gallery", str(gallery)])
    assert code == 0 and v["same_model"] is True and v["n_a"] == 3 and v["n_b"] == 12
    assert "calibrated" in v["threshold_source"] and "N_S=3" in v["threshold_source"]
    code, v = _run_json(capsys, ["verify", str(probes[2]), str(enroll[3]), "--gallery", str(gallery)])
    assert code == cli_attr.EXIT_UNKNOWN and v["same_model"] is False
    assert v["log10_lr"] < v["min_log10_lr"] == 0.0 and v["verbal"].endswith("rather than the same model")
    assert set(v) >= {"similarity", "score_norm", "log10_lr", "verbal"}
    # single images, explicit threshold
    a = sorted(probes[1].iterdir())[0]
    b = sorted(enroll[1].iterdir())[0]
    code, v = _run_json(capsys, ["verify", str(a), str(b), "--threshold", "0.5"])
    assert v["threshold"] == 0.5 and v["threshold_source"] == "--threshold" and code == (0 if v["same_model"] else 10)


def test_gallery_commands(gallery, tmp_path, capsys):
    assert main(["gallery", "list", "--gallery", str(gallery)]) == 0
    out = capsys.readouterr().out
    assert "model3" in out and "seed=3" in out
    code, info = _run_json(capsys, ["gallery", "show", "model1", "--gallery", str(gallery)])
    assert code == 0 and info["images"] == 12 and len(info["images_list"]) == 12
    code, cal = _run_json(capsys, ["gallery", "calibrate", "--far", "0.01", "--gallery", str(gallery)])
    assert code == 0 and cal["identification"]["far"] == 0.01
    assert load_gallery(gallery).calibration.far == 0.01
    assert main(["gallery", "rename", "model3", "renamed", "--gallery", str(gallery)]) == 0
    assert main(["gallery", "export", str(tmp_path / "g.csv"), "--gallery", str(gallery)]) == 0
    assert main(["gallery", "remove", "renamed", "--gallery", str(gallery)]) == 0
    g = load_gallery(gallery)
    assert "renamed" not in g.models and g.calibration.far == 0.01  # FAR kept across edits
    assert main(["gallery", "import", str(tmp_path / "g.csv"), "--gallery", str(gallery)]) == 0
    assert "renamed" in load_gallery(gallery).models
    assert main(["gallery", "remove", "nope", "--gallery", str(gallery)]) == 2


def test_lineage_cli(gallery, tmp_path, capsys):
    png = tmp_path / "lin.png"
    assert main(["lineage", "--gallery", str(gallery), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 1000
    assert all(f"model{m}" in out for m in range(N_MODELS))


def test_embed_cli(data, fake, tmp_path, capsys):
    _, enroll, _ = data
    out = tmp_path / "e.npz"
    code, res = _run_json(capsys, ["embed", str(enroll[0]), "--out", str(out)])
    assert code == 0 and res["images"] == 12
    z = np.load(out, allow_pickle=False)
    assert z["embeddings"].shape == (12, 64) and str(z["extractor_sha256"]) == fake.sha256


def test_lineage_groups_variants():
    rng = np.random.default_rng(0)
    base = {n: rng.normal(size=32) for n in ("ganA", "ganB", "diffusion")}
    names, fps = [], []
    for n, v in base.items():
        for k in range(2):
            names.append(f"{n}-v{k}")
            fps.append(v + rng.normal(0, 0.1, 32))
    lin = lineage(names, np.stack(fps))
    # the first three merges join each base model's two variants
    first = lin.linkage[:3, :2].astype(int)
    pairs = {frozenset(names[i][:-3] for i in row) for row in first}
    assert pairs == {frozenset({"ganA"}), frozenset({"ganB"}), frozenset({"diffusion"})}
    tree = lin.text_tree()
    assert all(n in tree for n in names)


def test_identify_and_verify_functions():
    g = Gallery(Path("x"))
    g.models["a"] = ModelEntry("a", np.array([[1, 0, 0], [0.9, 0.1, 0]], np.float32))
    g.models["b"] = ModelEntry("b", np.array([[0, 1, 0]], np.float32))
    res = identify_embeddings(g, np.array([[1, 0.05, 0], [0, 0, 1]], np.float32), top_k=5, threshold=0.5)
    assert res[0].model == "a" and [m for m, _ in res[0].top] == ["a", "b"]
    assert res[1].model == "unknown" and res[1].score == pytest.approx(0.0, abs=1e-6)
    v = verify_embeddings(np.array([[1, 0, 0], [0.8, 0.2, 0]]), np.array([[1, 0.1, 0]]), 0.9)
    assert v.same_model and v.n_a == 2 and v.n_b == 1


def test_enroll_with_other_extractor_refused(tmp_path, capsys):
    """Two real (H3) checkpoints: a gallery made with one refuses the other."""
    ex1 = real_extractor(tmp_path / "one.pt")
    import torch

    from fpt.extractor.checkpoint import save_extractor
    from fpt.extractor.net import build_net

    torch.manual_seed(1)
    save_extractor(tmp_path / "two.pt", build_net(backbone="resnet18", width=0.125, embedding_dim=16, crop_size=32))
    d = write_model_folder(tmp_path, 0, 3, size=40)
    g = tmp_path / "g.h5"
    assert main(["enroll", "m0", str(d), "--gallery", str(g), "--extractor", str(ex1), "--device", "cpu"]) == 0
    before = g.read_bytes()
    code = main(["enroll", "m1", str(d), "--gallery", str(g), "--extractor", str(tmp_path / "two.pt")])
    err = capsys.readouterr().err
    assert code == 4 and "re-enroll" in err and g.read_bytes() == before
    assert main(["identify", str(d), "--gallery", str(g), "--extractor", str(tmp_path / "two.pt")]) == 4


def test_two_concurrent_enroll_processes(tmp_path):
    """Two `fpt enroll` processes on one gallery at the same time: both models land, complete.

    The children run the real CLI with the small FakeExtractor (no torchvision import: keeps this
    test to process start-up plus a few crops).
    """
    dirs = [write_model_folder(tmp_path, m, 4, size=32) for m in (0, 1)]
    g = tmp_path / "g.h5"
    launcher = ("import sys; sys.path.insert(0, sys.argv.pop(1))\n"
                "from test_embed import FakeExtractor\n"
                "import fpt.cli.attribution as a\n"
                "a.load_extractor = lambda path, device: FakeExtractor()\n"
                "from fpt.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")
    here = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", launcher, here, "--threads", "1", "enroll", f"m{i}", str(d),
                               "--gallery", str(g)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, d in enumerate(dirs)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()
    gal = load_gallery(g)
    assert gal.names() == ["m0", "m1"] and [gal.get(n).count for n in gal.names()] == [4, 4]


def test_interrupted_enroll_keeps_committed_chunks_and_resumes(data, tmp_path, monkeypatch):
    """Ctrl-C during a big enrolment: committed chunks stay, the gallery is valid, a re-run finishes."""
    _, enroll, _ = data

    class Interrupting(FakeExtractor):
        def embed_crops(self, crops):
            if len(self.calls) == 5:
                raise KeyboardInterrupt
            return super().embed_crops(crops)

    monkeypatch.setattr("fpt.api.ENROLL_CHUNK", 2)  # the chunked enrolment is fpt.api.enroll
    monkeypatch.setattr(cli_attr, "load_extractor", lambda path, device: Interrupting())
    g = tmp_path / "g.h5"
    assert main(["enroll", "m0", str(enroll[0]), "--gallery", str(g), "--batch-size", "9"]) == 130
    assert load_gallery(g).get("m0").count == 4  # two chunks of two images were committed
    monkeypatch.setattr(cli_attr, "load_extractor", lambda path, device: FakeExtractor())
    assert main(["enroll", "m0", str(enroll[0]), "--gallery", str(g), "--batch-size", "9"]) == 0
    assert load_gallery(g).get("m0").count == 12


def test_small_image_flagged_low_confidence(gallery, tmp_path, capsys):

    p = save_png(model_images(1, 1, 64, seed=5)[0][:, :20, :24], tmp_path / "small.png")  # < 32 px window
    code, res = _run_json(capsys, ["identify", str(p), "--gallery", str(gallery), "--threshold", "-1"])
    assert code == 0 and res["results"][0]["low_confidence"] is True


def test_enroll_reports_the_threshold_it_stored(data, tmp_path, fake, capsys):
    """The threshold printed by enroll is the gallery's calibration after the change, not before."""
    _, enroll, _ = data
    g = tmp_path / "g.h5"
    reported = []
    for m in range(3):
        code, res = _run_json(capsys, ["enroll", f"model{m}", str(enroll[m]), "--gallery", str(g)])
        assert code == 0
        reported.append(res["threshold"])
    assert reported[0] is None  # one model: nothing to calibrate against
    assert reported[2] == pytest.approx(load_gallery(g).calibration.threshold)


def test_enroll_check_follows_rank_and_can_be_skipped(data, tmp_path, fake, capsys):
    """The check after enrolling measures the ranking asked for; --no-check skips it but the
    stored calibration still follows the change; a bad --rank changes nothing."""
    _, enroll, _ = data
    g = tmp_path / "g.h5"
    for m in range(2):
        code, res = _run_json(capsys, ["enroll", f"model{m}", str(enroll[m]), "--gallery", str(g), "--rank", "cosine"])
        assert code == 0
    assert res["decision"]["ranked_by"] == "cosine" and res["decision"]["loo_accuracy"] is not None
    code, res = _run_json(capsys, ["enroll", "model2", str(enroll[2]), "--gallery", str(g), "--no-check"])
    assert code == 0 and res["added"] == 12 and res["decision"] is None and res["warnings"] == []
    assert res["threshold"] == pytest.approx(load_gallery(g).calibration.threshold)
    extra = tmp_path / "extra.png"
    save_png(model_images(2, 1, 64, seed=11)[0], extra)
    assert main(["enroll", "model2", str(extra), "--gallery", str(g), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "gallery check skipped (--no-check)" in out and "false-accept rate" not in out
    code, res = _run_json(capsys, ["gallery", "calibrate", "--gallery", str(g), "--rank", "cosine"])
    assert code == 0 and res["decision"]["ranked_by"] == "cosine"
    before = g.read_bytes()
    assert main(["enroll", "model3", str(enroll[3]), "--gallery", str(g), "--rank", "best"]) == 2
    assert main(["gallery", "calibrate", "--gallery", str(g), "--rank", "best"]) == 2
    assert "ranking must be one of whitened, cosine, not 'best'" in capsys.readouterr().err
    assert g.read_bytes() == before


def test_calibrate_lists_each_verification_set_size_once(tmp_path, capsys):
    """N_S is capped at half a model's images: with 8 per model, N_S=5 and N_S=10 are both 4."""
    from fpt.gallery import edit_gallery

    rng = np.random.default_rng(0)
    with edit_gallery(tmp_path / "g.h5", create=True) as g:
        for m in range(3):
            e = (rng.normal(size=16) + 0.5 * rng.normal(size=(8, 16))).astype(np.float32)
            g.models[f"m{m}"] = ModelEntry(f"m{m}", e / np.linalg.norm(e, axis=1, keepdims=True))
    code, res = _run_json(capsys, ["gallery", "calibrate", "--gallery", str(tmp_path / "g.h5")])
    assert code == 0 and [r["n_s"] for r in res["verification"]] == [1, 4]


def test_identify_and_embed_fail_when_no_input_is_readable(gallery, tmp_path, capsys):
    """Per-file failures are skipped, but a run where every file failed exits non-zero with one line."""
    bogus = tmp_path / "not-an-image.png"
    bogus.write_text("hello")
    assert main(["identify", str(bogus), "--gallery", str(gallery)]) == 2
    out = tmp_path / "e.npz"
    assert main(["embed", str(bogus), "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "none of the 1 input image(s) could be read" in err and "not an image" in err


def _content_dominated_gallery(seed: int = 0, per: int = 10, dim: int = 16):
    """Three models that differ a little along dims 2.. while every image varies a lot along dims
    0-1 (its content): raw cosine ranks by content, a within-model whitening should not."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((3, dim))
    centres[:, 2:] = rng.normal(0, 0.15, (3, dim - 2))

    def images(c: int, n: int) -> np.ndarray:
        x = centres[c] + rng.normal(0, 0.02, (n, dim))
        x[:, :2] += rng.normal(0, 1.0, (n, 2))
        x[:, 0] += 2.0
        return x.astype(np.float32)

    g = Gallery(Path("x"))
    for c in range(3):
        g.models[f"m{c}"] = ModelEntry(f"m{c}", images(c, per))
    probes = [(c, images(c, 20)) for c in range(3)]
    return g, np.concatenate([p for _, p in probes]), np.repeat([f"m{c}" for c, _ in probes], 20)


def test_whitened_ranking_discounts_what_varies_within_a_model():
    from fpt.attribution import gallery_ranking

    g, probes, truth = _content_dominated_gallery()
    white = identify_embeddings(g, probes, top_k=3, threshold=-1.0)
    plain = identify_embeddings(g, probes, top_k=3, threshold=-1.0, rank="cosine")
    acc_white = np.mean([r.model == t for r, t in zip(white, truth)])
    acc_plain = np.mean([r.model == t for r, t in zip(plain, truth)])
    assert acc_plain < 0.7 and acc_white > 0.95, (acc_plain, acc_white)
    names, fps = g.fingerprint_matrix()
    for r, p in zip(white, probes):
        assert r.ranked_by == "whitened" and r.top_rank == sorted(r.top_rank, reverse=True)
        # the reported (and decided-on) score is the raw cosine of the ranked-first model
        raw = fps[names.index(r.model)] @ (p / np.linalg.norm(p))
        assert r.score == pytest.approx(float(raw), abs=1e-5)
    assert all(r.ranked_by == "cosine" and not r.top_rank for r in plain)
    # a gallery that cannot fit a within-model whitening (one image per model) ranks by cosine
    one = Gallery(Path("y"))
    for n, m in g.models.items():
        one.models[n] = ModelEntry(n, m.embeddings[:1])
    assert gallery_ranking(one) is None
    assert identify_embeddings(one, probes[:2], threshold=-1.0)[0].ranked_by == "cosine"


def test_whitened_ranking_score_does_not_depend_on_the_batch():
    from fpt.attribution import gallery_ranking

    g, probes, _ = _content_dominated_gallery(seed=1)
    rk = gallery_ranking(g)
    together = rk.scores(probes)
    alone = np.concatenate([rk.scores(probes[i:i + 1]) for i in range(len(probes))])
    np.testing.assert_array_equal(together, alone)


def test_gallery_check_measures_the_ranking_identify_uses():
    from fpt.attribution import check_gallery
    from fpt.report import gallery_check_messages

    g, _, _ = _content_dominated_gallery()
    white, plain = check_gallery(g), check_gallery(g, rank="cosine")
    assert white.ranked_by == "whitened" and plain.ranked_by == "cosine"
    # content decides the raw-cosine ranking of held-out enrolled images, not the whitened one
    assert white.loo_accuracy > 0.95 and plain.loo_accuracy < 0.7, (white.loo_accuracy, plain.loo_accuracy)
    assert all(c.share == 0.0 for c in white.confusions)
    assert any(c.share >= 0.25 for c in plain.confusions)
    rates, warns = gallery_check_messages(white)
    assert "expected top-1 accuracy for enrolled models 100.0% (whitened ranking" in rates
    # pairs flagged only by the open-set decision are not called inseparable
    assert white.confusions and all(c.ranked_apart for c in white.confusions)
    assert not any("not separable" in w for w in warns)
    assert any("are told apart from" in w and "were not enrolled" in w for w in warns)
    # with one model there is no identification to be right or wrong about
    solo = Gallery(Path("s"))
    solo.models["m0"] = g.models["m0"]
    assert check_gallery(solo).loo_accuracy is None
    # one image per model: no whitening to fit, so the check says it ranked by cosine
    one = Gallery(Path("y"))
    for n, m in g.models.items():
        one.models[n] = ModelEntry(n, m.embeddings[:2] if n == "m0" else m.embeddings[:1])
    assert check_gallery(one).ranked_by == "cosine"


def test_gallery_check_never_scores_an_image_with_a_whitening_fitted_on_it():
    """Embeddings with no model signal at all: an honest held-out top-1 is at chance (1/10).
    Whitening fitted on every image, then leave-one-out fingerprints, scores about 0.22 on the
    same galleries: the held-out image's own deviation was whitened away."""
    from fpt.attribution import CHECK_FOLDS, check_gallery, held_out_ranking

    accs = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        g = Gallery(Path("z"))
        for i in range(10):
            g.models[f"m{i}"] = ModelEntry(f"m{i}", rng.normal(size=(5, 24)).astype(np.float32))
        accs.append(check_gallery(g).loo_accuracy)
    assert 0.05 < np.mean(accs) < 0.16, np.mean(accs)
    # images are dealt to folds per model; a single-image model is never held out and keeps its
    # fingerprint in every fold
    g.models["solo"] = ModelEntry("solo", rng.normal(size=(1, 24)).astype(np.float32))
    held = held_out_ranking(g, 1.0, folds=CHECK_FOLDS)
    assert held.fold.tolist() == [0, 1, 2, 3, 4] * 10 + [-1]
    assert all(r.fingerprints.shape == (11, 24) for r in held.rankings)
    scores = held.scores(np.arange(50))
    assert scores.shape == (50, 11) and np.isfinite(scores).all()
    with pytest.raises(ValueError, match="never held out"):
        held.scores(np.array([50]))
    # scored a block of models at a time, the same numbers, for the models with 2+ images only
    assert held.starts.tolist() == np.arange(0, 55, 5)[:11].tolist() + [51]
    blocks = list(held.per_model(block=7))
    assert [k for k, _ in blocks] == list(range(10))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), scores)


def test_bad_ranking_name_is_refused():
    from fpt.errors import InputError

    g, probes, _ = _content_dominated_gallery()
    with pytest.raises(InputError, match="ranking must be one of"):
        identify_embeddings(g, probes[:1], rank="lda")
