"""Crash safety: SIGKILL at random moments and at every write, SIGINT at random moments.

Every training here runs in a child process (single-threaded torch, so the bits do not
depend on thread scheduling) and is killed from outside with SIGKILL, or kills itself with SIGKILL
at an exact write. After each kill: the run loads without complaint, holds every checkpoint flushed
before the kill (bit-identical to an uninterrupted run), and resuming it ends with checkpoints and
metrics bit-identical to the uninterrupted run, with a manifest that verifies.

Default: 3 random SIGKILL points, 5 kills at chosen writes, 1 random SIGINT. ``-m slow`` adds
27 random SIGKILL points, a SIGKILL at every write of a run in 3 modes (a few also killed again
while resuming), and 9 random SIGINTs. A summary of the interruptions tried is printed at the end.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import signal
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.model import param_shapes
from grokinterp.store import layout as _io
from grokinterp.store.integrity import verify
from grokinterp.store.run import RunWarning
from grokinterp.training.loop import TrainingInterrupted

CFG = g.make_config("tiny", epochs=80, every=10, log_early=4, flush_every=2, eval_every=10)
N_RANDOM_KILLS, N_RANDOM_KILLS_SLOW = 3, 27
N_SIGINTS, N_SIGINTS_SLOW = 1, 9
_RESULTS: list[dict] = []


# -- child processes ------------------------------------------------------------------------------
# Children are forked from this process (fast: torch is imported already). Where the parent's
# autograd engine has started per-device threads (PyTorch with a visible CUDA device does at the
# first backward), a forked child cannot run backward; children then come from a fork server, a
# clean process that imported torch but never ran autograd. GROKINTERP_TEST_START=forkserver
# forces that path anywhere.
_CONTEXT: list = []


def _context():
    if not _CONTEXT:
        method = os.environ.get("GROKINTERP_TEST_START") or ("forkserver" if torch.cuda.is_available() else "fork")
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["torch", "torch._dynamo", "grokinterp.trainer", "grokinterp.run"])
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _child_main(action: str, out: str, n: int, mode: str) -> None:  # pragma: no cover - child
    """What a child does; exits 0 / 130 (SIGINT flushed) / 131 (second SIGINT) / 1 (error)."""
    code = 1
    try:
        torch.set_num_threads(1)
        path = Path(out)
        if action == "noop":  # starts the fork server, if any, before a child is timed
            pass
        elif action == "train":
            g.train(CFG, path, progress=False)
        elif action == "restart":  # what a user does after a crash: resume, or start again without run.json
            if (path / "run.json").exists():
                g.resume(path, progress=False)
            else:
                g.train(CFG, path, progress=False)
        elif action == "reference":  # the uninterrupted run, recording the sequence of its writes
            real, names = _io.write_atomic, []

            def counting(p, data):
                names.append(Path(p).relative_to(path / "ref").as_posix())
                return real(p, data)

            _io.write_atomic = counting
            g.train(CFG, path / "ref", progress=False)
            (path / "writes.json").write_text(json.dumps(names))
        elif action == "kill-train":
            _kill_at_write(n, mode)
            g.train(CFG, path, progress=False)
        elif action == "kill-resume":
            _kill_at_write(n, mode)
            g.resume(path, progress=False)
        else:
            raise ValueError(action)
        code = 0
    except TrainingInterrupted:
        code = 130
    except KeyboardInterrupt:
        code = 131
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def _child(action: str, out: Path, n: int = -1, mode: str = ""):
    """Start a child doing ``action`` on ``out`` with single-threaded torch; returns the process."""
    proc = _context().Process(target=_child_main, args=(action, str(out), n, mode))
    proc.start()
    return proc


def _kill(proc, sig: int) -> None:
    """Send ``sig`` to the child; one that already finished (and, from a fork server, was reaped
    there) counts as killed after its end."""
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def _wait(proc, timeout: float = 300) -> int:
    """The child's exit code (negative: killed by that signal)."""
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError("child did not finish")
    return proc.exitcode


def _same_checkpoints(run, ref, epochs=None) -> None:
    eps = ref.epochs if epochs is None else epochs
    assert np.array_equal(run.epochs, eps)
    if len(eps):
        for name in param_shapes(ref.config.model):
            assert torch.equal(run.stack(name), ref.stack(name, eps)), name


def _manifest_ok(out: Path) -> bool | None:
    try:
        return verify(out).ok
    except g.RunError:  # no manifest yet (killed before the first flush ended)
        return None


def _check_partial(out: Path, ref) -> dict:
    """A killed run: loads cleanly, holds a bit-identical prefix of the checkpoints. Returns facts."""
    if not (out / "run.json").exists():
        return {"phase": "before run.json", "checkpoints": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)  # atomic writes: a kill never damages a shard
        run = g.load_run(out)
    n = len(run.epochs)
    assert np.array_equal(run.epochs, ref.epochs[:n])
    _same_checkpoints(run, ref, ref.epochs[:n])
    prog = run.progress
    if prog:
        assert n >= prog["checkpoints_written"], "a checkpoint flushed before the kill is missing"
        m, mr = run.metrics, ref.metrics
        assert np.array_equal(m.to_numpy(), mr.to_numpy()[: len(m)], equal_nan=True)
    return {"phase": "finished" if run.finished else "training", "checkpoints": n,
            "epoch": prog.get("epoch"), "manifest_ok": _manifest_ok(out)}


def _resume_and_compare(out: Path, ref) -> None:
    assert _wait(_child("restart", out)) == 0
    run = g.load_run(out)
    assert run.finished
    _same_checkpoints(run, ref)
    assert np.array_equal(run.metrics.to_numpy(), ref.metrics.to_numpy(), equal_nan=True)
    report = verify(out)
    assert report.ok, str(report)
    assert not report.temporary, report.temporary


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in a child, like the others), its duration, and its sequence of writes."""
    root = tmp_path_factory.mktemp("crash")
    # Warm up in the parent (lazy imports such as torch._dynamo on the first AdamW), so that each
    # forked child starts training at once.
    g.train(CFG.replace(epochs=2), root / "warmup", progress=False)
    assert _wait(_child("noop", root)) == 0
    t0 = time.time()
    assert _wait(_child("reference", root)) == 0
    duration = time.time() - t0
    return g.load_run(root / "ref"), duration, json.loads((root / "writes.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _RESULTS:
        return
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    kinds: dict[str, int] = {}
    for r in _RESULTS:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    phases: dict[str, int] = {}
    for r in _RESULTS:
        phases[r["phase"]] = phases.get(r["phase"], 0) + 1
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            tr.write_line(f"\ncrash safety: {len(_RESULTS)} interruptions tried {kinds}; state when stopped "
                          f"{phases}; all resumed bit-identical")


# -- SIGKILL at random moments --------------------------------------------------------------------
def _random_kill(tmp_path, reference, k: int) -> None:
    ref, duration, _ = reference
    rng = random.Random(f"sigkill-{k}")
    delay = rng.uniform(0.0, 1.1 * duration)
    out = tmp_path / "run"
    proc = _child("train", out)
    time.sleep(delay)
    _kill(proc, signal.SIGKILL)
    code = _wait(proc)
    assert code in (-signal.SIGKILL, 0)
    facts = _check_partial(out, ref)
    _RESULTS.append({"kind": "sigkill-random", "delay": round(delay, 3), **facts})
    _resume_and_compare(out, ref)


@pytest.mark.parametrize("k", range(N_RANDOM_KILLS))
def test_sigkill_at_random_moment_then_resume_is_bit_identical(tmp_path, reference, k):
    _random_kill(tmp_path, reference, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", range(N_RANDOM_KILLS, N_RANDOM_KILLS + N_RANDOM_KILLS_SLOW))
def test_sigkill_at_more_random_moments(tmp_path, reference, k):
    _random_kill(tmp_path, reference, k)


# -- SIGKILL at exact writes ----------------------------------------------------------------------
def _kill_at_write(n: int, mode: str):
    """Patch (in the child) the atomic writer to SIGKILL the process at its ``n``-th call.

    ``before``: before anything of that file is written; ``partial``: after half of it went to the
    temporary file (left behind); ``after``: right after the rename.
    """
    real = _io.write_atomic
    counter = itertools.count()

    def patched(path, data):
        if next(counter) == n:
            path = Path(path)
            if mode == "partial":
                fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
                os.write(fd, data[: len(data) // 2])
            elif mode == "after":
                real(path, data)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, data)

    _io.write_atomic = patched


def _write_kill(tmp_path, reference, n: int, mode: str, resume_too: bool = False) -> None:
    ref, _, writes = reference
    out = tmp_path / "run"

    assert _wait(_child("kill-train", out, n, mode)) == -signal.SIGKILL
    facts = _check_partial(out, ref)
    if resume_too and (out / "run.json").exists():  # and a second kill during the resume
        assert _wait(_child("kill-resume", out, 3, mode)) in (-signal.SIGKILL, 0)
        _check_partial(out, ref)
    _RESULTS.append({"kind": f"sigkill-write-{mode}", "write": f"{n}:{writes[n]}", **facts})
    _resume_and_compare(out, ref)


def _default_write_points(writes: list[str]) -> list[tuple[int, str]]:
    """First shard only; a later state half-written; the final state but not its progress; all but the manifest."""
    states = [i for i, w in enumerate(writes) if w == "state.safetensors"]
    return [(2, "after"), (states[2], "partial"), (states[-1], "after"), (len(writes) - 1, "before")]


@pytest.mark.parametrize("point", range(4))
def test_sigkill_at_a_write_boundary_then_resume_is_bit_identical(tmp_path, reference, point):
    n, mode = _default_write_points(reference[2])[point]
    _write_kill(tmp_path, reference, n, mode)


@pytest.mark.slow
def test_sigkill_at_every_write_in_every_mode(tmp_path, reference):
    writes = reference[2]
    for n, mode in itertools.product(range(len(writes)), ("before", "partial", "after")):
        case = tmp_path / f"{n}-{mode}"
        case.mkdir()
        _write_kill(case, reference, n, mode, resume_too=(n % 5 == 2))


# -- SIGINT ---------------------------------------------------------------------------------------
def _random_sigint(tmp_path, reference, k: int) -> None:
    ref, duration, _ = reference
    rng = random.Random(f"sigint-{k}")
    delay = rng.uniform(0.05 * duration, 0.95 * duration)
    out = tmp_path / "run"
    proc = _child("train", out)
    time.sleep(delay)
    _kill(proc, signal.SIGINT)
    code = _wait(proc)
    assert code in (130, 131, 0), code
    facts = _check_partial(out, ref)
    if code == 130:  # the handler flushed everything up to the epoch it stopped at, and exited cleanly
        run = g.load_run(out)
        stop = run.progress["epoch"]
        assert np.array_equal(run.epochs, ref.epochs[ref.epochs < stop])
        report = verify(out)
        assert report.ok and not report.temporary, str(report)
    _RESULTS.append({"kind": f"sigint-exit-{code}", "delay": round(delay, 3), **facts})
    _resume_and_compare(out, ref)


@pytest.mark.parametrize("k", range(N_SIGINTS))
def test_sigint_flushes_and_exits_cleanly(tmp_path, reference, k):
    _random_sigint(tmp_path, reference, k)


@pytest.mark.slow
@pytest.mark.parametrize("k", range(N_SIGINTS, N_SIGINTS + N_SIGINTS_SLOW))
def test_sigint_at_more_random_moments(tmp_path, reference, k):
    _random_sigint(tmp_path, reference, k)


def test_killed_before_run_json_can_be_started_again(tmp_path, reference):
    """A kill while the split is written leaves no run.json: `train` with the same --out starts it."""
    ref = reference[0]
    out = tmp_path / "run"

    assert _wait(_child("kill-train", out, 0, "partial")) == -signal.SIGKILL
    assert not (out / "run.json").exists() and any(out.iterdir())
    assert _wait(_child("train", out)) == 0
    _same_checkpoints(g.load_run(out), ref)
