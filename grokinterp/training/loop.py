"""Training one run: :func:`train` and :func:`resume` — a single run is a stack of one.

Example:
    >>> from grokinterp import make_config, train
    >>> run = train(make_config("tiny"), "checkpoints/tiny")        # doctest: +SKIP
    >>> run.metrics.tail(1)                                           # doctest: +SKIP

There is one trainer, :class:`~grokinterp.training.stacked.StackedLoop`, for ``R ≥ 1`` runs; a single run
trains as a stack of one with the ``single`` step executor (the single-run forward: the family's
fast path where it applies, else its hooked module; the run's mean float64 loss), which gives the
trajectories of earlier releases bit for bit on CPU. :class:`TrainLoop` is that stack of one seen as a
single run (the callback contract: ``params`` as leaves with ``.grad``, the hooked ``model``, 1-D
``metrics`` rows, ``text_metrics``, ``data``, ``evaluate``, ``postfix``), a view holding no state of its own.

Per epoch ``e`` (the model after ``e`` full-batch steps) the loop (:meth:`StackedLoop.run <grokinterp.training.stacked.StackedLoop.run>`): snapshots
the parameters if ``e`` is a checkpoint epoch, flushes when the buffer is full, records test loss
and accuracy every ``eval_every`` epochs (the model at ``e``, before its step), then takes one step
(forward on the final position, float64 loss, backward, gradient transforms, optimizer). The final
epoch is evaluated and snapshotted without a step. The pieces are seams of their own: the optimizer
comes from the registry in :mod:`~grokinterp.training.optim`, gradient transforms from
:mod:`~grokinterp.training.transforms` (one registry each, written once over stacks), the step
executor (eager or CUDA graph) from :mod:`~grokinterp.training.step`, and observers are
:mod:`~grokinterp.training.callbacks`. Files are written through :mod:`grokinterp.store.writer`.

A minibatch run (``train.batch_size``) takes ``k = ceil(n_train / batch_size)`` steps per epoch,
each on one batch of :mod:`~grokinterp.training.data`; schedules count optimizer steps, checkpoints
may fall inside an epoch (``checkpoints.unit`` step), and a stop between any two steps resumes there
(see :meth:`grokinterp.training.stacked.StackedLoop.run`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..model.denormals import flush_denormals
from ..store.run import load_run
from ..store.writer import check_out_dir, claim_run_dirs, clear_run_dir, run_metadata, start_run
from ..tasks import split_pairs
from .callbacks import Callback
from .common import (
    TrainingInterrupted,
    check_trainable,
    loop_callbacks,
    recorded_threads,
    resolve_device,
    stop_on_signals,
    with_session,
)
from .lineage import lineage_record
from .preflight import preflight
from .stacked import EpochLoop, TrainLoop, build_single_loop, resume_locked
from .stacked import resume_single as resume
from .threads import DEFAULT_THREADS, check_threads, torch_threads

__all__ = ["train", "resume", "EpochLoop", "TrainLoop", "TrainingInterrupted", "resolve_device", "check_trainable",
           "stop_on_signals", "loop_callbacks", "recorded_threads"]


def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    preset: str | None = None,
    callbacks: Sequence[Callback] = (),
    threads: int | None = None,
):
    """Train a model and write a run directory; returns the loaded :class:`~grokinterp.store.run.Run`.

    Before anything is written, the config is validated (its limits are the loader's), the device
    and registered names are checked, and a pre-flight estimate of memory and disk refuses a run
    this machine cannot hold (:mod:`~grokinterp.training.preflight`). The run lock
    (:mod:`grokinterp.store.lock`) is held while the run is written: a second trainer on the same
    directory is refused, naming the holder.

    Args:
        config: the run's configuration (see :func:`grokinterp.make_config`).
        out: run directory to create. If it already holds a run with the same config, that run
            is resumed (or simply returned when finished: nothing is trained then, and
            ``run.session["action"]`` says ``already_finished``); a different run is refused
            unless ``overwrite``.
        overwrite: replace a different run found in ``out``.
        progress: show a tqdm progress bar (epoch, train/test loss, test accuracy).
        preset: name of the preset the config came from, recorded in ``run.json``.
        callbacks: :class:`~grokinterp.training.callbacks.Callback` objects that watch the loop.
        threads: torch CPU threads while training (default 1: :mod:`~grokinterp.training.threads`
            says why); recorded in ``run.json``. The caller's setting is restored afterwards.

    Returns:
        The run, with ``run.session`` saying what this call did (``trained``, ``resumed`` or
        ``already_finished``, the epochs trained and the thread count).

    Raises:
        ConfigError: invalid config, unknown optimizer or gradient transform, unavailable device
            or bad thread count (nothing is created).
        RunError: ``out`` is unusable or locked by another writer, the run does not fit this
            machine (nothing is created), or a flush failed.
        TrainingInterrupted: SIGINT; everything up to the current epoch was flushed first.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config: expected a RunConfig, got {type(config).__name__}")
    device = check_trainable(config)
    n_threads = DEFAULT_THREADS if threads is None else check_threads(threads)
    cbs = loop_callbacks(progress, callbacks)
    out = Path(out)
    new = check_out_dir(out, config, overwrite) != "same"
    lineage = lineage_record(config) if new else None  # a parent's checks and record (lineage.py)
    if new:
        preflight(config, device, out)
    with claim_run_dirs([out], [config], overwrite) as claim:
        lock = claim.locks[0]
        if claim.decisions[0] == "same":  # another process wrote this run meanwhile, or it is being resumed
            claim.started = True
            return resume_locked(out, lock, progress=progress, device=None, callbacks=callbacks, threads=threads)
        if claim.decisions[0] == "replace":
            clear_run_dir(out)
        with torch_threads(n_threads), flush_denormals():
            train_pairs, test_pairs = split_pairs(config.task)  # task.n_train: a subset (tasks/subsets.py)
            claim.wrote = True
            meta = run_metadata(config, device, preset, len(train_pairs), len(test_pairs))
            start_run(out, {**meta, "lineage": lineage} if lineage else meta, train_pairs, test_pairs)
            loop = build_single_loop(config, out, device, train_pairs, test_pairs, cbs)
            claim.started = True
            loop.writer.lock = lock
            with stop_on_signals() as stop:
                loop.run(stop)
    return with_session(load_run(out), "trained", 0, config.train.epochs, n_threads)
