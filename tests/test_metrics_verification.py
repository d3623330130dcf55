"""Known-answer tests for fpt.metrics.verification."""

from __future__ import annotations

import numpy as np
import pytest

from fpt.metrics import identification as I
from fpt.metrics import verification as M


def test_roc_auc_known_values():
    # positives 0.9, 0.8, 0.4 ; negatives 0.7, 0.3 -> pairs won: (0.9>both,0.8>both,0.4>0.3) = 5/6
    s = [0.9, 0.8, 0.7, 0.4, 0.3]
    y = [1, 1, 0, 1, 0]
    assert M.roc_auc(s, y) == pytest.approx(5 / 6)
    assert M.roc_auc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert M.roc_auc([1, 2, 3, 4], [1, 1, 0, 0]) == 0.0
    # ties count one half
    assert M.roc_auc([0.5, 0.5], [1, 0]) == 0.5
    assert M.roc_auc([0.5, 0.5, 0.9, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_roc_auc_matches_trapezoid_of_curve(rng):
    s = rng.normal(size=300)
    y = rng.random(300) < 0.4
    s[y] += 0.8
    s = np.round(s, 1)  # force ties
    fpr, tpr, thr = M.roc_curve(s, y)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)
    assert M.roc_auc(s, y) == pytest.approx(np.trapezoid(tpr, fpr))


def test_roc_curve_points():
    fpr, tpr, thr = M.roc_curve([0.9, 0.8, 0.7, 0.4, 0.3], [1, 1, 0, 1, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thr[1:], [0.9, 0.8, 0.7, 0.4, 0.3])


def test_eer_known():
    # perfectly separable -> EER 0 with a threshold that separates
    rate, t = M.eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert rate == 0.0
    assert M.accuracy_at_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], t) == 1.0
    # symmetric overlap: genuines {0.4,0.6,0.8,1.0}, impostors {0.0,0.2,0.4... } one of each side wrong
    s = [0.0, 0.2, 0.5, 0.7, 0.3, 0.6, 0.8, 1.0]
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    rate, t = M.eer(s, y)
    assert rate == pytest.approx(0.25)
    far, frr = M.far_frr(s, y, t)
    assert far == pytest.approx(0.25) and frr == pytest.approx(0.25)


def test_eer_gaussian(rng):
    # two unit Gaussians 2 sigma apart: EER = Phi(-1) = 0.1587
    n = 200_000
    s = np.r_[rng.normal(0, 1, n), rng.normal(2, 1, n)]
    y = np.r_[np.zeros(n), np.ones(n)]
    rate, t = M.eer(s, y)
    assert rate == pytest.approx(0.1587, abs=0.003)
    assert t == pytest.approx(1.0, abs=0.02)


def test_accuracy_at_threshold():
    s = [0.1, 0.5, 0.5, 0.9]
    y = [0, 0, 1, 1]
    assert M.accuracy_at_threshold(s, y, 0.5) == 0.75  # >= accepts both 0.5s
    assert M.accuracy_at_threshold(s, y, 0.6) == 0.75
    assert M.accuracy_at_threshold(s, y, 0.0) == 0.5
    acc, t = M.best_accuracy([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert acc == 1.0 and M.accuracy_at_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], t) == 1.0


def test_threshold_at_far():
    imp = np.arange(100) / 100.0  # 0.00 .. 0.99
    t = M.threshold_at_far(imp, far=0.05)
    assert np.mean(imp >= t) == pytest.approx(0.05)
    assert 0.94 < t <= 0.95
    t0 = M.threshold_at_far(imp, far=0.0)
    assert np.mean(imp >= t0) == 0.0 and t0 > 0.99
    # labelled form uses negatives only
    s = np.r_[imp, np.full(10, 5.0)]
    y = np.r_[np.zeros(100), np.ones(10)]
    assert M.threshold_at_far(s, y, far=0.05) == t
    with pytest.raises(ValueError):
        M.threshold_at_far([], far=0.1)


def test_bad_inputs():
    with pytest.raises(ValueError):
        M.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        M.roc_auc([0.1, np.nan], [1, 0])
    with pytest.raises(ValueError):
        M.roc_curve([0.1], [1, 0])


def test_verification_pairs_balanced_and_valid(rng):
    labels = np.repeat(np.arange(5), 12)
    i, j, same = M.verification_pairs(labels, 200, rng)
    assert same.sum() == 100 and (~same).sum() == 100
    assert np.all((labels[i] == labels[j]) == same)
    assert np.all(i[same] != j[same])


def test_set_pairs_disjoint(rng):
    labels = np.repeat(np.array(["x", "y", "z"]), 25)
    a, b, same = M.set_pairs(labels, 10, 40, rng)
    assert a.shape == (40, 10) and b.shape == (40, 10)
    for p in range(40):
        assert len(set(labels[a[p]])) == 1 and len(set(labels[b[p]])) == 1
        assert (labels[a[p][0]] == labels[b[p][0]]) == same[p]
        if same[p]:
            assert not set(a[p]) & set(b[p])
    with pytest.raises(ValueError):
        M.set_pairs(np.repeat([0, 1], 5), 10, 4, rng)


def test_pair_scores_and_identification(rng):
    # three well-separated clusters on the sphere
    centres = np.eye(3, 8) * 5
    labels = np.repeat(np.arange(3), 30)
    emb = centres[labels] + rng.normal(0, 0.5, (90, 8))
    i, j, same = M.verification_pairs(labels, 100, rng)
    s = M.pair_scores(emb, i, j)
    assert M.roc_auc(s, same) > 0.99
    a, b, same10 = M.set_pairs(labels, 5, 50, rng)
    s10 = M.pair_scores(emb, a, b)
    assert M.roc_auc(s10, same10) == 1.0
    res = I.identify_k_shot(emb, labels, k=10, rng=rng)
    assert res.accuracy == 1.0 and res.macro_f1 == 1.0
    assert res.probe_idx.size == 60 and res.gallery_idx.size == 30
    assert not set(res.probe_idx) & set(res.gallery_idx)
    # labels swapped in half the probes -> accuracy drops accordingly
    wrong = labels.copy()
    wrong[res.probe_idx[:30]] = (wrong[res.probe_idx[:30]] + 1) % 3
    res2 = I.identify_k_shot(emb, wrong, k=10, split=(res.gallery_idx, res.probe_idx))
    assert res2.accuracy == pytest.approx(0.5)


def test_cosine_matrix():
    a = np.array([[1.0, 0], [0, 2.0]])
    b = np.array([[3.0, 0], [1, 1]])
    np.testing.assert_allclose(M.cosine_matrix(a, b), [[1, 2 ** -0.5], [0, 2 ** -0.5]])
