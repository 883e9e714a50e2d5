"""The epoch loop of every trainer, and what every trainer shares: signals, interrupts, devices.

:class:`EpochLoop` is the loop over the epochs and optimizer steps of ``R ≥ 1`` runs (checkpoints,
metrics, callbacks, stop requests, the final flush); :class:`~grokinterp.training.stacked.StackedLoop`
is the one trainer that holds the runs' state (a single run is a stack of one:
:class:`~grokinterp.training.stacked.TrainLoop` is its single-run view). Public names are re-exported
by :mod:`grokinterp.training.loop`.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import RunConfig
from ..errors import ConfigError, RunError
from .callbacks import Callback, ProgressBar
from .optim import check_optimizer
from .transforms import check_transforms

__all__ = ["EpochLoop", "TrainingInterrupted", "resolve_device", "check_trainable", "stop_on_signals",
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


class EpochLoop:
    """The epoch loop, one for every trainer: ``R ≥ 1`` runs, full batch or minibatch (issue 19).

    Each epoch ``e`` (the model after ``e · k`` optimizer steps, ``k`` = steps per epoch: 1 for full
    batch) is, in order: a checkpoint if due (:meth:`_snapshot`; a flush when the buffer is full), its
    metrics (:meth:`_record_epoch`: test metrics every ``eval_every`` epochs and at the end, the train
    metrics where they are evaluations), ``on_epoch``, the epoch's ``k`` steps (:meth:`step`, through
    the step executor the subclass chose for its model family and device: eager, CUDA graph, the CPU
    fused kernels), ``on_step`` and ``on_eval``. A stop request (signal, or a callback's
    :meth:`request_stop`) between any two steps flushes and raises (:meth:`_interrupt`); the final
    epoch is evaluated and snapshotted without a step, then flushed as finished.

    The trainer that holds the runs' state is :class:`~grokinterp.training.stacked.StackedLoop` (a
    single run is a stack of one; :class:`~grokinterp.training.stacked.TrainLoop` is its single-run
    view); it sets ``E``, ``eval_every``, ``per_epoch``, ``total_steps``, ``step_unit``,
    ``batch_size``, ``ckpt_epochs``, ``start_epoch``, ``start_step``, ``flushed_upto`` and ``callbacks``.
    """

    E: int
    eval_every: int
    per_epoch: int
    total_steps: int
    step_unit: bool
    batch_size: int | None
    ckpt_epochs: set[int]
    start_epoch: int
    start_step: int
    flushed_upto: int
    callbacks: list[Callback]
    _stop_requested: bool = False

    def request_stop(self) -> None:
        """Ask the loop to stop before the next step (a callback may call it, e.g. for early
        stopping): it flushes and raises :class:`TrainingInterrupted`; the run stays resumable."""
        self._stop_requested = True

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- what a trainer provides -------------------------------------------------------------------
    def step(self, epoch: int, record_acc: bool, step: int | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self, resume_epoch: int, finished: bool, step: int | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    def _snapshot(self, label: int) -> bool:  # pragma: no cover
        """Buffer the parameters under checkpoint ``label``; whether the buffer is now full."""
        raise NotImplementedError

    def _record_epoch(self, epoch: int, step: int, evaluating: bool) -> None:  # pragma: no cover
        """The metrics of the model at ``epoch`` that are not those of its step (see :meth:`run`)."""
        raise NotImplementedError

    def _interrupt(self, epoch: int, step: int, signum: int) -> None:  # pragma: no cover
        """Flush everything up to ``step`` and raise :class:`TrainingInterrupted` (or a subclass)."""
        raise NotImplementedError

    def _between_steps(self) -> None:
        """After every step (a background flusher reports what it finished)."""

    def _finish(self) -> None:
        self.flush(self.E, finished=True, step=self.total_steps)

    def _close(self) -> None:
        """When the loop ends, however it ends (before ``on_end``)."""

    def run(self, stop: Callable[[], bool]) -> None:
        """Train from :attr:`start_step` to the end (class notes for the order of events).

        Full batch, the train loss of row ``e`` is that of step ``e`` (the model at ``e``, every epoch).
        Minibatch, row ``e``'s train loss and accuracy are a full-training-set evaluation of the
        model at ``e`` (before its steps), recorded with the test metrics (every ``eval_every``
        epochs and at the end; NaN in between), and the ``step`` column holds ``e · k``. A
        checkpoint schedule in steps (``checkpoints.unit``) snapshots before any step it names,
        mid-epoch too; a stop between two steps flushes and resumes there (bit for bit on CPU).
        """
        E, k = self.E, self.per_epoch
        self._emit("on_start", self.start_epoch)
        try:
            for s in range(self.start_step, self.total_steps + 1):
                epoch, b = divmod(s, k)
                if stop() or self._stop_requested:
                    self._interrupt(epoch, s, getattr(stop, "signum", signal.SIGINT))
                label = s if self.step_unit else (epoch if b == 0 else -1)
                if label in self.ckpt_epochs and label > self.flushed_upto:
                    full = self._snapshot(label)
                    self._emit("on_checkpoint", label)
                    if full:
                        self.flush(epoch, finished=False, step=s)
                evaluating = epoch % self.eval_every == 0 or epoch == E
                if b == 0:
                    self._record_epoch(epoch, s, evaluating)
                    self._emit("on_epoch", epoch)
                if epoch != E:
                    self.step(epoch, record_acc=evaluating, step=s)
                if b == k - 1 or epoch == E:
                    self._emit("on_step", epoch)
                    if evaluating:
                        self._emit("on_eval", epoch)
                self._between_steps()
            self._finish()
        finally:
            try:
                self._close()
            finally:
                self._emit("on_end")


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
