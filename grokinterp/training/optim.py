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

A new optimizer is one :func:`register_optimizer` call; the trainer, resume and the CLI pick it
up by name. The builder receives the named parameters, the config and :class:`OptimizerOptions`
(device-specific choices: a fused kernel where one exists, and a *capturable* optimizer with a
tensor learning rate when the step is replayed from a CUDA graph).

Example:
    >>> register_optimizer("rmsprop", lambda params, tc, o: torch.optim.RMSprop(
    ...     params.values(), lr=o.lr, weight_decay=tc.weight_decay))         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import OPTIMIZER_NAMES, TrainConfig
from ..errors import ConfigError, RunError
from ..model.params import is_bias, is_norm_weight
from .transforms import orthogonalize_

__all__ = ["is_matrix", "OptimizerOptions", "OPTIMIZERS", "register_optimizer", "build_optimizer", "check_optimizer",
           "optimizer_state_tensors", "load_optimizer_state", "expected_slots", "param_groups",
           "optimizer_param_names", "OrthoAdamW"]


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


def register_optimizer(name: str, builder: Builder, description: str = "") -> None:
    """Make an optimizer available as ``TrainConfig.optimizer = name``.

    Args:
        name: an identifier.
        builder: ``builder(named_params, train_config, options) -> torch.optim.Optimizer``; it
            should honour ``options.lr`` (possibly a tensor) and may ignore ``fused`` /
            ``capturable`` (then a CUDA-graph capture that fails falls back to eager steps).
        description: one line for listings (``grokinterp train --help`` lists the built-in ones
            from :data:`grokinterp.config.OPTIMIZER_NAMES`, which this call extends).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"optimizer name must be an identifier, got {name!r}")
    OPTIMIZERS[name] = builder
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
