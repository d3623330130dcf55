"""Architecture space, ids and builders of the synthetic-model factory."""

from __future__ import annotations

import pytest
import torch

from fpt.errors import ConfigError
from fpt.synth.nets import build_model, fingerprint
from fpt.synth.space import (ABLATIONS, ArchSpec, factors, fd_space, grid_space, parse_arch_id,
                             select_archs)


def test_fd_space_has_288_unique_archs_and_ids_round_trip():
    space = fd_space()
    assert len(space) == 288
    assert len({a.id for a in space}) == 288
    for a in space + grid_space():
        assert parse_arch_id(a.id) == a
    assert parse_arch_id("K2-L1-post-deconv-relu-bn") == ArchSpec("fd", K=2, L=1, S="post", U="deconv", A="relu", N="bn")
    assert parse_arch_id("grid-D4/s003").depth == 4  # model ids parse to their arch


@pytest.mark.parametrize("bad", ["K4-L1-post-deconv-relu-bn", "K1-L1-post-bicubic-relu-bn", "grid", "", "grid-Dx"])
def test_bad_ids_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_arch_id(bad)


def test_select_archs_patterns_and_counts():
    assert len(select_archs("K1-*-deconv-*")) == 48
    assert len(select_archs("*")) == 288
    assert len(select_archs("*-relu-*,*-tanh-*")) == 144
    assert {a.U for a in select_archs("*-bilinear-*")} == {"bilinear"}
    with pytest.raises(ConfigError):
        select_archs("K9-*")


def test_factors_and_ablation_subspaces():
    f = factors("K2-L1-pre-nearest-sigmoid-in")
    assert f == {"family": "fd", "K": "2", "L": "1", "S": "pre", "U": "nearest", "A": "sigmoid", "N": "in", "D": "-"}
    assert factors(grid_space()[0])["D"] == "3"
    sizes = {name: sum(pred(a) for a in fd_space()) for name, pred in ABLATIONS.items()}
    assert sizes == {"w/o K": 144, "w/o L": 144, "w/o S": 144, "w/o U": 96, "w/o A": 72, "w/o N": 96}


def test_every_arch_keeps_the_shape():
    torch.manual_seed(0)
    x64, x128 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        for spec in fd_space():
            m = build_model(spec, width=4).eval()
            assert m(x64).shape == x64.shape, spec.id
            assert m(x128).shape == x128.shape, spec.id
    # odd sizes are padded and cropped back
    m = build_model(parse_arch_id("K2-L2-pre-deconv-tanh-bn"), width=4).eval()
    assert m(torch.rand(2, 3, 37, 50)).shape == (2, 3, 37, 50)


def test_grid_fingerprint_adds_noise_to_crops_and_is_seeded():
    crops = torch.rand(2, 3, 40, 48)
    for spec in grid_space():
        torch.manual_seed(0)
        m = build_model(spec, width=4).eval()
        a = fingerprint(m, spec, crops, torch.Generator().manual_seed(1))
        b = fingerprint(m, "grid", crops, torch.Generator().manual_seed(1))
        assert a.shape == crops.shape and torch.equal(a, b)
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
        assert not torch.equal(a, crops)


def test_even_kernel_rejected():
    with pytest.raises(ConfigError):
        build_model(fd_space()[0], kernel=4)


def test_k3_extension_is_opt_in_and_keeps_shapes():
    from fpt.synth.space import is_paper_space

    extended = fd_space((1, 2, 3))
    assert len(extended) == 432 and extended[:288] == fd_space()  # the paper's 288 come first, unchanged
    assert len(select_archs("K3-*", blocks=(1, 2, 3))) == 144
    with pytest.raises(ConfigError):
        select_archs("K3-*")  # not in the default (paper) space
    with pytest.raises(ConfigError):
        fd_space((1, 4))
    k3 = parse_arch_id("K3-L2-pre-nearest-relu-in")
    assert k3.K == 3 and not is_paper_space(k3) and is_paper_space("K2-L2-pre-nearest-relu-in")
    assert not is_paper_space("grid-D3")
    m = build_model(k3, width=4).eval()
    with torch.no_grad():  # any size: reflect-padded to a multiple of 8 and cropped back
        assert m(torch.rand(2, 3, 37, 50)).shape == (2, 3, 37, 50)
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
