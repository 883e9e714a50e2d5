"""The optimizer registry: one entry per optimizer, written once over a stack of runs.

Every optimizer updates one flat parameter ``[run, n_params]`` of ``R ≥ 1`` runs with each run's own
hyper-parameters (learning-rate schedule, weight decay and its groups, betas, momentum); a single run
is a stack of one (:mod:`grokinterp.training.loop`). Each run's state is saved under the keys of
torch's optimizers, ``opt/<param>/<slot>``, so every state file written before reads as it did.

Built-in entries (``TrainConfig.optimizer``):

===============  ====================================================================================
name             update (each bit for bit torch's on CPU, see below)
===============  ====================================================================================
``adamw``        :class:`StackedAdamW`: torch's ``AdamW`` — decoupled decay (paper)
``adam``         :class:`StackedAdam`: torch's ``Adam`` — decay as an L2 gradient term
``sgd``          :class:`StackedSGD`: torch's ``SGD`` (momentum, no dampening)
``ortho_adamw``  :class:`StackedOrthoAdamW`: ⊥AdamW (Prieto et al. 2025): AdamW whose step first makes
                 each parameter's gradient orthogonal to the parameter
                 (:func:`~grokinterp.training.transforms.stacked_orthogonalize_`)
===============  ====================================================================================

Weight decay falls on all parameters or on the weight matrices only (``TrainConfig.weight_decay_on``;
:func:`param_groups` and :func:`is_matrix` say which are matrices).

Why the bits are torch's. On CPU each entry calls torch's fused kernel (``torch._fused_adamw_``,
``_fused_adam_``, ``_fused_sgd_``: what ``torch.optim.AdamW(..., fused=True)`` runs, which the trainer
has always used on CPU) over pieces of each run's row chosen so that every element falls in the
kernel's vectorised body or scalar tail exactly as when torch gets the parameters one by one
(:meth:`StackedOptimizer._spans`), with each run's float64 learning rate: a stack of one is bit for bit
torch's optimizer, and each run of a stack is its own torch optimizer (tested,
``tests/test_one_loop.py``). Elsewhere (CUDA: broadcast kernels over the whole stack, capturable in a
CUDA graph) the operations follow torch's ``_single_tensor_adam`` / ``sgd`` in their order, with each
run's scalars computed in float64 and rounded once.

A new optimizer is one :func:`register_optimizer` call; the trainer, resume, stacks and the CLI pick
it up by name. Its builder is either a :class:`StackedOptimizer` class (``builder(flat, layout,
train_configs)``; such runs also train in stacks) or, as before, a function returning a
``torch.optim.Optimizer`` over the named parameters (``builder(named_params, train_config, options)``:
adapted by :class:`TorchOptimizer`; such runs train alone, a stack of one).

Example:
    >>> register_optimizer("rmsprop", lambda params, tc, o: torch.optim.RMSprop(
    ...     params.values(), lr=o.lr, weight_decay=tc.weight_decay))         # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import OPTIMIZER_NAMES, TrainConfig
from ..errors import ConfigError, RunError
from ..model.params import is_bias, is_norm_weight
from .transforms import stacked_orthogonalize_

__all__ = ["is_matrix", "OptimizerOptions", "OPTIMIZERS", "register_optimizer", "check_optimizer",
           "build_optimizer", "expected_slots", "param_groups", "EPS", "ParamLayout", "per_run", "StackedSchedule",
           "StackedOptimizer", "StackedAdamW", "StackedAdam", "StackedOrthoAdamW", "StackedSGD", "TorchOptimizer",
           "STACKED_OPTIMIZERS", "register_stacked_optimizer", "stackable_optimizer", "checked_optimizer_state"]


@dataclass(frozen=True)
class OptimizerOptions:
    """Device-dependent choices passed to a ``torch.optim`` builder (:class:`TorchOptimizer`).

    Attributes:
        lr: the learning rate to construct with (the loop sets each step's value in the groups).
        fused: use a fused kernel where the optimizer has one (CPU and CUDA).
        capturable: the optimizer must be capturable in a CUDA graph (never asked of an adapted
            ``torch.optim`` builder now: such a run steps eagerly).
    """

    lr: float | Tensor
    fused: bool = False
    capturable: bool = False

    def torch_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"lr": self.lr}
        if self.fused:
            kw["fused"] = True
        if self.capturable:
            kw["capturable"] = True
        return kw


def is_matrix(name: str, p: Tensor | tuple[int, ...]) -> bool:
    """A weight matrix, decayed under ``weight_decay_on = matrices``: two or more axes (``p`` a tensor
    or its shape), and neither a bias (``b_*``, a LayerNorm's ``b``) nor a LayerNorm weight."""
    ndim = p.ndim if isinstance(p, Tensor) else len(p)
    return ndim >= 2 and not is_bias(name) and not is_norm_weight(name)


def param_groups(params: dict[str, torch.nn.Parameter], tc: TrainConfig) -> list[dict[str, Any]]:
    """``torch.optim`` parameter groups for ``tc.weight_decay_on``, in the parameters' order (what a
    :class:`TorchOptimizer` builder receives to honour, and the reference the built-in entries match).

    ``all``: one group with ``weight_decay = tc.weight_decay`` (LayerNorm weights and biases
    included, as ``torch.optim.AdamW(model.parameters())`` in the reference decoders). ``matrices``:
    that group holds the weight matrices (:func:`is_matrix`: ``W_E``, ``W_pos``, ``W_Q/K/V/O``,
    ``W_in``, ``W_out``, ``W_U``) and a second group the others (the biases, ``b_Q/K/V`` although they
    have two axes, and the LayerNorms' ``w`` and ``b``) with weight decay 0.
    """
    if tc.weight_decay_on == "all":
        return [{"params": list(params.values()), "weight_decay": tc.weight_decay}]
    mats = [p for k, p in params.items() if is_matrix(k, p)]
    rest = [p for k, p in params.items() if not is_matrix(k, p)]
    return [g for g in ({"params": mats, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0})
            if g["params"]]


EPS = 1e-8
#: Pieces of a run's parameter row passed to a fused CPU kernel keep lengths that are multiples of
#: this (a multiple of every CPU's float vector width; :meth:`StackedOptimizer._spans`).
FUSED_SPAN = 64


class ParamLayout:
    """Where each named parameter lives in a run's flat parameter vector (TransformerLens names,
    in :func:`~grokinterp.model.params.param_shapes` order)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.names = list(shapes)
        self.shapes = [tuple(s) for s in shapes.values()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.offsets = [int(sum(self.sizes[:i])) for i in range(len(self.sizes))]
        self.total = sum(self.sizes)

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """``flat [..., total]`` → ``{name: [..., *shape]}`` views (differentiable)."""
        lead = flat.shape[:-1]
        return {n: t.view(*lead, *s) for n, s, t in zip(self.names, self.shapes, flat.split(self.sizes, dim=-1))}

    def flatten(self, params: dict[str, Tensor]) -> Tensor:
        """``{name: [run, *shape]}`` → ``[run, total]``."""
        return torch.cat([params[n].reshape(params[n].shape[0], -1) for n in self.names], dim=1)

    def matrix_mask(self) -> Tensor:
        """``[total]`` float32: 1 on the weight matrices (:func:`is_matrix`), 0 on the others (the
        ``weight_decay_on = "matrices"`` groups of :func:`param_groups`)."""
        return torch.cat([torch.full((n,), 1.0 if is_matrix(k, s) else 0.0)
                          for k, n, s in zip(self.names, self.sizes, self.shapes)])


def per_run(values: Sequence[float], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-run hyper-parameters as a ``[run, 1]`` device tensor (broadcasts over ``[run, n_params]``).
    Values are rounded from the host's float64 once (``1 − β`` is computed on the host, then rounded,
    as torch's optimizers round a Python float)."""
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)[:, None]


class StackedSchedule:
    """Every run's :meth:`~grokinterp.config.TrainConfig.lr_at` on the device: ``schedule(epoch)`` with
    ``epoch`` a 0-d device tensor is ``[run, 1]`` float64 (warm-up style, constant or cosine, per run).
    The per-run constants are device tensors made once, so a step replayed from a CUDA graph needs no
    host value and no host→device copy."""

    def __init__(self, tcs: Sequence[TrainConfig], device: torch.device):
        f64 = torch.float64
        self.lr = per_run([tc.lr for tc in tcs], device, f64)
        self.warm = per_run([tc.warmup_epochs for tc in tcs], device, f64)
        self.shift = per_run([0 if tc.warmup_style == "paper" else 1 for tc in tcs], device, f64)
        self.cosine = per_run([tc.lr_schedule == "cosine" for tc in tcs], device, f64) > 0
        self.span = per_run([max(tc.epochs - tc.warmup_epochs, 1) for tc in tcs], device, f64)

    def __call__(self, epoch: Tensor) -> Tensor:
        e = epoch.to(torch.float64)
        warm = self.warm
        ramp = torch.where(warm > 0, ((e + self.shift) / warm.clamp(min=1)).clamp(max=1.0), torch.ones_like(warm))
        cos = 0.5 * (1.0 + torch.cos(math.pi * (e - warm) / self.span))
        return self.lr * torch.where(self.cosine & (e >= warm), cos, ramp)


def _groups(tcs: Sequence[TrainConfig], fields: tuple[str, ...]) -> list[list[int]]:
    """Runs with equal ``fields`` (their optimizer's hyper-parameters), in order of first appearance."""
    out: dict[tuple, list[int]] = {}
    for r, tc in enumerate(tcs):
        out.setdefault(tuple(getattr(tc, f) for f in fields), []).append(r)
    return list(out.values())


#: The fields that decide a run's learning rate at every step (:meth:`TrainConfig.lr_at`).
_LR_FIELDS = ("lr", "warmup_epochs", "warmup_style", "lr_schedule", "epochs")


def checked_optimizer_state(tensors: dict[str, Tensor], slots: dict[str, bool], shapes: dict[str, tuple[int, ...]],
                            dtype: torch.dtype, optimizer: str, where: str) -> dict[str, dict[str, Tensor]]:
    """A state file's ``opt/<param>/<slot>`` tensors as ``{param: {slot: tensor}}``, each checked: a
    parameter of ``shapes`` and a slot of ``slots`` (``{slot: has the parameter's shape}``), with the
    parameter's shape and ``dtype``, or a scalar. :class:`RunError` naming ``where`` and the key."""
    per_param: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith("opt/"):
            continue
        name, _, slot = key[4:].rpartition("/")
        if name not in shapes or slot not in slots:
            ok = False
        elif slots[slot]:
            ok = tuple(t.shape) == tuple(shapes[name]) and t.dtype == dtype
        else:
            ok = t.ndim == 0 and (t.is_floating_point() or t.dtype in (torch.int64, torch.int32))
        if not ok:
            raise RunError(f"{where}: optimizer state {key!r} does not match the model and the {optimizer} "
                           f"optimizer (shape {list(t.shape)}, dtype {t.dtype})")
        per_param.setdefault(name, {})[slot] = t
    return per_param


class StackedOptimizer:
    """Base of the stacked optimizers: one flat parameter ``[run, n_params]``, per-run
    hyper-parameters as ``[run, 1]`` device tensors, a handful of kernels per step for the stack.

    Every single-run choice is per run: the learning rate of the step from epoch ``e`` is each run's
    :meth:`~grokinterp.config.TrainConfig.lr_at` (warm-up style, constant or cosine schedule; on the
    device from a device epoch counter, :class:`StackedSchedule`, so a replayed CUDA graph needs no host
    value; on CPU the host's float64 value, as the single-run optimizer gets it), and weight decay
    falls on all parameters or on the matrices only (``weight_decay_on``, as :func:`param_groups`).
    Subclasses implement :meth:`step` and name their per-parameter slots (``slots``) as the single-run
    optimizer's ``state_dict()`` does, so each run's state file reads like a single run's (and a run
    trained in a stack resumes alone, and the other way round).
    """

    slots: tuple[str, ...] = ()

    def __init__(self, flat: torch.nn.Parameter, layout: ParamLayout, tcs: Sequence[TrainConfig]):
        self.flat, self.layout, self.tcs = flat, layout, list(tcs)
        dev = flat.device
        self.device = dev
        self.dtype = flat.dtype  # train.dtype: the device path's per-run scalars are rounded to it once
        self.schedule = StackedSchedule(tcs, dev)
        self._epoch: Tensor = torch.zeros((), dtype=torch.float32, device=dev)
        self.host_lr: list[float] | None = None
        self.step_count = torch.zeros(len(tcs), 1, dtype=torch.float32, device=dev)
        wd = per_run([tc.weight_decay for tc in tcs], dev, torch.float64)
        if any(tc.weight_decay_on == "matrices" for tc in tcs):
            only = per_run([tc.weight_decay_on == "matrices" for tc in tcs], dev) > 0
            wd = wd * torch.where(only, layout.matrix_mask().to(dev, torch.float64),
                                  torch.ones(layout.total, dtype=torch.float64, device=dev))
        self.weight_decay64 = wd  # [run, 1] or [run, n_params], float64
        self.weight_decay = wd.to(self.dtype)
        self.state = {slot: torch.zeros_like(flat) for slot in self.slots}
        self._fused_cache: dict[tuple[int, ...], Any] = {}
        self._prepared = False

    def prepare_grads(self, grads: dict[str, Tensor]) -> None:
        """Do now, on ``grads`` (``{name: [run, ...]}``, where the step finds them: views of the
        flat gradient, or the gradients autograd wrote before they are gathered into it), what the
        next :meth:`step` does to the gradient first (⊥AdamW's projection); that step then skips it."""
        self._prepare_views(grads)
        self._prepared = True

    def _prepare_views(self, grads: dict[str, Tensor]) -> None:
        """What the gradient needs before the update (nothing here; ⊥AdamW projects it)."""

    def _prepare(self) -> None:
        if not self._prepared and self.flat.grad is not None:
            self._prepare_views(self.layout.views(self.flat.grad))
        self._prepared = False

    @classmethod
    def slot_names(cls, tc: TrainConfig) -> dict[str, bool]:
        """The ``opt/<param>/<slot>`` slots of a run's state: ``{slot: has the parameter's shape}``
        (torch's: a scalar ``step`` and the moments for the Adam family)."""
        return {"step": False, **{s: True for s in cls.slots}}

    def set_lr(self, epoch: Tensor, host_epoch: int | None = None) -> None:
        """Take the step from ``epoch`` (a 0-d device tensor, read when the step runs: a CUDA graph
        replays the schedule on the device); with ``host_epoch`` (the same epoch on the host) each
        run's float64 learning rate is computed on the host (``host_lr``), as torch's optimizers get it."""
        self._epoch = epoch
        self.host_lr = None if host_epoch is None else [tc.lr_at(host_epoch) for tc in self.tcs]

    @property
    def lr64(self) -> Tensor:
        """Every run's learning rate of the current step, ``[run, 1]`` float64 on the device."""
        return self.schedule(self._epoch)

    @property
    def lr(self) -> Tensor:
        """:attr:`lr64` rounded to float32."""
        return self.lr64.float()

    def zero_grad(self) -> None:
        self.flat.grad = None

    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _spans(self, tc: TrainConfig) -> list[tuple[int, int, bool]]:
        """``(start, end, decayed)`` of the pieces of a run's row that a fused kernel gets as tensors.

        A fused CPU kernel rounds its vectorised body and its scalar tail differently, so what it
        computes for an element depends on where the tensor it is passed in ends. Consecutive
        parameters (in one decay group) are passed as one piece only while the piece's length stays
        a multiple of :data:`FUSED_SPAN`: then every element falls in the body or the tail exactly as
        when the single-run optimizer passes the parameters one by one, and a step is bit-identical to
        theirs on the same gradients (one torch thread), with a few kernel arguments per run.
        """
        out: list[tuple[int, int, bool]] = []
        lay = self.layout
        for name, off, size, shape in zip(lay.names, lay.offsets, lay.sizes, lay.shapes):
            dec = tc.weight_decay_on != "matrices" or is_matrix(name, shape)
            if out and out[-1][2] == dec and (out[-1][1] - out[-1][0]) % FUSED_SPAN == 0:
                out[-1] = (out[-1][0], off + size, dec)
            else:
                out.append((off, off + size, dec))
        return out

    def _fused_args(self, ix: list[int], tensors: tuple[Tensor, ...],
                    grad: Tensor) -> list[tuple[bool, list[list[Tensor]], list[Tensor]]]:
        """For the runs ``ix`` (one hyper-parameter group): per decay group (``decayed``, the pieces
        of each persistent tensor ``[run, n_params]`` and the step counts, the gradient's pieces). The
        persistent pieces are views made once."""
        key = tuple(ix)
        cached = self._fused_cache.get(key)
        if cached is None:
            spans = self._spans(self.tcs[ix[0]])
            per: dict[bool, list[list[Tensor]]] = {True: [[] for _ in range(len(tensors) + 1)],
                                                   False: [[] for _ in range(len(tensors) + 1)]}
            for i in ix:
                for a, b, dec in spans:
                    for j, t in enumerate(tensors):
                        per[dec][j].append(t[i, a:b])
                    per[dec][-1].append(self.step_count[i])
            self._fused_cache[key] = cached = (spans, per)
        spans, per = cached
        out = []
        for dec in (True, False):
            if per[dec][0]:
                out.append((dec, per[dec], [grad[i, a:b] for i in ix for a, b, d in spans if d == dec]))
        return out

    # -- each run's state, as a single run's optimizer would save it ---------------------------------
    def run_state(self, r: int) -> dict[str, Tensor]:
        """Run ``r``'s ``opt/<param>/<slot>`` tensors (none before the first step, as torch's)."""
        if float(self.step_count[r]) == 0:
            return {}
        keep = self.slot_names(self.tcs[r])
        views = {slot: self.layout.views(self.state[slot][r]) for slot in self.slots}
        out: dict[str, Tensor] = {}
        for name in self.layout.names:
            for slot in keep:
                out[f"opt/{name}/{slot}"] = (self.step_count[r, 0].detach().clone() if slot == "step"
                                             else views[slot][name])
        return out

    def load_run_state(self, r: int, tensors: dict[str, Tensor], where: str) -> None:
        """Restore run ``r`` from its state file's ``opt/<param>/<slot>`` tensors, checked against the
        model first (the checks and messages of the single-run trainer of earlier releases): every key
        names a parameter and a slot this optimizer keeps (:meth:`slot_names`), with the parameter's
        shape and dtype or as a scalar; every parameter has all the slots, with one step count."""
        tc = self.tcs[r]
        keep = self.slot_names(tc)
        per_param = checked_optimizer_state(tensors, keep, dict(zip(self.layout.names, self.layout.shapes)),
                                            self.flat.dtype, tc.optimizer, where)
        if not per_param:  # saved before the first step (torch keeps no state then)
            return
        for name in self.layout.names:
            slots = per_param.get(name, {})
            if set(slots) != set(keep):
                raise RunError(f"{where}: optimizer state of {name} is incomplete (has {sorted(slots)}, the "
                               f"{tc.optimizer} optimizer keeps {sorted(keep)})")
        steps = {float(slots["step"]) for slots in per_param.values() if "step" in slots}
        if len(steps) > 1:
            raise RunError(f"{where}: optimizer step counts differ between parameters ({sorted(steps)[:3]})")
        with torch.no_grad():
            for slot in self.slots:
                views = self.layout.views(self.state[slot][r])
                for name, slots in per_param.items():
                    if slot in slots:
                        views[name].copy_(slots[slot])
        self.step_count[r] = steps.pop() if steps else 1.0


class StackedAdamW(StackedOptimizer):
    """AdamW (decoupled weight decay) with per-run lr schedule, weight decay (and its groups) and
    betas; ``step``, ``exp_avg``, ``exp_avg_sq`` as torch's ``AdamW``.

    Notes:
        ``θ ← θ (1 − lr λ)``, ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
        ``θ ← θ − lr / (1 − β1^t) · m / (√v / √(1 − β2^t) + ε)``. On CPU torch's fused kernel (the
        one the single-run optimizer uses) runs over each group of runs with equal hyper-parameters.
    """

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = True

    def __init__(self, flat, layout, tcs):
        super().__init__(flat, layout, tcs)
        self.beta1 = per_run([tc.beta1 for tc in tcs], self.device, self.dtype)
        self.beta2 = per_run([tc.beta2 for tc in tcs], self.device, self.dtype)
        self.beta1_64 = per_run([tc.beta1 for tc in tcs], self.device, torch.float64)
        self.beta2_64 = per_run([tc.beta2 for tc in tcs], self.device, torch.float64)
        self.one_minus_beta1 = per_run([1 - tc.beta1 for tc in tcs], self.device, self.dtype)
        self.one_minus_beta2 = per_run([1 - tc.beta2 for tc in tcs], self.device, self.dtype)
        self.groups = _groups(tcs, (*_LR_FIELDS, "weight_decay", "weight_decay_on", "beta1", "beta2"))

    @torch.no_grad()
    def step(self) -> None:
        p, g = self.flat, self.flat.grad
        if g is None:
            return
        self._prepare()
        self.step_count.add_(1)
        if self.device.type == "cpu":  # torch's fused kernel: one pass over each run's row, in the cache
            fused = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            data, m, v = p.detach(), self.state["exp_avg"], self.state["exp_avg_sq"]
            for ix in self.groups:
                tc = self.tcs[ix[0]]
                lr = self.host_lr[ix[0]] if self.host_lr is not None else float(self.lr64[ix[0]])
                for dec, (ps, ms, vs, steps), gs in self._fused_args(ix, (data, m, v), g):
                    fused(ps, gs, ms, vs, [], steps, lr=lr, beta1=tc.beta1, beta2=tc.beta2,
                          weight_decay=tc.weight_decay if dec else 0.0, eps=EPS, amsgrad=False, maximize=False)
            return
        # torch's _single_tensor_adam, operation by operation; each run's scalars in float64, rounded once
        lr, step = self.lr64, self.step_count.double()
        bc1 = 1 - self.beta1_64.pow(step)
        bc2_sqrt = (1 - self.beta2_64.pow(step)).sqrt().to(self.dtype)
        neg_step_size = (-(lr / bc1)).to(self.dtype)
        if self.decoupled:
            p.mul_((1 - lr * self.weight_decay64).to(self.dtype))
        else:
            g = g.add(p * self.weight_decay)
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        m.lerp_(g, self.one_minus_beta1)
        v.mul_(self.beta2).add_(self.one_minus_beta2 * g * g)
        denom = (v.sqrt() / bc2_sqrt).add_(EPS)
        p.add_(neg_step_size * m / denom)


class StackedAdam(StackedAdamW):
    """Adam with weight decay as an L2 term in the gradient (torch's ``Adam``), per-run hyper-parameters."""

    decoupled = False


class StackedOrthoAdamW(StackedAdamW):
    """⊥AdamW over a stack: every run's parameters' gradients made orthogonal to the parameters
    (:func:`~grokinterp.training.transforms.stacked_orthogonalize_`), then :class:`StackedAdamW`."""

    def _prepare_views(self, grads: dict[str, Tensor]) -> None:
        stacked_orthogonalize_(self.layout.views(self.flat.detach()), grads)


class StackedSGD(StackedOptimizer):
    """SGD with momentum (torch's ``SGD``: weight decay as an L2 term, buffer ``momentum_buffer``),
    per-run lr schedule, momentum, weight decay and its groups."""

    slots = ("momentum_buffer",)

    @classmethod
    def slot_names(cls, tc: TrainConfig) -> dict[str, bool]:
        """torch's ``SGD`` keeps a momentum buffer only with momentum (and no step count)."""
        return {"momentum_buffer": True} if tc.momentum != 0 else {}

    def __init__(self, flat, layout, tcs):
        super().__init__(flat, layout, tcs)
        self.momentum = per_run([tc.momentum for tc in tcs], self.device, self.dtype)
        self.groups = _groups(tcs, (*_LR_FIELDS, "weight_decay", "weight_decay_on", "momentum"))

    @torch.no_grad()
    def step(self) -> None:
        p = self.flat
        if p.grad is None:
            return
        self._prepare()
        self.step_count.add_(1)
        if self.device.type == "cpu":  # torch's fused kernel, as the single-run optimizer's
            data, g, buf = p.detach(), p.grad, self.state["momentum_buffer"]
            for ix in self.groups:
                tc = self.tcs[ix[0]]
                lr = self.host_lr[ix[0]] if self.host_lr is not None else float(self.lr64[ix[0]])
                first = float(self.step_count[ix[0]]) == 1
                for dec, (ps, bs, _), gs in self._fused_args(ix, (data, buf), g):
                    torch._fused_sgd_(ps, gs, bs if tc.momentum != 0 else [], weight_decay=tc.weight_decay if dec else 0.0,
                                      momentum=tc.momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                                      is_first_step=first and tc.momentum != 0, grad_scale=None, found_inf=None)
            return
        d = p.grad.add(p * self.weight_decay)
        buf = self.state["momentum_buffer"]
        buf.mul_(self.momentum).add_(d)  # first step: 0 · 0 + d, as torch's clone of d
        p.add_((-self.lr64).to(self.dtype) * buf)



class TorchOptimizer(StackedOptimizer):
    """A ``torch.optim`` builder registered with :func:`register_optimizer` (the extension API of
    earlier releases), over a stack of one run: the builder gets the run's parameters as leaf tensors
    that share the flat parameter's memory, their ``.grad`` are views of the flat gradient, and its
    ``state_dict()`` is saved under the same ``opt/<param>/<slot>`` keys as ever. Such a run trains
    alone (``max_runs = 1``) and steps eagerly (no CUDA graph: the builder need not be capturable).
    """

    max_runs = 1
    graphable = False

    def __init__(self, flat: torch.nn.Parameter, layout: ParamLayout, tcs: Sequence[TrainConfig],
                 builder: Callable[..., torch.optim.Optimizer]):
        if len(tcs) != 1:
            raise ConfigError(f"train.optimizer: {tcs[0].optimizer!r} is a torch.optim builder without a stacked "
                              f"version; its runs train alone, got a stack of {len(tcs)}")
        super().__init__(flat, layout, tcs)
        self.params = {k: torch.nn.Parameter(v) for k, v in layout.views(flat.detach()[0]).items()}
        dev = flat.device
        self.opt = builder(self.params, tcs[0], OptimizerOptions(lr=tcs[0].lr, fused=dev.type in ("cpu", "cuda")))
        name_of = {id(p): k for k, p in self.params.items()}
        try:
            self.names = [name_of[id(p)] for group in self.opt.param_groups for p in group["params"]]
        except KeyError:
            raise RunError("the optimizer holds a parameter that is not one of the model's") from None

    def set_lr(self, epoch: Tensor, host_epoch: int | None = None) -> None:
        lr = self.tcs[0].lr_at(int(epoch) if host_epoch is None else host_epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def step(self) -> None:
        if self.flat.grad is None:
            return
        for k, g in self.layout.views(self.flat.grad[0]).items():
            self.params[k].grad = g
        self.opt.step()
        self.step_count.add_(1)

    def run_state(self, r: int) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for idx, slots in self.opt.state_dict()["state"].items():
            for slot, val in slots.items():
                if val is not None:  # e.g. SGD without momentum keeps momentum_buffer = None
                    out[f"opt/{self.names[idx]}/{slot}"] = val if torch.is_tensor(val) else torch.tensor(val)
        return out

    def load_run_state(self, r: int, tensors: dict[str, Tensor], where: str) -> None:
        tc = self.tcs[0]
        slots_of = expected_slots(tc)
        per_param = checked_optimizer_state(tensors, slots_of, {k: tuple(p.shape) for k, p in self.params.items()},
                                            self.flat.dtype, tc.optimizer, where)
        for name, slots in per_param.items():
            if set(slots) != set(slots_of):
                raise RunError(f"{where}: optimizer state of {name} is incomplete (has {sorted(slots)}, the "
                               f"{tc.optimizer} optimizer keeps {sorted(slots_of)})")
        sd = self.opt.state_dict()
        index = {n: i for i, n in enumerate(self.names)}
        sd["state"] = {index[n]: {k: v.to(self.device) for k, v in slots.items()} for n, slots in per_param.items()}
        try:
            self.opt.load_state_dict(sd)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{where}: cannot restore the optimizer state ({e})") from None
        if per_param:
            self.step_count.fill_(1.0)


class _TorchBuilder:
    """The registry entry of a ``torch.optim`` builder (:class:`TorchOptimizer`)."""

    max_runs = 1

    def __init__(self, builder: Callable[..., torch.optim.Optimizer]):
        self.builder = builder

    def __call__(self, flat: torch.nn.Parameter, layout: ParamLayout, tcs: Sequence[TrainConfig]) -> TorchOptimizer:
        return TorchOptimizer(flat, layout, tcs, self.builder)


StackedBuilder = Callable[[torch.nn.Parameter, ParamLayout, Sequence[TrainConfig]], StackedOptimizer]

#: The registry: every optimizer by name, as ``builder(flat [run, n_params], layout, train_configs)``.
OPTIMIZERS: dict[str, StackedBuilder] = {
    "adamw": StackedAdamW, "adam": StackedAdam, "sgd": StackedSGD, "ortho_adamw": StackedOrthoAdamW,
}
#: The same registry under its earlier name (there is only one).
STACKED_OPTIMIZERS = OPTIMIZERS


def register_optimizer(name: str, builder: Any, description: str = "", *,
                       stacked: StackedBuilder | None = None) -> None:
    """Make an optimizer available as ``TrainConfig.optimizer = name``.

    Args:
        name: an identifier.
        builder: a :class:`StackedOptimizer` class (or any ``builder(flat, layout, train_configs)``
            passed as ``stacked``), or a function ``builder(named_params, train_config, options) ->
            torch.optim.Optimizer`` (adapted by :class:`TorchOptimizer`: its runs train alone).
        description: one line for listings (``grokinterp train --help`` lists the built-in ones
            from :data:`grokinterp.config.OPTIMIZER_NAMES`, which this call extends).
        stacked: the entry over stacks, when ``builder`` is a ``torch.optim`` builder kept for
            reference: the registry keeps ``stacked``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"optimizer name must be an identifier, got {name!r}")
    if stacked is not None:
        entry: StackedBuilder = stacked
    elif isinstance(builder, type) and issubclass(builder, StackedOptimizer):
        entry = builder
    else:
        entry = _TorchBuilder(builder)
    OPTIMIZERS[name] = entry
    if description or name not in OPTIMIZER_NAMES:
        OPTIMIZER_NAMES[name] = description or name


def register_stacked_optimizer(name: str, builder: StackedBuilder) -> None:
    """Register ``builder(flat_param [run, n_params], layout, train_configs) -> StackedOptimizer``
    under ``name`` (the same registry as :func:`register_optimizer`)."""
    register_optimizer(name, builder, stacked=builder)


def check_optimizer(tc: TrainConfig) -> StackedBuilder:
    """The registered builder of ``tc.optimizer``; :class:`ConfigError` naming the field if unknown."""
    try:
        return OPTIMIZERS[tc.optimizer]
    except KeyError:
        raise ConfigError(f"train.optimizer: unknown optimizer {tc.optimizer!r}; known: "
                          f"{', '.join(sorted(OPTIMIZERS))}") from None


def stackable_optimizer(name: str) -> bool:
    """Whether the optimizer ``name`` trains runs in stacks of more than one."""
    return name in OPTIMIZERS and getattr(OPTIMIZERS[name], "max_runs", None) != 1


def build_optimizer(flat: torch.nn.Parameter, layout: ParamLayout, tcs: Sequence[TrainConfig]) -> StackedOptimizer:
    """The optimizer of ``tcs[0].optimizer`` over ``flat [run, n_params]`` (one train config per run)."""
    return check_optimizer(tcs[0])(flat, layout, tcs)


def expected_slots(tc: TrainConfig) -> dict[str, bool]:
    """The per-parameter state slots of ``tc.optimizer`` after one step: ``{slot: has the parameter's shape}``
    (the slots of torch's optimizer of the same name: ``step`` a scalar)."""
    entry = check_optimizer(tc)
    if isinstance(entry, type) and issubclass(entry, StackedOptimizer):
        return entry.slot_names(tc)
    probe = torch.nn.Parameter(torch.zeros(1, 2))
    opt = entry(probe, ParamLayout({"probe": (2,)}), [tc])
    probe.grad = torch.zeros(1, 2)
    opt.set_lr(torch.zeros(()), 0)
    opt.step()
    if isinstance(opt, TorchOptimizer):
        state = opt.opt.state_dict()["state"].get(0, {})
        return {slot: torch.is_tensor(v) and v.ndim > 0 for slot, v in state.items() if v is not None}
    return {k.rpartition("/")[2]: v.ndim > 0 for k, v in opt.run_state(0).items()}
