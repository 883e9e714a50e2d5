"""On trained runs, the progress measures see the generalizing circuit before test accuracy does.

The default suite checks this on the session's tiny run; ``-m slow`` trains the ``quick`` preset
(p = 97, a few minutes on 2 cores) and checks the claims of Nanda et al. on it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import grokinterp as gi
from grokinterp.analysis.fourier import embed_fourier_norms


def _first_below(df, col, level):
    hit = df.loc[df[col] < level, "epoch"]
    return int(hit.iloc[0]) if len(hit) else None


def _check_lead(run, *, expect_excluded_rise: bool):
    measures = gi.progress_measures(run)
    phases = gi.detect_phases(measures)
    circuit = gi.circuit_formation_epoch(measures, test_acc_99_epoch=run.summary()["test_acc_99_epoch"])
    assert run.summary()["final_test_acc"] >= 0.99
    # the key-frequency circuit alone classifies 99 % of all pairs before the model's test accuracy does
    assert circuit.epoch is not None and circuit.test_acc_99_epoch is not None
    assert circuit.lead_time > 0, circuit
    # restricted loss falls (below 0.1 nats) before the test loss does
    r, t = _first_below(measures, "restricted_loss", 0.1), _first_below(measures, "test_loss", 0.1)
    assert r is not None and t is not None and r < t, (r, t)
    if expect_excluded_rise:
        # excluded loss rises back above chance (ln p) during circuit formation, while train loss stays low
        assert phases.memorization_end < circuit.excluded_loss_epoch <= phases.circuit_formation_end
        at = measures.set_index("epoch").loc[circuit.excluded_loss_epoch]
        assert at["excluded_loss"] >= math.log(run.p) and at["train_loss"] < 0.01
    return measures


def test_tiny_run_circuit_forms_before_test_accuracy(tiny_run):
    _check_lead(tiny_run, expect_excluded_rise=False)


@pytest.mark.slow
def test_quick_run_reproduces_the_papers_claims(tmp_path_factory):
    run = gi.train(gi.make_config("quick"), tmp_path_factory.mktemp("quick") / "run", progress=False)
    measures = _check_lead(run, expect_excluded_rise=True)
    # a handful of key frequencies carry most of W_E's Fourier norm
    norms = embed_fourier_norms(run.stack("embed.W_E", [run.epochs[-1]]))[0, 1:].double() ** 2
    share = np.sort((norms / norms.sum()).numpy())[::-1]
    assert share[:8].sum() > 0.7, share[:10]
    keys = measures.attrs["key_freqs"]
    assert 2 <= len(keys) <= 8
    # the phases come in order
    ph = gi.detect_phases(measures)
    assert ph.memorization_end < ph.circuit_formation_end < ph.cleanup_end
