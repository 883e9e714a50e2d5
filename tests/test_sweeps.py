"""Sweeps: specs (Python, TOML, JSON, --grid flags), validation before writing, one run directory per
point, skip finished / resume interrupted, disk estimates and thinned schedules, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import StopAt, cli

import grokinterp as g
from grokinterp.errors import ConfigError, RunError
from grokinterp.store.integrity import verify
from grokinterp.sweeps.driver import SWEEP_JSON, load_sweep, plan_sweep
from grokinterp.sweeps.executor import LocalExecutor, SweepProgress
from grokinterp.sweeps.plan import fit_schedules, run_disk_bytes, thin_schedule
from grokinterp.sweeps.spec import SweepSpec, load_spec, parse_grid_flag

EPOCHS = 40


def _spec(**kw) -> dict:
    base = {"preset": "tiny", "fixed": {"epochs": EPOCHS, "every": 10, "log_early": 0},
            "grid": {"weight_decay": [0.5, 2.0]}, "seeds": [0, 1], "options": {"stack": False}}
    base.update(kw)
    return base


def _same_checkpoints(a, b) -> None:
    assert np.array_equal(a.epochs, b.epochs)
    for name, stack in a.stacks().items():
        assert torch.equal(stack, b.stack(name)), name
    assert np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True)


# -- specs ---------------------------------------------------------------------------------------------------
def test_points_are_the_product_of_the_grid_with_zip_rows_and_seeds():
    spec = SweepSpec(preset="tiny", grid={"frac_train": [0.5, 0.7], "train.lr": [1e-3, 3e-3]},
                     zip={"beta1": [0.8, 0.9], "beta2": [0.95, 0.98]}, seeds=[3, 4])
    pts = spec.points()
    assert len(pts) == 2 * 2 * 2 * 2
    combos = {(p.config.task.frac_train, p.config.train.lr, p.config.train.beta1, p.config.train.beta2,
               p.config.task.split_seed, p.config.model.init_seed) for p in pts}
    expected = {(f, lr, b1, b2, s, s) for f in (0.5, 0.7) for lr in (1e-3, 3e-3) for b1, b2 in ((0.8, 0.95), (0.9, 0.98))
                for s in (3, 4)}
    assert combos == expected
    assert len({p.name for p in pts}) == len(pts)
    assert pts[0].name == "frac_train=0.5_lr=0.001_beta1=0.8_beta2=0.95_seed=3"
    assert pts[0].values == {"frac_train": 0.5, "train.lr": 0.001, "beta1": 0.8, "beta2": 0.95, "seed": 3}
    # everything else is the preset's
    assert pts[0].config.model == g.make_config("tiny", init_seed=3).model


def test_spec_round_trips_through_dict_toml_and_json(tmp_path):
    spec = SweepSpec.from_dict(_spec(zip={"lr": [1e-3, 2e-3], "warmup_epochs": [5, 10]}))
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    (tmp_path / "s.json").write_text(json.dumps(spec.to_dict()))
    assert load_spec(tmp_path / "s.json").runs_dict() == spec.runs_dict()
    (tmp_path / "s.toml").write_text(
        'preset = "tiny"\nseeds = [0, 1]\n[fixed]\nepochs = 40\nevery = 10\nlog_early = 0\n'
        '[grid]\nweight_decay = [0.5, 2.0]\n[zip]\nlr = [1e-3, 2e-3]\nwarmup_epochs = [5, 10]\n[options]\nstack = false\n')
    assert load_spec(tmp_path / "s.toml").runs_dict() == spec.runs_dict()


@pytest.mark.parametrize("doc, needle", [
    ({"grid": {"weight_decay": [-1, 1]}}, "grid.weight_decay = -1: train.weight_decay"),
    ({"grid": {"frac_train": [0.5, 1.5]}}, "grid.frac_train = 1.5: task.frac_train"),
    ({"grid": {"nonsense": [1, 2]}}, "grid.nonsense: no such config field"),
    ({"grid": {"lr": []}}, "grid.lr: must be a non-empty list"),
    ({"grid": {"lr": 0.1}}, "grid.lr: must be a non-empty list"),
    ({"grid": {"lr": [0.1, 0.1]}}, "grid.lr: repeated values"),
    ({"zip": {"lr": [1e-3, 2e-3], "beta1": [0.9]}}, "zip: every axis needs the same number"),
    ({"fixed": {"lr": 1e-3}, "grid": {"train.lr": [1e-3, 2e-3]}}, "train.lr is already set by fixed.lr"),
    ({"grid": {"seed": [0, 1]}, "seeds": [0]}, "already set by grid.seed"),
    ({"grid": {"operation": ["add", "nope"]}}, "grid.operation = 'nope'"),
    ({"preset": "huge", "grid": {"lr": [1e-3]}}, "preset: unknown preset 'huge'"),
    ({"grid": {"lr": [1e-3]}, "options": {"max_stak": 3}}, "unknown option(s) max_stak"),
    ({"grid": {"lr": [1e-3]}, "extra": 1}, "unknown key(s) extra"),
    ({"grid": {"lr": [1e-3]}, "seeds": [0, 0]}, "seeds: repeated"),
])
def test_bad_specs_are_refused_naming_the_field_and_value(doc, needle, tmp_path):
    doc = {"preset": "tiny", **doc}
    with pytest.raises(ConfigError) as e:
        g.sweep(doc, tmp_path / "sw", progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "sw").exists()


def test_unknown_optimizer_or_transform_is_refused_before_writing(tmp_path):
    for doc, needle in (({"grid": {"optimizer": ["adamw", "lion"]}}, "train.optimizer: unknown optimizer 'lion'"),
                        ({"grid": {"grad_transforms": [[], ["nope"]]}}, "unknown gradient transform 'nope'")):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            g.sweep({"preset": "tiny", **doc}, tmp_path / "sw", progress=False)
        assert not (tmp_path / "sw").exists()


def test_the_number_of_points_is_bounded_before_the_grid_is_expanded(tmp_path, monkeypatch):
    from grokinterp.config import LIMITS

    def expand(self):
        raise AssertionError("expanded the grid before counting its points")

    monkeypatch.setattr(SweepSpec, "_combinations", expand)
    doc = {"preset": "tiny", "grid": {"weight_decay": [0.1 * i for i in range(1, 1001)]},
           "zip": {"lr": [1e-3, 2e-3], "beta1": [0.8, 0.9]}, "seeds": list(range(1000))}
    with pytest.raises(ConfigError, match=r"grid.weight_decay \(1000\) × zip \(lr, beta1\) \(2\) × seeds \(1000\): "
                                          rf"2000000 points, more than the limit of {LIMITS.sweep_points}"):
        SweepSpec.from_dict(doc)
    monkeypatch.undo()
    res = cli("sweep", "--preset", "tiny", "--grid", "weight_decay=" + ",".join(str(i) for i in range(1, 1001)),
              "--seeds", ",".join(str(i) for i in range(1000)), "--out", str(tmp_path / "sw"), timeout=60)
    assert res.returncode == 2 and "1000000 points" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sw").exists()


def test_a_stored_sweep_beyond_the_limit_still_loads(tmp_path, monkeypatch):
    """The limit on points applies to new sweeps: one recorded before it (or under a larger one) reads back."""
    from grokinterp.sweeps import spec as spec_module

    g.sweep(_spec(grid={"weight_decay": [0.5, 1.0]}, seeds=[0], fixed={"epochs": 2, "every": 1, "log_early": 0}),
            tmp_path / "sw", progress=False)
    monkeypatch.setattr(spec_module, "LIMITS", dataclasses.replace(spec_module.LIMITS, sweep_points=1))
    with pytest.raises(ConfigError, match="more than the limit of 1 runs"):
        SweepSpec.from_dict(load_sweep(tmp_path / "sw").info["spec"])
    assert len(load_sweep(tmp_path / "sw").points) == 2
    assert g.sweep(tmp_path / "sw", progress=False) is not None  # resumes (nothing left to train)


def test_grid_flags_are_typed_like_their_fields():
    assert parse_grid_flag("weight_decay=0.3,1,3") == ("weight_decay", [0.3, 1.0, 3.0])
    assert parse_grid_flag("task.p=31,37") == ("task.p", [31, 37])
    assert parse_grid_flag("fast_path=true,0") == ("fast_path", [True, False])
    assert parse_grid_flag("grad_transforms=a+b,c") == ("grad_transforms", [("a", "b"), ("c",)])
    assert parse_grid_flag("seed=0,1") == ("seed", [0, 1])
    for bad, needle in (("p=3.5", "cannot read '3.5' as a int"), ("lr", "expected FIELD=V1,V2"),
                        ("lr=1,", "expected comma-separated values"), ("zz=1", "grid.zz: no such config field")):
        with pytest.raises(ConfigError, match=needle):
            parse_grid_flag(bad)


# -- running --------------------------------------------------------------------------------------------------
def test_sweep_writes_one_ordinary_run_per_point_and_a_manifest(tmp_path):
    sw = g.sweep(_spec(), tmp_path / "sw", progress=False)
    info = json.loads((tmp_path / "sw" / SWEEP_JSON).read_text())
    assert info["kind"] == "grokinterp-sweep" and len(info["points"]) == 4
    assert [p["name"] for p in info["points"]] == ["weight_decay=0.5_seed=0", "weight_decay=0.5_seed=1",
                                                   "weight_decay=2_seed=0", "weight_decay=2_seed=1"]
    assert sw.finished and len(sw.runs()) == 4
    for p in info["points"]:
        run = g.load_run(tmp_path / "sw" / p["run"])
        assert run.finished and run.config.to_dict() == p["config"]
        assert run.config.train.weight_decay == p["values"]["weight_decay"]
        assert run.config.task.split_seed == run.config.model.init_seed == p["values"]["seed"]
        assert verify(run.path).ok
    # each run is exactly what gi.train makes of its config
    p0 = info["points"][3]
    ref = g.train(g.RunConfig.from_dict(p0["config"]), tmp_path / "ref", progress=False)
    _same_checkpoints(g.load_run(tmp_path / "sw" / p0["run"]), ref)
    st = sw.status()
    assert list(st["name"]) == [p["name"] for p in info["points"]] and st["finished"].all()


class _InterruptingExecutor(LocalExecutor):
    """Trains the first job's run and stops it part-way (as Ctrl-C would)."""

    def run(self, jobs, progress):
        job = jobs[0]
        g.train(g.RunConfig.from_dict(job.configs[0]), job.run_dirs[0], progress=False, callbacks=[StopAt(17)])


def test_rerunning_skips_finished_runs_and_resumes_interrupted_ones(tmp_path):
    out = tmp_path / "sw"
    with pytest.raises(KeyboardInterrupt):  # TrainingInterrupted
        g.sweep(_spec(), out, progress=False, executor=_InterruptingExecutor())
    sw = load_sweep(out)
    first = sw.points[0]["name"]
    st = sw.status().set_index("name")
    assert not st.loc[first, "finished"] and 0 < st.loc[first, "epochs_done"] < EPOCHS
    plan = plan_sweep(out)
    assert plan.counts() == {"new": 3, "unfinished": 1, "finished": 0, "stopped": 0}
    assert [j.kind for j in plan.jobs].count("resume") == 1
    mtimes = {}
    sw = g.sweep(out, progress=False)  # the directory alone resumes it
    assert sw.finished
    for name, run in sw.runs().items():
        mtimes[name] = (run.path / "manifest.json").stat().st_mtime_ns
    # the interrupted run ends bit-identical to an uninterrupted one
    cfg = g.RunConfig.from_dict(sw.points[0]["config"])
    _same_checkpoints(sw.run(first), g.train(cfg, tmp_path / "ref", progress=False))
    # a third time: nothing to do, nothing rewritten
    plan = plan_sweep(out, None)
    assert plan.jobs == [] and plan.counts()["finished"] == 4
    g.sweep(_spec(), out, progress=False)
    for name, run in load_sweep(out).runs().items():
        assert (run.path / "manifest.json").stat().st_mtime_ns == mtimes[name]


class _NoOpExecutor:
    """Writes the sweep's manifest through ``execute_plan`` and runs nothing."""

    def run(self, jobs, bar):
        return []


def test_a_sweep_killed_as_its_locks_appear_resumes(tmp_path):
    import subprocess
    import sys

    from _helpers import cli_here

    out = tmp_path / "sw"
    g.sweep(_spec(grid={}, fixed={"epochs": 20, "every": 10, "log_early": 0}), out, progress=False,
            executor=_NoOpExecutor())
    kill = ("import os, signal, sys; from grokinterp.store.lock import acquire\n"
            "for d in sys.argv[1:]:\n    os.makedirs(d, exist_ok=True); acquire(d, 'sweep')\n"
            "os.kill(os.getpid(), signal.SIGKILL)")
    dirs = [str(out / p["run"]) for p in load_sweep(out).points]
    assert subprocess.run([sys.executable, "-c", kill, *dirs]).returncode == -9
    assert all(sorted(p.name for p in Path(d).iterdir()) == [".grokinterp.lock"] for d in dirs)  # stale locks only
    code, _, err = cli_here("sweep", "--resume", str(out), "--no-progress")
    assert code == 0, err
    assert load_sweep(out).finished


def test_an_empty_out_is_refused_not_taken_as_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", " "):
        with pytest.raises(ConfigError, match="out: an empty path"):
            g.sweep(_spec(), out, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_different_spec_or_a_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "sw"
    g.sweep(_spec(seeds=[0]), out, progress=False)
    with pytest.raises(RunError, match="holds a different sweep"):
        g.sweep(_spec(seeds=[0, 1]), out, progress=False)
    sw = g.sweep(_spec(seeds=[5]), out, progress=False, overwrite=True)
    assert [p["values"]["seed"] for p in sw.points] == [5, 5]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty and holds no sweep"):
        g.sweep(_spec(), tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    # a run directory changed by hand is noticed before anything trains
    info = json.loads((out / SWEEP_JSON).read_text())
    run_json = out / info["points"][0]["run"] / "run.json"
    doc = json.loads(run_json.read_text())
    doc["config"]["train"]["lr"] = 0.5
    run_json.write_text(json.dumps(doc))
    with pytest.raises(RunError, match="different config than this sweep's point"):
        g.sweep(out, progress=False)


# -- disk -----------------------------------------------------------------------------------------------------
def test_disk_estimate_matches_the_files_written(tmp_path):
    sw = g.sweep(_spec(seeds=[0]), tmp_path / "sw", progress=False)
    for p in sw.points:
        d = tmp_path / "sw" / p["run"]
        actual = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        est = run_disk_bytes(g.RunConfig.from_dict(p["config"]))
        assert 0.8 * actual <= est <= 1.25 * actual + 16384, (actual, est)


def test_schedules_are_thinned_to_the_disk_budget_and_kept_otherwise():
    cfg = g.make_config("paper")
    assert len(cfg.checkpoint_epochs()) == 401
    per_run = run_disk_bytes(cfg)
    assert 3.4e8 < per_run < 3.9e8  # the issue: 256 paper runs ≈ 90 GB at today's schedule
    fit = fit_schedules([cfg] * 256, 20e9)
    assert fit.thinned and fit.bytes_before > 85e9 and fit.bytes_after <= 20e9
    n = len(fit.configs[0].checkpoint_epochs())
    assert 40 <= n < 401 and fit.configs[0].checkpoints.every in (100, 200, 500, 1000, 2000)
    kept = fit_schedules([cfg] * 256, 20e9, allow_thinning=False)
    assert not kept.thinned and kept.configs[0] == cfg
    small = fit_schedules([cfg] * 2, 20e9)
    assert not small.thinned
    sched = thin_schedule(g.make_config("quick").checkpoints, 3000, 50)
    eps = sched.epochs(3000)
    assert len(eps) <= 50 and sched.log_early == 6 and eps[0] == 0 and eps[-1] == 3000


def test_a_sweep_that_asks_for_its_checkpoints_keeps_them(tmp_path):
    doc = _spec(fixed={"epochs": 4000}, options={"max_disk_gb": 0.05, "stack": False})  # every 20: 205 ckpts
    plan = plan_sweep(doc, tmp_path / "a")
    assert "thinned" in plan.schedule_note and plan.disk_bytes <= 0.05e9 < plan.disk_bytes_unthinned
    assert all(r.config.checkpoints.every > 20 and len(r.config.checkpoint_epochs()) >= 40 for r in plan.runs)
    doc["fixed"]["every"] = 10  # fixed by the spec: kept, with a warning
    plan = plan_sweep({**doc, "options": {"max_disk_gb": 0.001, "checkpoints": "keep", "stack": False}}, tmp_path / "b")
    assert all(r.config.checkpoints.every == 10 for r in plan.runs) and any("warning" in n for n in plan.notes)


def test_progress_counts_model_epochs():
    bar = SweepProgress(100, 10, runs_total=4, enabled=False)
    bar.update(5)
    bar.set_done(40)
    bar.set_done(30)  # never backwards
    assert bar.done == 40


# -- command line -----------------------------------------------------------------------------------------------
def test_cli_sweep_with_grid_flags_dry_run_and_resume(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--preset", "tiny", "--epochs", "30", "--every", "10", "--log-early", "0",
            "--grid", "frac_train=0.6,0.8", "--seeds", "0", "--no-stack", "--out", str(out)]
    r = cli(*args, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "2 runs (0 finished, 0 to resume, 2 to train)" in r.stdout and "disk: ≈" in r.stdout
    assert not out.exists()
    r = cli(*args, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "2 of 2 runs finished" in r.stdout
    r = cli("sweep", "--resume", str(out), "--no-progress")
    assert r.returncode == 0 and "(2 finished, 0 to resume, 0 to train)" in r.stdout
    r = cli("sweep", "--resume", str(out), "--lr", "1")
    assert r.returncode == 2 and "--resume continues a sweep" in r.stderr


def test_cli_sweep_spec_file_and_errors(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('preset = "tiny"\n[fixed]\nepochs = 20\nevery = 10\n[grid]\nweight_decay = [1.0, -2.0]\n')
    r = cli("sweep", str(spec), "--out", str(tmp_path / "sw"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "grid.weight_decay = -2.0: train.weight_decay: must be non-negative" in r.stderr
    assert not (tmp_path / "sw").exists()
    spec.write_text('preset = "tiny"\n[grid\n')
    r = cli("sweep", str(spec), "--out", str(tmp_path / "sw"))
    assert r.returncode == 2 and "not a valid TOML sweep spec" in r.stderr
    r = cli("sweep", "--preset", "tiny", "--out", str(tmp_path / "sw"))
    assert r.returncode == 2 and "nothing varies" in r.stderr
    r = cli("sweep", "--preset", "tiny", "--grid", "lr=0.1,0.2", "--lr", "0.3", "--out", str(tmp_path / "sw"))
    assert r.returncode == 2 and "train.lr is already set by fixed.lr" in r.stderr
    assert not (tmp_path / "sw").exists() and not Path("checkpoints/sweep").exists()


# -- stacking ---------------------------------------------------------------------------------------------------
def test_a_sweep_stacks_runs_that_share_shapes(tmp_path):
    from grokinterp.training.stacked import train_stacked

    doc = _spec(grid={"weight_decay": [0.5, 2.0], "d_mlp": [32, 48]}, options={"max_stack": 8})
    plan = plan_sweep(doc, tmp_path / "sw")
    assert sorted(len(j.run_dirs) for j in plan.jobs) == [4, 4] and all(j.stacked for j in plan.jobs)
    assert any("stacks of up to 8 runs" in n for n in plan.notes)
    sw = g.sweep(doc, tmp_path / "sw", progress=False)
    runs = sw.runs()
    by_mlp = {}
    for p in sw.points:
        by_mlp.setdefault(p["values"]["d_mlp"], []).append(p)
        assert runs[p["name"]].info["stack"]["size"] == 4 and verify(runs[p["name"]].path).ok
    # the same runs as training the stack directly, bit for bit
    pts = by_mlp[32]
    ref = train_stacked([g.RunConfig.from_dict(p["config"]) for p in pts], [tmp_path / f"ref{i}" for i in range(4)],
                        progress=False)
    for p, r in zip(pts, ref):
        _same_checkpoints(runs[p["name"]], r)


class _InterruptingStackExecutor(LocalExecutor):
    """Trains the first (stacked) job and stops it part-way."""

    def run(self, jobs, progress):
        from grokinterp.training.stacked import train_stacked

        job = jobs[0]
        train_stacked([g.RunConfig.from_dict(c) for c in job.configs], job.run_dirs, progress=False,
                      callbacks=[StopAt(13)])


def test_an_interrupted_stacked_sweep_resumes_bit_identically(tmp_path):
    doc = _spec(options={})
    ref = g.sweep(doc, tmp_path / "ref", progress=False)
    with pytest.raises(KeyboardInterrupt):
        g.sweep(doc, tmp_path / "sw", progress=False, executor=_InterruptingStackExecutor())
    plan = plan_sweep(tmp_path / "sw")
    assert plan.counts()["unfinished"] == 4 and [(j.kind, j.stacked, len(j.run_dirs)) for j in plan.jobs] == [
        ("resume", True, 4)]
    sw = g.sweep(tmp_path / "sw", progress=False)
    for name, run in sw.runs().items():
        _same_checkpoints(run, ref.run(name))


def test_runs_that_cannot_be_stacked_train_alone(tmp_path):
    plan = plan_sweep(_spec(grid={"eq_logit": [False, True]}, seeds=[0], options={}), tmp_path / "sw")
    assert sorted((j.stacked, len(j.run_dirs)) for j in plan.jobs) == [(False, 1), (False, 1)]
    assert any("cannot be stacked" in n and "eq_logit" in n for n in plan.notes)
    # every transformer setting stacks (deeper or LayerNorm models through the generic forward)
    plan = plan_sweep(_spec(grid={"weight_decay": [0.5, 2.0]}, fixed={"epochs": EPOCHS, "every": 10, "log_early": 0,
                                                                       "n_layers": 2, "layer_norm": True},
                            seeds=[0], options={}), tmp_path / "sw2")
    assert [(j.stacked, len(j.run_dirs)) for j in plan.jobs] == [(True, 2)]


def test_intervention_studies_share_a_stack_and_single_runs_record_live_measures(tmp_path):
    """Runs that differ in an intervention's value (init_scale) train in one stack; runs trained alone
    by a sweep get the live measures their config asks for, stacked ones none."""
    spec = {"preset": "tiny", "fixed": {"epochs": 20, "every": 10, "log_early": 0, "live_every": 10},
            "grid": {"init_scale": [1.0, 2.0]}, "seeds": [0, 1]}
    for out, stack in (("sw", True), ("alone", False)):
        sw = g.sweep({**spec, "options": {"stack": stack}}, tmp_path / out, progress=False)
        runs = sw.runs()
        assert len(runs) == 4 and all(r.finished for r in runs.values())
        for name, run in runs.items():
            stacked = isinstance(run.info.get("stack"), dict)
            assert stacked == stack and (not stacked or run.info["stack"]["size"] == 4), name
            live = "live_restricted_acc" in run.metrics.columns
            assert live == (not stacked), name
            if live:
                assert run.metrics["live_restricted_acc"].notna().sum() == 3  # epochs 0, 10, 20


# -- width as a sweep axis (issue 21 item 4) ----------------------------------------------------------------------
@pytest.mark.parametrize("axis,values", [("d_mlp", [32, 64]), ("d_model", [32, 64]), ("n_heads", [2, 4])])
def test_each_width_trains_in_its_own_stack(tmp_path, axis, values):
    """Runs of different widths never share a stack (a stack holds models of one shape); runs of one
    width do, whatever their weight decay and seed."""
    from grokinterp.training.stacked import stack_key

    doc = _spec(grid={axis: values, "weight_decay": [0.5, 2.0]}, seeds=[0, 1], options={"max_stack": 8})
    plan = plan_sweep(doc, tmp_path / "sw")
    width = {str(r.run_dir.absolute()): getattr(r.config.model, axis) for r in plan.runs}
    assert len(plan.jobs) == len(values) and all(j.stacked and len(j.run_dirs) == 4 for j in plan.jobs)
    assert sorted(next(iter({width[d] for d in j.run_dirs})) for j in plan.jobs) == sorted(values)
    for j in plan.jobs:
        assert len({width[d] for d in j.run_dirs}) == 1
        assert len({stack_key(g.RunConfig.from_dict(c)) for c in j.configs}) == 1


def test_stacks_are_sized_for_the_largest_width(tmp_path, monkeypatch):
    """Without options.max_stack the stack size comes from the device's memory: it is taken for the
    most demanding width (not the first point's), so the largest model's stack fits too."""
    from grokinterp.sweeps import driver

    monkeypatch.setattr(driver, "max_stack_size", lambda c, *a, **k: 256 // c.model.d_mlp)  # 8 at 32, 4 at 64
    doc = _spec(grid={"d_mlp": [32, 64]}, seeds=[0, 1, 2, 3, 4, 5], options={})
    plan = plan_sweep(doc, tmp_path / "sw")
    assert any("stacks of up to 4 runs" in n for n in plan.notes)  # the first point's (d_mlp 32) would give 8
    assert sorted(len(j.run_dirs) for j in plan.jobs) == [3, 3, 3, 3]  # 6 runs per width, cut into 2 stacks of 3


def test_cli_width_grid_trains_one_stack_per_width(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--preset", "tiny", "--epochs", "20", "--every", "10", "--log-early", "0",
            "--grid", "d_mlp=32,64", "--seeds", "0,1", "--out", str(out)]
    r = cli(*args, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "2 jobs: 2 stacks of 2 runs" in r.stdout, r.stdout
    r = cli(*args, "--no-progress")
    assert r.returncode == 0, r.stderr
    sw = load_sweep(out)
    runs = sw.runs()
    stacks = {}
    for p in sw.points:
        run = runs[p["name"]]
        assert run.config.model.d_mlp == p["values"]["d_mlp"] and run.info["stack"]["size"] == 2
        stacks.setdefault(p["values"]["d_mlp"], set()).add(run.info["stack"]["id"])
    assert len(stacks[32]) == 1 and len(stacks[64]) == 1 and stacks[32] != stacks[64]
