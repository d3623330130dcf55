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

Latent decoder (extension, DESIGN §2b): an auto-encoder whose decoder is shaped like the SD / LDM /
VQGAN decoders — encoder of log2(F) stride-2 convs to a Z-channel latent at 1/F (optionally
vector-quantised, straight-through), then conv_in, one block at the latent resolution, log2(F)
up-stages (up-sampler U, then block R), and the decoders' output stage norm -> act -> 3x3 conv.
Channels halve on the way up from 4 x width to width, as the real decoders' 512 -> 128 do.
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


LD_CODEBOOK = 256        # VQ codebook entries (VQGAN: 16384; a small net cannot use more)
LD_COMMITMENT = 0.25     # VQ-VAE commitment weight (van den Oord et al.)
LD_CH_PER_GROUP = 4      # GroupNorm: SD uses 32 groups over 128-512 channels (4-16 per group)


def _ld_norm(name: str, ch: int) -> nn.Module:
    if name == "gn":
        return nn.GroupNorm(max(1, ch // LD_CH_PER_GROUP), ch)
    return nn.Identity()


def _ld_act(name: str) -> nn.Module:
    return nn.SiLU() if name == "silu" else nn.GELU()


class LDBlock(nn.Module):
    """'res': the SD / VQGAN ResnetBlock (norm-act-conv twice, 1x1 skip when channels change);
    'plain': one norm-act-conv."""

    def __init__(self, cin: int, cout: int, spec: ArchSpec, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.res = spec.R == "res"
        self.body = nn.Sequential(_ld_norm(spec.N, cin), _ld_act(spec.A), nn.Conv2d(cin, cout, kernel, padding=pad))
        if self.res:
            self.body2 = nn.Sequential(_ld_norm(spec.N, cout), _ld_act(spec.A), nn.Conv2d(cout, cout, kernel, padding=pad))
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.res:
            h = self.skip(x) + self.body2(h)
        return h


class LDUpsample(nn.Module):
    """x2: nearest + conv (SD / VQGAN ``Upsample``), conv + pixel-shuffle, or a 4x4/2 transposed conv."""

    def __init__(self, mode: str, cin: int, cout: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        if mode == "nearest":
            self.net = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, kernel, padding=pad))
        elif mode == "shuffle":
            self.net = nn.Sequential(nn.Conv2d(cin, 4 * cout, kernel, padding=pad), nn.PixelShuffle(2))
        else:
            self.net = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with the straight-through gradient (VQ-VAE).

    In training mode ``forward`` stores the codebook + commitment loss in ``aux_loss`` (the
    trainer adds it to the reconstruction loss); in eval mode it is None.
    """

    def __init__(self, n_codes: int, dim: int):
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(n_codes, dim) * 0.5)
        self.aux_loss: torch.Tensor | None = None

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H, W) index of the nearest code."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        return torch.cdist(flat.float(), self.codebook.float()).argmin(1).view(z.shape[0], *z.shape[2:])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.codebook[self.indices(z)].permute(0, 3, 1, 2).to(z.dtype)
        if self.training:
            self.aux_loss = (q - z.detach()).float().square().mean() + LD_COMMITMENT * (z - q.detach()).float().square().mean()
        else:
            self.aux_loss = None
        return z + (q - z).detach()  # straight-through: the decoder sees codes, the encoder gets gradients


class LatentDecoderModel(nn.Module):
    """Auto-encoder with a latent decoder of the ``ld`` family (see the module docstring)."""

    def __init__(self, spec: ArchSpec, width: int = DEFAULT_WIDTH, kernel: int = DEFAULT_KERNEL):
        super().__init__()
        self.spec, self.width, self.kernel = spec, width, kernel
        pad = kernel // 2
        n = spec.F.bit_length() - 1  # up-stages: 3 for f8, 4 for f16
        self.factor = spec.F
        # decoder channels from the latent outwards: 4w, 4w, 2w, w (capped at 4w, like 512-512-256-128)
        dec = [width * min(4, 2 ** (n - i)) for i in range(n + 1)]
        enc = list(reversed(dec))
        self.encoder = nn.Sequential(
            nn.Conv2d(3, enc[0], kernel, padding=pad),
            *[m for i in range(n) for m in (nn.Conv2d(enc[i], enc[i + 1], kernel, stride=2, padding=pad), nn.SiLU())],
            nn.Conv2d(enc[-1], spec.Z, 1),
        )
        self.quantizer = VectorQuantizer(LD_CODEBOOK, spec.Z) if spec.Q == "vq" else None
        self.conv_in = nn.Conv2d(spec.Z, dec[0], kernel, padding=pad)
        self.mid = LDBlock(dec[0], dec[0], spec, kernel)
        self.up = nn.ModuleList(
            nn.Sequential(LDUpsample(spec.U, dec[i], dec[i + 1], kernel), LDBlock(dec[i + 1], dec[i + 1], spec, kernel))
            for i in range(n)
        )
        self.norm_out = _ld_norm(spec.N, dec[-1])
        self.act_out = _ld_act(spec.A)
        self.conv_out = nn.Conv2d(dec[-1], 3, kernel, padding=pad)

    @property
    def aux_loss(self) -> torch.Tensor | None:
        return self.quantizer.aux_loss if self.quantizer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2.0 - 1.0
        h, w = x.shape[-2:]
        m = self.factor
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        z = self.encoder(x)
        if self.quantizer is not None:
            z = self.quantizer(z)
        y = self.mid(self.conv_in(z))
        for block in self.up:
            y = block(y)
        return self.conv_out(self.act_out(self.norm_out(y)))[..., :h, :w] * 0.5 + 0.5


def build_model(spec: ArchSpec, width: int = DEFAULT_WIDTH, kernel: int = DEFAULT_KERNEL) -> nn.Module:
    """A freshly initialised model for ``spec`` (seed torch's RNG first for reproducibility)."""
    if kernel < 1 or kernel % 2 == 0:
        from fpt.errors import ConfigError

        raise ConfigError(f"kernel size must be odd and positive, got {kernel}")
    if spec.is_grid:
        return GridGenerator(spec, width, kernel)
    if spec.family == "ld":
        return LatentDecoderModel(spec, width, kernel)
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
