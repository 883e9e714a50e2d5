"""The public write API of a run directory: creating a run, and dense checkpoints flushed as shards.

:func:`prepare_out_dir` decides whether a directory may receive a run, :func:`start_run` writes
the immutable files (the split, then ``run.json``), and :class:`CheckpointWriter` owns every
write after that — the trainer and the legacy importer both write through it.

:class:`CheckpointWriter` owns every write into a run directory after it is created. Snapshots
are copied into preallocated device tensors ``[flush_every, *shape]`` (no host sync); a flush
moves the buffer to the host once and writes, each atomically and in this order:

1. ``shards/ckpt_<first>_<last>.safetensors`` — every parameter stacked ``[n, ...]`` plus
   ``epochs`` (int64 ``[n]``);
2. ``metrics.csv`` — one row per epoch trained so far;
3. ``state.safetensors`` — parameters, AdamW moments and step, RNG state, and the epoch to resume
   from (in the header metadata);
4. ``progress.json`` — epoch reached, checkpoints written, finished or not;
5. ``manifest.json`` — size and digests of every file above and of ``run.json`` / ``split``.

Before step 1 the manifest is rewritten with a ``pending`` record of the files the flush is about
to write (their sizes and digests are known: every file is built in memory first), so a reader can
tell a file written by a flush that is under way or was killed (it matches the record) from damage
(:mod:`grokinterp.store.integrity`). A crash between two steps leaves the previous flush's files
plus some of the new ones, all authentic; shards written after the state they belong to are
dropped when the run resumes. A flush that fails (full disk, unwritable directory) removes the
shard it had just written if the state was not updated, rewrites the manifest if it can, and
raises :class:`RunError`. A writer holding the run lock (:mod:`grokinterp.store.lock`) checks before
each flush that the lock is still its own, and stops without writing otherwise.

The manifest never re-blesses damage: files written by this writer are hashed from the bytes it
wrote; every other file keeps the entry recorded for it (a file the manifest records twice — as
committed and in an interrupted flush's record — keeps the entry it matches), so a file damaged on
disk stays flagged by ``grokinterp verify`` even after the run resumes; a file that no manifest
records is never listed; a listed shard that vanished stays listed unless the writer deleted it itself.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save as st_save
from torch import Tensor

from ..config import FORMAT_VERSION, RunConfig
from ..errors import RunError
from . import layout as _io
from .integrity import Manifest, entry_matches, load_manifest
from .lock import RunLock, acquire

__all__ = ["CheckpointWriter", "METRIC_COLUMNS", "STEP_COLUMN", "metrics_frame", "run_metadata", "start_run", "prepare_out_dir",
           "check_out_dir", "claim_run_dirs", "RunClaim"]

#: Columns every ``metrics.csv`` has, in this order (NaN where a metric was not recorded at that
#: epoch). Callbacks may add columns after them (the live measures do); readers keep those extra
#: columns and must not require them (runs without them stay readable).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
#: Extra column of a minibatch run's ``metrics.csv`` (``train.batch_size`` set): the optimizer steps
#: taken before the row's epoch, ``epoch · steps_per_epoch`` (the step its checkpoint labels count
#: when ``checkpoints.unit`` is ``step``). Full-batch runs, where a step is an epoch, have none.
STEP_COLUMN = "step"


def _immutable(rel: str) -> bool:
    """Files written once and never rewritten in place (their manifest entries are carried over)."""
    return rel in (_io.RUN_JSON, _io.SPLIT_FILE) or rel.startswith(_io.SHARD_DIR + "/")



def metrics_frame(arrays: dict[str, np.ndarray], upto: int) -> pd.DataFrame:
    """The metrics table of epochs ``0 .. upto - 1``: :data:`METRIC_COLUMNS`, then any other
    columns of ``arrays`` in their order (numbers, or texts with ``None`` where not recorded)."""
    cols = {"epoch": np.arange(upto, dtype=np.int64)}
    for name in METRIC_COLUMNS[1:]:
        cols[name] = arrays[name][:upto]
    for name, values in arrays.items():
        if name not in cols:
            cols[name] = values[:upto]
            if name == STEP_COLUMN and values.dtype.kind == "f" and np.isfinite(values[:upto]).all():
                cols[name] = values[:upto].astype(np.int64)
    return pd.DataFrame(cols)


class CheckpointWriter:
    """Buffers snapshots on the training device and flushes shards, metrics and state.

    Args:
        run_dir: the run directory (already holding ``run.json`` and the split).
        shapes: parameter name → shape.
        flush_every: snapshots per shard.
        device: where the buffer lives (the training device).
        buffered: keep a snapshot buffer (default). ``False``: the caller buffers snapshots itself
            (a stack of runs keeps one buffer for all of them) and hands each shard over with
            :meth:`stage` before :meth:`flush`.
        dtype: of the buffer, so of the shards (``train.dtype``: float32, or float64 stored as ``F64``).
    """

    def __init__(self, run_dir: Path, shapes: dict[str, tuple[int, ...]], flush_every: int, device: torch.device,
                 *, buffered: bool = True, dtype: torch.dtype = torch.float32):
        self.run_dir = Path(run_dir)
        self.shard_dir = self.run_dir / _io.SHARD_DIR
        try:
            self.shard_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise RunError(f"{self.shard_dir}: cannot create the shard directory ({e.strerror or e})") from e
        self.capacity = flush_every
        self.buffer = ({name: torch.empty((flush_every, *shape), device=device, dtype=dtype)
                        for name, shape in shapes.items()} if buffered else {})
        self._staged: dict[str, Tensor] | None = None
        self.epochs: list[int] = []
        self.lock = None  # a held grokinterp.store.lock.RunLock, checked before each flush (fencing)
        # List files no manifest records, hashing them as they are (a resume the user chose to trust,
        # e.g. of a run an older release left mid-flush); never by default: it would bless damage.
        self.adopt_unlisted = False
        self._written: dict[str, dict[str, Any]] = {}  # relpath -> manifest entry of the bytes written
        self._dropped: set[str] = set()  # relpaths this writer deleted on purpose
        self.n_written = 0
        self.removed_temps = self._remove_stale_temps()

    def _remove_stale_temps(self) -> list[str]:
        """Delete temporary files left by a write that was killed before its rename."""
        removed = []
        for d in (self.run_dir, self.shard_dir):
            for path in d.glob(".*.tmp"):
                try:
                    path.unlink()
                    removed.append(path.relative_to(self.run_dir).as_posix())
                except OSError:
                    pass
        return removed

    def write_file(self, rel: str, data: bytes, entry: dict[str, Any] | None = None) -> None:
        """Write one run file atomically and remember the size and digests of what was written."""
        _io.write_atomic(self.run_dir / rel, data)
        self._written[rel] = entry if entry is not None else _io.digest_entry(data)
        self._dropped.discard(rel)

    @property
    def full(self) -> bool:
        return len(self.epochs) >= self.capacity

    def snapshot(self, epoch: int, params: dict[str, Tensor]) -> None:
        """Copy the parameters into the buffer (device to device, asynchronous on CUDA)."""
        i = len(self.epochs)
        with torch.no_grad():
            for name, buf in self.buffer.items():
                buf[i].copy_(params[name])
        self.epochs.append(epoch)

    def stage(self, epochs: list[int], tensors: dict[str, Tensor]) -> None:
        """Hand over the next shard's snapshots, buffered by the caller: ``{name: [len(epochs), ...]}``
        (an unbuffered writer's alternative to :meth:`snapshot`)."""
        self.epochs = [int(e) for e in epochs]
        self._staged = tensors

    def shard_payload(self) -> tuple[str, bytes]:
        """The buffered (or staged) snapshots as one shard file: ``(relative path, bytes)``; empties the
        buffer."""
        n = len(self.epochs)
        if self._staged is not None:
            tensors = {name: t.detach().to("cpu").contiguous() for name, t in self._staged.items()}
            self._staged = None
        else:
            tensors = {name: buf[:n].detach().to("cpu").contiguous() for name, buf in self.buffer.items()}
        tensors["epochs"] = torch.tensor(self.epochs, dtype=torch.int64)
        rel = f"{_io.SHARD_DIR}/{_io.shard_name(self.epochs[0], self.epochs[-1])}"
        data = st_save(tensors, metadata={"format": "grokinterp-shard"})
        self.n_written += n
        self.epochs = []
        return rel, data

    def write_shard(self) -> str:
        """Write the buffered snapshots as one shard (atomically); returns its relative path."""
        rel, data = self.shard_payload()
        self.write_file(rel, data)
        return rel

    def flush(
        self,
        *,
        resume_epoch: int,
        finished: bool,
        metrics: dict[str, np.ndarray],
        state: dict[str, Tensor],
        state_meta: dict[str, str],
        progress: dict[str, Any],
    ) -> None:
        """Write buffered snapshots, then metrics, state, progress and manifest (each atomic), after
        recording them as pending in the manifest."""
        if self.lock is not None:
            self.lock.check()
        payloads: list[tuple[str, bytes]] = []
        if self.epochs:
            payloads.append(self.shard_payload())
        payloads.append((_io.METRICS_CSV, self.metrics_bytes(metrics, resume_epoch + 1 if finished else resume_epoch)))
        cpu_state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        meta = {**state_meta, "resume_epoch": str(resume_epoch), "finished": json.dumps(finished)}
        payloads.append((_io.STATE_FILE, st_save(cpu_state, metadata=meta)))
        payloads.append((_io.PROGRESS_JSON, (json.dumps(progress, indent=2) + "\n").encode()))
        entries = {rel: _io.digest_entry(data) for rel, data in payloads}
        new_shard = payloads[0][0] if payloads[0][0].startswith(_io.SHARD_DIR + "/") else None
        state_written = False
        try:
            self.write_manifest(pending={"epoch": resume_epoch, "files": entries})
            for rel, data in payloads:
                self.write_file(rel, data, entries[rel])
                state_written = state_written or rel == _io.STATE_FILE
            self.write_manifest()
        except OSError as e:
            # Keep the last good state: a shard newer than the state on disk would be dropped on
            # resume anyway; remove it now (it frees space) and describe the disk in the manifest.
            if new_shard is not None and not state_written and (self.run_dir / new_shard).exists():
                try:
                    os.unlink(self.run_dir / new_shard)
                    self._written.pop(new_shard, None)
                    self._dropped.add(new_shard)
                except OSError:
                    pass
            try:
                self.write_manifest()
            except OSError:
                pass
            raise RunError(
                f"{self.run_dir}: writing checkpoints failed ({e.strerror or e}); the run keeps the state of its "
                f"last successful flush and can be resumed once the problem is fixed"
            ) from e

    @staticmethod
    def metrics_bytes(metrics: dict[str, np.ndarray], upto: int) -> bytes:
        """``metrics.csv`` with epochs ``0 .. upto - 1`` of the per-epoch arrays."""
        buf = io.StringIO()
        metrics_frame(metrics, upto).to_csv(buf, index=False)
        return buf.getvalue().encode()

    def write_metrics(self, metrics: dict[str, np.ndarray], upto: int) -> None:
        """``metrics.csv`` with epochs ``0 .. upto - 1`` of the per-epoch arrays (atomically)."""
        self.write_file(_io.METRICS_CSV, self.metrics_bytes(metrics, upto))

    def write_progress(self, progress: dict[str, Any]) -> None:
        """``progress.json`` (atomically)."""
        self.write_file(_io.PROGRESS_JSON, (json.dumps(progress, indent=2) + "\n").encode())

    def previous_manifest(self) -> Manifest:
        """The manifest on disk (empty if it is missing or unreadable)."""
        try:
            return load_manifest(self.run_dir)
        except RunError:
            return Manifest({}, {}, None, None)

    def _recorded_entry(self, rel: str, prev: Manifest) -> dict[str, Any] | None:
        """The entry a file this writer did not write keeps: the one recorded for it (never re-hashed
        into a new one); of a committed and a pending record, the one the file matches."""
        cands = [e for e in (prev.files.get(rel), prev.pending.get(rel)) if e is not None]
        if len(cands) == 2:
            try:
                buf = _io.map_file(self.run_dir / rel, self.run_dir)
                for entry in cands:
                    if entry_matches(entry, buf):
                        return entry
            except RunError:
                pass
        return cands[0] if cands else None

    def write_manifest(self, pending: dict[str, Any] | None = None) -> None:
        """Record size and digests of every run file (see the module notes: damage is never re-blessed);
        ``pending``: ``{"epoch", "files"}`` of a flush about to write those files."""
        prev = self.previous_manifest()
        files = {}
        for path in sorted(self.run_dir.rglob("*")):
            if path.name.startswith(".") or path.name == _io.MANIFEST_JSON or not path.is_file():
                continue
            rel = path.relative_to(self.run_dir).as_posix()
            if rel in _io.DERIVED_FILES:
                continue
            entry = self._written.get(rel) or self._recorded_entry(rel, prev)
            if entry is None and self.adopt_unlisted:
                try:
                    entry = _io.digest_entry(_io.read_file(path, self.run_dir))
                except RunError:  # not a regular file inside the run: never listed
                    entry = None
            if entry is not None:
                files[rel] = entry
        for rel, entry in prev.files.items():  # a listed file that vanished stays listed (verify reports it)
            if rel not in files and _immutable(rel) and rel not in self._dropped:
                files[rel] = entry
        data: dict[str, Any] = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
        if pending is not None:
            data["pending"] = {"epoch": int(pending["epoch"]), "files": dict(sorted(pending["files"].items()))}
        _io.write_json_atomic(self.run_dir / _io.MANIFEST_JSON, data)

    def drop_shards_after(self, epoch: int) -> list[str]:
        """Delete shards holding epochs after ``epoch`` (written after the state being resumed)."""
        dropped = []
        prev = self.previous_manifest()
        listed = [rel.split("/", 1)[1] for rel in (*prev.files, *prev.pending) if rel.startswith(_io.SHARD_DIR + "/")]
        on_disk = [path.name for path in self.shard_dir.glob("ckpt_*.safetensors")]
        for name in sorted(set(listed) | set(on_disk)):
            span = _io.shard_span(name)
            if span is None or span[1] <= epoch:
                continue
            rel = f"{_io.SHARD_DIR}/{name}"
            if name in on_disk:
                try:
                    os.unlink(self.shard_dir / name)
                except OSError as e:
                    raise RunError(f"{self.shard_dir / name}: cannot remove a shard written after the saved "
                                   f"state ({e.strerror or e})") from e
                dropped.append(name)
            self._written.pop(rel, None)
            self._dropped.add(rel)
        return dropped


# -- creating a run directory -----------------------------------------------------------------------
def run_metadata(config: RunConfig, device: torch.device, preset: str | None, n_train: int, n_test: int) -> dict:
    """The contents of ``run.json``: config, seeds, sizes, versions and the device; ``preset`` only when
    one was named (``grokinterp train --preset``, a sweep spec), not ``null`` for a config built in Python."""
    import platform
    import time

    from .. import __version__

    return {
        "kind": _io.RUN_KIND,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        **({"preset": preset} if preset is not None else {}),  # a config built in Python names no preset
        "seeds": {"split_seed": config.task.split_seed, "init_seed": config.model.init_seed},
        "n_train": n_train,
        "n_test": n_test,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "grokinterp": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": {"type": device.type, "name": _device_name(device), "torch_threads": torch.get_num_threads()},
    }


def _device_name(device: torch.device) -> str:
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def start_run(out: Path, info: dict[str, Any], train_pairs: np.ndarray, test_pairs: np.ndarray) -> None:
    """Write the immutable files of a new run: the split, then ``run.json``, each atomically, between a
    manifest recording them as pending and one listing them.

    ``run.json`` comes last: without it the directory is not a run, and a ``train`` killed in
    between may start it again.
    """
    split = st_save({"train_pairs": torch.from_numpy(np.asarray(train_pairs, dtype=np.int64)),
                     "test_pairs": torch.from_numpy(np.asarray(test_pairs, dtype=np.int64))},
                    metadata={"pair_index": "a * p + b"})
    run_json = (json.dumps(info, indent=2, sort_keys=False) + "\n").encode()
    entries = {_io.SPLIT_FILE: _io.digest_entry(split), _io.RUN_JSON: _io.digest_entry(run_json)}
    try:
        out.mkdir(parents=True, exist_ok=True)
        _io.write_json_atomic(out / _io.MANIFEST_JSON, {"algorithm": "sha256", "files": {},
                                                        "pending": {"epoch": 0, "files": entries}})
        _io.write_atomic(out / _io.SPLIT_FILE, split)
        _io.write_atomic(out / _io.RUN_JSON, run_json)
        _io.write_json_atomic(out / _io.MANIFEST_JSON, {"algorithm": "sha256", "files": dict(sorted(entries.items()))})
    except OSError as e:
        raise RunError(f"{out}: cannot create the run directory ({e.strerror or e})") from e


def check_out_dir(out: Path, config: RunConfig, overwrite: bool) -> str:
    """What ``train`` may do with ``out``, deciding without changing anything: ``new`` (absent, empty,
    or what a ``train`` killed before writing ``run.json`` left), ``same`` (a run of the same config:
    resume it) or ``replace`` (a different run, and ``overwrite``). Raises otherwise.

    A directory that is not a readable grokinterp run is never deleted or reused.
    """
    _io.check_path_length(out, "--out")
    try:
        if not out.exists():
            return "new"
        if not out.is_dir():
            raise RunError(f"{out}: exists and is not a directory")
        run_json = out / _io.RUN_JSON
        if not os.path.lexists(run_json):
            if not creation_leftovers(out):
                raise RunError(f"{out}: directory is not empty and holds no grokinterp run; choose another --out")
            return "new"
    except OSError as e:
        raise RunError(f"{out}: cannot use it as a run directory ({e.strerror or e})") from None
    if not _io.looks_like_run(out):  # never delete or reuse a directory we cannot recognise
        raise RunError(f"{out}: holds a {_io.RUN_JSON} that is not a readable grokinterp run's; refusing to "
                       f"touch it (choose another output directory)")
    info = _io.read_json(run_json, "run metadata", out)
    if _same_config(info.get("config"), config):
        return "same"
    if overwrite:
        return "replace"
    raise RunError(f"{out}: already holds a different run; pass --overwrite (overwrite=True) to replace it, "
                   f"or choose another output directory")


@dataclass(eq=False)
class RunClaim:
    """Run directories held for writing (:func:`claim_run_dirs`).

    Attributes:
        locks: the directories' :class:`~grokinterp.store.lock.RunLock` s, in order (released on leaving).
        decisions: :func:`check_out_dir`'s decision for each, made again under its lock (another
            process may have written it meanwhile): ``new``, ``same`` or ``replace``.
        wrote: set by the caller before it writes the files of new runs into ``dirs``.
        started: set by the caller once training (or a resume) began: from then on everything
            stays (a stopped run is resumable), whatever happens.
    """

    locks: list[RunLock]
    decisions: list[str]
    wrote: bool = False
    started: bool = False


@contextmanager
def claim_run_dirs(outs: Sequence[Path], configs: Sequence[RunConfig], overwrite: bool) -> Iterator[RunClaim]:
    """Create and lock ``outs`` for the runs of ``configs``; the one place trainers take their
    directories (:func:`grokinterp.train`, :func:`grokinterp.training.stacked.train_stacked`).

    Each directory is created and locked (:func:`~grokinterp.store.lock.acquire`: a directory another
    writer holds is refused, naming the holder), then checked again under its lock. On leaving,
    the locks are released, and when training never started, nothing the call made stays: runs it
    began writing into existing directories are cleared, and directories it created are removed —
    wholly when it found them empty under its lock, otherwise only if they are empty (it never
    deletes what another process wrote into them in between).

    Raises:
        RunError: a directory cannot be created, is locked by another writer, or holds a different
            run (without ``overwrite``) — before anything is written.
    """
    outs = [Path(o) for o in outs]
    created = [not os.path.lexists(o) for o in outs]
    locks: list[RunLock] = []
    decisions: list[str] = []
    claim: RunClaim | None = None
    try:
        for o in outs:
            try:
                o.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunError(f"{o}: cannot create the run directory ({e.strerror or e})") from None
            locks.append(acquire(o, "train"))
        for o, c in zip(outs, configs):
            decisions.append(check_out_dir(o, c, overwrite))
        claim = RunClaim(list(locks), list(decisions))
        yield claim
    finally:
        started = claim is not None and claim.started
        if not started and claim is not None and claim.wrote:  # take back what was written
            for o, new in zip(outs, created):
                if not new:
                    try:
                        clear_run_dir(o)
                    except RunError:
                        pass
        for lock in locks:
            lock.release()
        if not started:
            for i, (o, new) in enumerate(zip(outs, created)):
                if not new:
                    continue
                if i < len(decisions) and decisions[i] == "new":  # empty when we held its lock: all ours
                    shutil.rmtree(o, ignore_errors=True)
                else:
                    try:
                        o.rmdir()
                    except OSError:
                        pass


def clear_run_dir(out: Path) -> None:
    """Remove everything in ``out`` except the run lock (the caller holds it)."""
    try:
        for entry in out.iterdir():
            if entry.name.startswith(_io.LOCK_FILE):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    except OSError as e:
        raise RunError(f"{out}: cannot remove the run it held ({e.strerror or e})") from e


def prepare_out_dir(out: Path, config: RunConfig, overwrite: bool) -> str:
    """``new``, ``same`` (a run of the same config is already there) or raise; ``overwrite`` clears a run.

    A directory that is not a readable grokinterp run is never deleted or reused. (``train`` calls
    :func:`check_out_dir` and :func:`clear_run_dir` itself, under the run lock.)
    """
    decision = check_out_dir(out, config, overwrite)
    if decision == "replace":
        clear_run_dir(out)
        return "new"
    return decision


def _same_config(existing: Any, config: RunConfig) -> bool:
    """Whether a stored config (possibly from before some fields existed) describes ``config``."""
    try:
        return RunConfig.from_dict(existing).to_dict() == config.to_dict()
    except (TypeError, ValueError):  # ConfigError included: an unreadable config is "not the same"
        return False


def creation_leftovers(out: Path) -> bool:
    """Whether ``out`` holds only what a ``train`` killed before writing ``run.json`` leaves behind
    (the split, the first manifest, temporary files, the run lock), or nothing."""
    for entry in out.iterdir():
        name = entry.name
        if name.startswith(_io.LOCK_FILE) or (name.startswith(".") and name.endswith(".tmp")):
            continue
        if name in (_io.SPLIT_FILE, _io.MANIFEST_JSON) and entry.is_file() and not entry.is_symlink():
            continue
        return False
    return True
