"""The hooked one-layer transformer of Nanda et al. 2023, on TransformerLens' ``HookedRootModule``.

Parameter names, shapes and hook names follow TransformerLens, so code written for its models
reads ours unchanged. The parameter table (names, shapes, the paper's initialisation) is in :mod:`grokinterp.model.params`.

By default (Nanda et al.'s model) no LayerNorm, no attention biases, no unembedding bias; causal
attention scaled by ``1/sqrt(d_head)``. ``ModelConfig.layer_norm`` adds TransformerLens' pre-LN
(``blocks.L.ln1`` before attention, ``blocks.L.ln2`` before the MLP, ``ln_final`` before the
unembedding; hooks ``hook_scale`` and ``hook_normalized``), ``ModelConfig.bias`` chooses the biases
(``mlp``: ``b_in``, ``b_out``; ``all``: also ``b_Q``, ``b_K``, ``b_V``, ``b_O``; ``none``);
``ln_style = post`` makes the blocks Power et al.'s post-LN (``hook_resid_mid = ln1(resid_pre +
attn_out)``, ``hook_resid_post = ln2(resid_mid + mlp_out)``, no ``ln_final``) and ``pos_embed =
sinusoidal`` their fixed positional table (a buffer ``pos_embed.W_pos``, not a parameter); and
``ModelConfig.input_layout = a_b`` reads ``[a, b]`` (no ``=``) with attention over both positions
(no causal mask), as Zhong et al. 2023; such a model also accepts the task's ``[a, b, =]`` rows and
drops the ``=``. With an attention coefficient ``a = cfg.attn_coeff < 1`` (Zhong et al. 2023)
the weights are ``a · softmax(scores) + (1 − a) · mask`` (``mask`` = 1 on the keys a query may
see): ``a = 0`` is constant attention; ``hook_pattern`` holds these weights. Hooks: ``hook_embed``, ``hook_pos_embed``, ``blocks.L.hook_resid_pre``,
``blocks.L.attn.hook_q/k/v`` ``[batch, pos, n_heads, d_head]``, ``blocks.L.attn.hook_attn_scores``
and ``hook_pattern`` ``[batch, n_heads, query_pos, key_pos]``, ``blocks.L.attn.hook_z``,
``blocks.L.hook_attn_out``, ``blocks.L.hook_resid_mid``, ``blocks.L.mlp.hook_pre/hook_post``
``[batch, pos, d_mlp]``, ``blocks.L.hook_mlp_out``, ``blocks.L.hook_resid_post``.

Initialisation (:func:`grokinterp.model.params.init_params`) draws every parameter from one
``torch.Generator`` seeded with ``ModelConfig.init_seed`` in the fixed order of ``param_shapes``, on
the CPU, so the same seed gives the same weights on every device.

Example:
    >>> from grokinterp.config import ModelConfig
    >>> model = HookedGrokTransformer(ModelConfig(p=7, d_model=8, n_heads=2, d_mlp=16))
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 7]]))
    >>> logits.shape, cache["blocks.0.mlp.hook_post"].shape
    (torch.Size([1, 3, 7]), torch.Size([1, 3, 16]))
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint

from ..config import INPUT_LAYOUTS, ModelConfig
from ..errors import ConfigError
from .params import LN_EPS, init_params, load_named_params, param_shapes, sinusoidal_positions

__all__ = ["HookedGrokTransformer"]


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    """Learned positions (the parameter ``W_pos``) or, with ``pos_embed = sinusoidal``, Power et al.'s
    fixed table as a buffer of the same name (not a parameter, not in the state dict)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.pos_embed == "sinusoidal":
            self.register_buffer("W_pos", sinusoidal_positions(cfg.n_ctx, cfg.d_model), persistent=False)
        else:
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_pos[: tokens.shape[1]].unsqueeze(0).expand(tokens.shape[0], -1, -1)


class LayerNorm(nn.Module):
    """TransformerLens' LayerNorm: ``(x − mean) / sqrt(var + eps) · w (+ b)``; hooks ``hook_scale``
    (the ``sqrt(var + eps)``) and ``hook_normalized`` (the output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w = nn.Parameter(torch.empty(cfg.d_model))
        if cfg.bias != "none":
            self.b = nn.Parameter(torch.empty(cfg.d_model))
        else:
            self.b = None
        self.hook_scale, self.hook_normalized = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt())
        x = x / scale * self.w
        return self.hook_normalized(x if self.b is None else x + self.b)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.has_bias = cfg.bias == "all"
        if self.has_bias:
            self.b_Q = nn.Parameter(torch.empty(h, e))
            self.b_K = nn.Parameter(torch.empty(h, e))
            self.b_V = nn.Parameter(torch.empty(h, e))
            self.b_O = nn.Parameter(torch.empty(d))
        self.scale = 1.0 / math.sqrt(e)
        self.attn_coeff = float(cfg.attn_coeff)
        full = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool)
        mask = full if cfg.input_layout == "a_b" else torch.tril(full)  # [a, b]: both positions see both
        self.register_buffer("mask", mask, persistent=False)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        q, k, v = (torch.einsum("bpd,hde->bphe", x, W) for W in (self.W_Q, self.W_K, self.W_V))
        if self.has_bias:
            q, k, v = q + self.b_Q, k + self.b_K, v + self.b_V
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        n = x.shape[1]
        scores = self.hook_attn_scores(scores.masked_fill(~self.mask[:n, :n], float("-inf")))
        pattern = scores.softmax(dim=-1)
        if self.attn_coeff != 1.0:  # Zhong et al.'s blend towards all ones on the allowed keys
            a = self.attn_coeff
            pattern = a * pattern + (1.0 - a) * self.mask[:n, :n].to(pattern.dtype)
        pattern = self.hook_pattern(pattern)
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        out = torch.einsum("bqhe,hed->bqd", z, self.W_O)
        return out + self.b_O if self.has_bias else out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.has_bias = cfg.bias in ("mlp", "all")
        if self.has_bias:
            self.b_in = nn.Parameter(torch.empty(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        if self.has_bias:
            self.b_out = nn.Parameter(torch.empty(cfg.d_model))
        self.act = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.has_bias:
            pre = self.hook_pre(x @ self.W_in + self.b_in)
            post = self.hook_post(self.act(pre))
            return post @ self.W_out + self.b_out
        post = self.hook_post(self.act(self.hook_pre(x @ self.W_in)))
        return post @ self.W_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer_norm = cfg.layer_norm
        self.ln_in_place = cfg.layer_norm and cfg.ln_style == "in_place"  # Grokfast's x = ln1(x)
        self.ln_post = cfg.layer_norm and cfg.ln_style == "post"  # Power et al.'s x = ln1(x + attn(x))
        if self.layer_norm:  # TransformerLens' order: ln1, attn, ln2, mlp
            self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)
        if self.layer_norm:
            self.ln2 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        if self.ln_post:  # the normalised sums are the stream: resid_mid = ln1(resid_pre + attn_out), ...
            resid = self.hook_resid_mid(self.ln1(resid + self.hook_attn_out(self.attn(resid))))
            return self.hook_resid_post(self.ln2(resid + self.hook_mlp_out(self.mlp(resid))))
        x = self.ln1(resid) if self.layer_norm else resid
        if self.ln_in_place:
            resid = x
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(x)))
        x = self.ln2(resid) if self.layer_norm else resid
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(x)))


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos vocab"]:
        return x @ self.W_U


class HookedGrokTransformer(HookedRootModule):
    """A TransformerLens-style hooked transformer for ``[a, b, =]`` (or ``[a, b]``) tasks.

    Args:
        cfg: the model's :class:`~grokinterp.config.ModelConfig`.
        init: ``True`` (default) initialises as the paper's code, seeded by ``cfg.init_seed``;
            ``False`` leaves the parameters uninitialised (a loader fills them).

    ``forward(tokens)`` returns logits ``[batch, pos, d_vocab_out]``;
    ``run_with_cache(tokens)`` returns ``(logits, ActivationCache)``.
    """

    def __init__(self, cfg: ModelConfig, init: bool = True):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise ConfigError(f"model: expected a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        if cfg.layer_norm and cfg.ln_style != "post":  # post-LN blocks end normalised
            self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        if init:
            self.load_params(init_params(cfg))
        self.setup()

    def load_params(self, params: dict[str, Tensor]) -> "HookedGrokTransformer":
        """Copy a ``{name: tensor}`` dict into the parameters, checking names and shapes."""
        load_named_params(self, params, param_shapes(self.cfg))
        return self

    def check_tokens(self, tokens: Tensor) -> Tensor:
        """The tokens the model reads: ``[batch, pos ≤ n_ctx]``; in the ``a_b`` layout the task's
        ``[a, b, =]`` rows are accepted and their ``=`` dropped, in the ``a_op_b_eq`` layout they are
        accepted and get their operation token (three positions there are always such rows)."""
        lay = self.cfg.input_layout
        if tokens.ndim == 2 and lay != "a_b_eq" and tokens.shape[1] == 3 and self.cfg.n_ctx != 3:
            tokens = INPUT_LAYOUTS[lay].tokens(tokens)
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.n_ctx:
            raise ConfigError(f"tokens: expected shape [batch, pos ≤ {self.cfg.n_ctx}], got {list(tokens.shape)}")
        return tokens

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        tokens = self.check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        if self.cfg.layer_norm and self.cfg.ln_style != "post":
            resid = self.ln_final(resid)
        return self.unembed(resid)

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """Run and cache every hook; returns ``(logits, ActivationCache)``."""
        out, cache = super().run_with_cache(*args, **kwargs)
        return out, ActivationCache(cache, self)

    @property
    def W_L(self) -> Float[Tensor, "d_mlp vocab"]:
        """Neuron-to-logit map ``W_out @ W_U`` of the last block."""
        return self.blocks[-1].mlp.W_out @ self.unembed.W_U

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"p={c.p}, d_model={c.d_model}, n_heads={c.n_heads}, d_mlp={c.d_mlp}, n_layers={c.n_layers}, "
                f"act={c.act_fn}, layer_norm={c.layer_norm}, ln_style={c.ln_style}, bias={c.bias}, "
                f"input_layout={c.input_layout}, pos_embed={c.pos_embed}")
