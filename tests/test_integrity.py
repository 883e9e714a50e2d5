"""Integrity: the manifest lists every file with size and SHA-256; `grokinterp verify` finds any damage."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from _helpers import cli as _cli

import grokinterp as g
from grokinterp.errors import RunError
from grokinterp.store import layout as _io
from grokinterp.store.integrity import read_manifest, verify
from grokinterp.store.writer import CheckpointWriter

PY = sys.executable
CFG = g.make_config("tiny", epochs=40, every=10, log_early=0, flush_every=2, eval_every=10)
# Writes of a run's creation (manifest with the pending record, split, run.json, manifest) and of a
# flush (manifest with the pending record, shard, metrics, state, progress, manifest).
START_WRITES, FLUSH_WRITES = 4, 6


class _Crash(BaseException):
    """Stands for the process dying at a write (no except clause of the package catches it)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return g.train(CFG, tmp_path_factory.mktemp("integrity") / "run", progress=False).path


@pytest.fixture
def run_dir(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _crash_at_write(monkeypatch, n: int, after: bool = False):
    real, count = _io.write_atomic, [0]

    def patched(path, data):
        count[0] += 1
        if count[0] - 1 == n:
            if after:
                real(path, data)
            raise _Crash
        return real(path, data)

    monkeypatch.setattr(_io, "write_atomic", patched)


def test_every_file_is_listed_and_verifies(run_dir):
    files = read_manifest(run_dir)
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk
    assert {"run.json", "split.safetensors", "metrics.csv", "state.safetensors", "progress.json"} <= on_disk
    for rel, entry in files.items():
        assert entry["size"] == (run_dir / rel).stat().st_size
    report = verify(run_dir)
    assert report.ok and report.n_listed == len(files) and report.problems() == []
    res = _cli("verify", str(run_dir))
    assert res.returncode == 0 and "OK" in res.stdout


def test_each_missing_truncated_altered_or_unlisted_file_is_reported(run_dir):
    shards = sorted((run_dir / "shards").iterdir())
    shards[0].unlink()  # missing
    state = run_dir / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])  # truncated
    raw = bytearray((run_dir / "run.json").read_bytes())
    raw[10] ^= 0x01
    (run_dir / "run.json").write_bytes(bytes(raw))  # altered, same size
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("junk\n")  # altered, longer
    (run_dir / "shards" / "notes.txt").write_text("x")  # unlisted
    (run_dir / ".metrics.csv.abc.tmp").write_text("half")  # a killed write's leftover: harmless
    report = verify(run_dir)
    assert not report.ok
    assert report.missing == (f"shards/{shards[0].name}",)
    assert report.truncated == ("state.safetensors",) and "1000 of" in report.details["state.safetensors"]
    assert set(report.altered) == {"run.json", "metrics.csv"}
    assert report.details["run.json"] == "SHA-256 differs"
    assert report.unlisted == ("shards/notes.txt",) and report.temporary == (".metrics.csv.abc.tmp",)
    res = _cli("verify", str(run_dir))
    assert res.returncode == 1
    for line in (f"missing: shards/{shards[0].name}", "truncated: state.safetensors", "altered: run.json",
                 "altered: metrics.csv", "unlisted: shards/notes.txt"):
        assert line in res.stdout
    data = json.loads(_cli("verify", str(run_dir), "--json").stdout)
    assert data["ok"] is False and data["truncated"] == ["state.safetensors"]


def test_a_file_of_the_wrong_size_is_reported_without_hashing_it(run_dir, monkeypatch):
    import time

    from grokinterp.store import integrity

    shard = sorted((run_dir / "shards").iterdir())[0]
    rel = f"shards/{shard.name}"
    with open(shard, "r+b") as f:
        f.truncate(16 << 30)  # a sparse 16 GB shard: hashing it took 48 s, the loader refuses it by size at once
    real = integrity._hash_file

    def hash_file(path, root):
        assert path.name != shard.name, "hashed a file whose size already tells it is damaged"
        return real(path, root)

    monkeypatch.setattr(integrity, "_hash_file", hash_file)
    t0 = time.perf_counter()
    report = verify(run_dir)
    assert time.perf_counter() - t0 < 10
    assert report.altered == (rel,) and report.details[rel].startswith(f"{16 << 30} bytes, recorded ")
    with open(shard, "r+b") as f:
        f.truncate(100)
    report = verify(run_dir)
    assert report.truncated == (rel,) and report.details[rel].startswith("100 of ")


def test_missing_or_malformed_manifest_is_a_clean_error(run_dir, tmp_path):
    manifest = run_dir / "manifest.json"
    good = json.loads(manifest.read_text())
    for bad, match in [({"algorithm": "md5", "files": {}}, "unsupported hash"),
                       ({"files": {}}, "exactly"),
                       ({"algorithm": "sha256", "files": {"../../etc/passwd": {"size": 1, "sha256": "0" * 64}}},
                        "inside the run"),
                       ({"algorithm": "sha256", "files": {"run.json": {"size": -1, "sha256": "0" * 64}}}, "run.json"),
                       ({"algorithm": "sha256", "files": {"run.json": {"size": 1, "sha256": "xyz"}}}, "64 hex")]:
        manifest.write_text(json.dumps(bad))
        with pytest.raises(RunError, match=match):
            verify(run_dir)
    manifest.write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        verify(run_dir)
    manifest.unlink()
    res = _cli("verify", str(run_dir))
    assert res.returncode == 2 and "manifest is missing" in res.stderr and "Traceback" not in res.stderr
    manifest.write_text(json.dumps(good))
    assert verify(run_dir).ok
    assert _cli("verify", str(tmp_path / "nope")).returncode == 2


def test_manifest_is_complete_after_every_flush(tmp_path, monkeypatch):
    real, reports = CheckpointWriter.write_manifest, []

    def checked(self, pending=None):
        real(self, pending)
        reports.append((pending is not None, verify(self.run_dir)))

    monkeypatch.setattr(CheckpointWriter, "write_manifest", checked)
    g.train(CFG, tmp_path / "run", progress=False)
    # each of the 3 flushes: the manifest with the flush's record first, then the complete one
    assert [p for p, _ in reports] == [True, False] * 3
    assert all(r.ok and not r.interrupted for _, r in reports), [str(r) for _, r in reports if not r.ok]
    assert {r.status for _, r in reports} == {"training"}  # verified while this process held the lock


def test_resume_never_re_blesses_earlier_damage(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _crash_at_write(monkeypatch, START_WRITES + FLUSH_WRITES * 2)  # dies at the third flush
    with pytest.raises(_Crash):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    first, second = sorted((out / "shards").iterdir())
    raw = bytearray(first.read_bytes())
    raw[-5] ^= 0xFF  # a flipped bit in the tensor data: the loader cannot see it, the hash can
    first.write_bytes(bytes(raw))
    second.unlink()
    g.resume(out, progress=False)
    report = verify(out)
    assert report.altered == (f"shards/{first.name}",) and report.missing == (f"shards/{second.name}",)
    assert not report.unlisted and not report.truncated


def test_a_run_killed_mid_flush_says_so_and_resume_fixes_it(tmp_path, monkeypatch):
    out = tmp_path / "run"
    # second flush: its record, then shard, metrics and state written; killed before progress
    _crash_at_write(monkeypatch, START_WRITES + FLUSH_WRITES + 3, after=True)
    with pytest.raises(_Crash):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    report = verify(out)
    # the files of the interrupted flush match its record: authentic, not damage
    assert report.ok and report.status == "interrupted" and not report.unlisted and not report.altered
    assert len(report.interrupted) == 3 and {"metrics.csv", "state.safetensors"} < set(report.interrupted)
    assert any("interrupted" in n and "--resume" in n for n in report.notes)
    res = _cli("verify", str(out))
    assert res.returncode == 0 and "--resume" in res.stdout and "interrupted flush" in res.stdout
    run = g.load_run(out)  # loads without a warning: the files are the flush's own
    assert run.problems == [] and len(run.epochs) == 4
    g.resume(out, progress=False)
    report = verify(out)
    assert report.ok and not report.interrupted and report.status == "finished"


def test_an_older_release_killed_mid_flush_is_told_apart(tmp_path, monkeypatch):
    """Manifests of older releases have no record of a flush under way: the files newer than the
    manifest are reported (not blessed), with the hint that --resume completes the flush."""
    out = tmp_path / "run"
    _crash_at_write(monkeypatch, START_WRITES + FLUSH_WRITES + 3, after=True)
    with pytest.raises(_Crash):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    m = json.loads((out / "manifest.json").read_text())
    del m["pending"]
    (out / "manifest.json").write_text(json.dumps(m))
    report = verify(out)
    assert not report.ok and len(report.unlisted) == 1 and report.unlisted[0].startswith("shards/")
    assert set(report.altered) == {"metrics.csv", "state.safetensors"}
    assert any("--resume" in n for n in report.notes)
    res = _cli("verify", str(out))
    assert res.returncode == 1 and "--resume" in res.stdout
    # the state newer than the manifest cannot be told from a damaged one: refused, with the way out
    with pytest.raises(RunError, match="state.safetensors.*GROKINTERP_TRUST_STORAGE"):
        g.resume(out, progress=False)
    g.resume(out, progress=False, check=False)
    assert verify(out).ok


def test_a_run_stopped_before_its_first_flush(tmp_path, monkeypatch):
    """The new writer's manifest exists from the start; an older release's run had none: both are
    reported as not started, with the hint to resume, not as "manifest is missing"."""
    out = tmp_path / "run"
    _crash_at_write(monkeypatch, START_WRITES)  # killed at the first flush's first write
    with pytest.raises(_Crash):
        g.train(CFG, out, progress=False)
    monkeypatch.undo()
    report = verify(out)
    assert report.ok and report.status == "not started" and any("--resume" in n for n in report.notes)
    (out / "manifest.json").unlink()  # as an older release left it
    res = _cli("verify", str(out))
    assert res.returncode == 0 and "before its first flush" in res.stdout and "--resume" in res.stdout
    assert g.load_run(out).problems == []
    g.resume(out, progress=False)
    assert verify(out).ok
