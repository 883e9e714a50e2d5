"""The optimizer registry: every optimizer is built from a :class:`~grokinterp.config.TrainConfig`
in this one place, and its state is saved and restored through ``state_dict()``.

Built-in entries (``TrainConfig.optimizer``):

=========  ====================================================================================
name       optimizer
=========  ====================================================================================
``adamw``  ``torch.optim.AdamW(lr, betas=(beta1, beta2), weight_decay)`` — decoupled decay (paper)
``adam``   ``torch.optim.Adam(lr, betas=(beta1, beta2), weight_decay)`` — decay as an L2 gradient term
``sgd``    ``torch.optim.SGD(lr, momentum, weight_decay)``
``ortho_adamw``  ⊥AdamW (Prieto et al. 2025): AdamW whose step first makes each parameter's
           gradient orthogonal to the parameter (:func:`~grokinterp.training.transforms.orthogonalize_`)
=========  ====================================================================================

Weight decay goes through parameter groups (:func:`param_groups`): ``TrainConfig.weight_decay_on``
``all`` gives one group, ``matrices`` a second group of the parameters that are not weight
matrices (:func:`is_matrix`: the biases and the LayerNorms' weights and biases) with weight decay 0. The optimizer state is saved per parameter *name*
(:func:`optimizer_param_names` maps the optimizer's parameter order, group by group, to names).

Every optimizer also has a stacked version (:data:`STACKED_OPTIMIZERS`, :class:`StackedOptimizer`):
the same update over one flat parameter ``[run, n_params]`` of ``R`` runs
(:mod:`grokinterp.training.stacked`), with each run's own lr schedule, weight decay and decay groups,
betas and momentum; on CPU through torch's fused kernels, bit-identical to the single-run optimizer on
the same gradients; each run's state is saved under the single-run keys ``opt/<param>/<slot>``. A
new optimizer without a stacked version (:func:`register_stacked_optimizer`) trains alone.

A new optimizer is one :func:`register_optimizer` call; the trainer, resume and the CLI pick it
up by name. The builder receives the named parameters, the config and :class:`OptimizerOptions`
(device-specific choices: a fused kernel where one exists, and a *capturable* optimizer with a
tensor learning rate when the step is replayed from a CUDA graph).

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
from .transforms import orthogonalize_, stacked_orthogonalize_

__all__ = ["is_matrix", "OptimizerOptions", "OPTIMIZERS", "register_optimizer", "build_optimizer", "check_optimizer",
           "optimizer_state_tensors", "load_optimizer_state", "expected_slots", "param_groups",
           "optimizer_param_names", "OrthoAdamW", "EPS", "ParamLayout", "per_run", "StackedSchedule", "StackedOptimizer",
           "StackedAdamW", "StackedAdam", "StackedOrthoAdamW", "StackedSGD", "STACKED_OPTIMIZERS",
           "register_stacked_optimizer"]


@dataclass(frozen=True)
class OptimizerOptions:
    """Device-dependent choices the trainer makes for a builder.

    Attributes:
        lr: the learning rate to construct with: a float, or a 0-d device tensor when the step is
            replayed from a CUDA graph (the loop writes the scheduled value into it in place).
        fused: use a fused kernel where the optimizer has one (CPU and CUDA).
        capturable: the optimizer must be capturable in a CUDA graph.
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


Builder = Callable[[dict[str, torch.nn.Parameter], TrainConfig, OptimizerOptions], torch.optim.Optimizer]

#: Registered optimizers by name.
OPTIMIZERS: dict[str, Builder] = {}


def register_optimizer(name: str, builder: Builder, description: str = "", *,
                       stacked: "StackedBuilder | None" = None) -> None:
    """Make an optimizer available as ``TrainConfig.optimizer = name``.

    Args:
        name: an identifier.
        builder: ``builder(named_params, train_config, options) -> torch.optim.Optimizer``; it
            should honour ``options.lr`` (possibly a tensor) and may ignore ``fused`` /
            ``capturable`` (then a CUDA-graph capture that fails falls back to eager steps).
        description: one line for listings (``grokinterp train --help`` lists the built-in ones
            from :data:`grokinterp.config.OPTIMIZER_NAMES`, which this call extends).
        stacked: its stacked version, if any (:func:`register_stacked_optimizer`); without one, runs
            with this optimizer train alone.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"optimizer name must be an identifier, got {name!r}")
    OPTIMIZERS[name] = builder
    if stacked is not None:
        register_stacked_optimizer(name, stacked)
    if description or name not in OPTIMIZER_NAMES:
        OPTIMIZER_NAMES[name] = description or name


def check_optimizer(tc: TrainConfig) -> Builder:
    """The registered builder of ``tc.optimizer``; :class:`ConfigError` naming the field if unknown."""
    try:
        return OPTIMIZERS[tc.optimizer]
    except KeyError:
        raise ConfigError(f"train.optimizer: unknown optimizer {tc.optimizer!r}; known: "
                          f"{', '.join(sorted(OPTIMIZERS))}") from None


def build_optimizer(params: dict[str, torch.nn.Parameter], tc: TrainConfig,
                    options: OptimizerOptions) -> torch.optim.Optimizer:
    """The optimizer named by ``tc.optimizer`` over ``params`` (in their order)."""
    return check_optimizer(tc)(params, tc, options)


def is_matrix(name: str, p: Tensor | tuple[int, ...]) -> bool:
    """A weight matrix, decayed under ``weight_decay_on = matrices``: two or more axes (``p`` a tensor
    or its shape), and neither a bias (``b_*``, a LayerNorm's ``b``) nor a LayerNorm weight."""
    ndim = p.ndim if isinstance(p, Tensor) else len(p)
    return ndim >= 2 and not is_bias(name) and not is_norm_weight(name)


def param_groups(params: dict[str, torch.nn.Parameter], tc: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups for ``tc.weight_decay_on``, in the parameters' order.

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


def optimizer_param_names(opt: torch.optim.Optimizer, params: dict[str, Tensor]) -> list[str]:
    """The name of each of ``opt``'s parameters in ``state_dict()`` order (group by group)."""
    name_of = {id(p): k for k, p in params.items()}
    try:
        return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]
    except KeyError:
        raise RunError("the optimizer holds a parameter that is not one of the model's") from None


class OrthoAdamW(torch.optim.AdamW):
    """⊥AdamW (Prieto et al. 2025): AdamW on ⊥Grad gradients.

    Notes:
        Before each AdamW step every parameter's gradient ``g`` is replaced by its component
        orthogonal to the parameter ``w``, rescaled to ``‖g‖``
        (:func:`~grokinterp.training.transforms.orthogonalize_`); the AdamW update (moments, bias
        correction, decoupled weight decay) is torch's. Tensor operations only: capturable.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    orthogonalize_(p, p.grad)
        return super().step(closure)


def _adam_kwargs(tc: TrainConfig, o: OptimizerOptions) -> dict[str, Any]:
    return {"betas": (tc.beta1, tc.beta2), "weight_decay": tc.weight_decay, **o.torch_kwargs()}


def _adamw(params, tc: TrainConfig, o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(params, tc), **_adam_kwargs(tc, o))


def _adam(params, tc: TrainConfig, o: OptimizerOptions) -> torch.optim.Optimizer:
    return torch.optim.Adam(param_groups(params, tc), **_adam_kwargs(tc, o))


def _ortho_adamw(params, tc: TrainConfig, o: OptimizerOptions) -> torch.optim.Optimizer:
    return OrthoAdamW(param_groups(params, tc), **_adam_kwargs(tc, o))


def _sgd(params, tc: TrainConfig, o: OptimizerOptions) -> torch.optim.Optimizer:
    kw = o.torch_kwargs()
    kw.pop("capturable", None)  # SGD keeps no step counter: nothing to capture
    return torch.optim.SGD(param_groups(params, tc), momentum=tc.momentum, weight_decay=tc.weight_decay, **kw)


register_optimizer("adamw", _adamw)
register_optimizer("adam", _adam)
register_optimizer("sgd", _sgd)
register_optimizer("ortho_adamw", _ortho_adamw)


# -- state through state_dict() ---------------------------------------------------------------------
def optimizer_state_tensors(opt: torch.optim.Optimizer, names: list[str]) -> dict[str, Tensor]:
    """The per-parameter state of ``opt.state_dict()`` as ``{"opt/<param name>/<slot>": tensor}``.

    ``names[i]`` is the name of the optimizer's ``i``-th parameter. Non-tensor values (a step
    count some optimizers keep as a number) become 0-d tensors. Hyper-parameters are not saved:
    they come from the run's config.
    """
    out: dict[str, Tensor] = {}
    for idx, slots in opt.state_dict()["state"].items():
        for slot, val in slots.items():
            if val is not None:  # e.g. SGD without momentum keeps momentum_buffer = None
                out[f"opt/{names[idx]}/{slot}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return out


def expected_slots(tc: TrainConfig) -> dict[str, bool]:
    """The per-parameter state slots of ``tc.optimizer`` after one step: ``{slot: has the parameter's shape}``.

    Found by probing: the registered builder is run on a 2-element parameter for one step, so
    every registered optimizer is validated the same way on resume.
    """
    probe = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer({"probe": probe}, tc, OptimizerOptions(lr=tc.lr))
    probe.grad = torch.zeros(2)
    opt.step()
    state = opt.state_dict()["state"].get(0, {})
    return {slot: torch.is_tensor(v) and v.ndim > 0 for slot, v in state.items() if v is not None}


def load_optimizer_state(opt: torch.optim.Optimizer, tc: TrainConfig, names: list[str],
                         tensors: dict[str, Tensor], params: dict[str, Tensor], where: str) -> None:
    """Restore what :func:`optimizer_state_tensors` saved, checked against the model first.

    Every ``opt/<name>/<slot>`` must name a parameter and a slot the optimizer keeps
    (:func:`expected_slots`), with its parameter's shape and dtype or as a scalar; a parameter
    with state has all the slots. Raises
    :class:`RunError` naming ``where`` (the state file) and the key otherwise.
    """
    slots_of = expected_slots(tc)
    per_param: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith("opt/"):
            continue
        name, _, slot = key[4:].rpartition("/")
        p = params.get(name)
        if p is None or slot not in slots_of:
            ok = False
        elif slots_of[slot]:
            ok = tuple(t.shape) == tuple(p.shape) and t.dtype == p.dtype
        else:
            ok = t.ndim == 0 and (t.is_floating_point() or t.dtype in (torch.int64, torch.int32))
        if not ok:
            raise RunError(f"{where}: optimizer state {key!r} does not match the model and the {tc.optimizer} "
                           f"optimizer (shape {list(t.shape)}, dtype {t.dtype})")
        per_param.setdefault(name, {})[slot] = t
    for name, slots in per_param.items():
        if set(slots) != set(slots_of):
            raise RunError(f"{where}: optimizer state of {name} is incomplete (has {sorted(slots)}, the "
                           f"{tc.optimizer} optimizer keeps {sorted(slots_of)})")
    sd = opt.state_dict()
    index = {n: i for i, n in enumerate(names)}
    device = next(iter(params.values())).device if params else torch.device("cpu")
    sd["state"] = {index[n]: {k: v.to(device) for k, v in slots.items()} for n, slots in per_param.items()}
    try:
        opt.load_state_dict(sd)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{where}: cannot restore the optimizer state ({e})") from None


# -- stacked optimizers: R runs at once, per-run hyper-parameters ----------------------------------------------
#: Adam's epsilon (torch's default, which the single-run optimizers use).
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
        self.schedule = StackedSchedule(tcs, dev)
        self.lr = torch.zeros(len(tcs), 1, dtype=torch.float32, device=dev)
        self.host_lr: list[float] | None = None
        self.step_count = torch.zeros(len(tcs), 1, dtype=torch.float32, device=dev)
        wd = per_run([tc.weight_decay for tc in tcs], dev)
        if any(tc.weight_decay_on == "matrices" for tc in tcs):
            only = per_run([tc.weight_decay_on == "matrices" for tc in tcs], dev) > 0
            wd = wd * torch.where(only, layout.matrix_mask().to(dev), torch.ones(layout.total, device=dev))
        self.weight_decay = wd  # [run, 1] or [run, n_params]
        self.state = {slot: torch.zeros_like(flat) for slot in self.slots}
        self._fused_cache: dict[tuple[int, ...], Any] = {}

    def set_lr(self, epoch: Tensor, host_epoch: int | None = None) -> None:
        """Every run's learning rate for the step from ``epoch`` (a 0-d device tensor), in place; with
        ``host_epoch`` (the same epoch on the host) also each run's float64 value (``host_lr``)."""
        self.lr.copy_(self.schedule(epoch))
        self.host_lr = None if host_epoch is None else [tc.lr_at(host_epoch) for tc in self.tcs]

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
        keep = expected_slots(self.tcs[r])
        views = {slot: self.layout.views(self.state[slot][r]) for slot in self.slots}
        out: dict[str, Tensor] = {}
        for name in self.layout.names:
            for slot in keep:
                out[f"opt/{name}/{slot}"] = (self.step_count[r, 0].detach().clone() if slot == "step"
                                             else views[slot][name])
        return out

    def load_run_state(self, r: int, tensors: dict[str, Tensor], where: str) -> None:
        """Restore run ``r`` from its state file's ``opt/`` tensors (checked like a single run's)."""
        keep = expected_slots(self.tcs[r])
        got = {k: t for k, t in tensors.items() if k.startswith("opt/")}
        if not got:
            return
        step = None
        views = {slot: self.layout.views(self.state[slot][r]) for slot in self.slots}
        for name, shape in zip(self.layout.names, self.layout.shapes):
            for slot, shaped in keep.items():
                t = got.pop(f"opt/{name}/{slot}", None)
                if t is None:
                    raise RunError(f"{where}: optimizer state opt/{name}/{slot} is missing")
                if shaped and (tuple(t.shape) != shape or t.dtype != self.flat.dtype):
                    raise RunError(f"{where}: optimizer state opt/{name}/{slot} has shape {list(t.shape)}, "
                                   f"expected {list(shape)}")
                if not shaped and t.ndim != 0:
                    raise RunError(f"{where}: optimizer state opt/{name}/{slot} must be a scalar")
                if slot == "step":
                    if step is not None and float(t) != step:
                        raise RunError(f"{where}: optimizer step counts differ between parameters")
                    step = float(t)
                elif slot in views:
                    with torch.no_grad():
                        views[slot][name].copy_(t)
                else:
                    raise RunError(f"{where}: the stacked {self.tcs[r].optimizer} optimizer keeps no slot {slot!r}")
        if got:
            raise RunError(f"{where}: optimizer state {sorted(got)[:3]} does not match the model and the "
                           f"{self.tcs[r].optimizer} optimizer")
        self.step_count[r] = step if step is not None else 1.0


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
        self.beta1 = per_run([tc.beta1 for tc in tcs], self.device)
        self.beta2 = per_run([tc.beta2 for tc in tcs], self.device)
        self.one_minus_beta1 = per_run([1 - tc.beta1 for tc in tcs], self.device)
        self.one_minus_beta2 = per_run([1 - tc.beta2 for tc in tcs], self.device)
        self.groups = _groups(tcs, (*_LR_FIELDS, "weight_decay", "weight_decay_on", "beta1", "beta2"))

    def _prepare(self) -> None:
        """What the gradient needs before the Adam update (⊥AdamW projects it)."""

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
                lr = self.host_lr[ix[0]] if self.host_lr is not None else float(self.lr[ix[0]])
                for dec, (ps, ms, vs, steps), gs in self._fused_args(ix, (data, m, v), g):
                    fused(ps, gs, ms, vs, [], steps, lr=lr, beta1=tc.beta1, beta2=tc.beta2,
                          weight_decay=tc.weight_decay if dec else 0.0, eps=EPS, amsgrad=False, maximize=False)
            return
        bc1 = 1 - self.beta1.pow(self.step_count)
        bc2_sqrt = (1 - self.beta2.pow(self.step_count)).sqrt()
        if self.decoupled:
            p.mul_(1 - self.lr * self.weight_decay)
        else:
            g = g.add(p * self.weight_decay)
        m, v = self.state["exp_avg"], self.state["exp_avg_sq"]
        m.lerp_(g, self.one_minus_beta1)
        v.mul_(self.beta2).add_(g * g * self.one_minus_beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(EPS)
        p.sub_((self.lr / bc1) * m / denom)


class StackedAdam(StackedAdamW):
    """Adam with weight decay as an L2 term in the gradient (torch's ``Adam``), per-run hyper-parameters."""

    decoupled = False


class StackedOrthoAdamW(StackedAdamW):
    """⊥AdamW over a stack: every run's parameters' gradients made orthogonal to the parameters
    (:func:`~grokinterp.training.transforms.stacked_orthogonalize_`), then :class:`StackedAdamW`."""

    def _prepare(self) -> None:
        stacked_orthogonalize_(self.layout.views(self.flat.detach()), self.layout.views(self.flat.grad))


class StackedSGD(StackedOptimizer):
    """SGD with momentum (torch's ``SGD``: weight decay as an L2 term, buffer ``momentum_buffer``),
    per-run lr schedule, momentum, weight decay and its groups."""

    slots = ("momentum_buffer",)

    def __init__(self, flat, layout, tcs):
        super().__init__(flat, layout, tcs)
        self.momentum = per_run([tc.momentum for tc in tcs], self.device)
        self.groups = _groups(tcs, (*_LR_FIELDS, "weight_decay", "weight_decay_on", "momentum"))

    @torch.no_grad()
    def step(self) -> None:
        p = self.flat
        if p.grad is None:
            return
        self.step_count.add_(1)
        if self.device.type == "cpu":  # torch's fused kernel, as the single-run optimizer's
            data, g, buf = p.detach(), p.grad, self.state["momentum_buffer"]
            for ix in self.groups:
                tc = self.tcs[ix[0]]
                lr = self.host_lr[ix[0]] if self.host_lr is not None else float(self.lr[ix[0]])
                first = float(self.step_count[ix[0]]) == 1
                for dec, (ps, bs, _), gs in self._fused_args(ix, (data, buf), g):
                    torch._fused_sgd_(ps, gs, bs if tc.momentum != 0 else [], weight_decay=tc.weight_decay if dec else 0.0,
                                      momentum=tc.momentum, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                                      is_first_step=first and tc.momentum != 0, grad_scale=None, found_inf=None)
            return
        d = p.grad.add(p * self.weight_decay)
        buf = self.state["momentum_buffer"]
        buf.mul_(self.momentum).add_(d)  # first step: 0 · 0 + d, as torch's clone of d
        p.sub_(self.lr * buf)


StackedBuilder = Callable[[torch.nn.Parameter, ParamLayout, Sequence[TrainConfig]], StackedOptimizer]

#: Stacked optimizers by the name of the single-run optimizer they reproduce.
STACKED_OPTIMIZERS: dict[str, StackedBuilder] = {
    "adamw": StackedAdamW, "adam": StackedAdam, "sgd": StackedSGD, "ortho_adamw": StackedOrthoAdamW,
}


def register_stacked_optimizer(name: str, builder: StackedBuilder) -> None:
    """Give the optimizer ``name`` a stacked version:
    ``builder(flat_param [run, n_params], layout, train_configs) -> StackedOptimizer``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"optimizer name must be an identifier, got {name!r}")
    STACKED_OPTIMIZERS[name] = builder
