"""The training stream on a real (tiny) synthetic-model pool file written by fpt.synth."""

from __future__ import annotations

import pytest
import torch

from fpt.errors import ConfigError, StoreError


def _tiny_pool(path):
    from fpt.synth.pool import PoolWriter
    from fpt.synth.space import parse_arch_id
    from fpt.synth.train import CropBank, TrainConfig, train_one

    g = torch.Generator().manual_seed(0)
    bank = CropBank(torch.rand(16, 3, 32, 32, generator=g))
    cfg = TrainConfig(size=32, width=8, max_steps=2, batch=4, val_batch=4, check_every=1)
    with PoolWriter(path, {"size": 32, "width": 8}) as w:
        for arch in ("K1-L1-post-nearest-relu-none", "K1-L1-post-deconv-none-bn", "K2-L1-pre-bilinear-tanh-in",
                     "grid-D3"):
            for seed in (0, 1):
                state, rec = train_one(parse_arch_id(arch), seed, bank, cfg)
                w.add(state, rec)


def test_pool_source_feeds_p_by_k_batches(tmp_path):
    from fpt.extractor.data import CropBank, FingerprintStream, PoolSource, split_models

    path = tmp_path / "pool.h5"
    _tiny_pool(path)
    src = PoolSource(path, only_reached=False)
    assert len(src.model_ids) == 8
    train_ids, val_ids = split_models(src.model_ids, holdout_frac=0.34, seed=0)
    assert val_ids and not any(m.startswith("grid") for m in val_ids)
    x = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    bank = CropBank(x, torch.arange(6), [])
    stream = FingerprintStream(src, train_ids, bank, P=2, K=3, seed=0)
    b = stream.batch(0)
    assert b.images.shape == (6, 3, 32, 32) and 0 <= float(b.images.min()) and float(b.images.max()) <= 1
    assert len(set(b.labels.tolist())) == 2
    # A synthetic model really changes the image (FD reconstruction or added grid noise).
    mid = b.model_ids[0]
    crops = bank.get(torch.arange(2))
    out = src.apply(mid, crops, torch.Generator().manual_seed(0))
    assert out.shape == crops.shape and not torch.equal(out, crops)


def test_pool_source_bad_file(tmp_path):
    from fpt.extractor.data import PoolSource

    bad = tmp_path / "x.h5"
    bad.write_bytes(b"nope")
    with pytest.raises(StoreError):
        PoolSource(bad)


def test_pool_source_model_patterns_make_sub_pools(tmp_path):
    """--models selects FD-only or grid-only sub-pools (paper 000 Table 3 ablation)."""
    from fpt.extractor.data import PoolSource

    path = tmp_path / "pool.h5"
    _tiny_pool(path)
    assert PoolSource(path, models="grid-*").model_ids == ["grid-D3/s000", "grid-D3/s001"]
    fd = PoolSource(path, models="K*").model_ids
    assert len(fd) == 6 and not any(m.startswith("grid") for m in fd)
    assert len(PoolSource(path, models="K1-*, grid-*").model_ids) == 6
    with pytest.raises(ConfigError, match="keeps 0"):
        PoolSource(path, models="nothing-*")


def test_only_learned_leaves_out_collapsed_models(tmp_path):
    """--only-learned: models recorded as not beating a constant output are not classes; pools
    written before the baseline was recorded keep every model."""
    import h5py

    from fpt.extractor.data import PoolSource

    path = tmp_path / "pool.h5"
    _tiny_pool(path)
    fd = ("K1-L1-post-nearest-relu-none", "K1-L1-post-deconv-none-bn", "K2-L1-pre-bilinear-tanh-in")
    with h5py.File(path, "r+") as f:  # one FD model collapsed (0.079 vs a constant's 0.08), the rest learned
        for arch in fd:
            for s in ("s000", "s001"):
                f["models"][arch][s].attrs["baseline_loss"] = 0.08
                f["models"][arch][s].attrs["final_loss"] = 0.079 if (arch, s) == (fd[1], "s000") else 0.01
    every = PoolSource(path)
    assert len(every.model_ids) == 8  # off by default
    src = PoolSource(path, only_learned=True)
    assert "K1-L1-post-deconv-none-bn/s000" not in src.model_ids and len(src.model_ids) == 7
    assert src.describe()["unlearned_dropped"] == 1
    every.pool.close()
    src.pool.close()
    with h5py.File(path, "r+") as f:  # every FD model collapsed, only the two grid models stay
        for arch in fd:
            for s in ("s000", "s001"):
                f["models"][arch][s].attrs["final_loss"] = 0.08
    assert PoolSource(path, only_learned=True).model_ids == ["grid-D3/s000", "grid-D3/s001"]
