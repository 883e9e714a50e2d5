"""Constraints on the weights, applied after every optimizer step (inside the captured step).

:class:`WeightNormConstraint` is Omnigrok's constrained-norm training (Liu et al. 2022): the
total parameter norm is held at its initial value, so the optimizer can only move the weights
along the sphere. It is stateless (the target comes from the initial parameters, which are
seeded), so a resumed run needs nothing saved for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WeightNormConstraint"]


class WeightNormConstraint:
    """Project the parameters back onto the sphere of their initial total norm after each step.

    Args:
        params: the named parameters, at their initialisation (the target norm is read now).

    Notes:
        With ``θ`` all parameters as one vector (every weight and bias of the model) and
        ``R = ‖θ₀‖₂`` at initialisation (``= init_scale · ‖w₀‖`` for the default init
        ``w₀``): after each step ``θ ← θ · R / ‖θ‖₂``. ``‖θ‖`` is accumulated in float64 on the
        device; the rescaling is one multiply per parameter (tensor ops only: capturable).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = list(params.values())
        with torch.no_grad():
            self.target = float(torch.sqrt(sum(p.detach().double().pow(2).sum().cpu() for p in self.params)))

    def norm(self) -> Tensor:
        """The current total norm ``‖θ‖₂`` (float64, on the parameters' device)."""
        return torch.sqrt(sum(p.detach().double().pow(2).sum() for p in self.params))

    @torch.no_grad()
    def __call__(self) -> None:
        factor = (self.target / self.norm()).float()
        for p in self.params:
            p.mul_(factor)
