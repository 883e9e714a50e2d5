"""The training loop: full-batch or minibatch steps, dense checkpoints, resumable bit for bit.

Example:
    >>> from grokinterp import make_config, train
    >>> run = train(make_config("tiny"), "checkpoints/tiny")        # doctest: +SKIP
    >>> run.metrics.tail(1)                                           # doctest: +SKIP

Per epoch ``e`` (the model after ``e`` full-batch steps) the loop: snapshots the parameters if
``e`` is a checkpoint epoch, flushes when the buffer is full, records test loss and accuracy every
``eval_every`` epochs (the model at ``e``, before its step), then takes one step
(:mod:`~grokinterp.training.step`: forward on the final position, float64 log-softmax,
backward, gradient transforms, optimizer). The final epoch is evaluated and snapshotted without a
step. Metrics stay on the device until a flush needs them (the learning rate, a host value, is
kept on the host). The pieces are seams of their own: the optimizer comes from the registry in
:mod:`~grokinterp.training.optim`, gradient transforms from :mod:`~grokinterp.training.transforms`
(one registry each, written once over stacks: a single run is a stack of one, its parameters views
of one flat row ``[1, n_params]``), the step executor (eager or CUDA graph) from
:mod:`~grokinterp.training.step`, and observers are :mod:`~grokinterp.training.callbacks`. The epoch
loop itself is :class:`EpochLoop`, shared with the stacked trainer. Files are written through
:mod:`grokinterp.store.writer`.

A minibatch run (``train.batch_size``) takes ``k = ceil(n_train / batch_size)`` steps per epoch,
each on one batch of :mod:`~grokinterp.training.data` (the fast path builds a plan per batch);
schedules count optimizer steps, checkpoints may fall inside an epoch (``checkpoints.unit`` step),
and a stop between any two steps resumes there (see :meth:`TrainLoop.run`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import FORMAT_VERSION, RunConfig
from ..errors import ConfigError, RunError
from ..model import param_shapes
from ..model.denormals import flush_denormals
from ..model.families import family_of
from ..model.fastpath import FastPlan, fast_path_unsupported, final_logits
from ..store import layout
from ..store.integrity import last_flush_complete
from ..store.lock import RunLock, acquire
from ..store.run import Run, load_run, run_directory
from ..store.writer import (
    METRIC_COLUMNS,
    STEP_COLUMN,
    CheckpointWriter,
    check_out_dir,
    claim_run_dirs,
    clear_run_dir,
    run_metadata,
    start_run,
)
from ..tasks import split_pairs, training_labels
from .callbacks import Callback, ProgressBar
from .constraints import WeightNormConstraint
from .data import batch_indices, epoch_of, sampler_seed
from .lineage import init_from_parent, lineage_record
from .optim import ParamLayout, build_optimizer, check_optimizer
from .preflight import preflight
from .step import CudaGraphStep, EagerStep, graphs_enabled, loss_function
from .threads import DEFAULT_THREADS, check_threads, torch_threads
from .transforms import (
    RunSlice,
    build_transforms,
    check_transforms,
    load_transform_state,
    transform_state_tensors,
)

__all__ = ["train", "resume", "EpochLoop", "TrainLoop", "TrainingInterrupted", "resolve_device", "check_trainable",
           "stop_on_signals"]


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


@dataclass
class _Data:
    tokens: Tensor
    labels: Tensor
    plan: FastPlan | None


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

    A subclass holds the runs' state — :class:`TrainLoop` one run (the hooked model's parameters as
    views of one flat row), :class:`~grokinterp.training.stacked.StackedLoop` a stack — and sets
    ``E``, ``eval_every``, ``per_epoch``, ``total_steps``, ``step_unit``, ``batch_size``,
    ``ckpt_epochs``, ``start_epoch``, ``start_step``, ``flushed_upto`` and ``callbacks``.
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


class TrainLoop(EpochLoop):
    """The state of one training run and its epoch loop (built by :func:`train` / :func:`resume`).

    Attributes callbacks may read: ``config``, ``run_dir``, ``device``, ``model``, ``params``
    (``{name: Parameter}``), ``metrics`` (``{column: float64 [epochs + 1]}``, on the device except
    ``lr``; columns declared by callbacks in ``Callback.metric_columns`` too), ``text_metrics``
    (``{column: [str | None] * (epochs + 1)}``, on the host: ``Callback.text_columns``),
    ``optimizer``, ``transforms``, ``constraints``, ``loss_fn``, ``data`` (``{"train" | "test":
    tokens, labels}``), ``split`` (train and test grid indices ``a * p + b``), ``postfix``
    (``{label: text}`` shown in the progress bar).
    Callbacks write the values of their own columns at the epoch they describe.
    """

    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, train_pairs, test_pairs,
                 callbacks: Sequence[Callback] = ()):
        self.config, self.run_dir, self.device = config, run_dir, device
        self.callbacks = list(callbacks)
        self.split = (np.asarray(train_pairs), np.asarray(test_pairs))  # grid indices a * p + b
        ds = config.task.task().dataset()
        mc, tc = config.model, config.train
        dtype = getattr(torch, tc.dtype)  # train.dtype: parameters, optimizer state, checkpoints (float32 / float64)
        trn_x = torch.from_numpy(ds.select(train_pairs, mc.input_layout)[0])
        use_fast = tc.fast_path and tc.dtype == "float32" and fast_path_unsupported(mc, trn_x) is None  # float32 kernels
        self.data = {}
        for name, pairs in (("train", train_pairs), ("test", test_pairs)):
            x, y = ds.select(pairs, mc.input_layout)
            y = training_labels(config.task, pairs, y) if name == "train" else y  # task.random_labels
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            x = x.to(dtype) if x.is_floating_point() else x  # input vectors in the run's dtype
            plan = FastPlan.build(mc, x) if use_fast and len(x) else None
            self.data[name] = _Data(x, y, plan)
        # the family's hooked module (it imports transformer_lens on first use: sweeps plan, resume checks
        # and the CLI import this module without training anything, and transformer_lens takes seconds)
        self.model = family_of(mc).hooked(mc).to(device=device, dtype=dtype)  # float64: the float32 init, exactly
        self.params = dict(self.model.named_parameters())
        init_from_parent(self.params, config, run_dir)  # train.init_from: a parent's checkpoint (lineage.py)
        # The parameters live in one row of a flat parameter [1, n_params] (a stack of one): the
        # optimizer and the gradient transforms are the registries' entries over stacks; the hooked
        # module's parameters are views of that row, so the forward reads what it always read.
        self.layout = ParamLayout(param_shapes(mc))
        if sorted(self.layout.names) != sorted(self.params):
            raise RunError(f"{run_dir}: the model's parameters {sorted(self.params)[:4]}... are not its family's "
                           f"param_shapes {self.layout.names[:4]}...")
        with torch.no_grad():
            self.flat = torch.nn.Parameter(self.layout.flatten({k: p.detach()[None] for k, p in self.params.items()}))
            for k, v in self.layout.views(self.flat.detach()[0]).items():
                self.params[k].data = v
        # A minibatch run's schedules count optimizer steps: its optimizer sees train.epochs = the
        # run's total steps (TrainConfig.lr_at(step) then spans the run, as lr_at(step, total_steps)).
        self.tcs = [tc if tc.batch_size is None else dataclasses.replace(tc, epochs=config.total_steps())]
        self.optimizer = build_optimizer(self.flat, self.layout, self.tcs)
        # On CUDA the step of the fast path is replayed from a CUDA graph (see step.py); the graph
        # reads the learning rate from the device epoch counter.
        use_graph = (device.type == "cuda" and self.data["train"].plan is not None and graphs_enabled()
                     and tc.batch_size is None and getattr(self.optimizer, "graphable", True))
        self.epoch_t = torch.zeros((), dtype=torch.float32, device=device)
        self.transforms = build_transforms(self.layout.views(self.flat.detach()), self.tcs)
        self.constraints = [WeightNormConstraint(self.params, tc.weight_norm_target)] if tc.weight_norm else []
        self.loss_fn = loss_function(tc.loss)
        train = self.data["train"]
        # Minibatches (train.batch_size): step s takes batch s mod k of epoch s // k, recomputed from
        # (sampler seed, epoch) alone (training/data.py); its fast-path plan is built per batch.
        self.batch_size = tc.batch_size
        self.E, self.eval_every = tc.epochs, tc.eval_every
        self.per_epoch = config.steps_per_epoch()
        self.total_steps = config.total_steps()
        self.step_unit = config.checkpoint_unit() == "step"  # checkpoint labels count optimizer steps
        self._batch = train
        self._epoch_batches: tuple[int, list[Tensor]] | None = None
        eager = EagerStep(lambda: self.logits(self._batch), train.labels, self.params, self.optimizer,
                          self.transforms, loss_fn=self.loss_fn, after_step=self.constraints, layout=self.layout)
        self._eager = eager
        self._graph = use_graph
        self.step_fn: Callable[[], tuple[Tensor, Tensor]] = CudaGraphStep(eager, device) if use_graph else eager
        n = tc.epochs + 1
        # The learning rate is known on the host: its column stays there (writing a host value
        # into a CUDA tensor is a host→device copy that waits for the GPU, at every step).
        self.metrics = {c: torch.full((n,), float("nan"), dtype=torch.float64, device="cpu" if c == "lr" else device)
                        for c in METRIC_COLUMNS[1:]}
        if self.batch_size is not None:  # the optimizer steps taken before each epoch's row: e · k
            self.metrics[STEP_COLUMN] = torch.full((n,), float("nan"), dtype=torch.float64, device="cpu")
        self.text_metrics: dict[str, list[str | None]] = {}
        for cb in self.callbacks:
            self.add_metric_columns(getattr(cb, "metric_columns", ()), getattr(cb, "text_columns", ()))
        self.postfix: dict[str, str] = {}
        self.ckpt_epochs = set(config.checkpoint_epochs().tolist())
        self.writer = CheckpointWriter(run_dir, param_shapes(mc), config.checkpoints.flush_every, device, dtype=dtype)
        self.start_epoch = 0
        self.start_step = 0  # optimizer steps taken before the first step of this session
        self.flushed_upto = -1  # last checkpoint (schedule label: epoch, or step) already on disk
        self._stop_requested = False

    def add_metric_columns(self, columns: Sequence[str] = (), text_columns: Sequence[str] = ()) -> None:
        """Add metric columns (float64 on the device, NaN until written; text on the host, ``None``
        until written). They are saved with the state and written to ``metrics.csv`` after the
        built-in columns. A column that exists already is kept as it is."""
        n = self.config.train.epochs + 1
        for c in list(columns) + list(text_columns):
            if not isinstance(c, str) or not c.isidentifier() or c in METRIC_COLUMNS[:1]:
                raise ConfigError(f"callbacks: metric column names must be identifiers other than 'epoch', got {c!r}")
        for c in columns:
            if c in self.text_metrics:
                raise ConfigError(f"callbacks: metric column {c!r} declared as both a number and a text column")
            if c not in self.metrics:
                self.metrics[c] = torch.full((n,), float("nan"), dtype=torch.float64, device=self.device)
        for c in text_columns:
            if c in self.metrics:
                raise ConfigError(f"callbacks: metric column {c!r} declared as both a number and a text column")
            self.text_metrics.setdefault(c, [None] * n)

    # -- forward -----------------------------------------------------------------------------
    def logits(self, data: _Data) -> Tensor:
        if data.plan is not None:
            return final_logits(self.params, data.plan)
        return self.model(data.tokens)[:, -1]

    @torch.no_grad()
    def evaluate(self, data: _Data) -> tuple[Tensor, Tensor]:
        logits = self.logits(data)
        loss = self.loss_fn(logits, data.labels)
        acc = (logits.argmax(-1) == data.labels).double().mean()
        return loss, acc

    # -- state -------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {f"param/{k}": v.detach() for k, v in self.params.items()}
        state.update(self.optimizer.run_state(0))
        state.update(transform_state_tensors([RunSlice(t, 0) for t in self.transforms], self.config.train.grad_transforms))
        state["rng/torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            state["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device)
        for c, v in self.metrics.items():
            state[f"metrics/{c}"] = v
        for c, v in self.text_metrics.items():
            state[f"metrics_text/{c}"] = _encode_text(v)
        return state

    def load_state(self, source: Run | tuple[dict[str, str], dict[str, Tensor]], where: Path | None = None) -> None:
        """Restore parameters, optimizer, transforms, RNG and metrics from a run's training state.

        Args:
            source: the :class:`~grokinterp.store.run.Run` (its ``state.safetensors`` is read through
                the run's checks, :meth:`~grokinterp.store.run.Run.training_state`), or its result
                ``(metadata, tensors)``.
            where: the file named in error messages (default: the run's state file).
        """
        if isinstance(source, Run):
            where = where or source.path / layout.STATE_FILE
            meta, tensors = source.training_state()
        else:
            meta, tensors = source
        path = where if where is not None else self.run_dir / layout.STATE_FILE
        try:
            self.start_epoch = int(meta["resume_epoch"])
            self.flushed_upto = int(meta["flushed_upto"])
            self.start_step = int(meta.get("resume_step", self.start_epoch * self.per_epoch))
        except (KeyError, ValueError):
            raise RunError(f"{path}: training state has no resume epoch in its metadata") from None
        E = self.config.train.epochs
        end = self.total_steps if self.step_unit else E  # the schedule's last label
        if not (0 <= self.start_epoch <= E and -1 <= self.flushed_upto <= end):
            raise RunError(f"{path}: resume epoch {self.start_epoch} or flushed checkpoint {self.flushed_upto} lies "
                           f"outside the run's 0..{E} epochs")
        if not (self.start_epoch * self.per_epoch <= self.start_step < (self.start_epoch + 1) * self.per_epoch
                or self.start_step == self.total_steps == self.start_epoch * self.per_epoch):
            raise RunError(f"{path}: resume step {self.start_step} does not lie in resume epoch {self.start_epoch} "
                           f"({self.per_epoch} steps an epoch)")
        rng = tensors.get("rng/torch_cpu")
        if rng is None or rng.dtype != torch.uint8 or rng.ndim != 1:
            raise RunError(f"{path}: the CPU random-number state is missing or malformed")
        with torch.no_grad():
            for k, p in self.params.items():
                t = tensors.get(f"param/{k}")
                if t is None or t.shape != p.shape or t.dtype != p.dtype:
                    raise RunError(f"{path}: parameter {k} is missing or has the wrong shape or dtype")
                p.copy_(t)
        self.optimizer.load_run_state(0, tensors, str(path))
        collected: list[dict[str, dict[int, Tensor]]] = [{} for _ in self.transforms]
        load_transform_state([RunSlice(t, 0, got) for t, got in zip(self.transforms, collected)],
                             self.config.train.grad_transforms, tensors, str(path))
        for t, got, name in zip(self.transforms, collected, self.config.train.grad_transforms):
            try:
                t.load_state_dict({k: v[0][None] for k, v in got.items()})
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise RunError(f"{path}: cannot restore the state of gradient transform {name!r} ({e})") from None
        self.epoch_t.fill_(self.start_step)  # the optimizer's step counter (the warm-up counts steps)
        n = self.config.train.epochs + 1
        # Columns of callbacks this resume does not have are carried over (NaN from here on);
        # declared ones the state lacks (a callback added on resume) start empty.
        extra = [k[len("metrics/"):] for k in tensors if k.startswith("metrics/")]
        self.add_metric_columns([c for c in extra if c not in self.metrics and c not in self.text_metrics
                                 and c.isidentifier() and c != "epoch"],
                                [c for c in (k[len("metrics_text/"):] for k in tensors if k.startswith("metrics_text/"))
                                 if c.isidentifier() and c != "epoch" and c not in self.metrics])
        for c in self.metrics:
            t = tensors.get(f"metrics/{c}")
            if t is None:
                if c in METRIC_COLUMNS:
                    raise RunError(f"{path}: metrics/{c} is missing or has the wrong length")
                continue
            if t.shape != self.metrics[c].shape or t.dtype != torch.float64:
                raise RunError(f"{path}: metrics/{c} is missing or has the wrong length")
            self.metrics[c].copy_(t)
        for c in self.text_metrics:
            t = tensors.get(f"metrics_text/{c}")
            if t is not None:
                self.text_metrics[c] = _decode_text(t, n, f"{path}: metrics_text/{c}")
        try:
            torch.set_rng_state(rng)
            if self.device.type == "cuda" and "rng/torch_cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng/torch_cuda"], self.device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise RunError(f"{path}: cannot restore the random-number state ({e})") from None

    def flush(self, resume_epoch: int, finished: bool, step: int | None = None) -> None:
        """Write the buffered checkpoints, the metrics up to ``resume_epoch``, the state, progress and
        manifest. ``step``: the optimizer steps taken (default ``resume_epoch · steps_per_epoch``);
        a minibatch run stopped inside an epoch resumes from it (state metadata ``resume_step``)."""
        if step is None:
            step = resume_epoch * self.per_epoch
        if self.writer.epochs:
            self.flushed_upto = self.writer.epochs[-1]
        metrics = {c: v.cpu().numpy() for c, v in self.metrics.items()}
        metrics.update({c: np.array(v, dtype=object) for c, v in self.text_metrics.items()})
        progress = {
            "epoch": resume_epoch,
            "epochs_total": self.config.train.epochs,
            "finished": finished,
            "checkpoints_written": self.writer.n_written + len(self.writer.epochs),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.writer.flush(
            resume_epoch=resume_epoch, finished=finished, metrics=metrics, state=self.state_tensors(),
            state_meta={"flushed_upto": str(max(self.flushed_upto, self.writer.epochs[-1] if self.writer.epochs else -1)),
                        "format_version": str(FORMAT_VERSION),
                        **({"resume_step": str(step)} if self.batch_size is not None else {})},
            progress=progress,
        )
        self._emit("on_flush", resume_epoch, finished)

    # -- loop --------------------------------------------------------------------------------
    def step(self, epoch: int, record_acc: bool, step: int | None = None) -> None:
        """One optimizer step: full-batch from the model at ``epoch``, or (minibatch runs) batch
        ``step mod k`` of epoch ``step // k``. Records the learning rate and, full-batch, the train
        loss (and with ``record_acc`` the train accuracy) of the step into the epoch's row; a
        minibatch step records the learning rate of the epoch's first step only (its train metrics
        are full-training-set evaluations, see :meth:`run`).
        Nothing here waits for the device: no host sync per step (tested on CUDA)."""
        s = epoch * self.per_epoch if step is None else step
        lr = self.config.train.lr_at(s, total=self.total_steps)
        self.epoch_t.fill_(s)  # a kernel with the value as argument: no host→device copy
        self.optimizer.set_lr(self.epoch_t, s if self.device.type == "cpu" or not self._graph else None)
        m = self.metrics
        if self.batch_size is None:
            m["lr"][epoch] = lr
            logits, loss = self.step_fn()
            m["train_loss"][epoch] = loss.detach()
            if record_acc:
                m["train_acc"][epoch] = (logits.detach().argmax(-1) == self.data["train"].labels).double().mean()
            return
        e, b = epoch_of(s, self.per_epoch)
        if b == 0:
            m["lr"][e] = lr
        self._batch = self.batch(s)
        self._eager.labels = self._batch.labels
        try:
            self.step_fn()
        finally:
            self._batch = self.data["train"]

    def batch(self, step: int) -> _Data:
        """The training examples of optimizer step ``step`` (a minibatch run): batch ``step mod k``
        of epoch ``step // k`` (:func:`~grokinterp.training.data.batch_indices`), with its own
        fast-path plan when the run uses the fast path."""
        e, b = epoch_of(step, self.per_epoch)
        if self._epoch_batches is None or self._epoch_batches[0] != e:
            idx = batch_indices(sampler_seed(self.config), e, len(self.data["train"].labels), self.batch_size)
            self._epoch_batches = (e, [i.to(self.device) for i in idx])
        i = self._epoch_batches[1][b]
        train = self.data["train"]
        x, y = train.tokens[i], train.labels[i]
        return _Data(x, y, FastPlan.build(self.config.model, x) if train.plan is not None else None)

    def _snapshot(self, label: int) -> bool:
        self.writer.snapshot(label, self.params)
        return self.writer.full

    def _record_epoch(self, epoch: int, step: int, evaluating: bool) -> None:
        train, test, m = self.data["train"], self.data["test"], self.metrics
        minibatch = self.batch_size is not None
        if evaluating and len(test.labels):  # the model at this epoch, before its step
            m["test_loss"][epoch], m["test_acc"][epoch] = self.evaluate(test)
        if epoch == self.E or (minibatch and evaluating):
            m["train_loss"][epoch], m["train_acc"][epoch] = self.evaluate(train)
        if minibatch:
            m[STEP_COLUMN][epoch] = step

    def _interrupt(self, epoch: int, step: int, signum: int) -> None:
        self.flush(epoch, finished=False, step=step)
        raise TrainingInterrupted(self.run_dir, epoch, signum, step if self.batch_size is not None else None)


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
            return _resume_locked(out, lock, progress=progress, device=None, callbacks=callbacks, threads=threads)
        if claim.decisions[0] == "replace":
            clear_run_dir(out)
        with torch_threads(n_threads), flush_denormals():
            train_pairs, test_pairs = split_pairs(config.task)  # task.n_train: a subset (tasks/subsets.py)
            claim.wrote = True
            meta = run_metadata(config, device, preset, len(train_pairs), len(test_pairs))
            start_run(out, {**meta, "lineage": lineage} if lineage else meta, train_pairs, test_pairs)
            loop = _build_loop(config, out, device, train_pairs, test_pairs, cbs)
            claim.started = True
            loop.writer.lock = lock
            with _sigint_flag() as stop:
                loop.run(stop)
    return _with_session(load_run(out), "trained", 0, config.train.epochs, n_threads)


def _with_session(run, action: str, start: int, end: int, threads: int | None):
    run.session = {"action": action, "start_epoch": start, "end_epoch": end, "epochs_trained": max(end - start, 0),
                   "threads": threads}
    return run


def recorded_threads(run) -> int | None:
    """The torch thread count ``run.json`` records for the run's training (``None``: not recorded)."""
    n = (run.info.get("device") or {}).get("torch_threads")
    return int(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


def _build_loop(config: RunConfig, out: Path, device: torch.device, train_pairs, test_pairs,
                cbs: Sequence[Callback]) -> TrainLoop:
    """The loop; an allocation the pre-flight estimate did not foresee fails as a :class:`RunError`."""
    try:
        return TrainLoop(config, out, device, train_pairs, test_pairs, cbs)
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise RunError(f"{out}: not enough memory to train this run ({type(e).__name__}: {str(e)[:200]})") from None
    except RuntimeError as e:
        if "alloc" in str(e).lower() or "out of memory" in str(e).lower():
            raise RunError(f"{out}: not enough memory to train this run ({str(e)[:200]})") from None
        raise


def resume(run_dir: str | os.PathLike, *, progress: bool = True, device: str | None = None,
           callbacks: Sequence[Callback] = (), threads: int | None = None, check: bool | None = None):
    """Continue an interrupted run from its last flush; returns the loaded run when done.

    The resumed run ends with checkpoints bit-identical (on CPU) to an uninterrupted one: it
    trains with the torch thread count recorded in ``run.json`` unless ``threads`` asks for
    another (then it warns: the bits of a float32 product can depend on the thread count).
    A run killed before its first flush completed (no state, no progress file) starts again from
    its seeded initialisation; a run killed during its final flush gets that flush rewritten; a
    finished or imported run (:mod:`grokinterp.store.legacy`) is returned as it is
    (``run.session["action"]``: ``already_finished`` or ``imported``). The run lock is held
    throughout (a run being written by another process is refused, naming it), and every file is
    read through the run's checks (``check=False``, or ``GROKINTERP_TRUST_STORAGE=1``, reads
    without the manifest checks).
    """
    if threads is not None:
        check_threads(threads)
    run_dir = run_directory(run_dir)
    try:
        lock = acquire(run_dir, "resume")
    except RunError:
        if os.path.lexists(run_dir / layout.LOCK_FILE) or os.access(run_dir, os.W_OK):
            raise
        run = load_run(run_dir, check=check)  # a read-only run: fine if there is nothing left to write
        if run.finished and last_flush_complete(run_dir):
            E = run.config.train.epochs
            return _with_session(run, "already_finished", E, E, None)
        raise
    try:
        return _resume_locked(run_dir, lock, progress=progress, device=device, callbacks=callbacks, check=check,
                              threads=threads)
    finally:
        lock.release()


def _resume_locked(run_dir: Path, lock: RunLock, *, progress: bool, device: str | None,
                   callbacks: Sequence[Callback], check: bool | None = None, threads: int | None = None):
    run = load_run(run_dir, check=check)
    config = run.config
    run_dir = run.path
    E = config.train.epochs
    if "imported_from" in run.info:  # checkpoints of another codebase: nothing to continue
        reached = int(run.progress.get("epoch", 0) or 0)
        return _with_session(run, "imported", reached, reached, None)
    state_path = run_dir / layout.STATE_FILE
    state = None
    if os.path.lexists(state_path):
        try:
            state = run.training_state()
        except RunError as e:
            if not run.checked:
                raise
            raise RunError(f"{e}; cannot resume from it. (If an older grokinterp was killed during a flush, its "
                           f"manifest has no record of the flush and the state is simply newer: check the run with "
                           f"`grokinterp verify {run_dir}`, then resume with GROKINTERP_TRUST_STORAGE=1, or "
                           f"resume(..., check=False).)") from None
        finished = state[0].get("finished") == "true"
    elif os.path.lexists(run_dir / layout.PROGRESS_JSON):
        raise RunError(f"{state_path}: the training state is missing although the run has flushed before; it "
                       f"cannot be resumed (its checkpoints stay readable)")
    else:  # killed before its first flush completed: start again from the (seeded) initialisation
        finished = False
    if finished and last_flush_complete(run_dir):
        return _with_session(run, "already_finished", E, E, None)
    dev = resolve_device(device or config.train.device)
    check_trainable(config)
    recorded = recorded_threads(run)
    n_threads = threads if threads is not None else (recorded or DEFAULT_THREADS)
    if threads is not None and recorded is not None and threads != recorded and dev.type == "cpu":
        warnings.warn(f"{run_dir}: resuming with {threads} torch threads; the run was trained with {recorded}. The "
                      f"checkpoints may then differ in the last bits from an uninterrupted run (drop --threads to "
                      f"use the recorded count)", UserWarning, stacklevel=2)
    flushed = int(state[0].get("flushed_upto", -1)) if state is not None and \
        str(state[0].get("flushed_upto", "")).lstrip("-").isdigit() else -1
    preflight(config, dev, run_dir, int(np.sum(config.checkpoint_epochs() > flushed)))
    tp, sp = run.split_pairs()
    with torch_threads(n_threads), flush_denormals():
        loop = _build_loop(config, run_dir, dev, tp, sp, loop_callbacks(progress, callbacks))
        loop.writer.lock = lock
        loop.writer.adopt_unlisted = not run.checked  # the user chose to trust the files as they are
        if state is not None:
            loop.load_state(state, state_path)
        start = loop.start_epoch
        loop.writer.drop_shards_after(loop.flushed_upto)
        loop.writer.n_written = int(np.sum(run.epochs <= loop.flushed_upto))
        if finished:  # killed during the final flush, after the state: write progress and manifest again
            loop.flush(E, finished=True)
        else:
            with _sigint_flag() as stop:
                loop.run(stop)
    return _with_session(load_run(run_dir, check=check), "resumed", start, E, n_threads)


def _encode_text(values: list[str | None]) -> Tensor:
    """A text column as UTF-8 JSON bytes (safetensors holds tensors only)."""
    import json

    return torch.frombuffer(bytearray(json.dumps(values).encode()), dtype=torch.uint8)


def _decode_text(t: Tensor, n: int, where: str) -> list[str | None]:
    import json

    try:
        values = json.loads(bytes(t.to(torch.uint8).numpy()).decode())
    except (ValueError, RecursionError):
        raise RunError(f"{where}: not a JSON list of texts") from None
    if not isinstance(values, list) or len(values) != n or not all(v is None or isinstance(v, str) for v in values):
        raise RunError(f"{where}: expected {n} texts or nulls")
    return values
