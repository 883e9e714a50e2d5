"""Executors: where a sweep's jobs run. The seam between planning a sweep and training it.

An executor takes the :class:`~grokinterp.sweeps.plan.Job` s of a sweep and runs each with
:func:`run_job`, reporting epochs done to a :class:`SweepProgress`:

* :class:`LocalExecutor` (default) — one job after another in this process, or, with
  ``workers=n``, ``n`` jobs side by side in worker processes on this machine; no extra dependency.
* :class:`RayExecutor` — each job is a Ray task on a cluster (``pip install grokinterp[ray]``),
  asking for ``num_gpus`` / ``num_cpus``; every task writes its runs into the sweep directory, which
  must be on a filesystem all nodes share, at the same path. Progress is read from the runs'
  ``progress.json`` files.

A sweep's stop rule (:mod:`grokinterp.sweeps.stop`) and wall-clock deadline travel with each job
(``Job.stop``, ``Job.deadline``): a stack the rule stops is a job that ended well (its runs count as
done); one the deadline stops ends with ``stopped = "deadline"`` (its runs flushed and resumable), and a
job whose deadline passed before it started does not start (``stopped = "not_started"``).

A job that fails does not stop the others: its error is recorded, the sweep raises at the end
naming the failed runs, and running the sweep again retries them (finished runs are skipped,
interrupted ones resumed). Ctrl-C or SIGTERM stops the sweep at once, on either executor: every run
flushes first, and :class:`SweepInterrupted` says how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..errors import ConfigError
from ..monitor import resume, train  # single runs: with their live measures (a stack records none)
from ..store import layout
from ..training.callbacks import Callback
from ..training.loop import TrainingInterrupted, stop_on_signals
from ..training.stacked import max_stack_size, resume_stacked, train_stacked
from .plan import Job
from .stop import DeadlineCallback, StopRule, StopRuleCallback

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "JobResult", "SweepProgress", "run_job", "make_executor",
           "executor_for", "SweepInterrupted", "read_progress", "epochs_done"]


@dataclass(frozen=True)
class JobResult:
    """How a job ended: ``ok``, or the ``error`` (one line) and ``detail`` (traceback).

    ``stopped``: ``None`` (trained to the end), ``"rule"`` (the sweep's stop rule ended a stack of it:
    its runs are done), ``"deadline"`` (the wall-clock budget stopped it: flushed, resumable) or
    ``"not_started"`` (the deadline had passed before it started).
    """

    run_dirs: tuple[str, ...]
    ok: bool
    seconds: float
    error: str | None = None
    detail: str | None = None
    stopped: str | None = None


class SweepProgress:
    """One progress bar for the whole sweep, counted in model-epochs (a stack of 16 runs advancing
    one epoch counts 16). ``enabled=False`` counts without drawing."""

    def __init__(self, total: int, initial: int = 0, runs_total: int = 0, runs_done: int = 0,
                 enabled: bool = True):
        self.total, self.done = int(total), int(initial)
        self.runs_total, self.runs_done = runs_total, runs_done
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc="sweep", unit="ep", unit_scale=True,
                            dynamic_ncols=True, mininterval=0.5)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(runs=f"{self.runs_done}/{self.runs_total}", refresh=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set_done(self, n: int) -> None:
        """Set the count (executors that poll the runs' progress files)."""
        if n > self.done:
            self.update(n - self.done)

    def run_finished(self, k: int = 1) -> None:
        self.runs_done += k
        self._postfix()

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _EpochCounter(Callback):
    """Reports every loop epoch, times the runs the loop trains, to a counter (the sweep's progress bar)."""

    def __init__(self, on_epochs: Callable[[int], None]):
        self.on_epochs = on_epochs

    def on_step(self, loop: Any, epoch: int) -> None:
        self.on_epochs(sum(getattr(loop, "real", (True,))))  # a stack's stand-ins do not count


def run_job(job: Job, on_epochs: Callable[[int], None] | None = None) -> JobResult:
    """Run one job in this process; returns how it ended (failures are caught and described;
    Ctrl-C / SIGTERM propagate after the runs flushed)."""
    t0 = time.perf_counter()
    if job.deadline is not None and time.time() >= job.deadline:
        return JobResult(job.run_dirs, True, 0.0, stopped="not_started")
    cbs = [_EpochCounter(on_epochs)] if on_epochs else []
    rule = StopRule.from_dict(job.stop) if job.stop is not None else None
    ends: list[str] = []

    def guarded(fn: Callable[[list[Callback]], Any]) -> None:
        """``fn(callbacks)`` with a fresh stop rule and deadline (one per stack); their stops are not errors."""
        extra: list[Any] = ([StopRuleCallback(rule)] if rule is not None else []) + \
            ([DeadlineCallback(job.deadline)] if job.deadline is not None else [])
        try:
            fn(cbs + extra)
        except TrainingInterrupted:
            if any(isinstance(c, StopRuleCallback) and c.fired for c in extra):
                ends.append("rule")
            elif any(isinstance(c, DeadlineCallback) and c.fired for c in extra):
                ends.append("deadline")
            else:
                raise  # Ctrl-C / SIGTERM: stop the sweep

    try:
        if job.stacked:
            if job.kind == "resume":
                guarded(lambda c: resume_stacked(job.run_dirs, progress=False, callbacks=c))
            else:
                configs = [RunConfig.from_dict(c) for c in job.configs]
                size = max_stack_size(configs[0])  # this machine's memory decides (a Ray worker's own)
                for i in range(0, len(configs), size):
                    if job.deadline is not None and time.time() >= job.deadline:
                        ends.append("deadline")
                        break
                    guarded(lambda c, i=i: train_stacked(configs[i: i + size], job.run_dirs[i: i + size],
                                                         progress=False, preset=job.preset, callbacks=c))
        elif job.kind == "resume":
            guarded(lambda c: resume(job.run_dirs[0], progress=False, callbacks=c))
        else:
            guarded(lambda c: train(RunConfig.from_dict(job.configs[0]), job.run_dirs[0], progress=False,
                                    preset=job.preset, callbacks=c))
    except KeyboardInterrupt:  # TrainingInterrupted too: the runs flushed; stop the sweep
        raise
    except Exception as e:  # noqa: BLE001 - one failed job must not stop a sweep of hundreds
        return JobResult(job.run_dirs, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}",
                         traceback.format_exc())
    stopped = "deadline" if "deadline" in ends else "rule" if ends else None
    return JobResult(job.run_dirs, True, time.perf_counter() - t0, stopped=stopped)


class Executor(Protocol):
    """Runs a sweep's jobs; ``progress`` counts model-epochs."""

    name: str

    def run(self, jobs: Sequence[Job], progress: SweepProgress) -> list[JobResult]: ...


class LocalExecutor:
    """The jobs on this machine (the default; needs nothing but grokinterp).

    Args:
        workers: ``1`` (default) runs every job in this process, one after another; ``n > 1`` runs
            up to ``n`` jobs side by side, each in a worker process of its own (forked where the
            platform allows and CUDA is not initialised, so a worker starts in milliseconds
            instead of importing torch again). Each worker trains with the trainers' default of one
            torch thread, so ``n`` workers use ``n`` cores without threads waiting for each other.

    Progress comes from the workers every half second; a worker that dies (killed, out of memory)
    fails its job, which running the sweep again resumes. Ctrl-C or SIGTERM stops every worker
    (each flushes its runs first) and raises :class:`SweepInterrupted`.
    """

    name = "local"

    def __init__(self, workers: int = 1):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers: must be a positive integer, got {workers!r}")
        self.workers = workers

    def run(self, jobs: Sequence[Job], progress: SweepProgress) -> list[JobResult]:
        if self.workers > 1 and len(jobs) > 1:
            return _run_in_workers(jobs, progress, self.workers)
        results = []
        for job in jobs:
            result = run_job(job, progress.update)
            _report(result, progress)
            results.append(result)
        return results


def _report(result: JobResult, progress: SweepProgress) -> None:
    if result.ok and result.stopped in ("deadline", "not_started"):
        return  # not done: the sweep resumes these runs when it runs again
    if result.ok:
        progress.run_finished(len(result.run_dirs))
    else:
        progress.write(f"failed: {', '.join(Path(d).name for d in result.run_dirs)}: {result.error}")


def _start_method() -> str:
    import torch

    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _send(conn: Any, kind: str, **fields: Any) -> None:
    conn.send_bytes(json.dumps({"kind": kind, **fields}).encode())  # JSON, not pickle


def _worker_main(job: Job, conn: Any) -> None:
    """A worker process: run ``job``, sending epoch counts (batched) and how it ended."""
    # Ctrl-C or SIGTERM before or after training proper stops the worker too (a forked worker
    # would otherwise inherit the parent's handler, which only sets the parent's flag).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    pending, last = [0], [time.monotonic()]

    def on_epochs(n: int) -> None:
        pending[0] += n
        now = time.monotonic()
        if now - last[0] >= 0.5:
            _send(conn, "epochs", n=pending[0])
            pending[0], last[0] = 0, now

    try:
        try:
            result = run_job(job, on_epochs)
            _send(conn, "epochs", n=pending[0])
            _send(conn, "result", result=dataclasses.asdict(result))
        except KeyboardInterrupt as e:  # TrainingInterrupted: the runs flushed
            _send(conn, "epochs", n=pending[0])
            _send(conn, "interrupted", signum=int(getattr(e, "signum", signal.SIGINT)))
    except (OSError, KeyboardInterrupt):  # the parent is gone, or a second signal: nothing left to tell
        pass
    finally:
        conn.close()


class SweepInterrupted(TrainingInterrupted):
    """A sweep stopped on SIGINT / SIGTERM; every run flushed first. ``.signum`` as for a run."""

    def __init__(self, sweep_dir: Path, signum: int):
        KeyboardInterrupt.__init__(self, f"sweep interrupted; every run is saved, continue with "
                                         f"`grokinterp sweep --resume {sweep_dir}`")
        self.run_dir, self.epoch, self.signum = sweep_dir, 0, int(signum)


def _run_in_workers(jobs: Sequence[Job], progress: SweepProgress, workers: int) -> list[JobResult]:
    ctx = multiprocessing.get_context(_start_method())
    queue = list(jobs)
    running: dict[Any, tuple[Any, Job]] = {}
    ended: dict[Any, JobResult] = {}
    results: list[JobResult] = []
    stop: int | None = None  # the signal that stopped the sweep
    with stop_on_signals() as stopped:
        try:
            while running or (queue and stop is None):
                if stop is None and stopped():
                    stop = int(stopped.signum)  # type: ignore[attr-defined]
                    _signal_all(running, None)  # every worker flushes and stops
                while queue and stop is None and len(running) < workers:
                    job = queue.pop(0)
                    if job.deadline is not None and time.time() >= job.deadline:
                        results.append(JobResult(job.run_dirs, True, 0.0, stopped="not_started"))
                        continue
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_worker_main, args=(job, send), name="grokinterp-sweep-worker")
                    proc.start()
                    send.close()
                    running[recv] = (proc, job)
                for conn in multiprocessing.connection.wait(list(running), timeout=0.5):
                    proc, job = running[conn]
                    try:
                        msg = json.loads(conn.recv_bytes())
                    except (EOFError, OSError):  # the worker ended (or died)
                        proc.join()
                        conn.close()
                        del running[conn]
                        result = ended.pop(conn, None)
                        if result is None and stop is None:
                            result = JobResult(job.run_dirs, False, 0.0, f"its worker process ended with exit code "
                                               f"{proc.exitcode} before the job did (killed?); its runs resume "
                                               f"when the sweep runs again")
                        if result is not None:
                            _report(result, progress)
                            results.append(result)
                        continue
                    if msg["kind"] == "epochs":
                        progress.update(int(msg["n"]))
                    elif msg["kind"] == "result":
                        r = msg["result"]
                        ended[conn] = JobResult(**{**r, "run_dirs": tuple(r["run_dirs"])})
                    elif msg["kind"] == "interrupted" and stop is None:
                        stop = int(msg["signum"])
                        _signal_all(running, conn)  # the others flush and stop too
        except KeyboardInterrupt:  # a second Ctrl-C: the workers got it too; wait for them to end
            stop = stop or int(signal.SIGINT)
            for proc, _ in running.values():
                proc.join()
    if stop is not None:
        raise SweepInterrupted(Path(jobs[0].run_dirs[0]).parent.parent, stop) from None
    return results


def _signal_all(running: dict[Any, tuple[Any, Job]], skip: Any) -> None:
    """SIGTERM to every running worker but ``skip``'s: each flushes its runs and stops."""
    for conn, (proc, _) in running.items():
        if conn is not skip and proc.is_alive():
            try:
                proc.terminate()
            except OSError:
                pass


def read_progress(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``progress.json`` as a dict; ``{}`` when there is none yet or it cannot be read."""
    try:
        prog = json.loads((Path(run_dir) / layout.PROGRESS_JSON).read_text())
    except (OSError, ValueError):
        return {}
    return prog if isinstance(prog, dict) else {}


def epochs_done(run_dir: str | Path, progress: dict[str, Any] | None = None) -> int:
    """Loop epochs a run directory has flushed (from ``progress.json``, or the ``progress`` already read
    by :func:`read_progress`; 0 if there is none yet)."""
    prog = read_progress(run_dir) if progress is None else progress
    try:
        return int(prog.get("epoch", 0)) + (1 if prog.get("finished") else 0)
    except (TypeError, ValueError):
        return 0


class RayExecutor:
    """Each job a Ray task (``pip install grokinterp[ray]``).

    Args:
        address: the cluster to join (``"auto"`` for the one this node belongs to, ``"ray://host:10001"``
            for a remote client); ``None`` starts a local Ray instance.
        num_gpus: GPUs per task (one stack per task; ``1`` trains each stack on its own GPU).
        num_cpus: CPUs per task.
        poll_seconds: how often the runs' ``progress.json`` files are read for the progress bar.

    The sweep directory must be on a filesystem every node mounts at the same path.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_gpus: float = 0.0, num_cpus: float = 1.0,
                 poll_seconds: float = 2.0, runtime_env: dict | None = None):
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.poll_seconds, self.runtime_env = poll_seconds, runtime_env

    def run(self, jobs: Sequence[Job], progress: SweepProgress) -> list[JobResult]:
        try:
            import ray
        except ImportError:
            raise ConfigError("options.executor: the Ray executor needs Ray (pip install 'grokinterp[ray]')") from None
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": self.address, "log_to_driver": False}
            if self.runtime_env:
                kw["runtime_env"] = self.runtime_env
            ray.init(**kw)
        task = ray.remote(num_gpus=self.num_gpus, num_cpus=self.num_cpus, max_retries=0)(_ray_job)
        base = progress.done - sum(epochs_done(d) for job in jobs for d in job.run_dirs)
        pending = {task.remote(job): job for job in jobs}
        results: list[JobResult] = []
        stop: int | None = None  # the signal that stopped the sweep
        last_poll = 0.0
        # Our handler, installed after ray.init (which installs its own: on SIGTERM it aborted the driver, exit
        # 134, before any run flushed): SIGINT / SIGTERM cancel the tasks, which flush their runs and stop.
        with stop_on_signals() as stopped:
            try:
                while pending:
                    if stop is None and stopped():
                        stop = int(stopped.signum)  # type: ignore[attr-defined]
                        _cancel(ray, pending)
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            result = ray.get(ref)
                        except Exception as e:  # noqa: BLE001 - a worker died, the task raised or was cancelled
                            result = JobResult(job.run_dirs, False, 0.0, f"{type(e).__name__}: {str(e)[:500]}")
                        if stop is not None:
                            continue  # stopping: the runs flushed (or finished); the sweep resumes them
                        results.append(result)
                        _report(result, progress)
                    if time.monotonic() - last_poll >= self.poll_seconds or not pending:
                        last_poll = time.monotonic()
                        progress.set_done(base + sum(epochs_done(d) for job in jobs for d in job.run_dirs))
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the tasks to flush
                stop = stop or int(signal.SIGINT)
                _cancel(ray, pending)
        if stop is not None:
            raise SweepInterrupted(Path(jobs[0].run_dirs[0]).parent.parent, stop) from None
        return results


def _cancel(ray: Any, pending: dict[Any, Job]) -> None:
    """Cancel every pending task: one not started never runs; a running one gets a KeyboardInterrupt, which
    the trainer takes as Ctrl-C (its runs flush, then it stops)."""
    for ref in pending:
        try:
            ray.cancel(ref)
        except Exception:  # noqa: BLE001 - a task that ended meanwhile
            pass


def _ray_job(job: Job) -> JobResult:
    """What a Ray worker runs: the job, on the devices Ray gave it (CUDA_VISIBLE_DEVICES)."""
    return run_job(job)


def make_executor(name: str, **kwargs: Any) -> Executor:
    """``local`` (``kwargs``: :class:`LocalExecutor` arguments) or ``ray`` (:class:`RayExecutor` arguments)."""
    if name == "local":
        return LocalExecutor(**kwargs)
    if name == "ray":
        return RayExecutor(**kwargs)
    raise ConfigError(f"options.executor: must be 'local' or 'ray', got {name!r}")


def executor_for(options: Any) -> Executor:
    """The executor a sweep's :class:`~grokinterp.sweeps.spec.SweepOptions` ask for."""
    if options.executor == "ray":
        return make_executor("ray", address=options.ray_address, num_gpus=options.num_gpus,
                             num_cpus=options.num_cpus)
    return make_executor(options.executor, workers=options.workers)
