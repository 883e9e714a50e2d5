"""What the analyses say is what they measured (issue 18): the pairs a column averages over, a 99 % epoch
that is only an upper bound, phase reasons of single-checkpoint runs, a circuit date next to a run that
never generalized (never ``None`` in the text), and controls that memorize without grokking."""

from __future__ import annotations

import warnings

import pytest
from test_legacy import train_saved_run

import grokinterp as g
from grokinterp.cli import _report_lines, _t99_text
from grokinterp.store.legacy import import_legacy
from grokinterp.viz.report import render_report

SHORT = dict(epochs=300, live_every=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    cfgs = {
        "S4": dict(operation="S4"),  # the run: the circuit forms, test accuracy stays low
        "add_wd0": dict(weight_decay=0.0),
        "mul_wd0": dict(operation="mul", weight_decay=0.0),
        "S3_wd0": dict(operation="S3", weight_decay=0.0),
        "mul": dict(operation="mul"),  # the mul control's positive twin (default weight decay)
    }
    return {k: g.train(g.make_config("tiny", **SHORT, **kw), root / k, progress=False) for k, kw in cfgs.items()}


def test_splits_say_which_pairs_the_restricted_and_excluded_values_average_over(runs):
    mul = g.progress_measures(runs["mul_wd0"], epochs=[-1]).attrs["splits"]
    add = g.progress_measures(runs["add_wd0"], epochs=[-1]).attrs["splits"]
    s3 = g.progress_measures(runs["S3_wd0"], epochs=[-1]).attrs["splits"]
    # mul mod 31: the block is a, b ≠ 0 (30 × 30 pairs); not "all valid pairs (... full p×p grid)"
    assert "900 pairs" in mul["restricted_loss"] and "a = 0 or b = 0" in mul["restricted_loss"]
    assert "full" not in mul["restricted_acc"] and "of the block" in mul["excluded_loss"]
    assert add["restricted_loss"] == "all valid pairs (projection over the full 31×31 grid)"
    assert s3["restricted_acc"] == "all valid pairs (projection over the full 6×6 grid)"
    assert mul["train_loss"] == add["train_loss"] == "train pairs"


def test_memorizing_controls_get_no_circuit_date(runs):
    """Weight decay 0: the training set is fitted, test accuracy stays below 99 %, and no circuit date."""
    for name in ("add_wd0", "mul_wd0", "S3_wd0"):
        run = runs[name]
        s = run.summary()
        assert s["final_train_acc"] == 1.0 and s["test_acc_99_epoch"] is None, name
        h = g.analyze_run(run, max_checkpoints=40).headline()
        assert h["circuit_formed_epoch"] is None and "never classified 99%" in h["circuit_reason"], name
        assert h["last_checkpoint"]["restricted_acc"] < 0.9, name
        assert h["verdict"].startswith("Test accuracy never passed 99 %") and "None" not in h["verdict"]
    # the rule does tell: the same recipes with weight decay date a circuit (S4 below; add: the tiny run)
    for run in (runs["mul"], runs["S4"]):
        assert g.analyze_run(run, max_checkpoints=40).headline()["circuit_formed_epoch"] is not None, run.path


def test_a_circuit_date_without_generalization_says_the_run_stopped_before_cleanup(runs):
    run = runs["S4"]
    analysis = g.analyze_run(run, max_checkpoints=40)
    h = analysis.headline()
    assert h["test_acc_99_epoch"] is None and h["circuit_formed_epoch"] is not None
    last = h["last_checkpoint"]
    assert last["restricted_acc"] >= 0.99 and last["test_acc"] < 0.5 and last["epoch"] == 300
    v = h["verdict"]
    assert "stopped before cleanup" in v and f"{last['restricted_acc']:.1%}" in v and f"{last['test_acc']:.1%}" in v
    assert h["key_set_final"] is False and "provisional" in v  # chosen at the last checkpoint, before 99 %
    assert "None" not in v
    html = render_report(analysis)
    assert "stopped before cleanup" in html and "at epoch <b>None</b>" not in html and "epoch None" not in html
    lines = _report_lines(h)
    assert not any("None" in line for line in lines) and "stopped before cleanup" in lines[0]
    assert "provisional" in lines[1]


def test_a_99_percent_epoch_at_the_first_evaluation_is_an_upper_bound(tmp_path, monkeypatch):
    src = tmp_path / "saved.pth"
    train_saved_run(src, steps=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = import_legacy(src, tmp_path / "run", split_seed=2, frac_train=0.3)
    ev = run.evals
    # an imported final model: test losses recorded every 10 epochs, the accuracy only at its own epoch
    assert ev.loc[ev["test_acc"].notna(), "epoch"].tolist() == [60] and len(ev) > 1
    # the phases of a single checkpoint: the reason is the single checkpoint, not a missing column
    ph = g.detect_phases(g.progress_measures(run))
    for b in ph.boundaries():
        assert b.end is None and "a single checkpoint (epoch 60" in b.reason and "column" not in b.reason, b
    # as if the imported model had generalized (the synthetic one memorizes): 99 % "at" 60 is only "by" 60
    passed = ev.assign(test_acc=ev["test_acc"].where(ev["test_acc"].isna(), 1.0))
    monkeypatch.setattr(type(run), "evals", property(lambda self: passed))
    s = run.summary()
    assert s["test_acc_99_epoch"] == 60 and s["test_acc_99_upper_bound"] is True
    assert _t99_text(s) == "test accuracy ≥ 99% by epoch 60 (its first evaluation: an upper bound, not when it passed)"
    h = g.analyze_run(run).headline()
    assert h["test_acc_99_upper_bound"] and "by epoch 60 (its first evaluation: an upper bound" in h["verdict"]
    assert "a single checkpoint" in h["verdict"]  # why the circuit is not dated


def test_a_normal_run_is_not_an_upper_bound(tiny_run):
    s = tiny_run.summary()
    assert s["test_acc_99_epoch"] is not None and s["test_acc_99_upper_bound"] is False
    assert _t99_text(s) == f"test accuracy passed 99% at epoch {s['test_acc_99_epoch']}"
    assert _t99_text({"test_acc_99_epoch": None}) == "test accuracy never passed 99%"


def test_cli_report_prints_the_verdict_and_the_key_set(tiny_run, tmp_path, capsys):
    from grokinterp.cli import main

    assert main(["report", str(tiny_run.path), "--out", str(tmp_path / "r.html"), "--max-checkpoints", "20",
                 "--summary-json", str(tmp_path / "h.json")]) == 0
    out = capsys.readouterr().out
    import json

    h = json.loads((tmp_path / "h.json").read_text())
    assert h["verdict"] in out and "None" not in out and f"chosen at epoch {h['key_frequency_epoch']}" in out
    assert "algorithm: " in out and h["extras"]["algorithm"]["reason"] in out
