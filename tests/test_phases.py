"""Phase detection on synthetic progress-measure curves with known boundaries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from grokinterp.analysis.phases import CircuitFormation, Phases, circuit_formation_epoch, detect_phases
from grokinterp.errors import AnalysisError

# Designed boundaries of the synthetic curves (the paper's p = 113 numbers).
MEM, CIRC, CLEAN = 1400, 9400, 14000


def _log_interp(ep, knots):
    xs, ys = zip(*knots)
    return 10 ** np.interp(ep, xs, ys)


def paper_like(*, step=50, end=20000, noise=0.0, spikes=False, grok=True, seed=0) -> pd.DataFrame:
    """Curves shaped like Nanda et al. Fig. 7: memorization to 1.4k, a flat test loss until 9.4k,
    then a cliff to 14k; restricted loss falls 3k–8k; excluded loss rises; the weight norm falls
    slowly, then sharply in 9.4k–14k, then hardly at all. Log-normal noise of ``noise`` decades
    and optional 100× loss spikes."""
    rng = np.random.default_rng(seed)
    ep = np.arange(0, end + 1, step)
    train = _log_interp(ep, [(0, 0.67), (MEM, -2.5), (CIRC, -3.0), (CLEAN, -6.8), (end, -7.0)])
    if grok:
        test = _log_interp(ep, [(0, 0.67), (MEM, 1.3), (CIRC, 1.2), (CLEAN, -6.5), (end, -6.7)])
        restricted = _log_interp(ep, [(0, 0.7), (3000, 0.8), (8000, -4.0), (CLEAN, -6.4), (end, -6.6)])
        excluded = _log_interp(ep, [(0, 0.67), (MEM, -2.5), (3000, -2.5), (CIRC, 1.0), (CLEAN, 1.5), (end, 1.6)])
        weights = _log_interp(ep, [(0, 3.0), (MEM, 3.05), (CIRC, 2.8), (CLEAN, 2.3), (end, 2.28)])
        test_acc = 1 / (1 + np.exp(-(ep - 11500) / 250))
    else:
        test = _log_interp(ep, [(0, 0.67), (MEM, 1.3), (end, 1.25)])
        restricted = _log_interp(ep, [(0, 0.7), (end, 0.75)])
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
    return pd.DataFrame({"epoch": ep, "train_loss": train, "test_loss": test, "train_acc": train_acc,
                         "test_acc": test_acc, "restricted_loss": restricted, "excluded_loss": excluded,
                         "sum_sq_weights": weights})


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
    assert abs(ph.memorization_end - MEM) <= 100
    assert CIRC <= ph.circuit_formation_end <= CIRC + 800
    assert abs(ph.cleanup_end - CLEAN) <= 500
    assert ph.test_acc_99_epoch is not None and ph.circuit_formation_end < ph.test_acc_99_epoch < ph.cleanup_end
    assert [i[0] for i in ph.intervals()] == ["memorization", "circuit_formation", "cleanup"]
    assert all(b.reason is None and b.rule for b in (ph.memorization, ph.circuit_formation, ph.cleanup))
    frame = ph.to_frame()
    assert frame["end"].tolist() == [ph.memorization_end, ph.circuit_formation_end, ph.cleanup_end]


def test_rules_do_not_depend_on_loss_scale_or_epoch_units():
    df = paper_like(noise=0.1)
    base = detect_phases(df)
    scaled = df.copy()
    scaled[["train_loss", "test_loss"]] *= 1e3
    assert detect_phases(scaled) == base
    stretched = df.assign(epoch=df["epoch"] * 3)
    ph = detect_phases(stretched)
    assert (ph.memorization_end, ph.circuit_formation_end, ph.cleanup_end) == (
        3 * base.memorization_end, 3 * base.circuit_formation_end, 3 * base.cleanup_end)


def test_without_weight_norm_cleanup_ends_on_the_losses():
    ph = detect_phases(paper_like().drop(columns=["sum_sq_weights", "restricted_loss", "excluded_loss"]))
    assert CIRC < ph.cleanup_end <= CLEAN and "weights" not in ph.cleanup.rule


def test_never_grokking_gives_none_with_a_reason():
    ph = detect_phases(paper_like(grok=False))
    assert abs(ph.memorization_end - MEM) <= 100
    assert ph.circuit_formation_end is None and ph.cleanup_end is None and not ph.grokked
    assert "not generalized" in ph.circuit_formation.reason and "test accuracy" in ph.cleanup.reason
    assert [i[0] for i in ph.intervals()] == ["memorization"]
    cf = circuit_formation_epoch(paper_like(grok=False))
    assert cf.epoch is None and cf.lead_time is None and cf.test_acc_99_epoch is None
    assert "restricted loss never fell" in cf.reason


def test_never_memorizing_gives_none_everywhere():
    df = paper_like(grok=False).assign(train_acc=0.4)
    ph = detect_phases(df)
    assert (ph.memorization_end, ph.circuit_formation_end, ph.cleanup_end) == (None, None, None)
    assert "train accuracy never reached 99%" in ph.memorization.reason
    assert ph.cleanup.reason.startswith("memorization did not end")
    assert ph.intervals() == []


def test_run_stopped_during_cleanup():
    ph = detect_phases(paper_like(end=13500))
    assert ph.circuit_formation_end is not None and ph.cleanup_end is None
    assert "still falling" in ph.cleanup.reason


def test_circuit_formation_leads_test_accuracy():
    df = paper_like(noise=0.1)
    # restricted accuracy: a logistic centred at 5k (width 250) reaches 99 % at ≈ 6.15k
    df["restricted_acc"] = 1 / (1 + np.exp(-(df["epoch"] - 5000) / 250))
    cf = circuit_formation_epoch(df, p=113)
    assert isinstance(cf, CircuitFormation) and cf.reason is None
    assert abs(cf.epoch - 6150) <= 150
    first_99 = int(df.loc[df["test_acc"] >= 0.99, "epoch"].iloc[0])
    assert cf.test_acc_99_epoch == first_99 and cf.lead_time == first_99 - cf.epoch > 4000
    # excluded loss: log10 −2.5 at 3k → 1.0 at 9.4k crosses ln 113 (log10 0.675) at ≈ 8.8k
    assert 8300 <= cf.excluded_loss_epoch <= 9300
    assert "restricted accuracy" in cf.rule and "ln p" in cf.excluded_rule
    # a finer test-accuracy epoch can be given (e.g. from the training metrics)
    assert circuit_formation_epoch(df, p=113, test_acc_99_epoch=first_99 + 7).lead_time == cf.lead_time + 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        cf.epoch = 0


def test_circuit_formation_without_restricted_accuracy_uses_the_loss():
    df = paper_like(noise=0.0)
    cf = circuit_formation_epoch(df)
    # restricted loss: log10 0.8 at 3k → −4 at 8k falls below 0.1 nats (log10 −1) at ≈ 4.9k
    assert abs(cf.epoch - 4875) <= 150 and "restricted loss" in cf.rule
    assert cf.excluded_loss_epoch is None and "needs p" in cf.excluded_rule


def test_circuit_formation_does_not_move_when_training_goes_on():
    df = paper_like(noise=0.1, end=30000)
    df["restricted_acc"] = 1 / (1 + np.exp(-(df["epoch"] - 5000) / 250))
    dates = set()
    for end in (16000, 20000, 30000):
        cf = circuit_formation_epoch(df[df["epoch"] <= end], p=113)
        dates.add((cf.epoch, cf.excluded_loss_epoch, cf.test_acc_99_epoch))
    assert len(dates) == 1, dates


def test_bad_input_is_refused():
    df = paper_like(step=500)
    with pytest.raises(AnalysisError, match="DataFrame"):
        detect_phases(df.to_dict())
    with pytest.raises(AnalysisError, match="empty"):
        detect_phases(df.iloc[:0])
    with pytest.raises(AnalysisError, match=r"missing column\(s\) \['test_loss', 'test_acc'\]"):
        detect_phases(df.drop(columns=["test_loss", "test_acc"]))
    with pytest.raises(AnalysisError, match=r"missing column\(s\) \['restricted_loss'\]"):
        circuit_formation_epoch(df.drop(columns=["restricted_loss"]))
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


def test_rows_without_evaluation_are_ignored():
    """``run.metrics`` has NaN test columns between evaluations; only evaluated rows count."""
    df = paper_like(step=50)
    sparse = df.copy()
    sparse.loc[sparse.index % 2 == 1, ["test_loss", "test_acc"]] = np.nan
    ph = detect_phases(sparse)
    ref = detect_phases(df.iloc[::2].reset_index(drop=True))
    assert (ph.memorization_end, ph.circuit_formation_end, ph.cleanup_end) == (
        ref.memorization_end, ref.circuit_formation_end, ref.cleanup_end)
