"""The upsampling demo of paper 000 Fig. 3 with numbers (``fpt demo upsample``): zero-interleaving
replicates the spectrum, and each upsampling kernel leaves its own trace at the replicas."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.spectrum import core as S


@dataclass
class DemoStep:
    name: str
    size: int
    hp_ratio: float
    peaks: list[S.GridPeak]


@dataclass
class UpsampleDemo:
    """Paper 000 Fig. 3 with numbers: zero-interleave, then three upsampling kernels."""

    source: str
    replication_error: float  # max |F(u+M, v+N) - F(u, v)| / max |F| after zero-interleaving
    steps: list[DemoStep]
    kernels: dict[str, np.ndarray] = field(repr=False)
    signals: dict[str, np.ndarray] = field(repr=False)


def upsample_kernels(seed: int = 0) -> dict[str, torch.Tensor]:
    """The K_up of Eq. 3 for 2x upsampling: nearest, bilinear, and a random 'learned' deconvolution.

    Nearest = 2 x 2 box (repeats each sample), bilinear = outer([1/2, 1, 1/2]) (interpolates), the
    deconvolution a 4 x 4 Gaussian-random kernel (a stride-2, 4 x 4 transposed conv as in DCGAN).
    All are scaled to sum 4 so that the mean level is preserved after interleaving.
    """
    g = torch.Generator().manual_seed(seed)
    tri = torch.tensor([0.5, 1.0, 0.5])
    deconv = torch.randn(4, 4, generator=g)
    deconv = deconv / deconv.sum().abs().clamp_min(0.25) * 4.0
    return {"nearest": torch.ones(2, 2), "bilinear": torch.outer(tri, tri), "deconvolution": deconv}


def circular_conv2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Circular convolution of (..., H, W) with a small kernel via the DFT (exactly Eq. 4)."""
    h, w = x.shape[-2:]
    k = torch.zeros(h, w, dtype=x.dtype, device=x.device)
    kh, kw = kernel.shape
    k[:kh, :kw] = kernel.to(x)
    return torch.fft.ifft2(torch.fft.fft2(x) * torch.fft.fft2(k)).real


def _signal_stats(x: torch.Tensor, name: str, threshold: float) -> DemoStep:
    # The mean only sits in the DC bin; its *replicas* at 1/2 (created by interleaving) stay.
    xc = x - x.mean()
    power = S.power_spectrum(xc)
    return DemoStep(
        name=name,
        size=int(x.shape[-1]),
        hp_ratio=float(S.hp_ratio(S.azimuthal_integral(power))),
        peaks=S.find_grid_peaks(power, threshold=threshold),
    )


def upsample_demo(
    image: torch.Tensor | None = None, *, size: int = 64, seed: int = 0, threshold: float = 10.0
) -> UpsampleDemo:
    """Run the demo on an image (grey, centre crop ``size``) or on uniform noise in [0, 1].

    Uniform noise has a mean, whose DC peak zero-interleaving replicates to (0, 1/2), (1/2, 0) and
    (1/2, 1/2): the grid. Nearest and bilinear kernels have spectral zeros exactly there and
    remove it, and they are low-pass, so the HP ratio drops; a random deconvolution kernel keeps
    the grid peaks (and the HP share).
    """
    from fpt.images import center_crop

    if size < 16:
        raise ConfigError(f"--size {size} is too small", hint="use 16 or more")
    if image is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(size, size, generator=g, dtype=torch.float64)
        source = f"uniform noise {size}x{size} (seed {seed})"
    else:
        x = S.to_grey(center_crop(image, size).unsqueeze(0))[0, 0].double()
        source = f"image, grey centre crop {size}x{size}"
    zi = S.zero_interleave(x)
    f = torch.fft.fft2(zi)
    rep = torch.stack([f[size:, :size], f[:size, size:], f[size:, size:]]) - f[:size, :size]
    rep_err = float(rep.abs().max() / f.abs().max())
    steps = [_signal_stats(x, "input", threshold), _signal_stats(zi, "zero-interleaved", threshold)]
    signals = {"input": x.float().numpy(), "zero-interleaved": zi.float().numpy()}
    kernels = upsample_kernels(seed)
    for name, k in kernels.items():
        y = circular_conv2d(zi, k.double())
        steps.append(_signal_stats(y, f"+ {name} kernel", threshold))
        signals[name] = y.float().numpy()
    return UpsampleDemo(
        source=source,
        replication_error=rep_err,
        steps=steps,
        kernels={k: v.numpy() for k, v in kernels.items()},
        signals=signals,
    )


def upsample_demo_figure(demo: UpsampleDemo):
    """Log spectra (DC centred) of every stage, with each kernel's spectrum underneath."""
    from fpt.report import pyplot

    plt = pyplot()
    names = list(demo.signals)
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.6))
    for i, name in enumerate(names):
        x = torch.from_numpy(demo.signals[name]).double()
        p = S.fftshift(S.power_spectrum(x - x.mean())).numpy()
        axes[0, i].imshow(np.log10(p + 1e-12), cmap="magma", extent=(-0.5, 0.5, 0.5, -0.5))
        step = demo.steps[i]
        axes[0, i].set_title(f"{name}\nHP ratio {step.hp_ratio:.3f}", fontsize=9)
        axes[1, i].axis("off")
        if name in demo.kernels:
            k = torch.zeros(64, 64, dtype=torch.float64)
            kk = torch.from_numpy(demo.kernels[name]).double()
            k[: kk.shape[0], : kk.shape[1]] = kk
            kp = S.fftshift(torch.fft.fft2(k).abs().square()).numpy()
            axes[1, i].axis("on")
            axes[1, i].imshow(np.log10(kp + 1e-12), cmap="viridis", extent=(-0.5, 0.5, 0.5, -0.5))
            axes[1, i].set_title(f"|F(K_{name})|^2 (log10)", fontsize=9)
    fig.suptitle(f"Upsampling = zero-interleave + kernel (paper 000 Eq. 3-4): {demo.source}")
    fig.tight_layout()
    return fig
