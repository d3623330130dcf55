"""Fréchet Frequency Distance (paper 001): known answers and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fpt.errors import ConfigError, EmptyInputError
from fpt.metrics.ffd import (ablation_subsets, ffd, find_model_folders, folder_model_set, model_representation,
                             reduced_spectra)
from fpt.residual import build_residual


def test_ffd_of_a_set_with_itself_is_zero_and_grows_with_shift(rng):
    a = rng.normal(size=(40, 16))
    assert ffd(a, a) == pytest.approx(0.0, abs=1e-6)
    values = [ffd(a, a + s) for s in (0.05, 0.1, 0.2, 0.4)]
    assert values == sorted(values) and values[0] > 0
    # a pure mean shift of s in every one of d dims adds exactly d * s^2
    assert values[-1] == pytest.approx(16 * 0.4**2, rel=1e-6)


def test_ffd_needs_matching_sets(rng):
    with pytest.raises(ConfigError):
        ffd(rng.normal(size=(5, 8)), rng.normal(size=(5, 9)))
    with pytest.raises(ConfigError):
        ffd(rng.normal(size=(1, 8)), rng.normal(size=(5, 8)))


def test_reduced_spectrum_is_normalised_and_sees_high_frequencies():
    res = build_residual("highpass")
    g = torch.Generator().manual_seed(0)
    white = torch.rand(8, 3, 32, 32, generator=g)
    smooth = F.avg_pool2d(F.pad(white, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    rs = reduced_spectra(white, res)
    assert rs.shape == (8, 16) and float(rs.min()) >= 0 and float(rs.max()) <= 1.0 + 1e-6
    # blurring removes high-frequency energy: the spectra of the two "models" differ
    w, s = model_representation(white, res), model_representation(smooth, res)
    assert np.abs(w - s).max() > 0.1


def _write_model(folder, images):
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_folder_model_sets_spectrally_shifted_models_are_farther(tmp_path):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(3 * 6, 3, 40, 40, generator=g) * 0.5 + 0.25
    blur = F.avg_pool2d(F.pad(base, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    for k in range(3):  # three "real" generators and three spectrally shifted ones
        _write_model(tmp_path / "a" / f"gen{k}", base[k * 6 : (k + 1) * 6])
        _write_model(tmp_path / "b" / f"gen{k}", base[k * 6 : (k + 1) * 6].flip(-1))
        _write_model(tmp_path / "c" / f"gen{k}", blur[k * 6 : (k + 1) * 6])
    _write_model(tmp_path / "a" / "tiny", torch.rand(3, 3, 16, 16, generator=g))
    sa = folder_model_set(tmp_path / "a", n=6, size=32)
    assert sa.names == ["gen0", "gen1", "gen2"] and "tiny" in sa.skipped
    sb = folder_model_set(tmp_path / "b", n=6, size=32)
    sc = folder_model_set(tmp_path / "c", n=6, size=32)
    assert ffd(sa.reps, sa.reps) == pytest.approx(0.0, abs=1e-6)
    assert ffd(sa.reps, sb.reps) < ffd(sa.reps, sc.reps)
    assert list(find_model_folders(tmp_path / "a", exclude=["gen*"])) == ["tiny"]
    with pytest.raises(EmptyInputError):
        find_model_folders(tmp_path / "a", min_images=50)


def test_ablation_subsets_follow_the_paper():
    from fpt.synth.space import fd_space

    ids = [f"{a.id}/s{s:03d}" for a in fd_space() for s in (0, 1)] + ["grid-D3/s000"]
    sub = ablation_subsets(ids)
    assert len(sub["All"]) == 576 and len(sub["w/o seed"]) == 288
    assert len(sub["w/o U"]) == 192 and all("-bilinear-" in m for m in sub["w/o U"])
    assert len(sub["w/o A"]) == 144 and all("-none-" in m for m in sub["w/o A"])
