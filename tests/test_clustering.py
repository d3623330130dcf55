"""Known-answer tests for fpt.metrics.clustering (FDR, NMI, k-means, silhouette, Davies-Bouldin)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fpt.metrics.clustering import (
    davies_bouldin,
    fd_ratio,
    fd_ratio_details,
    kmeans,
    kmeans_fit,
    nmi,
    silhouette,
)
from fpt.metrics.frechet import frechet_distance


def _blobs(rng, centres, n_per, sigma, d):
    xs, ys = [], []
    for i, c in enumerate(centres):
        xs.append(rng.normal(size=(n_per, d)) * sigma + np.asarray(c))
        ys += [f"class{i}"] * n_per
    return np.concatenate(xs), np.array(ys)


# ------------------------------------------------------------------ FD ratio


def test_fdr_larger_for_separated_than_overlapping(rng):
    centres_far = [np.full(4, 0.0), np.full(4, 6.0), np.array([6.0, -6, 0, 0])]
    centres_near = [np.full(4, 0.0), np.full(4, 0.3), np.array([0.3, -0.3, 0, 0])]
    x_far, y_far = _blobs(rng, centres_far, 60, 1.0, 4)
    x_near, y_near = _blobs(rng, centres_near, 60, 1.0, 4)
    far, near = fd_ratio(x_far, y_far), fd_ratio(x_near, y_near)
    assert far > 10 * near
    assert far > 50  # inter-class FD ~ 72..144 vs intra ~ O(0.5)


def test_fdr_details_follow_the_paper_definition(rng):
    x, y = _blobs(rng, [np.zeros(3), np.full(3, 4.0), np.full(3, -4.0)], 41, 1.0, 3)  # odd count
    res = fd_ratio_details(x, y, seed=1)
    assert len(res.inter_per_pair) == 3  # all unordered pairs of 3 classes
    assert len(res.intra_per_class) == 3
    assert res.inter == pytest.approx(np.mean(list(res.inter_per_pair.values())))
    assert res.intra == pytest.approx(np.mean(list(res.intra_per_class.values())))
    assert res.ratio == pytest.approx(res.inter / res.intra)
    # inter-class FD of class0 vs class1 equals the FD of the full sets
    x0, x1 = x[y == "class0"], x[y == "class1"]
    assert res.inter_per_pair[("class0", "class1")] == pytest.approx(frechet_distance(x0, x1))
    # deterministic in the seed
    assert fd_ratio(x, y, seed=1) == res.ratio


def test_fdr_rejects_bad_input(rng):
    x = rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="two classes"):
        fd_ratio(x, np.zeros(10))
    with pytest.raises(ValueError, match="at least 4 samples"):
        fd_ratio(x, np.array([0] * 7 + [1] * 3))
    with pytest.raises(ValueError, match="labels"):
        fd_ratio(x, np.zeros(9))


# ------------------------------------------------------------------ NMI


def test_nmi_perfect_and_permuted():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    assert nmi(labels, labels) == pytest.approx(1.0)
    assert nmi(labels, np.array(["c", "c", "a", "a", "b", "b", "b"])) == pytest.approx(1.0)


def test_nmi_known_answer():
    a = [0, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 1, 2, 2]
    expected = (2 / 3 * math.log(2)) / ((math.log(2) + math.log(3)) / 2)
    assert nmi(a, b) == pytest.approx(expected, rel=1e-12)
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)


def test_nmi_near_zero_for_random_labels(rng):
    a = rng.integers(0, 4, size=5000)
    b = rng.integers(0, 4, size=5000)
    assert nmi(a, b) < 0.01


def test_nmi_constant_labellings():
    assert nmi([1, 1, 1], [5, 5, 5]) == 1.0
    assert nmi([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
    with pytest.raises(ValueError):
        nmi([0, 1], [0, 1, 1])


# ------------------------------------------------------------------ k-means


def test_kmeans_recovers_separated_blobs(rng):
    x, y = _blobs(rng, [np.zeros(2), np.array([10.0, 0]), np.array([0.0, 10])], 30, 0.5, 2)
    clusters = kmeans(x, 3, seed=0)
    assert nmi(clusters, y) == pytest.approx(1.0)
    again = kmeans(x, 3, seed=0)
    assert np.array_equal(clusters, again)


def test_kmeans_known_answer_and_edge_cases():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    res = kmeans_fit(x, 2, seed=0)
    assert sorted(res.centroids.ravel().tolist()) == pytest.approx([0.5, 10.5])
    assert res.inertia == pytest.approx(4 * 0.25)
    # k = n: every point its own cluster, zero inertia; duplicates do not crash.
    assert kmeans_fit(x, 4).inertia == pytest.approx(0.0)
    dup = np.zeros((5, 3))
    assert set(kmeans(dup, 2).tolist()) <= {0, 1}
    with pytest.raises(ValueError):
        kmeans(x, 5)
    with pytest.raises(ValueError):
        kmeans(x, 0)


# ------------------------------------------------------------------ silhouette / DB


def test_silhouette_hand_computed():
    x = np.array([[0.0], [1.0], [4.0], [5.0]])
    # s = 3.5/4.5, 2.5/3.5, 2.5/3.5, 3.5/4.5
    expected = (7 / 9 + 5 / 7) / 2
    assert silhouette(x, [0, 0, 1, 1]) == pytest.approx(expected)


def test_silhouette_singleton_scores_zero():
    x = np.array([[0.0], [1.0], [5.0]])
    assert silhouette(x, ["a", "a", "b"]) == pytest.approx((0.8 + 0.75 + 0.0) / 3)


def test_silhouette_chunked_rows_match(rng, monkeypatch):
    import fpt.metrics.clustering as cl

    x, y = _blobs(rng, [np.zeros(3), np.ones(3) * 2], 25, 1.0, 3)
    full = silhouette(x, y)
    monkeypatch.setattr(cl, "_CHUNK", 7)
    assert silhouette(x, y) == pytest.approx(full, rel=1e-12)


def test_silhouette_rejects_one_cluster():
    with pytest.raises(ValueError):
        silhouette(np.zeros((4, 2)), [0, 0, 0, 0])


def test_davies_bouldin_hand_computed():
    x = np.array([[0.0], [1.0], [4.0], [5.0]])
    # centroids 0.5 and 4.5, scatter 0.5 each, centroid distance 4 -> (0.5 + 0.5) / 4
    assert davies_bouldin(x, [0, 0, 1, 1]) == pytest.approx(0.25)
    three = np.array([[0.0], [2.0], [10.0], [12.0], [30.0], [30.0]])
    # S = 1, 1, 0; centroids 1, 11, 30: R01 = 0.2, R02 = 1/29, R12 = 1/19
    expected = (0.2 + 0.2 + 1 / 19) / 3
    assert davies_bouldin(three, [0, 0, 1, 1, 2, 2]) == pytest.approx(expected)


def test_separated_blobs_score_better_than_overlapping(rng):
    x_far, y = _blobs(rng, [np.zeros(2), np.full(2, 8.0)], 40, 1.0, 2)
    x_near, _ = _blobs(rng, [np.zeros(2), np.full(2, 0.5)], 40, 1.0, 2)
    assert silhouette(x_far, y) > 0.7 > silhouette(x_near, y)
    assert davies_bouldin(x_far, y) < 0.5 < davies_bouldin(x_near, y)


def test_fdr_gram_path_equals_pairwise(rng, monkeypatch):
    import fpt.metrics.clustering as cl

    x, y = _blobs(rng, [np.zeros(40), np.full(40, 0.5), np.full(40, -0.5), np.ones(40)], 9, 1.0, 40)  # n < d
    fast = fd_ratio_details(x, y, seed=2)
    monkeypatch.setattr(cl, "_GRAM_MAX_ROWS", 0)  # force the pair-by-pair path
    slow = fd_ratio_details(x, y, seed=2)
    for key, v in slow.inter_per_pair.items():
        assert fast.inter_per_pair[key] == pytest.approx(v, rel=1e-9)
    assert fast.ratio == pytest.approx(slow.ratio, rel=1e-9)


def test_wide_features_use_an_exact_isometry(rng, monkeypatch):
    """d > n: scores computed in the n-dim row space equal those in the full space."""
    import fpt.metrics.clustering as cl

    x, y = _blobs(rng, [np.zeros(300), np.full(300, 0.3), np.full(300, -0.3)], 10, 1.0, 300)
    iso = cl.isometric_rows(x)
    assert iso.shape[1] < x.shape[0]
    from scipy.spatial.distance import pdist

    assert np.allclose(pdist(iso), pdist(x), rtol=1e-9)
    fast = (silhouette(x, y), davies_bouldin(x, y), kmeans_fit(x, 3, seed=1))
    monkeypatch.setattr(cl, "isometric_rows", lambda a: np.asarray(a, dtype=np.float64))
    slow = (silhouette(x, y), davies_bouldin(x, y), kmeans_fit(x, 3, seed=1))
    assert fast[0] == pytest.approx(slow[0], rel=1e-9) and fast[1] == pytest.approx(slow[1], rel=1e-9)
    assert nmi(fast[2].labels, slow[2].labels) == pytest.approx(1.0)
    assert fast[2].inertia == pytest.approx(slow[2].inertia, rel=1e-6)
    assert fast[2].centroids.shape == (3, 300)
