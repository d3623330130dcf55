"""A small DnCNN-style denoiser whose *residual* (predicted noise) feeds the fingerprint extractor.

The papers strip image content with the DnCNN denoiser of Zhang et al. (2017), whose public
weights carry a non-profit licence and whose unpadded variant shrinks 128 -> 94 px. ``fpt`` trains
its own, much smaller denoiser (padded convolutions: output size == input size) on real photos
with low-sigma Gaussian noise, and ships the weights in ``fpt/weights/denoiser.pt``.

The module predicts the noise ``n`` in ``y = x + n`` (residual learning, as DnCNN). Used as a
residual extractor it returns that prediction for the input image: the high-frequency part of the
image that does not look like natural content, which is where generator fingerprints live.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DENOISER_FORMAT = "fpt-denoiser"


class DnCNN(nn.Module):
    """DnCNN: conv+ReLU, (depth-2) x (conv+BN+ReLU), conv; predicts the noise of its input.

    ``depth`` 17 with ``channels`` 64 is the paper's network; ``fpt``'s default is 6 x 24, which
    is ~100x cheaper and loses little at the low noise levels used here (measured in
    ``fpt train-denoiser`` output: PSNR gain over the noisy input).
    """

    def __init__(self, depth: int = 6, channels: int = 24, in_channels: int = 3) -> None:
        super().__init__()
        self.depth, self.channels, self.in_channels = depth, channels, in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, padding_mode="reflect"),
                                   nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        last = nn.Conv2d(channels, in_channels, 3, padding=1, padding_mode="reflect")
        # Start from "no noise" (the identity denoiser): at the low sigmas used here a random
        # output layer is worse than doing nothing and takes most of a short run to unlearn.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``x`` (same shape). Centred on 0.5 so the net sees zero-mean input."""
        return self.body(x - 0.5)

    def config(self) -> dict:
        return {"depth": self.depth, "channels": self.channels, "in_channels": self.in_channels}


class DenoiserResidual(nn.Module):
    """Residual extractor: the denoiser's noise prediction (registered as ``"denoiser"``).

    With no ``weights`` it loads the shipped ``fpt/weights/denoiser.pt``; pass ``weights=False``
    for an uninitialised module whose state is about to be loaded from an extractor checkpoint
    (extractor checkpoints carry the denoiser weights inside them).
    """

    def __init__(self, weights: str | Path | None | bool = None, depth: int = 6, channels: int = 24) -> None:
        super().__init__()
        if weights is False:
            self.net = DnCNN(depth, channels)
        else:
            self.net = load_denoiser(weights)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> "DenoiserResidual":
        # The denoiser is frozen: keep BatchNorm in inference mode even while the extractor trains.
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def default_denoiser_path() -> Path:
    return Path(__file__).resolve().parents[1] / "weights" / "denoiser.pt"


def save_denoiser(path: str | Path, net: DnCNN, meta: dict | None = None) -> None:
    """Write denoiser weights (fp16) + config atomically; loadable with ``weights_only=True``."""
    from fpt.storage import atomic_path

    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": DENOISER_FORMAT, "config": net.config(), "meta": meta or {}, "state_dict": sd}, tmp)


def load_denoiser(path: str | Path | None = None) -> DnCNN:
    """Load a denoiser saved by :func:`save_denoiser` (default: the shipped weights)."""
    from fpt.errors import CheckpointError

    path = Path(path) if path else default_denoiser_path()
    if not path.exists():
        raise CheckpointError("denoiser weights not found", path=path,
                              hint="train them with `fpt train-denoiser` or use --residual highpass")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"not a loadable fpt denoiser file ({type(exc).__name__})", path=path) from None
    if not isinstance(blob, dict) or blob.get("format") != DENOISER_FORMAT:
        raise CheckpointError("not an fpt denoiser file", path=path)
    net = DnCNN(**blob["config"])
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    return net.eval()


@dataclass
class DenoiserReport:
    steps: int
    sigma_range: tuple[float, float]
    psnr_noisy: float
    psnr_denoised: float
    wall_s: float


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a - b).square().mean())
    return 10.0 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()


def train_denoiser(
    crops: torch.Tensor,
    *,
    depth: int = 6,
    channels: int = 24,
    steps: int = 1500,
    batch: int = 32,
    lr: float = 1e-3,
    sigma_range: tuple[float, float] = (1.0 / 255, 5.0 / 255),
    seed: int = 0,
    val_crops: torch.Tensor | None = None,
    progress=None,
) -> tuple[DnCNN, DenoiserReport]:
    """Blind Gaussian denoiser training on real crops (N, 3, S, S) with sigma ~ U(sigma_range).

    Low sigmas (1-5 / 255) as in the papers' use of DnCNN for fingerprints: the residual should
    hold sensor-level / generator-level noise, not texture.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DnCNN(depth, channels)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    t0 = time.perf_counter()
    net.train()
    for step in range(steps):
        idx = torch.randint(0, crops.shape[0], (batch,), generator=g)
        x = crops[idx]
        # Random flips: cheap augmentation that keeps the noise statistics.
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        sigma = torch.empty(batch, 1, 1, 1).uniform_(*sigma_range, generator=g)
        noise = torch.randn(x.shape, generator=g) * sigma
        opt.zero_grad(set_to_none=True)
        loss = (net(x + noise) - noise).square().mean()
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    net.eval()
    vc = val_crops if val_crops is not None else crops[:64]
    with torch.no_grad():
        gv = torch.Generator().manual_seed(seed + 1)
        sigma = (sigma_range[0] + sigma_range[1]) / 2
        noisy = vc + torch.randn(vc.shape, generator=gv) * sigma
        den = noisy - net(noisy)
    rep = DenoiserReport(steps, sigma_range, _psnr(noisy, vc), _psnr(den, vc), time.perf_counter() - t0)
    return net, rep


def train_denoiser_from_folders(images, out: str | Path, *, crop_size: int = 64, crops_per_image: int = 4,
                                depth: int = 6, channels: int = 24, steps: int = 1500, batch: int = 32,
                                sigma_range: tuple[float, float] = (1.0 / 255, 5.0 / 255), seed: int = 0,
                                progress=None) -> DenoiserReport:
    """Crop real photos, train the denoiser, hold out 10% of the *images* for the PSNR report, save."""
    from fpt.extractor.data import CropBank

    bank = CropBank.from_folders(images, crop_size, crops_per_image=crops_per_image, seed=seed)
    tr, va = bank.split(0.1, seed=seed)
    net, rep = train_denoiser(tr.get(torch.arange(len(tr))), depth=depth, channels=channels, steps=steps,
                              batch=batch, sigma_range=sigma_range, seed=seed,
                              val_crops=va.get(torch.arange(min(len(va), 256))), progress=progress)
    save_denoiser(out, net, {"images": [str(i) for i in (images if isinstance(images, (list, tuple)) else [images])],
                             "crop_size": crop_size, "steps": steps, "batch": batch, "seed": seed,
                             "sigma_range": list(sigma_range), "train_crops": len(tr),
                             "psnr_noisy": rep.psnr_noisy, "psnr_denoised": rep.psnr_denoised,
                             "wall_s": rep.wall_s})
    return rep
