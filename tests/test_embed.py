"""Inference embedding: window policy, batching, streaming, .npz output.

Also home of the small helpers the other attribution tests import (``FakeExtractor``,
``model_images``, ``write_model_folder``, ``real_extractor``): a fixed, training-free spectral
extractor with the same interface as :class:`fpt.extractor.checkpoint.Extractor`, and "generative
models" made of fixed upsampling filters whose fingerprints it can tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fpt.extractor.embed import EmbedFailure, ImageEmbedding, embed_tensors, iter_embeddings, save_embeddings_npz
from fpt.images import sliding_windows


@dataclass(frozen=True)
class _Pre:
    crop_size: int = 32
    windows: int = 3


class FakeExtractor:
    """Residual -> log |DFT| -> fixed random projection: deterministic and separates filters."""

    def __init__(self, crop_size: int = 32, dim: int = 64, sha256: str = "a" * 64, seed: int = 0) -> None:
        self.preprocessing = _Pre(crop_size, 3)
        self.embedding_dim = dim
        self.sha256 = sha256
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.randn(3 * crop_size * crop_size, dim, generator=g)
        self.calls: list[int] = []

    def embed_crops(self, crops: torch.Tensor) -> torch.Tensor:
        from fpt.residual import HighPassResidual

        s = self.preprocessing.crop_size
        assert crops.shape[1:] == (3, s, s), crops.shape
        self.calls.append(crops.shape[0])
        r = HighPassResidual()(crops)
        spec = torch.log(torch.fft.fft2(r).abs() + 1e-4)
        spec = spec - spec.mean(dim=(1, 2, 3), keepdim=True)
        return F.normalize(spec.flatten(1) @ self.proj, dim=1)


def model_images(model: int, n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` images (n, 3, size, size) from toy generator ``model``: smooth content, 2x zero-interleave
    upsampling and a 3x3 kernel drawn from ``model`` (the kernel's spectrum is the fingerprint)."""
    from fpt.spectrum import zero_interleave

    g = torch.Generator().manual_seed(1000 + model)
    k = torch.randn(3, 1, 3, 3, generator=g) * 0.5 + 0.25
    gc = torch.Generator().manual_seed(seed * 7919 + model)
    x = torch.rand(n, 3, size // 4, size // 4, generator=gc)
    x = F.interpolate(x, size=(size // 2, size // 2), mode="bicubic", align_corners=False).clamp(0, 1)
    up = zero_interleave(x, 2) * 4
    y = F.conv2d(F.pad(up, (1, 1, 1, 1), mode="reflect"), k, groups=3)
    y = y / k.sum(dim=(2, 3)).view(1, 3, 1, 1).clamp_min(0.2)
    return y.clamp(0, 1)


def save_png(img: torch.Tensor, path: Path) -> Path:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_model_folder(root: Path, model: int, n: int, size: int = 64, seed: int = 0) -> Path:
    d = root / f"model{model}"
    for i, img in enumerate(model_images(model, n, size, seed)):
        save_png(img, d / f"{seed}_{i:03d}.png")
    return d


def real_extractor(path: Path, crop_size: int = 32) -> Path:
    """A tiny untrained extractor written with H3's checkpoint code."""
    from fpt.extractor.checkpoint import save_extractor
    from fpt.extractor.net import build_net

    torch.manual_seed(0)
    net = build_net(backbone="resnet18", width=0.125, embedding_dim=16, crop_size=crop_size)
    save_extractor(path, net)
    return path


# ---------------------------------------------------------------- tests


def _manual(ex: FakeExtractor, img: torch.Tensor) -> tuple[np.ndarray, bool]:
    crops, low = sliding_windows(img, ex.preprocessing.crop_size, 3)
    e = ex.embed_crops(crops).numpy()
    m = e.mean(axis=0)
    return m / np.linalg.norm(m), low


@pytest.mark.parametrize("side,low", [(127, True), (128, False), (129, False), (1000, False)])
def test_window_policy_sizes(side, low):
    ex = FakeExtractor(crop_size=128, dim=16)
    g = torch.Generator().manual_seed(side)
    # 1000 px: a tall image (1000 x 300), so both axes are windowed with different strides
    img = torch.rand(3, side, side if side != 1000 else 300, generator=g)
    emb, lowc = embed_tensors(ex, [img])
    assert emb.shape == (1, 16)
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-5)
    assert bool(lowc[0]) is low
    assert ex.calls == [9]  # exactly n*n windows, never more or fewer
    ref, ref_low = _manual(ex, img)
    np.testing.assert_allclose(emb[0], ref, atol=1e-5)


def test_window_offsets_cover_image_edges():
    crops, low = sliding_windows(torch.arange(1000 * 200, dtype=torch.float32).view(1, 1000, 200), 128, 3)
    assert not low and crops.shape == (9, 1, 128, 128)
    # last window flush with the bottom-right corner, first at the top-left
    assert crops[0, 0, 0, 0] == 0
    assert crops[-1, 0, -1, -1] == 1000 * 200 - 1


def test_batching_does_not_change_embeddings():
    ex = FakeExtractor()
    imgs = [torch.rand(3, s, s + 7) for s in (40, 33, 70, 20, 64)]
    a, la = embed_tensors(ex, imgs, batch_size=4)  # windows straddle batch boundaries
    b, lb = embed_tensors(ex, imgs, batch_size=1000)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert la.tolist() == lb.tolist() == [False, False, False, True, False]
    assert max(ex.calls) <= 1000


def test_windows_override():
    ex = FakeExtractor()
    embed_tensors(ex, [torch.rand(3, 64, 64)], windows=2, batch_size=100)
    assert ex.calls == [4]


def test_iter_embeddings_streams_in_order_with_failures(tmp_path):
    ex = FakeExtractor()
    paths = []
    for i in range(5):
        paths.append(save_png(model_images(0, 1, 48, seed=i)[0], tmp_path / f"{i}.png"))
    bad = tmp_path / "2b.png"
    bad.write_bytes(b"not an image")
    order = [paths[0], paths[1], bad, paths[2], paths[3], paths[4]]
    done = []
    res = list(iter_embeddings(ex, order, batch_size=5, on_done=done.append))
    assert [r.path for r in res] == order == done
    assert isinstance(res[2], EmbedFailure) and "not an image" in res[2].reason
    assert all(isinstance(r, ImageEmbedding) for i, r in enumerate(res) if i != 2)
    assert max(ex.calls) <= 5  # bounded batches
    # same result as in-memory embedding
    from fpt.images import load_image

    ref, _ = embed_tensors(ex, [load_image(paths[3])])
    np.testing.assert_allclose(res[4].embedding, ref[0], atol=1e-5)


def test_save_npz_round_trip(tmp_path):
    ex = FakeExtractor()
    paths = [save_png(model_images(1, 1, 40, seed=i)[0], tmp_path / f"{i}.png") for i in range(3)]
    res = list(iter_embeddings(ex, paths))
    out = save_embeddings_npz(tmp_path / "e.npz", res, ex)
    z = np.load(out, allow_pickle=False)
    assert z["embeddings"].shape == (3, 64)
    assert [Path(p) for p in z["paths"]] == paths
    assert str(z["extractor_sha256"]) == ex.sha256
    assert z["sizes"].tolist() == [[40, 40]] * 3


def test_real_extractor_embeds(tmp_path):
    from fpt.extractor.checkpoint import load_extractor

    ex = load_extractor(real_extractor(tmp_path / "x.pt"), device="cpu")
    emb, low = embed_tensors(ex, [torch.rand(3, 50, 45), torch.rand(3, 20, 20)])
    assert emb.shape == (2, ex.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert low.tolist() == [False, True]
