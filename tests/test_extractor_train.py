"""Extractor training: P x K stream, losses, optimizer step, separation after training, resume, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fpt.errors import ConfigError
from fpt.extractor.data import CropBank, FingerprintStream, ToySource, fingerprinted_set, jpeg, split_models, Augment
from fpt.extractor.losses import batch_hard_triplet, combined_loss
from fpt.extractor.net import build_net
from fpt.extractor.train import TrainConfig, embed_images, train, verification_and_identification




def _natural_like(n: int, size: int, seed: int) -> torch.Tensor:
    """Smooth random colour fields with some edges: stand-ins for photos (1/f-ish spectra)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.05 * torch.rand(n, 3, size, size, generator=g)
    return x.clamp(0, 1)


def _bank(n_images: int = 24, size: int = 32, per: int = 4, seed: int = 0) -> CropBank:
    x = _natural_like(n_images * per, size, seed)
    crops = (x * 255).round().to(torch.uint8)
    idx = torch.arange(n_images).repeat_interleave(per)
    return CropBank(crops, idx, [f"img{i}" for i in range(n_images)])


def _tiny_net(num_classes: int, **kw):
    torch.manual_seed(0)
    return build_net(backbone="resnet10", width=0.125, embedding_dim=32, num_classes=num_classes, crop_size=32, **kw)


# ----------------------------------------------------------------------------- stream


def test_stream_yields_p_by_k_batches_with_correct_labels():
    src = ToySource(n_archs=6)
    stream = FingerprintStream(src, src.model_ids, _bank(), P=3, K=5, seed=1)
    b = stream.batch(0)
    assert b.images.shape == (15, 3, 32, 32)
    assert b.images.min() >= 0 and b.images.max() <= 1
    labels = b.labels.tolist()
    # P distinct models, each exactly K consecutive times, labels index the stream's model ids.
    assert len(set(labels)) == 3
    for p in range(3):
        block = labels[p * 5 : (p + 1) * 5]
        assert len(set(block)) == 1
        assert src.model_ids[block[0]] == b.model_ids[p]
    # Each image really went through the labelled model: re-applying it to the same crop matches.
    # Deterministic: the same (seed, rank, step) gives the same batch; another rank a different one.
    b2 = stream.batch(0)
    torch.testing.assert_close(b.images, b2.images)
    assert torch.equal(b.labels, b2.labels)
    other = FingerprintStream(src, src.model_ids, _bank(), P=3, K=5, seed=1, rank=1).batch(0)
    assert not torch.equal(other.images, b.images)
    assert not torch.equal(stream.batch(1).images, b.images)


def test_stream_rejects_batches_without_positives_or_negatives():
    src = ToySource(n_archs=4)
    with pytest.raises(ConfigError, match="K"):
        FingerprintStream(src, src.model_ids, _bank(), P=4, K=1)
    with pytest.raises(ConfigError, match="P"):
        FingerprintStream(src, src.model_ids, _bank(), P=1, K=4)
    with pytest.raises(ConfigError, match="only 4"):
        FingerprintStream(src, src.model_ids, _bank(), P=8, K=2)


def test_split_holds_out_whole_architectures_not_seeds():
    ids = [f"K{k}-L1-post-nearest-relu-{n}/s{s:03d}" for k in (1, 2) for n in ("bn", "in", "none") for s in range(3)]
    ids += [f"grid-D{d}/s{s:03d}" for d in (3, 4) for s in range(2)]
    train_ids, val_ids = split_models(ids, holdout_frac=0.34, seed=0)
    arch = lambda m: m.split("/")[0]  # noqa: E731
    assert val_ids and not ({arch(m) for m in train_ids} & {arch(m) for m in val_ids})
    assert all(not arch(m).startswith("grid") for m in val_ids)
    # Every seed of a held-out architecture is held out.
    for a in {arch(m) for m in val_ids}:
        assert sum(arch(m) == a for m in val_ids) == 3
    t2, v2 = split_models(ids, holdout_pattern="K1-*")
    assert {arch(m) for m in v2} == {a for a in map(arch, ids) if a.startswith("K1-")}
    with pytest.raises(ConfigError):
        split_models(ids, holdout_pattern="nothing-matches")


def test_adding_extension_archs_keeps_the_held_out_paper_archs():
    from fpt.synth.space import fd_space

    arch = lambda m: m.split("/")[0]  # noqa: E731
    paper = [f"{a.id}/s000" for a in fd_space()] + ["grid-D3/s000"]
    k3 = [f"{a.id}/s000" for a in fd_space((3,))]
    _, val_paper = split_models(paper, holdout_frac=0.15, seed=0)
    _, val_both = split_models(paper + k3, holdout_frac=0.15, seed=0)
    held_paper = {arch(m) for m in val_paper}
    held_k3 = {arch(m) for m in val_both} - held_paper
    assert held_paper <= {arch(m) for m in val_both} and len(held_paper) == round(0.15 * 288)
    assert all(a.startswith("K3-") for a in held_k3) and len(held_k3) == round(0.15 * 144)


def test_bank_split_is_by_source_image():
    bank = _bank(n_images=20, per=3)
    tr, va = bank.split(0.25, seed=0)
    assert len(tr) + len(va) == len(bank)
    assert not set(tr.image_index.tolist()) & set(va.image_index.tolist())


def test_augmentations_keep_shape_and_range_and_jpeg_changes_pixels():
    x = _natural_like(4, 32, 3)
    g = torch.Generator().manual_seed(0)
    y = Augment(jpeg_p=1.0, rrc_p=1.0, blur_p=1.0)(x, g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x)
    j = jpeg(x[0], 50)
    assert j.shape == x[0].shape and 0 < float((j - x[0]).abs().mean()) < 0.1
    assert torch.equal(Augment()(x, g), x)


# ----------------------------------------------------------------------------- losses


def test_triplet_zero_for_separated_batch_positive_otherwise():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3)
    emb = centres[labels]  # same class identical, classes sqrt(2) apart > margin
    assert float(batch_hard_triplet(emb, labels, 0.3)) == 0.0
    # Mixed-up embeddings: positive loss, and it has a gradient.
    mixed = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    mixed.requires_grad_(True)
    loss = batch_hard_triplet(mixed, labels, 0.3)
    assert float(loss.detach()) > 0
    loss.backward()
    assert mixed.grad is not None and float(mixed.grad.abs().sum()) > 0
    # Classes closer than the margin: positive even though perfectly clustered.
    close = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.1], [1.0, 0.1]])
    assert float(batch_hard_triplet(close, torch.tensor([0, 0, 1, 1]), 0.3)) == pytest.approx(0.2, abs=1e-5)


def test_triplet_has_finite_gradient_for_identical_embeddings():
    emb = torch.ones(4, 3, requires_grad=True)
    loss = batch_hard_triplet(emb, torch.tensor([0, 0, 1, 1]), 0.3)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert float(loss.detach()) == pytest.approx(0.3)


def test_one_step_with_zero_grad_changes_weights_and_lowers_loss():
    src = ToySource(n_archs=4)
    stream = FingerprintStream(src, src.model_ids, _bank(), P=4, K=4, seed=0)
    b = stream.batch(0)
    net = _tiny_net(4)
    net.train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)

    def loss_on_batch():
        out = net(b.images)
        return combined_loss(out.logits, out.embedding, b.labels).total

    before = {k: v.clone() for k, v in net.state_dict().items()}
    # A stale gradient from a previous step must not leak into this one.
    loss_on_batch().backward()
    l0 = loss_on_batch()
    opt.zero_grad(set_to_none=True)
    l0.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    opt.step()
    changed = [k for k, v in net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in changed) and any(k.startswith("projection.") for k in changed)
    # Frozen preprocessing (denoiser / high-pass) is not trained.
    assert not any(k.startswith("transform.") for k in changed)
    with torch.no_grad():
        net.eval()
        out = net(b.images)
        l1 = combined_loss(out.logits, out.embedding, b.labels).total
        net.train()
        net.eval()
    assert float(l1) < float(l0.detach())


# ----------------------------------------------------------------------------- training separates models


def test_training_on_4_models_separates_them_better_than_untrained(tmp_path):
    src = ToySource(n_archs=4, strength=0.02)
    bank = _bank(n_images=40, per=4, seed=5)
    train_bank, test_bank = bank.split(0.3, seed=0)
    test_x, test_y = fingerprinted_set(src, src.model_ids, test_bank.get(torch.arange(16)), seed=1)

    def score(net) -> float:
        return verification_and_identification(embed_images(net, test_x, torch.device("cpu")), test_y,
                                               seed=0, n_pairs=2000)["auc"]

    cfg = TrainConfig(pool="toy:4", out=str(tmp_path / "ex.pt"), steps=150, P=4, K=4, lr=3e-3, warmup=10,
                      backbone="resnet10", width=0.125, embedding_dim=32, crop_size=32, holdout_frac=0.0,
                      val_every=10**6, ckpt_every=10**6, device="cpu")
    from fpt.extractor import train as train_mod

    net = _tiny_net(4)
    net.set_normalisation(*train_mod._estimate_normalisation(
        net, FingerprintStream(src, src.model_ids, train_bank, P=4, K=4), torch.device("cpu")))
    untrained = score(net)
    res = train(cfg, log=lambda *_: None, source=src, bank=train_bank, return_net=True)
    trained = score(res.net)
    assert trained > 0.9
    assert trained > untrained + 0.15


# ----------------------------------------------------------------------------- CLI, resume


@pytest.fixture
def photo_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    x = _natural_like(12, 48, 7)
    for i, img in enumerate(x):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"p{i:02d}.png")
    return d


def _args(photo_dir, out, steps):
    return ["train", "--pool", "toy:6", "--images", str(photo_dir), "--out", str(out), "--steps", str(steps),
            "--P", "3", "--K", "2", "--backbone", "resnet10", "--width", "0.125", "--crop-size", "32",
            "--embedding-dim", "16", "--holdout-frac", "0.34", "--val-every", "4", "--ckpt-every", "4",
            "--crops-per-image", "2", "--warmup", "2", "--device", "cpu", "--quiet", "--fp32"]


def test_cli_train_writes_loadable_extractor(tmp_path, photo_dir):
    from fpt.cli import main
    from fpt.extractor.checkpoint import load_extractor

    a = tmp_path / "a" / "ex.pt"
    a.parent.mkdir()  # fpt train refuses to create folders (a typo'd --out must not mkdir -p)
    assert main(_args(photo_dir, a, 8)) == 0
    ex = load_extractor(a, "cpu")
    assert ex.preprocessing.crop_size == 32 and ex.config["steps"] == 8
    assert "auc" in ex.config["validation"] and "auc" in ex.config["baseline"]
    assert len(ex.config["heldout_archs"]) == 2
    assert ex.net.classifier is None  # the training-only head is not shipped
    # the whitening is fitted on training models and judged on held-out ones, with and without it
    assert ex.whitening is not None
    assert set(ex.config["validation_whitening"]) >= {"plain", "whitened"}
    b = tmp_path / "b" / "ex.pt"
    b.parent.mkdir()
    assert main(_args(photo_dir, b, 4) + ["--whiten-models", "0"]) == 0
    assert load_extractor(b, "cpu").whitening is None


class _Interrupting(ToySource):
    """A toy pool that raises KeyboardInterrupt (like Ctrl-C) after ``after`` model applications."""

    def __init__(self, after: int):
        super().__init__(n_archs=6)
        self.calls, self.after = 0, after

    def apply(self, model_id, crops, generator):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return super().apply(model_id, crops, generator)


def test_interrupted_run_resumes_exactly(tmp_path):
    bank = _bank(n_images=16, per=2)
    kw = dict(pool="toy:6", steps=8, P=3, K=2, backbone="resnet10", width=0.125, crop_size=32, embedding_dim=16,
              holdout_frac=0.34, val_every=100, ckpt_every=4, warmup=2, device="cpu", half=False,
              val_images_per_model=2)
    quiet = dict(log=lambda *_: None)
    straight = train(TrainConfig(out=str(tmp_path / "a.pt"), **kw), bank=bank, source=ToySource(6), **quiet)
    # Normalisation probe (4 batches x 3 models) + val set (2 x 2) + 5 steps x 3 models, then Ctrl-C in step 6.
    src = _Interrupting(after=4 * 3 + 2 + 5 * 3)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(out=str(tmp_path / "b.pt"), **kw), bank=bank, source=src, **quiet)
    assert not (tmp_path / "b.pt").exists() and (tmp_path / "b.state.pt").exists()
    resumed = train(TrainConfig(out=str(tmp_path / "b.pt"), **kw), bank=bank, source=ToySource(6), resume=True, **quiet)
    assert resumed.steps == straight.steps == 8
    sa = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    sb = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=1e-5, rtol=1e-4)


def test_cli_train_bad_inputs(tmp_path, photo_dir, capsys):
    from fpt.cli import main

    assert main(["train", "--pool", str(tmp_path / "missing.h5"), "--images", str(photo_dir),
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "pool not found" in capsys.readouterr().err
    assert main(["train", "--images", str(photo_dir), "--out", str(tmp_path / "m.pt")]) == 2
    assert main(["train", "--images", str(photo_dir)]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
    assert main(_args(photo_dir, tmp_path / "x.pt", 4) + ["--residual", "nope"]) == 2
    assert main(_args(photo_dir, tmp_path / "x.pt", 4) + ["--aug-jpeg", "1.5"]) == 2
    assert main(_args(photo_dir, tmp_path / "y.pt", 4) + ["--resume"]) == 3  # nothing to resume
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--pool", "toy:4", "--images", str(empty), "--out", str(tmp_path / "z.pt")]) == 2


def test_multi_source_keeps_ids_unique_and_routes():
    from fpt.extractor.data import MultiSource

    a, b = ToySource(n_archs=2), ToySource(n_archs=3)
    m = MultiSource([a, b])
    assert len(m.model_ids) == 5 and len(set(m.model_ids)) == 5
    assert "toy-a0/s000#2" in m.model_ids
    x = _natural_like(2, 32, 1)
    g = torch.Generator()
    torch.testing.assert_close(m.apply("toy-a2/s000", x, g), b.apply("toy-a2/s000", x, g))


def test_lr_schedule_warmup_cosine_and_time_budget():
    from fpt.extractor.train import lr_factor

    cfg = TrainConfig(steps=110, warmup=10, schedule="cosine")
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60) == pytest.approx(0.5)
    assert lr_factor(cfg, 109) < 0.01
    # Half the time budget gone at step 20: the schedule follows time, not steps.
    assert lr_factor(cfg, 20, time_frac=0.5) == pytest.approx(0.5)
    assert lr_factor(TrainConfig(steps=10, warmup=0, schedule="constant"), 5) == 1.0


def test_time_budget_stops_early_and_still_saves(tmp_path):
    bank = _bank(n_images=16, per=2)
    cfg = TrainConfig(pool="toy:6", out=str(tmp_path / "t.pt"), steps=10**6, P=3, K=2, backbone="resnet10",
                      width=0.125, crop_size=32, embedding_dim=16, holdout_frac=0.34, val_every=10**6,
                      ckpt_every=10**6, warmup=1, device="cpu", max_minutes=0.02, val_images_per_model=2)
    res = train(cfg, bank=bank, source=ToySource(6), log=lambda *_: None)
    assert 0 < res.steps < 10**6
    assert res.final.get("step") == res.steps and "auc" in res.final
    from fpt.extractor.checkpoint import load_extractor

    assert load_extractor(tmp_path / "t.pt", "cpu").config["steps_done"] == res.steps


def test_progress_goes_through_callbacks(tmp_path, capsys):
    """Core training never draws: every step and message reaches the caller's callbacks only."""
    bank = _bank(n_images=16, per=2)
    cfg = TrainConfig(pool="toy:6", out=str(tmp_path / "t.pt"), steps=3, P=3, K=2, backbone="resnet10",
                      width=0.125, crop_size=32, embedding_dim=16, holdout_frac=0.34, val_every=2,
                      ckpt_every=10**6, warmup=1, device="cpu", val_images_per_model=2)
    steps, lines = [], []
    train(cfg, bank=bank, source=ToySource(6), log=lines.append,
          on_step=lambda done, total, info: steps.append((done, total, info)))
    assert [s[:2] for s in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(s[2].startswith("loss ") for s in steps)
    vals = [ln for ln in lines if ln.startswith("val ")]
    assert len(vals) == 2 and "step=2" in vals[0].split() and "step=3" in vals[1].split()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_denoiser_residual_is_built_once_with_its_weights(tmp_path):
    """residual=denoiser: the net is built once, with the (frozen) shipped denoiser's weights."""
    from fpt.extractor.denoiser import load_denoiser

    bank = _bank(n_images=16, per=2)
    cfg = TrainConfig(pool="toy:6", out=str(tmp_path / "t.pt"), steps=1, P=3, K=2, backbone="resnet10",
                      width=0.125, crop_size=32, embedding_dim=16, holdout_frac=0.34, val_every=10**6,
                      ckpt_every=10**6, warmup=1, device="cpu", val_images_per_model=2, residual="denoiser")
    res = train(cfg, bank=bank, source=ToySource(6), log=lambda *_: None, return_net=True)
    dn = load_denoiser(None)
    got = res.net.transform.residual.net.state_dict()
    assert res.net.config["denoiser"] == dn.config()
    assert all(torch.equal(got[k].cpu(), v) for k, v in dn.state_dict().items())


def test_refit_for_windows_keeps_the_network_and_refits_the_whitening(tmp_path, photo_dir):
    """examples/refit_windows.py's core: same weights, new grid, whitening refitted on the run's
    own split (rebuilt from the checkpoint's record), validation rerun, provenance recorded."""
    from fpt.cli import main
    from fpt.errors import CheckpointError
    from fpt.extractor.checkpoint import load_extractor
    from fpt.extractor.train import recorded_run, refit_for_windows

    a = tmp_path / "a.pt"
    assert main(_args(photo_dir, a, 6)) == 0
    ex = load_extractor(a, "cpu")
    run = recorded_run(ex)
    assert sorted({i.split("/")[0] for i in run.val_ids}) == sorted(ex.config["heldout_archs"])
    b = tmp_path / "b.pt"
    sha = refit_for_windows(ex, 2, b)
    ex2 = load_extractor(b, "cpu")
    assert ex2.sha256 == sha != ex.sha256
    assert (ex.preprocessing.windows, ex2.preprocessing.windows) == (3, 2) and ex2.config["windows"] == 2
    sd1, sd2 = ex.net.state_dict(), ex2.net.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    w1, w2 = ex.whitening.state(), ex2.whitening.state()
    assert w1.keys() == w2.keys() and not all(torch.equal(torch.as_tensor(w1[k]), torch.as_tensor(w2[k])) for k in w1)
    assert ex2.config["refit"]["from_sha256"] == ex.sha256 and ex2.config["refit"]["windows_before"] == 3
    assert set(ex2.config["validation_whitening"]) >= {"plain", "whitened"}
    with pytest.raises(CheckpointError, match="not the one this checkpoint recorded"):
        recorded_run(ex, pool="toy:9")
