"""Pre-flight estimate: will this run fit this machine? Checked at ``train`` and ``resume`` only.

The config's own limits (:data:`grokinterp.config.LIMITS`) are machine-independent: they say what a
run may be anywhere, so a run trained on a big GPU machine still loads on a laptop. Whether *this*
machine can train it is a different question, asked here before anything is written: the memory
training needs on its device (parameters, gradients, optimizer state, the checkpoint buffer, the
metrics, the data and the activations of a full-batch step) against the device's memory (physical
memory, or a container's cgroup limit, on the CPU; the GPU's memory on CUDA), and the disk the
checkpoints, state and metrics will take against the free space where the run is written. A run
beyond either exits with status 2 and a message, leaving nothing behind.

The estimate is an honest order of magnitude (a few tens of percent), not a promise: it leaves out
the framework's own overhead and refuses only what cannot fit.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import RunError
from ..model.families import family_of

__all__ = ["Estimate", "estimate", "preflight", "device_memory"]

_OPT_SLOTS = {"adamw": 2, "adam": 2, "sgd": 1}  # tensors of parameter size each optimizer keeps
_GIB = 1024 ** 3


@dataclass(frozen=True)
class Estimate:
    """What a run needs: bytes by part, on the training device and on disk."""

    memory: dict[str, int]
    disk: dict[str, int]

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory.values())

    @property
    def disk_bytes(self) -> int:
        return sum(self.disk.values())


def estimate(config: RunConfig, checkpoints_left: int | None = None) -> Estimate:
    """Bytes a run needs in memory (on its device) and on disk.

    Args:
        config: the run's config.
        checkpoints_left: checkpoints still to be written (default: all of the schedule's).

    Notes:
        With ``n`` parameters per checkpoint, ``E`` epochs, ``B`` training examples:
        memory ≈ 4n (parameters) + 4n (gradients) + 4n·slots (optimizer) + 4n·flush_every (buffer)
        + 48(E + 1) (metrics) + activations of a full-batch step; disk ≈ 4n·checkpoints (shards)
        + 2·(4n(1 + slots) + 48(E + 1)) (the state, twice while it is replaced) + 128(E + 1) (metrics).
        A float64 run (``train.dtype``) holds and writes 8 bytes where these say 4 (parameters, gradients,
        optimizer state, buffer, shards, state) and its activations are float64 too.
    """
    m, tc, ck = config.model, config.train, config.checkpoints
    n = m.n_params
    slots = _OPT_SLOTS.get(tc.optimizer, 2)
    E = tc.epochs
    task = config.task.task()
    n_pairs = len(task.valid_pairs()) if config.task.p <= 2000 else task.n ** 2
    n_train = int(round(n_pairs * float(config.task.frac_train))) + 1
    if tc.batch_size is not None:  # a minibatch step's activations; the full-set evaluation has no backward
        n_train = min(n_train, int(tc.batch_size))
    b = tc.value_bytes  # bytes per value (train.dtype)
    per_example = family_of(m).activation_bytes(m) * (b // 4)  # hooked forward + backward, logits and the loss
    if checkpoints_left is None:
        checkpoints_left = len(config.checkpoint_epochs())
    memory = {
        "parameters": b * n,
        "gradients": b * n,
        "optimizer state": b * n * slots,
        "checkpoint buffer": b * n * ck.flush_every,
        "metrics": 48 * (E + 1),
        "data and activations": n_pairs * 64 + n_train * per_example,
    }
    disk = {
        "checkpoints": (b * n + 64) * checkpoints_left + 4096 * -(-checkpoints_left // ck.flush_every),
        "training state": 2 * (b * n * (1 + slots) + 48 * (E + 1)),
        "metrics": 2 * 128 * (E + 1),
        "split": 16 * n_pairs,
    }
    return Estimate(memory, disk)


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory the training device has (``None``: unknown)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.get_device_properties(device).total_memory)
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text.isdigit():
                total = min(total, int(text))
            break
        except OSError:
            continue
    return total


def _free_disk(out: Path) -> int | None:
    for candidate in (out, *out.absolute().parents):
        try:
            if candidate.is_dir():
                return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def _gib(x: float) -> str:
    return f"{x / _GIB:.3g} GiB" if x >= 0.1 * _GIB else f"{x / 1024 ** 2:.3g} MiB"


def preflight(config: RunConfig, device: torch.device, out: Path, checkpoints_left: int | None = None) -> Estimate:
    """Refuse a run that this machine cannot hold, before anything is written.

    Raises:
        RunError: the estimated memory exceeds the device's, or the estimated disk use exceeds the
            free space where ``out`` is (the message gives the estimate by part).
    """
    est = estimate(config, checkpoints_left)
    have = device_memory(device)
    if have is not None and est.memory_bytes > have:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in est.memory.items() if v >= 0.01 * est.memory_bytes)
        raise RunError(f"{out}: training this run needs about {_gib(est.memory_bytes)} of {device.type} memory "
                       f"({parts}), more than this machine's {_gib(have)}; reduce the model "
                       f"({_size_fields(config.model)}), checkpoints.flush_every or train.epochs")
    free = _free_disk(Path(out))
    if free is not None and est.disk_bytes > free:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in est.disk.items() if v >= 0.01 * est.disk_bytes)
        raise RunError(f"{out}: this run will write about {_gib(est.disk_bytes)} ({parts}), more than the "
                       f"{_gib(free)} free there; checkpoint less often (checkpoints.every, windows) or write "
                       f"elsewhere")
    return est


def _size_fields(m: Any) -> str:
    """The fields that size a model of its family, for the message."""
    if getattr(m, "family", "transformer") == "transformer":
        return "d_model, d_mlp, n_layers"
    return ", ".join(n for n in ("d_embed", "d_hidden", "n_hidden_layers") if hasattr(m, n)) or "model.*"
