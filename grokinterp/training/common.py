"""What every training entry point shares: interrupts, signals, devices, callbacks, session records.

The trainer itself — its state and its epoch loop — is :class:`~grokinterp.training.stacked.StackedLoop`
(a single run is a stack of one: :class:`~grokinterp.training.stacked.TrainLoop` is its single-run view).
Public names are re-exported by :mod:`grokinterp.training.loop`.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ..config import RunConfig
from ..errors import ConfigError, RunError
from .callbacks import Callback, ProgressBar
from .optim import check_optimizer
from .transforms import check_transforms

__all__ = ["TrainingInterrupted", "resolve_device", "check_trainable", "stop_on_signals",
           "loop_callbacks", "recorded_threads", "with_session", "encode_text", "decode_text"]

class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after flushing; ``.run_dir``, ``.epoch`` (and, minibatch,
    ``.step``: optimizer steps taken) say where to resume.

    ``.signum`` is the signal that stopped it (the CLI exits with ``128 + signum``).
    """

    def __init__(self, run_dir: Path, epoch: int, signum: int = signal.SIGINT, step: int | None = None):
        at = f"epoch {epoch}" if step is None else f"epoch {epoch} (optimizer step {step})"
        super().__init__(f"training interrupted at {at}; everything is saved, resume with "
                         f"`grokinterp train --resume {run_dir}`")
        self.run_dir, self.epoch, self.signum, self.step = run_dir, epoch, int(signum), step


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; explicit devices must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {device!r} requested but MPS is not available")
    return dev


def check_trainable(config: RunConfig) -> torch.device:
    """Everything ``train`` needs that the config alone cannot check — the device exists, the
    optimizer and gradient transforms are registered — before anything is written."""
    device = resolve_device(config.train.device)
    check_optimizer(config.train)
    check_transforms(config.train)
    return device


@contextmanager
def _sigint_flag() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT (Ctrl-C) and SIGTERM (schedulers stopping a job) into a flag the loop checks
    between steps, so a stop always flushes first (main thread only). The returned callable's
    ``signum`` attribute records which signal arrived."""
    flag = threading.Event()

    def stopped() -> bool:
        return flag.is_set()

    stopped.signum = signal.SIGINT  # type: ignore[attr-defined]
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:  # a second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        stopped.signum = signum  # type: ignore[attr-defined]
        flag.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


#: Public name of the SIGINT / SIGTERM flag (used by the stacked trainer as well).
stop_on_signals = _sigint_flag


def loop_callbacks(progress: bool, callbacks: Sequence[Callback], bar: Callable[[], Callback] = ProgressBar
                ) -> list[Callback]:
    """The loop's callbacks: ``bar()`` first when ``progress``, then ``callbacks`` (checked)."""
    cbs = list(callbacks)
    bad = [type(cb).__name__ for cb in cbs if not isinstance(cb, Callback)]
    if bad:
        raise ConfigError(f"callbacks: expected grokinterp.training.callbacks.Callback objects, got {', '.join(bad)}")
    return ([bar()] if progress else []) + cbs


def with_session(run, action: str, start: int, end: int, threads: int | None):
    run.session = {"action": action, "start_epoch": start, "end_epoch": end, "epochs_trained": max(end - start, 0),
                   "threads": threads}
    return run


def recorded_threads(run) -> int | None:
    """The torch thread count ``run.json`` records for the run's training (``None``: not recorded)."""
    n = (run.info.get("device") or {}).get("torch_threads")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def encode_text(values: list[str | None]) -> Tensor:
    """A text column as UTF-8 JSON bytes (safetensors holds tensors only)."""
    return torch.frombuffer(bytearray(json.dumps(values).encode()), dtype=torch.uint8)


def decode_text(t: Tensor, n: int, where: str) -> list[str | None]:
    """The inverse of :func:`encode_text`: ``n`` texts or nulls (a :class:`RunError` naming ``where`` if not)."""
    try:
        values = json.loads(bytes(t.to(torch.uint8).numpy()).decode())
    except (ValueError, RecursionError):
        raise RunError(f"{where}: not a JSON list of texts") from None
    if not isinstance(values, list) or len(values) != n or not all(v is None or isinstance(v, str) for v in values):
        raise RunError(f"{where}: expected {n} texts or nulls")
    return values
