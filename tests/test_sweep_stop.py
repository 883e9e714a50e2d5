"""The stop rule of a sweep (``[stop]``) and the wall-clock budget of a sweep invocation.

Planted facts on the ``tiny`` recipe at 90 % of the pairs, eval every 10 epochs: seeds 0 and 1 pass
99 % test accuracy by epoch 130, seed 2 not within 400 epochs (measured with the rule off; the tests
check the rule against the metrics it wrote, not against these numbers).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from _helpers import StopAt, cli_here

import grokinterp as g
from grokinterp.errors import ConfigError
from grokinterp.store.integrity import verify
from grokinterp.sweeps.driver import SWEEP_JSON, load_sweep, plan_sweep
from grokinterp.sweeps.spec import SweepSpec
from grokinterp.sweeps.stop import DeadlineCallback, StopRule, deadline_from
from grokinterp.training.loop import TrainingInterrupted

EPOCHS, EVAL = 400, 10
RULE = {"column": "test_acc", "level": 0.99, "hold": 3}


def _spec(seeds=(0, 1), stack=True, stop=RULE, **fixed) -> dict:
    doc = {"preset": "tiny", "fixed": {"epochs": EPOCHS, "eval_every": EVAL, "frac_train": 0.9, "every": 50,
                                       "log_early": 0, **fixed},
           "seeds": list(seeds), "options": {"stack": stack}}
    if stop is not None:
        doc["stop"] = dict(stop) if isinstance(stop, dict) else stop
    return doc


def _check_rule(run, rule=RULE) -> None:
    """The recorded stop is where the rule first held: the last ``hold`` evaluations before it ≥ level."""
    rec = run.stopped
    ev = run.evals.set_index("epoch")["test_acc"]
    held = [rec["held_from_epoch"] + i * EVAL for i in range(rule["hold"])]
    assert rec["by"] == "rule" and rec["rule"] == rule and rec["epoch"] == held[-1] + 1
    assert all(ev[e] >= rule["level"] for e in held)


def test_the_rule_stops_a_stack_early_marks_its_runs_and_a_rerun_trains_nothing(tmp_path):
    out = tmp_path / "sw"
    sw = g.sweep(_spec(), out, progress=False)
    st = sw.status()
    assert st["stopped"].all() and st["done"].all() and not st["finished"].any() and sw.finished
    assert (st["stopped_epoch"] < EPOCHS).all() and (st["stopped_epoch"] == st["stopped_step"]).all()  # full batch
    runs = sw.runs()
    for run in runs.values():
        _check_rule(run)
        assert verify(run.path).ok  # the record is part of the flush: manifest and files agree
        assert len(run.metrics) == run.stopped["epoch"]
    # a stack stops at the first evaluation where *every* run has held the level
    first = min(r.stopped["held_from_epoch"] for r in runs.values())
    earlier = first - EVAL
    evs = [r.evals.set_index("epoch")["test_acc"] for r in runs.values()]
    assert earlier < 0 or any(ev[e] < 0.99 for ev in evs for e in range(earlier, earlier + 3 * EVAL, EVAL))
    assert json.loads((out / SWEEP_JSON).read_text())["spec"]["stop"] == RULE
    plan = plan_sweep(out)
    assert plan.jobs == [] and plan.counts() == {"new": 0, "unfinished": 0, "finished": 0, "stopped": 2}
    assert any("stop rule" in line for line in plan.describe())
    mtimes = {n: (r.path / "manifest.json").stat().st_mtime_ns for n, r in runs.items()}
    g.sweep(out, progress=False)
    assert {n: (r.path / "manifest.json").stat().st_mtime_ns for n, r in load_sweep(out).runs().items()} == mtimes
    table = sw.table(analyse=False)
    assert table["stopped"].all() and (table["stopped_epoch"] == st["stopped_epoch"].to_numpy()).all()


def test_stopping_does_not_change_the_bits_of_the_epochs_trained_and_resume_goes_on(tmp_path):
    out = tmp_path / "sw"
    sw = g.sweep(_spec(), out, progress=False)
    stop = sw.status()["stopped_epoch"].iloc[0]
    cfgs = [g.RunConfig.from_dict(p["config"]) for p in sw.points]
    refs = [tmp_path / f"ref{i}" for i in range(len(cfgs))]
    with pytest.raises(TrainingInterrupted):  # the same stack without the rule, stopped at the same epoch
        g.train_stacked(cfgs, refs, progress=False, callbacks=[StopAt(int(stop) - 1)])
    for p, ref in zip(sw.points, refs):
        a, b = sw.run(p["name"]), g.load_run(ref)
        assert np.array_equal(a.epochs, b.epochs) and len(a.epochs) > 1
        for name, stack in a.stacks().items():
            assert torch.equal(stack, b.stack(name)), name
        assert np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True)
        assert b.stopped is None and b.progress.get("stopped") is None  # an ordinary interruption: no record
    # a user may go on explicitly: the stack resumes to its budget and the record is gone
    with pytest.warns(UserWarning, match="resuming the 2 members"):
        run = g.resume(sw.run_dir(sw.points[0]["name"]), progress=False)
    assert run.finished and run.stopped is None
    st = load_sweep(out).status()
    assert st["finished"].all() and not st["stopped"].any()


def test_runs_that_never_reach_the_level_train_to_the_budget(tmp_path):
    # one stack with a run that does not generalize: nobody stops
    sw = g.sweep(_spec(seeds=(0, 2)), tmp_path / "stacked", progress=False)
    st = sw.status()
    assert st["finished"].all() and not st["stopped"].any() and (st["epochs_done"] == EPOCHS).all()
    # one by one (single-run trainer): the run that generalizes stops, the other trains on
    sw = g.sweep(_spec(seeds=(0, 2), stack=False), tmp_path / "single", progress=False)
    st = sw.status().set_index("seed")
    assert st.loc[0, "stopped"] and not st.loc[0, "finished"] and st.loc[0, "stopped_epoch"] < EPOCHS
    assert st.loc[2, "finished"] and not st.loc[2, "stopped"]
    _check_rule(sw.run(st.loc[0, "name"]))


@pytest.mark.parametrize("stop, needle", [
    ({"column": "test_loss"}, "stop.column: unknown column 'test_loss'"),
    ({"level": 1.5}, "stop.level"),
    ({"level": 0}, "stop.level"),
    ({"level": "high"}, "stop.level"),
    ({"hold": 0}, "stop.hold"),
    ({"hold": 2.5}, "stop.hold"),
    ({"margin": 3}, "stop: unknown key(s) margin"),
    ([0.99], "stop: must be a table"),
])
def test_bad_stop_fields_are_refused_naming_the_field(stop, needle, tmp_path):
    with pytest.raises(ConfigError, match=None) as e:
        SweepSpec.from_dict(_spec(stop=stop))
    assert needle in str(e.value)
    with pytest.raises(ConfigError):
        g.sweep(_spec(stop=stop), tmp_path / "sw", progress=False)
    assert not (tmp_path / "sw").exists()


def test_cli_refuses_a_bad_stop_table_and_dry_run_shows_the_rule_and_cost(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "tiny"\nseeds = [0, 1, 2]\n[fixed]\nepochs = 40\n[stop]\nlevel = 2\n')
    code, _, err = cli_here("sweep", str(spec), "--out", str(tmp_path / "sw"))
    assert code == 2 and "stop.level" in err and not (tmp_path / "sw").exists()
    spec.write_text('preset = "tiny"\nseeds = [0, 1, 2]\n[fixed]\nepochs = 40\n[stop]\nhold = 2\n')
    code, out, _ = cli_here("sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run")
    assert code == 0 and "stop rule: a stack stops once every run has held test_acc ≥ 0.99 at 2" in out
    assert "cost: 120 model-steps (120 model-epochs)" in out and not (tmp_path / "sw").exists()
    code, _, err = cli_here("sweep", str(spec), "--out", str(tmp_path / "sw"), "--until", "25:00")
    assert code == 2 and "until" in err and not (tmp_path / "sw").exists()


def test_old_sweeps_without_the_table_load_and_resume_unchanged(tmp_path):
    out = tmp_path / "sw"
    doc = _spec(stop=None, epochs=60)
    spec = SweepSpec.from_dict(doc)
    assert "stop" not in spec.to_dict() and spec.stop is None  # the stored spec is what it was before
    g.sweep(doc, out, progress=False, executor=_Interrupting())
    assert "stop" not in json.loads((out / SWEEP_JSON).read_text())["spec"]
    assert plan_sweep(out).counts()["unfinished"] == 2
    sw = g.sweep(out, progress=False)
    st = sw.status()
    assert st["finished"].all() and not st["stopped"].any() and all(r.stopped is None for r in sw.runs().values())


class _Interrupting:
    """Trains the first job's stack and stops it part-way, as Ctrl-C would (then the sweep 'ends')."""

    def run(self, jobs, bar):
        job = jobs[0]
        try:
            g.train_stacked([g.RunConfig.from_dict(c) for c in job.configs], job.run_dirs, progress=False,
                            callbacks=[StopAt(17)])
        except TrainingInterrupted:
            pass
        return []


def test_a_passed_deadline_starts_nothing_and_the_sweep_goes_on_later(tmp_path):
    out = tmp_path / "sw"
    sw = g.sweep(_spec(stop=None, epochs=20), out, progress=False, deadline=time.time() - 1)
    assert not sw.finished and sw.runs() == {}
    assert g.sweep(out, progress=False).finished


def test_the_deadline_callback_stops_the_loop_without_a_record_and_deadline_parsing():
    class Loop:
        stopped = None

        def request_stop(self, record=None):
            self.stopped = ("stop", record)

    cb, loop = DeadlineCallback(time.time() + 3600), Loop()
    cb.on_step(loop, 0)
    assert loop.stopped is None
    cb = DeadlineCallback(time.time() - 1)
    cb.on_step(loop, 0)
    assert loop.stopped == ("stop", None) and cb.fired
    now = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    assert deadline_from(None, None) is None
    assert deadline_from(10, None, now=now) == now + 600
    assert deadline_from(None, "08:30", now=now) == now + 1800
    assert deadline_from(None, "07:00", now=now) == now + 23 * 3600  # the next such time: tomorrow
    assert deadline_from(60, "08:30", now=now) == now + 1800  # the earlier of the two
    for bad in ("8h", "24:00", "08:60"):
        with pytest.raises(ConfigError, match="until"):
            deadline_from(None, bad)
    with pytest.raises(ConfigError, match="max_minutes"):
        deadline_from(0, None)


def test_stop_rule_round_trips():
    rule = StopRule.from_dict({"level": 0.95, "hold": 2})
    assert rule == StopRule("test_acc", 0.95, 2) and StopRule.from_dict(rule.to_dict()) == rule
    spec = SweepSpec.from_dict(_spec())
    assert SweepSpec.from_dict(spec.to_dict()) == spec and spec.stop == StopRule(**RULE)


# -- the committed specs ----------------------------------------------------------------------------------------
SPECS = sorted((__import__("pathlib").Path(__file__).resolve().parents[1] / "analyses" / "specs").glob("*.toml"))


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_every_committed_spec_is_valid_under_dry_run(spec, tmp_path):
    code, out, err = cli_here("sweep", str(spec), "--out", str(tmp_path / "sw"), "--dry-run")
    assert code == 0, err
    assert "cost:" in out and "model-steps" in out and not (tmp_path / "sw").exists()


def test_power_study_specs_follow_their_batch_rule_and_step_budget():
    import math

    from grokinterp.sweeps.spec import load_spec

    specs = [p for p in SPECS if p.name.startswith("power_study")]
    ops, fracs = set(), set()
    for path in specs:
        spec = load_spec(path)
        assert len(spec.seeds) >= 3 and spec.stop == StopRule("test_acc", 0.99, 3) and spec.preset == "power"
        for p in spec.points():
            c = p.config
            assert c.train.batch_size == min(512, math.ceil(c.n_train() / 2)), p.name
            assert 100_000 <= c.total_steps() < 100_000 + c.steps_per_epoch(), p.name
            ops.add(c.task.operation)
            fracs.add(c.task.frac_train)
    assert ops == {"add", "sub", "mul", "div", "div_odd_sub", "x2_y2", "x2_xy_y2", "x2_xy_y2_x", "x3_xy", "x3_xy2_y",
                   "S5", "S5_conj", "S5_xyx"}
    assert sorted(fracs) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def test_a_zip_axis_may_repeat_values_but_not_rows():
    base = {"preset": "tiny", "fixed": {"epochs": 4}, "seeds": [0]}
    spec = SweepSpec.from_dict({**base, "zip": {"frac_train": [0.5, 0.7], "batch_size": [64, 64]}})
    assert [p.config.train.batch_size for p in spec.points()] == [64, 64]
    with pytest.raises(ConfigError, match=r"zip: row 1 \(frac_train = 0.5, batch_size = 64\) repeats an earlier row"):
        SweepSpec.from_dict({**base, "zip": {"frac_train": [0.5, 0.5], "batch_size": [64, 64]}})
    with pytest.raises(ConfigError, match="zip.frac_train: repeated values"):
        SweepSpec.from_dict({**base, "zip": {"frac_train": [0.5, 0.5]}})


def test_minibatch_schedules_are_thinned_over_their_steps():
    from grokinterp.sweeps.plan import MIN_CHECKPOINTS, fit_schedules

    cfg = g.make_config("power", frac_train=0.5, epochs=10_000)  # 10 steps an epoch, a checkpoint every 250 steps
    assert cfg.checkpoint_unit() == "step" and len(cfg.checkpoint_epochs()) > 400
    fit = fit_schedules([cfg] * 4, 1e6)  # far too small: every run keeps the fewest checkpoints
    for c in fit.configs:
        n = len(c.checkpoint_epochs())
        assert MIN_CHECKPOINTS // 2 <= n <= MIN_CHECKPOINTS + c.checkpoints.log_early + 2, n
    assert "steps" in fit.note


def test_power_fractions_restricts_the_study_specs_into_derived_sweeps(monkeypatch):
    import argparse
    import importlib

    root = SPECS[0].parents[2]
    monkeypatch.syspath_prepend(str(root / "analyses"))
    pf = importlib.import_module("power_fractions")
    ns = argparse.Namespace(ops="add,div", fracs=[0.8], seeds=[0, 1], steps=300, workers=None, max_stack=2)
    got = {p.stem: pf.derived_spec(p, ns) for p in pf.SPECS}
    assert got["power_study_s5"] is None  # nothing of it is asked for
    doc, name = got["power_study_p97"]
    assert name.startswith("power_study_p97-") and doc["grid"]["operation"] == ["add"] and doc["seeds"] == [0, 1]
    assert doc["zip"] == {"frac_train": [0.8], "batch_size": [512], "epochs": [20], "eval_every": [7]}  # 15 steps/epoch
    assert doc["stop"] == RULE and doc["options"]["max_stack"] == 2
    pts = SweepSpec.from_dict(doc).points()
    assert [p.config.total_steps() for p in pts] == [300, 300]
    assert got["power_study_div"][0]["grid"]["operation"] == ["div"]
    # the same restriction names the same directory (a second invocation resumes it); no restriction: the spec's stem
    assert pf.derived_spec(pf.SPECS[0], ns)[1] == name
    full = argparse.Namespace(ops=None, fracs=None, seeds=None, steps=None, workers=None, max_stack=None)
    assert pf.derived_spec(pf.SPECS[0], full)[1] == "power_study_p97"
