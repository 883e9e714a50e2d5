"""Phase dating: synthetic curves with known boundaries, brute-force oracles, and recorded runs.

The recorded runs (``tests/fixtures/phases/*.csv``, ``progress_measures`` of the ``quick`` recipe
with init/split seeds 11/23 — trained for 8000 epochs — and 29/31) are the two runs on which the
first rules failed: the end of cleanup never found, and "circuit formation ends" before "circuit
formed".
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from grokinterp.analysis.phases import (
    ACC_THRESHOLD,
    RATE_END,
    RATE_HALF_WINDOW,
    SMOOTH_WINDOW,
    CircuitFormation,
    Phases,
    circuit_formation_epoch,
    detect_phases,
)
from grokinterp.errors import AnalysisError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "phases"
NAMES = ["memorization_end_acc99", "circuit_formation_end_restricted99", "cleanup_end_test_loss_flat",
         "memorization_end_paper", "circuit_formation_end_paper", "cleanup_end_paper"]

# Designed boundaries of the synthetic curves (the paper's p = 113 numbers).
MEM, CIRC, CLEAN = 1400, 9400, 14000


def _log_interp(ep, knots):
    xs, ys = zip(*knots)
    return 10 ** np.interp(ep, xs, ys)


def paper_like(*, step=50, end=20000, noise=0.0, spikes=False, grok=True, seed=0) -> pd.DataFrame:
    """Curves shaped like Nanda et al. Fig. 7: memorization to 1.4k (train and excluded loss fall
    together), a flat test loss until 9.4k, then a cliff to 14k; the excluded loss rises from 1.4k;
    restricted accuracy reaches 99 % at ≈ 6.15k; the weight norm falls slowly, then sharply in
    9.4k–14k, then hardly at all. Log-normal noise of ``noise`` decades and optional 100× spikes."""
    rng = np.random.default_rng(seed)
    ep = np.arange(0, end + 1, step)
    train = _log_interp(ep, [(0, 0.67), (MEM, -2.5), (CIRC, -3.0), (CLEAN, -6.8), (end, -7.0)])
    if grok:
        test = _log_interp(ep, [(0, 0.67), (MEM, 1.3), (CIRC, 1.2), (CLEAN, -6.5), (end, -6.7)])
        restricted = _log_interp(ep, [(0, 0.7), (3000, 0.8), (8000, -4.0), (CLEAN, -6.4), (end, -6.6)])
        restricted_acc = 1 / (1 + np.exp(-(ep - 5000) / 250))
        excluded = _log_interp(ep, [(0, 0.67), (MEM, -2.5), (CIRC, 1.0), (CLEAN, 1.5), (end, 1.6)])
        weights = _log_interp(ep, [(0, 3.0), (MEM, 3.05), (CIRC, 2.8), (CLEAN, 2.3), (end, 2.28)])
        test_acc = 1 / (1 + np.exp(-(ep - 11500) / 250))
    else:
        test = _log_interp(ep, [(0, 0.67), (MEM, 1.3), (end, 1.25)])
        restricted = _log_interp(ep, [(0, 0.7), (end, 0.75)])
        restricted_acc = np.full(len(ep), 0.02)
        excluded = train.copy()
        weights = _log_interp(ep, [(0, 3.0), (MEM, 3.05), (end, 2.9)])
        test_acc = np.full(len(ep), 0.05)

    def jitter(y, scale=1.0):
        return y * 10 ** (scale * noise * rng.standard_normal(len(y)))

    train, test, restricted, excluded = (jitter(y) for y in (train, test, restricted, excluded))
    weights = jitter(weights, 0.1)
    if spikes:
        for i in rng.choice(len(ep), 6, replace=False):
            train[i] *= 100
            test[i] *= 100
    train_acc = 1 / (1 + np.exp(-(ep - 1000) / 80))
    df = pd.DataFrame({"epoch": ep, "train_loss": train, "test_loss": test, "train_acc": train_acc,
                       "test_acc": test_acc, "restricted_loss": restricted, "restricted_acc": restricted_acc,
                       "excluded_loss": excluded, "sum_sq_weights": weights})
    df.attrs["p"] = 113
    return df


def recorded(name: str) -> pd.DataFrame:
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    df = pd.read_csv(FIXTURES / f"{name}.csv")
    df.attrs.update(p=meta["p"], key_freqs=meta["key_freqs"])
    return df


RECORDED = ["quick_s11_23_8k", "quick_s29_31"]


def _ordered(ph: Phases) -> None:
    for definition in ("ours", "paper"):
        ends = [b.end for b in ph.boundaries(definition)]
        found = [e for e in ends if e is not None]
        assert found == sorted(found), (definition, ends)
        # a boundary is only found when the one before it was
        assert ends[: len(found)] == found, (definition, ends)


def _answer_or_reason(ph: Phases) -> None:
    for b in ph.boundaries():
        assert (b.end is None) == (b.reason is not None), b
        assert b.rule and b.name in NAMES and b.definition in ("ours", "paper")


# -- synthetic curves -------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    {},
    {"noise": 0.1},
    {"noise": 0.2, "spikes": True, "seed": 3},
    {"step": 10, "noise": 0.2},
    {"step": 200},
    {"end": 40000, "noise": 0.1},
], ids=["clean", "noisy", "spiky", "dense", "coarse", "long"])
def test_known_boundaries_are_found(kw):
    ph = detect_phases(paper_like(**kw))
    assert isinstance(ph, Phases) and ph.grokked
    assert list(ph.dates()) == NAMES and all(v is not None for v in ph.dates().values()), ph.dates()
    # ours: train accuracy (logistic at 1000, width 80) reaches 99 % at 1368; restricted accuracy
    # (logistic at 5000, width 250) at 6149; the test-loss cliff ends at 14k
    assert abs(ph.memorization_end - 1368) <= 60
    assert abs(ph.circuit_formation_end - 6150) <= 150
    assert abs(ph.cleanup_end - CLEAN) <= 500
    # paper: excluded loss lowest at 1.4k; test loss (log10 1.2 → −6.5 over 9.4k–14k) crosses ln 113
    # at ≈ 9.71k; the weight norm's sharp fall ends at 14k
    assert abs(ph.memorization_end_paper - MEM) <= 250
    assert abs(ph.circuit_formation_end_paper - 9714) <= 150
    assert abs(ph.cleanup_end_paper - CLEAN) <= 700
    assert ph.circuit_formation_end < ph.test_acc_99_epoch < ph.cleanup_end
    _ordered(ph)
    _answer_or_reason(ph)
    assert [i[0] for i in ph.intervals()] == ["memorization", "circuit_formation", "cleanup"]
    assert [i[2] for i in ph.intervals("paper")] == [b.end for b in ph.boundaries("paper")]
    frame = ph.to_frame()
    assert frame["name"].tolist() == NAMES
    assert frame["end"].tolist() == list(ph.dates().values())
    # each start is the previous end of the same definition
    assert frame["start"].tolist() == [0, ph.memorization_end, ph.circuit_formation_end,
                                       0, ph.memorization_end_paper, ph.circuit_formation_end_paper]


def test_rules_scale_with_epoch_units():
    df = paper_like(noise=0.1)
    base = detect_phases(df)
    stretched = df.assign(epoch=df["epoch"] * 3)
    stretched.attrs["p"] = 113
    assert detect_phases(stretched).dates() == {k: 3 * v for k, v in base.dates().items()}


def test_names_and_labels():
    ph = detect_phases(paper_like())
    assert [b.name for b in ph.boundaries("ours")] == NAMES[:3]
    assert [b.name for b in ph.boundaries("paper")] == NAMES[3:]
    assert ph.memorization_paper.label == "memorization ends (paper: excluded loss turns up)"
    assert "circuit formed" in ph.circuit_formation.label
    assert "paper §5.2" in ph.cleanup_paper.rule and "sum of squared weights" in ph.cleanup_paper.rule
    with pytest.raises(AnalysisError, match="definition"):
        ph.boundaries("theirs")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ph.memorization.end = 0


def test_missing_columns_give_reasons_not_errors():
    df = paper_like()
    # the columns of run.eval_metrics(): only losses and accuracies
    ph = detect_phases(df[["epoch", "train_loss", "test_loss", "train_acc", "test_acc"]])
    assert ph.memorization_end is not None
    assert "restricted_acc" in ph.circuit_formation.reason and "circuit-formation end is unknown" in ph.cleanup.reason
    assert "excluded_loss" in ph.memorization_paper.reason
    assert "memorization end is unknown" in ph.cleanup_paper.reason
    _answer_or_reason(ph)
    ph = detect_phases(df.drop(columns=["excluded_loss"]))
    assert "excluded_loss" in ph.memorization_paper.reason and ph.cleanup_end is not None
    no_p = df.copy()
    no_p.attrs.clear()
    assert "needs p" in detect_phases(no_p).memorization_paper.reason
    assert detect_phases(no_p, p=113).dates() == detect_phases(df).dates()
    ph = detect_phases(df.drop(columns=["sum_sq_weights"]))
    assert ph.circuit_formation_end_paper is not None and "sum_sq_weights" in ph.cleanup_paper.reason
    # without restricted accuracy, the restricted loss dates the circuit: log10 0.8 at 3k → −4 at 8k
    # falls below 0.1 nats (log10 −1) at ≈ 4.9k
    ph = detect_phases(df.drop(columns=["restricted_acc"]))
    assert ph.circuit_formation.name == "circuit_formation_end_restricted_loss"
    assert abs(ph.circuit_formation_end - 4875) <= 150


def test_never_grokking_gives_none_with_a_reason():
    ph = detect_phases(paper_like(grok=False))
    assert abs(ph.memorization_end - 1368) <= 60 and not ph.grokked
    assert ph.circuit_formation_end is None and ph.cleanup_end is None
    assert "never classified 99%" in ph.circuit_formation.reason and "circuit did not form" in ph.cleanup.reason
    assert "never rose back above ln p" in ph.memorization_paper.reason
    assert [i[0] for i in ph.intervals()] == ["memorization"] and ph.intervals("paper") == []
    _answer_or_reason(ph)
    cf = circuit_formation_epoch(paper_like(grok=False))
    assert cf.epoch is None and cf.lead_time is None and cf.test_acc_99_epoch is None
    assert "never classified" in cf.reason


def test_never_memorizing_gives_none_everywhere_ours():
    df = paper_like(grok=False).assign(train_acc=0.4)
    ph = detect_phases(df)
    assert (ph.memorization_end, ph.circuit_formation_end, ph.cleanup_end) == (None, None, None)
    assert "train accuracy never reached 99%" in ph.memorization.reason
    assert ph.cleanup.reason.startswith("memorization did not end")
    assert ph.intervals() == []


def test_run_stopped_during_cleanup():
    ph = detect_phases(paper_like(end=13500))
    assert ph.circuit_formation_end is not None and ph.circuit_formation_end_paper is not None
    assert ph.cleanup_end is None and ph.cleanup_end_paper is None
    assert "stopped during cleanup" in ph.cleanup.reason
    assert "train longer" in ph.cleanup_paper.reason or "stopped during cleanup" in ph.cleanup_paper.reason


@pytest.mark.parametrize("seed", range(40))
def test_order_and_answers_hold_on_random_curves(seed):
    """Random walks in every column: whatever the curves, each family's dates are ordered, each
    boundary is a date or a reason, and the circuit-formation end is the circuit-formed date."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 120))
    ep = np.cumsum(rng.integers(1, 50, n))

    def walk(scale):
        return 10 ** np.cumsum(rng.normal(0, scale, n))

    acc = lambda: np.clip(np.cumsum(rng.normal(0.02, 0.1, n)), 0, 1)  # noqa: E731
    df = pd.DataFrame({"epoch": ep, "train_loss": walk(0.5), "test_loss": 5 * walk(0.5), "train_acc": acc(),
                       "test_acc": acc(), "restricted_acc": acc(), "restricted_loss": walk(0.5),
                       "excluded_loss": 3 * walk(0.5), "sum_sq_weights": 1e3 * walk(0.05)})
    window = int(rng.integers(1, 8))
    ph = detect_phases(df, window=window, p=int(rng.integers(2, 200)))
    _ordered(ph)
    _answer_or_reason(ph)
    assert circuit_formation_epoch(df, window=window, p=2).epoch == ph.circuit_formation_end


def test_truncation_never_moves_a_date_synthetic():
    df = paper_like(noise=0.1, end=30000)
    full = detect_phases(df).dates()
    for end in range(1000, 30001, 1000):
        cut = df[df["epoch"] <= end]
        cut.attrs["p"] = 113
        for name, date in detect_phases(cut).dates().items():
            assert date is None or date == full[name], (end, name, date, full[name])


def test_circuit_formation_leads_test_accuracy():
    df = paper_like(noise=0.1)
    cf = circuit_formation_epoch(df)
    assert isinstance(cf, CircuitFormation) and cf.reason is None
    assert abs(cf.epoch - 6150) <= 150 and cf.epoch == detect_phases(df).circuit_formation_end
    first_99 = int(df.loc[df["test_acc"] >= 0.99, "epoch"].iloc[0])
    assert cf.test_acc_99_epoch == first_99 and cf.lead_time == first_99 - cf.epoch > 4000
    # excluded loss: log10 −2.5 at 1.4k → 1.0 at 9.4k crosses ln 113 (log10 0.675) at ≈ 8.66k
    assert 8300 <= cf.excluded_loss_epoch <= 9300
    assert "restricted accuracy" in cf.rule and "ln p" in cf.excluded_rule
    # a finer test-accuracy epoch can be given (e.g. from the training metrics)
    assert circuit_formation_epoch(df, test_acc_99_epoch=first_99 + 7).lead_time == cf.lead_time + 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        cf.epoch = 0
    no_p = df.copy()
    no_p.attrs.clear()
    assert "needs p" in circuit_formation_epoch(no_p).excluded_rule


def test_bad_input_is_refused():
    df = paper_like(step=500)
    with pytest.raises(AnalysisError, match="DataFrame"):
        detect_phases(df.to_dict())
    with pytest.raises(AnalysisError, match="empty"):
        detect_phases(df.iloc[:0])
    with pytest.raises(AnalysisError, match=r"missing column\(s\) \['test_loss', 'test_acc'\]"):
        detect_phases(df.drop(columns=["test_loss", "test_acc"]))
    with pytest.raises(AnalysisError, match=r"missing column\(s\) \['restricted_loss'\]"):
        circuit_formation_epoch(df.drop(columns=["restricted_loss", "restricted_acc"]))
    with pytest.raises(AnalysisError, match="'train_acc' holds non-numeric"):
        detect_phases(df.assign(train_acc="high"))
    with pytest.raises(AnalysisError, match=r"epochs \[500\] appear more than once"):
        detect_phases(pd.concat([df, df.iloc[[1]]]))
    with pytest.raises(AnalysisError, match="negative"):
        detect_phases(df.assign(test_loss=-1.0))
    with pytest.raises(AnalysisError, match="all hold NaN"):
        detect_phases(df.assign(test_loss=np.nan))
    with pytest.raises(AnalysisError, match="window"):
        detect_phases(df, window=0)
    with pytest.raises(AnalysisError, match="p: must be an integer"):
        detect_phases(df, p=1.5)


def test_rows_without_evaluation_are_ignored():
    """``run.metrics`` has NaN test columns between evaluations; only evaluated rows count."""
    df = paper_like(step=50)
    sparse = df.copy()
    sparse.loc[sparse.index % 2 == 1, ["test_loss", "test_acc"]] = np.nan
    ref = df.iloc[::2].reset_index(drop=True)
    ref.attrs["p"] = 113
    assert detect_phases(sparse).dates() == detect_phases(ref).dates()


# -- oracles: the rules written out plainly ---------------------------------------------------------
def _median(y, w):
    assert w % 2 == 1
    h = w // 2
    return np.array([np.median(y[max(0, i - h): i + h + 1]) for i in range(len(y))])


def _oracle(df: pd.DataFrame, p: int, w: int = SMOOTH_WINDOW) -> dict[str, int | None]:
    """The six rules with loops, np.median and np.polyfit: an independent reading of the docstrings."""
    ep = df["epoch"].to_numpy()
    n, last = len(df), len(df) - 1 - w // 2
    sm = {c: _median(df[c].to_numpy(float), w) for c in ("train_acc", "test_acc", "restricted_acc",
                                                         "excluded_loss", "test_loss")}
    lg = {c: _median(np.log10(df[c].to_numpy(float)), w) for c in ("test_loss", "sum_sq_weights")}

    def first(cond, start=0):
        return next((i for i in range(start, last + 1) if cond(i)), None)

    def rate_end(y, start, peak_from, scale):
        h = RATE_HALF_WINDOW * (ep[scale] - ep[0])
        best = 0.0
        for i in range(peak_from, n):
            if not (ep[i] + h <= ep[last] and i + 1 <= last):
                return None
            idx = [j for j in range(n) if abs(ep[j] - ep[i]) <= h] or [i]
            idx = sorted(set(idx) | {max(i - 1, 0), min(i + 1, n - 1)})
            r = -np.polyfit(ep[idx].astype(float), y[idx], 1)[0]
            best = max(best, r)
            if i >= start and best > 0 and r < RATE_END * best:
                return i
        return None

    out = dict.fromkeys(NAMES)
    t99 = first(lambda i: sm["test_acc"][i] >= ACC_THRESHOLD)
    m = first(lambda i: sm["train_acc"][i] >= ACC_THRESHOLD)
    if m is not None:
        out[NAMES[0]] = ep[m]
        c = first(lambda i: sm["restricted_acc"][i] >= ACC_THRESHOLD, m)
        if c is not None:
            out[NAMES[1]] = ep[c]
            if t99 is not None:
                e = rate_end(lg["test_loss"], max(c, t99), m, c)
                out[NAMES[2]] = None if e is None else ep[e]
    x = sm["excluded_loss"]
    j0 = first(lambda i: x[i] < math.log(p))
    j1 = None if j0 is None else first(lambda i: x[i] >= math.log(p), j0)
    if j1 is not None:
        mp = int(np.argmin(x[: j1 + 1]))
        out[NAMES[3]] = ep[mp]
        cp = first(lambda i: sm["test_loss"][i] < math.log(p), mp)
        if cp is not None:
            out[NAMES[4]] = ep[cp]
            if t99 is not None:
                e = rate_end(lg["sum_sq_weights"], max(cp, t99), cp, cp)
                out[NAMES[5]] = None if e is None else ep[e]
    return {k: None if v is None else int(v) for k, v in out.items()}


@pytest.mark.parametrize("name", RECORDED)
def test_rules_equal_their_plain_oracle_on_recorded_runs(name):
    df = recorded(name)
    assert detect_phases(df).dates() == _oracle(df, df.attrs["p"])


@pytest.mark.parametrize("kw", [{}, {"noise": 0.2, "spikes": True, "seed": 3}, {"step": 200}])
def test_rules_equal_their_plain_oracle_on_synthetic_curves(kw):
    df = paper_like(**kw)
    assert detect_phases(df).dates() == _oracle(df, 113)


# -- recorded runs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RECORDED)
def test_recorded_runs_every_boundary_found_and_ordered(name):
    df = recorded(name)
    ph = detect_phases(df)
    assert all(b.end is not None and b.reason is None for b in ph.boundaries()), ph.to_frame()
    _ordered(ph)
    assert ph.grokked
    # what each date means, checked on the raw (unsmoothed) curves
    at = df.set_index("epoch")
    assert at.loc[ph.memorization_end, "train_acc"] >= ACC_THRESHOLD
    assert at.loc[ph.circuit_formation_end, "restricted_acc"] >= ACC_THRESHOLD
    assert at.loc[ph.cleanup_end, "test_acc"] >= ACC_THRESHOLD and at.loc[ph.cleanup_end_paper, "test_acc"] >= 0.99
    before = at.loc[: ph.memorization_end_paper, "excluded_loss"]
    assert at.loc[ph.memorization_end_paper, "excluded_loss"] <= 1.2 * before.min()
    assert at.loc[ph.circuit_formation_end_paper, "test_loss"] < math.log(df.attrs["p"])
    # 'circuit formation ends' is 'circuit formed', never before it (seeds 29/31 once had 775 vs 900)
    cf = circuit_formation_epoch(df)
    assert cf.epoch == ph.circuit_formation_end and cf.lead_time > 0
    assert ph.memorization_end <= cf.excluded_loss_epoch <= cf.test_acc_99_epoch


def test_end_of_cleanup_found_for_seeds_11_23():
    """The first rules never found it (test loss stays 1.08 decades above train loss for 8k epochs)."""
    df = recorded("quick_s11_23_8k")
    ph = detect_phases(df)
    at = df.set_index("epoch")
    gap = np.log10(at["test_loss"] / at["train_loss"])
    assert gap.loc[2000:].min() > 1.0  # the failing condition still holds in the recording
    assert ph.cleanup_end is not None and ph.cleanup_end_paper is not None
    # the test loss has finished its drop: it never falls a further 0.5 decade afterwards
    assert np.log10(at.loc[ph.cleanup_end, "test_loss"] / at.loc[ph.cleanup_end:, "test_loss"].min()) < 0.5


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_dates_are_stable_as_training_goes_on(name):
    """Cut the table at any epoch: a date is either the full run's or not yet found, and it is
    found once the cut leaves room for its look-ahead (smoothing window and rate window)."""
    df = recorded(name)
    full = detect_phases(df)
    ends = full.dates()
    step = int(np.median(np.diff(df["epoch"])))
    for cut_at in range(200, int(df["epoch"].max()) + 1, 4 * step):
        cut = df[df["epoch"] <= cut_at]
        cut.attrs.update(df.attrs)
        dates = detect_phases(cut).dates()
        for name_, date in dates.items():
            assert date is None or date == ends[name_], (cut_at, name_, date, ends[name_])
            look_ahead = 0.2 * ends[name_] + (SMOOTH_WINDOW + 2) * 100
            if cut_at >= ends[name_] + look_ahead:
                assert date == ends[name_], (cut_at, name_)


def test_longer_training_does_not_move_dates():
    """Seeds 11/23 trained for 8000 epochs: its first 3000 epochs are the 3000-epoch ``quick`` run
    (constant learning rate after warm-up), and the dates found there are the dates found at 8000."""
    df = recorded("quick_s11_23_8k")
    short = df[df["epoch"] <= 3000]
    short.attrs.update(df.attrs)
    assert detect_phases(short).dates() == detect_phases(df).dates()


def test_a_task_without_structure_is_told_undefined_not_short_of_checkpoints():
    """All-NaN restricted / excluded columns of a task that declares no group structure: the reason says the
    measure is undefined for the task, not that too few checkpoints hold a value."""
    import grokinterp as g

    ep = np.arange(0, 400, 10)
    df = pd.DataFrame({"epoch": ep, "train_acc": np.minimum(1, ep / 100), "test_acc": np.minimum(1, ep / 300),
                       "test_loss": 1 / (1 + ep), "train_loss": 1 / (1 + ep), "restricted_acc": np.nan,
                       "restricted_loss": np.nan, "excluded_loss": np.nan, "sum_sq_weights": 1.0})
    df.attrs.update(p=31, structure=None)
    reasons = [b.reason for b in g.detect_phases(df).boundaries() if b.end is None]
    about = [r for r in reasons if "restricted" in r or "excluded" in r]
    assert about and all("undefined for this task" in r and "checkpoint(s) hold" not in r for r in about), reasons
    df.attrs["structure"] = "cyclic"  # a structured task with no values: the old reason stands
    reasons = [b.reason for b in g.detect_phases(df).boundaries() if b.end is None]
    assert not any("undefined for this task" in r for r in reasons), reasons
