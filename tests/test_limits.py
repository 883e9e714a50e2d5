"""One set of limits for config validation and the loader; a pre-flight estimate at train and resume;
the CLI's edges (empty and over-long paths, a closed pipe).

Every refusal here happens before anything is written: the output directory does not exist after.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
from _helpers import cli, cli_here
from hypothesis import given, settings
from hypothesis import strategies as st

import grokinterp as g
from grokinterp.config import LIMITS, ModelConfig
from grokinterp.errors import ConfigError, RunError
from grokinterp.model import param_shapes
from grokinterp.training import preflight as pf

PY = sys.executable
TINY = g.make_config("tiny", epochs=20, every=10, log_early=0, flush_every=2, eval_every=10)


# -- the configs --------------------------------------------------------------------------
@pytest.mark.parametrize("flags, field", [
    (["--n-layers", "1025", "--d-model", "8", "--n-heads", "1", "--d-mlp", "8", "--epochs", "1"], "model.n_layers"),
    (["--n-layers", "100000"], "model.n_layers"),
    (["--d-model", "1000000000"], "parameters per checkpoint"),
    (["--d-mlp", "1099511627776"], "parameters per checkpoint"),
    (["--epochs", "100000000000"], "train.epochs"),
    (["--init-seed", "100000000000000000000000"], "model.init_seed"),
    (["--log-early", "1000000000", "--epochs", "10"], "checkpoints"),
    (["--every", "1", "--epochs", "100000000", "--flush-every", "1"], "checkpoints"),
])
def test_configs_beyond_the_limits_exit_2_and_write_nothing(tmp_path, flags, field):
    out = tmp_path / "run"
    code, _, err = cli_here("train", "--preset", "tiny", "--out", str(out), "--no-progress", *flags)
    assert code == 2, err
    assert field in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_real_cli_exits_2_in_one_line(tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--preset", "tiny", "--out", str(out), "--n-layers", "1025", timeout=120)
    assert res.returncode == 2 and "model.n_layers" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()


def test_the_loader_refuses_exactly_what_config_validation_refuses(tmp_path):
    """The same limits, the same message: at the limit both accept, past it both refuse."""
    run = g.train(TINY, tmp_path / "run", progress=False)
    info = json.loads((run.path / "run.json").read_text())
    for section, field, at_limit, past in [("model", "n_layers", LIMITS.n_layers, LIMITS.n_layers + 1),
                                           ("train", "epochs", LIMITS.epochs, LIMITS.epochs + 1),
                                           ("model", "init_seed", LIMITS.init_seed, LIMITS.init_seed + 1)]:
        cfg = json.loads(json.dumps(info["config"]))
        cfg["checkpoints"]["every"] = 1000  # 10^8 epochs: keep the schedule itself within its limit
        cfg[section][field] = at_limit
        g.RunConfig.from_dict(cfg)  # accepted (a config; nothing is built)
        cfg[section][field] = past
        with pytest.raises(ConfigError) as by_config:
            g.RunConfig.from_dict(cfg)
        edited = {**info, "config": cfg}
        (run.path / "run.json").write_text(json.dumps(edited))
        with pytest.raises(RunError) as by_loader:
            g.load_run(run.path, check=False)
        assert str(by_config.value).split(": ", 1)[1] in str(by_loader.value)
        assert f"{section}.{field}" in str(by_loader.value)


def test_a_run_at_the_limit_trains_and_loads(tmp_path):
    cfg = g.make_config("tiny", n_layers=LIMITS.n_layers, d_model=4, n_heads=1, d_mlp=4, epochs=0, log_early=0,
                        p=5)
    run = g.train(cfg, tmp_path / "deep", progress=False)
    assert run.config.model.n_layers == LIMITS.n_layers and run.epochs.tolist() == [0]
    assert len(run.params(0)) == 2 + 8 * LIMITS.n_layers + 1


@settings(max_examples=60, deadline=None, derandomize=True)
@given(d_model=st.integers(1, 64), n_heads=st.integers(1, 8), d_mlp=st.integers(1, 300), n_layers=st.integers(1, 4),
       p=st.integers(3, 50))
def test_n_params_formula_equals_the_parameter_table(d_model, n_heads, d_mlp, n_layers, p):
    d_model = d_model * n_heads
    cfg = ModelConfig(p=p, d_model=d_model, n_heads=n_heads, d_mlp=d_mlp, n_layers=n_layers)
    assert cfg.n_params == sum(math.prod(s) for s in param_shapes(cfg).values())


# -- pre-flight -----------------------------------------------------------------------------------
def test_a_run_beyond_this_machines_memory_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    # 2^33 parameters: within the limits (a big GPU machine's run must load anywhere), but with the
    # checkpoint buffer it needs terabytes: no machine trains it
    code, _, err = cli_here("train", "--preset", "tiny", "--out", str(out), "--d-model", "64", "--n-heads", "1",
                            "--d-mlp", str(2 ** 26), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "of cpu memory" in err and "checkpoint buffer" in err and "more than this machine" in err
    assert not out.exists()


def test_preflight_memory_and_disk(tmp_path, monkeypatch):
    est = pf.estimate(TINY)
    assert est.memory["parameters"] == 4 * TINY.model.n_params
    assert est.disk["checkpoints"] >= 4 * TINY.model.n_params * len(TINY.checkpoint_epochs())
    monkeypatch.setattr(pf, "device_memory", lambda device: est.memory_bytes - 1)
    with pytest.raises(RunError, match="needs about .* of cpu memory .*more than this machine's"):
        g.train(TINY, tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()
    monkeypatch.setattr(pf, "_free_disk", lambda out: est.disk_bytes - 1)
    with pytest.raises(RunError, match=r"will write about .*checkpoints .*more than the .* free there"):
        g.train(TINY, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists()


def test_preflight_runs_at_resume_for_what_is_left(tmp_path, monkeypatch):
    out = tmp_path / "run"
    g.train(TINY.replace(epochs=10), out, progress=False)  # a shorter run of another config ...
    shutil.rmtree(out)
    from grokinterp.store.writer import CheckpointWriter

    real, n = CheckpointWriter.flush, []

    def stop_after_one(self, **kw):
        real(self, **kw)
        n.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointWriter, "flush", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        g.train(TINY, out, progress=False)
    monkeypatch.undo()
    seen = []
    monkeypatch.setattr(pf, "_free_disk", lambda o: seen.append(1) or 0)
    before = sorted(p.name for p in (out / "shards").iterdir())
    with pytest.raises(RunError, match="free there"):
        g.resume(out, progress=False)
    assert seen and sorted(p.name for p in (out / "shards").iterdir()) == before  # nothing written
    monkeypatch.undo()
    assert g.resume(out, progress=False).finished


# -- CLI edges ------------------------------------------------------------------------------------
def test_an_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args in (["train", "--preset", "tiny", "--out", ""], ["train", "--resume", ""], ["info", ""],
                 ["verify", " "], ["import-legacy", "x.pth", ""],
                 # every path flag of every command (``Path("")`` is the current directory: a sweep wrote there)
                 ["sweep", "--preset", "tiny", "--seeds", "0,1", "--out", ""], ["sweep", "", "--out", "x"],
                 ["sweep", "--resume", ""], ["report", ""], ["report", "run", "--out", ""],
                 ["report", "run", "--summary-json", " "], ["sweep-report", ""], ["sweep-report", "sw", "--out", ""],
                 ["sweep-report", "sw", "--csv", ""], ["watch", ""]):
        code, _, err = cli_here(*args)
        assert code == 2, (args, err)
        assert "an empty path" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_threads_beyond_the_machine_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    import os

    from grokinterp.training.threads import check_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # a 2-core machine: at most 8 threads
    assert check_threads(8) == 8
    for n in ("9", "1000000"):  # 10⁶ made torch fail after ~45 s with std::bad_alloc, naming nothing
        code, out, err = cli_here("train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--threads", n)
        assert code == 2 and "--threads" in err and "2 cores" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match="threads: 9 threads"):
        g.train(TINY, tmp_path / "run", progress=False, threads=9)
    assert list(tmp_path.iterdir()) == []


def test_running_out_of_memory_is_one_line_with_how_to_resume(tmp_path, monkeypatch):
    import torch

    from grokinterp.store.writer import CheckpointWriter

    real, calls = CheckpointWriter.write_manifest, [0]

    def write_manifest(self, *a, **kw):  # as under `ulimit -v`: flush -> write_manifest -> read_json
        calls[0] += 1
        if calls[0] == 4:
            raise MemoryError
        return real(self, *a, **kw)

    monkeypatch.setattr(CheckpointWriter, "write_manifest", write_manifest)
    out = tmp_path / "run"
    flags = ["--preset", "tiny", "--epochs", "20", "--every", "10", "--log-early", "0", "--flush-every", "2",
             "--eval-every", "10", "--no-progress"]
    code, _, err = cli_here("train", *flags, "--out", str(out))
    assert code == 3, err
    assert len(err.strip().splitlines()) == 1 and "out of memory (MemoryError in write_manifest)" in err, err
    assert f"`grokinterp train --resume {out}`" in err
    monkeypatch.undo()
    code, _, err = cli_here("train", "--resume", str(out), "--no-progress")
    assert code == 0, err
    ref = g.train(g.make_config("tiny", epochs=20, every=10, log_early=0, flush_every=2, eval_every=10),
                  tmp_path / "ref", progress=False)
    run = g.load_run(out)
    assert list(run.epochs) == list(ref.epochs)
    for name, stack in ref.stacks().items():
        assert torch.equal(stack, run.stack(name)), name
    # a command that writes no run: the line says to run it again
    from grokinterp.store import run as run_module

    def load_run(*a, **kw):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(run_module, "load_run", load_run)
    code, _, err = cli_here("info", str(out))
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert "out of memory (MemoryError in load_run: cannot allocate); free memory" in err and "--resume" not in err
    # a native library that cannot be mapped under `ulimit -v` (seen at 1 GB: transformer_lens -> tokenizers)

    def load_run(*a, **kw):
        raise ImportError("tokenizers.abi3.so: failed to map segment from shared object")

    monkeypatch.setattr(run_module, "load_run", load_run)
    code, _, err = cli_here("info", str(out))
    assert code == 3 and "out of memory (ImportError" in err and len(err.strip().splitlines()) == 1, err
    # torch's CPU allocator raises a plain RuntimeError; mmap / fork / open an OSError with ENOMEM
    import errno

    for exc in (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                             "you tried to allocate 70368744177664 bytes. Error code 12"),
                OSError(errno.ENOMEM, "Cannot allocate memory")):
        def load_run(*a, exc=exc, **kw):
            raise exc

        monkeypatch.setattr(run_module, "load_run", load_run)
        code, _, err = cli_here("info", str(out))
        assert code == 3 and f"out of memory ({type(exc).__name__}" in err, err
        assert len(err.strip().splitlines()) == 1, err
    # any other RuntimeError is not taken for one (it stays a traceback: a bug to report)

    def load_run(*a, **kw):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(run_module, "load_run", load_run)
    with pytest.raises(RuntimeError, match="some other failure"):
        cli_here("info", str(out))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_watch_refuses_an_interval_that_is_not_a_positive_number(tmp_path, tiny_run, value):
    from grokinterp.monitor import watch

    (tmp_path / "starting").mkdir()  # a run directory whose trainer has not written run.json yet
    for run in (tiny_run.path, tmp_path / "starting"):  # finished, and live
        code, out, err = cli_here("watch", str(run), "--interval", value)
        assert code == 2 and out == "", (run, value, out, err)
        assert "--interval" in err and len(err.strip().splitlines()) == 1, err
        if value != "0":
            code, out, err = cli_here("watch", str(run), "--timeout", value)
            assert code == 2 and "--timeout" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match="interval"):
        next(watch(tiny_run.path, interval=float(value)))
    with pytest.raises(ConfigError, match="interval"):
        next(watch(tiny_run.path, interval=True))  # a bool is not a number of seconds
    assert list(tmp_path.iterdir()) == [tmp_path / "starting"]


def test_watch_takes_numpy_seconds(tiny_run):
    import numpy as np

    from grokinterp.monitor import watch

    assert next(watch(tiny_run.path, interval=np.int64(1), timeout=np.float32(0))) is not None


@pytest.mark.parametrize("length", [300, 5000])
def test_over_long_paths_are_a_one_line_error(tmp_path, length):
    long = str(tmp_path / ("x" * length))
    for args in (["train", "--preset", "tiny", "--out", long, "--epochs", "1"], ["info", long], ["verify", long],
                 ["train", "--resume", long]):
        code, _, err = cli_here(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1, err
        assert "long" in err.lower() or "no such" in err.lower(), err


def test_a_closed_pipe_ends_quietly(tmp_path):
    run = g.train(TINY, tmp_path / "run", progress=False)
    for args in ("info", "verify --json"):
        res = subprocess.run(["bash", "-c", f"{PY} -m grokinterp {args} {run.path} | true; echo $((PIPESTATUS[0]))"],
                             capture_output=True, text=True, timeout=120)
        assert res.stderr == "", res.stderr
        assert res.stdout.strip() in ("0", "141")  # finished before the reader left, or stopped quietly
