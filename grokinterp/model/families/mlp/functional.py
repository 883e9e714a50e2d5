"""The ``mlp`` family's functional forward over stacked parameters (the stacked trainer's ``generic``
implementation; the same signature as the transformer family's ``forward``).

Run ``r``'s logits equal ``HookedMLP(cfg_r)(tokens[r])[:, -1]`` up to float32 rounding (tested):
the same operations, as batched products over the runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ....errors import ConfigError
from .config import MLPConfig
from .module import activation

__all__ = ["forward"]


def forward(params: dict[str, Tensor], tokens: Tensor, cfg: MLPConfig, attn_coeff: Any = None) -> Tensor:
    """Logits of ``R`` stacked MLPs of one shape, each on its own tokens.

    Args:
        params: the family's parameters stacked ``{name: [run, ...]}`` (the names of ``param_shapes``).
        tokens: ``[run, batch, pos]`` (each run its own examples) or ``[batch, pos]`` (shared), ``pos ≥ 2``;
            ``a = tokens[..., 0]``, ``b = tokens[..., 1]`` (``=`` is not read).
        cfg: the shared :class:`~grokinterp.model.families.mlp.config.MLPConfig` (``init_seed`` is irrelevant).
        attn_coeff: not read (the transformer's ``forward`` takes it; an MLP has no attention).

    Returns:
        ``[run, batch, d_vocab_out]``.
    """
    W_U = params["unembed.W_U"]
    R = W_U.shape[0]
    act = activation(cfg.act_fn)
    if cfg.d_input:  # input vectors [run, batch, d_input] (or [batch, d_input], shared)
        x = tokens.to(device=W_U.device, dtype=W_U.dtype)
        if x.ndim == 2:
            x = x.unsqueeze(0).expand(R, -1, -1)
        if x.ndim != 3 or x.shape[0] != R or x.shape[-1] != cfg.d_input:
            raise ConfigError(f"inputs: expected [run = {R}, batch, {cfg.d_input}] or [batch, {cfg.d_input}], got "
                              f"{list(tokens.shape)}")
        pre = torch.bmm(x, params["hidden.0.W_in"])
        if cfg.hidden_bias:
            pre = pre + params["hidden.0.b_in"][:, None]
        return _rest(params, act(pre), cfg, act)
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0).expand(R, -1, -1)
    if tokens.ndim != 3 or tokens.shape[0] != R or tokens.shape[-1] < 2:
        raise ConfigError(f"tokens: expected [run = {R}, batch, pos ≥ 2] or [batch, pos ≥ 2], got {list(tokens.shape)}")
    tokens = tokens.to(W_U.device).long()
    a, b = tokens[..., 0], tokens[..., 1]  # [run, batch]
    if cfg.d_embed:
        W_E = params["embed.W_E"]
        runs = torch.arange(R, device=W_E.device)[:, None]
        e_a, e_b = W_E[runs, a], W_E[runs, b]  # [run, batch, d_embed]
    else:
        eye = torch.eye(cfg.p, dtype=W_U.dtype, device=W_U.device)
        e_a, e_b = eye[a], eye[b]
    if cfg.combine == "sum":
        pre = torch.bmm(e_a, params["hidden.0.W_a"]) + torch.bmm(e_b, params["hidden.0.W_b"])
        if cfg.hidden_bias:
            pre = pre + params["hidden.0.b_a"][:, None] + params["hidden.0.b_b"][:, None]
    else:
        pre = torch.bmm(torch.cat([e_a, e_b], dim=-1), params["hidden.0.W_in"])
        if cfg.hidden_bias:
            pre = pre + params["hidden.0.b_in"][:, None]
    return _rest(params, act(pre), cfg, act)


def _rest(params: dict[str, Tensor], x: Tensor, cfg: MLPConfig, act) -> Tensor:
    """The hidden layers after the first and the unembedding, over stacked runs."""
    W_U = params["unembed.W_U"]
    for layer in range(1, cfg.n_hidden_layers):
        pre = torch.bmm(x, params[f"hidden.{layer}.W_in"])
        if cfg.hidden_bias:
            pre = pre + params[f"hidden.{layer}.b_in"][:, None]
        x = act(pre)
    logits = torch.bmm(x, W_U)
    if cfg.unembed_bias:
        logits = logits + params["unembed.b_U"][:, None]
    return logits
