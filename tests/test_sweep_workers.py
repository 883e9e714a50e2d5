"""Local worker processes: a sweep's jobs side by side on this machine (``options.workers``).

The runs a sweep trains in workers are those it would train in one process (bit for bit), stacks are
cut so that every worker gets one, progress is counted from the workers, a killed worker fails its job
(the next sweep resumes it), and Ctrl-C / SIGTERM stop every worker after it flushed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli

import grokinterp as g
from grokinterp.errors import ConfigError, RunError
from grokinterp.store.integrity import verify
from grokinterp.sweeps.driver import execute_plan, plan_sweep
from grokinterp.sweeps.executor import LocalExecutor, SweepInterrupted
from grokinterp.sweeps.plan import make_jobs

SMALL = {"d_model": 32, "n_heads": 2, "d_mlp": 48, "p": 23}


def _spec(epochs=40, seeds=(0, 1, 2, 3), **options) -> dict:
    return {"preset": "tiny", "fixed": {"epochs": epochs, "every": 10, "log_early": 0, **SMALL},
            "seeds": list(seeds), "options": options}


def _same(a, b) -> None:
    assert np.array_equal(a.epochs, b.epochs)
    for name, stack in a.stacks().items():
        assert torch.equal(stack, b.stack(name)), name
    assert np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True)


@pytest.mark.parametrize("options, needle", [
    ({"workers": 0}, "options.workers: must be a positive integer, got 0"),
    ({"workers": 1.5}, "options.workers: must be a positive integer"),
    ({"workers": "2"}, "options.workers: must be a positive integer"),
    ({"workers": True}, "options.workers: must be a positive integer"),
    ({"workers": 2, "executor": "ray"}, "options.workers: worker processes are the local executor's"),
])
def test_bad_workers_are_refused_before_anything_is_written(options, needle, tmp_path):
    with pytest.raises(ConfigError) as e:
        g.sweep(_spec(**options), tmp_path / "sw", progress=False)
    assert needle in str(e.value)
    assert not (tmp_path / "sw").exists()
    with pytest.raises(ConfigError, match="workers: must be a positive integer"):
        LocalExecutor(workers=0)


def test_cli_refuses_bad_workers_with_exit_2(tmp_path):
    r = cli("sweep", "--preset", "tiny", "--seeds", "0,1", "--workers", "0", "--out", str(tmp_path / "sw"))
    assert r.returncode == 2 and "options.workers" in r.stderr
    assert not (tmp_path / "sw").exists()


def test_stacks_are_cut_so_that_every_worker_gets_one():
    cfg = g.make_config("tiny", **SMALL)
    new = [(f"r{i}", cfg.replace(init_seed=i, split_seed=i)) for i in range(16)]
    key = lambda c: "same"  # noqa: E731 - every run may share a stack

    def sizes(n, **kw):
        jobs = make_jobs(new[:n], [], preset=None, group=key, **kw)
        assert sorted(d for j in jobs for d in j.run_dirs) == sorted(d for d, _ in new[:n])  # each run once
        return sorted(len(j.run_dirs) for j in jobs), [j.stacked for j in jobs]

    assert sizes(16, max_stack=64) == ([16], [True])
    assert sizes(16, max_stack=64, spread=2) == ([8, 8], [True, True])
    assert sizes(5, max_stack=64, spread=2) == ([2, 3], [True, True])
    assert sizes(16, max_stack=4, spread=2)[0] == [4, 4, 4, 4]  # memory still bounds a stack
    assert sizes(7, max_stack=3, spread=2)[0] == [2, 2, 3]  # balanced, none above max_stack
    assert sizes(3, max_stack=64, spread=8) == ([1, 1, 1], [False, False, False])  # more workers than runs


class _Watching(LocalExecutor):
    def run(self, jobs, progress):
        self.progress = progress
        return super().run(jobs, progress)


def test_workers_train_the_runs_one_process_would_and_count_progress(tmp_path):
    plan = plan_sweep(_spec(workers=2), tmp_path / "sw")
    assert sorted(len(j.run_dirs) for j in plan.jobs) == [2, 2]
    assert any("2 worker processes" in line for line in plan.describe())
    ex = _Watching(workers=2)
    sw = execute_plan(plan, ex, progress=False)
    assert ex.progress.done == ex.progress.total == plan.model_epochs_total  # every model-epoch reported
    ref = g.sweep(_spec(max_stack=2), tmp_path / "ref", progress=False)  # the same stacks, in this process
    runs, refs = sw.runs(), ref.runs()
    assert sorted(runs) == sorted(refs) and len(runs) == 4
    for name, run in runs.items():
        assert run.finished and verify(run.path).ok and run.info["stack"]["size"] == 2
        _same(run, refs[name])


def test_a_killed_worker_fails_its_job_and_the_next_sweep_resumes_it(tmp_path):
    spec = _spec(epochs=4000, workers=2)
    killed: list[int] = []

    def kill_one() -> None:  # SIGKILL a worker once it has trained for a while
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and not killed:
            kids = [p for p in multiprocessing.active_children() if p.name == "grokinterp-sweep-worker"]
            if kids and any((d / "progress.json").exists() for d in (tmp_path / "sw" / "runs").glob("*")):
                os.kill(kids[0].pid, signal.SIGKILL)
                killed.append(kids[0].pid)
            time.sleep(0.05)

    t = threading.Thread(target=kill_one)
    t.start()
    try:
        with pytest.raises(RunError) as e:
            g.sweep(spec, tmp_path / "sw", progress=False)
    finally:
        t.join()
    assert killed
    msg = str(e.value)
    assert "1 of 2 jobs failed" in msg and "exit code -9" in msg and "run the sweep again" in msg
    plan = plan_sweep(tmp_path / "sw")
    assert plan.counts()["finished"] == 2 and len(plan.jobs) == 1  # the killed stack: resumed or retrained
    sw = g.sweep(tmp_path / "sw", progress=False)
    assert all(r.finished and verify(r.path).ok for r in sw.runs().values()) and len(sw.runs()) == 4


def _start_cli_sweep(out: Path, *extra: str) -> subprocess.Popen:
    args = ["sweep", "--preset", "tiny", "--seeds", "0,1,2,3", "--epochs", "6000", "--every", "10", "--log-early",
            "0", "--p", "23", "--d-model", "32", "--n-heads", "2", "--d-mlp", "48", "--out", str(out),
            "--no-progress", *extra]
    return subprocess.Popen([sys.executable, "-m", "grokinterp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_training(out: Path, proc: subprocess.Popen, n: int = 4) -> None:
    t_end = time.monotonic() + 120
    while time.monotonic() < t_end and proc.poll() is None:
        if sum((d / "progress.json").exists() for d in (out / "runs").glob("*")) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the sweep did not start training: {proc.poll()} {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_ctrl_c_or_sigterm_stops_every_worker_after_it_flushed(tmp_path, signum, to_group):
    """Ctrl-C reaches the whole process group (as from a terminal); SIGTERM only the sweep's process,
    which passes it on. Either way the sweep exits 128 + signum, no worker is left running, and the
    next sweep finishes the runs as an uninterrupted one would (bit for bit)."""
    out = tmp_path / "sw"
    proc = _start_cli_sweep(out, "--workers", "2")
    _wait_for_training(out, proc)
    time.sleep(0.5)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "sweep interrupted" in err and f"grokinterp sweep --resume {out}" in err
    leftover = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == []  # no worker outlived the sweep
    plan = plan_sweep(out)
    assert plan.counts()["unfinished"] + plan.counts()["finished"] == 4 and plan.counts()["unfinished"] >= 1
    assert all(j.kind == "resume" for j in plan.jobs)
    r = cli("sweep", "--resume", str(out), "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stderr
    ref = _start_cli_sweep(tmp_path / "ref", "--workers", "2")
    assert ref.wait(timeout=600) == 0
    done, want = g.load_sweep(out).runs(), g.load_sweep(tmp_path / "ref").runs()
    assert sorted(done) == sorted(want)
    for name in done:
        assert verify(done[name].path).ok
        _same(done[name], want[name])


def test_sweep_interrupted_says_how_to_continue(tmp_path):
    e = SweepInterrupted(tmp_path / "sw", signal.SIGTERM)
    assert isinstance(e, KeyboardInterrupt) and e.signum == signal.SIGTERM
    assert f"grokinterp sweep --resume {tmp_path / 'sw'}" in str(e)
