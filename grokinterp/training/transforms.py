"""Gradient transforms: what happens to the gradients between ``backward()`` and the optimizer step.

A transform is an object with three methods:

* ``__call__(grads)`` — modify ``grads`` (``{name: gradient}``, the parameters' ``.grad`` tensors)
  **in place**, with tensor operations only (no ``.item()``, no host values: the step may be
  captured in a CUDA graph and replayed);
* ``state_dict() -> {key: tensor}`` and ``load_state_dict(state)`` — whatever it remembers from
  step to step (an EMA of past gradients, a window), saved with the optimizer at every flush so a
  resumed run continues bit-identically.

Transforms are registered by name and listed in ``TrainConfig.grad_transforms``; the trainer
builds them with ``factory(params, train_config)`` and applies them in that order. None are active
by default.

Example:
    >>> class ClipNorm:                                                     # doctest: +SKIP
    ...     def __init__(self, params, tc): self.max_norm = 1.0
    ...     def __call__(self, grads): torch.nn.utils.clip_grad_norm_(list(grads.values()), self.max_norm)
    ...     def state_dict(self): return {}
    ...     def load_state_dict(self, state): pass
    >>> register_gradient_transform("clip_norm", ClipNorm)                  # doctest: +SKIP
    >>> make_config("tiny", grad_transforms=("clip_norm",))                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from ..config import TrainConfig
from ..errors import ConfigError, RunError

__all__ = ["GradientTransform", "TRANSFORMS", "register_gradient_transform", "build_transforms",
           "check_transforms", "transform_state_tensors", "load_transform_state"]


class GradientTransform(Protocol):
    def __call__(self, grads: dict[str, Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


Factory = Callable[[dict[str, torch.nn.Parameter], TrainConfig], GradientTransform]

#: Registered gradient transforms by name.
TRANSFORMS: dict[str, Factory] = {}


def register_gradient_transform(name: str, factory: Factory) -> None:
    """Make a transform available as a name in ``TrainConfig.grad_transforms``.

    Args:
        name: an identifier.
        factory: ``factory(named_params, train_config) -> transform`` (see the module docstring);
            it may read its settings from config fields.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"gradient transform name must be an identifier, got {name!r}")
    TRANSFORMS[name] = factory


def check_transforms(tc: TrainConfig) -> list[Factory]:
    """The factories of ``tc.grad_transforms``; :class:`ConfigError` naming the field if one is unknown."""
    out = []
    for name in tc.grad_transforms:
        if name not in TRANSFORMS:
            known = ", ".join(sorted(TRANSFORMS)) or "none registered"
            raise ConfigError(f"train.grad_transforms: unknown gradient transform {name!r}; known: {known}")
        out.append(TRANSFORMS[name])
    return out


def build_transforms(params: dict[str, torch.nn.Parameter], tc: TrainConfig) -> list[GradientTransform]:
    """The configured transforms, in order (an empty list by default)."""
    return [factory(params, tc) for factory in check_transforms(tc)]


def _prefix(i: int, name: str) -> str:
    return f"transform/{i}.{name}/"


def transform_state_tensors(transforms: list[GradientTransform], names: tuple[str, ...]) -> dict[str, Tensor]:
    """Each transform's ``state_dict()`` under ``transform/<position>.<name>/<key>``."""
    out: dict[str, Tensor] = {}
    for i, (t, name) in enumerate(zip(transforms, names)):
        for key, val in t.state_dict().items():
            out[_prefix(i, name) + key] = val
    return out


def load_transform_state(transforms: list[GradientTransform], names: tuple[str, ...],
                         tensors: dict[str, Tensor], where: str) -> None:
    """Give each transform back what :func:`transform_state_tensors` saved; unknown keys raise :class:`RunError`."""
    known = {_prefix(i, n) for i, n in enumerate(names)}
    stray = [k for k in tensors if k.startswith("transform/") and not any(k.startswith(pre) for pre in known)]
    if stray:
        raise RunError(f"{where}: state of gradient transform(s) not in this run's config: {stray[:3]}")
    for i, (t, name) in enumerate(zip(transforms, names)):
        pre = _prefix(i, name)
        state = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
        try:
            t.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise RunError(f"{where}: cannot restore the state of gradient transform {name!r} ({e})") from None
