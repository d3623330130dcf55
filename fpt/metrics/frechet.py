"""Fréchet distance between two sets of vectors, each summarised by a Gaussian — the one
definition fpt uses, for FFD (paper 001) and for the FD ratio (paper 002).

FD(A, B) = |mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A S_B)^{1/2}).

In high dimension (an RGB artifact at 64 px has 12 288 dimensions, more than the samples per
class) ``sqrtm`` of a d x d matrix is both slow and numerically poor, so :func:`frechet_distance`
uses an exact identity when ``min(n1, n2) < d``: with ``A = (X1 - mu1) / sqrt(n1 - 1)`` and ``B``
likewise, ``S1 = A^T A``, ``S2 = B^T B`` and the non-zero eigenvalues of ``S1 S2`` are those of
``(A B^T)(A B^T)^T``, so ``Tr (S1 S2)^{1/2} = ||A B^T||_*`` (nuclear norm). The FD is then
``|mu1 - mu2|^2 + ||A||_F^2 + ||B||_F^2 - 2 ||A B^T||_*``, at O(n1 n2 d) cost.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, for n > 1) covariance of rows of ``x`` (n, d)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"expected (n, d) with n >= 1, got {x.shape}")
    mu = x.mean(axis=0)
    cov = np.cov(x, rowvar=False) if x.shape[0] > 1 else np.zeros((x.shape[1], x.shape[1]))
    return mu, np.atleast_2d(cov)


def frechet_distance_from_stats(mu1, cov1, mu2, cov2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2)."""
    diff = mu1 - mu2
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        # Near-singular product (few samples, many dims): regularise both covariances.
        offset = np.eye(cov1.shape[0]) * eps
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def frechet_lowrank(a: np.ndarray, b: np.ndarray) -> float:
    """Exact FD via the nuclear-norm identity (see module docstring); needs n >= 2 per set."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca = (a - mu_a) / np.sqrt(a.shape[0] - 1)
    cb = (b - mu_b) / np.sqrt(b.shape[0] - 1)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    value = diff @ diff + np.sum(ca * ca) + np.sum(cb * cb) - 2.0 * cross
    return float(max(value, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to row sets ``a`` (n, d) and ``b`` (m, d),
    exact for any d: ``sqrtm`` when both sets have at least d rows, the nuclear-norm identity
    otherwise (fast and free of ``sqrtm`` failures on singular covariances)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (m, d), got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each set needs at least 2 rows to estimate a covariance")
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        return frechet_lowrank(a, b)
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
