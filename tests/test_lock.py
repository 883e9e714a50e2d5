"""The run lock: one writer per run, the holder named, stale locks taken over only when provably stale.

A second trainer (new run, ``--resume``, ``--overwrite``) on a locked run exits 2 naming the holder;
``info`` and ``verify`` on a live run say it is training and show the last flushed epoch; a lock
left by a dead process on this host (pid gone, pid reused, zombie) is taken over at once; a lock from
another host only once its heartbeat is older than ``STALE_AFTER_S``; many processes racing for the
same lock (fresh or stale) admit exactly one; a writer whose lock was taken over stops before writing.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _helpers import cli, cli_here

import grokinterp as g
from grokinterp.errors import RunError
from grokinterp.store import layout as _io
from grokinterp.store import lock as L
from grokinterp.store.integrity import verify

PY = sys.executable
CFG = g.make_config("tiny", epochs=40, every=10, log_early=0, flush_every=2, eval_every=10)


def _record(path: Path, **over) -> dict:
    rec = {**L._identity(), "started": "2026-01-01T00:00:00+0000", "started_unix": 0.0, "command": "train",  # noqa: SLF001
           "token": "f" * 32, "grokinterp_lock": 1, **over}
    (path / _io.LOCK_FILE).write_text(json.dumps(rec))
    return rec


def _dead_pid() -> int:
    proc = subprocess.Popen([PY, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- a live trainer -------------------------------------------------------------------------------
def _wait_for(cond, timeout: float = 300) -> None:
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_a_live_run_is_locked_named_and_reported_as_training(tmp_path):
    out = tmp_path / "run"
    args = ["--preset", "tiny", "--epochs", "200000", "--every", "500", "--flush-every", "1", "--eval-every", "500",
            "--log-early", "0", "--no-progress"]
    proc = subprocess.Popen([PY, "-m", "grokinterp", "train", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "progress.json").exists() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        # a second trainer, a resume and an overwrite are refused, naming the holder
        for extra in (["--out", str(out), *args], ["--resume", str(out)],
                      ["--out", str(out), "--overwrite", "--preset", "tiny", "--epochs", "7"]):
            code, _, err = cli_here("train", *extra)  # this process is another writer
            assert code == 2, err
            line = err.strip()
            assert "\n" not in line and f"being written by host {socket.gethostname()}, pid {proc.pid}, since" in line
        res = cli("train", "--resume", str(out))  # and from another process, the real CLI
        assert res.returncode == 2 and f"pid {proc.pid}" in res.stderr and "Traceback" not in res.stderr
        with pytest.raises(RunError, match=f"pid {proc.pid}"):
            g.resume(out, progress=False)
        # info and verify say it is training, with the last flushed epoch
        code, out_text, _ = cli_here("info", str(out))
        assert code == 0 and f"status: training (host {socket.gethostname()}, pid {proc.pid}" in out_text
        assert "last flushed epoch" in out_text and "stopped at" not in out_text
        code, out_text, err = cli_here("verify", str(out))
        assert code == 0, out_text + err
        assert "status: training" in out_text and "last flushed epoch" in out_text
        run = g.load_run(out)
        assert run.training and run.writer.pid == proc.pid and run.summary()["training"]
        assert "training, flushed to epoch" in repr(run)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert not (out / _io.LOCK_FILE).exists()  # released
    assert "status: stopped at epoch" in cli_here("info", str(out))[1]
    assert verify(out).ok


def test_the_lock_is_held_in_process_and_released(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with L.acquire(out, "train") as lock:
        h = L.holder(out)
        assert h is not None and h.this_process and h.alive and h.pid == os.getpid()
        with pytest.raises(RunError, match="this process is already writing the run"):
            L.acquire(out)
        with pytest.raises(RunError, match="this process is already writing"):
            g.train(CFG, out, progress=False)
        lock.check()
    assert L.holder(out) is None and not (out / _io.LOCK_FILE).exists()
    run = g.train(CFG, out, progress=False)  # the directory (holding only the released lock) is usable
    assert run.finished and not run.training


def test_heartbeat_touches_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "HEARTBEAT_S", 0.05)
    with L.acquire(tmp_path) as lock:
        os.utime(lock.path, (0, 0))
        _wait_for(lambda: os.stat(lock.path).st_mtime > time.time() - 60, timeout=10)


# -- stale locks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["dead pid", "reused pid", "zombie"])
def test_a_stale_lock_on_this_host_is_taken_over(tmp_path, how):
    out = tmp_path / "run"
    out.mkdir()
    zombie = None
    if how == "dead pid":
        _record(out, pid=_dead_pid())
    elif how == "reused pid":  # a live process, but not the one that took the lock
        _record(out, pid=os.getppid(), pid_start=1)
    else:
        zombie = subprocess.Popen([PY, "-c", "pass"])
        _wait_for(lambda: L._proc_stat(zombie.pid) is None or L._proc_stat(zombie.pid)[0] == "Z")  # noqa: SLF001
        _record(out, pid=zombie.pid, pid_start=L._proc_stat(zombie.pid)[1] if L._proc_stat(zombie.pid) else None)  # noqa: SLF001
    try:
        assert L.holder(out) is None  # stale: nobody holds it
        run = g.train(CFG, out, progress=False)
        assert run.finished and not (out / _io.LOCK_FILE).exists()
    finally:
        if zombie is not None:
            zombie.wait()


def test_a_lock_from_another_host_waits_for_its_heartbeat_to_go_stale(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _record(out, host="node-17.cluster", boot_id="another", pid_ns="another", pid=4242)
    h = L.holder(out)
    assert h is not None and h.alive is None and h.host == "node-17.cluster"  # cannot tell: assume alive
    with pytest.raises(RunError, match=r"node-17.cluster, pid 4242.*another host.*heartbeat was \d+ s ago.*taken "
                                       r"over once"):
        g.train(CFG, out, progress=False)
    assert (out / _io.LOCK_FILE).exists() and not (out / "run.json").exists()  # nothing else written
    old = time.time() - L.STALE_AFTER_S - 60
    os.utime(out / _io.LOCK_FILE, (old, old))
    assert L.holder(out) is None
    assert g.train(CFG, out, progress=False).finished


def test_the_same_host_name_in_another_container_is_another_host(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _record(out, pid=_dead_pid(), pid_ns="pid:[1]")  # a dead pid here means nothing in another pid namespace
    with pytest.raises(RunError, match="another host"):
        L.acquire(out)


# -- races ----------------------------------------------------------------------------------------
def _contender(out: str, log: str, barrier, result: str) -> None:  # pragma: no cover - child
    outcome = ("error", "no result")
    try:
        barrier.wait(60)
        try:
            lock = L.acquire(Path(out))
        except RunError as e:
            outcome = ("refused", str(e))
        else:
            with open(log, "a") as f:
                f.write(f"enter {os.getpid()}\n")
                f.flush()
                time.sleep(0.3)
                f.write(f"exit {os.getpid()}\n")
            outcome = ("held", str(os.getpid()))
            time.sleep(1.0)  # keep holding while the others try
            lock.release()
    except BaseException as e:  # noqa: BLE001
        outcome = ("error", repr(e))
    finally:
        Path(result).write_text(json.dumps(outcome))
        os._exit(0)


@pytest.mark.parametrize("start", ["free", "stale"])
def test_racing_writers_admit_exactly_one(tmp_path, start):
    out = tmp_path / "run"
    out.mkdir()
    if start == "stale":
        _record(out, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier = ctx.Barrier(n)
    log = tmp_path / "log"
    files = [tmp_path / f"result-{i}" for i in range(n)]
    procs = [ctx.Process(target=_contender, args=(str(out), str(log), barrier, str(f))) for f in files]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    got = [tuple(json.loads(f.read_text())) for f in files]
    kinds = [k for k, _ in got]
    assert kinds.count("error") == 0, got
    assert kinds.count("held") == 1, got  # all started together: one wins, the others see it held
    assert all("being written by" in msg or "being taken" in msg for k, msg in got if k == "refused"), got
    lines = log.read_text().split()
    assert lines[0] == "enter" and lines[2] == "exit" and len(lines) == 4


# -- fencing --------------------------------------------------------------------------------------
def test_a_writer_whose_lock_was_taken_over_stops_without_writing(tmp_path, monkeypatch):
    out = tmp_path / "run"
    from grokinterp.store.writer import CheckpointWriter

    real, calls = CheckpointWriter.flush, []

    def flush(self, **kw):
        calls.append(1)
        if len(calls) == 2:  # while "paused", another process judged the lock stale and took it
            os.rename(self.lock.path, self.lock.path.with_name("gone"))
            _record(out, host="node-3", boot_id="b", pid_ns="n", pid=99, token="0" * 32)
        return real(self, **kw)

    monkeypatch.setattr(CheckpointWriter, "flush", flush)
    with pytest.raises(RunError, match="no longer holds the run lock.*node-3.*stopping without writing"):
        g.train(CFG, out, progress=False)
    assert len(list((out / "shards").iterdir())) == 1  # the second flush wrote nothing
    assert json.loads((out / _io.LOCK_FILE).read_text())["host"] == "node-3"  # the new holder's lock stays


def test_import_legacy_never_replaces_a_run_being_written(tmp_path):
    from test_legacy import make_paper_file

    src = tmp_path / "full_run_data.pth"
    make_paper_file(src)
    out = tmp_path / "run"
    g.import_legacy(src, out)
    _record(out, host="node-9", boot_id="b", pid_ns="n", pid=7)  # a live writer elsewhere
    with pytest.raises(RunError, match="being written by host node-9, pid 7"):
        g.import_legacy(src, out, overwrite=True)
    (out / _io.LOCK_FILE).unlink()
    assert g.import_legacy(src, out, overwrite=True).finished
    assert not (out / _io.LOCK_FILE).exists() and verify(out).ok


# -- claiming run directories (the one place trainers take them) ------------------------------------------
def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_a_start_that_fails_leaves_nothing_behind_and_a_started_run_stays(tmp_path):
    from grokinterp.store.writer import claim_run_dirs, start_run

    new, old = tmp_path / "new", tmp_path / "old"
    g.train(CFG.replace(init_seed=5), old, progress=False)
    with pytest.raises(ZeroDivisionError):
        with claim_run_dirs([new, old], [CFG, CFG], overwrite=True) as claim:
            assert claim.decisions == ["new", "replace"] and all(lk.held for lk in claim.locks)
            claim.wrote = True
            start_run(new, {"config": CFG.to_dict()}, [], [])
            1 / 0  # noqa: B018 - fails before training starts
    assert not new.exists()  # created here: removed
    assert old.exists() and _files(old) == []  # a run being replaced, partly rewritten: cleared, never half-written
    with pytest.raises(ZeroDivisionError):
        with claim_run_dirs([new], [CFG], overwrite=False) as claim:
            claim.wrote = claim.started = True
            start_run(new, {"config": CFG.to_dict()}, [], [])
            1 / 0  # noqa: B018 - fails after training started: the run stays, resumable
    assert (new / _io.RUN_JSON).exists() and not (new / _io.LOCK_FILE).exists()


def test_a_different_run_or_a_held_lock_is_refused_and_never_deleted(tmp_path):
    from grokinterp.store.writer import claim_run_dirs

    a, b, held = tmp_path / "a", tmp_path / "b", tmp_path / "held"
    g.train(CFG.replace(init_seed=1), b, progress=False)
    before = _files(b)
    with pytest.raises(RunError, match="already holds a different run"):
        with claim_run_dirs([a, b], [CFG, CFG], overwrite=False):
            pass
    assert not a.exists() and _files(b) == before
    held.mkdir()
    lock = L.acquire(held, "train")
    try:
        with pytest.raises(RunError):
            with claim_run_dirs([a, held], [CFG, CFG], overwrite=False):
                pass
        assert not a.exists() and held.exists() and lock.held
    finally:
        lock.release()


def test_a_run_another_process_wrote_into_a_directory_created_here_is_kept(tmp_path, monkeypatch):
    """The race: this call creates the directory, another trainer takes its lock first and writes a
    run, then this call gets the lock and finds a different run: it refuses and deletes nothing."""
    from grokinterp.store import writer

    out = tmp_path / "raced"
    real_acquire = writer.acquire

    def acquire_after_another_writer(run_dir, command="train"):
        monkeypatch.setattr(writer, "acquire", real_acquire)
        g.train(CFG.replace(init_seed=9), run_dir, progress=False)  # "another process", done first
        return real_acquire(run_dir, command)

    monkeypatch.setattr(writer, "acquire", acquire_after_another_writer)
    with pytest.raises(RunError, match="already holds a different run"):
        with writer.claim_run_dirs([out], [CFG], overwrite=False):
            pass
    assert (out / _io.RUN_JSON).exists() and verify(out).ok
