"""Live progress measures during training, the early warning, and `watch`."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _helpers import PY, cli

import grokinterp as g
from grokinterp.analysis import early as E
from grokinterp.analysis.keyfreqs import key_frequencies
from grokinterp.errors import AnalysisError
from grokinterp.monitor import EarlyWarningCallback, LiveMeasures, live_callbacks, watch
from grokinterp.training import loop as training_loop
from grokinterp.training.callbacks import Callback

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
LIVE = g.make_config("tiny", live_every=10, every=10, eval_every=10, flush_every=10, epochs=300)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    return g.train(LIVE, tmp_path_factory.mktemp("live") / "run", progress=False)


def test_live_measures_equal_progress_measures_with_the_recorded_key_frequencies(live_run):
    table = E.live_table(live_run.metrics)
    assert list(table["epoch"]) == list(range(0, 301, 10))
    by_keys: dict[tuple, list[int]] = {}
    for _, row in table.iterrows():
        # the recorded set is the W_L rule on that checkpoint
        assert tuple(key_frequencies(live_run.model(int(row["epoch"]))).freqs) == row["key_freqs"]
        by_keys.setdefault(row["key_freqs"], []).append(int(row["epoch"]))
    assert len(by_keys) > 1  # the provisional set changes during training
    for keys, epochs in by_keys.items():
        pm = g.progress_measures(live_run, key_freqs=list(keys), epochs=epochs).set_index("epoch")
        rows = table.set_index("epoch").loc[epochs]
        for col in ("restricted_loss", "restricted_acc", "excluded_loss", "gini_W_E", "sum_sq_weights"):
            a, b = rows[col].to_numpy(), pm.loc[epochs, col].to_numpy()
            assert np.allclose(a, b, rtol=1e-6, atol=1e-9), (col, keys, np.abs(a - b).max())
        assert (rows["n_key_freqs"] == len(keys)).all()


def test_live_columns_are_in_the_metrics_table_and_only_where_measured(live_run):
    m = live_run.metrics
    for c in (*E.LIVE_COLUMNS, E.LIVE_KEY_FREQS, E.LIVE_ESTIMATE):
        assert c in m.columns
    measured = m[E.LIVE_KEY_FREQS].notna()
    assert list(m.loc[measured, "epoch"]) == list(range(0, 301, 10))
    assert m.loc[~measured, list(E.LIVE_COLUMNS)].isna().all().all()
    raw = pd.read_csv(live_run.path / "metrics.csv")
    assert json.loads(raw[E.LIVE_KEY_FREQS].dropna().iloc[-1]) == list(E.live_table(m)["key_freqs"].iloc[-1])


def test_the_training_loop_alone_records_no_live_measures(tmp_path):
    run = training_loop.train(LIVE.replace(epochs=20), tmp_path / "r", progress=False)
    assert E.LIVE_KEY_FREQS not in run.metrics.columns
    assert E.live_table(run.metrics).empty
    assert [type(c) for c in live_callbacks(LIVE)] == [LiveMeasures, EarlyWarningCallback]
    assert live_callbacks(LIVE.replace(live_every=0)) == []


def test_metrics_tables_without_or_with_foreign_extra_columns_load(tmp_path):
    run = g.train(g.make_config("tiny", epochs=5), tmp_path / "r", progress=False)
    path = run.path / "metrics.csv"
    df = pd.read_csv(path)
    df["someone_elses"] = "x"
    df.to_csv(path, index=False)
    m = g.load_run(run.path, check=False).metrics  # edited after the manifest: read without its checks
    assert "someone_elses" in m.columns and m["train_loss"].notna().all()
    df[E.LIVE_KEY_FREQS] = "not json"
    for c in E.LIVE_COLUMNS:
        df[c] = 1.0
    with pytest.raises(AnalysisError, match="live_key_freqs"):
        E.live_table(df)


# -- the early warning on committed metrics fixtures ---------------------------------------------------
def test_warning_and_estimate_on_a_synthetic_shifted_curve():
    """Fixture (live rows every 5 epochs): restricted accuracy R(t) = clip((t − 100)/400, 0, 1); test accuracy
    R(t − 200). The warning fires at the first live epoch with R ≥ 99 % (500, R(495) = 0.9875); time-shift
    matching finds the delay 200 (R reached today's test accuracy 0.5 at 300) and R's 99 % at 496
    (interpolated), so the estimate is 696, where the test curve does pass 99 %."""
    df = pd.read_csv(FIXTURES / "synthetic_shift.csv")
    w = E.first_warning(df)
    assert w is not None and w.epoch == 500 and w.estimate == 696
    assert math.isclose(w.test_acc, 0.5, abs_tol=1e-12) and "time-shift" in w.method
    t99 = int(df.loc[df["test_acc"] >= 0.99, "epoch"].iloc[0])
    assert abs(w.estimate - t99) <= 5  # the table's own 99 % lies within one live step


@pytest.mark.parametrize("name,fired,test99", [("quick_s100.csv", 375, 675), ("quick_s101.csv", 925, 1325)])
def test_warning_on_real_quick_runs_reproduces_what_training_recorded(name, fired, test99):
    """Fixtures: every 25th row of the metrics of two `quick` runs (seeds 100, 101) trained with live measures."""
    df = pd.read_csv(FIXTURES / name)
    w = E.first_warning(df)
    assert w.epoch == fired and w.test_acc < E.TEST_BELOW and w.restricted_acc >= E.RESTRICTED_THRESHOLD
    recorded = df.loc[df[E.LIVE_ESTIMATE].notna(), ["epoch", E.LIVE_ESTIMATE]]
    assert list(recorded["epoch"]) == [w.epoch] and int(recorded[E.LIVE_ESTIMATE].iloc[0]) == w.estimate
    assert int(df.loc[df["test_acc"] >= 0.99, "epoch"].iloc[0]) == test99 and w.epoch < test99
    # the estimate lies between the warning and well past the truth (a forecast, not a fit)
    assert w.epoch < w.estimate < 2 * test99


def test_no_warning_when_test_accuracy_is_already_high_or_the_circuit_never_forms():
    df = pd.read_csv(FIXTURES / "synthetic_shift.csv")
    assert E.first_warning(df.assign(test_acc=0.95)) is None  # generalized already: nothing to warn of
    assert E.first_warning(df.assign(live_restricted_acc=df["live_restricted_acc"] * 0.9)) is None
    assert E.estimate_test99_epoch(E.live_table(df).iloc[:3])[0] is None  # restricted accuracy still low


def test_callback_fires_once_records_and_survives_a_resume(tmp_path):
    got = []
    cb = EarlyWarningCallback(notify=got.append)
    cfg = LIVE.replace(epochs=150, flush_every=2)

    class StopAt(Callback):
        def on_step(self, loop, epoch):
            if epoch == 100:
                loop.request_stop()

    with pytest.raises(training_loop.TrainingInterrupted):
        training_loop.train(cfg, tmp_path / "r", progress=False, callbacks=[LiveMeasures(), cb, StopAt()])
    assert len(got) == 1 and got[0].epoch <= 100
    again = EarlyWarningCallback(notify=got.append)
    run = training_loop.resume(tmp_path / "r", progress=False, callbacks=[LiveMeasures(), again])
    assert len(got) == 1 and not again.warning  # no second announcement after the resume
    w = E.first_warning(run.metrics)
    assert w.epoch == got[0].epoch and w.estimate == got[0].estimate
    assert run.metrics[E.LIVE_ESTIMATE].notna().sum() == 1


def test_progress_bar_and_later_callbacks_get_the_live_values(tmp_path):
    seen = {}

    class Peek(Callback):
        def on_epoch(self, loop, epoch):
            if epoch % 10 == 0:  # the live measurement of this epoch, handed to later callbacks
                assert loop.live["epoch"] == epoch and 0 <= float(loop.live["restricted_acc"]) <= 1

        def on_eval(self, loop, epoch):
            seen[epoch] = dict(loop.postfix)

    g.train(LIVE.replace(epochs=20), tmp_path / "r", progress=False, callbacks=[Peek()])
    assert set(seen[20]) >= {"keys", "r_acc"} and float(seen[20]["r_acc"]) >= 0


def test_report_and_info_show_the_early_warning(live_run, tmp_path):
    w = E.first_warning(live_run.metrics)
    assert w is not None and w.epoch < live_run.summary()["test_acc_99_epoch"]
    path, head = g.write_report(live_run, tmp_path / "r.html", max_checkpoints=12, return_headline=True)
    assert head["extras"]["early_warning"] == w.message and w.message in path.read_text()
    out = cli("info", str(live_run.path))
    assert out.returncode == 0, out.stderr
    assert f"early warning: circuit forming at epoch {w.epoch}" in out.stdout
    assert "live measures: every 10 epochs" in out.stdout


# -- watch ------------------------------------------------------------------------------------------------
def test_watch_reports_the_live_rows_the_warning_and_the_end(live_run):
    events = list(watch(live_run.path, interval=0.01, sleep=lambda s: None))
    kinds = [e.kind for e in events]
    assert kinds.count("live") == 31 and kinds[-1] == "finished" and kinds.count("warning") == 1
    w = E.first_warning(live_run.metrics)
    warn = next(e for e in events if e.kind == "warning")
    assert warn.epoch == w.epoch and warn.values["estimate"] == w.estimate
    assert "restricted acc" in events[0].text


def test_watch_computes_the_same_signals_for_a_run_without_live_measures(live_run, tmp_path):
    plain = training_loop.train(LIVE, tmp_path / "plain", progress=False)  # same config: same checkpoints
    events = [e for e in watch(plain.path, interval=0.01, sleep=lambda s: None) if e.kind == "live"]
    table = E.live_table(live_run.metrics).set_index("epoch")
    assert [e.epoch for e in events] == [int(x) for x in plain.epochs]  # every checkpoint, log-spaced early ones too
    shared = [e for e in events if e.epoch in table.index]
    assert len(shared) == 31
    for e in shared:
        row = table.loc[e.epoch]
        assert e.values["key_freqs"] == row["key_freqs"]
        assert math.isclose(e.values["restricted_acc"], row["restricted_acc"], rel_tol=1e-6, abs_tol=1e-12)


def test_cli_watch_follows_a_run_training_in_another_process(tmp_path):
    out = tmp_path / "run"
    trainer = subprocess.Popen([PY, "-m", "grokinterp", "train", "--preset", "tiny", "--epochs", "200", "--live-every",
                                "20", "--flush-every", "4", "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # wait for the run directory to exist
            if out.exists():
                break
            time.sleep(0.05)
        res = cli("watch", str(out), "--interval", "0.2", timeout=300)
    finally:
        trainer.wait(timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert sum(line.startswith("epoch ") and "restricted acc" in line for line in lines) == 11
    assert lines[-1].startswith("finished at epoch 200")
    assert cli("watch", str(tmp_path / "nope"), "--interval", "0.1").returncode == 2


def test_live_measures_callback_rejects_a_bad_interval():
    with pytest.raises(g.ConfigError):
        LiveMeasures(every=0)
