"""Latent-decoder extension of the synthetic space (DESIGN §2b): ids, builders, VQ, pool + CLI."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from fpt.errors import ConfigError
from fpt.synth.nets import LDUpsample, LatentDecoderModel, VectorQuantizer, build_model, fingerprint
from fpt.synth.space import (LD_A_VALUES, LD_N_VALUES, LD_Q_VALUES, LD_R_VALUES, LD_U_VALUES, ArchSpec, factors,
                             fd_space, is_paper_space, ld_space, parse_arch_id, select_archs, select_ld_archs)
from fpt.synth.train import CropBank, TrainConfig, train_one


def test_ld_space_ids_round_trip_and_stay_out_of_the_paper_space():
    space = ld_space()
    assert len(space) == 2 * 3 * 2 * 2 * 2 * 2 == 96
    assert len({a.id for a in space}) == 96
    for a in space:
        assert parse_arch_id(a.id) == a
        assert parse_arch_id(a.id + "/s007") == a
        assert not is_paper_space(a)
    spec = parse_arch_id("LD-f16-z4-shuffle-res-gn-gelu-vq")
    assert (spec.family, spec.F, spec.Z, spec.U, spec.R, spec.N, spec.A, spec.Q) == \
        ("ld", 16, 4, "shuffle", "res", "gn", "gelu", "vq")
    # the paper's patterns never pick latent decoders, and the paper space is unchanged
    assert len(select_archs("*")) == 288 and len(fd_space()) == 288
    assert {a.family for a in select_archs("*")} == {"fd"}
    assert len(ld_space(latents=(4, 16))) == 192


def test_select_ld_archs_patterns():
    assert select_ld_archs("none") == [] and select_ld_archs("") == []
    assert len(select_ld_archs("LD-*")) == 96
    assert len(select_ld_archs("LD-f8-*")) == 48
    assert {a.Q for a in select_ld_archs("LD-*-vq")} == {"vq"}
    with pytest.raises(ConfigError):
        select_ld_archs("LD-f32-*")


@pytest.mark.parametrize("bad", ["LD-f4-z4-nearest-res-gn-silu-ae", "LD-f8-z3-nearest-res-gn-silu-ae",
                                 "LD-f8-z4-bilinear-res-gn-silu-ae", "LD-f8-z4-nearest-dense-gn-silu-ae",
                                 "LD-f8-z4-nearest-res-bn-silu-ae", "LD-f8-z4-nearest-res-gn-relu-ae",
                                 "LD-f8-z4-nearest-res-gn-silu-kl", "LD-f8-nearest-res-gn-silu-ae"])
def test_bad_ld_ids_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_arch_id(bad)


def test_ld_factors():
    f = factors("LD-f16-z4-deconv-plain-none-gelu-ae")
    assert f["family"] == "ld" and f["K"] == "4" and f["L"] == "1" and f["U"] == "deconv"
    assert (f["F"], f["Z"], f["R"], f["Q"], f["N"], f["A"]) == ("16", "4", "plain", "ae", "none", "gelu")


@pytest.mark.parametrize("factor", [8, 16])
def test_every_factor_builds_and_keeps_the_shape(factor):
    """Each value of every factor builds, keeps (N, 3, H, W) (odd sizes padded and cropped back)
    and has the latent grid at 1/F with Z channels."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    picks = [ArchSpec("ld", F=factor, Z=4, U=u, R=r, N=n, A=a, Q=q)
             for u, r, n, a, q in zip(LD_U_VALUES, LD_R_VALUES * 2, LD_N_VALUES * 2, LD_A_VALUES * 2, LD_Q_VALUES * 2)]
    picks.append(ArchSpec("ld", F=factor, Z=16, U="nearest", R="res", N="gn", A="silu", Q="vq"))
    with torch.no_grad():
        for spec in picks:
            m = build_model(spec, width=4).eval()
            assert isinstance(m, LatentDecoderModel)
            assert m(x).shape == x.shape, spec.id
            assert m(torch.rand(1, 3, 37, 50)).shape == (1, 3, 37, 50), spec.id
            z = m.encoder(x * 2 - 1)
            assert z.shape == (2, spec.Z, 64 // factor, 64 // factor), spec.id
            assert len(m.up) == factor.bit_length() - 1


@pytest.mark.parametrize("mode", LD_U_VALUES)
def test_each_upsampler_doubles_the_size(mode):
    up = LDUpsample(mode, 8, 4, 3)
    assert up(torch.rand(1, 8, 5, 7)).shape == (1, 4, 10, 14)


def test_vq_quantises_to_codebook_entries_with_straight_through_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    vq.train()
    q = vq(z)
    # every output vector is one of the 16 codes, the nearest one (known answer by brute force)
    flat = q.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    zin = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    for v, zi in zip(flat, zin):
        d = (vq.codebook.detach() - zi).square().sum(1)
        assert torch.allclose(v, vq.codebook.detach()[d.argmin()], atol=1e-6)
    assert vq.aux_loss is not None and vq.aux_loss.item() > 0
    q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient
    vq.eval()
    vq(z)
    assert vq.aux_loss is None


def test_vq_model_trains_its_codebook():
    torch.manual_seed(0)
    bank = CropBank(torch.rand(16, 3, 64, 64))
    spec = parse_arch_id("LD-f16-z4-nearest-res-gn-silu-vq")
    cfg = TrainConfig(size=64, width=4, batch=4, max_steps=12, check_every=4, val_batch=4, lr=5e-3)
    state, rec = train_one(spec, 0, bank, cfg)
    assert rec.steps == 12 and np.isfinite(rec.final_loss) and rec.family == "ld"
    assert "quantizer.codebook" in state
    # the codebook moved from its initial values: it learns only through the aux (codebook) loss
    from fpt.synth.train import model_seed

    torch.manual_seed(model_seed(spec.id, 0))
    fresh = build_model(spec, 4).state_dict()["quantizer.codebook"].numpy()
    assert not np.allclose(state["quantizer.codebook"], fresh)


def _photos(d, n=6, size=80):
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


def test_cli_builds_a_latent_decoder_pool_the_extractor_can_read(tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "ld.h5"
    cmd = ["fpt", "--threads", "1", "synth", "--images", str(photos), "--out", str(out), "--arch", "none",
           "--ld-arch", "LD-f8-z4-nearest-res-gn-silu-ae,LD-f16-z4-shuffle-plain-none-gelu-vq",
           "--grid-depths", "none", "--size", "64", "--width", "4", "--batch", "2", "--max-steps", "2",
           "--crops", "4", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trained"] == 2
    from fpt.extractor.data import PoolSource

    src = PoolSource(out)
    assert sorted(src.model_ids) == ["LD-f16-z4-shuffle-plain-none-gelu-vq/s000", "LD-f8-z4-nearest-res-gn-silu-ae/s000"]
    y = src.apply(src.model_ids[0], torch.rand(2, 3, 64, 64), torch.Generator())
    assert y.shape == (2, 3, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1
    # a too-small crop for f16 is refused with one clear line
    r = subprocess.run(cmd[:-1] + ["--size", "32"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "latent grid" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cmd[:11] + ["LD-f99-*"] + cmd[12:], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "no latent-decoder architecture" in r.stderr


def test_fingerprint_of_a_latent_decoder_is_its_reconstruction():
    torch.manual_seed(0)
    spec = parse_arch_id("LD-f8-z4-deconv-res-gn-silu-ae")
    m = build_model(spec, 4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fingerprint(m, spec, x), m(x).clamp(0, 1))


def test_ffd_ablation_subsets_keep_latent_decoders_out_of_the_paper_sets():
    from fpt.metrics.ffd import ablation_subsets

    ids = ["K1-L1-post-nearest-none-none/s000", "grid-D3/s000", "LD-f8-z4-nearest-res-none-silu-ae/s000"]
    subsets = ablation_subsets(ids)
    assert subsets["All"] == ["K1-L1-post-nearest-none-none/s000"]
    assert all("LD-f8-z4-nearest-res-none-silu-ae/s000" not in v for v in subsets.values())
