"""Planning a sweep before anything is written: disk use, checkpoint schedules, and the jobs.

* :func:`run_disk_bytes` estimates what one run directory will hold (shards, state, metrics, split);
* :func:`thin_schedule` spreads fewer checkpoints over a run, keeping the early log-spaced ones;
* :func:`fit_schedules` thins a sweep's schedules so that the whole sweep fits a disk budget (the
  paper's schedule — a checkpoint every 100 epochs over 40k — is ≈ 360 MB per run: 256 runs would
  need ≈ 90 GB);
* :func:`make_jobs` groups the runs still to train into jobs: stacks of runs that share shapes
  (:mod:`grokinterp.training.stacked`), or single runs.

Notes:
    A checkpoint costs ``4 · n_params`` bytes (float32); the state file ``4 · n_params · (1 + s)``
    for an optimizer keeping ``s`` per-parameter slots (2 for Adam/AdamW); metrics ≈ 60 bytes per
    epoch; the split ``8 · (valid pairs)`` bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import CheckpointSchedule, RunConfig
from ..model import n_params

__all__ = ["run_disk_bytes", "thin_schedule", "fit_schedules", "ScheduleFit", "MIN_CHECKPOINTS", "format_bytes",
           "Job", "make_jobs"]

#: Thinning never leaves a run with fewer checkpoints than this (analyses need a curve).
MIN_CHECKPOINTS = 40
_METRIC_BYTES_PER_EPOCH = 60
_SLOTS = {"adamw": 2, "adam": 2, "sgd": 1}


def run_disk_bytes(config: RunConfig) -> int:
    """Estimated size in bytes of the finished run directory of ``config``."""
    n = n_params(config.model)
    n_ckpt = len(config.checkpoint_epochs())
    n_shards = math.ceil(n_ckpt / config.checkpoints.flush_every)
    shards = 4 * n * n_ckpt + 2048 * n_shards
    state = 4 * n * (1 + _SLOTS.get(config.train.optimizer, 2)) + 8 * 5 * (config.train.epochs + 1)
    metrics = _METRIC_BYTES_PER_EPOCH * (config.train.epochs + 1)
    split = 8 * config.task.p ** 2
    return shards + state + metrics + split + 8192  # run.json, progress, manifest


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"  # pragma: no cover


def _nice_ceil(x: float) -> int:
    """The smallest of 1, 2, 5 × 10^k that is ≥ x."""
    if x <= 1:
        return 1
    k = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * k >= x:
            return int(m * k)
    return int(10 * k)  # pragma: no cover


def thin_schedule(schedule: CheckpointSchedule, epochs: int, max_checkpoints: int) -> CheckpointSchedule:
    """A schedule with at most about ``max_checkpoints`` checkpoints over ``epochs`` epochs.

    Dense windows are dropped, the log-spaced early checkpoints kept, and ``every`` raised to a
    round number (1, 2, 5 × 10^k). Returns ``schedule`` itself when it already fits.
    """
    if len(schedule.epochs(epochs)) <= max_checkpoints:
        return schedule
    room = max(max_checkpoints - schedule.log_early - 2, 1)
    every = max(schedule.every, _nice_ceil(epochs / room))
    return dataclasses.replace(schedule, every=every, windows=())


@dataclass(frozen=True)
class ScheduleFit:
    """What :func:`fit_schedules` decided.

    Attributes:
        configs: the runs' configs, thinned where needed.
        bytes_before: estimated disk use at the configs' own schedules.
        bytes_after: estimated disk use of ``configs``.
        thinned: whether any schedule was changed.
        note: one line saying what was done and why.
    """

    configs: list[RunConfig]
    bytes_before: int
    bytes_after: int
    thinned: bool
    note: str


def fit_schedules(configs: Sequence[RunConfig], max_bytes: float, *, allow_thinning: bool = True) -> ScheduleFit:
    """Thin the checkpoint schedules of a sweep's runs so that all of them fit in ``max_bytes``.

    Every run keeps at least :data:`MIN_CHECKPOINTS` checkpoints; every run gets the same cap on
    its number of checkpoints (the largest that fits the budget), so runs stay comparable.
    """
    configs = list(configs)
    before = sum(run_disk_bytes(c) for c in configs)
    if before <= max_bytes or not allow_thinning or not configs:
        why = "fits the budget" if before <= max_bytes else "kept as the spec asks (checkpoints = keep or set)"
        return ScheduleFit(configs, before, before, False, f"checkpoint schedules kept ({why})")
    fixed = sum(run_disk_bytes(c) - 4 * n_params(c.model) * len(c.checkpoint_epochs()) for c in configs)
    per_ckpt = sum(4 * n_params(c.model) for c in configs)  # one checkpoint of every run
    cap = max(int((max_bytes - fixed) // max(per_ckpt, 1)), MIN_CHECKPOINTS)
    # a minibatch run's schedule counts optimizer steps (RunConfig.checkpoint_unit): thin over its steps
    out = [c if len(c.checkpoint_epochs()) <= cap else
           dataclasses.replace(c, checkpoints=thin_schedule(
               c.checkpoints, c.total_steps() if c.checkpoint_unit() == "step" else c.train.epochs, cap))
           for c in configs]
    after = sum(run_disk_bytes(c) for c in out)
    everies = sorted({c.checkpoints.every for c in out})
    units = sorted({c.checkpoint_unit() + "s" for c in out})
    note = (f"checkpoint schedules thinned to at most ~{cap} checkpoints per run (every "
            f"{', '.join(map(str, everies))} {' or '.join(units)}) to fit the disk budget of {format_bytes(max_bytes)}: "
            f"{format_bytes(before)} at the preset's schedule, {format_bytes(after)} thinned")
    return ScheduleFit(out, before, after, True, note)


@dataclass(frozen=True)
class Job:
    """One unit of work of a sweep: runs trained together as one stack, or one run alone.

    Plain data (strings and dicts), so it can be sent to another process or machine.

    Attributes:
        kind: ``train`` (new runs) or ``resume`` (runs that exist and are not finished).
        run_dirs: absolute paths of the run directories, in stack order.
        configs: each run's :meth:`RunConfig.to_dict` (``train`` jobs).
        stacked: train the runs as one stacked model (:mod:`grokinterp.training.stacked`).
        preset: recorded in each ``run.json``.
        model_epochs: loop epochs still to run, summed over the runs (for progress): a run of ``E``
            epochs passes epochs ``0..E``; a resumed one those from where it stopped.
        stop: the sweep's stop rule (:meth:`~grokinterp.sweeps.stop.StopRule.to_dict`), or ``None``.
        deadline: wall-clock time (``time.time()``) after which the job stops (flushed, resumable)
            and, not yet started, does not start; ``None``: no limit.
    """

    kind: str
    run_dirs: tuple[str, ...]
    configs: tuple[dict, ...] = ()
    stacked: bool = False
    preset: str | None = None
    model_epochs: int = 0
    stop: dict | None = None
    deadline: float | None = None

    def describe(self) -> str:
        what = f"a stack of {len(self.run_dirs)}" if self.stacked else "one run"
        return f"{self.kind} {what}"


def make_jobs(new: Sequence[tuple[str, RunConfig]], unfinished: Sequence[tuple[str, RunConfig, int, str | None]], *,
              preset: str | None, group=None, max_stack: int = 1, spread: int = 1) -> list[Job]:
    """Jobs for the runs to train (``new``: ``(run_dir, config)``) and to resume (``unfinished``:
    ``(run_dir, config, epoch reached, id of the stack it was trained in or None)``).

    Args:
        group: ``group(config) -> key | None``: new runs with the same key (not ``None``) may share
            a stack; ``None`` (default) trains every run alone.
        max_stack: the most runs in one stack.
        spread: cut each group of new runs into at least this many stacks where it has the runs
            (one for each worker that trains stacks side by side), of equal sizes as far as possible.

    Unfinished runs of one recorded stack resume together (in their recorded stack), the others alone.
    """
    jobs: list[Job] = []
    stacks: dict[str, list[tuple[str, RunConfig, int]]] = {}
    for run_dir, config, reached, stack_id in unfinished:
        if stack_id is None:
            jobs.append(Job("resume", (run_dir,), stacked=False, preset=preset,
                            model_epochs=max(config.train.epochs + 1 - reached, 0)))
        else:
            stacks.setdefault(stack_id, []).append((run_dir, config, reached))
    for members in stacks.values():
        jobs.append(Job("resume", tuple(d for d, _, _ in members), stacked=True, preset=preset,
                        model_epochs=sum(max(c.train.epochs + 1 - r, 0) for _, c, r in members)))
    buckets: dict[object, list[tuple[str, RunConfig]]] = {}
    singles: list[tuple[str, RunConfig]] = []
    for run_dir, config in new:
        key = group(config) if group is not None and max_stack > 1 else None
        (buckets.setdefault(key, []) if key is not None else singles).append((run_dir, config))
    for members in buckets.values():
        # Runs of a stack are padded to its largest training set: cut stacks from runs of similar size.
        members = sorted(members, key=lambda m: m[1].n_train())  # task.n_train too (issue 21)
        n_stacks = max(math.ceil(len(members) / max_stack), min(max(spread, 1), len(members)))
        bounds = [round(i * len(members) / n_stacks) for i in range(n_stacks + 1)]
        for i0, i1 in zip(bounds, bounds[1:]):
            chunk = members[i0: i1]
            jobs.append(Job("train", tuple(d for d, _ in chunk), tuple(c.to_dict() for _, c in chunk),
                            stacked=len(chunk) > 1, preset=preset,
                            model_epochs=sum(c.train.epochs + 1 for _, c in chunk)))
    for run_dir, config in singles:
        jobs.append(Job("train", (run_dir,), (config.to_dict(),), stacked=False, preset=preset,
                        model_epochs=config.train.epochs + 1))
    return jobs
