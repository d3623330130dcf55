"""Fingerprint whitening: the maths, its storage in checkpoints, and its use when embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fpt.errors import CheckpointError
from fpt.extractor.checkpoint import load_extractor, save_extractor
from fpt.extractor.embed import embed_tensors
from fpt.extractor.net import build_net
from fpt.extractor.whitening import Whitening, fit_whitening
from fpt.metrics.identification import identify_k_shot


def _nuisance_data(n_classes: int = 6, per: int = 30, seed: int = 0):
    """Classes differ a little along dims 2..; every sample varies a lot along dims 0-1 (content)."""
    rng = np.random.default_rng(seed)
    d = 8
    centres = np.zeros((n_classes, d))
    centres[:, 2:] = rng.normal(0, 0.15, (n_classes, d - 2))
    x, y = [], []
    for c in range(n_classes):
        noise = rng.normal(0, 0.02, (per, d))
        noise[:, :2] = rng.normal(0, 1.0, (per, 2))
        x.append(centres[c] + noise + np.r_[3.0, np.zeros(d - 1)])
        y += [c] * per
    return np.concatenate(x), np.array(y)


def test_whitening_removes_a_dominant_nuisance_and_keeps_unit_norm():
    x, y = _nuisance_data()
    w = fit_whitening(x, y, shrinkage=0.01)
    np.testing.assert_allclose(w.matrix, w.matrix.T, atol=1e-10)
    z = w.apply(x)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-6)
    before = np.mean([identify_k_shot(x, y, k=5, rng=np.random.default_rng(r)).accuracy for r in range(5)])
    after = np.mean([identify_k_shot(z, y, k=5, rng=np.random.default_rng(r)).accuracy for r in range(5)])
    assert before < 0.6 and after > 0.95, (before, after)


def test_whitened_within_class_covariance_is_isotropic():
    x, y = _nuisance_data(per=200)
    w = fit_whitening(x, y, shrinkage=1e-6)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    centred = np.concatenate([(xn[y == c] - xn[y == c].mean(0)) @ w.matrix for c in np.unique(y)])
    cov = centred.T @ centred / len(centred)
    np.testing.assert_allclose(cov, np.eye(cov.shape[0]), atol=1e-3)


def test_fit_refuses_too_little_data():
    with pytest.raises(ValueError, match="2\\+ classes"):
        fit_whitening(np.random.rand(5, 4), np.array([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_whitening(np.random.rand(6, 4), np.array([0, 0, 1, 1, 2, 2]), shrinkage=0.0)


def _tiny_net():
    torch.manual_seed(0)
    net = build_net(backbone="resnet10", width=0.125, embedding_dim=16, crop_size=32)
    net.set_normalisation(-3.0, 1.5)
    return net.eval()


def _some_whitening(dim: int = 16) -> Whitening:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(60, dim)), np.repeat(np.arange(6), 10)
    return fit_whitening(x, y)


def test_checkpoint_carries_whitening_and_embedding_applies_it(tmp_path):
    net, wh = _tiny_net(), _some_whitening()
    save_extractor(tmp_path / "plain.pt", net, half=True)
    save_extractor(tmp_path / "white.pt", net, half=True, whitening=wh)
    plain, white = load_extractor(tmp_path / "plain.pt", "cpu"), load_extractor(tmp_path / "white.pt", "cpu")
    assert plain.whitening is None and white.whitening is not None
    # stored at full precision even in an fp16 checkpoint
    np.testing.assert_allclose(white.whitening.matrix, wh.matrix, rtol=1e-6, atol=1e-6)
    imgs = [torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    e_plain, _ = embed_tensors(plain, imgs)
    e_white, _ = embed_tensors(white, imgs)
    e_skip, _ = embed_tensors(white, imgs, whiten=False)
    np.testing.assert_allclose(e_skip, e_plain, atol=1e-6)
    np.testing.assert_allclose(e_white, wh.apply(e_plain), atol=1e-5)
    assert not np.allclose(e_white, e_plain, atol=1e-3)


def test_tampered_whitening_is_refused(tmp_path):
    path = tmp_path / "white.pt"
    save_extractor(path, _tiny_net(), whitening=_some_whitening())
    blob = torch.load(path, weights_only=True)
    blob["state_dict"]["whitening.matrix"] = blob["state_dict"]["whitening.matrix"] * 1.01
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="integrity"):
        load_extractor(path, "cpu")


def test_low_rank_form_matches_the_dense_matrix_when_dims_exceed_samples():
    """The gallery fits on fewer images than dimensions (a PRNU residual has 65 536): the low-rank
    form must apply exactly the dense (S_w + c I)^(-1/2), computed here by brute force."""
    from fpt.metrics.verification import l2_normalise
    from fpt.metrics.within_class import fit_within_class

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 40)), np.repeat(np.arange(4), 3)
    w = fit_within_class(x, y, shrinkage=0.5)
    xn = l2_normalise(x)
    centred = np.concatenate([xn[y == c] - xn[y == c].mean(0) for c in range(4)])
    s_w = centred.T @ centred / len(centred)
    s_w += 0.5 * np.trace(s_w) / 40 * np.eye(40)
    ev, vecs = np.linalg.eigh(s_w)
    dense = (vecs * ev ** -0.5) @ vecs.T
    np.testing.assert_allclose(w.dense_matrix(), dense, atol=1e-9)
    probes = rng.normal(size=(5, 40))
    np.testing.assert_allclose(w.apply(probes), l2_normalise((l2_normalise(probes) - xn.mean(0)) @ dense), atol=1e-6)
