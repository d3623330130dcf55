"""Batched Fourier analysis of images and noise residuals (torch; CPU or CUDA).

Conventions
-----------
- Inputs are float tensors (N, C, H, W) (a single (C, H, W) image or (H, W) plane also works:
  every function operates on the last two dimensions).
- ``power_spectrum`` is ``|DFT|^2 / (H * W)``, unshifted (DC at [0, 0]); with this normalisation
  white noise of variance s^2 has expected power s^2 at every frequency.
- Radii are measured in DFT bins of the shorter side M = min(H, W): ring k holds the frequencies
  whose normalised radius sqrt(fy^2 + fx^2) (cycles/pixel) rounds to k / M.

Azimuthal integral (paper 000, Eq. 12) integrates the power over the angle phi on each ring:
AI(w_k) = integral_0^2pi |F(w_k cos phi, w_k sin phi)|^2 dphi, which on the pixel grid is
2 * pi * (mean power of the pixels on ring k), for k = 0 .. M/2 - 1. Frequencies beyond M/2 (the
corners) are outside every ring, as in the paper. A white spectrum therefore gives a flat AI and
HP ratio (Eq. 13) of exactly 0.5. (Summing ring pixels instead would weight each ring by its
circumference ~ 2 pi k; we do not do that.)
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: ITU-R BT.601 luma weights, for grey spectra.
LUMA = (0.299, 0.587, 0.114)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma; single-channel input is returned unchanged."""
    if x.shape[-3] == 1:
        return x
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True)


def dft(x: torch.Tensor) -> torch.Tensor:
    """Complex 2-D DFT over the last two dimensions (computed in float32 at least)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return torch.fft.fft2(x)


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """``|DFT(x)|^2 / (H W)`` over the last two dims, unshifted."""
    h, w = x.shape[-2:]
    f = dft(x)
    return (f.real.square() + f.imag.square()) / (h * w)


def magnitude_spectrum(x: torch.Tensor) -> torch.Tensor:
    """``|DFT(x)| / sqrt(H W)`` over the last two dims, unshifted."""
    return power_spectrum(x).sqrt()


def log_spectrum(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Natural log of the magnitude spectrum (unshifted), for display and network input."""
    return torch.log(magnitude_spectrum(x) + eps)


def fftshift(spec: torch.Tensor) -> torch.Tensor:
    """Move DC to the centre (for display)."""
    return torch.fft.fftshift(spec, dim=(-2, -1))


def normalised_frequencies(h: int, w: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Frequency of each DFT bin in cycles/pixel, as (H, 1) and (1, W) grids (unshifted layout)."""
    fy = torch.fft.fftfreq(h, device=device).view(h, 1)
    fx = torch.fft.fftfreq(w, device=device).view(1, w)
    return fy, fx


@lru_cache(maxsize=32)
def _ring_index(h: int, w: int, device: str) -> tuple[torch.Tensor, int]:
    """Per-pixel ring number (flattened, unshifted layout) and number of rings M/2.

    Pixels outside the last ring get index ``n_rings`` (a discard bin).
    """
    m = min(h, w)
    n_rings = m // 2
    fy, fx = normalised_frequencies(h, w, device)
    radius = torch.sqrt(fy.double().square() + fx.double().square()) * m
    ring = torch.floor(radius + 0.5).long()
    ring = torch.where(ring < n_rings, ring, torch.full_like(ring, n_rings))
    return ring.flatten(), n_rings


def ring_means(power: torch.Tensor) -> torch.Tensor:
    """Mean of ``power`` (..., H, W) on each ring k = 0 .. M/2 - 1 -> (..., M/2)."""
    h, w = power.shape[-2:]
    idx, n_rings = _ring_index(h, w, str(power.device))
    lead = power.shape[:-2]
    flat = power.reshape(-1, h * w)
    sums = torch.zeros(flat.shape[0], n_rings + 1, dtype=flat.dtype, device=flat.device)
    sums.index_add_(1, idx, flat)
    counts = torch.bincount(idx, minlength=n_rings + 1).to(flat.dtype)
    means = sums[:, :n_rings] / counts[:n_rings].clamp_min(1)
    return means.reshape(*lead, n_rings)


def azimuthal_integral(power: torch.Tensor) -> torch.Tensor:
    """Paper 000 Eq. 12 on an unshifted power spectrum (..., H, W) -> (..., M/2).

    ``AI(w_k) = 2 * pi * mean power on ring k`` (the angular integral of the power).
    """
    return 2.0 * math.pi * ring_means(power)


def hp_ratio(ai: torch.Tensor) -> torch.Tensor:
    """Paper 000 Eq. 13: share of the azimuthal integral in rings M/4 .. M/2 - 1."""
    n = ai.shape[-1]
    return ai[..., n // 2 :].sum(-1) / ai.sum(-1).clamp_min(torch.finfo(ai.dtype).tiny)


def zero_interleave(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Insert ``factor - 1`` zeros between samples along H and W (the first step of upsampling).

    The DFT of the result replicates the input's spectrum: F_up(u + H, v + W) = F_up(u, v) for an
    (H, W) input and ``factor`` 2 (paper 000 Eq. 4-5).
    """
    *lead, h, w = x.shape
    out = torch.zeros(*lead, h * factor, w * factor, dtype=x.dtype, device=x.device)
    out[..., ::factor, ::factor] = x
    return out
