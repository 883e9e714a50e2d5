"""The hooked MLP of the ``mlp`` family, on TransformerLens' ``HookedRootModule``.

``forward(tokens)`` takes the task's tokens ``[batch, n_ctx]`` (``a = tokens[:, 0]``,
``b = tokens[:, 1]``; ``=`` is not read) and returns logits ``[batch, 1, d_vocab_out]``: one
position, so ``[:, -1]`` reads them as it reads the transformer's. Hooks:

* ``hook_embed`` ``[batch, 2, d_in]``: the operands' embeddings (or one-hot vectors), a then b;
* ``hidden.L.hook_pre`` / ``hidden.L.hook_post`` ``[batch, d_hidden]``: layer ``L`` before and after
  the non-linearity (the family's neurons are the last layer's ``hook_post``);
* ``hook_logits`` ``[batch, d_vocab_out]``.

Example:
    >>> from grokinterp.model.families.mlp import MLPConfig
    >>> model = HookedMLP(MLPConfig(p=7, d_embed=4, d_hidden=16))
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 7]]))
    >>> logits.shape, cache["hidden.0.hook_post"].shape
    (torch.Size([1, 1, 7]), torch.Size([1, 16]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from ....errors import ConfigError
from ...params import load_named_params
from . import param_shapes
from .config import MLPConfig
from .params import init_params

__all__ = ["HookedMLP", "activation"]


def activation(name: str):
    """The non-linearity ``name`` (``relu``, ``gelu``: exact erf form, as ``nn.GELU()``; ``quadratic``: x²)."""
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "quadratic":
        return torch.square
    raise ConfigError(f"model.act_fn: unknown activation {name!r}")


def _empty(shapes: dict[str, tuple[int, ...]], name: str) -> nn.Parameter | None:
    return nn.Parameter(torch.empty(shapes[name])) if name in shapes else None


class _Holder(nn.Module):
    """A named group of parameters (``embed``, ``hidden.L``, ``unembed``) with its hooks."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], prefix: str, names: tuple[str, ...],
                 hooks: tuple[str, ...] = ()):
        super().__init__()
        for n in names:
            p = _empty(shapes, f"{prefix}.{n}")
            if p is not None:
                self.register_parameter(n, p)
        for h in hooks:
            setattr(self, h, HookPoint())


class HookedMLP(HookedRootModule):
    """A TransformerLens-style hooked MLP for two-operand tasks.

    Args:
        cfg: the model's :class:`~grokinterp.model.families.mlp.config.MLPConfig`.
        init: ``True`` (default) initialises seeded by ``cfg.init_seed``; ``False`` leaves the
            parameters uninitialised (a loader fills them).
    """

    def __init__(self, cfg: MLPConfig, init: bool = True):
        super().__init__()
        if not isinstance(cfg, MLPConfig):
            raise ConfigError(f"model: expected an MLPConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        shapes = param_shapes(cfg)
        self.embed = _Holder(shapes, "embed", ("W_E",))
        self.hook_embed = HookPoint()
        self.hidden = nn.ModuleList([
            _Holder(shapes, f"hidden.{L}", ("W_a", "b_a", "W_b", "b_b", "W_in", "b_in"), ("hook_pre", "hook_post"))
            for L in range(cfg.n_hidden_layers)])
        self.unembed = _Holder(shapes, "unembed", ("W_U", "b_U"))
        self.hook_logits = HookPoint()
        self.act = activation(cfg.act_fn)
        if init:
            self.load_params(init_params(cfg))
        self.setup()

    def load_params(self, params: dict[str, Tensor]) -> "HookedMLP":
        """Copy a ``{name: tensor}`` dict into the parameters, checking names and shapes."""
        load_named_params(self, params, param_shapes(self.cfg))
        return self

    def check_tokens(self, tokens: Tensor) -> None:
        if self.cfg.d_input:
            if tokens.ndim != 2 or tokens.shape[1] != self.cfg.d_input:
                raise ConfigError(f"inputs: expected vectors [batch, d_input = {self.cfg.d_input}], got "
                                  f"{list(tokens.shape)}")
            return
        if tokens.ndim != 2 or not 2 <= tokens.shape[1] <= self.cfg.n_ctx:
            raise ConfigError(f"tokens: expected shape [batch, 2 ≤ pos ≤ {self.cfg.n_ctx}], got {list(tokens.shape)}")

    def forward(self, tokens: Tensor) -> Tensor:
        self.check_tokens(tokens)
        first = self.hidden[0]
        if self.cfg.d_input:  # input vectors (a dataset task): hook_embed holds them [batch, d_input]
            x = self.hook_embed(tokens.to(first.W_in.dtype))
            pre = x @ first.W_in
            if self.cfg.hidden_bias:
                pre = pre + first.b_in
            return self._rest(first.hook_post(self.act(first.hook_pre(pre))))
        ab = tokens[:, :2]
        if self.cfg.d_embed:
            e = self.embed.W_E[ab]  # [batch, 2, d_embed]
        else:
            e = torch.eye(self.cfg.p, dtype=self.unembed.W_U.dtype, device=ab.device)[ab]  # one-hot (vmap-safe)
        e = self.hook_embed(e)
        if self.cfg.combine == "sum":
            pre = e[:, 0] @ first.W_a + e[:, 1] @ first.W_b
            if self.cfg.hidden_bias:
                pre = pre + first.b_a + first.b_b
        else:
            pre = e.flatten(1) @ first.W_in
            if self.cfg.hidden_bias:
                pre = pre + first.b_in
        return self._rest(first.hook_post(self.act(first.hook_pre(pre))))

    def _rest(self, x: Tensor) -> Tensor:
        for layer in self.hidden[1:]:
            pre = x @ layer.W_in
            if self.cfg.hidden_bias:
                pre = pre + layer.b_in
            x = layer.hook_post(self.act(layer.hook_pre(pre)))
        logits = x @ self.unembed.W_U
        if self.cfg.unembed_bias:
            logits = logits + self.unembed.b_U
        return self.hook_logits(logits).unsqueeze(1)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """Run and cache every hook; returns ``(logits, ActivationCache)``."""
        out, cache = super().run_with_cache(*args, **kwargs)
        return out, ActivationCache(cache, self)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"p={c.p}, d_embed={c.d_embed}, d_hidden={c.d_hidden}, n_hidden_layers={c.n_hidden_layers}, "
                f"act={c.act_fn}, combine={c.combine}")
