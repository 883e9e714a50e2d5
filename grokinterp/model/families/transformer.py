"""The ``transformer`` family: Nanda et al.'s one-layer transformer and its generalisations.

Settings (``ModelConfig``): ``n_layers ≥ 1``, ``layer_norm`` (TransformerLens' pre-LN; ``ln_style``
``in_place`` for Lee et al.'s block, ``post`` for Power et al.'s post-LN), ``pos_embed`` (``learned``
or Power et al.'s fixed ``sinusoidal`` table), ``bias``
(``mlp``, ``all``, ``none``), ``input_layout`` (``a_b_eq``: ``[a, b, =]``, causal; ``a_b``: Zhong et
al.'s ``[a, b]``, attention over both positions), ``attn_coeff``, ``act_fn``.

Parameters and initialisation are :mod:`grokinterp.model.params`; the analysis module is
:class:`~grokinterp.model.hooked.HookedGrokTransformer`; :func:`forward` is the functional forward
over stacked parameters (any setting), which the stacked trainer uses where the fast kernels do
not apply. The fast kernels (one layer, no LayerNorm, the MLP's biases only, ``[a, b, =]``) are
:mod:`~grokinterp.model.fastpath` (one run) and :mod:`~grokinterp.model.stacked` (a stack);
:func:`fast_kernels_apply` says when they cannot be used.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import INPUT_LAYOUTS
from ...errors import ConfigError
from ..params import LN_EPS, init_params, param_shapes, sinusoidal_positions

__all__ = ["param_shapes", "init_params", "hooked", "hidden_hook", "describe", "activation_bytes", "forward",
           "fast_kernels_apply", "LN_EPS"]

def hooked(cfg: Any, init: bool = True):
    """The hooked transformer of ``cfg`` (imports transformer_lens on first use)."""
    from ..hooked import HookedGrokTransformer

    return HookedGrokTransformer(cfg, init=init)


def hidden_hook(cfg: Any) -> str:
    """The neurons: the last block's MLP activations."""
    return f"blocks.{cfg.n_layers - 1}.mlp.hook_post"


def describe(cfg: Any) -> str:
    extras = [s for s in (
        ("LayerNorm" + (f" ({cfg.ln_style})" if getattr(cfg, "ln_style", "pre") != "pre" else ""))
        if getattr(cfg, "layer_norm", False) else "",
        f"bias {cfg.bias}" if getattr(cfg, "bias", "mlp") != "mlp" else "",
        f"input layout {cfg.input_layout}" if getattr(cfg, "input_layout", "a_b_eq") != "a_b_eq" else "",
        f"{cfg.pos_embed} positions" if getattr(cfg, "pos_embed", "learned") != "learned" else "",
    ) if s]
    return (f"transformer: {cfg.n_layers} layer(s), d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, "
            f"{cfg.act_fn}" + "".join(f", {e}" for e in extras))


def activation_bytes(cfg: Any) -> int:
    """Bytes one example holds through the hooked forward and backward (the pre-flight estimate)."""
    return (cfg.n_ctx * cfg.n_layers * (8 * cfg.d_model + 3 * cfg.d_mlp) * 4 * 2  # hooked forward + backward
            + cfg.d_vocab_out * (4 * 3 + 8 * 2))  # logits, their gradient, the float64 log-softmax


def fast_kernels_apply(cfg: Any) -> str | None:
    """Why the table-fold kernels (:mod:`~grokinterp.model.fastpath`, :mod:`~grokinterp.model.stacked`,
    the analysis grid) cannot compute models of ``cfg``; ``None`` when they can.

    They fold a one-layer model without LayerNorm, with the MLP's biases only, reading ``[a, b, =]``
    at the constant ``=`` query. Anything else trains through the hooked module (one run) or
    :func:`forward` (a stack).
    """
    family = getattr(cfg, "family", "transformer")
    if family != "transformer":
        return f"the fast kernels are the transformer family's (model.family is {family!r})"
    if cfg.n_layers != 1:
        return f"the fast kernels need n_layers = 1 (got {cfg.n_layers})"
    if getattr(cfg, "layer_norm", False):
        return "the fast kernels have no LayerNorm (model.layer_norm is set)"
    if getattr(cfg, "bias", "mlp") != "mlp":
        return f"the fast kernels need the MLP's biases only (model.bias = {cfg.bias!r})"
    if getattr(cfg, "input_layout", "a_b_eq") != "a_b_eq":
        return f"the fast kernels need the [a, b, =] layout (model.input_layout = {cfg.input_layout!r})"
    if getattr(cfg, "pos_embed", "learned") != "learned":
        return f"the fast kernels need learned positions (model.pos_embed = {cfg.pos_embed!r})"
    return None


def _layer_norm(x: Tensor, params: dict[str, Tensor], name: str) -> Tensor:
    """TransformerLens' LayerNorm of ``x [run, ..., d_model]`` with run ``r``'s ``w``, ``b`` (the
    normalisation is torch's fused kernel, the same formula: biased variance, eps inside the root)."""
    x = F.layer_norm(x, x.shape[-1:], eps=LN_EPS)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    x = x * params[f"{name}.w"].view(shape)
    b = params.get(f"{name}.b")
    return x if b is None else x + b.view(shape)


def _model_tokens(tokens: Tensor, cfg: Any, R: int) -> Tensor:
    """``[run, batch, n_ctx]`` int64: shared ``[batch, pos]`` tokens expanded over the runs; in the
    ``a_b`` layout the task's ``[a, b, =]`` rows lose their ``=``."""
    if tokens.ndim not in (2, 3):
        raise ConfigError(f"tokens: expected [batch, pos] or [run, batch, pos], got {list(tokens.shape)}")
    if cfg.input_layout != "a_b_eq" and tokens.shape[-1] == 3 and cfg.n_ctx != 3:
        tokens = INPUT_LAYOUTS[cfg.input_layout].tokens(tokens)  # the task's [a, b, =] rows
    if tokens.shape[-1] > cfg.n_ctx or tokens.shape[-1] == 0:
        raise ConfigError(f"tokens: expected at most {cfg.n_ctx} positions, got {list(tokens.shape)}")
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0).expand(R, -1, -1)
    elif tokens.shape[0] != R:
        raise ConfigError(f"tokens: {tokens.shape[0]} token sets for {R} runs")
    return tokens.long()


def _coeff(attn_coeff: Any, cfg: Any, R: int, like: Tensor) -> Tensor | float:
    """The attention coefficient: a float, or per run ``[run, 1, 1, 1, 1]``."""
    if attn_coeff is None:
        return float(cfg.attn_coeff)
    if isinstance(attn_coeff, (int, float)):
        return float(attn_coeff)
    a = torch.as_tensor(attn_coeff, dtype=like.dtype, device=like.device).reshape(-1)
    if a.numel() == 1:
        return a.reshape(1, 1, 1, 1, 1)
    if a.numel() != R:
        raise ConfigError(f"attn_coeff: expected one value or one per run ({R}), got {a.numel()}")
    return a.reshape(R, 1, 1, 1, 1)


def forward(params: dict[str, Tensor], tokens: Tensor, cfg: Any, attn_coeff: Any = None) -> Tensor:
    """Logits at the last position of ``R`` stacked models of one shape, each on its own tokens.

    Args:
        params: TransformerLens-named parameters stacked ``{name: [run, ...]}`` (the names of
            :func:`param_shapes` for ``cfg``).
        tokens: ``[run, batch, pos]`` (each run its own examples) or ``[batch, pos]`` (shared),
            ``pos ≤ n_ctx``; in the ``a_b`` layout the task's ``[a, b, =]`` rows are accepted.
        cfg: the shared :class:`~grokinterp.config.ModelConfig` (``init_seed`` is irrelevant).
        attn_coeff: ``None`` (``cfg.attn_coeff``), a number, or one value per run ``[run]``.

    Returns:
        ``[run, batch, d_vocab_out]``; run ``r``'s equal ``HookedGrokTransformer(cfg_r)(tokens[r])[:, -1]``
        up to float32 rounding (tested to 1e-5, values and gradients).

    Notes:
        Every block is computed at every position except the last block, whose attention queries
        and MLP only the read-out (last) position, the only one the logits need. Pre-LN blocks as
        TransformerLens': ``x += attn(ln1(x))``, ``x += mlp(ln2(x))``, ``logits = ln_final(x) W_U``;
        ``ln_style = post`` (Power et al.): ``x = ln1(x + attn(x))``, ``x = ln2(x + mlp(x))``,
        ``logits = x W_U``. ``pos_embed = sinusoidal`` adds the fixed table
        :func:`~grokinterp.model.params.sinusoidal_positions` instead of ``pos_embed.W_pos``.

    Example:
        >>> cfg = make_config("tiny", p=7, n_layers=2, layer_norm=True).model      # doctest: +SKIP
        >>> P = stack_params([cfg, dataclasses.replace(cfg, init_seed=1)])          # {name: [2, ...]}  # doctest: +SKIP
        >>> forward(P, torch.tensor([[1, 2, 7], [3, 4, 7]]), cfg).shape             # doctest: +SKIP
        torch.Size([2, 2, 7])
    """
    W_E = params["embed.W_E"]
    R, d = W_E.shape[0], W_E.shape[-1]
    tokens = _model_tokens(tokens, cfg, R).to(W_E.device)
    P = tokens.shape[-1]
    H, e = cfg.n_heads, cfg.d_head
    scale = 1.0 / math.sqrt(e)
    runs = torch.arange(R, device=W_E.device)[:, None, None]
    if getattr(cfg, "pos_embed", "learned") == "sinusoidal":
        pos = sinusoidal_positions(P, d).to(device=W_E.device, dtype=W_E.dtype)[None, None]
    else:
        pos = params["pos_embed.W_pos"][:, None, :P]
    x = W_E[runs, tokens] + pos  # [run, batch, pos, d_model]
    a = _coeff(attn_coeff, cfg, R, W_E)
    causal = cfg.input_layout != "a_b"
    ln, attn_bias = cfg.layer_norm, cfg.bias == "all"
    in_place = ln and getattr(cfg, "ln_style", "pre") == "in_place"
    post = ln and getattr(cfg, "ln_style", "pre") == "post"
    act = F.relu if cfg.act_fn == "relu" else F.gelu
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        last = layer == cfg.n_layers - 1
        h = _layer_norm(x, params, f"{b}.ln1") if ln and not post else x
        if in_place:  # Grokfast's block: the normalised stream replaces the residual
            x = h
        B = h.shape[1]
        nq = 1 if last else P  # the last block: only the read-out position queries
        W_Q, W_K, W_V = (params[f"{b}.attn.W_{n}"].permute(0, 2, 1, 3).reshape(R, d, H * e) for n in "QKV")
        hk = h.reshape(R, B * P, d)
        q = torch.bmm(h[:, :, P - nq:].reshape(R, B * nq, d), W_Q).view(R, B, nq, H, e)
        k, v = (torch.bmm(hk, W).view(R, B, P, H, e) for W in (W_K, W_V))  # [run, batch, pos, head, e]
        if attn_bias:
            q = q + params[f"{b}.attn.b_Q"][:, None, None]
            k = k + params[f"{b}.attn.b_K"][:, None, None]
            v = v + params[f"{b}.attn.b_V"][:, None, None]
        # positions are few (2 or 3): products over d_head as broadcasts, not tiny batched matmuls
        scores = (q[:, :, :, None] * k[:, :, None]).sum(-1) * scale  # [run, batch, query, key, head]
        if causal:
            qpos = torch.arange(P - nq, P, device=x.device)[:, None]
            allowed = (torch.arange(P, device=x.device)[None, :] <= qpos)[:, :, None]  # [query, key, 1]
            pattern = scores.masked_fill(~allowed, float("-inf")).softmax(3)
        else:
            allowed = None
            pattern = scores.softmax(3)
        if not (isinstance(a, float) and a == 1.0):  # Zhong et al.'s blend towards ones on the allowed keys
            ones = torch.ones_like(pattern) if allowed is None else allowed.to(pattern.dtype)
            pattern = a * pattern + (1.0 - a) * ones
        z = (pattern[..., None] * v[:, :, None]).sum(3)  # [run, batch, query, head, e]
        out = torch.bmm(z.reshape(R, B * nq, H * e), params[f"{b}.attn.W_O"].reshape(R, H * e, d)).view(R, B, nq, d)
        if attn_bias:
            out = out + params[f"{b}.attn.b_O"][:, None, None]
        x = (x[:, :, -1:] if last else x) + out
        if post:
            x = _layer_norm(x, params, f"{b}.ln1")
        h = _layer_norm(x, params, f"{b}.ln2") if ln and not post else x
        nb = h.shape[1] * h.shape[2]
        pre = torch.bmm(h.reshape(R, nb, d), params[f"{b}.mlp.W_in"])
        if f"{b}.mlp.b_in" in params:
            pre = pre + params[f"{b}.mlp.b_in"][:, None]
        mlp = torch.bmm(act(pre), params[f"{b}.mlp.W_out"])
        if f"{b}.mlp.b_out" in params:
            mlp = mlp + params[f"{b}.mlp.b_out"][:, None]
        x = x + mlp.view(x.shape)
        if post:
            x = _layer_norm(x, params, f"{b}.ln2")
    x = x[:, :, -1]  # [run, batch, d_model]
    if ln and not post:
        x = _layer_norm(x, params, "ln_final")
    return torch.bmm(x, params["unembed.W_U"])
