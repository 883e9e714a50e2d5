"""The manifest of a run directory: the deep check (:func:`verify`) and the checks on read (:class:`ReadChecker`).

``manifest.json`` lists every file of the run except itself and dot-files::

    {"algorithm": "sha256",
     "files":   {relpath: {"size": bytes, "sha256": hex, "xxh3_128": hex}},
     "pending": {"epoch": E, "files": {relpath: {...}}}}      # only while a flush is under way

A flush first rewrites the manifest with a ``pending`` section — the size and digests of every file
it is about to write — then writes those files, then rewrites the manifest without it (each write
atomic). A file that differs from its ``files`` entry but matches its ``pending`` entry was written
by a flush that is under way (a live run) or was interrupted (a killed run): it is authentic, and
``grokinterp train --resume`` completes the flush. Anything else that differs is damage.

Two digests: SHA-256 (always; :func:`verify` re-hashes every file with it) and xxh3-128 (written
since release 0.2; the checks on read use it, ~10× faster here). Both detect damage — bit flips,
truncation, swapped or replaced files, edited values — with certainty for practical purposes;
neither protects against a deliberate rewrite of a file *and* the manifest (there are no
signatures). Entries without xxh3-128 (runs of older releases) are checked with SHA-256.

Example:
    >>> report = verify("checkpoints/tiny")                     # doctest: +SKIP
    >>> report.ok, report.missing, report.altered               # doctest: +SKIP
    (True, (), ())
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import LIMITS
from ..errors import RunError
from . import layout as _io

__all__ = ["Manifest", "ReadChecker", "VerifyReport", "verify", "read_manifest", "load_manifest",
           "last_flush_complete", "entry_matches", "never_flushed"]

_HEX = {"sha256": re.compile(r"[0-9a-f]{64}"), "xxh3_128": re.compile(r"[0-9a-f]{32}")}


@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json``.

    Attributes:
        files: the committed entries, ``{relpath: {"size", "sha256"[, "xxh3_128"]}}``.
        pending: entries of the files a flush under way (or interrupted) is writing.
        pending_epoch: the epoch that flush saves (``None`` when no flush is pending).
        stamp: identity of the manifest file when it was read (device, inode, size, mtime).
    """

    files: dict[str, dict[str, Any]]
    pending: dict[str, dict[str, Any]]
    pending_epoch: int | None
    stamp: tuple[int, ...] | None

    def entries(self, rel: str) -> list[tuple[str, dict[str, Any]]]:
        """``[("committed", entry), ("pending", entry)]`` — the entries a file may match."""
        out = []
        if rel in self.files:
            out.append(("committed", self.files[rel]))
        if rel in self.pending:
            out.append(("pending", self.pending[rel]))
        return out


def _check_entries(path: Path, files: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(files, dict):
        raise RunError(f"{path}: '{where}' must be an object")
    for rel, entry in files.items():
        if not _io.is_safe_relpath(rel) or rel == _io.MANIFEST_JSON:
            raise RunError(f"{path}: entry {rel!r} does not name a file inside the run")
        ok = (isinstance(entry, dict) and {"size", "sha256"} <= set(entry) <= set(_io.DIGESTS) | {"size"}
              and isinstance(entry["size"], int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
              and all(isinstance(entry[k], str) and _HEX[k].fullmatch(entry[k]) for k in _io.DIGESTS if k in entry))
        if not ok:
            raise RunError(f"{path}: entry {rel!r} must be {{\"size\": bytes ≥ 0, \"sha256\": 64 hex digits"
                           f"[, \"xxh3_128\": 32 hex digits]}}")
    return files


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def manifest_stamp(run_dir: str | os.PathLike) -> tuple[int, ...] | None:
    """Identity of ``manifest.json`` now (``None`` if absent): a change means it was rewritten."""
    try:
        return _stamp(os.stat(Path(run_dir) / _io.MANIFEST_JSON))
    except OSError:
        return None


def load_manifest(run_dir: str | os.PathLike) -> Manifest:
    """Parse and check ``manifest.json`` (a regular file inside the run, size-capped).

    Raises:
        RunError: the manifest is missing, not JSON, too large, or any entry is malformed (naming it).
    """
    run_dir = Path(run_dir)
    path = run_dir / _io.MANIFEST_JSON
    fd = _io.open_regular(path, run_dir, "manifest")
    try:
        stamp = _stamp(os.fstat(fd))
    finally:
        os.close(fd)
    data = _io.read_json(path, "manifest", run_dir, LIMITS.manifest_bytes)
    if not isinstance(data, dict) or not {"algorithm", "files"} <= set(data) <= {"algorithm", "files", "pending"}:
        raise RunError(f"{path}: a manifest is an object with exactly 'algorithm' and 'files' (and, during a "
                       f"flush, 'pending')")
    if data["algorithm"] != "sha256":
        raise RunError(f"{path}: unsupported hash algorithm {data['algorithm']!r} (expected 'sha256')")
    files = _check_entries(path, data["files"], "files")
    pending, epoch = {}, None
    if "pending" in data:
        pend = data["pending"]
        if not isinstance(pend, dict) or set(pend) != {"epoch", "files"} or not isinstance(pend["epoch"], int) \
                or isinstance(pend["epoch"], bool) or pend["epoch"] < 0:
            raise RunError(f"{path}: 'pending' must be {{\"epoch\": int ≥ 0, \"files\": {{...}}}}")
        pending, epoch = _check_entries(path, pend["files"], "pending.files"), pend["epoch"]
    return Manifest(files, pending, epoch, stamp)


def read_manifest(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The committed entries of ``manifest.json``: ``{relpath: {"size": int, "sha256": hex, ...}}``.

    Raises:
        RunError: the manifest is missing, not JSON, or any entry is malformed (naming it).
    """
    return load_manifest(run_dir).files


def entry_matches(entry: dict[str, Any], data: Any) -> bool:
    """Whether bytes (``None``: an empty file) have the size and digest an entry records (xxh3-128
    where the entry has it, else SHA-256)."""
    size = 0 if data is None else len(data)
    if size != entry["size"]:
        return False
    algorithm = "xxh3_128" if "xxh3_128" in entry else "sha256"
    return _io.digest_of(data, algorithm) == entry[algorithm]


def never_flushed(run_dir: str | os.PathLike) -> bool:
    """Whether a run directory shows no sign of a flush (no progress, state or shard): a run stopped
    before its first flush, which older releases left without a manifest."""
    run_dir = Path(run_dir)
    if any(os.path.lexists(run_dir / f) for f in (_io.PROGRESS_JSON, _io.STATE_FILE, _io.METRICS_CSV)):
        return False
    shard_dir = run_dir / _io.SHARD_DIR
    try:
        return not any(n.startswith("ckpt_") for n in os.listdir(shard_dir))
    except OSError:
        return True


class ReadChecker:
    """Checks the bytes a :class:`~grokinterp.store.run.Run` reads against the run's manifest.

    The manifest is read once; when a file differs from it and the manifest on disk has been
    rewritten since (a live run flushed meanwhile), it is read again before judging.

    Args:
        run_dir: the run directory.
        enabled: ``False`` turns every check off (for storage you trust); structure is still checked.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.manifest: Manifest | None = None
        self.problem: str | None = None  # why there is no usable manifest
        self._guard = threading.Lock()  # shards are checked from worker threads too
        if enabled:
            self._load()

    def _load(self) -> None:
        try:
            self.manifest, self.problem = load_manifest(self.run_dir), None
        except RunError as e:
            self.manifest, self.problem = None, str(e)

    def refresh(self) -> bool:
        """Re-read the manifest if it was rewritten since it was read; True when it changed."""
        if not self.enabled:
            return False
        with self._guard:
            now = manifest_stamp(self.run_dir)
            if now is not None and (self.manifest is None or now != self.manifest.stamp):
                self._load()
                return True
        return False

    @property
    def usable(self) -> bool:
        return self.manifest is not None

    def verdict(self, rel: str, data: Any) -> str | None:
        """``"committed"`` or ``"pending"`` when the bytes match an entry, else ``None``."""
        if self.manifest is None:
            return None
        for kind, entry in self.manifest.entries(rel):
            if entry_matches(entry, data):
                return kind
        return None

    def check(self, rel: str, data: Any, what: str = "file") -> str:
        """Check a file's bytes; returns ``"committed"``, ``"pending"`` or ``"unchecked"`` (checks off).

        Raises:
            RunError: the bytes match no entry (naming the file and how it differs), the file is not
                listed, or there is no usable manifest.
        """
        if not self.enabled:
            return "unchecked"
        if self.manifest is None:
            self.refresh()
        if self.manifest is None:
            raise RunError(f"{self.run_dir / rel}: cannot be checked: {self.problem}")
        got = self.verdict(rel, data)
        if got is None and self.refresh():
            got = self.verdict(rel, data)
        if got is not None:
            return got
        return self._mismatch(rel, data, what)

    def _mismatch(self, rel: str, data: Any, what: str) -> str:
        path = self.run_dir / rel
        entries = self.manifest.entries(rel) if self.manifest else []
        if not entries:
            raise RunError(f"{path}: {what} is not listed in the manifest (written after it, or put there from "
                           f"elsewhere): its contents cannot be checked")
        size = 0 if data is None else len(data)
        entry = entries[0][1]
        if size < entry["size"]:
            how = f"truncated: {size} of {entry['size']} bytes"
        elif size != entry["size"]:
            how = f"{size} bytes, the manifest records {entry['size']}"
        else:
            how = "its contents differ from the manifest's record"
        raise RunError(f"{path}: {what} is damaged or was replaced ({how})")


# -- verify (the deep check) ----------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        path: the run directory.
        n_listed: number of files the manifest lists.
        missing: listed files that are absent (relative paths).
        truncated: listed files shorter than recorded.
        altered: listed files of another size (longer) or another digest.
        unreadable: listed files that exist but could not be read (or are not regular files inside
            the run: a FIFO, a device, a symbolic link leading out of the run).
        unlisted: files in the run that the manifest does not list.
        temporary: leftover temporary files of interrupted writes (harmless, not a failure).
        details: relpath → one line saying what differs.
        notes: hints (an interrupted flush and how to complete it, a live run, ...).
        interrupted: files written by a flush that is under way or was interrupted: they match the
            flush's record in the manifest (authentic, not a failure).
        inconsistent: what disagrees although every file matches the manifest (a shard whose
            epochs are not those its name and the run's schedule say; checkpoints ``progress.json``
            says were written that no listed shard holds), one line each.
        status: ``finished``, ``training`` (a live writer holds the lock), ``interrupted`` (a flush
            did not complete), ``stopped`` (resumable) or ``not started`` (no flush yet).
    """

    path: Path
    n_listed: int
    missing: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()
    altered: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()
    unlisted: tuple[str, ...] = ()
    temporary: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    interrupted: tuple[str, ...] = ()
    status: str = ""
    inconsistent: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no listed file is missing or damaged, nothing is unlisted and the files agree
        with each other (files of an interrupted flush that match its record are not damage)."""
        return not (self.missing or self.truncated or self.altered or self.unreadable or self.unlisted
                    or self.inconsistent)

    def problems(self) -> list[str]:
        """One line per problem: ``"<kind>: <relpath> (<detail>)"``."""
        out = []
        for kind in ("missing", "truncated", "altered", "unreadable", "unlisted"):
            for rel in getattr(self, kind):
                detail = self.details.get(rel)
                out.append(f"{kind}: {rel}" + (f" ({detail})" if detail else ""))
        out += [f"inconsistent: {line}" for line in self.inconsistent]
        return out

    def __str__(self) -> str:
        lines = [f"run: {self.path}", f"manifest: {self.n_listed} files listed"]
        if self.status:
            lines.append(f"status: {self.status}")
        lines += self.problems()
        lines += [f"interrupted flush: {rel} (matches the flush's record)" for rel in self.interrupted]
        lines += [f"note: leftover temporary file {rel} (ignored)" for rel in self.temporary]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(("OK: every file matches the manifest" if not self.interrupted else
                      "OK: no damage; the last flush is incomplete (see the note)") if self.ok
                     else f"FAILED: {len(self.problems())} problem(s)")
        return "\n".join(lines)


def _walk(run_dir: Path) -> list[tuple[str, int]]:
    """``(relpath, st_mode)`` of the entries under ``run_dir`` that are not directories (symbolic
    links are not followed; a symlinked directory is an entry)."""
    out = []
    for root, dirs, names in os.walk(run_dir):
        dirs.sort()
        for name in sorted(names) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = Path(root) / name
            try:
                mode = os.lstat(full).st_mode
            except OSError:
                continue
            out.append((full.relative_to(run_dir).as_posix(), mode))
    return out


def _hash_file(path: Path, run_dir: Path) -> tuple[int, dict[str, str]]:
    """Size and every digest of a regular file inside the run (one pass)."""
    import xxhash

    fd = _io.open_regular(path, run_dir)
    sha, xxh = hashlib.sha256(), xxhash.xxh3_128()
    size = 0
    try:
        with os.fdopen(fd, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
                xxh.update(block)
                size += len(block)
    except OSError as e:
        raise RunError(f"{path}: cannot read: {e.strerror or e}") from None
    return size, {"sha256": sha.hexdigest(), "xxh3_128": xxh.hexdigest()}


def _size_if_unlisted(path: Path, *entries: dict[str, Any] | None) -> int | None:
    """The size of a regular file whose size is none of the entries' (damaged, known without hashing it:
    a sparse 16 GB shard took 48 s to hash), else ``None`` (hash it; not a regular file: let the hash say)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or any(e is not None and e["size"] == st.st_size for e in entries):
        return None
    return st.st_size


def _matches(entry: dict[str, Any], size: int, digests: dict[str, str]) -> bool:
    return size == entry["size"] and all(digests[k] == entry[k] for k in _io.DIGESTS if k in entry)


def _scan(run_dir: Path, manifest: Manifest) -> dict[str, Any]:
    out: dict[str, Any] = {k: [] for k in ("missing", "truncated", "altered", "unreadable", "unlisted",
                                          "temporary", "interrupted")}
    details: dict[str, str] = {}
    for rel in sorted(set(manifest.files) | set(manifest.pending)):
        committed, pending = manifest.files.get(rel), manifest.pending.get(rel)
        path = run_dir / rel
        if not os.path.lexists(path):
            if committed is not None:
                out["missing"].append(rel)
            continue  # a pending file the flush did not reach: fine
        size, digests = _size_if_unlisted(path, committed, pending), None
        if size is None:  # its size is a recorded one: only the digests can tell
            try:
                size, digests = _hash_file(path, run_dir)
            except RunError as e:
                out["unreadable"].append(rel)
                details[rel] = str(e).split(": ", 1)[-1]
                continue
            if committed is not None and _matches(committed, size, digests):
                continue
            if pending is not None and _matches(pending, size, digests):
                out["interrupted"].append(rel)
                continue
        ref = committed if committed is not None else pending
        if size < ref["size"]:
            out["truncated"].append(rel)
            details[rel] = f"{size} of {ref['size']} bytes"
        else:
            out["altered"].append(rel)
            details[rel] = (f"{size} bytes, recorded {ref['size']}" if size != ref["size"] else
                            "SHA-256 differs" if digests is not None and digests["sha256"] != ref["sha256"] else
                            "xxh3-128 differs")
            if committed is None:
                details[rel] += " (from the interrupted flush's record)"
    listed = set(manifest.files) | set(manifest.pending)
    for rel, mode in _walk(run_dir):
        name = rel.rsplit("/", 1)[-1]
        if rel == _io.MANIFEST_JSON or rel in listed or rel in _io.DERIVED_FILES:
            continue
        if name.startswith("."):
            if name.endswith(".tmp"):
                out["temporary"].append(rel)
            continue
        out["unlisted"].append(rel)
        if not stat.S_ISREG(mode):
            details[rel] = _io.describe_mode(mode)
    out["details"] = details
    return out


def _consistency(run_dir: Path, manifest: Manifest, found: dict[str, Any]) -> list[str]:
    """What the loader would refuse although every file matches the manifest: shards whose epochs
    disagree with their name and the schedule, checkpoints the progress promises that no shard holds."""
    from ..config import RunConfig

    damaged = {rel for k in ("missing", "truncated", "altered", "unreadable") for rel in found[k]}
    if _io.RUN_JSON in damaged or _io.PROGRESS_JSON in damaged:
        return []
    try:
        info = _io.read_json(run_dir / _io.RUN_JSON, "run metadata", run_dir)
        config = RunConfig.from_dict(info["config"])
    except (RunError, KeyError, TypeError, ValueError):
        return []
    schedule = None if "imported_from" in info else config.checkpoint_epochs()
    prefix = _io.SHARD_DIR + "/"
    out, covered = [], set()
    for rel in sorted(r for r in {*manifest.files, *manifest.pending} if r.startswith(prefix)):
        span = _io.shard_span(rel[len(prefix):])
        present = os.path.lexists(run_dir / rel)
        if span is None or (rel not in manifest.files and not present):
            continue
        expected = None
        if schedule is not None:
            expected = schedule[(schedule >= span[0]) & (schedule <= span[1])]
            if not len(expected) or expected[0] != span[0] or expected[-1] != span[1]:
                out.append(f"{rel}: its name does not match the run's checkpoint schedule")
                continue
            covered.update(expected.tolist())
        if present and rel not in damaged:
            try:
                arrays = _io.mmap_tensors(run_dir / rel, ["epochs"], run_dir)
                epochs = np.array(arrays["epochs"]).tolist()
            except RunError as e:
                out.append(f"{rel}: {str(e).split(': ', 1)[-1]}")
                continue
            want = expected.tolist() if expected is not None else None
            if (want is not None and epochs != want) or (want is None and (not epochs or epochs[0] != span[0]
                                                                              or epochs[-1] != span[1])):
                out.append(f"{rel}: holds checkpoints of epochs {epochs}, not those its name and the run's "
                           f"schedule say")
            if want is None:
                covered.update(epochs)
    if schedule is not None and covered:
        gaps = [e for e in schedule[schedule <= max(covered)].tolist() if e not in covered]
        if gaps:
            out.append(f"{_io.SHARD_DIR}/: no shard in the manifest holds the checkpoints at epochs {gaps[:8]}"
                       f"{' ...' if len(gaps) > 8 else ''}, between those it holds")
    prog = _progress(run_dir)
    written = prog.get("checkpoints_written")
    if isinstance(written, int) and not isinstance(written, bool) and written > 0:
        if schedule is not None:
            lost = [e for e in schedule[:written].tolist() if e not in covered and (not covered or e > max(covered))]
            if lost:
                out.append(f"{_io.PROGRESS_JSON}: says {written} checkpoints were written, but no shard in the "
                           f"manifest holds epochs {lost[:8]}{' ...' if len(lost) > 8 else ''}")
        elif len(covered) < written:
            out.append(f"{_io.PROGRESS_JSON}: says {written} checkpoints were written; the listed shards hold "
                       f"{len(covered)}")
    return out


def _progress(run_dir: Path) -> dict[str, Any]:
    try:
        prog = _io.read_json(run_dir / _io.PROGRESS_JSON, "progress file", run_dir)
    except RunError:
        return {}
    return prog if isinstance(prog, dict) else {}


def verify(run_dir: str | os.PathLike) -> VerifyReport:
    """Check every file of a run against ``manifest.json`` (re-hashing each with SHA-256 and xxh3-128).

    Args:
        run_dir: a run directory.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True only when every listed file is present with
        its recorded size and digests (or, for a flush that was interrupted, those of the flush's
        record) and no other file (besides dot-files) is present. On a live run (another process
        holds the run lock) files the writer replaces meanwhile are checked again.

    Raises:
        RunError: ``run_dir`` is not a directory, or the manifest is missing or malformed (a run
            stopped before its first flush by an older release has none: that is reported, not raised).
    """
    from .lock import holder

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    owner = holder(run_dir)
    live = owner is not None and owner.alive is not False
    tries = 20 if live else 1
    for attempt in range(tries):
        try:
            manifest = load_manifest(run_dir)
        except RunError as e:
            if os.path.lexists(run_dir / _io.MANIFEST_JSON) or not never_flushed(run_dir):
                if live and attempt + 1 < tries:
                    time.sleep(0.25)
                    continue
                raise
            if not os.path.lexists(run_dir / _io.RUN_JSON):
                raise RunError(f"{run_dir}: not a grokinterp run (no {_io.RUN_JSON}, no {_io.MANIFEST_JSON})") from e
            note = (f"the run was stopped before its first flush (no manifest yet, nothing to check); "
                    f"`grokinterp train --resume {run_dir}` starts it")
            return VerifyReport(run_dir, 0, notes=(note,), status="training" if live else "not started")
        found = _scan(run_dir, manifest)
        damaged = any(found[k] for k in ("missing", "truncated", "altered", "unreadable", "unlisted"))
        if not (damaged and live) or attempt + 1 == tries:
            break
        time.sleep(0.25)  # the live writer is replacing files: look again once it has moved on
    inconsistent = _consistency(run_dir, manifest, found)
    prog = _progress(run_dir)
    notes = []
    if live:
        status = "training"
        epoch = prog.get("epoch")
        notes.append(f"the run is being trained by {owner.describe()}; last flushed epoch: "
                     f"{epoch if epoch is not None else 'none yet'}")
    elif manifest.pending or found["interrupted"]:
        status = "interrupted"
        notes.append(f"a flush (to epoch {manifest.pending_epoch}) was interrupted: "
                     f"{len(found['interrupted'])} file(s) were written after the last complete manifest and match "
                     f"the flush's record; `grokinterp train --resume {run_dir}` completes the flush")
    elif prog.get("finished") is True:
        status = "finished"
    elif not prog and set(manifest.files) <= {_io.RUN_JSON, _io.SPLIT_FILE}:
        status = "not started"
        notes.append(f"the run was stopped before its first flush; `grokinterp train --resume {run_dir}` starts it")
    else:
        status = "stopped"
        if prog:
            notes.append(f"stopped at epoch {prog.get('epoch')}; `grokinterp train --resume {run_dir}` continues it")
    if not live and status != "finished" and any(found[k] for k in ("missing", "truncated", "altered", "unlisted")) \
            and not manifest.pending:
        notes.append("if its training was killed during a flush by an older grokinterp (whose manifests have no "
                     "record of the flush under way), files newer than the manifest are expected; "
                     f"`grokinterp train --resume {run_dir}` completes the flush and rewrites the manifest")
    listed = len(manifest.files)
    return VerifyReport(run_dir, listed, *(tuple(found[k]) for k in ("missing", "truncated", "altered", "unreadable",
                                                                       "unlisted", "temporary")),
                        found["details"], tuple(notes), tuple(found["interrupted"]), status, tuple(inconsistent))


def last_flush_complete(run_dir: str | os.PathLike) -> bool:
    """Whether the last flush ended: no flush is pending in the manifest, and the metrics, state and
    progress on disk match it."""
    run_dir = Path(run_dir)
    try:
        manifest = load_manifest(run_dir)
        if manifest.pending:
            return False
        for rel in (_io.METRICS_CSV, _io.STATE_FILE, _io.PROGRESS_JSON):
            entry = manifest.files.get(rel)
            if entry is None:
                return False
            buf = _io.map_file(run_dir / rel, run_dir)
            if not entry_matches(entry, buf):
                return False
    except RunError:
        return False
    return True
