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


class _ResidualBaseline:
    """What both baselines share: the luma high-pass residual of a fixed centre crop, turned
    into rows 32 images at a time by :meth:`rows`."""

    name = ""

    def __init__(self, crop: int | None = None, baseline_crop: int | None = None, **_: object) -> None:
        self.crop = int(crop or baseline_crop or BASELINE_CROP)

    def rows(self, residual: torch.Tensor) -> torch.Tensor:  # (n, s, s) float64 -> (n, dim)
        raise NotImplementedError

    def dim(self) -> int:
        raise NotImplementedError

    def embed_images(self, images: list[torch.Tensor]) -> np.ndarray:
        out = [self.rows(_grey_residual(chunk, self.crop).double()).float().numpy() for chunk in _chunks(images, 32)]
        return np.concatenate(out) if out else np.zeros((0, self.dim()), np.float32)


class PRNURepresentation(_ResidualBaseline):
    """Marra et al. (2019) averaged-residual correlation (see module docstring)."""

    name = "prnu"

    def rows(self, residual: torch.Tensor) -> torch.Tensor:
        r = residual.flatten(1)
        r = r - r.mean(dim=1, keepdim=True)
        return r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def dim(self) -> int:
        return self.crop * self.crop


class SpectrumRepresentation(_ResidualBaseline):
    """Log azimuthal integral of the residual power spectrum, mean-removed (see module docstring)."""

    name = "spectrum"

    def rows(self, residual: torch.Tensor) -> torch.Tensor:
        from fpt.spectrum import azimuthal_integral_fast

        ai = azimuthal_integral_fast(residual)[:, 1:]  # drop DC: residual mean is ~0 anyway
        v = torch.log10(ai.clamp_min(1e-20))
        return v - v.mean(dim=1, keepdim=True)

    def dim(self) -> int:
        return self.crop // 2 - 1
