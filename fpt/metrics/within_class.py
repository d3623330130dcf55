"""Within-class covariance whitening (WCCN), the maths shared by two users.

Cosine similarity between fingerprints is dominated by the directions in which images of *one*
generator vary most (mostly content), not by the directions that tell generators apart. Whitening
with the within-class covariance ``S_w`` scales those nuisance directions down::

    f(x) = normalise((normalise(x) - mean) @ W),   W = (S_w + c I)^(-1/2),  c = shrinkage * tr(S_w) / D

Two users fit it on different classes:

- the extractor's checkpoint whitening (:mod:`fpt.extractor.whitening`), fitted once at the end of
  ``fpt train`` on synthetic training models and stored as a dense ``D x D`` matrix;
- the gallery's ranking whitening (:func:`fpt.attribution.gallery_whitening`), fitted on the
  analyst's own enrolled images, whose classes are the enrolled models.

``W`` is kept in low-rank form, ``W = V diag(s) V^T + c^(-1/2) (I - V V^T)`` with ``V`` the
(at most ``N``) directions in which the centred samples vary, so fitting and applying cost
``O(N D r)`` and work when ``D`` (65 536 for a PRNU residual) exceeds the number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fpt.metrics.verification import l2_normalise


@dataclass(frozen=True)
class WithinClassWhitening:
    mean: np.ndarray    # (D,) mean of the normalised samples it was fitted on
    basis: np.ndarray   # (D, r) orthonormal directions of within-class variation
    scale: np.ndarray   # (r,) (eigenvalue + c)^(-1/2) along each basis direction
    floor: float        # c^(-1/2): the scale of every direction outside the basis

    def apply(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> whitened, L2-normalised (float32)."""
        x = l2_normalise(np.asarray(emb, np.float64)) - self.mean
        y = self.floor * x + ((x @ self.basis) * (self.scale - self.floor)) @ self.basis.T
        return l2_normalise(y).astype(np.float32)

    def dense_matrix(self) -> np.ndarray:
        """``W`` as a symmetric (D, D) matrix (for checkpoints; only sensible for small D)."""
        d = self.mean.shape[0]
        return self.floor * np.eye(d) + (self.basis * (self.scale - self.floor)) @ self.basis.T


def fit_within_class(emb: np.ndarray, labels: Sequence, shrinkage: float) -> WithinClassWhitening:
    """Fit on embeddings ``emb`` (N, D) of known ``labels``; only classes with 2+ samples give
    within-class variation (the mean is over every sample).

    ``shrinkage`` (relative to the mean eigenvalue of ``S_w``) keeps directions with almost no
    within-class variance from being blown up. Needs at least 2 classes with 2+ samples each.
    """
    x = l2_normalise(np.asarray(emb, np.float64))
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if np.sum(counts >= 2) < 2:
        raise ValueError("whitening needs 2+ classes with 2+ embeddings each")
    if not shrinkage > 0:
        raise ValueError("shrinkage must be positive")
    members = (x[labels == c] for c, n in zip(classes, counts) if n >= 2)
    centred = np.concatenate([m - m.mean(axis=0) for m in members])
    # S_w = centred^T centred / n = V diag(sv^2 / n) V^T
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    ev = sv ** 2 / len(centred)
    d = x.shape[1]
    c = shrinkage * ev.sum() / d
    if not c > 0:
        raise ValueError("the classes have no within-class variation to whiten")
    return WithinClassWhitening(x.mean(axis=0), vt.T, (ev + c) ** -0.5, float(c ** -0.5))
