"""Within-class covariance whitening (WCCN), the maths shared by two users.

Cosine similarity between fingerprints is dominated by the directions in which images of *one*
generator vary most (mostly content), not by the directions that tell generators apart. Whitening
with the within-class covariance ``S_w`` scales those nuisance directions down::

    f(x) = normalise((normalise(x) - mean) @ W),   W = (S_w + c I)^(-1/2),  c = shrinkage * tr(S_w) / D

Two users fit it on different classes:

- the extractor's checkpoint whitening (:mod:`fpt.extractor.whitening`), fitted once at the end of
  ``fpt train`` on synthetic training models and stored as a dense ``D x D`` matrix;
- the gallery's ranking whitening (:func:`fpt.attribution.gallery_ranking`), fitted on the
  analyst's own enrolled images, whose classes are the enrolled models.

``W`` is kept in low-rank form, ``W = V diag(s) V^T + c^(-1/2) (I - V V^T)`` with ``V`` the
(at most ``min(N, D)``) directions in which the centred samples vary, found from the smaller of
the ``D x D`` scatter and the ``N x N`` Gram matrix: it works when ``D`` (65 536 for a PRNU
residual) exceeds the number of samples, and costs ``O(N D min(N, D))``.
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


def can_whiten(labels) -> bool:
    """Whether samples with these labels can fit a within-class whitening: 2+ classes with
    2+ samples each."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return int(np.sum(counts >= 2)) >= 2


def class_means(x: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(classes, per-sample class index, (C, D) class means)`` by one sort, not one mask per
    class: a gallery may hold 10^5 models."""
    classes, cls, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    order = np.argsort(cls, kind="stable")
    means = np.add.reduceat(x[order], np.r_[0, np.cumsum(counts)[:-1]], axis=0) / counts[:, None]
    return classes, cls, means


def fit_within_class(emb: np.ndarray, labels: Sequence, shrinkage: float) -> WithinClassWhitening:
    """Fit on embeddings ``emb`` (N, D) of known ``labels``; only classes with 2+ samples give
    within-class variation (the mean is over every sample).

    ``shrinkage`` (relative to the mean eigenvalue of ``S_w``) keeps directions with almost no
    within-class variance from being blown up. Needs at least 2 classes with 2+ samples each.
    """
    if not can_whiten(labels):
        raise ValueError("whitening needs 2+ classes with 2+ embeddings each")
    if not shrinkage > 0:
        raise ValueError("shrinkage must be positive")
    x = l2_normalise(np.asarray(emb, np.float64))
    _, cls, means = class_means(x, labels)
    keep = np.bincount(cls)[cls] >= 2
    centred = x[keep] - means[cls[keep]]
    n, d = centred.shape
    if n >= d:  # S_w = V diag(ev) V^T from the D x D scatter
        ev, basis = np.linalg.eigh(centred.T @ centred / n)
    else:  # more dimensions than samples: the same eigenpairs from the n x n Gram matrix
        ev, u = np.linalg.eigh(centred @ centred.T / n)
        keep = ev > ev.max() * 1e-12
        ev, u = ev[keep], u[:, keep]
        basis = centred.T @ u / np.sqrt(ev * n)
    ev = np.clip(ev, 0.0, None)
    c = shrinkage * ev.sum() / d
    if not c > 0:
        raise ValueError("the classes have no within-class variation to whiten")
    return WithinClassWhitening(x.mean(axis=0), basis, (ev + c) ** -0.5, float(c ** -0.5))
