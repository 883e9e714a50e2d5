"""Check a run directory against its manifest: which files are missing, truncated or altered.

Every flush ends by writing ``manifest.json`` (atomically): ``{"algorithm": "sha256", "files":
{relpath: {"size": bytes, "sha256": hex}}}`` for every file of the run except the manifest itself
and dot-files (temporary files of writes in progress). :func:`verify` re-reads every listed file
and compares.

Example:
    >>> report = verify("checkpoints/tiny")                     # doctest: +SKIP
    >>> report.ok, report.missing, report.altered               # doctest: +SKIP
    (True, (), ())

A run killed in the middle of a flush may hold files newer than its manifest (a shard not yet
listed, a state rewritten after the manifest was); ``grokinterp train --resume RUN`` finishes the
flush and rewrites the manifest. Damage to files written before the last manifest is never
re-blessed by later flushes (see :mod:`grokinterp.checkpoints`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RunError
from . import layout as _io
from .layout import sha256_file

__all__ = ["VerifyReport", "verify", "read_manifest", "last_flush_complete"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        path: the run directory.
        n_listed: number of files the manifest lists.
        missing: listed files that are absent (relative paths).
        truncated: listed files shorter than recorded.
        altered: listed files of another size (longer) or another SHA-256.
        unreadable: listed files that exist but could not be read.
        unlisted: files in the run that the manifest does not list.
        temporary: leftover temporary files of interrupted writes (harmless, not a failure).
        details: relpath → one line saying what differs.
        notes: hints (for example, that an unfinished run may be mid-flush).
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

    @property
    def ok(self) -> bool:
        """True when every listed file is present and intact and nothing is unlisted."""
        return not (self.missing or self.truncated or self.altered or self.unreadable or self.unlisted)

    def problems(self) -> list[str]:
        """One line per problem: ``"<kind>: <relpath> (<detail>)"``."""
        out = []
        for kind in ("missing", "truncated", "altered", "unreadable", "unlisted"):
            for rel in getattr(self, kind):
                detail = self.details.get(rel)
                out.append(f"{kind}: {rel}" + (f" ({detail})" if detail else ""))
        return out

    def __str__(self) -> str:
        lines = [f"run: {self.path}", f"manifest: {self.n_listed} files listed"]
        lines += self.problems()
        lines += [f"note: leftover temporary file {rel} (ignored)" for rel in self.temporary]
        lines += [f"note: {n}" for n in self.notes]
        lines.append("OK: every file matches the manifest" if self.ok
                     else f"FAILED: {len(self.problems())} problem(s)")
        return "\n".join(lines)


def read_manifest(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Parse and check ``manifest.json``: ``{relpath: {"size": int, "sha256": hex}}``.

    Raises:
        RunError: the manifest is missing, not JSON, or any entry is malformed (naming it).
    """
    path = Path(run_dir) / _io.MANIFEST_JSON
    data = _io.read_json(path, "manifest")
    if not isinstance(data, dict) or set(data) != {"algorithm", "files"}:
        raise RunError(f"{path}: a manifest is an object with exactly 'algorithm' and 'files'")
    if data["algorithm"] != "sha256":
        raise RunError(f"{path}: unsupported hash algorithm {data['algorithm']!r} (expected 'sha256')")
    files = data["files"]
    if not isinstance(files, dict):
        raise RunError(f"{path}: 'files' must be an object")
    for rel, entry in files.items():
        if not _io.is_safe_relpath(rel) or rel == _io.MANIFEST_JSON:
            raise RunError(f"{path}: entry {rel!r} does not name a file inside the run")
        if (not isinstance(entry, dict) or set(entry) != {"size", "sha256"} or not isinstance(entry["size"], int)
                or isinstance(entry["size"], bool) or entry["size"] < 0 or not isinstance(entry["sha256"], str)
                or not _HEX64.fullmatch(entry["sha256"])):
            raise RunError(f"{path}: entry {rel!r} must be {{\"size\": bytes ≥ 0, \"sha256\": 64 hex digits}}")
    return files



def _walk(run_dir: Path) -> list[str]:
    """Relative paths of the regular files under ``run_dir`` (symlinked directories not followed)."""
    out = []
    for root, dirs, names in os.walk(run_dir):
        dirs.sort()
        for name in sorted(names):
            full = Path(root) / name
            if full.is_file():
                out.append(full.relative_to(run_dir).as_posix())
    return out


def verify(run_dir: str | os.PathLike) -> VerifyReport:
    """Check every file of a run against ``manifest.json``.

    Args:
        run_dir: a run directory.

    Returns:
        A :class:`VerifyReport`; ``report.ok`` is True only when every listed file is present with
        its recorded size and SHA-256 and no other file (besides dot-files) is present.

    Raises:
        RunError: ``run_dir`` is not a directory, or the manifest is missing or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: no such run directory")
    files = read_manifest(run_dir)
    missing, truncated, altered, unreadable, unlisted, temporary = [], [], [], [], [], []
    details: dict[str, str] = {}
    for rel, entry in sorted(files.items()):
        path = run_dir / rel
        if not path.is_file():
            missing.append(rel)
            continue
        try:
            size = path.stat().st_size
            if size < entry["size"]:
                truncated.append(rel)
                details[rel] = f"{size} of {entry['size']} bytes"
            elif size != entry["size"]:
                altered.append(rel)
                details[rel] = f"{size} bytes, recorded {entry['size']}"
            elif sha256_file(path) != entry["sha256"]:
                altered.append(rel)
                details[rel] = "SHA-256 differs"
        except OSError as e:
            unreadable.append(rel)
            details[rel] = e.strerror or str(e)
    for rel in _walk(run_dir):
        name = rel.rsplit("/", 1)[-1]
        if rel == _io.MANIFEST_JSON or rel in files or rel in _io.DERIVED_FILES:
            continue
        if name.startswith("."):
            if name.endswith(".tmp"):
                temporary.append(rel)
            continue
        unlisted.append(rel)
    notes = []
    if missing or truncated or altered or unlisted:
        try:
            finished = _io.read_json(run_dir / _io.PROGRESS_JSON, "progress file").get("finished") is True
        except (RunError, AttributeError):
            finished = False
        if not finished:
            notes.append("the run is unfinished: if its training was killed during a flush, files newer than "
                         f"the manifest are expected; `grokinterp train --resume {run_dir}` completes the "
                         "flush and rewrites the manifest")
    return VerifyReport(run_dir, len(files), tuple(missing), tuple(truncated), tuple(altered), tuple(unreadable),
                        tuple(unlisted), tuple(temporary), details, tuple(notes))


def last_flush_complete(run_dir: str | os.PathLike) -> bool:
    """Whether the manifest matches the metrics, state and progress on disk (the last flush ended)."""
    run_dir = Path(run_dir)
    try:
        files = read_manifest(run_dir)
        for rel in (_io.METRICS_CSV, _io.STATE_FILE, _io.PROGRESS_JSON):
            entry, path = files.get(rel), run_dir / rel
            if entry is None or not path.is_file() or path.stat().st_size != entry["size"]:
                return False
            if sha256_file(path) != entry["sha256"]:
                return False
    except (RunError, OSError):
        return False
    return True
