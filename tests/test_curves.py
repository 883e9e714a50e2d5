"""The curve-pattern rule (issue 21 item 4): planted grokking, double descent, monotone and noise
curves; the double-descent finder against a brute-force reading of its rule; bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grokinterp.analysis import curves as C
from grokinterp.errors import AnalysisError

EP = np.arange(0, 2001, 20)


def _sig(t, mid, width=40.0):
    return 1 / (1 + np.exp(-(t - mid) / width))


def _table(train_acc, test_acc, test_loss, epochs=EP):
    return pd.DataFrame({"epoch": epochs, "train_loss": 0.0, "train_acc": train_acc, "test_acc": test_acc,
                         "test_loss": test_loss})


def grokking_curves():
    """Train fits by ~300, test accuracy jumps at ~1500; test loss rises while memorizing, then falls."""
    test_loss = np.log(113) + 3 * _sig(EP, 200) * (1 - _sig(EP, 1500)) - 4.6 * _sig(EP, 1500)
    return _table(_sig(EP, 150, 30), _sig(EP, 1500, 30), np.maximum(test_loss, 0.01))


def dd_curves(generalizes=True):
    """Test loss 3 → 1 (epoch ~300) → 1.8 (epoch ~700) → 0.3; accuracies fit together (no delay)."""
    t = EP.astype(float)
    loss = 3 - 2 * _sig(t, 150, 30) + 0.8 * np.exp(-((t - 700) / 150) ** 2) - 0.7 * _sig(t, 1100, 80)
    acc = _sig(t, 1000, 30) if generalizes else 0.5 * _sig(t, 1000, 30)
    return _table(_sig(t, 900, 30), acc, loss)


def test_planted_curves_get_their_pattern():
    g = C.curve_pattern(grokking_curves())
    assert g.pattern == "grokking" and g.train_acc_99_epoch < 400 and g.test_acc_99_epoch > 1500
    assert "x after train accuracy" in g.reason
    d = C.curve_pattern(dd_curves())
    assert d.pattern == "double_descent" and d.double_descent
    assert 200 <= d.first_min_epoch <= 500 and 600 <= d.peak_epoch <= 800 and d.second_min_epoch > d.peak_epoch
    assert 0.5 < d.rise < 1.0  # 1.0 → ~1.8: +80 %, smoothed a little
    assert C.curve_pattern(dd_curves(generalizes=False)).pattern == "double_descent"
    mono = _table(_sig(EP, 100), _sig(EP, 120), 4.7 * np.exp(-EP / 200) + 1e-3)
    m = C.curve_pattern(mono)
    assert m.pattern == "neither" and not m.double_descent and m.test_acc_99_epoch <= 2 * m.train_acc_99_epoch
    flat = _table(_sig(EP, 100), np.full(len(EP), 0.3), 4.7 * np.exp(-EP / 200) + 2.0)
    assert C.curve_pattern(flat).pattern == "not_generalized"


def test_noise_is_never_double_descent():
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(50):
        loss = 4.0 + rng.normal(0, 0.15, len(EP))  # ~4 % noise around a flat loss
        acc = rng.uniform(0, 0.5, len(EP))
        cp = C.curve_pattern(_table(acc, acc, loss))
        found += cp.double_descent
        assert cp.pattern == "not_generalized"
    assert found == 0
    # 5 % multiplicative noise on a falling curve that flattens: still no double descent (the stated
    # tolerance; 10 % noise on the plateau can set a low, a 20 % higher point and a new low by chance)
    for _ in range(50):
        loss = (4.7 * np.exp(-EP / 300) + 0.5) * (1 + rng.normal(0, 0.05, len(EP)))
        assert C.double_descent(loss) is None


@pytest.mark.parametrize("bump,low_after,expect", [
    (1.25, 0.9, True),     # +25 %, then below the first low
    (1.15, 0.9, False),    # +15 %: under DD_RISE
    (1.25, 1.05, False),   # rises, but never falls below the first low again
])
def test_the_thresholds_decide(bump, low_after, expect):
    x = np.concatenate([np.linspace(3, 1, 10), np.full(5, 1.0), np.full(8, bump), np.full(8, low_after)])
    assert (C.double_descent(x) is not None) == expect


def test_a_wiggle_near_zero_loss_is_not_double_descent():
    x = np.concatenate([np.linspace(3, 0.01, 20), np.full(5, 0.01), np.full(8, 0.03), np.full(8, 0.005)])  # +200 % but 0.02 nats
    assert C.double_descent(x) is None
    x = np.concatenate([np.linspace(3, 0.01, 20), np.full(5, 0.01), np.full(8, 0.08), np.full(8, 0.005)])  # +0.07 nats
    assert C.double_descent(x) is not None


def _brute(L):
    """The rule read literally, O(n^3): a peak i2, the lowest point before it i1 (its first
    occurrence) DD_FALL below the highest point up to i1, the peak DD_RISE and DD_RISE_NATS above
    it, and a later point below it."""
    n = len(L)
    for i2 in range(1, n):
        i1 = int(np.argmin(L[:i2]))
        lo = L[i1]
        if not lo <= (1 - C.DD_FALL) * L[:i1 + 1].max():
            continue
        if L[i2] >= (1 + C.DD_RISE) * lo and L[i2] - lo >= C.DD_RISE_NATS and (L[i2 + 1:] < lo).any():
            return True
    return False


def test_the_finder_equals_the_rule_read_literally():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        n = int(rng.integers(3, 25))
        L = np.exp(rng.normal(0, 0.6, n).cumsum() * 0.5)  # random walks in log space
        got = C.double_descent(L, smooth=1)
        assert (got is not None) == _brute(L), L
        if got is not None:
            i1, i2, i3, rise = got
            hits += 1
            assert i1 < i2 < i3 and L[i3] < L[i1] and L[i2] == L[i1:i3].max()
            assert np.isclose(rise, L[i2] / L[i1] - 1)
    assert 20 < hits < 380  # both outcomes are exercised


def test_nan_rows_short_curves_and_bad_input():
    t = dd_curves()
    every_epoch = t.set_index("epoch").reindex(np.arange(0, 2001)).reset_index()  # NaN between evaluations
    assert C.curve_pattern(every_epoch) == C.curve_pattern(t)
    shuffled = t.sample(frac=1.0, random_state=0)
    assert C.curve_pattern(shuffled) == C.curve_pattern(t)
    holes = t.copy()
    holes.loc[holes.index % 3 == 0, ["train_acc", "test_acc"]] = np.nan  # accuracies only at some rows
    assert C.curve_pattern(holes).pattern == "double_descent"
    short = C.curve_pattern(t.iloc[:3])
    assert short.pattern == "too_short" and short.n_evals == 3 and "3 evaluation" in short.reason
    assert C.curve_pattern(t.iloc[:0]).pattern == "too_short"
    with pytest.raises(AnalysisError, match=r"missing column\(s\) \['test_acc'\]"):
        C.curve_pattern(t.drop(columns="test_acc"))
    with pytest.raises(AnalysisError, match="'test_loss' holds non-numeric"):
        C.curve_pattern(t.assign(test_loss="x"))
    with pytest.raises(AnalysisError, match="appear more than once"):
        C.curve_pattern(pd.concat([t, t.iloc[:1]]))
    with pytest.raises(AnalysisError, match="DataFrame"):
        C.curve_pattern(t.to_numpy())
    with pytest.raises(AnalysisError, match="1-D"):
        C.double_descent(np.zeros((3, 3)))
    assert set(C.PATTERNS) == {"too_short", "grokking", "double_descent", "not_generalized", "neither"}
