"""Run a sweep, resume it, and read it back: :func:`sweep`, :func:`plan_sweep`, :func:`load_sweep`.

A sweep directory::

    SWEEP/
      sweep.json          the spec, every point (name, varied values, full config, run directory),
                          the checkpoint-schedule decision and the disk estimate; written once
      runs/<point name>/  one ordinary run directory per point (load_run, verify, --resume all work)
      analysis/           cached per-run analysis rows of the sweep table (derived, may be deleted)

Running a sweep again (the same spec, or the directory alone) skips finished runs (and runs the
spec's stop rule ended: :mod:`grokinterp.sweeps.stop`), resumes interrupted ones and trains the rest.
A wall-clock budget (``deadline``) stops the running stacks cleanly and starts no new one. Everything is checked before anything is written: the spec
and every point's config, the registries (optimizer, gradient transforms), the device, runs already
in the directory (same config?) and the free disk space.

Example:
    >>> import grokinterp as gi
    >>> sw = gi.sweep({"preset": "tiny", "grid": {"weight_decay": [0.5, 2.0]}, "seeds": [0, 1]},
    ...               "checkpoints/wd")                                         # doctest: +SKIP
    >>> sw.table()[["weight_decay", "seed", "test_acc_99_epoch"]]               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import FORMAT_VERSION, RunConfig
from ..errors import ConfigError, GrokinterpError, RunError
from ..store import layout
from ..store.run import Run, load_run
from ..store.writer import creation_leftovers
from ..training.loop import check_trainable
from ..training.stacked import DEFAULT_MAX_STACK, max_stack_size, stack_key, stack_unsupported_reason
from .executor import Executor, JobResult, SweepProgress, epochs_done, executor_for, read_progress
from .plan import Job, fit_schedules, format_bytes, make_jobs, run_disk_bytes
from .spec import SweepSpec, load_spec

__all__ = ["sweep", "plan_sweep", "load_sweep", "resume_sweep", "Sweep", "SweepPlan", "SWEEP_JSON", "RUNS_DIR"]

SWEEP_JSON = "sweep.json"
SWEEP_KIND = "grokinterp-sweep"
RUNS_DIR = "runs"


def _count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1: ``_count(1, "stack")`` → ``1 stack``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True)
class PlannedRun:
    """One point of a planned sweep: its name, varied values, config, directory and state."""

    name: str
    values: dict[str, Any]
    config: RunConfig
    run_dir: Path
    state: str  # "new", "unfinished", "finished" or "stopped" (by the spec's stop rule: done)
    epoch: int = 0  # loop epochs already flushed


@dataclass
class SweepPlan:
    """What :func:`sweep` will do, decided before anything is written (:func:`plan_sweep`)."""

    path: Path
    spec: SweepSpec
    runs: list[PlannedRun]
    jobs: list[Job]
    schedule_note: str
    disk_bytes: int
    disk_bytes_unthinned: int
    stored: dict[str, Any] | None = None  # sweep.json when the sweep exists already
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"new": 0, "unfinished": 0, "finished": 0, "stopped": 0}
        for r in self.runs:
            out[r.state] += 1
        return out

    def cost(self) -> dict[str, int]:
        """What the sweep costs at most (every run to its budget): ``runs``, ``model_steps`` (optimizer
        steps summed over the runs), ``model_epochs``; and what is left (``*_left``: new and unfinished runs)."""
        left = [r for r in self.runs if r.state in ("new", "unfinished")]
        return {"runs": len(self.runs), "model_steps": sum(r.config.total_steps() for r in self.runs),
                "model_epochs": sum(r.config.train.epochs for r in self.runs), "runs_left": len(left),
                "model_steps_left": sum(r.config.total_steps() - min(r.epoch, r.config.train.epochs)
                                        * r.config.steps_per_epoch() for r in left)}

    def describe(self) -> list[str]:
        """Lines for the user: runs, jobs, stacks, disk."""
        c = self.counts()
        stacks = [j for j in self.jobs if j.stacked]
        lines = [f"sweep {self.path}: {_count(len(self.runs), 'run')} ({c['finished']} finished, "
                 + (f"{c['stopped']} stopped by the rule, " if c["stopped"] else "")
                 + f"{c['unfinished']} to resume, {c['new']} to train)"]
        cost = self.cost()
        lines.append(f"  cost: {cost['model_steps']:,} model-steps ({cost['model_epochs']:,} model-epochs) at every "
                     f"run's budget; {cost['model_steps_left']:,} model-steps left in {_count(cost['runs_left'], 'run')}"
                     + ("; the stop rule ends stacks early" if self.spec.stop is not None else ""))
        if self.spec.stop is not None:
            lines.append(f"  stop rule: {self.spec.stop.describe()}")
        if self.jobs:
            sizes = sorted({len(j.run_dirs) for j in stacks})
            lines.append(f"  {_count(len(self.jobs), 'job')}: {_count(len(stacks), 'stack')}"
                         + (f" of {', '.join(map(str, sizes))} {'run' if sizes == [1] else 'runs'}" if stacks else "")
                         + f", {_count(len(self.jobs) - len(stacks), 'single run')}")
            workers = self.spec.options.workers  # above 1 only with the local executor (SweepOptions)
            if workers > 1 and len(self.jobs) > 1:
                lines.append(f"  {min(workers, len(self.jobs))} worker processes train jobs side by side")
        lines.append(f"  disk: ≈ {format_bytes(self.disk_bytes)} for the whole sweep; {self.schedule_note}")
        lines += [f"  {n}" for n in self.notes]
        return lines

    @property
    def model_epochs_total(self) -> int:
        return sum(r.config.train.epochs + 1 for r in self.runs)

    @property
    def model_epochs_done(self) -> int:
        return sum(r.config.train.epochs + 1 if r.state == "stopped" else r.epoch for r in self.runs)


# -- reading and writing sweep.json --------------------------------------------------------------------
def _read_sweep_json(path: Path) -> dict[str, Any]:
    info = layout.read_json(path / SWEEP_JSON, "sweep manifest")
    if not isinstance(info, dict) or info.get("kind") != SWEEP_KIND:
        raise RunError(f"{path / SWEEP_JSON}: not a grokinterp sweep manifest (no \"kind\": \"{SWEEP_KIND}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunError(f"{path / SWEEP_JSON}: format_version is missing or not a positive integer")
    if version > FORMAT_VERSION:
        raise RunError(f"{path / SWEEP_JSON}: written by a newer grokinterp (format {version}); upgrade to read it")
    points = info.get("points")
    if not isinstance(points, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                               and isinstance(p.get("run"), str) and isinstance(p.get("config"), dict)
                                               for p in points):
        raise RunError(f"{path / SWEEP_JSON}: 'points' must be a list of {{name, values, config, run}} objects")
    for p in points:
        if not layout.is_safe_relpath(p["run"]):
            raise RunError(f"{path / SWEEP_JSON}: point {p['name']!r} names a run outside the sweep ({p['run']!r})")
    if not isinstance(info.get("spec"), dict):
        raise RunError(f"{path / SWEEP_JSON}: 'spec' is missing")
    return info


def _sweep_json(plan: SweepPlan) -> dict[str, Any]:
    import platform

    import torch

    from .. import __version__

    return {
        "kind": SWEEP_KIND,
        "format_version": FORMAT_VERSION,
        "spec": plan.spec.to_dict(),
        "checkpoints": {"note": plan.schedule_note, "disk_bytes_estimate": plan.disk_bytes,
                        "disk_bytes_at_preset_schedule": plan.disk_bytes_unthinned},
        "points": [{"name": r.name, "values": r.values, "run": f"{RUNS_DIR}/{r.name}", "config": r.config.to_dict()}
                   for r in plan.runs],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"grokinterp": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }


def _run_state(run_dir: Path, config: RunConfig) -> tuple[str, int]:
    """``("new" | "unfinished" | "finished", epochs flushed)``; raises if the directory holds another run."""
    if not (run_dir / layout.RUN_JSON).exists():
        # what a run killed before its run.json leaves (its lock, split, first manifest) is a new run, as for
        # `train`; a live holder of the lock is refused when the job takes it
        if run_dir.is_dir() and not creation_leftovers(run_dir):
            raise RunError(f"{run_dir}: holds files but no run; move them away or choose another sweep directory")
        return "new", 0
    info = layout.read_json(run_dir / layout.RUN_JSON, "run metadata")
    try:
        same = RunConfig.from_dict(info.get("config")).to_dict() == config.to_dict()
    except (GrokinterpError, AttributeError):
        same = False
    if not same:
        raise RunError(f"{run_dir}: holds a run with a different config than this sweep's point; the sweep "
                       f"directory was changed by hand (move the run away to retrain it)")
    prog = read_progress(run_dir)
    done = epochs_done(run_dir, prog)
    if done >= config.train.epochs + 1:
        return "finished", done
    return ("stopped" if stop_record(run_dir, prog) is not None else "unfinished"), done


def stop_record(run_dir: str | os.PathLike, progress: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``stopped`` record of a run's ``progress.json`` (or of the ``progress`` already read by
    :func:`~grokinterp.sweeps.executor.read_progress`): the sweep's stop rule ended it, it is done; ``None``
    otherwise."""
    prog = read_progress(run_dir) if progress is None else progress
    rec = prog.get("stopped") if not prog.get("finished") else None
    return rec if isinstance(rec, dict) else None


def _resolve(spec: Any, out: str | os.PathLike | None) -> tuple[SweepSpec, Path]:
    if isinstance(spec, (str, os.PathLike)) and Path(spec).is_dir():
        d = Path(spec)
        if out is not None and Path(out).resolve() != d.resolve():
            raise ConfigError(f"{spec}: a sweep directory resumes in place; drop out={out!r}")
        info = _read_sweep_json(d)
        return SweepSpec.from_stored(info["spec"], where=str(d / SWEEP_JSON)), d
    if isinstance(spec, SweepSpec):
        resolved = spec
    elif isinstance(spec, Mapping):
        resolved = SweepSpec.from_dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        resolved = load_spec(spec)
    else:
        raise ConfigError(f"spec: expected a SweepSpec, a dict, a spec file or a sweep directory, got "
                          f"{type(spec).__name__}")
    if out is None:
        raise ConfigError("out: give the sweep directory to write (e.g. checkpoints/my-sweep)")
    if not os.fspath(out).strip():  # Path("") is the current directory: the sweep would be written there
        raise ConfigError("out: an empty path; give the sweep directory to write (e.g. checkpoints/my-sweep)")
    return resolved, Path(out)


def plan_sweep(spec: Any, out: str | os.PathLike | None = None, *, overwrite: bool = False,
               **options: Any) -> SweepPlan:
    """Decide everything :func:`sweep` would do, and write nothing.

    Args:
        spec: a :class:`SweepSpec`, a spec dict, a ``.toml`` / ``.json`` spec file, or an existing
            sweep directory (then ``out`` is that directory).
        out: the sweep directory.
        overwrite: plan as if a different sweep found in ``out`` were deleted.
        **options: :class:`~grokinterp.sweeps.spec.SweepOptions` fields that override the spec's.

    Raises:
        ConfigError: the spec, a point's config, the optimizer / transforms or the device is invalid.
        RunError: ``out`` holds a different sweep (without ``overwrite``), something that is not a
            sweep, runs with other configs, or the disk is too small.
    """
    spec, path = _resolve(spec, out)
    spec = spec.with_options(**options)
    stored, replacing = None, False
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: exists and is not a directory")
    if (path / SWEEP_JSON).exists():
        stored = _read_sweep_json(path)
        try:
            same = SweepSpec.from_stored(stored["spec"], where=SWEEP_JSON).runs_dict() == spec.runs_dict()
        except ConfigError:
            same = False
        if not same and not overwrite:
            raise RunError(f"{path}: holds a different sweep (its spec differs from this one); choose another "
                           f"directory, or pass overwrite=True (--overwrite) to replace it")
        if not same:
            stored, replacing = None, True
    elif path.exists() and any(path.iterdir()):
        raise RunError(f"{path}: is not empty and holds no sweep ({SWEEP_JSON}); choose another directory")
    points = spec.points()
    seen_devices = set()
    for p in points:  # registries and device, once per distinct train section
        key = repr(p.config.train)
        if key not in seen_devices:
            seen_devices.add(key)
            check_trainable(p.config)
    if stored is not None:  # the decisions of the first run of this sweep stand (schedules included)
        by_name = {q["name"]: q for q in stored["points"]}
        configs = [RunConfig.from_dict(by_name[p.name]["config"], source=str(path / SWEEP_JSON))
                   if p.name in by_name else p.config for p in points]
        meta = stored.get("checkpoints", {})
        note = str(meta.get("note", "checkpoint schedules as recorded"))
        unthinned = int(meta.get("disk_bytes_at_preset_schedule", 0)) or sum(run_disk_bytes(c) for c in configs)
    else:
        touches_schedule = any(k in ("every", "windows", "log_early", "flush_every") or k.startswith("checkpoints.")
                               for part in (spec.fixed, spec.grid, spec.zip) for k in part)
        fit = fit_schedules([p.config for p in points], spec.options.max_disk_gb * 1e9,
                            allow_thinning=spec.options.checkpoints == "auto" and not touches_schedule)
        configs, note, unthinned = fit.configs, fit.note, fit.bytes_before
    runs = []
    for p, config in zip(points, configs):
        run_dir = path / RUNS_DIR / p.name
        state, epoch = _run_state(run_dir, config) if not replacing and run_dir.exists() else ("new", 0)
        runs.append(PlannedRun(p.name, p.values, config, run_dir, state, epoch))
    disk = sum(run_disk_bytes(r.config) for r in runs)
    notes = []
    needed = sum(run_disk_bytes(r.config) for r in runs if r.state == "new")
    probe = path if path.exists() else next((q for q in path.absolute().parents if q.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise RunError(f"{path}: the runs still to train need ≈ {format_bytes(needed)} but only {format_bytes(free)} "
                       f"is free; lower options.max_disk_gb (--max-disk-gb) so that schedules are thinned, or free "
                       f"space")
    if disk > spec.options.max_disk_gb * 1e9:
        notes.append(f"warning: the sweep needs ≈ {format_bytes(disk)}, more than max_disk_gb = "
                     f"{spec.options.max_disk_gb:g} GB")
    jobs, max_stack = _jobs(spec, runs)
    if spec.options.stack and any(r.state == "new" for r in runs):
        lone = [r.name for r in runs if r.state == "new" and stack_key(r.config) is None]
        notes.append(f"stacks of up to {max_stack} runs (runs that share shapes train together)"
                     + (f"; {len(lone)} run(s) cannot be stacked and train alone, e.g. {lone[0]}: "
                        f"{stack_unsupported_reason(next(r.config for r in runs if r.name == lone[0]))}"
                        if lone else ""))
    return SweepPlan(path, spec, runs, jobs, note, disk, unthinned, stored, notes)


def _stack_id(run_dir: Path) -> str | None:
    try:
        rec = layout.read_json(run_dir / layout.RUN_JSON, "run metadata").get("stack")
    except (RunError, AttributeError):
        return None
    return str(rec["id"]) if isinstance(rec, dict) and "id" in rec else None


def _jobs(spec: SweepSpec, runs: list[PlannedRun]) -> tuple[list[Job], int]:
    """The jobs, and the most runs per stack they were cut to."""
    new = [(str(r.run_dir.absolute()), r.config) for r in runs if r.state == "new"]
    unfinished = [(str(r.run_dir.absolute()), r.config, r.epoch, _stack_id(r.run_dir))
                  for r in runs if r.state == "unfinished"]
    o = spec.options
    max_stack = 1
    if o.stack and new:
        if o.max_stack is not None:
            max_stack = o.max_stack
        elif o.executor == "ray":  # the workers' devices are not this machine's: each splits its job further
            max_stack = DEFAULT_MAX_STACK["cuda" if o.num_gpus else "cpu"]
        else:
            # Size stacks for the most demanding group (a width axis puts each width in its own stack, and
            # the largest width's stack needs the most memory per run): one representative per stack key,
            # the one with the largest training set (a stack is padded to its largest).
            reps: dict[str, RunConfig] = {}
            for _, c in new:
                k = stack_key(c)
                if k is not None and (k not in reps or c.task.frac_train > reps[k].task.frac_train):
                    reps[k] = c
            max_stack = min(max_stack_size(c) for c in reps.values()) if reps else max_stack_size(new[0][1])
    return make_jobs(new, unfinished, preset=spec.preset, group=stack_key if o.stack else None,
                     max_stack=max_stack, spread=o.workers), max_stack


def sweep(spec: Any, out: str | os.PathLike | None = None, *, executor: Executor | str | None = None,
          progress: bool = True, overwrite: bool = False, deadline: float | None = None, **options: Any) -> "Sweep":
    """Train every run of a sweep (skipping finished ones, resuming interrupted ones); returns the :class:`Sweep`.

    Args:
        spec: a :class:`~grokinterp.sweeps.spec.SweepSpec`, a spec dict (the TOML/JSON structure),
            a spec file, or an existing sweep directory (resumed in place).
        out: the sweep directory (created).
        executor: where the jobs run: an :class:`~grokinterp.sweeps.executor.Executor`, or ``"local"`` /
            ``"ray"`` (default: ``options.executor``, local).
        progress: one progress bar for the sweep (and the plan printed above it).
        overwrite: replace a different sweep found in ``out``.
        deadline: wall-clock time (``time.time()``; :func:`~grokinterp.sweeps.stop.deadline_from`) at
            which running stacks stop (flushed, resumable) and no new job starts; ``None``: no limit.
        **options: :class:`~grokinterp.sweeps.spec.SweepOptions` overrides (``max_stack=8``,
            ``workers=2`` for two local worker processes, ...).

    Raises:
        ConfigError, RunError: before anything is written (see :func:`plan_sweep`).
        RunError: after the sweep, if some jobs failed (named; running the sweep again retries them).
        TrainingInterrupted: Ctrl-C / SIGTERM; every run flushed and the sweep resumes when run again.
    """
    if isinstance(executor, str):  # a name: "local" or "ray"
        options["executor"], executor = executor, None
    plan = plan_sweep(spec, out, overwrite=overwrite, **options)
    if executor is None:
        executor = executor_for(plan.spec.options)
    return execute_plan(plan, executor, progress=progress, deadline=deadline)


def execute_plan(plan: SweepPlan, executor: Executor, *, progress: bool = True,
                 deadline: float | None = None) -> "Sweep":
    """Write the sweep manifest (new sweeps) and run the plan's jobs on ``executor`` (until ``deadline``)."""
    path = plan.path
    stop = plan.spec.stop.to_dict() if plan.spec.stop is not None else None
    jobs = [dataclasses.replace(j, stop=stop, deadline=deadline) for j in plan.jobs]
    if plan.stored is None:
        if path.exists() and (path / SWEEP_JSON).exists():  # overwrite: a readable sweep, replaced
            shutil.rmtree(path)
        try:
            (path / RUNS_DIR).mkdir(parents=True, exist_ok=True)
            layout.write_json_atomic(path / SWEEP_JSON, _sweep_json(plan))
        except OSError as e:
            raise RunError(f"{path}: cannot create the sweep directory ({e.strerror or e})") from e
    counts = plan.counts()
    bar = SweepProgress(plan.model_epochs_total, plan.model_epochs_done, len(plan.runs),
                        counts["finished"] + counts["stopped"], enabled=progress)
    try:
        for line in plan.describe():
            bar.write(line)
        results: list[JobResult] = executor.run(jobs, bar) if jobs else []
        cut = sum(len(r.run_dirs) for r in results if r.ok and r.stopped == "deadline")
        unstarted = sum(len(r.run_dirs) for r in results if r.ok and r.stopped == "not_started")
        if cut or unstarted:
            bar.write(f"wall-clock budget reached: {_count(cut, 'run')} stopped (flushed), {_count(unstarted, 'run')} "
                      f"not started; continue with `grokinterp sweep --resume {path}`")
    finally:
        bar.close()
    failed = [r for r in results if not r.ok]
    if failed:
        names = "; ".join(f"{', '.join(Path(d).name for d in r.run_dirs)}: {r.error}" for r in failed[:5])
        more = f" (and {_count(len(failed) - 5, 'more job')})" if len(failed) > 5 else ""
        raise RunError(f"{path}: {len(failed)} of {len(results)} jobs failed: {names}{more}; run the sweep again to "
                       f"retry them (finished runs are kept)")
    return load_sweep(path)


def resume_sweep(path: str | os.PathLike, **kwargs: Any) -> "Sweep":
    """Continue a sweep from its directory (finished runs skipped, interrupted ones resumed)."""
    return sweep(Path(path), **kwargs)


# -- reading a sweep back -----------------------------------------------------------------------------
class Sweep:
    """A sweep directory, read back. Build with :func:`load_sweep`.

    Attributes:
        path: the sweep directory.
        info: the parsed ``sweep.json``.
        spec: the :class:`~grokinterp.sweeps.spec.SweepSpec`.
        points: ``[{name, values, config, run}]`` as recorded.
        axes: the varied axes, in order.
    """

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path, self.info = path, info
        self.spec = SweepSpec.from_stored(info["spec"], where=str(path / SWEEP_JSON))
        self.points = info["points"]
        self.axes = self.spec.axes()

    def run_dir(self, name: str) -> Path:
        for p in self.points:
            if p["name"] == name:
                return self.path / p["run"]
        raise RunError(f"{self.path}: no point named {name!r}")

    def run(self, name: str) -> Run:
        """The :class:`~grokinterp.store.run.Run` of a point."""
        return load_run(self.run_dir(name))

    def runs(self) -> dict[str, Run]:
        """Every point's run that exists on disk, by point name."""
        out = {}
        for p in self.points:
            d = self.path / p["run"]
            if (d / layout.RUN_JSON).exists():
                out[p["name"]] = load_run(d)
        return out

    def status(self) -> pd.DataFrame:
        """One row per point: its varied values, the run directory, epochs flushed, finished or not,
        ``stopped`` by the spec's stop rule (then ``stopped_epoch`` / ``stopped_step``: where it stopped),
        and ``done`` (finished or stopped: running the sweep again does not train it)."""
        rows = []
        for p in self.points:
            d = self.path / p["run"]
            cfg = RunConfig.from_dict(p["config"])
            prog = read_progress(d)
            done = epochs_done(d, prog)
            finished = done >= cfg.train.epochs + 1
            rec = None if finished else stop_record(d, prog)
            rows.append({"name": p["name"], **p.get("values", {}), "run": str(d),
                         "epochs_done": max(done - 1, 0) if done else 0, "epochs": cfg.train.epochs,
                         "finished": finished, "stopped": rec is not None,
                         "stopped_epoch": rec.get("epoch") if rec else None,
                         "stopped_step": rec.get("step") if rec else None, "done": finished or rec is not None})
        return pd.DataFrame(rows)

    @property
    def finished(self) -> bool:
        """Every run done: finished, or stopped by the spec's stop rule."""
        return bool(self.status()["done"].all()) if self.points else True

    def table(self, **kwargs: Any) -> pd.DataFrame:
        """One row per run with its numbers (:func:`grokinterp.sweeps.table.sweep_table`)."""
        from .table import sweep_table

        return sweep_table(self, **kwargs)

    def __repr__(self) -> str:
        st = self.status()
        return (f"Sweep({str(self.path)!r}: {_count(len(self.points), 'run')} over {', '.join(self.axes) or 'no axes'}, "
                f"{int(st['finished'].sum()) if len(st) else 0} finished"
                + (f", {int(st['stopped'].sum())} stopped by the rule" if len(st) and st["stopped"].any() else "") + ")")


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Open a sweep directory written by :func:`sweep`.

    Raises:
        RunError: no such directory, or its ``sweep.json`` is missing or malformed.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such sweep directory")
    if not (path / SWEEP_JSON).exists():
        raise RunError(f"{path}: not a grokinterp sweep (no {SWEEP_JSON})")
    info = _read_sweep_json(path)
    try:
        return Sweep(path, info)
    except ConfigError as e:
        raise RunError(str(e)) from None
