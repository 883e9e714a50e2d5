"""Disk trouble during a flush: training stops with a clear message and the run keeps its last good state.

Writes fail by injection (``OSError`` from the atomic writer at a chosen call: works as root, where
``chmod`` does not stop writes) and, once, for real: a CLI training under ``RLIMIT_FSIZE`` gets
``EFBIG`` from the kernel. After every failure the run loads without complaint, verifies against its
manifest, and resumes to checkpoints bit-identical to an untroubled run.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.errors import RunError
from grokinterp.model import param_shapes
from grokinterp.store import layout as _io
from grokinterp.store.integrity import verify
from grokinterp.store.run import RunWarning
from grokinterp.store.writer import CheckpointWriter

PY = sys.executable
CFG = g.make_config("tiny", epochs=60, every=10, log_early=0, flush_every=2, eval_every=10)
# The writes of a flush: the manifest with the flush's record, then the files, then the manifest.
FLUSH_FILES = ("manifest.json", "shard", "metrics.csv", "state.safetensors", "progress.json", "manifest.json")
START_WRITES = 4  # creating the run: the manifest with its record, the split, run.json, the manifest


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return g.train(CFG, tmp_path_factory.mktemp("disk") / "ref", progress=False)


def _same(run, ref) -> None:
    assert np.array_equal(run.epochs, ref.epochs)
    for name in param_shapes(ref.config.model):
        assert torch.equal(run.stack(name), ref.stack(name)), name
    assert np.array_equal(run.metrics.to_numpy(), ref.metrics.to_numpy(), equal_nan=True)


def _failing_writes(monkeypatch, first: int, err: int = errno.ENOSPC, persist: bool = False) -> list[str]:
    """Make the atomic writer raise ``OSError(err)`` at call ``first`` (and after, if ``persist``)."""
    real, calls = _io.write_atomic, []

    def patched(path, data):
        n = len(calls)
        calls.append(Path(path).name)
        if n == first or (persist and n > first):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, data)

    monkeypatch.setattr(_io, "write_atomic", patched)
    return calls


def _load_clean(out: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)
        return g.load_run(out)


@pytest.mark.parametrize("step", range(len(FLUSH_FILES)))
def test_disk_full_during_a_flush_keeps_the_last_good_state(tmp_path, ref, monkeypatch, step):
    out = tmp_path / "run"
    n = START_WRITES + len(FLUSH_FILES) + step  # fail in the second flush
    calls = _failing_writes(monkeypatch, n)
    with pytest.raises(RunError, match=r"No space left on device.*resume"):
        g.train(CFG, out, progress=False)
    failed = calls[n]
    assert failed.startswith("ckpt_") if FLUSH_FILES[step] == "shard" else failed == FLUSH_FILES[step]
    monkeypatch.undo()
    run = _load_clean(out)
    state_written = step >= 4  # the state of the second flush is on disk when progress/manifest failed
    kept = ref.epochs[: 4 if state_written else 2]
    assert np.array_equal(run.epochs, kept)  # the shard of the failed flush is gone unless its state was saved
    for name in param_shapes(CFG.model):
        assert torch.equal(run.stack(name), ref.stack(name, kept))
    report = verify(out)
    assert report.ok and not report.temporary, str(report)
    resumed = g.resume(out, progress=False)
    _same(resumed, ref)
    assert verify(out).ok


def test_disk_stays_full_then_space_is_freed(tmp_path, ref, monkeypatch):
    out = tmp_path / "run"
    _failing_writes(monkeypatch, START_WRITES + len(FLUSH_FILES) * 2, persist=True)  # from the third flush on
    with pytest.raises(RunError, match="No space left on device"):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    run = _load_clean(out)
    assert np.array_equal(run.epochs, ref.epochs[:4])
    assert not list(out.rglob(".*.tmp"))
    _same(g.resume(out, progress=False), ref)
    assert verify(out).ok


def test_unwritable_directory_when_the_run_is_created(tmp_path, ref, monkeypatch):
    out = tmp_path / "run"
    _failing_writes(monkeypatch, 0, errno.EACCES)
    with pytest.raises(RunError, match="cannot create the run directory.*Permission denied"):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    _same(g.train(CFG, out, progress=False), ref)  # the same --out starts it once the problem is fixed


def test_unwritable_directory_on_resume_is_a_clean_error(tmp_path, ref, monkeypatch):
    out = tmp_path / "run"
    _failing_writes(monkeypatch, START_WRITES + len(FLUSH_FILES) * 2)
    with pytest.raises(RunError):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    _failing_writes(monkeypatch, 0, errno.EROFS, persist=True)  # a read-only file system
    with pytest.raises(RunError, match="Read-only file system"):
        g.resume(out, progress=False)
    monkeypatch.undo()
    assert np.array_equal(_load_clean(out).epochs, ref.epochs[:4])
    _same(g.resume(out, progress=False), ref)


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root from writing")
def test_shard_directory_made_read_only_mid_run(tmp_path, ref, monkeypatch):
    out = tmp_path / "run"
    real_flush, seen = CheckpointWriter.flush, []

    def flush(self, **kw):
        seen.append(1)
        if len(seen) == 2:
            os.chmod(self.shard_dir, 0o555)
        return real_flush(self, **kw)

    monkeypatch.setattr(CheckpointWriter, "flush", flush)
    try:
        with pytest.raises(RunError, match="Permission denied"):
            g.train(CFG, out, progress=False)
    finally:
        os.chmod(out / "shards", 0o755)
    monkeypatch.undo()
    assert np.array_equal(_load_clean(out).epochs, ref.epochs[:2])
    _same(g.resume(out, progress=False), ref)


def test_cli_file_size_limit_is_a_one_line_error_and_resumable(tmp_path, ref):
    """A real kernel error: under RLIMIT_FSIZE the first shard write fails with EFBIG."""
    out = tmp_path / "run"

    def limit():  # CPython ignores SIGXFSZ, so the write fails with EFBIG instead of killing it
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    res = subprocess.run([PY, "-m", "grokinterp", "train", "--preset", "tiny", "--epochs", "60", "--every", "10",
                          "--log-early", "0", "--flush-every", "2", "--eval-every", "10", "--no-progress",
                          "--out", str(out)], preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr
    assert "File too large" in res.stderr and "resume" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert len(_load_clean(out).epochs) == 0 and not list(out.rglob(".*.tmp"))
    _same(g.resume(out, progress=False), ref)
    assert verify(out).ok
