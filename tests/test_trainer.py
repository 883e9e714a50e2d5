"""Training: groks, reproducible bit for bit, resumable after SIGKILL/SIGINT, safe output handling."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli as _cli

import grokinterp as g
from grokinterp.errors import RunError

PY = sys.executable


def _same_checkpoints(run_a, run_b) -> None:
    assert np.array_equal(run_a.epochs, run_b.epochs)
    for name, stack in run_a.stacks().items():
        assert torch.equal(stack, run_b.stack(name)), name
    ma, mb = run_a.metrics, run_b.metrics
    assert ma.shape == mb.shape
    assert np.array_equal(ma.to_numpy(), mb.to_numpy(), equal_nan=True)


def test_tiny_run_groks(tiny_run):
    s = tiny_run.summary()
    assert s["finished"] and s["final_test_acc"] >= 0.99 and s["final_train_acc"] == 1.0
    assert s["train_acc_99_epoch"] < s["test_acc_99_epoch"], "memorization should come before generalization"
    m = tiny_run.metrics
    assert list(m.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    assert len(m) == tiny_run.config.train.epochs + 1 and m["train_loss"].notna().all()
    ev = tiny_run.evals
    assert (ev["epoch"] % tiny_run.config.train.eval_every == 0).all()


def test_run_contents_are_self_describing(tiny_run):
    info = json.loads((tiny_run.path / "run.json").read_text())
    assert info["config"] == tiny_run.config.to_dict()
    assert info["versions"]["torch"] == torch.__version__ and info["seeds"]["init_seed"] == 0
    assert info["device"]["type"] == "cpu"
    assert np.array_equal(tiny_run.epochs, tiny_run.config.checkpoint_epochs())
    manifest = json.loads((tiny_run.path / "manifest.json").read_text())
    assert "run.json" in manifest["files"] and any(k.startswith("shards/") for k in manifest["files"])


def test_run_api_stack_params_model_data(tiny_run):
    run = tiny_run
    W_E = run.stack("embed.W_E")
    assert W_E.shape == (len(run.epochs), 32, 64)
    e = int(run.epochs[7])
    assert torch.equal(run.stack("embed.W_E", [e])[0], run.params(e)["embed.W_E"])
    last = run.model(-1)
    assert torch.equal(last.embed.W_E.detach(), W_E[-1])
    # the stored final model reproduces the recorded final test loss
    x, y = run.test_data()
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(last(x)[:, -1].double(), y).item()
    final = run.evals.iloc[-1]
    assert loss == pytest.approx(final["test_loss"], rel=1e-4, abs=1e-9)
    xt, yt = run.train_data()
    assert len(xt) + len(x) == 31 * 31 and ((xt[:, 0] + xt[:, 1]) % 31 == yt).all()
    with pytest.raises(RunError, match="nearest"):
        run.params(e + 1)
    with pytest.raises(RunError, match="no parameter named"):
        run.stack("W_E")
    chunks = list(run.iter_chunks(16, names=["unembed.W_U"]))
    assert sum(len(ep) for ep, _ in chunks) == len(run.epochs)
    assert torch.equal(torch.cat([c["unembed.W_U"] for _, c in chunks]), run.stack("unembed.W_U"))


def test_same_config_same_checkpoints_bit_for_bit(tmp_path):
    cfg = g.make_config("tiny", epochs=120)
    a = g.train(cfg, tmp_path / "a", progress=False)
    b = g.train(cfg, tmp_path / "b", progress=False)
    _same_checkpoints(a, b)


def test_fast_path_trains_the_same_model_as_the_hooked_forward(tmp_path):
    cfg = g.make_config("tiny", epochs=10, every=5, lr=1e-3)
    fast = g.train(cfg, tmp_path / "fast", progress=False)
    slow = g.train(cfg.replace(fast_path=False), tmp_path / "slow", progress=False)
    # Same losses along the way; parameters agree to well below one step's size (Adam turns
    # float32 rounding in near-zero gradients into differences of order lr · rounding).
    assert np.allclose(fast.metrics["train_loss"], slow.metrics["train_loss"], rtol=1e-5)
    step = cfg.train.lr
    for name, stack in fast.stacks().items():
        assert (stack - slow.stack(name)).abs().max().item() < 0.1 * step, name


def _wait_for_progress(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if json.loads((run_dir / "progress.json").read_text())["epoch"] >= epoch:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, sig):
    flags = ["--preset", "tiny", "--epochs", "400", "--flush-every", "3", "--no-progress"]
    ref = g.train(g.make_config("tiny", epochs=400, flush_every=3), tmp_path / "ref", progress=False)
    out = tmp_path / "killed"
    proc = subprocess.Popen([PY, "-m", "grokinterp", "train", *flags, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_progress(out, 100, proc)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:  # Ctrl-C and a scheduler's SIGTERM both flush and exit with 128 + signal
        err = proc.stderr.read()
        assert rc == 128 + int(sig), err
        assert "resume" in err
    partial = g.load_run(out)
    assert not partial.finished and 0 < len(partial.epochs) < len(ref.epochs)
    assert np.array_equal(partial.epochs, ref.epochs[: len(partial.epochs)])
    res = _cli("train", "--resume", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    _same_checkpoints(g.load_run(out), ref)


def test_output_directory_rules(tmp_path, tiny_run):
    cfg = g.make_config("tiny", epochs=20, every=10)
    out = tmp_path / "run"
    first = g.train(cfg, out, progress=False)
    stamp = (out / "state.safetensors").stat().st_mtime_ns
    again = g.train(cfg, out, progress=False)  # same config and finished: returned as is
    assert (out / "state.safetensors").stat().st_mtime_ns == stamp
    _same_checkpoints(first, again)
    with pytest.raises(RunError, match="different run"):
        g.train(cfg.replace(lr=2e-3), out, progress=False)
    replaced = g.train(cfg.replace(lr=2e-3), out, progress=False, overwrite=True)
    assert replaced.config.train.lr == 2e-3
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not empty"):
        g.train(cfg, junk, progress=False, overwrite=True)
    assert (junk / "notes.txt").read_text() == "keep me"


def test_load_run_errors(tmp_path):
    with pytest.raises(RunError, match="no such run directory"):
        g.load_run(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a directory"):
        g.load_run(tmp_path / "file")
    with pytest.raises(RunError, match="not a grokinterp run"):
        g.load_run(tmp_path)


def test_cli_bad_config_exits_2_and_creates_nothing(tmp_path):
    for flags, field in [(["--p", "2"], "task.p"), (["--frac-train", "1.5"], "task.frac_train"),
                         (["--d-model", "30"], "model.d_model"), (["--operation", "pow"], "task.operation"),
                         (["--operation", "div", "--p", "21"], "task.p"), (["--epochs", "-3"], "train.epochs")]:
        out = tmp_path / "never"
        res = _cli("train", "--preset", "tiny", "--out", str(out), *flags)
        assert res.returncode == 2, (flags, res.stderr)
        assert field in res.stderr and "Traceback" not in res.stderr
        assert not out.exists()


def test_cli_info(tiny_run, tmp_path):
    res = _cli("info", str(tiny_run.path))
    assert res.returncode == 0, res.stderr
    hit = tiny_run.summary()["test_acc_99_epoch"]
    assert f"test accuracy passed 99% at epoch {hit}" in res.stdout
    assert "add mod 31" in res.stdout
    res = _cli("info", str(tiny_run.path), "--json")
    assert json.loads(res.stdout)["test_acc_99_epoch"] == hit
    res = _cli("info", str(tmp_path / "missing"))
    assert res.returncode == 2 and "no such run directory" in res.stderr


def test_cli_help_does_not_import_torch():
    code = "import sys; from grokinterp.cli import build_parser; build_parser(); print('torch' in sys.modules, 'transformer_lens' in sys.modules)"
    res = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False"]


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path):
    out = tmp_path / "other_tool"
    out.mkdir()
    (out / "run.json").write_text('{"wandb": 1}')
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(RunError, match="not a readable grokinterp run"):
        g.train(g.make_config("tiny", epochs=5), out, progress=False, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"
    res = _cli("train", "--preset", "tiny", "--epochs", "5", "--out", str(out), "--overwrite")
    assert res.returncode == 2 and (out / "precious.txt").exists()
