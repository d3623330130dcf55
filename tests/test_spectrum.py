"""Known-answer tests for the frequency core (paper 000 Eq. 4-5, 12, 13) and its additions."""

from __future__ import annotations

import math

import pytest
import torch

from fpt.spectrum import core as S
from fpt.spectrum.analysis import analyse_tensor
from fpt.spectrum.demo import circular_conv2d, upsample_demo, upsample_kernels
from fpt.residual import build_residual


def _cos2d(h: int, w: int, fy: float, fx: float) -> torch.Tensor:
    y = torch.arange(h, dtype=torch.float64).view(h, 1)
    x = torch.arange(w, dtype=torch.float64).view(1, w)
    return torch.cos(2 * math.pi * (fy * y + fx * x))


def test_sinusoid_peaks_at_its_frequency():
    h, w = 64, 48
    p = S.power_spectrum(_cos2d(h, w, 5 / 64, 9 / 48))
    top = torch.topk(p.flatten(), 2).indices
    bins = {(int(i) // w, int(i) % w) for i in top}
    assert bins == {(5, 9), (h - 5, w - 9)}
    # Shifted for display, DC moves to the centre.
    assert S.fftshift(p)[h // 2 + 5, w // 2 + 9] == p[5, 9]


def test_zero_interleave_replicates_spectrum():
    x = torch.rand(2, 3, 16, 12, dtype=torch.float64)
    z = S.zero_interleave(x)
    assert z.shape == (2, 3, 32, 24)
    f = torch.fft.fft2(z)
    m, n = 16, 12
    base = f[..., :m, :n]
    for shifted in (f[..., m:, n:], f[..., m:, :n], f[..., :m, n:]):
        torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)


def test_white_noise_flat_ai_and_half_hp_ratio():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 256, 256, generator=g)
    ai = S.azimuthal_integral(S.power_spectrum(x)).mean(0)[0]
    assert ai.shape == (128,)
    # Flat at 2*pi*variance: each ring's mean of n exponential bins has relative sd 1/sqrt(n),
    # so allow 4 sd per ring (ring 1 has ~8 bins per image, the outer rings ~800).
    idx, n_rings = S._ring_index(256, 256, "cpu")
    n = torch.bincount(idx, minlength=n_rings + 1)[:n_rings].float() * x.shape[0]
    rel = (ai / (2 * math.pi) - 1).abs()
    assert torch.all(rel[1:] < 4 / n[1:].sqrt())
    assert float(rel[64:].max()) < 0.05
    hp = S.hp_ratio(S.azimuthal_integral(S.power_spectrum(x)))
    assert torch.all((hp - 0.5).abs() < 0.02)


def test_ai_is_angular_integral_not_ring_sum():
    # Constant power 1 -> AI = integral over 2*pi of 1 = 2*pi at every radius (a ring *sum* would grow).
    ai = S.azimuthal_integral(torch.ones(32, 40))
    assert ai.shape == (16,)
    torch.testing.assert_close(ai, torch.full((16,), 2 * math.pi))
    assert float(S.hp_ratio(ai)) == pytest.approx(0.5)


def test_hp_ratio_eq13():
    ai = torch.tensor([4.0, 3.0, 2.0, 1.0])  # M/2 = 4 rings; HP = rings 2..3
    assert float(S.hp_ratio(ai)) == pytest.approx(3.0 / 10.0)


def test_upsampling_kernels_hp_ratio_and_grid():
    for seed in range(3):
        demo = upsample_demo(size=64, seed=seed)
        hp = {s.name: s.hp_ratio for s in demo.steps}
        peaks = {s.name: {p.label for p in s.peaks} for s in demo.steps}
        assert demo.replication_error < 1e-9
        assert hp["input"] == pytest.approx(0.5, abs=0.05)
        assert peaks["input"] == set()
        assert peaks["zero-interleaved"] == {"(0, 1/2)", "(1/2, 0)", "(1/2, 1/2)"}
        # Nearest and bilinear: low-pass, lower HP ratio, grid removed (zeros of their spectra at 1/2).
        assert hp["+ nearest kernel"] < hp["zero-interleaved"] - 0.2
        assert hp["+ bilinear kernel"] < hp["+ nearest kernel"]
        assert not any("1/2" in lab for lab in peaks["+ nearest kernel"] | peaks["+ bilinear kernel"])
        # A random deconvolution kernel leaves the grid, reported at 1/2.
        assert {"(0, 1/2)", "(1/2, 0)", "(1/2, 1/2)"} <= peaks["+ deconvolution kernel"]


def test_circular_conv_matches_direct():
    x = torch.rand(8, 8, dtype=torch.float64)
    k = torch.rand(2, 3, dtype=torch.float64)
    y = circular_conv2d(x, k)
    direct = sum(k[i, j] * torch.roll(x, (i, j), (0, 1)) for i in range(2) for j in range(3))
    torch.testing.assert_close(y, direct)
    assert set(upsample_kernels(0)) == {"nearest", "bilinear", "deconvolution"}


# ------------------------------------------------------------------ grid peaks


@pytest.mark.parametrize("size", [64, 100, 256])
def test_find_grid_peaks_planted(size):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(size, size, generator=g, dtype=torch.float64)
    x = x + 0.5 * _cos2d(size, size, 0.25, 0.125) + 0.5 * _cos2d(size, size, 0.0, 0.5)
    peaks = S.find_grid_peaks(S.power_spectrum(x))
    labels = {p.label for p in peaks}
    assert {"(1/4, 1/8)", "(0, 1/2)"} <= labels
    # Nothing else: white noise alone stays under the threshold here.
    assert labels == {"(1/4, 1/8)", "(0, 1/2)"}
    assert all(p.strength > 10 for p in peaks)
    assert peaks == sorted(peaks, key=lambda p: -p.strength)


def test_find_grid_peaks_white_noise_has_none():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 3, 128, 128, generator=g)
    assert S.find_grid_peaks(S.power_spectrum(x)) == []


def test_grid_candidates_half_plane_and_small_sizes():
    c = S.grid_candidates(256, 256)
    assert len(c) == (8 * 8 - 1 + 3) // 2  # one of each +-f pair; the 3 self-conjugate points once
    assert (0, 0) not in c
    # 28 px (MNIST): 1/8 needs 32 px, so only multiples of 1/4.
    assert all((fy * 4).denominator == 1 and (fx * 4).denominator == 1 for fy, fx in S.grid_candidates(28, 28))


# ------------------------------------------------------------------ radial / angular / ACF


def test_radial_spectrum_white_noise_flat_and_reaches_corners():
    g = torch.Generator().manual_seed(3)
    p = S.power_spectrum(torch.randn(4, 1, 128, 128, generator=g)).mean(0)[0]
    r, v = S.radial_spectrum(p)
    assert r[-1] == pytest.approx(math.sqrt(0.5))
    assert torch.isfinite(v).all()
    # Bins up to r = 0.6 hold >= ~100 exponential samples here; the last few only the corners.
    inner = (r > 0.05) & (r < 0.6)
    assert torch.all((v[inner] - 1).abs() < 0.35)
    assert float(v[r >= 0.5].mean()) == pytest.approx(1.0, abs=0.15)


def test_angular_spectrum_orientation():
    # Vertical stripes vary along x: horizontal frequency -> 0 degrees.
    p = S.power_spectrum(_cos2d(64, 64, 0.0, 0.25) + 1e-3 * torch.randn(64, 64, dtype=torch.float64))
    a, v = S.angular_spectrum(p, n_bins=18)
    assert a.shape == (18,) and float(a[0]) == pytest.approx(5.0)
    assert int(v.argmax()) == 0
    p2 = S.power_spectrum(_cos2d(64, 64, 0.25, 0.0) + 1e-3 * torch.randn(64, 64, dtype=torch.float64))
    assert int(S.angular_spectrum(p2, n_bins=18)[1].argmax()) == 9  # 90 degrees


def test_autocorrelation_known_answers():
    x = _cos2d(32, 32, 0.0, 0.25)  # period 4 px along x
    acf = S.autocorrelation(x)
    assert float(acf[0, 0]) == pytest.approx(1.0)
    assert float(acf[0, 4]) == pytest.approx(1.0, abs=1e-9)
    assert float(acf[0, 2]) == pytest.approx(-1.0, abs=1e-9)
    torch.testing.assert_close(S.autocorrelation(S.power_spectrum(x), from_power=True), acf)
    g = torch.Generator().manual_seed(4)
    n = S.autocorrelation(torch.randn(128, 128, generator=g))
    n[0, 0] = 0
    assert float(n.abs().max()) < 0.05


# ------------------------------------------------------------------ mean spectrum and residuals


def test_mean_spectrum_matches_direct_mean_and_merges():
    g = torch.Generator().manual_seed(5)
    xs = torch.rand(6, 3, 32, 32, generator=g)
    direct = S.power_spectrum(xs - xs.mean((-2, -1), keepdim=True)).mean(0)
    a, b = S.MeanSpectrum(), S.MeanSpectrum(32)
    a.update(xs[:4])
    b.update(xs[4])  # (C, H, W) works too
    b.update(xs[5])
    a.merge(b)
    assert a.count == 6 and a.size == 32
    torch.testing.assert_close(a.mean, direct, rtol=1e-5, atol=1e-7)
    assert a.var.shape == (3, 32, 32) and torch.all(a.var >= 0)


def test_mean_spectrum_varying_sizes_centre_cropped():
    m = S.MeanSpectrum(16)
    big = torch.rand(3, 40, 30)
    m.update(big)
    m.update(torch.rand(3, 10, 12))  # smaller: mirror-padded and counted
    assert m.mean.shape == (3, 16, 16) and m.count == 2 and m.n_padded == 1
    one = S.MeanSpectrum(16)
    one.update(big[:, 12:28, 7:23])
    assert torch.allclose(one.mean * 1, S.power_spectrum(big[:, 12:28, 7:23] - big[:, 12:28, 7:23].mean((-2, -1), keepdim=True)))
    with pytest.raises(ValueError, match="16x16"):
        m.update_power(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="no spectra"):
        S.MeanSpectrum().mean


def test_residual_spectra_shapes_and_highpass():
    res = build_residual("highpass")
    x = torch.rand(2, 3, 32, 32)
    assert S.residual_spectra(x, res).shape == (2, 3, 32, 32)
    assert S.residual_spectra(x[0], res, grey=True).shape == (1, 1, 32, 32)
    # The high-pass residual removes low frequencies: its HP ratio is far above the image's.
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 70, 70), 7, 1)[..., :64, :64]
    hp_img = S.hp_ratio(S.azimuthal_integral(S.residual_spectra(smooth, None).mean(1)))
    hp_res = S.hp_ratio(S.azimuthal_integral(S.residual_spectra(smooth, res).mean(1)))
    assert float(hp_res) > float(hp_img) + 0.3


def test_analyse_tensor_summary():
    g = torch.Generator().manual_seed(6)
    img = torch.rand(3, 48, 64, generator=g)
    rep, r = analyse_tensor(img, None, keep_arrays=True)
    assert (rep.width, rep.height) == (64, 48) and r.shape == (3, 48, 64)
    assert rep.residual_energy == pytest.approx(1 / 12, rel=0.1)  # variance of U(0, 1)
    assert rep.hp_ratio == pytest.approx(0.5, abs=0.05)
    assert rep.arrays.ai.shape == (24,) and rep.arrays.autocorr.shape == (47, 47)  # lags -23..23
    assert rep.arrays.autocorr[23, 23] == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(64, 64), (63, 50), (32, 41)])
def test_azimuthal_integral_fast_matches_definition(shape):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, *shape, generator=g, dtype=torch.float64)
    ref = S.azimuthal_integral(S.power_spectrum(x))
    torch.testing.assert_close(S.azimuthal_integral_fast(x), ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        S.azimuthal_integral_fast(x, channel_mean=True), S.azimuthal_integral(S.power_spectrum(x).mean(1))
    )


def test_highpass_residual_is_reflect_padded_box_difference():
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 3, 17, 23, generator=g, dtype=torch.float64, requires_grad=True)
    res = build_residual("highpass")
    k = torch.full((3, 1, 3, 3), 1 / 9, dtype=torch.float64)
    ref = x - torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), k, groups=3)
    torch.testing.assert_close(res(x), ref)
    torch.testing.assert_close(res(x[0]), ref[0])  # (C, H, W) works too
    # Constant images have no residual; gradients flow.
    assert float(res(torch.full((1, 3, 9, 9), 0.3)).abs().max()) < 1e-6
    res(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_periodic_component_removes_border_cross():
    g = torch.Generator().manual_seed(9)
    ramp = torch.arange(64.0).view(64, 1).expand(64, 64) / 64  # jump of ~1 between top and bottom rows
    x = ramp + 0.01 * torch.randn(64, 64, generator=g)
    raw = S.power_spectrum(x - x.mean())
    per = S.periodic_component(x)
    pp = S.power_spectrum(per - per.mean())
    assert float(raw[1:, 0].mean()) > 1000 * float(raw[1:, 1:].mean())  # the cross dominates
    assert float(pp[1:, 0].mean()) < 30 * float(pp[1:, 1:].mean())  # gone (to within 30x of off-axis noise)
    torch.testing.assert_close(pp[1:, 1:].mean(), raw[1:, 1:].mean(), rtol=0.2, atol=0)  # content kept
    assert float(per.mean()) == pytest.approx(float(x.mean()), abs=1e-5)
    # Planted grid peaks survive the decomposition.
    c = _cos2d(64, 64, 0.25, 0.125).float() + torch.randn(64, 64, generator=g)
    assert "(1/4, 1/8)" in {p.label for p in S.find_grid_peaks(S.power_spectrum(S.periodic_component(c)))}
    m = S.MeanSpectrum(32, periodic=True)
    m.update(x.view(1, 1, 64, 64))
    assert float(m.mean[0, 1:, 0].mean()) < 30 * float(m.mean[0, 1:, 1:].mean())
