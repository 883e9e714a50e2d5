"""The three phases of grokking, dated from the progress-measure curves by written-down rules.

Nanda et al. (2023, §5.2) split training into **memorization** (the model fits the training set;
test loss is high), **circuit formation** (the Fourier circuit grows while the memorizing one is
still in use: restricted loss falls, excluded loss rises, test loss stays high) and **cleanup**
(weight decay removes the memorization components: test loss and the weight norm fall sharply).
For p = 113 with 30 % of the data they give 0–1.4k, 1.4k–9.4k and 9.4k–14k epochs. The paper
describes the phases in words; it gives no numeric rule. :func:`detect_phases` dates each
boundary twice, and labels every date with the definition that produced it:

============================== ====================================================================
``memorization_end_acc99``     ours: smoothed train accuracy ≥ 99 %
``circuit_formation_end_restricted99``  ours: the key-frequency components of the logits alone
                               classify 99 % of the pairs (all pairs; for mul / div the block a, b ≠ 0)
                               (smoothed restricted accuracy ≥ 99 %) —
                               the same date as :func:`circuit_formation_epoch` ("circuit formed")
``cleanup_end_test_loss_flat`` ours: the test loss has finished its drop (its fall rate is below
                               20 % of its fastest)
``memorization_end_paper``     paper: "excluded loss ... stops falling and turns up" — the lowest
                               point of the excluded loss before it rises back above chance (ln p)
``circuit_formation_end_paper`` paper: cleanup begins where "test loss suddenly drops" — the test
                               loss falls below chance (ln p)
``cleanup_end_paper``          paper: cleanup is where "sum of squared weights sharply drops" — it
                               ends when that fall has slowed to 20 % of its fastest rate
============================== ====================================================================

Guarantees, by construction:

* **Ordered.** Each family's boundaries are searched one after the other (memorization end ≤
  circuit-formation end ≤ cleanup end), and "circuit formation ends" (ours) *is* "circuit
  formed", so the one cannot precede the other. The two families are not ordered with respect to
  each other: they date different events, and their names say which.
* **An answer or a reason.** A boundary that cannot be dated is ``None`` with a ``reason``.
* **Stable as training goes on.** Every threshold is absolute (99 %, ``ln p``) or relative to the
  curve's *past* (its fastest fall so far), and a rule is tested only at *settled* checkpoints:
  those whose running-median window and rate window lie inside the table. Training longer, or
  dropping checkpoints after a date, never moves it; a table cut before a date gives ``None``.

Example:
    >>> measures = progress_measures(run)                        # doctest: +SKIP
    >>> phases = detect_phases(measures)                         # doctest: +SKIP
    >>> phases.dates()                                           # doctest: +SKIP
    {'memorization_end_acc99': 100, 'circuit_formation_end_restricted99': 900, ...}
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
    "PHASES",
    "PhaseBoundary",
    "Phases",
    "detect_phases",
    "CircuitFormation",
    "circuit_formation_epoch",
]

#: Accuracy that counts as "fitted" (train), "generalized" (test) or "formed" (restricted).
ACC_THRESHOLD = 0.99
#: Checkpoints in the centred running median applied to every curve.
SMOOTH_WINDOW = 5
#: A fall has ended once its rate drops below this fraction of its fastest rate so far.
RATE_END = 0.20
#: Fall rates are least-squares slopes over ± this fraction of the epoch at which the phase the
#: rate belongs to began (a time scale that does not change when training goes on).
RATE_HALF_WINDOW = 0.10
#: Without a ``restricted_acc`` column, the circuit has formed when the smoothed restricted loss
#: falls below this many nats.
RESTRICTED_LOSS_MAX = 0.1

#: The phases, in order.
PHASES = ("memorization", "circuit_formation", "cleanup")
_DEFINITIONS = ("ours", "paper")
_REQUIRED = ("epoch", "train_loss", "test_loss", "train_acc", "test_acc")
_TINY = 1e-300
_PCT = f"{ACC_THRESHOLD:.0%}"

# Short labels of each tag, for tables and figure legends.
_TAG_LABELS = {
    "acc99": f"train accuracy ≥ {_PCT}",
    "restricted99": f"key frequencies alone ≥ {_PCT} (circuit formed)",
    "restricted_loss": f"restricted loss < {RESTRICTED_LOSS_MAX} nats (circuit formed)",
    "test_loss_flat": "test loss has finished its drop",
    "paper": "paper",
}
_PAPER_LABELS = {
    "memorization": "excluded loss turns up",
    "circuit_formation": "test loss drops below chance",
    "cleanup": "weight norm's sharp fall ends",
}


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
        if c in need or c in ("restricted_loss", "restricted_acc", "excluded_loss", "sum_sq_weights"):
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


def _check_window(window) -> int:
    if not isinstance(window, (int, np.integer)) or isinstance(window, bool) or window < 1:
        raise AnalysisError(f"window: must be a positive integer, got {window!r}")
    return int(window)


def _check_p(p, measures) -> int | None:
    p = p if p is not None else getattr(measures, "attrs", {}).get("p")
    if p is None:
        return None
    if not isinstance(p, (int, np.integer)) or isinstance(p, bool) or p < 2:
        raise AnalysisError(f"p: must be an integer ≥ 2 (the number of output classes), got {p!r}")
    return int(p)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Centred running median over ``window`` points (shrinking at the ends)."""
    return pd.Series(y).rolling(window, center=True, min_periods=1).median().to_numpy()


def _fall_rate(y: np.ndarray, ep: np.ndarray, half: float) -> np.ndarray:
    """``−dy/d epoch`` at each checkpoint: least-squares slope over the checkpoints within ``±half``
    epochs (at least the two neighbours)."""
    n = len(y)
    if n < 2:
        return np.zeros(n)
    t = ep.astype(np.float64)
    idx = np.arange(n)
    lo = np.minimum(np.searchsorted(t, t - half, side="left"), np.maximum(idx - 1, 0))
    hi = np.maximum(np.searchsorted(t, t + half, side="right"), np.minimum(idx + 2, n))
    c = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
    S1, St, Sy, Stt, Sty = c(np.ones(n)), c(t), c(y), c(t * t), c(t * y)
    k = S1[hi] - S1[lo]
    st, sy, stt, sty = St[hi] - St[lo], Sy[hi] - Sy[lo], Stt[hi] - Stt[lo], Sty[hi] - Sty[lo]
    den = k * stt - st * st
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (k * sty - st * sy) / den
    return -np.where(den > 0, slope, 0.0)


class _Curves:
    """The smoothed curves of one table, and which checkpoints are settled."""

    def __init__(self, df: pd.DataFrame, window: int):
        self.df, self.window = df, window
        self.ep = df["epoch"].to_numpy(dtype=np.int64)
        self.n = len(df)
        # The running median at checkpoint i reads up to window // 2 checkpoints ahead: only
        # checkpoints up to `last` have their whole window inside the table.
        self.last = self.n - 1 - window // 2
        self._cache: dict[tuple[str, bool], np.ndarray] = {}

    def has(self, col: str) -> bool:
        return col in self.df.columns and self.df[col].notna().sum() >= 2

    def absent(self, col: str, use: str) -> str:
        """Why ``col`` cannot be used (see :meth:`has`): the column is missing, or too few checkpoints hold it."""
        if col not in self.df.columns:
            return f"needs a {col} column: {use}"
        if col.startswith(("restricted_", "excluded_")) and _undefined(self.df):
            return (f"undefined for this task: it declares no group structure, so there are no key terms to "
                    f"restrict to or exclude ({col} is NaN at every checkpoint)")
        k = int(self.df[col].notna().sum())
        return f"only {k} checkpoint(s) hold a {col} value: a curve needs at least 2"

    def too_short(self) -> str | None:
        """Why no rule can be tested on this table (too few checkpoints for the running median), or ``None``."""
        if self.last >= 0:
            return None
        need = self.window // 2 + 1
        what = (f"a single checkpoint (epoch {int(self.ep[0])}; an imported final model has only that one)"
                if self.n == 1 else f"only {self.n} checkpoints (epochs {int(self.ep[0])}..{int(self.ep[-1])})")
        return (f"{what}: a date needs at least {need} checkpoints (the running median over {self.window} looks "
                f"{self.window // 2} ahead)")

    def get(self, col: str, log: bool = False) -> np.ndarray:
        key = (col, log)
        if key not in self._cache:
            y = pd.Series(self.df[col].to_numpy(dtype=np.float64)).interpolate(limit_direction="both").to_numpy()
            self._cache[key] = _smooth(np.log10(np.maximum(y, _TINY)) if log else y, self.window)
        return self._cache[key]

    def first(self, mask: np.ndarray, start: int = 0) -> int | None:
        """First settled index ≥ ``start`` where ``mask`` holds."""
        if start > self.last:
            return None
        idx = np.flatnonzero(mask[start: self.last + 1])
        return int(idx[0]) + start if len(idx) else None

    def late(self, mask: np.ndarray, start: int = 0) -> str:
        """A note when ``mask`` holds only in the unsettled last checkpoints."""
        tail = mask[max(start, self.last + 1):]
        if tail.any():
            return (f"; it holds only in the last {self.n - 1 - self.last} checkpoint(s), which serve as look-ahead "
                    f"for the running median: train longer to date it")
        return ""

    def epoch(self, i: int | None) -> int | None:
        return None if i is None else int(self.ep[i])

    def rate_end(self, col: str, start: int, peak_from: int, scale_epoch: int, what: str
                 ) -> tuple[int | None, str | None, float]:
        """First settled checkpoint ≥ ``start`` where the smoothed log10 ``col`` falls at less than
        ``RATE_END`` of its fastest fall since ``peak_from`` (``None`` and a reason if none)."""
        half = RATE_HALF_WINDOW * max(scale_epoch - int(self.ep[0]), 0)
        rate = _fall_rate(self.get(col, log=True), self.ep, half)
        # a rate is settled when its window (at least the next checkpoint) lies in the settled part
        ok = (self.ep + half <= self.ep[self.last]) & (np.arange(self.n) + 1 <= self.last) if self.last >= 0 else \
            np.zeros(self.n, bool)
        last_ok = int(np.flatnonzero(ok)[-1]) if ok.any() else -1
        if start > last_ok:
            return None, (f"the run ends too soon after epoch {int(self.ep[min(start, self.n - 1)])} to measure the "
                          f"fall rate of the {what} (rates need ± {half:g} epochs and {self.window // 2} checkpoint(s) "
                          f"of look-ahead): train longer to date it"), half
        seg = rate[peak_from: last_ok + 1]
        running = np.maximum.accumulate(seg)
        hit = (seg < RATE_END * running) & (running > 0)
        hit[: start - peak_from] = False
        idx = np.flatnonzero(hit)
        if len(idx):
            return peak_from + int(idx[0]), None, half
        fastest = float(running[-1]) if len(running) else 0.0
        if fastest <= 0:
            return None, f"the {what} never fell after epoch {int(self.ep[peak_from])}", half
        return None, (f"the {what} was still falling at ≥ {RATE_END:.0%} of its fastest rate at the last checkpoint "
                      f"where the rate can be measured (epoch {int(self.ep[last_ok])}): the run stopped during "
                      f"cleanup"), half


# -- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PhaseBoundary:
    """The epoch that ends one phase by one definition, and how it was found.

    Attributes:
        phase: ``memorization``, ``circuit_formation`` or ``cleanup`` (the phase it ends).
        end: the first (settled) checkpoint epoch at which the rule held, or ``None``.
        rule: the rule, in words, with the thresholds used.
        reason: why ``end`` is ``None`` (``None`` when it was found).
        definition: ``ours`` or ``paper`` (the paper's §5.2 description, operationalised).
        tag: what the rule tests (``acc99``, ``restricted99``, ``test_loss_flat``, ``paper``...).
    """

    phase: str
    end: int | None
    rule: str
    reason: str | None = None
    definition: str = "ours"
    tag: str = ""

    @property
    def name(self) -> str:
        """``<phase>_end_<tag>``, e.g. ``memorization_end_paper``: the label used everywhere."""
        return f"{self.phase}_end_{self.tag}" if self.tag else f"{self.phase}_end"

    @property
    def label(self) -> str:
        """A short human-readable label, e.g. ``memorization ends (paper: excluded loss turns up)``."""
        what = _PAPER_LABELS.get(self.phase, "") if self.definition == "paper" else _TAG_LABELS.get(self.tag, "")
        head = f"{self.phase.replace('_', ' ')} ends"
        if self.definition == "paper":
            return f"{head} (paper: {what})"
        return f"{head} ({what})" if what else head


def _end_of(field: str) -> property:
    """A read-only property: the epoch of the boundary stored in ``field`` (``None`` if not found)."""
    return property(lambda self: getattr(self, field).end, doc=f"``{field}.end``: an epoch or None.")


@dataclass(frozen=True)
class Phases:
    """The phases of a run by both definitions (see the module docstring for the rules).

    Attributes:
        memorization, circuit_formation, cleanup: the boundaries ending each phase, our rules.
        memorization_paper, circuit_formation_paper, cleanup_paper: the same by the paper's
            descriptions.
        first_epoch, last_epoch: the span of the checkpoints examined.
        settled_epoch: the last epoch at which a rule was tested (later checkpoints serve only as
            look-ahead for the smoothing); ``None`` if the table is too short.
        test_acc_99_epoch: first settled epoch the smoothed test accuracy reached 99 % (``None``: never).
        smoothing: how the curves were smoothed and rates measured.
    """

    memorization: PhaseBoundary
    circuit_formation: PhaseBoundary
    cleanup: PhaseBoundary
    memorization_paper: PhaseBoundary
    circuit_formation_paper: PhaseBoundary
    cleanup_paper: PhaseBoundary
    first_epoch: int
    last_epoch: int
    settled_epoch: int | None
    test_acc_99_epoch: int | None
    smoothing: str

    memorization_end = _end_of("memorization")
    circuit_formation_end = _end_of("circuit_formation")
    cleanup_end = _end_of("cleanup")
    memorization_end_paper = _end_of("memorization_paper")
    circuit_formation_end_paper = _end_of("circuit_formation_paper")
    cleanup_end_paper = _end_of("cleanup_paper")

    @property
    def grokked(self) -> bool:
        """The run generalized: smoothed test accuracy reached 99 % after memorization ended."""
        m = self.memorization.end
        return m is not None and self.test_acc_99_epoch is not None and self.test_acc_99_epoch >= m

    def boundaries(self, definition: str | None = None) -> tuple[PhaseBoundary, ...]:
        """The boundaries of one definition (``ours`` or ``paper``) in phase order, or all six."""
        ours = (self.memorization, self.circuit_formation, self.cleanup)
        paper = (self.memorization_paper, self.circuit_formation_paper, self.cleanup_paper)
        if definition is None:
            return ours + paper
        if definition not in _DEFINITIONS:
            raise AnalysisError(f"definition: must be one of {list(_DEFINITIONS)} or None, got {definition!r}")
        return ours if definition == "ours" else paper

    def dates(self) -> dict[str, int | None]:
        """``{name: epoch}`` for all six boundaries (e.g. ``memorization_end_paper``)."""
        return {b.name: b.end for b in self.boundaries()}

    def intervals(self, definition: str = "ours") -> list[tuple[str, int, int]]:
        """``(phase, start, end)`` of each phase whose end was found, for shading plots."""
        out, start = [], self.first_epoch
        for b in self.boundaries(definition):
            if b.end is None:
                break
            out.append((b.phase, start, b.end))
            start = b.end
        return out

    def to_frame(self) -> pd.DataFrame:
        """One row per boundary: ``name, definition, phase, start, end, rule, reason`` (``start`` and
        ``end`` nullable Int64; ``start`` is the previous boundary of the same definition)."""
        rows = []
        for definition in _DEFINITIONS:
            start = self.first_epoch
            for b in self.boundaries(definition):
                rows.append({"name": b.name, "definition": definition, "phase": b.phase, "start": start,
                             "end": b.end, "rule": b.rule, "reason": b.reason})
                start = b.end
        return pd.DataFrame(rows).astype({"start": "Int64", "end": "Int64"})


# -- the rules --------------------------------------------------------------------------------------
def _circuit_rule(cv: _Curves) -> tuple[str, str, np.ndarray | None]:
    """(tag, rule text, mask) of "the circuit has formed" for this table (restricted accuracy, else loss)."""
    if cv.has("restricted_acc"):
        return ("restricted99",
                f"first epoch, at or after the memorization end, at which the smoothed restricted accuracy ≥ {_PCT}: "
                f"the key-frequency components of the logits alone classify {_PCT} of the pairs (all pairs; a, b ≠ 0 for mul / div; the circuit has "
                f"formed; the same date as 'circuit formed')",
                cv.get("restricted_acc") >= ACC_THRESHOLD)
    if cv.has("restricted_loss"):
        return ("restricted_loss",
                f"first epoch, at or after the memorization end, at which the smoothed restricted loss < "
                f"{RESTRICTED_LOSS_MAX} nats (the circuit has formed; the same date as 'circuit formed')",
                cv.get("restricted_loss") <= RESTRICTED_LOSS_MAX)
    return ("restricted99", f"first epoch, at or after the memorization end, at which the smoothed restricted "
                            f"accuracy ≥ {_PCT} (the circuit has formed)", None)


def _ours(cv: _Curves, i_t99: int | None) -> tuple[PhaseBoundary, PhaseBoundary, PhaseBoundary, int | None]:
    rule_m = f"first epoch at which the smoothed train accuracy ≥ {_PCT} (the training set is fitted)"
    tag_c, rule_c, mask_c = _circuit_rule(cv)
    rule_e = (f"first epoch, once the circuit has formed and the smoothed test accuracy ≥ {_PCT}, at which the "
              f"smoothed log10 test loss falls at < {RATE_END:.0%} of its fastest fall since memorization ended: the "
              f"test loss has finished its drop (rates: least-squares slopes over ± {RATE_HALF_WINDOW:.0%} of the "
              f"circuit-formation end epoch)")

    def none(tag, rule, why, phase):
        return PhaseBoundary(phase, None, rule, why, "ours", tag)

    short = cv.too_short()
    if short is not None:
        return (none("acc99", rule_m, short, "memorization"), none(tag_c, rule_c, short, "circuit_formation"),
                none("test_loss_flat", rule_e, short, "cleanup"), None)
    tr = cv.get("train_acc")
    i_m = cv.first(tr >= ACC_THRESHOLD)
    if i_m is None:
        why = f"the smoothed train accuracy never reached {_PCT} (best {np.nanmax(tr):.1%})" + cv.late(
            tr >= ACC_THRESHOLD)
        after = "memorization did not end: " + why
        return (none("acc99", rule_m, why, "memorization"), none(tag_c, rule_c, after, "circuit_formation"),
                none("test_loss_flat", rule_e, after, "cleanup"), None)
    mem = PhaseBoundary("memorization", cv.epoch(i_m), rule_m, None, "ours", "acc99")

    if mask_c is None:
        why = ("needs a restricted_acc (or restricted_loss) column: use progress_measures(run) output"
               if "restricted_acc" not in cv.df.columns and "restricted_loss" not in cv.df.columns else
               cv.absent("restricted_acc" if "restricted_acc" in cv.df.columns else "restricted_loss", ""))
        return mem, none(tag_c, rule_c, why, "circuit_formation"), none(
            "test_loss_flat", rule_e, "the circuit-formation end is unknown: " + why, "cleanup"), None
    i_c = cv.first(mask_c, i_m)
    if i_c is None:
        if tag_c == "restricted99":
            r = cv.get("restricted_acc")
            why = (f"the key-frequency components alone never classified {_PCT} of the pairs after epoch "
                   f"{cv.epoch(i_m)} (best smoothed restricted accuracy {np.nanmax(r[i_m:]):.1%})")
        else:
            r = cv.get("restricted_loss")
            why = (f"the smoothed restricted loss never fell below {RESTRICTED_LOSS_MAX} nats after epoch "
                   f"{cv.epoch(i_m)} (lowest {np.nanmin(r[i_m:]):.3g})")
        why += cv.late(mask_c, i_m)
        return mem, none(tag_c, rule_c, why, "circuit_formation"), none(
            "test_loss_flat", rule_e, "the circuit did not form: " + why, "cleanup"), None
    circ = PhaseBoundary("circuit_formation", cv.epoch(i_c), rule_c, None, "ours", tag_c)

    if i_t99 is None:
        te = cv.get("test_acc")
        why = (f"the smoothed test accuracy never reached {_PCT} (best {np.nanmax(te):.1%} by epoch {int(cv.ep[-1])})"
               + cv.late(te >= ACC_THRESHOLD) + ": the run has not generalized")
        return mem, circ, none("test_loss_flat", rule_e, why, "cleanup"), i_c
    i_e, why, _ = cv.rate_end("test_loss", max(i_c, i_t99), i_m, cv.epoch(i_c), "test loss")
    clean = PhaseBoundary("cleanup", cv.epoch(i_e), rule_e, why, "ours", "test_loss_flat")
    return mem, circ, clean, i_c


def _paper(cv: _Curves, i_t99: int | None, p: int | None) -> tuple[PhaseBoundary, PhaseBoundary, PhaseBoundary]:
    chance = f"ln p = {math.log(p):.2f} nats" if p is not None else "ln p"
    rule_m = (f"paper §5.2, memorization ends where the excluded loss stops falling and turns up: the epoch of the "
              f"smoothed excluded loss's lowest value before it first rises back above {chance} (chance)")
    rule_c = (f"paper §5.2, cleanup begins where the test loss suddenly drops: the first epoch after the paper's "
              f"memorization end at which the smoothed test loss is below {chance} (better than chance)")
    rule_e = (f"paper §5.2, cleanup is where the sum of squared weights sharply drops: it ends at the first epoch, "
              f"with smoothed test accuracy ≥ {_PCT}, at which the smoothed log10 sum of squared weights falls at < "
              f"{RATE_END:.0%} of its fastest fall since cleanup began (rates: least-squares slopes over ± "
              f"{RATE_HALF_WINDOW:.0%} of the cleanup-start epoch)")

    def none(phase, rule, why):
        return PhaseBoundary(phase, None, rule, why, "paper", "paper")

    def none_after(why_m):
        after = "the paper's memorization end is unknown: " + why_m
        return (none("memorization", rule_m, why_m), none("circuit_formation", rule_c, after),
                none("cleanup", rule_e, after))

    short = cv.too_short()
    if short is not None:
        return (none("memorization", rule_m, short), none("circuit_formation", rule_c, short),
                none("cleanup", rule_e, short))
    if p is None:
        return none_after("needs p, the number of classes (pass p= or use progress_measures output, which records it)")
    if not cv.has("excluded_loss"):
        return none_after(cv.absent("excluded_loss", "use progress_measures(run) output"))
    ln_p = math.log(p)
    x = cv.get("excluded_loss")
    j0 = cv.first(x < ln_p)
    if j0 is None:
        return none_after(f"the smoothed excluded loss never fell below {chance} (lowest {np.nanmin(x):.3g}): the "
                          f"training pairs were never fitted without the key frequencies" + cv.late(x < ln_p))
    j1 = cv.first(x >= ln_p, j0)
    if j1 is None:
        return none_after(f"the smoothed excluded loss never rose back above {chance} after epoch {cv.epoch(j0)} "
                          f"(highest after: {np.nanmax(x[j0:]):.3g}): the key frequencies have not become necessary "
                          f"on the training pairs" + cv.late(x >= ln_p, j0))
    i_m = int(np.nanargmin(x[: j1 + 1]))
    mem = PhaseBoundary("memorization", cv.epoch(i_m), rule_m, None, "paper", "paper")

    te = cv.get("test_loss")
    i_c = cv.first(te < ln_p, i_m)
    if i_c is None:
        why = (f"the smoothed test loss never fell below {chance} after epoch {cv.epoch(i_m)} (lowest "
               f"{np.nanmin(te[i_m:]):.3g})" + cv.late(te < ln_p, i_m))
        return mem, none("circuit_formation", rule_c, why), none("cleanup", rule_e, "cleanup did not begin: " + why)
    circ = PhaseBoundary("circuit_formation", cv.epoch(i_c), rule_c, None, "paper", "paper")

    if i_t99 is None:
        return mem, circ, none("cleanup", rule_e, f"the smoothed test accuracy never reached {_PCT}: the run has not "
                                                  f"generalized")
    if not cv.has("sum_sq_weights"):
        return mem, circ, none("cleanup", rule_e, cv.absent("sum_sq_weights", "use progress_measures(run) output"))
    i_e, why, _ = cv.rate_end("sum_sq_weights", max(i_c, i_t99), i_c, cv.epoch(i_c), "sum of squared weights")
    return mem, circ, PhaseBoundary("cleanup", cv.epoch(i_e), rule_e, why, "paper", "paper")


def detect_phases(measures: pd.DataFrame, *, window: int = SMOOTH_WINDOW, p: int | None = None) -> Phases:
    """Date the ends of memorization, circuit formation and cleanup, by our rules and the paper's.

    Args:
        measures: one row per checkpoint with at least ``epoch, train_loss, test_loss, train_acc,
            test_acc`` (:func:`~grokinterp.analysis.measures.progress_measures` output, or
            ``run.evals`` for the rules that need only losses and accuracies). Our circuit
            rule reads ``restricted_acc`` (else ``restricted_loss``); the paper's rules read
            ``excluded_loss`` and ``sum_sq_weights``.
        window: checkpoints in the running median (1 = no smoothing).
        p: the number of output classes, for the chance level ``ln p`` of the paper's rules
            (default: ``measures.attrs["p"]``, which progress_measures records).

    Returns:
        :class:`Phases` with six labelled boundaries; each is an epoch or ``None`` with a reason.

    Raises:
        AnalysisError: not a DataFrame, empty, a required column missing or non-numeric, repeated
            epochs, negative losses, a bad ``window`` or ``p``.

    Notes:
        Every curve is smoothed by a centred running median over ``window`` checkpoints (losses
        and the weight norm on a log10 scale); a rule is tested only at checkpoints whose window
        lies inside the table. A fall rate at epoch ``t`` is the least-squares slope of the
        smoothed log10 curve over ``[t − h, t + h]``, with ``h`` 10 % of the epoch at which the
        phase began; "a fall has ended" means the rate is below 20 % of the fastest rate seen so
        far (from the start of the phase), so later epochs never move a date.

        Ours: memorization ends at the first epoch with train accuracy ≥ 99 %; circuit formation
        ends at the first epoch after that with restricted accuracy ≥ 99 % (the circuit has
        formed); cleanup ends, once test accuracy ≥ 99 %, when the test loss's fall has slowed
        below 20 % of its fastest rate.

        Paper (§5.2, operationalised): memorization ends at the lowest point of the excluded loss
        before it rises back above ``ln p``; cleanup begins when the test loss falls below
        ``ln p``; cleanup ends, once test accuracy ≥ 99 %, when the fall of the sum of squared
        weights has slowed below 20 % of its fastest rate since cleanup began.
    """
    window = _check_window(window)
    df = _check_measures(measures)
    p = _check_p(p, measures)
    cv = _Curves(df, window)
    smoothing = (f"centred running median over {window} checkpoints (losses and weight norm in log10); rules "
                 f"tested up to the last checkpoint with a complete window; fall rates: least-squares slopes over "
                 f"± {RATE_HALF_WINDOW:.0%} of the phase's start epoch")
    i_t99 = cv.first(cv.get("test_acc") >= ACC_THRESHOLD)
    m, c, e, _ = _ours(cv, i_t99)
    mp, cp, ep_ = _paper(cv, i_t99, p)
    return Phases(m, c, e, mp, cp, ep_, int(cv.ep[0]), int(cv.ep[-1]), cv.epoch(cv.last) if cv.last >= 0 else None,
                  cv.epoch(i_t99), smoothing)


# -- circuit formation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitFormation:
    """When the generalizing circuit formed, by the progress measures, and how far ahead of test accuracy.

    Attributes:
        epoch: first epoch, after memorization, at which the key-frequency circuit alone classifies
            99 % of the pairs (smoothed restricted accuracy) — by construction the same epoch as
            ``detect_phases(...).circuit_formation_end``; ``None`` if never (``reason``).
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
        measures: :func:`~grokinterp.analysis.measures.progress_measures` output (needs
            ``restricted_acc`` or ``restricted_loss``; ``excluded_loss`` is used when present).
        window: checkpoints in the running median.
        p: the modulus, for the excluded-loss rule (default: ``measures.attrs["p"]``).
        test_acc_99_epoch: the epoch test accuracy first reached 99 %, when known more finely than
            the table's checkpoints (e.g. from ``run.evals``); default: from the table.

    Returns:
        :class:`CircuitFormation`.

    Raises:
        AnalysisError: as :func:`detect_phases`, or neither ``restricted_acc`` nor
            ``restricted_loss`` present.

    A task without a group structure (``measures.attrs["structure"] is None``, the restricted columns
    NaN) gets ``epoch = None`` with the reason "undefined", never a date.

    Notes:
        Every threshold is absolute, so the dates do not move when training goes on longer:

        * the circuit has formed at the first epoch, at or after memorization ended (train
          accuracy ≥ 99 %), where the smoothed **restricted accuracy** (the key-frequency
          components of the logits alone, over all pairs) reaches 99 % — the same bar as test
          accuracy, so ``lead_time`` compares like with like. Tables without ``restricted_acc``
          use the smoothed restricted loss falling below :data:`RESTRICTED_LOSS_MAX` nats. It is
          the end of circuit formation in :func:`detect_phases` (ours), computed by the same code;
        * the excluded loss marks the circuit as *in use* at the first epoch, after it first fell
          below ``ln p`` (the training pairs fitted without the key frequencies), where the
          smoothed excluded loss is back above ``ln p``: without the key frequencies the model
          does worse than chance on its own training pairs.
    """
    window = _check_window(window)
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
    p = _check_p(p, measures)
    cv = _Curves(df, window)
    if test_acc_99_epoch is not None:
        t99 = int(test_acc_99_epoch)
    else:
        hit = np.flatnonzero(df["test_acc"].to_numpy() >= ACC_THRESHOLD)
        t99 = int(cv.ep[hit[0]]) if len(hit) else None

    _, circ, _, _ = _ours(cv, None)
    epoch, rule, reason = circ.end, circ.rule, circ.reason

    ex_epoch = None
    if p is None:
        ex_rule = "needs p (pass p= or use progress_measures output, which records it)"
    else:
        chance = math.log(p)
        ex_rule = (f"first epoch, after the smoothed excluded loss first fell below ln p = {chance:.2f} nats, at "
                   f"which it is back above ln p (worse than chance without the key frequencies)")
        if cv.has("excluded_loss"):
            x = cv.get("excluded_loss")
            j0 = cv.first(x < chance)
            if j0 is not None:
                ex_epoch = cv.epoch(cv.first(x >= chance, j0))
    lead = None if (epoch is None or t99 is None) else t99 - epoch
    return CircuitFormation(epoch, rule, t99, lead, ex_epoch, ex_rule, reason)
