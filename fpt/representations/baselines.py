"""Training-free baselines compared by ``fpt eval`` (registered in :mod:`fpt.representations`).

- ``prnu``: PRNU-style fingerprint of Marra et al. (2019), "Do GANs leave artificial
  fingerprints?": the noise residual of the image (image minus its denoised self; we use fpt's
  fixed high-pass residual, :class:`fpt.residual.HighPassResidual`, on the luma channel) over a
  fixed-size centre crop, made zero-mean and unit-norm. The fingerprint of a set is the average
  residual, and the score is the normalised correlation between residuals / averages, which is
  exactly the cosine of the zero-mean vectors.
- ``spectrum``: the azimuthal integral of the residual's power spectrum (paper 000 Eq. 12: 2*pi
  times the mean power on each ring), in log10, minus its mean so that the cosine compares the
  spectrum's *shape* rather than overall energy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fpt.images import center_crop


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
