"""The three phases of grokking, found from the progress-measure curves by written-down rules.

Nanda et al. (2023, §5.2) split training into **memorization** (the model fits the training set;
test loss is high), **circuit formation** (the Fourier circuit grows while the memorizing one is
still in use: restricted loss falls, excluded loss rises, test loss stays high) and **cleanup**
(weight decay removes the memorization components: test loss and the weight norm fall sharply).
For p = 113 with 30 % of the data they give 0–1.4k, 1.4k–9.4k and 9.4k–14k epochs.

:func:`detect_phases` finds the epoch that ends each phase; :func:`circuit_formation_epoch` dates
the formation of the generalizing circuit from the restricted accuracy and compares it with the epoch
test accuracy passed 99 %. Both take a table with one row per checkpoint (the output of
:func:`grokinterp.progress.progress_measures`, or ``run.eval_metrics()`` for the rules that need
only losses and accuracies) and return frozen dataclasses whose ``rule`` strings state exactly what
was tested. A boundary that cannot be found (a run that never memorizes, never generalizes, or
stops mid-cleanup) is ``None`` with a ``reason``.

The rules use smoothed curves and relative thresholds (fractions of a curve's own log10 range or
of its fastest fall, a ratio of losses), so they carry over between values of p, loss scales and
checkpoint spacings:

* every curve is smoothed by a centred running median over :data:`SMOOTH_WINDOW` checkpoints
  (losses and weight norms on a log10 scale), which removes isolated spikes (slingshots);
* a curve "falls a fraction f of its range" when its smoothed log10 value drops below
  ``high − f·(high − low)``, ``high`` and ``low`` being its smoothed extremes;
* a fall "slows" when its rate (a local least-squares slope of the smoothed log10 curve over
  :data:`RATE_SPAN` of the run's epochs, so dense checkpoints average more points instead of
  adding noise) drops below a fraction of the curve's fastest fall.

Example:
    >>> measures = progress_measures(run)                        # doctest: +SKIP
    >>> phases = detect_phases(measures)                         # doctest: +SKIP
    >>> phases.memorization_end, phases.circuit_formation_end, phases.cleanup_end   # doctest: +SKIP
    (1400, 9750, 14050)        # curves shaped like the paper's (boundaries 1.4k, 9.4k, 14k)
    >>> print(phases.cleanup.rule)                               # doctest: +SKIP
    >>> circuit_formation_epoch(measures).lead_time             # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import AnalysisError

__all__ = [
    "ACC_THRESHOLD",
    "SMOOTH_WINDOW",
    "PhaseBoundary",
    "Phases",
    "detect_phases",
    "CircuitFormation",
    "circuit_formation_epoch",
]

#: Accuracy that counts as "fitted" (train) or "generalized" (test).
ACC_THRESHOLD = 0.99
#: Checkpoints in the centred running median applied to every curve.
SMOOTH_WINDOW = 5
#: Circuit formation ends when the test loss has fallen this fraction of its log10 range.
TEST_FALL_START = 0.10
#: Cleanup ends once the test loss is within this many decades of the train loss ...
TEST_TRAIN_GAP_END = 1.0
#: ... and the weight norm falls at less than this fraction of its fastest fall since cleanup began.
WEIGHT_RATE_END = 0.20
#: Fall rates are local linear-regression slopes over this fraction of the run's epoch span.
RATE_SPAN = 0.02
#: Without a ``restricted_acc`` column, the circuit has formed when the smoothed restricted loss
#: falls below this many nats (absolute, so the date does not depend on how long training went on).
RESTRICTED_LOSS_MAX = 0.1

_REQUIRED = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
_TINY = 1e-300


# -- input ------------------------------------------------------------------------------------------
def _check_measures(measures, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Validate and clean a per-checkpoint table: required columns, numeric, sorted epochs."""
    if not isinstance(measures, pd.DataFrame):
        raise AnalysisError(f"measures: expected a pandas DataFrame (one row per checkpoint), "
                            f"got {type(measures).__name__}")
    need = _REQUIRED + extra
    missing = [c for c in need if c not in measures.columns]
    if missing:
        raise AnalysisError(f"measures: missing column(s) {missing}; columns present: {list(measures.columns)}")
    if len(measures) == 0:
        raise AnalysisError("measures: the table is empty (no checkpoints)")
    for c in measures.columns:
        if c in need or c in ("restricted_loss", "excluded_loss", "sum_sq_weights"):
            if not pd.api.types.is_numeric_dtype(measures[c]):
                raise AnalysisError(f"measures: column {c!r} holds non-numeric values")
    df = measures.dropna(subset=list(need)).sort_values("epoch", kind="stable").reset_index(drop=True)
    if len(df) == 0:
        raise AnalysisError(f"measures: no row has all of {list(need)} recorded (all hold NaN)")
    ep = df["epoch"].to_numpy()
    if np.any(np.diff(ep) == 0):
        dup = ep[1:][np.diff(ep) == 0][:5].tolist()
        raise AnalysisError(f"measures: epochs {dup} appear more than once")
    for c in ("train_loss", "test_loss"):
        if (df[c] < 0).any():
            raise AnalysisError(f"measures: column {c!r} holds negative losses")
    return df


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running median over ``window`` points (shrinking at the ends)."""
    return pd.Series(y).rolling(window, center=True, min_periods=1).median().to_numpy()


def _log_curve(df: pd.DataFrame, col: str, window: int) -> np.ndarray:
    y = df[col].to_numpy(dtype=np.float64)
    if np.all(np.isnan(y)):
        return y
    y = pd.Series(y).interpolate(limit_direction="both").to_numpy()
    return _smooth(np.log10(np.maximum(y, _TINY)), window)


def _first(mask: np.ndarray, start: int = 0) -> int | None:
    idx = np.flatnonzero(mask[start:])
    return int(idx[0]) + start if len(idx) else None


# -- phases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseBoundary:
    """The epoch that ends one phase, and how it was found.

    Attributes:
        phase: ``memorization``, ``circuit_formation`` or ``cleanup``.
        end: the first checkpoint epoch at which the rule held, or ``None``.
        rule: the rule, in words, with the thresholds used.
        reason: why ``end`` is ``None`` (``None`` when it was found).
    """

    phase: str
    end: int | None
    rule: str
    reason: str | None = None


@dataclass(frozen=True)
class Phases:
    """The phases of a run (see the module docstring for the rules).

    Attributes:
        memorization, circuit_formation, cleanup: the boundary ending each phase.
        first_epoch, last_epoch: the span of the checkpoints examined.
        test_acc_99_epoch: first epoch the smoothed test accuracy reached 99 % (``None``: never).
        smoothing: how the curves were smoothed.
    """

    memorization: PhaseBoundary
    circuit_formation: PhaseBoundary
    cleanup: PhaseBoundary
    first_epoch: int
    last_epoch: int
    test_acc_99_epoch: int | None
    smoothing: str

    @property
    def memorization_end(self) -> int | None:
        return self.memorization.end

    @property
    def circuit_formation_end(self) -> int | None:
        return self.circuit_formation.end

    @property
    def cleanup_end(self) -> int | None:
        return self.cleanup.end

    @property
    def grokked(self) -> bool:
        """The run generalized: test accuracy reached 99 % after memorization."""
        return self.circuit_formation.end is not None

    def intervals(self) -> list[tuple[str, int, int]]:
        """``(phase, start, end)`` of each phase whose end was found, for shading plots."""
        out, start = [], self.first_epoch
        for b in (self.memorization, self.circuit_formation, self.cleanup):
            if b.end is None:
                break
            out.append((b.phase, start, b.end))
            start = b.end
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per phase: ``phase, start, end, rule, reason`` (``start``/``end`` nullable Int64)."""
        rows, start = [], self.first_epoch
        for b in (self.memorization, self.circuit_formation, self.cleanup):
            rows.append({"phase": b.phase, "start": start, "end": b.end, "rule": b.rule, "reason": b.reason})
            start = b.end
        return pd.DataFrame(rows).astype({"start": "Int64", "end": "Int64"})


def _fall_rate(y: np.ndarray, ep: np.ndarray) -> np.ndarray:
    """``−dy/d epoch`` at each checkpoint: least-squares slope over the checkpoints within
    ``±RATE_SPAN/2`` of the run's epoch span (at least the two neighbours)."""
    n = len(y)
    if n < 2:
        return np.zeros(n)
    t = ep.astype(np.float64)
    half = max(RATE_SPAN * (t[-1] - t[0]) / 2, 0.0)
    lo = np.minimum(np.searchsorted(t, t - half, side="left"), np.maximum(np.arange(n) - 1, 0))
    hi = np.maximum(np.searchsorted(t, t + half, side="right"), np.minimum(np.arange(n) + 2, n))
    c = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
    S1, St, Sy, Stt, Sty = c(np.ones(n)), c(t), c(y), c(t * t), c(t * y)
    k = S1[hi] - S1[lo]
    st, sy, stt, sty = St[hi] - St[lo], Sy[hi] - Sy[lo], Stt[hi] - Stt[lo], Sty[hi] - Sty[lo]
    den = k * stt - st * st
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (k * sty - st * sy) / den
    return -np.where(den > 0, slope, 0.0)


def detect_phases(measures: pd.DataFrame, *, window: int = SMOOTH_WINDOW) -> Phases:
    """Find the epochs that end memorization, circuit formation and cleanup.

    Args:
        measures: one row per checkpoint with at least ``epoch, train_loss, test_loss, train_acc,
            test_acc`` (:func:`~grokinterp.progress.progress_measures` output or
            ``run.eval_metrics()``); ``sum_sq_weights``, when present, is used for the end of cleanup.
        window: checkpoints in the running median (1 = no smoothing).

    Returns:
        :class:`Phases`. Boundaries that cannot be found are ``None`` with a ``reason``; later
        phases are then ``None`` too.

    Raises:
        AnalysisError: not a DataFrame, empty, a required column missing or non-numeric, repeated
            epochs, negative losses, or a bad ``window``.

    Notes:
        With ``ℓ`` the smoothed log10 test loss, ``hi`` its maximum before smoothed test accuracy
        reaches 99 % and ``lo`` its minimum from then on:

        * memorization ends at the first epoch where smoothed train accuracy ≥ 99 %;
        * circuit formation ends (cleanup begins) at the first epoch after both the memorization
          end and the test-loss peak where ``ℓ ≤ hi − 0.1 (hi − lo)``: the test loss has begun its
          sharp fall. Requires the smoothed test accuracy to reach 99 % at some point;
        * cleanup ends at the first epoch after that, with test accuracy ≥ 99 % reached, where the
          smoothed test loss is within one decade of the smoothed train loss and (with
          ``sum_sq_weights``) the smoothed log10 weight norm falls at less than 20 % of its fastest
          rate since cleanup began (rates: local least-squares slopes over 2 % of the epoch span).
          A weight norm still falling that fast at the last checkpoint leaves the end ``None``.

        Thresholds are relative (fractions of a curve's own range or fastest rate, a ratio of
        losses), so the rules carry over between p, loss scales and checkpoint spacings.
    """
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise AnalysisError(f"window: must be a positive integer, got {window!r}")
    df = _check_measures(measures)
    ep = df["epoch"].to_numpy(dtype=np.int64)
    smoothing = (f"centred running median over {window} checkpoints (losses and weight norm in log10); "
                 f"rates: least-squares slopes over {RATE_SPAN:.0%} of the epoch span")
    tr_acc = _smooth(df["train_acc"].to_numpy(dtype=np.float64), window)
    te_acc = _smooth(df["test_acc"].to_numpy(dtype=np.float64), window)
    ell = _log_curve(df, "test_loss", window)
    gap = ell - _log_curve(df, "train_loss", window)
    acc_pct = f"{ACC_THRESHOLD:.0%}"

    rule_m = f"first epoch where the smoothed train accuracy ≥ {acc_pct}"
    rule_c = (f"first epoch after the memorization end and the test-loss peak where the smoothed log10 test loss "
              f"has fallen {TEST_FALL_START:.0%} of its range (peak before smoothed test accuracy ≥ {acc_pct} → "
              f"minimum after): the sharp fall of the test loss has begun")
    rule_e = (f"first epoch after the circuit-formation end, with smoothed test accuracy ≥ {acc_pct} reached, where "
              f"the smoothed test loss is within {TEST_TRAIN_GAP_END:g} decade(s) of the smoothed train loss")
    has_w = "sum_sq_weights" in df.columns and df["sum_sq_weights"].notna().sum() >= 2
    if has_w:
        rule_e += (f" and the smoothed log10 sum of squared weights falls at < {WEIGHT_RATE_END:.0%} of its fastest "
                   f"fall since the circuit-formation end (past that fastest point)")

    t99 = _first(te_acc >= ACC_THRESHOLD)
    t99_epoch = None if t99 is None else int(ep[t99])

    def result(m, c, e) -> Phases:
        return Phases(m, c, e, int(ep[0]), int(ep[-1]), t99_epoch, smoothing)

    def none_after(m, why):
        return result(m, PhaseBoundary("circuit_formation", None, rule_c, why),
                      PhaseBoundary("cleanup", None, rule_e, why))

    i_m = _first(tr_acc >= ACC_THRESHOLD)
    if i_m is None:
        why = f"smoothed train accuracy never reached {acc_pct} (max {np.nanmax(tr_acc):.1%})"
        return none_after(PhaseBoundary("memorization", None, rule_m, why), "memorization did not end: " + why)
    mem = PhaseBoundary("memorization", int(ep[i_m]), rule_m)
    if t99 is None:
        return none_after(mem, f"smoothed test accuracy never reached {acc_pct} (max {np.nanmax(te_acc):.1%} by "
                               f"epoch {int(ep[-1])}): the run has not generalized")

    i_peak = int(np.nanargmax(ell[: t99 + 1]))
    hi, lo = float(ell[i_peak]), float(np.nanmin(ell[t99:]))
    i_c = _first(ell <= hi - TEST_FALL_START * (hi - lo), max(i_m, i_peak)) if hi > lo else None
    if i_c is None:
        return none_after(mem, f"the smoothed test loss never fell {TEST_FALL_START:.0%} of its range after the "
                               f"memorization end (peak 10^{hi:.2f}, minimum after 10^{lo:.2f})")
    circ = PhaseBoundary("circuit_formation", int(ep[i_c]), rule_c)

    i_e = _first(gap <= TEST_TRAIN_GAP_END, max(i_c, t99))
    reason = None
    if i_e is None:
        reason = (f"the smoothed test loss never came within {TEST_TRAIN_GAP_END:g} decade(s) of the train loss "
                  f"after epoch {int(ep[max(i_c, t99)])} (closest: {np.nanmin(gap[max(i_c, t99):]):.2f} decades)")
    elif has_w:
        rate = _fall_rate(_log_curve(df, "sum_sq_weights", window), ep)
        i_f = i_c + int(np.nanargmax(rate[i_c:]))
        if rate[i_f] > 0:
            i_w = _first(rate < WEIGHT_RATE_END * rate[i_f], i_f)
            if i_w is None:
                i_e, reason = None, (f"the weight norm was still falling at ≥ {WEIGHT_RATE_END:.0%} of its fastest "
                                     f"cleanup rate at the last checkpoint (epoch {int(ep[-1])}): the run stopped "
                                     f"during cleanup")
            else:
                i_e = max(i_e, i_w)
    clean = PhaseBoundary("cleanup", None if i_e is None else int(ep[i_e]), rule_e, reason)
    return result(mem, circ, clean)


# -- circuit formation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitFormation:
    """When the generalizing circuit formed, by the progress measures, and how far ahead of test accuracy.

    Attributes:
        epoch: first epoch the key-frequency circuit alone classifies 99 % of the pairs (smoothed
            restricted accuracy; see :func:`circuit_formation_epoch`), ``None`` if never (``reason``).
        rule: that rule in words.
        test_acc_99_epoch: first epoch the (unsmoothed) test accuracy reached 99 % (``None``: never).
        lead_time: ``test_acc_99_epoch − epoch`` (epochs by which the measure leads; ``None`` if
            either is missing).
        excluded_loss_epoch: first epoch, after the smoothed excluded loss fell below ``ln p``, at
            which it is back above ``ln p`` (``None`` if it never rose or is absent).
        excluded_rule: that rule in words.
        reason: why ``epoch`` is ``None``.
    """

    epoch: int | None
    rule: str
    test_acc_99_epoch: int | None
    lead_time: int | None
    excluded_loss_epoch: int | None
    excluded_rule: str
    reason: str | None = None


def _undefined(measures: pd.DataFrame) -> bool:
    """The progress table of a task without a group structure: its restricted measures are all NaN."""
    cols = [c for c in ("restricted_acc", "restricted_loss") if c in measures.columns]
    no_structure = "structure" in measures.attrs and measures.attrs["structure"] is None
    return bool(cols) and no_structure and all(measures[c].isna().all() for c in cols)


def circuit_formation_epoch(measures: pd.DataFrame, *, window: int = SMOOTH_WINDOW, p: int | None = None,
                            test_acc_99_epoch: int | None = None) -> CircuitFormation:
    """The epoch the generalizing circuit formed by the progress measures, next to test accuracy ≥ 99 %.

    Args:
        measures: :func:`~grokinterp.progress.progress_measures` output (needs ``restricted_acc``
            or ``restricted_loss``; ``excluded_loss`` is used when present).
        window: checkpoints in the running median.
        p: the modulus, for the excluded-loss rule (default: ``measures.attrs["p"]``).
        test_acc_99_epoch: the epoch test accuracy first reached 99 %, when known more finely than
            the table's checkpoints (e.g. from ``run.eval_metrics()``); default: from the table.

    Returns:
        :class:`CircuitFormation`.

    Raises:
        AnalysisError: as :func:`detect_phases`, or neither ``restricted_acc`` nor
            ``restricted_loss`` present.

    A task without a group structure (``measures.attrs["structure"] is None``, the restricted columns
    NaN) gets ``epoch = None`` with the reason "undefined", never a date.

    Notes:
        Every threshold is absolute, so the dates do not move when training goes on longer:

        * the circuit has formed at the first epoch where the smoothed **restricted accuracy**
          (the key-frequency components of the logits alone, over all pairs) reaches 99 % — the
          same bar as test accuracy, so ``lead_time`` compares like with like. Tables without
          ``restricted_acc`` use the smoothed restricted loss falling below
          :data:`RESTRICTED_LOSS_MAX` nats instead;
        * the excluded loss marks the circuit as *in use* at the first epoch, after it first fell
          below ``ln p`` (the training pairs fitted without the key frequencies), where the
          smoothed excluded loss is back above ``ln p``: without the key frequencies the model
          does worse than chance on its own training pairs.
    """
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise AnalysisError(f"window: must be a positive integer, got {window!r}")
    if isinstance(measures, pd.DataFrame) and _undefined(measures):
        df = _check_measures(measures)
        hit = np.flatnonzero(df["test_acc"].to_numpy() >= ACC_THRESHOLD)
        t99 = int(test_acc_99_epoch) if test_acc_99_epoch is not None else \
            (int(df["epoch"].to_numpy()[hit[0]]) if len(hit) else None)
        why = ("undefined: the task declares no group structure, so it has no key terms, no restricted / "
               "excluded loss and no circuit-formation date")
        return CircuitFormation(None, "restricted accuracy reaching 99 % (undefined for this task)", t99, None, None,
                                "excluded loss back above ln p (undefined for this task)", why)
    has_acc = isinstance(measures, pd.DataFrame) and "restricted_acc" in measures.columns
    df = _check_measures(measures, extra=("restricted_acc",) if has_acc else ("restricted_loss",))
    ep = df["epoch"].to_numpy(dtype=np.int64)
    if test_acc_99_epoch is not None:
        t99 = int(test_acc_99_epoch)
    else:
        hit = np.flatnonzero(df["test_acc"].to_numpy() >= ACC_THRESHOLD)
        t99 = int(ep[hit[0]]) if len(hit) else None

    epoch, reason = None, None
    if has_acc:
        rule = (f"first epoch where the smoothed restricted accuracy (key-frequency components of the logits "
                f"alone, all pairs) reaches {ACC_THRESHOLD:.0%}; {window}-checkpoint running median")
        r = _smooth(df["restricted_acc"].to_numpy(dtype=np.float64), window)
        i = _first(r >= ACC_THRESHOLD)
        if i is None:
            reason = (f"the restricted accuracy never reached {ACC_THRESHOLD:.0%} (best {np.nanmax(r):.1%}): "
                      f"the key frequencies alone do not solve the task")
    else:
        rule = (f"first epoch where the smoothed restricted loss falls below {RESTRICTED_LOSS_MAX} nats; "
                f"{window}-checkpoint running median")
        r = _smooth(df["restricted_loss"].to_numpy(dtype=np.float64), window)
        i = _first(r <= RESTRICTED_LOSS_MAX)
        if i is None:
            reason = (f"the smoothed restricted loss never fell below {RESTRICTED_LOSS_MAX} nats "
                      f"(lowest {np.nanmin(r):.3g})")
    if i is not None:
        epoch = int(ep[i])

    p = p if p is not None else measures.attrs.get("p")
    ex_epoch = None
    if p is None:
        ex_rule = "needs p (pass p= or use progress_measures output, which records it)"
    else:
        chance = math.log(p)
        ex_rule = (f"first epoch, after the smoothed excluded loss first fell below ln p = {chance:.2f} nats, at "
                   f"which it is back above ln p (worse than chance without the key frequencies)")
        if "excluded_loss" in df.columns and df["excluded_loss"].notna().any():
            x = _smooth(df["excluded_loss"].to_numpy(dtype=np.float64), window)
            j0 = _first(x < chance)
            if j0 is not None:
                j = _first(x >= chance, j0)
                ex_epoch = int(ep[j]) if j is not None else None
    lead = None if (epoch is None or t99 is None) else t99 - epoch
    return CircuitFormation(epoch, rule, t99, lead, ex_epoch, ex_rule, reason)
