"""Known-answer tests for fpt.metrics.identification."""

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
