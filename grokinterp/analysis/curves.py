"""One run's curves, classified: grokking, epoch-wise double descent, neither, or not generalized.

:func:`curve_pattern` reads a run's evaluations (``epoch, train_acc, test_acc, test_loss``: one
row per evaluation, e.g. :attr:`Run.evals <grokinterp.store.run.Run.evals>`) and applies these
written-down rules, in this order (the first that holds names the pattern):

================== ==================================================================================
``too_short``      fewer than :data:`MIN_EVALS` evaluations with a test loss: nothing is decided
``grokking``       train accuracy first reaches 99 % at ``t_train``, test accuracy at ``t_test``,
                   and ``t_test > GROK_DELAY_RATIO · max(t_train, 1)`` (the rule of the sweep
                   table's ``regime``: test accuracy comes more than 2× later than the fit)
``double_descent`` epoch-wise double descent of the test loss (below), and not grokking
``not_generalized`` test accuracy never reached 99 % and the test loss shows no double descent
``neither``        test accuracy reached 99 % without delay and without a double descent
================== ==================================================================================

**Epoch-wise double descent** of the test loss (Nakkiran et al. 2019; Davies et al. 2023), on the
test loss smoothed by a centred running median of :data:`SMOOTH_WINDOW` evaluations: there are
evaluations ``i1 < i2 < i3`` with

1. *a first descent*: ``L[i1] ≤ (1 − DD_FALL) · max(L[0..i1])`` (a fall of ≥ 10 % from the
   highest point before it), and ``L[i1]`` is the lowest loss so far (the running minimum);
2. *a rise*: ``L[i2] ≥ (1 + DD_RISE) · L[i1]`` and ``L[i2] − L[i1] ≥ DD_RISE_NATS`` (≥ 20 % above
   the first minimum and ≥ 0.05 nats, so that a wiggle at a loss near zero does not count);
3. *a second descent*: ``L[i3] < L[i1]``: the loss falls again below the first minimum.

In words: the test loss sets a low, climbs at least 20 % (and 0.05 nats) above it, and then sets a
new low. A run can be both grokking and double descent (grokking runs often are: the test loss
rises while the model memorizes and falls at cleanup); the pattern then says ``grokking`` and
:attr:`CurvePattern.double_descent` says ``True``.

Noise: the running median makes the rule blind to independent noise of about 5 % of the loss
per evaluation (tested on 100-evaluation curves); at about 10 % a long noisy plateau can set a
low, a 20 % higher point and a new low by chance — pass a longer ``smooth`` window for such curves
(minibatch runs evaluated often).

Robustness: rows with a NaN test loss are dropped, NaN accuracies are ignored by the accuracy
rules (imported runs hold accuracies only at checkpoints), the evaluations are sorted by epoch;
a missing column is an :class:`~grokinterp.errors.AnalysisError` naming it.

Example:
    >>> cp = curve_pattern(run.evals)                        # doctest: +SKIP
    >>> cp.pattern, cp.reason                                 # doctest: +SKIP
    ('grokking', 'test accuracy reached 99 % at epoch 5400, 27x after train accuracy (epoch 200)')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import AnalysisError

__all__ = ["PATTERNS", "CurvePattern", "curve_pattern", "double_descent", "GROK_DELAY_RATIO", "MIN_EVALS",
           "SMOOTH_WINDOW", "DD_FALL", "DD_RISE", "DD_RISE_NATS", "ACC_THRESHOLD"]

#: Accuracy that counts as fitted (train) or generalized (test).
ACC_THRESHOLD = 0.99
#: Test accuracy must reach 99 % more than this many times later than train accuracy (grokking).
GROK_DELAY_RATIO = 2.0
#: Fewer evaluations than this: ``too_short``.
MIN_EVALS = 5
#: Evaluations in the centred running median applied to the test loss before the double-descent rule.
SMOOTH_WINDOW = 5
#: The first descent: the first minimum at least this fraction below the highest loss before it.
DD_FALL = 0.10
#: The rise: the peak at least this fraction above the first minimum ...
DD_RISE = 0.20
#: ... and at least this many nats above it.
DD_RISE_NATS = 0.05

#: The patterns and their rules (in the order they are tested).
PATTERNS = {
    "too_short": f"fewer than {MIN_EVALS} evaluations with a test loss",
    "grokking": f"test accuracy reached {ACC_THRESHOLD:.0%} more than {GROK_DELAY_RATIO:g}x later than train accuracy",
    "double_descent": (f"the smoothed test loss fell ≥ {DD_FALL:.0%} to a low, rose ≥ {DD_RISE:.0%} "
                       f"(and ≥ {DD_RISE_NATS:g} nats) above it, then fell below that low (not grokking)"),
    "not_generalized": f"test accuracy never reached {ACC_THRESHOLD:.0%}, no double descent",
    "neither": f"test accuracy reached {ACC_THRESHOLD:.0%} without delay, no double descent",
}
_REQUIRED = ("epoch", "train_acc", "test_acc", "test_loss")


@dataclass(frozen=True)
class CurvePattern:
    """What :func:`curve_pattern` found.

    Attributes:
        pattern: one of :data:`PATTERNS`.
        reason: one line saying which numbers decided it.
        n_evals: evaluations used.
        train_acc_99_epoch: first epoch with train accuracy ≥ 99 % (``None``: never).
        test_acc_99_epoch: first epoch with test accuracy ≥ 99 % (``None``: never).
        double_descent: whether the test loss shows epoch-wise double descent (also for grokking runs).
        first_min_epoch, peak_epoch, second_min_epoch: the double descent's epochs (``None`` without one).
        rise: the peak's height above the first minimum, relative to it (``None`` without one).
    """

    pattern: str
    reason: str
    n_evals: int
    train_acc_99_epoch: int | None = None
    test_acc_99_epoch: int | None = None
    double_descent: bool = False
    first_min_epoch: int | None = None
    peak_epoch: int | None = None
    second_min_epoch: int | None = None
    rise: float | None = None


def _running_median(x: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(x) < 2:
        return x.copy()
    h = window // 2
    return np.array([np.median(x[max(0, i - h): i + h + 1]) for i in range(len(x))])


def double_descent(loss, *, smooth: int = SMOOTH_WINDOW) -> tuple[int, int, int, float] | None:
    """Indices ``(i1, i2, i3)`` of the first minimum, the peak and the new low of an epoch-wise double
    descent of ``loss`` (the rule of the module notes), and the relative rise; ``None`` without one.

    ``i1`` is the earliest low that a qualifying rise follows; ``i2`` the highest point between it and
    the new low ``i3`` (the first evaluation below ``L[i1]``). Pure numpy, O(n) after smoothing.
    """
    if not isinstance(smooth, (int, np.integer)) or isinstance(smooth, bool) or smooth < 1:
        raise AnalysisError(f"smooth: must be a positive integer, got {smooth!r}")
    x = np.asarray(loss, dtype=np.float64)
    if x.ndim != 1:
        raise AnalysisError(f"loss: expected a 1-D curve, got shape {x.shape}")
    x = x[np.isfinite(x)]
    if len(x) < 3:
        return None
    L = _running_median(x, smooth)
    n = len(L)
    prefix_max = np.maximum.accumulate(L)
    # i1 candidates: a new running minimum that is DD_FALL below the highest point before it
    is_low = np.r_[True, L[1:] < np.minimum.accumulate(L)[:-1]]
    i = 0
    while i < n:
        if is_low[i] and L[i] <= (1 - DD_FALL) * prefix_max[i]:
            lo = L[i]
            # walk to the next new low; track the highest point on the way
            j, peak, ip = i + 1, -np.inf, i
            while j < n and L[j] >= lo:
                if L[j] > peak:
                    peak, ip = L[j], j
                j += 1
            if j < n and peak >= (1 + DD_RISE) * lo and peak - lo >= DD_RISE_NATS:
                return i, ip, j, float((peak - lo) / max(lo, 1e-300))
            i = j  # the next new low (or the end)
            continue
        i += 1
    return None


def _first_epoch(ep: np.ndarray, acc: np.ndarray) -> int | None:
    hit = np.flatnonzero(np.isfinite(acc) & (acc >= ACC_THRESHOLD))
    return int(ep[hit[0]]) if len(hit) else None


def curve_pattern(evals, *, smooth: int = SMOOTH_WINDOW) -> CurvePattern:
    """Classify one run's curves (rules in the module notes).

    Args:
        evals: a DataFrame with columns ``epoch, train_acc, test_acc, test_loss``, one row per
            evaluation (e.g. ``run.evals``; ``run.metrics`` works too: its NaN rows are dropped).
        smooth: evaluations in the running median applied to the test loss (odd; 1: none).

    Raises:
        AnalysisError: not a DataFrame, a column missing or not numeric, or an epoch repeated.
    """
    if not isinstance(evals, pd.DataFrame):
        raise AnalysisError(f"evals: expected a pandas DataFrame (one row per evaluation), got {type(evals).__name__}")
    missing = [c for c in _REQUIRED if c not in evals.columns]
    if missing:
        raise AnalysisError(f"evals: missing column(s) {missing}; columns present: {list(evals.columns)}")
    for c in _REQUIRED:
        if not pd.api.types.is_numeric_dtype(evals[c]):
            raise AnalysisError(f"evals: column {c!r} holds non-numeric values")
    df = evals.loc[np.isfinite(evals["test_loss"].to_numpy(np.float64)) & evals["epoch"].notna(), list(_REQUIRED)]
    df = df.sort_values("epoch", kind="stable")
    ep = df["epoch"].to_numpy(np.float64)
    if np.any(np.diff(ep) == 0):
        raise AnalysisError(f"evals: epochs {ep[1:][np.diff(ep) == 0][:5].astype(int).tolist()} appear more than once")
    n = len(df)
    t_tr = _first_epoch(ep, df["train_acc"].to_numpy(np.float64))
    t_te = _first_epoch(ep, df["test_acc"].to_numpy(np.float64))
    if n < MIN_EVALS:
        return CurvePattern("too_short", f"{n} evaluation(s) with a test loss; the rules need {MIN_EVALS}", n,
                            t_tr, t_te)
    dd = double_descent(df["test_loss"].to_numpy(np.float64), smooth=smooth)
    extra = {}
    if dd is not None:
        i1, i2, i3, rise = dd
        extra = dict(double_descent=True, first_min_epoch=int(ep[i1]), peak_epoch=int(ep[i2]),
                     second_min_epoch=int(ep[i3]), rise=rise)
        dd_text = (f"test loss low at epoch {int(ep[i1])}, up {rise:.0%} by epoch {int(ep[i2])}, "
                   f"below the low again at epoch {int(ep[i3])}")
    if t_tr is not None and t_te is not None and t_te > GROK_DELAY_RATIO * max(t_tr, 1):
        why = (f"test accuracy reached 99 % at epoch {t_te}, {t_te / max(t_tr, 1):.3g}x after train accuracy "
               f"(epoch {t_tr})")
        return CurvePattern("grokking", why + (f"; also double descent ({dd_text})" if dd else ""), n, t_tr, t_te,
                            **extra)
    if dd is not None:
        return CurvePattern("double_descent", dd_text, n, t_tr, t_te, **extra)
    if t_te is None:
        return CurvePattern("not_generalized", "test accuracy never reached 99 %; no double descent", n, t_tr, t_te)
    return CurvePattern("neither", f"test accuracy reached 99 % at epoch {t_te} (train: {t_tr}); no double descent",
                        n, t_tr, t_te)
