"""Many models trained at once: runs that share shapes, stacked into one model on one device.

``R`` runs whose configs differ only in what does not change a tensor's shape — init and split
seeds, training fraction, split method, operation, and every intervention's value: learning rate
and its schedule (warm-up length and style, constant or cosine), weight decay and ``weight_decay_on``,
betas, momentum, the Grokfast filters' ``α`` and ``λ``, the weight-norm constraint, the
initialisation scale and method, the attention coefficient — train as one stacked model: every
parameter is one tensor ``[run, ...]``, one forward computes every run's logits on its own training
examples (:mod:`grokinterp.model.stacked`), the loss is the sum of the runs' mean float64 losses
(cross-entropy, StableMax or MSE: so each run's gradient is its own), and the optimizer, the
gradient transforms and the weight-norm constraint apply each run's values
(:mod:`~grokinterp.training.optim`, :mod:`~grokinterp.training.transforms`,
:mod:`~grokinterp.training.constraints`: one registry each, whose entries a single run uses over a
stack of one; each run's state is saved under a single run's keys, so a run trained in a stack
resumes alone and the other way round). Its epoch loop is :meth:`StackedLoop.run`.
A single run is a stack of one (``impl = "single"``, :class:`TrainLoop`): this is the one trainer. The
optimizer, the list of gradient transforms, the loss and the Grokfast-MA window (the shape of its
state) are shared by a stack. Each run writes its own run directory
through :mod:`grokinterp.store.writer`, exactly the files a single run writes, plus the optional
``run.json`` field ``stack`` (the members, this run's index, the implementation), so a run can be
resumed — in a stack — bit-identically on CPU. A step equals a single-run step to 1e-5 (tested).

==================  ==========================================================================
piece               what it does
==================  ==========================================================================
``stack_key``       runs with equal keys can share a stack (``None``: this run cannot be stacked)
``STACKED_*``       registries: stacked optimizers (``adamw``, ``adam``, ``sgd``, ``ortho_adamw``) and
                    stacked gradient transforms (``grokfast_ema``, ``grokfast_ma``, ``orthograd``; a
                    run whose transform has no stacked version trains alone)
``StackedLoop``     the one trainer: a stack's state, forward, metrics, flushes and epoch loop (``run``)
``TrainLoop``       a stack of one with the ``single`` executor seen as one run (``grokinterp.train``)
``train_stacked``   new runs; ``resume_stacked`` / ``resume``: interrupted ones; ``resume_single``: one run
``max_stack_size``  how many runs fit the device's memory
==================  ==========================================================================

The forward (``impl``, :mod:`grokinterp.model.stacked`): ``tables`` and ``dense`` are the one-layer
kernels; ``generic`` is the family's functional forward over stacked parameters
(:func:`grokinterp.model.families.transformer.forward`: any number of layers, LayerNorm, biases, the
``a_b`` layout), chosen by :func:`default_impl` wherever the kernels do not apply.

Splits enter in one of two ways (``mode``): ``gather`` (each run's training pairs, padded to the
longest; test pairs in a second forward every ``eval_every`` epochs) or ``mask`` (every valid pair
of every run in each step, with the training pairs weighted in; the test metrics come from the
same logits). ``benchmarks/stacked_speed.py`` measures both; ``gather`` is the default (see
NOTES.md).

Flushes can run in a background thread (``async_flush``, the default on CUDA): the flush copies
what it writes to the host and training goes on while the files are written; each run's files
are written in the crash-safe order of a single run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import queue
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import COMMON_MODEL_FIELDS, FORMAT_VERSION, SECTIONS, RunConfig
from ..errors import ConfigError, RunError
from ..model import n_params, param_shapes
from ..model.denormals import flush_denormals
from ..model.families import family_of
from ..model.fastpath import FastPlan, fast_path_unsupported, final_logits
from ..model.stacked import (
    IMPLS,
    StackPlan,
    stack_impls,
    stack_params,
    stack_unsupported,
    stacked_final_logits,
    stacked_losses,
)
from ..store import layout
from ..store.integrity import last_flush_complete
from ..store.lock import RunLock, acquire
from ..store.run import Run, RunWarning, load_run, run_directory
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
from .callbacks import Callback
from .common import (
    TrainingInterrupted,
    check_trainable,
    decode_text,
    encode_text,
    loop_callbacks,
    recorded_threads,
    resolve_device,
    stop_on_signals,
    with_session,
)
from .constraints import StackedWeightNorm
from .data import batch_indices, sampler_seed, stacked_epoch
from .lineage import init_stack_from_parents, lineage_record
from .optim import (
    EPS,
    STACKED_OPTIMIZERS,
    ParamLayout,
    StackedAdam,
    StackedAdamW,
    StackedOptimizer,
    StackedOrthoAdamW,
    StackedSGD,
    build_optimizer,
    register_stacked_optimizer,
    stackable_optimizer,
)
from .preflight import preflight
from .step import CudaGraphStep, graphs_enabled, loss_function, per_example_loss, step_one_run
from .threads import DEFAULT_THREADS, check_threads, torch_threads
from .transforms import (
    STACKED_TRANSFORMS,
    RunSlice,
    build_transforms,
    load_transform_state,
    register_stacked_transform,
    stackable_transform,
    transform_state_tensors,
)

__all__ = ["stack_key", "stack_mismatch", "StackedLoop", "train_stacked", "resume_stacked", "resume",
           "max_stack_size", "stack_memory_bytes", "STACKED_OPTIMIZERS", "register_stacked_optimizer",
           "STACKED_TRANSFORMS", "register_stacked_transform", "StackInterrupted", "MODES", "EPS",
           "padded_lengths", "default_impl", "IMPLS", "EXECUTORS", "ParamLayout", "StackedOptimizer", "StackedAdamW",
           "StackedAdam", "StackedOrthoAdamW", "StackedSGD", "TrainLoop", "RunData", "resume_single", "StateSource", "EpochLoop"]

#: How splits enter a stacked step (module notes).
MODES = ("gather", "mask")
#: The step executors of a stack: the stacked forwards (``IMPLS``) and ``single``, the single-run
#: forward (fast path or hooked module, mean loss) over a stack of one — bit for bit a single run.
EXECUTORS = (*IMPLS, "single")

# Config fields the stacked trainer knows. A field added to the config later (by an intervention,
# say) is not implemented here: a run may be stacked only while it keeps that field's default.
# ``live_every`` is known but not acted on: stacks record no live measures (``live_*`` columns);
# their runs get them afterwards from the checkpoints (``grokinterp watch``, the report).
_KNOWN = {
    "task": {"p", "operation", "frac_train", "split_seed", "split_method", "n_train", "subset_seed", "random_labels",
             "label_seed", "train_size", "data"},
    "model": {"p", "d_model", "n_heads", "d_mlp", "n_layers", "act_fn", "n_ctx", "init_seed", "init_method",
              "init_scale", "attn_coeff", "layer_norm", "bias", "input_layout", "ln_style", "pos_embed"},
    "train": {"epochs", "lr", "weight_decay", "optimizer", "beta1", "beta2", "momentum", "grad_transforms",
              "warmup_epochs", "eval_every", "device", "fast_path", "live_every", "batch_size", "sampler_seed",
              "loss", "warmup_style", "lr_schedule", "weight_decay_on", "grokfast_alpha", "grokfast_lamb",
              "grokfast_window", "weight_norm", "weight_norm_target", "init_from", "init_epoch", "dtype"},
    "checkpoints": {"every", "windows", "log_early", "flush_every", "unit"},
}
# Fields that may differ between the runs of one stack (no shape depends on them): each run's
# initialisation, attention coefficient, optimizer hyper-parameters and schedule, the settings of its
# gradient transforms (but not the Grokfast-MA window, the shape of its state) and its weight-norm
# constraint are its own.
_PER_RUN = {
    "task": {"operation", "frac_train", "split_seed", "split_method", "n_train", "subset_seed", "random_labels",
             "label_seed", "train_size", "data"},
    "model": {"init_seed", "init_method", "init_scale", "attn_coeff"},
    "train": {"lr", "weight_decay", "beta1", "beta2", "momentum", "warmup_epochs", "fast_path", "sampler_seed",
              "warmup_style", "lr_schedule", "weight_decay_on", "grokfast_alpha", "grokfast_lamb", "weight_norm",
              "weight_norm_target", "init_from", "init_epoch"},
}


class StackInterrupted(TrainingInterrupted):
    """A stack stopped on SIGINT / SIGTERM after flushing every run; ``.run_dirs`` lists them."""

    def __init__(self, run_dirs: Sequence[Path], epoch: int, signum: int = signal.SIGINT):
        super().__init__(Path(run_dirs[0]), epoch, signum)
        self.run_dirs = [Path(d) for d in run_dirs]
        self.args = (f"training of a stack of {len(self.run_dirs)} runs interrupted at epoch {epoch}; everything is "
                     f"saved, resume with `grokinterp train --resume RUN` on any of them (the stack resumes together) "
                     f"or by running the sweep again",)


# -- which runs can share a stack ---------------------------------------------------------------------
def _default_of(cls, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _unknown_fields_changed(config: RunConfig) -> list[str]:
    out = []
    for sec in SECTIONS:
        obj = getattr(config, sec)
        cls = type(obj)  # the model section: its family's class
        for f in dataclasses.fields(cls):
            # another family's own fields are its forward's, which the generic stacked forward computes
            own = sec == "model" and cls is not SECTIONS["model"] and f.name not in COMMON_MODEL_FIELDS
            if f.name not in _KNOWN[sec] and not own and getattr(obj, f.name) != _default_of(cls, f.name):
                out.append(f"{sec}.{f.name}")
    return out


def stack_unsupported_reason(config: RunConfig) -> str | None:
    """Why ``config`` cannot train in a stack (``None`` when it can). Every transformer setting
    can: where the one-layer kernels do not apply (:func:`~grokinterp.model.stacked.stack_unsupported`)
    the stack trains through the ``generic`` forward (:func:`default_impl`)."""
    if not stackable_optimizer(config.train.optimizer):
        return f"optimizer {config.train.optimizer!r} has no stacked version (register_stacked_optimizer)"
    missing = [t for t in config.train.grad_transforms if not stackable_transform(t)]
    if missing:
        return f"gradient transform(s) {missing} have no stacked version (register_stacked_transform)"
    changed = _unknown_fields_changed(config)
    if changed:
        return f"field(s) {changed} are set and the stacked trainer does not implement them"
    return None


def stack_key(config: RunConfig) -> str | None:
    """Runs whose keys are equal (and not ``None``) can be trained in one stack.

    The key is every config field except those a run of the stack may choose for itself
    (seeds, sampler seed, training fraction, split method, operation, and the intervention values of
    the module notes: lr and schedule, weight decay and its groups, betas, momentum, Grokfast ``α`` /
    ``λ``, weight norm, init scale and method, attention coefficient); a minibatch run's key also holds
    its steps per epoch (runs of one stack take their steps together: equal ``batch_size`` and
    ``ceil(n_train / batch_size)``). ``None`` when the run cannot be stacked at all
    (:func:`stack_unsupported_reason`).
    """
    if stack_unsupported_reason(config) is not None:
        return None
    d = config.to_dict()
    for sec, names in _PER_RUN.items():
        for name in names:
            d[sec].pop(name, None)
    if config.train.batch_size is not None:  # runs of one stack take their steps together
        d["train"]["steps_per_epoch"] = config.steps_per_epoch()
    return json.dumps(d, sort_keys=True)


def stack_mismatch(a: RunConfig, b: RunConfig) -> str | None:
    """The first field that keeps ``b`` out of a stack with ``a`` (``None`` if they can share one)."""
    for c in (a, b):
        reason = stack_unsupported_reason(c)
        if reason:
            return reason
    da, db = a.to_dict(), b.to_dict()
    if (a.train.batch_size is not None and a.train.batch_size == b.train.batch_size
            and a.steps_per_epoch() != b.steps_per_epoch()):
        return (f"train.batch_size {a.train.batch_size} gives {a.steps_per_epoch()} steps per epoch over "
                f"{a.n_train()} training examples but {b.steps_per_epoch()} over {b.n_train()}")
    for sec in da:
        for name in da[sec]:
            if name not in _PER_RUN.get(sec, ()) and da[sec][name] != db[sec][name]:
                return f"{sec}.{name} differs ({da[sec][name]!r} vs {db[sec][name]!r})"
    return None


# -- data ---------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _SinglePlan:
    """The forward of the ``single`` executor: a stack of one through the single-run fast path
    (:class:`~grokinterp.model.fastpath.FastPlan`) where it applies, else the family's hooked module."""

    tokens: Tensor  # [n, n_ctx] of the one run
    fast: FastPlan | None

    @classmethod
    def build(cls, cfg, tokens: Tensor) -> "_SinglePlan":
        if tokens.shape[0] != 1:
            raise ConfigError(f"impl: 'single' (the single-run executor) trains a stack of one, got {tokens.shape[0]}")
        x = tokens[0]
        return cls(x, FastPlan.build(cfg, x) if fast_path_unsupported(cfg, x) is None else None)


@dataclass(eq=False)
class _StackSet:
    """One token set per run, padded: the plan, labels ``[run, n]`` and loss weights."""

    plan: StackPlan
    labels: Tensor  # [run, n] int64
    weights: dict[str, Tensor]  # name -> [run, n] float64, 1 / count on the run's members, 0 elsewhere
    counts: dict[str, list[int]]

    @classmethod
    def build(cls, cfg, tokens: list[np.ndarray], labels: list[np.ndarray], members: dict[str, list[np.ndarray]],
              device: torch.device, impl: str, n_pad: int | None = None,
              attn_coeff: Sequence[float] | None = None, dtype: torch.dtype = torch.float32) -> "_StackSet":
        n = max(len(t) for t in tokens)
        if n_pad is not None:
            if n_pad < n:
                raise RunError(f"the stack was recorded with {n_pad} examples per run, but a run has {n}")
            n = n_pad
        tok = np.stack([np.concatenate([t, np.repeat(t[:1], n - len(t), 0)]) for t in tokens])
        lab = np.stack([np.concatenate([y, np.repeat(y[:1], n - len(y))]) for y in labels])
        weights, counts = {}, {}
        for name, masks in members.items():
            w = np.zeros((len(tokens), n))
            cnt = []
            for r, m in enumerate(masks):
                k = int(m.sum())
                cnt.append(k)
                if k:
                    w[r, : len(m)][m] = 1.0 / k
            weights[name] = torch.from_numpy(w).to(device)
            counts[name] = cnt
        x = _as_input(torch.from_numpy(tok).to(device), dtype)  # input vectors in the run's dtype (train.dtype)
        plan = _SinglePlan.build(cfg, x) if impl == "single" else StackPlan.build(cfg, x, impl=impl,
                                                                                   attn_coeff=attn_coeff)
        return cls(plan, torch.from_numpy(lab).to(device), weights, counts)


def _as_input(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Examples in the run's dtype: input vectors (floating point) converted (exactly: float32 → float64),
    token ids as they are."""
    return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x


def _weighted(values: Tensor, w: Tensor, counts: list[int]) -> Tensor:
    """Per-run weighted sums ``[run]`` (float64), NaN for a run with no members (as a single run's
    metric that was never recorded)."""
    return _nan_empty((values * w).sum(1), counts)


def _nan_empty(out: Tensor, counts: list[int]) -> Tensor:
    """``out [run]`` with NaN for the runs that have no members."""
    if min(counts) == 0:
        out = torch.where(torch.tensor(counts, device=out.device) > 0, out, torch.full_like(out, float("nan")))
    return out


#: Where a run's training state comes from (:meth:`StackedLoop.load_states`).
StateSource = Path | Run | tuple[dict[str, str], dict[str, Tensor]]


def _read_state(source: StateSource, where: Path | None, default: Path) -> tuple[dict[str, str], dict[str, Tensor], Path]:
    """``(metadata, tensors, the path named in errors)`` of one run's training state."""
    if isinstance(source, Run):
        meta, tensors = source.training_state()  # through the run's checks
        return meta, tensors, where or source.path / layout.STATE_FILE
    if isinstance(source, tuple):
        meta, tensors = source
        return meta, tensors, where if where is not None else default
    from safetensors import SafetensorError, safe_open

    path = Path(source)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, RuntimeError, ValueError, SafetensorError) as e:
        raise RunError(f"{path}: cannot read the training state ({e})") from None
    return meta, tensors, where or path


# -- the flusher --------------------------------------------------------------------------------------------
class _Flusher:
    """Runs flush jobs in order, inline or in one background thread (at most one job pending)."""

    def __init__(self, background: bool):
        self.background = background
        self._q: queue.Queue = queue.Queue(maxsize=1)
        self._done: list[tuple[int, bool]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def _worker(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            fn, tag = job
            try:
                fn()
                with self._lock:
                    self._done.append(tag)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                with self._lock:
                    self._error = e
            finally:
                self._idle.set()

    def submit(self, fn: Callable[[], None], tag: tuple[int, bool]) -> None:
        self.raise_error()
        if not self.background:
            fn()
            self._done.append(tag)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="grokinterp-flush", daemon=True)
            self._thread.start()
        self._idle.wait()  # one flush at a time: the host copies of the next are made after it ends
        self.raise_error()
        self._idle.clear()
        self._q.put((fn, tag))

    def wait(self) -> None:
        self._idle.wait()
        self.raise_error()

    def raise_error(self) -> None:
        with self._lock:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def completed(self) -> list[tuple[int, bool]]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        if self._thread is not None:
            self._idle.wait()
            self._q.put(None)
            self._thread.join()
            self._thread = None


# -- the loop ---------------------------------------------------------------------------------------------
class StackedLoop:
    """The one trainer: the state of ``R ≥ 1`` runs trained as one stacked model (built by
    :func:`train_stacked` / :func:`resume_stacked`; a single run, by :func:`grokinterp.train` /
    ``resume``, is a stack of one with the ``single`` executor, seen through :class:`TrainLoop`).

    The epoch loop (:meth:`run`), for full batch or minibatch: each epoch ``e`` (the model after
    ``e · k`` optimizer steps, ``k`` = steps per epoch: 1 for full batch) is, in order: a checkpoint if
    due (a flush when the buffer is full), its metrics (test metrics every ``eval_every`` epochs and at
    the end, the train metrics where they are evaluations), ``on_epoch``, the epoch's ``k`` steps
    (:meth:`step`, through the step executor chosen for the model family and device: the one-layer
    kernels, the generic forward or the single-run forward, eager or replayed as a CUDA graph),
    ``on_step`` and ``on_eval``. A stop request (signal, or a callback's :meth:`request_stop`) between
    any two steps flushes and raises (:meth:`_interrupt`); the final epoch is evaluated and
    snapshotted without a step, then flushed as finished.

    Attributes callbacks may read: ``configs``, ``run_dirs``, ``n_runs``, ``device``, ``params``
    (``{name: [run, ...]}``, views of ``flat [run, n_params]``), ``metrics`` (``{column: float64
    [run, epochs + 1]}``, on the device except ``lr``; callbacks' ``metric_columns`` too),
    ``text_metrics`` (``{column: [[str | None] * (epochs + 1)] * runs}``), ``postfix``, ``optimizer``,
    ``impl``, ``mode``.
    """

    def __init__(self, configs: Sequence[RunConfig], run_dirs: Sequence[Path], device: torch.device,
                 splits: Sequence[tuple[np.ndarray, np.ndarray]], callbacks: Sequence[Callback] = (), *,
                 impl: str = "tables", mode: str = "gather", async_flush: bool = False,
                 padded: dict[str, int] | None = None, real: Sequence[bool] | None = None):
        self.configs, self.run_dirs = list(configs), [Path(d) for d in run_dirs]
        self.n_runs = R = len(self.configs)
        # Stand-ins (real[r] False) fill the places of a resumed stack's members that are not
        # resumed with it: they are computed, never written (see resume_stacked).
        self.real = [True] * R if real is None else [bool(x) for x in real]
        self.device, self.impl, self.mode = device, impl, mode
        self.callbacks = list(callbacks)
        c0 = self.configs[0]
        mc = c0.model
        self.shapes = param_shapes(mc)
        self.E = c0.train.epochs
        self.eval_every = c0.train.eval_every
        # Minibatches: every run takes batch s mod k of epoch s // k of its own seeded order
        # (training/data.py stacked_epoch); batch_size and k are shared (stack_key).
        self.batch_size = c0.train.batch_size
        self.per_epoch = c0.steps_per_epoch()
        self.total_steps = c0.total_steps()
        self.step_unit = c0.checkpoint_unit() == "step"
        if self.batch_size is not None and mode != "gather":
            raise ConfigError(f"mode: minibatch runs (train.batch_size {self.batch_size}) train in 'gather' mode, "
                              f"got {mode!r}")
        self.loss_name = c0.train.loss  # shared (stack key); the tables implementation fuses it with its gradient
        # train.dtype (shared, stack key): the flat parameters, optimizer state, transforms, snapshot buffer,
        # checkpoints, the hooked module and input vectors are in it (float64: the float32 init, exactly)
        self.dtype: torch.dtype = getattr(torch, c0.train.dtype)
        if impl == "single" and (R != 1 or mode != "gather"):
            raise ConfigError(f"impl: 'single' (the single-run executor) trains one run in 'gather' mode, got {R} "
                              f"runs, mode {mode!r}")
        self._model: torch.nn.Module | None = None
        self._grad: Tensor | None = None  # the single-run executor's flat gradient buffer
        # data
        tokens, labels, trn_masks, tst_masks, test_tok, test_lab = [], [], [], [], [], []
        for cfg, (trn, tst) in zip(self.configs, splits):
            ds, lay = cfg.task.task().dataset(), cfg.model.input_layout
            if mode == "mask":
                allp = np.sort(np.concatenate([trn, tst]))
                x, y = ds.select(allp, lay)
                y = np.where(np.isin(allp, trn), training_labels(cfg.task, allp, y), y)  # task.random_labels
                tokens.append(x), labels.append(y)
                trn_masks.append(np.isin(allp, trn)), tst_masks.append(np.isin(allp, tst))
            else:
                x, y = ds.select(trn, lay)
                y = training_labels(cfg.task, trn, y)  # task.random_labels
                tokens.append(x), labels.append(y)
                trn_masks.append(np.ones(len(trn), bool))
                xt, yt = ds.select(tst, lay) if len(tst) else ds.select(trn[:1], lay)
                test_tok.append(xt), test_lab.append(yt)
                tst_masks.append(np.ones(len(tst), bool) if len(tst) else np.zeros(1, bool))
        # Runs are padded to the stack's longest example list. The padded length is recorded and kept
        # on resume: products that sum over examples round differently for another length.
        pad = padded or padded_lengths(self.configs, splits, mode)
        # each run's attention coefficient (None: softmax attention everywhere, or a family without attention)
        coeffs = [float(getattr(c.model, "attn_coeff", 1.0)) for c in self.configs]
        self._attn = attn = None if all(a == 1.0 for a in coeffs) else coeffs
        if mode == "mask":
            self.train = _StackSet.build(mc, tokens, labels, {"train": trn_masks, "test": tst_masks}, device, impl,
                                         pad["train"], attn, self.dtype)
            self.test = None
        else:
            self.train = _StackSet.build(mc, tokens, labels, {"train": trn_masks}, device, impl, pad["train"], attn,
                                         self.dtype)
            self.test = _StackSet.build(mc, test_tok, test_lab, {"test": tst_masks}, device, impl, pad["test"], attn,
                                        self.dtype)
        self.padded = dict(pad)
        # the single-run executor takes the fast path where the training tokens allow it, for both sets
        self._fast = (impl == "single" and c0.train.fast_path and c0.train.dtype == "float32"  # float32 kernels
                      and self.train.plan.fast is not None)
        if self.batch_size is not None:  # each run's padded training examples, gathered per batch
            n_pad = self.train.labels.shape[1]
            padded_tokens = np.stack([np.concatenate([t, np.repeat(t[:1], n_pad - len(t), 0)]) for t in tokens])
            self._tokens = _as_input(torch.from_numpy(padded_tokens).to(device), self.dtype)
            self._seeds = [sampler_seed(c) for c in self.configs]
            self._ns = [len(trn) for trn, _ in splits]
            self._epoch_batches: tuple[int, Any, Any] | None = None
            self._batch_weights: dict[int, Tensor] = {}  # the single executor's batch weights, by length
            self._tokens0, self._labels0 = self._tokens[0], self.train.labels[0]  # the single executor's run
        self._batch = self.train
        # model and optimizer
        # All of a run's parameters live in one row of a flat tensor [run, n_params]: the optimizer,
        # snapshots and flushes handle one tensor; the forward reads named views of it.
        self.layout = ParamLayout(self.shapes)
        self.flat = torch.nn.Parameter(self.layout.flatten(stack_params([c.model for c in self.configs]))
                                       .to(device=device, dtype=self.dtype))  # train.dtype (shared)
        init_stack_from_parents(self.flat_views, self.configs, self.run_dirs)  # train.init_from (lineage.py)
        # A minibatch run's schedules count optimizer steps: its optimizer sees train.epochs = the
        # run's total steps (TrainConfig.lr_at(step) then spans the run, as lr_at(step, total_steps)).
        tcs = [c.train if self.batch_size is None else dataclasses.replace(c.train, epochs=c.total_steps())
               for c in self.configs]
        self.optimizer = build_optimizer(self.flat, self.layout, tcs)
        self.transforms = build_transforms(self.flat_views, tcs)
        # constraints on the weights after each step; their targets come from the initialisation
        self.constraints: list[Callable[[], None]] = (
            [StackedWeightNorm(self.flat_views, [tc.weight_norm for tc in tcs], [tc.weight_norm_target for tc in tcs])] if any(tc.weight_norm for tc in tcs)
            else [])
        self.epoch_t = torch.zeros((), dtype=torch.float32, device=device)
        self._epoch = 0  # epoch_t (the optimizer step counter) on the host: CPU steps give each run its float64 lr
        # Step executors per model family and device: a CUDA graph of the step on CUDA (not for
        # minibatches; the single-run executor only on its fast path and with a capturable optimizer,
        # as the single-run trainer always did), else eager.
        use_graph = device.type == "cuda" and graphs_enabled() and self.batch_size is None  # batches: eager
        # The single executor's parameters: leaves aliasing the row flat[0] (what the optimizer updates),
        # built once; its step differentiates them and its hooked module holds them (no functional_call).
        self._row: dict[str, torch.nn.Parameter] = {}
        if impl == "single":
            use_graph = use_graph and self._fast and getattr(self.optimizer, "graphable", True)
            self._grad = torch.zeros_like(self.flat)  # the flat gradient, written in place every step
            with torch.no_grad():
                self._row = {k: torch.nn.Parameter(v[0]) for k, v in self.layout.views(self.flat.detach()).items()}
        self._graph = use_graph
        self.step_fn: Callable[[], tuple[Tensor, Tensor]] = CudaGraphStep(self._step, device) if use_graph else self._step
        # leaves whose .grad become their views of the flat gradient after each step (TrainLoop's params)
        self._leaf_grads: list[tuple[Tensor, Tensor]] = []
        # metrics, checkpoints, writers
        n = self.E + 1
        self.columns = {c: torch.full((R, n), float("nan"), dtype=torch.float64,
                                      device="cpu" if c == "lr" else device) for c in METRIC_COLUMNS[1:]}
        if self.batch_size is not None:
            self.columns[STEP_COLUMN] = torch.full((R, n), float("nan"), dtype=torch.float64, device="cpu")
        self.text: dict[str, list[list[str | None]]] = {}  # text columns of callbacks: one list per run
        for cb in self.callbacks:
            self.add_metric_columns(getattr(cb, "metric_columns", ()), getattr(cb, "text_columns", ()))
        self.postfix: dict[str, str] = {}
        self.ckpt_epochs = set(c0.checkpoint_epochs().tolist())
        cap = c0.checkpoints.flush_every
        self.buffer = torch.empty((cap, *self.flat.shape), device=device, dtype=self.flat.dtype)
        self.buffered: list[int] = []
        self.writers = {r: CheckpointWriter(d, self.shapes, cap, device, buffered=False, dtype=self.dtype)
                        for r, d in enumerate(self.run_dirs) if self.real[r]}
        self.start_epoch = 0
        self.start_step = 0
        self.flushed_upto = -1
        self._stop_requested = False
        self._stop_record: dict[str, Any] | None = None  # request_stop(record=...): written into progress.json
        self._stopping: dict[str, Any] | None = None  # the record of the stop being flushed
        self.flusher = _Flusher(async_flush)

    @property
    def flat_views(self) -> dict[str, Tensor]:
        """``{name: [run, ...]}``: views of the flat parameter (what the forward reads)."""
        return self.layout.views(self.flat)

    @property
    def params(self) -> dict[str, Tensor]:
        """``{name: [run, ...]}``: views of the flat parameter (:attr:`flat_views`)."""
        return self.flat_views

    @property
    def metrics(self) -> dict[str, Tensor]:
        """``{column: float64 [run, epochs + 1]}`` (on the device, except ``lr`` and ``step``)."""
        return self.columns

    @property
    def text_metrics(self) -> dict[str, list[list[str | None]]]:
        """``{column: [[str | None] * (epochs + 1)] * runs}``: the callbacks' text columns (on the host)."""
        return self.text

    def logits(self, data: _StackSet, row: dict[str, Tensor] | None = None) -> Tensor:
        """Every run's final-position logits ``[run, n, vocab]`` on ``data`` (the stack's forward)."""
        return self._forward(data, row)

    def add_metric_columns(self, columns: Sequence[str] = (), text_columns: Sequence[str] = ()) -> None:
        """Add metric columns (float64 ``[run, epochs + 1]`` on the device, NaN until written; text on
        the host, ``None`` until written). They are saved with each run's state and written to its
        ``metrics.csv`` after the built-in columns. A column that exists already is kept as it is."""
        n = self.E + 1
        for c in list(columns) + list(text_columns):
            if not isinstance(c, str) or not c.isidentifier() or c in METRIC_COLUMNS[:1]:
                raise ConfigError(f"callbacks: metric column names must be identifiers other than 'epoch', got {c!r}")
        for c in columns:
            if c in self.text:
                raise ConfigError(f"callbacks: metric column {c!r} declared as both a number and a text column")
            if c not in self.columns:
                self.columns[c] = torch.full((self.n_runs, n), float("nan"), dtype=torch.float64, device=self.device)
        for c in text_columns:
            if c in self.columns:
                raise ConfigError(f"callbacks: metric column {c!r} declared as both a number and a text column")
            if c not in self.text:
                self.text[c] = [[None] * n for _ in range(self.n_runs)]

    def _module(self) -> torch.nn.Module:
        """The family's hooked module (imports transformer_lens: built only where it is needed)."""
        if self._model is None:
            # in the run's dtype (train.dtype; float64: the module's buffers too, as the parameters)
            model = family_of(self.configs[0].model).hooked(self.configs[0].model).to(device=self.device,
                                                                                       dtype=self.dtype)
            if self.impl == "single":  # the module's parameters are the row's leaves
                names = sorted(k for k, _ in model.named_parameters())
                if names != sorted(self._row):
                    raise RunError(f"{self.run_dirs[0]}: the model's parameters {names[:4]}... are not its family's "
                                   f"param_shapes {self.layout.names[:4]}...")
                for name, p in self._row.items():
                    owner, _, leaf = name.rpartition(".")
                    setattr(model.get_submodule(owner) if owner else model, leaf, p)
            self._model = model
        return self._model

    # -- forward and step ----------------------------------------------------------------------------
    def _forward(self, data: _StackSet, row: dict[str, Tensor] | None = None) -> Tensor:
        if self.impl == "single":  # the single-run forward over the one row (default: its leaves)
            row = self._row if row is None else row
            if data.plan.fast is not None and self._fast:
                return final_logits(row, data.plan.fast)[None]
            # the hooked module (transformer_lens: only where the fast path does not apply), which holds the
            # leaves; another row goes through functional_call
            if row is self._row:
                return self._module()(data.plan.tokens)[:, -1][None]
            return torch.func.functional_call(self._module(), row, (data.plan.tokens,))[:, -1][None]
        return stacked_final_logits(self.flat_views, data.plan, self.impl)

    def _nll(self, logits: Tensor, data: _StackSet) -> Tensor:
        """Per-example float64 losses ``[run, n]`` of the runs' loss (``train.loss``)."""
        if self.loss_name != "cross_entropy":
            return per_example_loss(self.loss_name)(logits, data.labels)
        V = logits.shape[-1]
        return F.cross_entropy(logits.double().reshape(-1, V), data.labels.reshape(-1), reduction="none") \
            .view(self.n_runs, -1)

    def _losses(self, data: _StackSet, which: str) -> tuple[Tensor, Tensor]:
        """(per-run weighted float64 loss ``[run]`` over the members ``which``, logits ``[run, n, vocab]``)."""
        w = data.weights[which]
        if self.impl == "single":  # the single run's mean loss (training/step.py LOSS_FUNCTIONS)
            logits = self._forward(data)
            return loss_function(self.loss_name)(logits[0], data.labels[0])[None], logits
        if self.impl == "tables":  # fused with its gradient, a few runs at a time (model.stacked)
            return stacked_losses(self.flat_views, data.plan, data.labels, w, self.loss_name)
        logits = self._forward(data)
        return (self._nll(logits, data) * w).sum(1), logits

    def _step(self) -> tuple[Tensor, Tensor]:
        """One step of every run: returns (logits ``[run, n, vocab]``, per-run loss ``[run]``)."""
        host = self.device.type == "cpu" or (self.impl == "single" and not self._graph)
        self.optimizer.set_lr(self.epoch_t, self._epoch if host else None)
        if self.impl == "single":  # the single-run step: gradients where autograd writes them, then gathered
            row = self._row
            logits = self._forward(self._batch, row)
            loss = loss_function(self.loss_name)(logits[0], self._batch.labels[0])
            gs = torch.autograd.grad(loss, list(row.values()), allow_unused=True)
            # as a leaf's .grad would hold them (autograd's layout contract: contiguous, a copy if not)
            grads = {k: (g.contiguous() if g is not None else torch.zeros_like(row[k]))[None] for k, g in zip(row, gs)}
            step_one_run(grads, self.transforms, self.optimizer, self._grad)
            for p, g in self._leaf_grads:  # a single run's parameters: .grad is their view of the flat gradient
                p.grad = g
            for fn in self.constraints:
                fn()
            self.epoch_t.add_(1)
            self._epoch += 1
            return logits, loss[None]
        loss, logits = self._losses(self._batch, "train")
        self.optimizer.zero_grad()
        loss.sum().backward()
        if self.transforms and self.flat.grad is not None:
            grads = self.layout.views(self.flat.grad)
            for t in self.transforms:
                t(grads)
        self.optimizer.step()
        for fn in self.constraints:
            fn()
        self.epoch_t.add_(1)
        self._epoch += 1
        return logits, loss

    def batch(self, step: int) -> _StackSet:
        """Every run's training examples of optimizer step ``step`` (minibatch stacks): batch
        ``step mod k`` of epoch ``step // k`` of its own order, padded to ``batch_size`` with weight 0
        (:func:`~grokinterp.training.data.stacked_epoch`), with its own plan."""
        e, b = divmod(step, self.per_epoch)
        if self.impl == "single":  # the single run's batch, unpadded (training/data.py batch_indices)
            if self._epoch_batches is None or self._epoch_batches[0] != e:
                idx = batch_indices(self._seeds[0], e, self._ns[0], self.batch_size)
                self._epoch_batches = (e, [i.to(self.device) for i in idx], None)
            i = self._epoch_batches[1][b]
            x, y, n = self._tokens0.index_select(0, i), self._labels0.index_select(0, i), len(i)
            # a fast-path plan only where the step uses it (a float64 run or fast_path = false builds none)
            plan = _SinglePlan(x, FastPlan.build(self.configs[0].model, x) if self._fast else None)
            w = self._batch_weights.get(n)
            if w is None:  # read by no single-run step (its loss is the mean): one tensor per batch length
                w = self._batch_weights[n] = torch.full((1, n), 1.0 / n, dtype=torch.float64, device=self.device)
            return _StackSet(plan, y[None], {"train": w}, {"train": [n]})
        if self._epoch_batches is None or self._epoch_batches[0] != e:
            index, weight = stacked_epoch(self._seeds, self._ns, self.batch_size, e)
            self._epoch_batches = (e, index.to(self.device), weight.to(self.device))
        idx, w = self._epoch_batches[1][b], self._epoch_batches[2][b]  # [run, B]
        tok = self._tokens.gather(1, idx[..., None].expand(-1, -1, self._tokens.shape[2]))
        plan = StackPlan.build(self.configs[0].model, tok, impl=self.impl, attn_coeff=self._attn)
        return _StackSet(plan, self.train.labels.gather(1, idx), {"train": w}, {"train": [self.batch_size] * self.n_runs})

    def _acc(self, logits: Tensor, data: _StackSet, which: str) -> Tensor:
        if self.impl == "single":  # the single run's mean
            return _nan_empty((logits[0].argmax(-1) == data.labels[0]).double().mean()[None], data.counts[which])
        return _weighted((logits.argmax(-1) == data.labels).double(), data.weights[which], data.counts[which])

    @torch.no_grad()
    def _record_test(self, epoch: int, logits: Tensor | None) -> None:
        m = self.columns
        if self.mode == "mask":
            data = self.train
            logits = self._forward(data) if logits is None else logits.detach()
        else:
            data = self.test
            loss, logits = self._losses(data, "test")
            m["test_loss"][:, epoch] = _nan_empty(loss, data.counts["test"])
            m["test_acc"][:, epoch] = self._acc(logits, data, "test")
            return
        m["test_loss"][:, epoch] = _weighted(self._nll(logits, data), data.weights["test"], data.counts["test"])
        m["test_acc"][:, epoch] = self._acc(logits, data, "test")

    # -- state -----------------------------------------------------------------------------------------------
    def run_state(self, r: int) -> dict[str, Tensor]:
        """Run ``r``'s training state, keyed as a single run's ``state.safetensors``."""
        c = self.configs[r]
        state: dict[str, Tensor] = {f"param/{k}": v for k, v in self.layout.views(self.flat[r].detach()).items()}
        state.update(self.optimizer.run_state(r))
        state.update(transform_state_tensors([RunSlice(t, r) for t in self.transforms], c.train.grad_transforms))
        state["rng/torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            state["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device)
        for col, v in self.columns.items():
            state[f"metrics/{col}"] = v[r]
        for col, v in self.text.items():
            state[f"metrics_text/{col}"] = encode_text(v[r])
        return state

    def load_states(self, sources: Sequence[StateSource], wheres: Sequence[Path | None] | None = None) -> None:
        """Restore every run's parameters, optimizer and transform state, metrics (callbacks' columns
        too) and the random-number state from its training state; all runs must be at the same epoch.
        The one state loader of every trainer (a single run: a stack of one), with its checks.

        Args:
            sources: one per run: its :class:`~grokinterp.store.run.Run` (the state is read through the
                run's checks, :meth:`~grokinterp.store.run.Run.training_state`), the result
                ``(metadata, tensors)`` of such a read, or the path of a state file (read as it is).
            wheres: the file named in error messages, per run (default: the run's state file).
        """
        starts, flushed = set(), set()
        collected: list[dict[str, dict[int, Tensor]]] = [{} for _ in self.transforms]
        E, n = self.E, self.E + 1
        end = self.total_steps if self.step_unit else E  # the schedule's last label
        rng: tuple[Path, Tensor, Tensor | None] | None = None
        first: Path | None = None
        for r, source in enumerate(sources):
            where = wheres[r] if wheres is not None else None
            meta, tensors, path = _read_state(source, where, self.run_dirs[r] / layout.STATE_FILE)
            first = first or path
            try:
                start_epoch = int(meta["resume_epoch"])
                flushed_upto = int(meta["flushed_upto"])
                start_step = int(meta.get("resume_step", start_epoch * self.per_epoch))
            except (KeyError, ValueError):
                raise RunError(f"{path}: training state has no resume epoch in its metadata") from None
            if not (0 <= start_epoch <= E and -1 <= flushed_upto <= end):
                raise RunError(f"{path}: resume epoch {start_epoch} or flushed checkpoint {flushed_upto} lies "
                               f"outside the run's 0..{E} epochs")
            if not (start_epoch * self.per_epoch <= start_step < (start_epoch + 1) * self.per_epoch
                    or start_step == self.total_steps == start_epoch * self.per_epoch):
                raise RunError(f"{path}: resume step {start_step} does not lie in resume epoch {start_epoch} "
                               f"({self.per_epoch} steps an epoch)")
            cpu_rng = tensors.get("rng/torch_cpu")
            if cpu_rng is None or cpu_rng.dtype != torch.uint8 or cpu_rng.ndim != 1:
                raise RunError(f"{path}: the CPU random-number state is missing or malformed")
            with torch.no_grad():
                for k, p in self.layout.views(self.flat[r]).items():
                    t = tensors.get(f"param/{k}")
                    if t is None or t.shape != p.shape or t.dtype != p.dtype:
                        raise RunError(f"{path}: parameter {k} is missing or has the wrong shape or dtype")
                    p.copy_(t)
            self.optimizer.load_run_state(r, tensors, str(path))
            load_transform_state([RunSlice(t, r, collected[i]) for i, t in enumerate(self.transforms)],
                                 self.configs[r].train.grad_transforms, tensors, str(path))
            # Columns of callbacks this resume does not have are carried over (NaN from here on);
            # declared ones the state lacks (a callback added on resume) start empty.
            extra = [k[len("metrics/"):] for k in tensors if k.startswith("metrics/")]
            self.add_metric_columns([c for c in extra if c not in self.columns and c not in self.text
                                     and c.isidentifier() and c != "epoch"],
                                    [c for c in (k[len("metrics_text/"):] for k in tensors
                                                 if k.startswith("metrics_text/"))
                                     if c.isidentifier() and c != "epoch" and c not in self.columns])
            for c, col in self.columns.items():
                t = tensors.get(f"metrics/{c}")
                if t is None:
                    if c in METRIC_COLUMNS:
                        raise RunError(f"{path}: metrics/{c} is missing or has the wrong length")
                    continue
                if t.shape != col.shape[1:] or t.dtype != torch.float64:
                    raise RunError(f"{path}: metrics/{c} is missing or has the wrong length")
                col[r].copy_(t)
            for c, runs in self.text.items():
                t = tensors.get(f"metrics_text/{c}")
                if t is not None:
                    runs[r] = decode_text(t, n, f"{path}: metrics_text/{c}")
            starts.add((start_epoch, start_step))
            flushed.add(flushed_upto)
            rng = rng or (path, cpu_rng, tensors.get("rng/torch_cuda"))
        if len(starts) != 1 or len(flushed) != 1:
            raise RunError(f"{first}: the runs of this stack were saved at different epochs ({sorted(starts)}); "
                           f"resume them in groups (resume_stacked does)")
        for t, got, name in zip(self.transforms, collected, self.configs[0].train.grad_transforms):
            try:
                t.load_state_dict({k: torch.stack([per_run[r] for r in range(self.n_runs)]).to(self.device)
                                   for k, per_run in got.items()})
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                raise RunError(f"{first}: cannot restore the state of gradient transform {name!r} ({e})") from None
        (self.start_epoch, self.start_step), self.flushed_upto = starts.pop(), flushed.pop()
        self.epoch_t.fill_(self.start_step)  # the optimizer's step counter (the warm-up counts steps)
        self._epoch = self.start_step
        assert rng is not None
        try:
            torch.set_rng_state(rng[1])
            if self.device.type == "cuda" and rng[2] is not None:
                torch.cuda.set_rng_state(rng[2], self.device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise RunError(f"{rng[0]}: cannot restore the random-number state ({e})") from None

    # -- flushing ----------------------------------------------------------------------------------------------
    def _host(self, t: Tensor) -> Tensor:
        """A host copy that training cannot change under the writer."""
        if t.device.type == "cpu":
            return t.detach().clone()
        return t.detach().to("cpu", non_blocking=True)

    def flush(self, resume_epoch: int, finished: bool, step: int | None = None) -> None:
        """Write every run's buffered checkpoints, metrics, state, progress and manifest (each run
        in the order of a single run's flush); in the background with ``async_flush``. ``step``:
        the optimizer steps taken (default ``resume_epoch · k``), recorded for minibatch runs."""
        step = resume_epoch * self.per_epoch if step is None else step
        extra_meta = {"resume_step": str(step)} if self.batch_size is not None else {}
        epochs, self.buffered = list(self.buffered), []
        if epochs:
            self.flushed_upto = epochs[-1]
        n = len(epochs)
        shard = self._host(self.buffer[:n]) if n else None
        states = {r: {k: self._host(v) for k, v in self.run_state(r).items()} for r in self.writers}
        metrics = {c: self._host(v) for c, v in self.columns.items()}
        texts = {c: [list(v) for v in runs] for c, runs in self.text.items()}
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        flushed_upto = self.flushed_upto
        stopped = None if finished or self._stopping is None else {**self._stopping, "epoch": resume_epoch, "step": step}

        def write() -> None:
            if event is not None:
                event.synchronize()
            for r, writer in self.writers.items():
                if n:
                    writer.stage(epochs, self.layout.views(shard[:, r]))
                progress = {"epoch": resume_epoch, "epochs_total": self.E, "finished": finished,
                            "checkpoints_written": writer.n_written + len(writer.epochs),
                            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                if stopped is not None:
                    progress["stopped"] = stopped
                writer.flush(resume_epoch=resume_epoch, finished=finished,
                             metrics={**{c: v[r].numpy() for c, v in metrics.items()},
                                      **{c: np.array(v[r], dtype=object) for c, v in texts.items()}},
                             state=states[r],
                             state_meta={"flushed_upto": str(flushed_upto), "format_version": str(FORMAT_VERSION),
                                         **extra_meta},
                             progress=progress)

        self.flusher.submit(write, (resume_epoch, finished))
        self._emit_flushes()

    def _emit_flushes(self) -> None:
        for epoch, finished in self.flusher.completed():
            self._emit("on_flush", epoch, finished)

    # -- loop ------------------------------------------------------------------------------------------------
    def request_stop(self, record: dict[str, Any] | None = None) -> None:
        """Ask the loop to stop before the next step (a callback may call it, e.g. for early
        stopping): it flushes and raises :class:`StackInterrupted` (a single run:
        :class:`TrainingInterrupted`); the runs stay resumable. ``record`` (JSON-ready), when
        given, is written into every run's ``progress.json`` as ``stopped`` (with the ``epoch`` and
        ``step`` it stopped at) by that flush: a sweep's stop rule marks its runs done this way; the
        next flush of a resumed run drops it."""
        self._stop_requested = True
        if record is not None:
            self._stop_record = dict(record)

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

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
                by_signal = stop()
                if by_signal or self._stop_requested:
                    self._stopping = None if by_signal else self._stop_record
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

    def step(self, epoch: int, record_acc: bool, step: int | None = None, evaluating: bool | None = None) -> None:
        """One step of every run (full batch, or batch ``step mod k`` of epoch ``step // k``); in
        ``mask`` mode an ``evaluating`` step (default: ``record_acc``) records the test metrics too."""
        evaluating = record_acc if evaluating is None else evaluating
        m = self.columns
        s = epoch * self.per_epoch if step is None else step
        self._epoch = s  # the optimizer's step counter, on the host and (a kernel, no copy) on the device
        self.epoch_t.fill_(s)
        if self.batch_size is not None:  # one minibatch step; the epoch's row gets its first step's lr
            if s % self.per_epoch == 0:
                m["lr"][:, epoch] = torch.tensor([c.train.lr_at(s, total=self.total_steps) for c in self.configs],
                                                 dtype=torch.float64)
            self._batch = self.batch(s)
            try:
                self.step_fn()
            finally:
                self._batch = self.train
            return
        m["lr"][:, epoch] = torch.tensor([c.train.lr_at(epoch) for c in self.configs], dtype=torch.float64)
        logits, loss = self.step_fn()
        m["train_loss"][:, epoch] = loss.detach()
        if record_acc:
            with torch.no_grad():
                m["train_acc"][:, epoch] = self._acc(logits.detach(), self.train, "train")
        if evaluating and self.mode == "mask":  # the step's logits are the model at this epoch
            self._record_test(epoch, logits)

    @torch.no_grad()
    def _record_train(self, epoch: int) -> None:
        """Every run's train loss and accuracy over its whole training set, the model at ``epoch``."""
        loss, logits = self._losses(self.train, "train")
        m = self.columns
        m["train_loss"][:, epoch] = _nan_empty(loss.detach(), self.train.counts["train"])
        m["train_acc"][:, epoch] = self._acc(logits.detach(), self.train, "train")
        if self.mode == "mask":
            self._record_test(epoch, logits)

    def _snapshot(self, label: int) -> bool:
        with torch.no_grad():
            self.buffer[len(self.buffered)].copy_(self.flat)
        self.buffered.append(label)
        return len(self.buffered) >= self.buffer.shape[0]

    def _record_epoch(self, epoch: int, step: int, evaluating: bool) -> None:
        if evaluating and self.mode == "gather":
            self._record_test(epoch, None)
        if self.batch_size is not None:
            self.columns[STEP_COLUMN][:, epoch] = step
        if epoch == self.E or (self.batch_size is not None and evaluating):
            self._record_train(epoch)

    def _interrupt(self, epoch: int, step: int, signum: int) -> None:
        self.flush(epoch, finished=False, step=step)
        self.flusher.wait()
        self._emit_flushes()
        raise StackInterrupted(self.run_dirs, epoch, signum)

    def _between_steps(self) -> None:
        if self.flusher.background:
            self._emit_flushes()

    def _finish(self) -> None:
        self.flush(self.E, finished=True, step=self.total_steps)
        self.flusher.wait()
        self._emit_flushes()

    def _close(self) -> None:
        try:
            self.flusher.wait()
        finally:
            self.flusher.close()


@dataclass(eq=False)
class RunData:
    """One run's examples as a single run's callbacks see them (``TrainLoop.data``): tokens
    ``[n, n_ctx]``, labels ``[n]`` and the fast-path plan (``None``: the hooked module's forward)."""

    tokens: Tensor
    labels: Tensor
    plan: FastPlan | None


class TrainLoop(StackedLoop):
    """One training run (built by :func:`grokinterp.train` / ``resume``): a stack of one with the
    ``single`` executor, seen as a single run. It holds no state of its own; what it adds are views.

    Attributes callbacks may read: ``config``, ``run_dir``, ``device``, ``model`` (the family's hooked
    module, built on first use), ``params`` (``{name: Parameter}``: leaves whose data are views of the
    row ``flat[0]`` and whose ``.grad`` after a step is their view of the flat gradient), ``metrics``
    (``{column: float64 [epochs + 1]}``: views of the stack's rows, on the device except ``lr``;
    columns declared by callbacks in ``Callback.metric_columns`` too), ``text_metrics`` (``{column:
    [str | None] * (epochs + 1)}``, on the host: ``Callback.text_columns``), ``optimizer``,
    ``transforms``, ``constraints``, ``loss_fn``, ``data`` (``{"train" | "test": RunData}``),
    ``split`` (train and test grid indices ``a * p + b``), ``postfix`` (``{label: text}`` shown in the
    progress bar), ``writer``. Callbacks write the values of their own columns at the epoch they
    describe; :meth:`request_stop` stops the run (:class:`TrainingInterrupted`), :meth:`evaluate`
    gives the loss and accuracy of the model as it is on ``data["train" | "test"]``.
    """

    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, train_pairs, test_pairs,
                 callbacks: Sequence[Callback] = ()):
        self.config, self.run_dir = config, Path(run_dir)
        self.split = (np.asarray(train_pairs), np.asarray(test_pairs))  # grid indices a * p + b
        super().__init__([config], [self.run_dir], device, [self.split], callbacks, impl="single")
        self.writer = self.writers[0]
        self.loss_fn = loss_function(config.train.loss)
        self._params = self._row  # leaves aliasing the row: what the optimizer updates, the callbacks see
        assert self._grad is not None
        self._leaf_grads = [(p, g[0]) for p, g in zip(self._params.values(), self.layout.views(self._grad).values())]
        n_test = len(self.split[1])
        self.data = {"train": self._run_data(self.train, len(self.split[0])), "test": self._run_data(self.test, n_test)}

    def _run_data(self, data: _StackSet | None, n: int) -> RunData:
        assert data is not None
        plan = data.plan.fast if self._fast and n else None
        return RunData(data.plan.tokens[:n], data.labels[0, :n], plan)

    @property
    def params(self) -> dict[str, Tensor]:  # type: ignore[override]
        """``{name: Parameter}``: the run's parameters, views of the row ``flat[0]``."""
        return self._params

    @property
    def metrics(self) -> dict[str, Tensor]:  # type: ignore[override]
        """``{column: float64 [epochs + 1]}``: the run's row of every metric column (views: writes go through)."""
        return {c: v[0] for c, v in self.columns.items()}

    @property
    def text_metrics(self) -> dict[str, list[str | None]]:  # type: ignore[override]
        """``{column: [str | None] * (epochs + 1)}``: the run's text columns (writes go through)."""
        return {c: runs[0] for c, runs in self.text.items()}

    @property
    def model(self) -> torch.nn.Module:
        """The family's hooked module over the run's parameters (imports transformer_lens on first use)."""
        return self._module()

    def logits(self, data: RunData | _StackSet, row: dict[str, Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """The run's final-position logits ``[n, vocab]`` on ``data`` (a :class:`RunData`)."""
        if not isinstance(data, RunData):
            return super().logits(data, row)
        if data.plan is not None:
            return final_logits(self._params, data.plan)
        return self.model(data.tokens)[:, -1]

    @torch.no_grad()
    def evaluate(self, data: RunData) -> tuple[Tensor, Tensor]:
        """(loss, accuracy) of the model as it is on ``data`` (0-d device tensors, float64)."""
        logits = self.logits(data)
        return self.loss_fn(logits, data.labels), (logits.argmax(-1) == data.labels).double().mean()

    def state_tensors(self) -> dict[str, Tensor]:
        """The run's training state (what ``state.safetensors`` holds)."""
        return self.run_state(0)

    def load_state(self, source: StateSource, where: Path | None = None) -> None:
        """Restore the run from its training state (:meth:`StackedLoop.load_states` of one source)."""
        self.load_states([source], [where])

    def _interrupt(self, epoch: int, step: int, signum: int) -> None:
        self.flush(epoch, finished=False, step=step)
        self.flusher.wait()
        self._emit_flushes()
        raise TrainingInterrupted(self.run_dir, epoch, signum, step if self.batch_size is not None else None)


#: The epoch loop of every trainer (the name of earlier releases): the one trainer's class.
EpochLoop = StackedLoop


# -- memory ----------------------------------------------------------------------------------------------------
def stack_memory_bytes(config: RunConfig, n_examples: int, impl: str = "tables") -> int:
    """Estimated device memory one run of a stack needs (bytes): parameters, gradients, optimizer
    state, checkpoint buffer, the forward's tables and per-example activations (with backward)."""
    mc = config.model
    P = n_params(mc)
    b = config.train.value_bytes  # bytes per parameter and activation value (train.dtype)
    if getattr(mc, "family", "transformer") != "transformer":  # the family's own estimate (generic forward)
        per_ex = family_of(mc).activation_bytes(mc) * (b // 4)
        return int(1.3 * (b * P * (4 + config.checkpoints.flush_every) + 8 * 5 * (config.train.epochs + 1)
                          + per_ex * n_examples))
    k = mc.d_mlp + mc.d_vocab_out
    rows = mc.n_ctx * mc.d_vocab
    tc = config.train
    # gradient-transform state, in parameter copies: an EMA; a window of gradients and a float64 sum
    state = sum(1 if t == "grokfast_ema" else tc.grokfast_window + 2 if t == "grokfast_ma" else 0
                for t in tc.grad_transforms)
    per_param = b * P * (4 + config.checkpoints.flush_every + state)
    metrics = 8 * 5 * (config.train.epochs + 1)
    if impl == "tables":
        tabl = 4 * rows * mc.n_heads * k * 4 + 4 * rows * mc.d_model * 3
        per_ex = 4 * (k * 3 + mc.d_mlp * 2 + mc.n_ctx * mc.n_heads * 4) + 8 * 4 * mc.n_ctx * mc.n_heads
    elif impl == "generic":  # every block's activations at every position, kept for the backward
        tabl = 0
        per_layer = mc.n_ctx * (mc.d_model * 12 + mc.d_mlp * 3 + mc.n_heads * mc.n_ctx * 4)
        per_ex = 4 * (mc.n_layers * per_layer + mc.d_vocab_out * 2)
    else:
        tabl = 4 * rows * mc.d_model * 6
        per_ex = 4 * (mc.n_ctx * mc.d_model * 3 + mc.d_model * 4 + mc.d_mlp * 3 + mc.n_ctx * mc.n_heads * 4)
    per_ex = per_ex * (b // 4) + 8 * mc.d_vocab_out * 3 + 4 * mc.d_vocab_out * 2  # float64 log-softmax and its gradient
    return int(1.3 * (per_param + metrics + tabl + per_ex * n_examples))


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(info.get("MemAvailable", 8 << 30) * 0.5)
    except (OSError, ValueError, IndexError):
        return 4 << 30


#: The most runs in one stack by default: on CPU more gains nothing once per-step overheads are
#: shared (benchmarks/stacked_speed.py) and coarser jobs delay results; on a GPU, memory decides.
DEFAULT_MAX_STACK = {"cpu": 64, "cuda": 1024}


def max_stack_size(config: RunConfig, device: str | torch.device | None = None, *, n_examples: int | None = None,
                   impl: str | None = None, mode: str = "gather", cap: int | None = None) -> int:
    """How many runs like ``config`` one stack can hold on ``device`` (from its free memory)."""
    dev = resolve_device(config.train.device if device is None else str(device))
    impl = impl or default_impl(dev, config)
    if n_examples is None:
        n_valid = len(config.task.task().valid_pairs())
        n_examples = n_valid if mode == "mask" else max(1, math.ceil(n_valid * config.task.frac_train))
    per = stack_memory_bytes(config, n_examples, impl)
    cap = cap if cap is not None else DEFAULT_MAX_STACK.get(dev.type, 64)
    return int(max(1, min(cap, _available_memory(dev) // max(per, 1))))


def _models(model: Any) -> list[Any]:
    """Model configs from a model config, a run config or a sequence of either."""
    items = [] if model is None else [model] if not isinstance(model, (list, tuple)) else list(model)
    return [m.model if isinstance(m, RunConfig) else m for m in items]


def default_impl(device: torch.device, model: Any = None) -> str:
    """``generic`` where the one-layer kernels cannot compute the models of ``model`` (a model or run
    config, or a stack's; :func:`~grokinterp.model.stacked.stack_impls`), else ``dense`` on CUDA
    (batched dense products) and ``tables`` elsewhere (fewer operations)."""
    if any(stack_impls(m) == ("generic",) for m in _models(model)) or _float64(model):
        return "generic"
    return "dense" if device.type == "cuda" else "tables"


def _float64(configs: Any) -> bool:
    """Whether a run config of ``configs`` trains in float64 (``train.dtype``): the one-layer ``tables`` / ``dense``
    kernels and the single-run fast path are float32-only; such stacks train through ``generic``."""
    items = configs if isinstance(configs, (list, tuple)) else [configs]
    return any(isinstance(c, RunConfig) and c.train.dtype != "float32" for c in items)


def _check_impl(impl: str, configs: Sequence[RunConfig]) -> None:
    if impl not in EXECUTORS:
        raise ConfigError(f"impl: must be one of {', '.join(EXECUTORS)}, got {impl!r}")
    if impl == "single":
        if len(configs) != 1:
            raise ConfigError(f"impl: 'single' (the single-run executor) trains a stack of one, got {len(configs)}")
        return
    for m in _models(configs):
        if impl not in stack_impls(m):
            raise ConfigError(f"impl: {impl!r} cannot compute this model ({stack_unsupported(m)}); use 'generic'")
    if impl != "generic" and _float64(list(configs)):
        raise ConfigError(f"impl: {impl!r} is float32-only and train.dtype is float64; use 'generic'")


# -- training and resuming ---------------------------------------------------------------------------------------
class StackProgressBar(Callback):
    """A tqdm bar over the epochs of a stack, with the median test accuracy at each evaluation."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, loop: Any, epoch: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=loop.E + 1, initial=epoch, desc=f"stack of {loop.n_runs}", unit="ep",
                        dynamic_ncols=True, mininterval=0.5)

    def on_step(self, loop: Any, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_eval(self, loop: Any, epoch: int) -> None:
        if self.bar is not None:
            acc = loop.metrics["test_acc"][:, epoch]
            self.bar.set_postfix(test_acc_median=f"{acc.median().item():.3f}", refresh=False)

    def on_end(self, loop: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_callbacks(progress: bool, callbacks: Sequence[Callback]) -> list[Callback]:
    return loop_callbacks(progress, callbacks, StackProgressBar)


def padded_lengths(configs: Sequence[RunConfig], splits: Sequence[tuple[np.ndarray, np.ndarray]],
                   mode: str) -> dict[str, int]:
    """Examples per run after padding: ``{"train": n}`` (and ``"test"`` in ``gather`` mode)."""
    if mode == "mask":
        return {"train": max(len(trn) + len(tst) for trn, tst in splits)}
    return {"train": max(len(trn) for trn, _ in splits), "test": max(max(len(tst) for _, tst in splits), 1)}


def _stack_record(run_dirs: Sequence[Path], r: int, stack_id: str, impl: str, mode: str,
                  padded: dict[str, int]) -> dict[str, Any]:
    here = run_dirs[r].absolute()
    return {"id": stack_id, "index": r, "size": len(run_dirs), "impl": impl, "mode": mode, "padded": padded,
            "members": [os.path.relpath(d.absolute(), here) for d in run_dirs]}


def train_stacked(configs: Sequence[RunConfig], outs: Sequence[str | os.PathLike], *, progress: bool = True,
                  preset: str | None = None, callbacks: Sequence[Callback] = (), impl: str | None = None,
                  mode: str = "gather", async_flush: bool | None = None, overwrite: bool = False,
                  threads: int | None = None) -> list[Run]:
    """Train several runs as one stacked model; returns their loaded runs (in order).

    Every run directory is locked while it is written (:mod:`grokinterp.store.lock`), each run is
    checked by the pre-flight estimate for its disk (:mod:`~grokinterp.training.preflight`), and
    training uses ``threads`` torch threads (default 1), recorded in each ``run.json``.

    Args:
        configs: the runs' configs; they must share a :func:`stack_key` (same shapes, schedule,
            optimizer, transforms, loss; seeds, fraction, operation and intervention values free).
        outs: one new run directory per config. If every one already holds its run, they are
            resumed (:func:`resume_stacked`); a mix of new and existing runs is refused.
        progress: a progress bar over the stack's epochs.
        preset: recorded in each ``run.json``.
        callbacks: :class:`~grokinterp.training.callbacks.Callback` objects; they receive the
            :class:`StackedLoop`.
        impl: ``tables``, ``dense`` or ``generic`` (default: :func:`default_impl` of the device and
            the configs).
        mode: ``gather`` (default) or ``mask`` (module notes).
        async_flush: write flushes in a background thread (default: on CUDA).
        overwrite: replace different runs found in ``outs``.
        threads: torch CPU threads (default 1: :mod:`~grokinterp.training.threads`).

    Raises:
        ConfigError: configs that cannot share a stack (naming the field), unknown optimizer, bad
            impl / mode, unavailable device — before anything is written.
        RunError: an output directory is unusable.
        StackInterrupted: SIGINT / SIGTERM or a callback's ``request_stop``; every run flushed first.
    """
    configs = list(configs)
    outs = [Path(o) for o in outs]
    if not configs or len(configs) != len(outs):
        raise ConfigError(f"configs, outs: need one output directory per config, got {len(configs)} configs and "
                          f"{len(outs)} directories")
    for i, c in enumerate(configs):
        if not isinstance(c, RunConfig):
            raise ConfigError(f"configs[{i}]: expected a RunConfig, got {type(c).__name__}")
        why = stack_mismatch(configs[0], c)
        if why:
            raise ConfigError(f"configs[{i}]: cannot share a stack with configs[0]: {why}")
    if len({o.absolute() for o in outs}) != len(outs):
        raise ConfigError("outs: every run of a stack needs its own directory")
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    if configs[0].train.batch_size is not None and mode != "gather":
        raise ConfigError(f"mode: minibatch runs (train.batch_size {configs[0].train.batch_size}) train in 'gather' "
                          f"mode, got {mode!r}")
    device = check_trainable(configs[0])
    impl = impl or default_impl(device, configs)
    _check_impl(impl, configs)
    cbs = _check_callbacks(progress, callbacks)
    n_threads = DEFAULT_THREADS if threads is None else check_threads(threads)
    states = [check_out_dir(o, c, overwrite) for o, c in zip(outs, configs)]
    lineages = [lineage_record(c) if s != "same" else None for c, s in zip(configs, states)]  # refusals (lineage.py)
    if all(s == "same" for s in states):
        return resume_stacked(outs, progress=progress, callbacks=callbacks, threads=threads)
    if any(s == "same" for s in states):
        same = [str(o) for o, s in zip(outs, states) if s == "same"]
        raise RunError(f"{same[0]}: already holds its run while other runs of this stack are new; train the new ones "
                       f"in a stack of their own (or resume the existing ones with resume_stacked)")
    for o, c in zip(outs, configs):
        preflight(c, device, o)
    with claim_run_dirs(outs, configs, overwrite) as claim:
        for o, decision in zip(outs, claim.decisions):
            if decision == "same":
                raise RunError(f"{o}: another process wrote this run meanwhile; nothing was trained")
            if decision == "replace":
                clear_run_dir(o)
        with torch_threads(n_threads), flush_denormals():
            splits = [split_pairs(c.task) for c in configs]  # task.n_train: a subset (tasks/subsets.py)
            stack_id = hashlib.sha256(json.dumps([[str(o.absolute()) for o in outs], [c.to_dict() for c in configs]],
                                                 sort_keys=True).encode()).hexdigest()[:16]
            padded = padded_lengths(configs, splits, mode)
            claim.wrote = True
            for r, (c, o, (trn, tst)) in enumerate(zip(configs, outs, splits)):
                info = run_metadata(c, device, preset, len(trn), len(tst))
                info["stack"] = _stack_record(outs, r, stack_id, impl, mode, padded)
                if lineages[r]:
                    info["lineage"] = lineages[r]
                start_run(o, info, trn, tst)
            if async_flush is None:
                async_flush = device.type == "cuda"
            loop = StackedLoop(configs, outs, device, splits, cbs, impl=impl, mode=mode, async_flush=async_flush,
                               padded=padded)
            claim.started = True
            for r, lock in enumerate(claim.locks):
                loop.writers[r].lock = lock
            with stop_on_signals() as stop:
                loop.run(stop)
    return [load_run(o) for o in outs]


def _state_meta(path: Path) -> dict[str, str]:
    header, _ = layout.read_safetensors_header(path)
    meta = header.get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


def resume_stacked(run_dirs: Sequence[str | os.PathLike], *, progress: bool = True, device: str | None = None,
                   callbacks: Sequence[Callback] = (), async_flush: bool | None = None,
                   threads: int | None = None) -> list[Run]:
    """Continue interrupted runs that were trained in stacks; returns every run, loaded, in order.

    Members of one recorded stack that stopped at the same epoch resume together (a kill during a
    flush can leave some members one flush ahead of others; each group goes on by itself), in a
    stack rebuilt at the recorded size and padding, each run in its recorded place; places of
    members not in the group hold stand-ins that are computed and never written. So every
    product has the shapes it had, and a resumed run ends bit-identical on CPU (same thread
    count) to an uninterrupted one — tested. Finished runs are returned as they are; a run
    without a ``stack`` record is resumed alone by :func:`resume_single` (= :func:`grokinterp.training.loop.resume`). Each
    group trains with the thread count its runs recorded unless ``threads`` asks for another, and
    holds the locks of its run directories while it writes.
    """
    if threads is not None:
        check_threads(threads)
    dirs = [Path(d) for d in run_dirs]
    runs = [load_run(d) for d in dirs]
    groups: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        info = run.info.get("stack")
        state_path = run.path / layout.STATE_FILE
        if state_path.exists():
            meta = _state_meta(state_path)
            finished = meta.get("finished") == "true"
            epoch = (meta.get("resume_epoch", "?"), meta.get("resume_step"))
        elif (run.path / layout.PROGRESS_JSON).exists():
            raise RunError(f"{state_path}: the training state is missing although the run has flushed before; it "
                           f"cannot be resumed (its checkpoints stay readable)")
        else:
            finished, epoch = False, "init"
        if finished and last_flush_complete(run.path):
            continue
        if not isinstance(info, dict) or "imported_from" in run.info:
            runs[i] = resume_single(run.path, progress=progress, device=device, callbacks=callbacks, threads=threads)
            continue
        padded = info.get("padded")
        padded = json.dumps(padded, sort_keys=True) if isinstance(padded, dict) else None
        key = (str(info.get("id")), info.get("impl", "tables"), info.get("mode", "gather"), padded, epoch, finished)
        groups.setdefault(key, []).append(i)
    for (_, impl, mode, padded, _, finished), idx in groups.items():
        members = [runs[i] for i in idx]
        records = [r.info["stack"] for r in members]
        size, slots = records[0].get("size"), [rec.get("index") for rec in records]
        if (not isinstance(size, int) or size < 1 or len(set(map(str, slots))) != len(slots)
                or not all(isinstance(x, int) and 0 <= x < size for x in slots)):
            raise RunError(f"{members[0].path}: run.json records a malformed stack (size {size!r}, index {slots})")
        configs = [r.config for r in members]
        for c in configs[1:]:
            why = stack_mismatch(configs[0], c)
            if why:
                raise RunError(f"{members[0].path}: the runs recorded in one stack differ in {why}")
        dev = resolve_device(device or configs[0].train.device)
        check_trainable(configs[0])
        if impl not in EXECUTORS or mode not in MODES:
            raise RunError(f"{members[0].path}: run.json records an unknown stack implementation {impl!r} / {mode!r}")
        pad = json.loads(padded) if padded else None
        if pad is not None and not (isinstance(pad, dict) and all(isinstance(v, int) and v > 0 for v in pad.values())
                                    and set(pad) == ({"train"} if mode == "mask" else {"train", "test"})):
            raise RunError(f"{members[0].path}: run.json records a malformed stack padding {pad!r}")
        # The stack is rebuilt at its recorded size, every member in its recorded place; the places
        # of members not resumed here hold stand-ins (copies of the first member, never written).
        # Batched products may take another path for another batch size, so this is what keeps a
        # resumed run bit-identical.
        n_threads = threads if threads is not None else (recorded_threads(members[0]) or DEFAULT_THREADS)
        locks: list[RunLock] = []
        try:
            for run in members:
                locks.append(acquire(run.path, "resume"))
            with torch_threads(n_threads), flush_denormals():
                _resume_group(members, slots, size, configs, dev, impl, mode, pad, finished, locks, progress,
                              callbacks, async_flush)
        finally:
            for lock in locks:
                lock.release()
    return [load_run(d) for d in dirs]


def _resume_group(members: list[Run], slots: list[int], size: int, configs: list[RunConfig], dev: torch.device,
                  impl: str, mode: str, pad: dict | None, finished: bool, locks: list[RunLock], progress: bool,
                  callbacks: Sequence[Callback], async_flush: bool | None) -> None:
    """Rebuild one recorded stack and continue it (see :func:`resume_stacked`)."""
    at = dict(zip(slots, range(len(members))))
    src = [at.get(j, 0) for j in range(size)]
    loop = StackedLoop([configs[i] for i in src], [members[i].path for i in src], dev,
                       [members[i].split_pairs() for i in src], _check_callbacks(progress, callbacks),
                       impl=impl, mode=mode, async_flush=dev.type == "cuda" if async_flush is None else async_flush,
                       padded=pad, real=[j in at for j in range(size)])
    paths = [members[i].path / layout.STATE_FILE for i in src]
    if all(p.exists() for p in paths):
        loop.load_states(paths)
    elif any(p.exists() for p in paths):  # pragma: no cover - grouped by state above
        raise RunError(f"{members[0].path}: some runs of this group have a state and others none")
    for r, run, lock in zip(slots, members, locks):
        writer = loop.writers[r]
        writer.lock = lock
        writer.drop_shards_after(loop.flushed_upto)
        writer.n_written = int(np.sum(run.epochs <= loop.flushed_upto))
    if finished:  # killed during the final flush, after the state: write it again
        loop.flush(loop.E, finished=True)
        loop.flusher.wait()
        loop.flusher.close()
    else:
        with stop_on_signals() as stop:
            loop.run(stop)


def resume(run_dir: str | os.PathLike, *, progress: bool = True, device: str | None = None,
           callbacks: Sequence[Callback] = (), threads: int | None = None, check: bool | None = None) -> Run:
    """Continue an interrupted run, however it was trained: alone (:func:`grokinterp.training.loop.resume`),
    or in a stack — then it continues in a stack with those members of its recorded stack that
    stopped at the same epoch (bit-identical on CPU), which are resumed too. ``threads`` and
    ``check`` as for :func:`grokinterp.training.loop.resume`.
    """
    with warnings.catch_warnings():  # a look at run.json only: the load under the lock reports problems
        warnings.simplefilter("ignore", RunWarning)
        run = load_run(run_dir, check=check)
    info = run.info.get("stack")
    if not isinstance(info, dict):
        return resume_single(run.path, progress=progress, device=device, callbacks=callbacks, threads=threads,
                             check=check)
    members = [(run.path / m).resolve() for m in info.get("members", [])] or [run.path]
    mine = {str(m) for m in members if (m / layout.RUN_JSON).exists()} | {str(run.path.resolve())}
    same = []
    for m in sorted(mine):
        try:
            other = load_run(m)
        except RunError:
            continue
        if isinstance(other.info.get("stack"), dict) and other.info["stack"].get("id") == info.get("id"):
            same.append(m)
    if len(same) > 1:
        warnings.warn(f"{run.path}: trained in a stack of {info.get('size')}; resuming the {len(same)} members found "
                      f"together", stacklevel=2)
    out = resume_stacked(same, progress=progress, device=device, callbacks=callbacks, threads=threads)
    return out[same.index(str(run.path.resolve()))]


# -- a single run: a stack of one ------------------------------------------------------------------------
def build_single_loop(config: RunConfig, out: Path, device: torch.device, train_pairs, test_pairs,
                cbs: Sequence[Callback]) -> "TrainLoop":
    """The loop; an allocation the pre-flight estimate did not foresee fails as a :class:`RunError`."""
    try:
        return TrainLoop(config, out, device, train_pairs, test_pairs, cbs)
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise RunError(f"{out}: not enough memory to train this run ({type(e).__name__}: {str(e)[:200]})") from None
    except RuntimeError as e:
        if "alloc" in str(e).lower() or "out of memory" in str(e).lower():
            raise RunError(f"{out}: not enough memory to train this run ({str(e)[:200]})") from None
        raise


def resume_single(run_dir: str | os.PathLike, *, progress: bool = True, device: str | None = None,
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
            return with_session(run, "already_finished", E, E, None)
        raise
    try:
        return resume_locked(run_dir, lock, progress=progress, device=device, callbacks=callbacks, check=check,
                              threads=threads)
    finally:
        lock.release()


def resume_locked(run_dir: Path, lock: RunLock, *, progress: bool, device: str | None,
                   callbacks: Sequence[Callback], check: bool | None = None, threads: int | None = None):
    run = load_run(run_dir, check=check)
    config = run.config
    run_dir = run.path
    E = config.train.epochs
    if "imported_from" in run.info:  # checkpoints of another codebase: nothing to continue
        reached = int(run.progress.get("epoch", 0) or 0)
        return with_session(run, "imported", reached, reached, None)
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
        return with_session(run, "already_finished", E, E, None)
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
        loop = build_single_loop(config, run_dir, dev, tp, sp, loop_callbacks(progress, callbacks))
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
            with stop_on_signals() as stop:
                loop.run(stop)
    return with_session(load_run(run_dir, check=check), "resumed", start, E, n_threads)
