"""Constraints on the weights, applied after every optimizer step (inside the captured step).

:class:`WeightNormConstraint` is Omnigrok's constrained-norm training (Liu et al. 2022): the
total parameter norm is held at its initial value (or at ``train.weight_norm_target``), so the
optimizer can only move the weights along the sphere. It is stateless (the target comes from the
initial parameters, which are seeded, or from the config), so a resumed run needs nothing saved for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WeightNormConstraint", "StackedWeightNorm"]


class WeightNormConstraint:
    """Project the parameters back onto the sphere of their initial total norm after each step.

    Args:
        params: the named parameters, at their initialisation (the target norm is read now).
        target: the norm to hold (``train.weight_norm_target``); ``None``: the initial norm.

    Notes:
        With ``θ`` all parameters as one vector (every weight and bias of the model) and
        ``R = ‖θ₀‖₂`` at initialisation (``= init_scale · ‖w₀‖`` for the default init
        ``w₀``): after each step ``θ ← θ · R / ‖θ‖₂``. ``‖θ‖`` is accumulated in float64 on the
        device; the rescaling is one multiply per parameter (tensor ops only: capturable). It is
        :class:`StackedWeightNorm` over a stack of one run.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], target: float | None = None):
        # written once: the stacked constraint over a stack of one run ([1, ...] views of the parameters)
        self.stack = StackedWeightNorm({k: p.detach().unsqueeze(0) for k, p in params.items()}, [True], [target])
        self.target = float(self.stack.target[0])

    def norm(self) -> Tensor:
        """The current total norm ``‖θ‖₂`` (float64, on the parameters' device)."""
        return self.stack.norm()[0]

    def __call__(self) -> None:
        self.stack()


class StackedWeightNorm:
    """:class:`WeightNormConstraint` over a stack: the runs with ``weight_norm`` set are held at their
    own initial total norm (or at their ``weight_norm_target``), the others are left alone.

    Args:
        params: ``{name: [run, ...]}`` views of the stacked parameters, at their initialisation.
        enabled: per run, whether its norm is held (``TrainConfig.weight_norm``).
        targets: per run, the norm to hold (``TrainConfig.weight_norm_target``; ``None``: its initial
            norm); default: every run its initial norm.

    Notes:
        Per run the same float operations as the single run's: the squared norm summed parameter by
        parameter in float64, ``factor = (R / ‖θ‖)`` rounded to the parameters' dtype, one multiply per parameter; a run
        without the constraint gets the factor 1 (exact).
    """

    def __init__(self, params: dict[str, Tensor], enabled: list[bool], targets: list[float | None] | None = None):
        self.params = list(params.values())
        dev = self.params[0].device
        self.enabled = torch.tensor(enabled, dtype=torch.bool, device=dev)
        with torch.no_grad():
            self.target = self.norm().clone()
        for r, t in enumerate(targets or []):
            if t is not None:
                self.target[r] = float(t)

    def norm(self) -> Tensor:
        """Every run's total norm ``‖θ_r‖₂`` ``[run]`` (float64, on the parameters' device)."""
        total = None
        for p in self.params:
            sq = p.detach().double().pow(2).reshape(p.shape[0], -1).sum(1)
            total = sq if total is None else total + sq
        assert total is not None
        return torch.sqrt(total)

    @torch.no_grad()
    def __call__(self) -> None:
        factor = torch.where(self.enabled, self.target / self.norm(),
                             torch.ones_like(self.target)).to(self.params[0].dtype)  # float32 (float64 runs: float64)
        for p in self.params:
            p.mul_(factor.view(-1, *[1] * (p.ndim - 1)))
