"""Image representations compared by ``fpt eval``: the learned extractor and training-free baselines.

A representation turns images ((3, H, W) float32 in [0, 1]) into one vector per image; every
evaluation protocol then works on cosine similarities of those vectors (means of unit vectors for
sets of images), so all methods are scored the same way on the same splits.

Registered here:

- ``fpt``: the fingerprint extractor (n x n sliding windows, :mod:`fpt.extractor.embed`).
- ``prnu``: PRNU-style fingerprint of Marra et al. (2019), "Do GANs leave artificial
  fingerprints?": the noise residual of the image (image minus its denoised self; we use fpt's
  fixed high-pass residual, :class:`fpt.residual.HighPassResidual`, on the luma channel) over a
  fixed-size centre crop, made zero-mean and unit-norm. The fingerprint of a set is the average
  residual, and the score is the normalised correlation between residuals / averages, which is
  exactly the cosine of the zero-mean vectors.
- ``spectrum``: the azimuthal integral of the residual's power spectrum (paper 000 Eq. 12: 2*pi
  times the mean power on each ring), in log10, minus its mean so that the cosine compares the
  spectrum's *shape* rather than overall energy.

Other modules plug in more (ManiFPT's artifact representations, ``fpt.manifold``) by adding a
factory to :data:`REPRESENTATIONS`. Factories are called with keyword arguments
(``extractor=``, ``device=``, ``seed=``, ``real_images=``...) and must ignore those they do not use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch

from fpt.errors import ConfigError
from fpt.images import center_crop


class Representation(Protocol):
    name: str

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:  # (n, d) float32
        ...


#: Side of the centre crop the baselines use (mirror-padded when the image is smaller).
BASELINE_CROP = 256


def _grey_residual(images: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    from fpt.residual import HighPassResidual
    from fpt.spectrum import to_grey

    hp = HighPassResidual()
    batch = torch.stack([center_crop(img, size) for img in images])
    with torch.inference_mode():
        return hp(to_grey(batch))[:, 0]  # (n, s, s)


def _chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class PRNURepresentation:
    """Marra et al. (2019) averaged-residual correlation (see module docstring)."""

    name = "prnu"

    def __init__(self, crop: int | None = None, baseline_crop: int | None = None, **_: object) -> None:
        self.crop = int(crop or baseline_crop or BASELINE_CROP)

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        out = []
        for chunk in _chunks(images, 32):
            r = _grey_residual(chunk, self.crop).flatten(1).double()
            r = r - r.mean(dim=1, keepdim=True)
            r = r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)
            out.append(r.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.crop * self.crop), np.float32)


class SpectrumRepresentation:
    """Log azimuthal integral of the residual power spectrum, mean-removed (see module docstring)."""

    name = "spectrum"

    def __init__(self, crop: int | None = None, baseline_crop: int | None = None, **_: object) -> None:
        self.crop = int(crop or baseline_crop or BASELINE_CROP)

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        from fpt.spectrum import azimuthal_integral_fast

        out = []
        for chunk in _chunks(images, 32):
            r = _grey_residual(chunk, self.crop).double()
            ai = azimuthal_integral_fast(r)[:, 1:]  # drop DC: residual mean is ~0 anyway
            v = torch.log10(ai.clamp_min(1e-20))
            v = v - v.mean(dim=1, keepdim=True)
            out.append(v.float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.crop // 2 - 1), np.float32)


class FptRepresentation:
    """The learned fingerprint extractor, exactly as ``fpt identify`` uses it."""

    name = "fpt"

    def __init__(self, extractor=None, device: str = "auto", windows: int | None = None,
                 batch_size: int = 64, **_: object) -> None:
        if extractor is None or isinstance(extractor, (str, bytes)) or hasattr(extractor, "__fspath__"):
            from fpt.extractor.checkpoint import load_extractor

            extractor = load_extractor(extractor, device=device)
        self.ex = extractor
        self.windows = windows
        self.batch_size = batch_size

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        from fpt.extractor.embed import embed_tensors

        emb, _ = embed_tensors(self.ex, images, windows=self.windows, batch_size=self.batch_size)
        return emb


REPRESENTATIONS: dict[str, Callable[..., Representation]] = {
    "fpt": FptRepresentation,
    "prnu": PRNURepresentation,
    "spectrum": SpectrumRepresentation,
}


def _register_plugins() -> None:
    """Let optional modules add their representations (ManiFPT artifacts in fpt.manifold)."""
    try:
        import fpt.manifold as manifold  # noqa: F401  (may register into REPRESENTATIONS)
    except Exception:  # a broken optional module must not take the baselines down
        return
    hook = getattr(manifold, "register_representations", None)
    if callable(hook):
        try:
            hook(REPRESENTATIONS)
        except Exception:
            return


def build_representation(name: str, **kwargs) -> Representation:
    """Build a representation by registered name (``fpt``, ``prnu``, ``spectrum``, plugins)."""
    if name not in REPRESENTATIONS:
        _register_plugins()
    try:
        factory = REPRESENTATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'", hint=f"choose from {', '.join(sorted(REPRESENTATIONS))}") from None
    return factory(**kwargs)


def available_methods() -> list[str]:
    _register_plugins()
    return sorted(REPRESENTATIONS)
