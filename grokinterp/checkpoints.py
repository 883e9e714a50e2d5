"""Dense checkpoints: a device-side snapshot buffer flushed as safetensors shards.

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
other; shards written after the state they belong to are dropped when the run resumes.
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

from . import _io
from .errors import RunError

__all__ = ["CheckpointWriter", "METRIC_COLUMNS", "sha256_file"]

#: Columns of ``metrics.csv`` (NaN where a metric was not recorded at that epoch).
METRIC_COLUMNS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metrics_frame(arrays: dict[str, np.ndarray], upto: int) -> pd.DataFrame:
    """The metrics table of epochs ``0 .. upto - 1``."""
    cols = {"epoch": np.arange(upto, dtype=np.int64)}
    for name in METRIC_COLUMNS[1:]:
        cols[name] = arrays[name][:upto]
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
        self.shard_dir.mkdir(exist_ok=True)
        self.capacity = flush_every
        self.buffer = {name: torch.empty((flush_every, *shape), device=device) for name, shape in shapes.items()}
        self.epochs: list[int] = []
        self._hash_cache: dict[str, tuple[int, float, str]] = {}
        self.n_written = 0

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

    def _write_shard(self) -> None:
        n = len(self.epochs)
        tensors = {name: buf[:n].detach().to("cpu").contiguous() for name, buf in self.buffer.items()}
        tensors["epochs"] = torch.tensor(self.epochs, dtype=torch.int64)
        path = self.shard_dir / _io.shard_name(self.epochs[0], self.epochs[-1])
        _io.write_atomic(path, st_save(tensors, metadata={"format": "grokinterp-shard"}))
        self.n_written += n
        self.epochs = []

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
        try:
            if self.epochs:
                self._write_shard()
            buf = io.StringIO()
            metrics_frame(metrics, resume_epoch + 1 if finished else resume_epoch).to_csv(buf, index=False)
            _io.write_atomic(self.run_dir / _io.METRICS_CSV, buf.getvalue().encode())
            cpu_state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            meta = {**state_meta, "resume_epoch": str(resume_epoch), "finished": json.dumps(finished)}
            _io.write_atomic(self.run_dir / _io.STATE_FILE, st_save(cpu_state, metadata=meta))
            _io.write_json_atomic(self.run_dir / _io.PROGRESS_JSON, progress)
            self.write_manifest()
        except OSError as e:
            raise RunError(
                f"{self.run_dir}: writing checkpoints failed ({e.strerror or e}); the run keeps the state of its "
                f"last successful flush and can be resumed once the problem is fixed"
            ) from e

    def write_manifest(self) -> None:
        """Record size and SHA-256 of every run file (hashes of unchanged files are cached)."""
        files = {}
        for path in sorted(self.run_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name == _io.MANIFEST_JSON:
                continue
            rel = path.relative_to(self.run_dir).as_posix()
            st = path.stat()
            cached = self._hash_cache.get(rel)
            if cached and cached[:2] == (st.st_size, st.st_mtime):
                digest = cached[2]
            else:
                digest = sha256_file(path)
                self._hash_cache[rel] = (st.st_size, st.st_mtime, digest)
            files[rel] = {"size": st.st_size, "sha256": digest}
        _io.write_json_atomic(self.run_dir / _io.MANIFEST_JSON, {"algorithm": "sha256", "files": files})

    def drop_shards_after(self, epoch: int) -> list[str]:
        """Delete shards holding epochs after ``epoch`` (written after the state being resumed)."""
        dropped = []
        for path in sorted(self.shard_dir.glob("ckpt_*.safetensors")):
            try:
                last = int(path.stem.split("_")[2])
            except (IndexError, ValueError):
                continue
            if last > epoch:
                os.unlink(path)
                dropped.append(path.name)
        return dropped
