"""Seeded initialisation of the ``mlp`` family (torch only, no transformer_lens).

One ``torch.Generator`` seeded with ``init_seed`` draws every parameter in the order of
:func:`~grokinterp.model.families.mlp.param_shapes`, on the CPU, so a seed gives the same
parameters bit for bit on every device and in every process. The distributions are torch's
defaults for these layers (devinterp's model is built from them): ``embed.W_E ~ N(0, 1)``
(``nn.Embedding``); every weight ``W [fan_in, out]`` and its layer's biases
``~ U(−1/√fan_in, 1/√fan_in)`` (``nn.Linear``); all times ``init_scale``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import param_shapes
from .config import MLPConfig

__all__ = ["init_params"]


def _fan_in(cfg: MLPConfig, name: str) -> int:
    layer = name.split(".")[0]
    if layer == "unembed":
        return cfg.d_hidden
    if name.startswith("hidden.0."):
        return cfg.d_in * (2 if cfg.combine == "concat" and not cfg.d_input else 1)
    return cfg.d_hidden


def init_params(cfg: MLPConfig) -> dict[str, Tensor]:
    """Initial parameters seeded by ``cfg.init_seed`` (CPU, float32), in :func:`param_shapes` order."""
    gen = torch.Generator().manual_seed(int(cfg.init_seed))
    scale = float(cfg.init_scale)
    out: dict[str, Tensor] = {}
    for name, shape in param_shapes(cfg).items():
        if name == "embed.W_E":
            t = torch.randn(shape, generator=gen)
        else:
            bound = 1.0 / math.sqrt(_fan_in(cfg, name))
            t = (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound
        out[name] = t if scale == 1.0 else t * scale
    return out
