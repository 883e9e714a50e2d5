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
5. ``manifest.json`` — size and SHA-256 of every file above and of ``run.json`` / ``split``.

A crash between two steps leaves the previous flush's files, which are consistent with each
other; shards written after the state they belong to are dropped when the run resumes. A flush
that fails (full disk, unwritable directory) removes the shard it had just written if the state
was not updated, rewrites the manifest if it can, and raises :class:`RunError`.

The manifest never re-blesses damage: files written by this writer are hashed from the bytes it
wrote; ``run.json``, the split and shards already listed keep their recorded size and hash (a
shard damaged on disk stays flagged by ``grokinterp verify`` even after the run resumes), and a
listed shard that vanished stays listed unless the writer deleted it itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
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
from .layout import sha256_file

__all__ = ["CheckpointWriter", "METRIC_COLUMNS", "metrics_frame", "run_metadata", "start_run", "prepare_out_dir"]

#: Columns every ``metrics.csv`` has, in this order (NaN where a metric was not recorded at that
#: epoch). Callbacks may add columns after them (the live measures do); readers keep those extra
#: columns and must not require them (runs without them stay readable).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def _immutable(rel: str) -> bool:
    """Files written once and never rewritten in place (their manifest entries are carried over)."""
    return rel in (_io.RUN_JSON, _io.SPLIT_FILE) or rel.startswith(_io.SHARD_DIR + "/")


def _shard_last_epoch(name: str) -> int | None:
    try:
        return int(Path(name).stem.split("_")[2])
    except (IndexError, ValueError):
        return None



def metrics_frame(arrays: dict[str, np.ndarray], upto: int) -> pd.DataFrame:
    """The metrics table of epochs ``0 .. upto - 1``: :data:`METRIC_COLUMNS`, then any other
    columns of ``arrays`` in their order (numbers, or texts with ``None`` where not recorded)."""
    cols = {"epoch": np.arange(upto, dtype=np.int64)}
    for name in METRIC_COLUMNS[1:]:
        cols[name] = arrays[name][:upto]
    for name, values in arrays.items():
        if name not in cols:
            cols[name] = values[:upto]
    return pd.DataFrame(cols)


class CheckpointWriter:
    """Buffers snapshots on the training device and flushes shards, metrics and state.

    Args:
        run_dir: the run directory (already holding ``run.json`` and the split).
        shapes: parameter name → shape.
        flush_every: snapshots per shard.
        device: where the buffer lives (the training device).
    """

    def __init__(self, run_dir: Path, shapes: dict[str, tuple[int, ...]], flush_every: int, device: torch.device):
        self.run_dir = Path(run_dir)
        self.shard_dir = self.run_dir / _io.SHARD_DIR
        try:
            self.shard_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise RunError(f"{self.shard_dir}: cannot create the shard directory ({e.strerror or e})") from e
        self.capacity = flush_every
        self.buffer = {name: torch.empty((flush_every, *shape), device=device) for name, shape in shapes.items()}
        self.epochs: list[int] = []
        self._hash_cache: dict[str, tuple[int, int, str]] = {}
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

    def write_file(self, rel: str, data: bytes) -> None:
        """Write one run file atomically and remember the size and SHA-256 of what was written."""
        _io.write_atomic(self.run_dir / rel, data)
        self._written[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
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

    def write_shard(self) -> str:
        """Write the buffered snapshots as one shard (atomically); returns its relative path."""
        n = len(self.epochs)
        tensors = {name: buf[:n].detach().to("cpu").contiguous() for name, buf in self.buffer.items()}
        tensors["epochs"] = torch.tensor(self.epochs, dtype=torch.int64)
        rel = f"{_io.SHARD_DIR}/{_io.shard_name(self.epochs[0], self.epochs[-1])}"
        self.write_file(rel, st_save(tensors, metadata={"format": "grokinterp-shard"}))
        self.n_written += n
        self.epochs = []
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
        """Write buffered snapshots, then metrics, state, progress and manifest (each atomic)."""
        new_shard, state_written = None, False
        try:
            if self.epochs:
                new_shard = self.write_shard()
            self.write_metrics(metrics, resume_epoch + 1 if finished else resume_epoch)
            cpu_state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            meta = {**state_meta, "resume_epoch": str(resume_epoch), "finished": json.dumps(finished)}
            self.write_file(_io.STATE_FILE, st_save(cpu_state, metadata=meta))
            state_written = True
            self.write_progress(progress)
            self.write_manifest()
        except OSError as e:
            # Keep the last good state: a shard newer than the state on disk would be dropped on
            # resume anyway; remove it now (it frees space) and describe the disk in the manifest.
            if new_shard is not None and not state_written:
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

    def write_metrics(self, metrics: dict[str, np.ndarray], upto: int) -> None:
        """``metrics.csv`` with epochs ``0 .. upto - 1`` of the per-epoch arrays (atomically)."""
        buf = io.StringIO()
        metrics_frame(metrics, upto).to_csv(buf, index=False)
        self.write_file(_io.METRICS_CSV, buf.getvalue().encode())

    def write_progress(self, progress: dict[str, Any]) -> None:
        """``progress.json`` (atomically)."""
        self.write_file(_io.PROGRESS_JSON, (json.dumps(progress, indent=2) + "\n").encode())

    def previous_manifest(self) -> dict[str, dict[str, Any]]:
        """The well-formed entries of the manifest on disk (``{}`` if it is missing or unreadable)."""
        try:
            files = json.loads((self.run_dir / _io.MANIFEST_JSON).read_bytes())["files"]
            return {rel: {"size": e["size"], "sha256": e["sha256"]} for rel, e in files.items()
                    if _io.is_safe_relpath(rel) and isinstance(e, dict) and isinstance(e.get("size"), int)
                    and isinstance(e.get("sha256"), str)}
        except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
            return {}

    def write_manifest(self) -> None:
        """Record size and SHA-256 of every run file (see the module notes: damage is never re-blessed)."""
        prev = self.previous_manifest()
        files = {}
        for path in sorted(self.run_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name == _io.MANIFEST_JSON:
                continue
            rel = path.relative_to(self.run_dir).as_posix()
            if rel in _io.DERIVED_FILES:
                continue
            if rel in self._written:
                files[rel] = self._written[rel]
            elif rel in prev and _immutable(rel):
                files[rel] = prev[rel]
            else:
                st = path.stat()
                cached = self._hash_cache.get(rel)
                if cached and cached[:2] == (st.st_size, st.st_mtime_ns):
                    digest = cached[2]
                else:
                    digest = sha256_file(path)
                    self._hash_cache[rel] = (st.st_size, st.st_mtime_ns, digest)
                files[rel] = {"size": st.st_size, "sha256": digest}
        for rel, entry in prev.items():  # a listed file that vanished stays listed (verify reports it)
            if rel not in files and _immutable(rel) and rel not in self._dropped:
                files[rel] = entry
        data = {"algorithm": "sha256", "files": dict(sorted(files.items()))}
        _io.write_json_atomic(self.run_dir / _io.MANIFEST_JSON, data)

    def drop_shards_after(self, epoch: int) -> list[str]:
        """Delete shards holding epochs after ``epoch`` (written after the state being resumed)."""
        dropped = []
        listed = [rel.split("/", 1)[1] for rel in self.previous_manifest() if rel.startswith(_io.SHARD_DIR + "/")]
        on_disk = [path.name for path in self.shard_dir.glob("ckpt_*.safetensors")]
        for name in sorted(set(listed) | set(on_disk)):
            last = _shard_last_epoch(name)
            if last is None or last <= epoch:
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
    """The contents of ``run.json``: config, seeds, sizes, versions and the device."""
    import platform
    import time

    from .. import __version__

    return {
        "kind": _io.RUN_KIND,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "preset": preset,
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
    """Write the immutable files of a new run: the split, then ``run.json`` (each atomically).

    ``run.json`` comes last: without it the directory is not a run, and a ``train`` killed in
    between may start it again.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        _io.write_atomic(out / _io.SPLIT_FILE, st_save(
            {"train_pairs": torch.from_numpy(np.asarray(train_pairs, dtype=np.int64)),
             "test_pairs": torch.from_numpy(np.asarray(test_pairs, dtype=np.int64))},
            metadata={"pair_index": "a * p + b"},
        ))
        _io.write_json_atomic(out / _io.RUN_JSON, info)
    except OSError as e:
        raise RunError(f"{out}: cannot create the run directory ({e.strerror or e})") from e


def prepare_out_dir(out: Path, config: RunConfig, overwrite: bool) -> str:
    """``new``, ``same`` (a run of the same config is already there) or raise; ``overwrite`` clears a run.

    A directory that is not a readable grokinterp run is never deleted or reused.
    """
    import shutil

    if not out.exists():
        return "new"
    if not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    run_json = out / _io.RUN_JSON
    if not run_json.exists():
        if any(out.iterdir()) and not _creation_leftovers(out):
            raise RunError(f"{out}: directory is not empty and holds no grokinterp run; choose another --out")
        return "new"
    if not _io.looks_like_run(out):  # never delete or reuse a directory we cannot recognise
        raise RunError(f"{out}: holds a {_io.RUN_JSON} that is not a readable grokinterp run's; refusing to "
                       f"touch it (choose another output directory)")
    info = _io.read_json(run_json, "run metadata")
    existing = info.get("config")
    if overwrite:
        shutil.rmtree(out)
        return "new"
    if _same_config(existing, config):
        return "same"
    raise RunError(f"{out}: already holds a different run; pass --overwrite (overwrite=True) to replace it, "
                   f"or choose another output directory")


def _same_config(existing: Any, config: RunConfig) -> bool:
    """Whether a stored config (possibly from before some fields existed) describes ``config``."""
    try:
        return RunConfig.from_dict(existing).to_dict() == config.to_dict()
    except (TypeError, ValueError):  # ConfigError included: an unreadable config is "not the same"
        return False


def _creation_leftovers(out: Path) -> bool:
    """Whether ``out`` holds only what a ``train`` killed before writing ``run.json`` leaves behind."""
    for entry in out.iterdir():
        if entry.is_file() and (entry.name == _io.SPLIT_FILE or
                                (entry.name.startswith(".") and entry.name.endswith(".tmp"))):
            continue
        return False
    return True
