"""Builders for synthetic generative models (plain functions over ``ArchSpec``, no magic).

FD model (paper 001 Fig. 4): K down blocks (avg-pool /2, then two 3x3 convs with ReLU that widen
the features) followed by K up blocks (upsampler U, then L conv layers, each with norm N and
activation A in order S), and a final 3x3 conv to RGB. The last up block is what stamps the
fingerprint (paper 001; docs/science.md), so the output conv stays linear: it carries the block's spectrum to the
image without adding another activation. Inputs of any size work: they are reflect-padded to a
multiple of 2^K and the output cropped back, so (N, 3, H, W) -> (N, 3, H, W). Pixels are mapped
to [-1, 1] on the way in and back to [0, 1] on the way out (``IO_RANGE``).

Grid generator (paper 000 §4): D blocks of (4x4 stride-2 transposed conv, 3x3 conv) from a
low-resolution noise tensor to a 3-channel noise image; the transposed convs' learned kernels
leave the upsampling grid. ``noise_for(h, w)`` gives the input shape for an (h, w) output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fpt.synth.space import ArchSpec

DEFAULT_WIDTH = 16
DEFAULT_KERNEL = 3
GRID_LEAK = 0.2
IO_RANGE = "pm1"  # recorded in every pool: FD models see 2x-1 and emit (y+1)/2


def _act(name: str) -> nn.Module:
    return {"none": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]()


def _norm(name: str, ch: int) -> nn.Module:
    if name == "bn":
        return nn.BatchNorm2d(ch)
    if name == "in":
        return nn.InstanceNorm2d(ch, affine=True)
    return nn.Identity()


class Upsample(nn.Module):
    """x2 upsampling: fixed nearest / bilinear kernels, or a learned stride-2 transposed conv."""

    def __init__(self, mode: str, ch: int):
        super().__init__()
        self.mode = mode
        self.deconv = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1) if mode == "deconv" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deconv is not None:
            return self.deconv(x)
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _conv_unit(cin: int, cout: int, kernel: int, order: str, act: str, norm: str) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    if order == "post":  # conv -> norm -> act
        return nn.Sequential(conv, _norm(norm, cout), _act(act))
    return nn.Sequential(_norm(norm, cin), _act(act), conv)  # pre: norm -> act -> conv


class FDModel(nn.Module):
    """Shallow auto-encoder of paper 001 for one FD architecture."""

    def __init__(self, spec: ArchSpec, width: int = DEFAULT_WIDTH, kernel: int = DEFAULT_KERNEL):
        super().__init__()
        self.spec, self.width, self.kernel = spec, width, kernel
        pad = kernel // 2
        chans = [3] + [width * 2**i for i in range(spec.K)]
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.AvgPool2d(2),
                nn.Conv2d(chans[i], chans[i + 1], kernel, padding=pad), nn.ReLU(),
                nn.Conv2d(chans[i + 1], chans[i + 1], kernel, padding=pad), nn.ReLU(),
            )
            for i in range(spec.K)
        )
        ups = []
        for i in reversed(range(spec.K)):
            cin, cout = chans[i + 1], max(chans[i], width)
            layers: list[nn.Module] = [Upsample(spec.U, cin)]
            for j in range(spec.L):
                layers.append(_conv_unit(cin if j == 0 else cout, cout, kernel, spec.S, spec.A, spec.N))
            ups.append(nn.Sequential(*layers))
        self.up = nn.ModuleList(ups)
        self.to_rgb = nn.Conv2d(width, 3, kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Work in [-1, 1] like real generators do: the net need not learn the image's mean level
        # through its ReLUs, which makes reconstruction converge ~2x faster (measured).
        x = x * 2.0 - 1.0
        h, w = x.shape[-2:]
        m = 2**self.spec.K
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        for block in self.down:
            x = block(x)
        for block in self.up:
            x = block(x)
        return self.to_rgb(x)[..., :h, :w] * 0.5 + 0.5


class GridGenerator(nn.Module):
    """Noise-to-noise generator of paper 000 §4 (D x [deconv 4x4/2, conv 3x3])."""

    def __init__(self, spec: ArchSpec, width: int = DEFAULT_WIDTH, kernel: int = DEFAULT_KERNEL):
        super().__init__()
        self.spec, self.width, self.kernel = spec, width, kernel
        blocks: list[nn.Module] = []
        for i in range(spec.depth):
            last = i == spec.depth - 1
            blocks += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.LeakyReLU(GRID_LEAK),
                       nn.Conv2d(width, 3 if last else width, kernel, padding=kernel // 2)]
            if not last:
                blocks.append(nn.LeakyReLU(GRID_LEAK))
        self.net = nn.Sequential(*blocks)

    def noise_shape(self, n: int, h: int, w: int) -> tuple[int, int, int, int]:
        """Input noise shape whose output covers (h, w) (the output is cropped to it)."""
        f = 2**self.spec.depth
        return (n, self.width, max(1, math.ceil(h / f)), max(1, math.ceil(w / f)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def build_model(spec: ArchSpec, width: int = DEFAULT_WIDTH, kernel: int = DEFAULT_KERNEL) -> nn.Module:
    """A freshly initialised model for ``spec`` (seed torch's RNG first for reproducibility)."""
    if kernel < 1 or kernel % 2 == 0:
        from fpt.errors import ConfigError

        raise ConfigError(f"kernel size must be odd and positive, got {kernel}")
    if spec.is_grid:
        return GridGenerator(spec, width, kernel)
    return FDModel(spec, width, kernel)


def fingerprint(model: nn.Module, spec_or_family, crops: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a synthetic model to real crops (N, 3, H, W) in [0, 1]; result clamped to [0, 1].

    FD model: its reconstruction of the crops. Grid generator: crops + model(noise), the noise
    drawn from ``generator`` (on the crops' device; pass a CPU generator for CPU crops).
    """
    family = spec_or_family if isinstance(spec_or_family, str) else spec_or_family.family
    if family not in ("fd", "grid"):
        family = "grid" if str(spec_or_family).startswith("grid") else "fd"
    with torch.no_grad():
        if family == "grid":
            n, _, h, w = crops.shape
            shape = model.noise_shape(n, h, w)
            dev = generator.device if generator is not None else crops.device
            z = torch.randn(shape, generator=generator, device=dev).to(crops.device)
            out = crops + model(z)[..., :h, :w].to(crops.dtype)
        else:
            out = model(crops).to(crops.dtype)
    return out.clamp_(0.0, 1.0)
