"""Known-answer tests for fpt.metrics.identification."""

import numpy as np
import pytest

from fpt.metrics import identification as I


def test_macro_f1_known():
    yt = ["a", "a", "b", "b", "c", "c"]
    yp = ["a", "a", "b", "c", "c", "c"]
    # a: 1.0 ; b: tp1 fp0 fn1 -> 2/3 ; c: tp2 fp1 fn0 -> 4/5
    assert I.macro_f1(yt, yp) == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    assert I.macro_f1([0, 1], [0, 1]) == 1.0
    assert I.macro_f1([0, 0], [1, 1]) == 0.0


def test_open_set_auroc():
    assert I.open_set_auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert I.open_set_auroc([0.5], [0.5]) == 0.5


def test_gallery_scores_rank_raw_without_shrinkage_or_when_the_gallery_cannot_whiten():
    from fpt.metrics.identification import gallery_scores
    from fpt.metrics.within_class import can_whiten

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(12, 5))
    labels = np.repeat(["a", "b", "c"], 4)
    gal, probe = np.array([0, 1, 4, 5, 8, 9]), np.array([2, 3, 6, 7, 10, 11])
    classes, raw, rank = gallery_scores(emb, labels, gal, probe)
    assert classes == ["a", "b", "c"] and rank is raw
    _, raw2, rank2 = gallery_scores(emb, labels, gal, probe, shrinkage=1.0)
    np.testing.assert_allclose(raw2, raw)
    assert rank2.shape == raw.shape and not np.allclose(rank2, raw)
    one_each = np.array([0, 4, 8])
    assert not can_whiten(labels[one_each]) and can_whiten(labels[gal])
    _, raw3, rank3 = gallery_scores(emb, labels, one_each, probe, shrinkage=1.0)
    assert rank3 is raw3
