"""The fingerprint extractor network: residual -> per-channel DFT log-magnitude -> ResNet -> heads.

One module holds the whole inference path so that training and inference cannot drift apart:
``FingerprintNet.spectrum`` (frozen preprocessing, no gradient) and ``FingerprintNet.forward``
(backbone + heads). Its constructor arguments form a JSON-able ``config`` dict that checkpoints
store, so a checkpoint rebuilds exactly the network that wrote it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fpt.errors import ConfigError

#: Backbone depths as in torchvision (block type, blocks per stage).
BACKBONES: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet10": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(nn.Module):
    """torchvision ResNet blocks with a width multiplier and a stem suited to small inputs.

    ``stem="small"``: 3x3 stride-2 conv, no max-pool (keeps the spectrum's fine structure on 64 px
    inputs); ``stem="imagenet"``: torchvision's 7x7 stride-2 conv + max-pool (the papers' 128 px
    ResNet-50). Output: globally average-pooled features of size ``out_dim``.
    """

    def __init__(self, arch: str = "resnet18", width: float = 0.25, in_channels: int = 3, stem: str = "small"):
        super().__init__()
        if arch not in BACKBONES:
            raise ConfigError(f"unknown backbone '{arch}'", hint=f"choose one of {sorted(BACKBONES)}")
        block, layers = BACKBONES[arch]
        widths = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        elif stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True))
        else:
            raise ConfigError(f"unknown stem '{stem}'", hint="choose small or imagenet")
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2)
        self.out_dim = widths[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        # base_width=64 keeps Bottleneck's inner width = planes (torchvision's default ratio).
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


@dataclass
class NetOutput:
    features: torch.Tensor     # pooled backbone features (N, F)
    embedding: torch.Tensor    # L2-normalised projection (N, D)
    logits: torch.Tensor | None  # classification over synthetic model ids (N, C) or None


class SpectrumTransform(nn.Module):
    """residual -> (grey) -> log(|DFT| / sqrt(HW) + eps) -> (x - mean) / std, unshifted.

    The DFT is unshifted (DC in the corners, the highest frequencies in the centre), as in the
    papers, so the fingerprint's grid peaks sit away from the zero-padded borders of the convs.
    Always computed in float32 (FFT under autocast would lose the faint high frequencies).
    """

    def __init__(self, residual: nn.Module, grey: bool = False, eps: float = 1e-4,
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.residual = residual
        self.grey = grey
        self.eps = eps
        self.mean = mean
        self.std = std

    def raw(self, crops: torch.Tensor) -> torch.Tensor:
        """Log-magnitude spectrum before normalisation (used to estimate mean / std)."""
        with torch.autocast(crops.device.type, enabled=False):
            r = self.residual(crops.float())
            if self.grey:
                w = torch.tensor((0.299, 0.587, 0.114), device=r.device).view(1, 3, 1, 1)
                r = (r * w).sum(1, keepdim=True)
            h, w_ = r.shape[-2:]
            mag = torch.fft.fft2(r).abs() / math.sqrt(h * w_)
            return torch.log(mag + self.eps)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return (self.raw(crops) - self.mean) / self.std


def build_residual_module(name: str, denoiser: dict | None = None) -> nn.Module:
    """The residual module for a checkpoint: high-pass, or a denoiser whose weights come later."""
    if name == "denoiser":
        from fpt.extractor.denoiser import DenoiserResidual

        d = denoiser or {}
        return DenoiserResidual(weights=False, depth=d.get("depth", 6), channels=d.get("channels", 24))
    from fpt.residual import build_residual

    return build_residual(name)


class FingerprintNet(nn.Module):
    """Crops (N, 3, S, S) in [0, 1] -> fingerprint embedding (and class logits while training)."""

    def __init__(
        self,
        *,
        backbone: str = "resnet18",
        width: float = 0.25,
        stem: str = "small",
        embedding_dim: int = 128,
        num_classes: int = 0,
        residual: str = "highpass",
        denoiser: dict | None = None,
        grey: bool = False,
        eps: float = 1e-4,
        spec_mean: float = 0.0,
        spec_std: float = 1.0,
        crop_size: int = 64,
        embed_from: str = "projection",
    ) -> None:
        super().__init__()
        self._config = dict(backbone=backbone, width=width, stem=stem, embedding_dim=embedding_dim,
                            num_classes=num_classes, residual=residual, denoiser=denoiser, grey=grey,
                            eps=eps, spec_mean=spec_mean, spec_std=spec_std, crop_size=crop_size,
                            embed_from=embed_from)
        if embed_from not in ("projection", "features"):
            raise ConfigError(f"unknown embedding source '{embed_from}'", hint="projection or features")
        self.transform = SpectrumTransform(build_residual_module(residual, denoiser), grey, eps, spec_mean, spec_std)
        self.backbone = ResNetBackbone(backbone, width, 1 if grey else 3, stem)
        fdim = self.backbone.out_dim
        # Projection head (for the triplet loss) as in SimCLR-style heads: Linear-BN-ReLU-Linear.
        self.projection = nn.Sequential(nn.Linear(fdim, fdim), nn.BatchNorm1d(fdim), nn.ReLU(inplace=True),
                                        nn.Linear(fdim, embedding_dim))
        self.classifier = nn.Linear(fdim, num_classes) if num_classes > 0 else None
        self.embed_from = embed_from
        self.embedding_dim = embedding_dim if embed_from == "projection" else fdim

    @property
    def config(self) -> dict:
        """JSON-able constructor arguments (rebuilds this exact network)."""
        cfg = dict(self._config)
        cfg["spec_mean"], cfg["spec_std"] = float(self.transform.mean), float(self.transform.std)
        return cfg

    def set_normalisation(self, mean: float, std: float) -> None:
        self.transform.mean, self.transform.std = float(mean), float(std)

    def spectrum(self, crops: torch.Tensor) -> torch.Tensor:
        """Frozen preprocessing (no gradient): crops -> normalised log-magnitude spectra."""
        with torch.no_grad():
            return self.transform(crops)

    def forward_spectrum(self, spec: torch.Tensor) -> NetOutput:
        feats = self.backbone(spec)
        emb = F.normalize(self.projection(feats).float(), dim=1)
        logits = self.classifier(feats) if self.classifier is not None else None
        return NetOutput(feats, emb, logits)

    def forward(self, crops: torch.Tensor) -> NetOutput:
        return self.forward_spectrum(self.spectrum(crops))

    def embed_spectrum(self, spec: torch.Tensor) -> torch.Tensor:
        """Inference embedding (L2-normalised): the projection, or the pooled features."""
        if self.embed_from == "features":
            return F.normalize(self.backbone(spec).float(), dim=1)
        return self.forward_spectrum(spec).embedding


def build_net(**config) -> FingerprintNet:
    """Build a :class:`FingerprintNet` from a config dict (as stored in checkpoints)."""
    known = {"backbone", "width", "stem", "embedding_dim", "num_classes", "residual", "denoiser", "grey",
             "eps", "spec_mean", "spec_std", "crop_size", "embed_from"}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(f"unknown network options {sorted(unknown)}")
    return FingerprintNet(**config)


def count_parameters(net: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)
