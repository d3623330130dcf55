"""Known-answer tests for fpt.metrics.frechet, the one Fréchet distance (FFD and FD ratio)."""

import numpy as np
import pytest

from fpt.metrics.frechet import frechet_distance, frechet_distance_from_stats, frechet_lowrank, gaussian_stats


def _sqrtm_formula(a, b):
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def test_fd_of_identical_sets_is_zero(rng):
    x = rng.normal(size=(50, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    wide = rng.normal(size=(20, 300))  # n < d: the low-rank path
    assert frechet_distance(wide, wide) == pytest.approx(0.0, abs=1e-8)


def test_lowrank_identity_matches_sqrtm_formula(rng):
    a = rng.normal(size=(40, 6)) * [1, 2, 3, 1, 1, 0.5]
    b = rng.normal(size=(30, 6)) + 0.7
    assert frechet_lowrank(a, b) == pytest.approx(_sqrtm_formula(a, b), rel=1e-8)
    assert frechet_distance(a, b) == _sqrtm_formula(a, b)  # d small: sqrtm
    # n < d: sqrtm of a rank-deficient product; both must still agree closely.
    a = rng.normal(size=(12, 30))
    b = rng.normal(size=(15, 30)) * 1.5 + 0.2
    assert frechet_distance(a, b) == frechet_lowrank(a, b)
    assert frechet_distance(a, b) == pytest.approx(_sqrtm_formula(a, b), rel=1e-4)


def test_fd_known_answer_shifted_gaussian():
    # Same samples shifted by a constant vector: FD = |shift|^2 exactly (covariances identical).
    rng = np.random.default_rng(3)
    a = rng.normal(size=(64, 5))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)


def test_fd_rejects_bad_shapes(rng):
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(rng.normal(size=(1, 3)), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="expected"):
        frechet_distance(rng.normal(size=(4, 3)), rng.normal(size=(5, 2)))
