"""Embedding spaces of the reference manifold (paper 002 §2.2, Table 4) and their preprocessing.

One definition of each space, stored verbatim in every manifold file so that queries are mapped
exactly as the references were:

- ``rgb``  — the pixels of a fixed-size square view of the image, flattened (paper: "Identity").
- ``freq`` — the channel-wise log-magnitude spectrum of that view, ``log(|DFT_c(x)| / sqrt(HW) + eps)``
  per colour channel, unshifted (DC at [0, 0]), flattened (paper: "Channelwise FFT"; the log keeps
  the fingerprint's faint high frequencies from being swamped by the low-frequency content).
- ``feat`` — the embedding of fpt's own spectrum extractor (``fpt.extractor``). The paper uses an
  ImageNet ResNet-50 (SL) and Barlow Twins (SSL); those weights cannot be downloaded here, so fpt's
  extractor, trained on synthetic models only, stands in for a learned feature space.

The fixed-size view: ``fit="crop"`` (default) takes the centre ``size`` x ``size`` pixels without
any resampling, so the generator's high-frequency fingerprint reaches the manifold intact; images
smaller than ``size`` are mirror-padded (``fpt.images.pad_to_min_size``) and flagged.
``fit="resize"`` scales the shorter side to ``size`` (antialiased bilinear) and centre-crops: a
whole-image thumbnail that matches content better but low-pass filters the fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from fpt.errors import ConfigError
from fpt.images import center_crop, pad_to_min_size

SPACES = ("rgb", "freq", "feat")
FITS = ("crop", "resize")
DEFAULT_SIZE = 64
#: Below the 8-bit quantisation floor (~1.1e-3 per DFT bin at this normalisation), so it only
#: bounds exact zeros (flat synthetic images) instead of letting log() run to -inf.
DEFAULT_FREQ_EPS = 1e-4


@dataclass(frozen=True)
class SpaceSpec:
    """How an image becomes a point of one embedding space (stored in the manifold file)."""

    space: str
    size: int = DEFAULT_SIZE
    fit: str = "crop"
    freq_eps: float = DEFAULT_FREQ_EPS
    #: feat space only: the extractor checkpoint ("" = fpt's shipped default) and its sha256.
    extractor: str = ""
    extractor_sha256: str = ""

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"unknown manifold space {self.space!r}", hint=f"choose one of {', '.join(SPACES)}")
        if self.fit not in FITS:
            raise ConfigError(f"unknown fit {self.fit!r}", hint=f"choose one of {', '.join(FITS)}")
        if not 8 <= int(self.size) <= 1024:
            raise ConfigError(f"manifold image size {self.size} must be between 8 and 1024 px")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SpaceSpec":
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        view = f"centre {self.size}px crop (no resampling)" if self.fit == "crop" else f"resize+crop to {self.size}px"
        what = {
            "rgb": "RGB pixels",
            "freq": f"channel-wise log|DFT| (eps {self.freq_eps:g})",
            "feat": f"fpt extractor embedding ({self.extractor or 'shipped default'})",
        }[self.space]
        return f"{what} of the {view}"


def fixed_view(img: torch.Tensor, size: int, fit: str = "crop") -> tuple[torch.Tensor, bool]:
    """A (3, H, W) image -> ((3, size, size), padded). See the module docstring for ``fit``."""
    if img.dim() != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(img.shape)}")
    if fit == "crop":
        _, padded = pad_to_min_size(img, size)
        return center_crop(img, size).contiguous(), padded
    if fit == "resize":
        h, w = img.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        out = F.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        return center_crop(out.clamp(0.0, 1.0), size).contiguous(), False
    raise ConfigError(f"unknown fit {fit!r}", hint=f"choose one of {', '.join(FITS)}")


def log_magnitude(x: torch.Tensor, eps: float = DEFAULT_FREQ_EPS) -> torch.Tensor:
    """Channel-wise ``log(|DFT| / sqrt(HW) + eps)`` of (N, C, H, W), unshifted."""
    f = torch.fft.fft2(x.float())
    mag = f.abs() / float(x.shape[-1] * x.shape[-2]) ** 0.5
    return torch.log(mag + eps)


class SpaceEmbedder:
    """Maps batches of fixed-size views (N, 3, S, S) to rows (N, D) of one space."""

    def __init__(self, spec: SpaceSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self._extractor = None
        if spec.space == "feat":
            self._extractor = load_feature_extractor(spec, self.device)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one embedded point before flattening ((3, S, S) for rgb/freq, (D,) for feat)."""
        if self.spec.space == "feat":
            return (int(self._extractor.embedding_dim),)
        return (3, self.spec.size, self.spec.size)

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @torch.no_grad()
    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        views = views.to(self.device, torch.float32)
        if self.spec.space == "rgb":
            out = views
        elif self.spec.space == "freq":
            out = log_magnitude(views, self.spec.freq_eps)
        else:
            out = self._extractor.embed_crops(views).float()
        return out.reshape(views.shape[0], -1)


def load_feature_extractor(spec: SpaceSpec, device: torch.device):
    """fpt's extractor for the feat space; a clear error when it is not available."""
    try:
        from fpt.extractor.checkpoint import load_extractor
    except ImportError as exc:  # the extractor package is not installed in this build
        raise ConfigError("the feat space needs fpt's extractor, which this installation lacks",
                          hint="use --space rgb or freq") from exc
    ex = load_extractor(spec.extractor or None, device=str(device))
    if spec.extractor_sha256 and getattr(ex, "sha256", "") and ex.sha256 != spec.extractor_sha256:
        from fpt.errors import ExtractorMismatchError

        raise ExtractorMismatchError(
            f"this manifold was built with extractor {spec.extractor_sha256[:12]}, not {ex.sha256[:12]}",
            hint="pass the same --extractor used at build time, or rebuild the manifold",
        )
    return ex


def resolve_spec(space: str, size: int | None, fit: str, extractor: str | None, device: torch.device) -> SpaceSpec:
    """Build a complete SpaceSpec (for feat: size from the extractor's crop, its sha256)."""
    if space == "feat":
        probe = SpaceSpec("feat", size=size or DEFAULT_SIZE, fit=fit, extractor=extractor or "")
        ex = load_feature_extractor(probe, device)
        crop = int(getattr(getattr(ex, "preprocessing", None), "crop_size", 0) or size or DEFAULT_SIZE)
        if size and size != crop:
            raise ConfigError(f"the extractor works on {crop}px crops; --size {size} does not match",
                              hint=f"omit --size or pass --size {crop}")
        return SpaceSpec("feat", size=crop, fit=fit, extractor=extractor or "",
                         extractor_sha256=str(getattr(ex, "sha256", "") or ""))
    return SpaceSpec(space, size=size or DEFAULT_SIZE, fit=fit)
