"""Fréchet distance between two sets of vectors, each summarised by a Gaussian.

FD(A, B) = |mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A S_B)^{1/2}). Used by FFD (paper 001) and by
the FD ratio (paper 002).
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


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to row sets ``a`` (n, d) and ``b`` (m, d)."""
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
