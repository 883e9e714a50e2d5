"""The ``mlp`` family: an MLP over the two operands of ``a ∘ b`` (issue 19).

Gromov's, Liu et al.'s, Chughtai et al.'s and devinterp's grokking MLPs are settings of it
(:class:`~grokinterp.model.families.mlp.config.MLPConfig`; the preset ``mlp-devinterp``).

=============================  ==============================  ==========================================
parameter                      shape                           when
=============================  ==============================  ==========================================
``embed.W_E``                  ``[p, d_embed]``                ``d_embed > 0`` (shared by a and b)
``hidden.0.W_a``, ``W_b``      ``[d_in, d_hidden]``            ``combine = sum`` (``d_in = d_embed or p``)
``hidden.0.b_a``, ``b_b``      ``[d_hidden]``                  ``combine = sum`` and ``hidden_bias``
``hidden.0.W_in``              ``[2 d_in, d_hidden]``          ``combine = concat`` (rows: a's, then b's)
``hidden.0.W_in``, ``b_in``    ``[d_input, d_hidden]``         ``d_input > 0``: input vectors (dataset tasks)
``hidden.L.W_in``              ``[d_hidden, d_hidden]``        layers ``L ≥ 1``
``hidden.L.b_in``              ``[d_hidden]``                  ``hidden_bias`` (``L ≥ 1``, or concat)
``unembed.W_U``                ``[d_hidden, d_vocab_out]``
``unembed.b_U``                ``[d_vocab_out]``               ``unembed_bias``
=============================  ==============================  ==========================================

Layouts are TransformerLens' (``x @ W``). This module imports no torch; :mod:`.params` (the seeded
initialisation), :mod:`.functional` (the forward over stacked parameters) and :mod:`.module` (the
:class:`~grokinterp.model.families.mlp.module.HookedMLP`) load on use.
"""

from __future__ import annotations

from typing import Any

from .config import COMBINES, MLP_ACT_FNS, MLPConfig

__all__ = ["MLPConfig", "MLP_ACT_FNS", "COMBINES", "param_shapes", "init_params", "hooked", "hidden_hook",
           "describe", "activation_bytes", "forward"]


def param_shapes(cfg: MLPConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in initialisation order (module table)."""
    h, d_in = cfg.d_hidden, cfg.d_in
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.d_embed:
        shapes["embed.W_E"] = (cfg.p, cfg.d_embed)
    if cfg.d_input:  # a vector model: one map of the input vector
        shapes["hidden.0.W_in"] = (d_in, h)
        if cfg.hidden_bias:
            shapes["hidden.0.b_in"] = (h,)
    elif cfg.combine == "sum":
        for x in "ab":
            shapes[f"hidden.0.W_{x}"] = (d_in, h)
            if cfg.hidden_bias:
                shapes[f"hidden.0.b_{x}"] = (h,)
    else:
        shapes["hidden.0.W_in"] = (2 * d_in, h)
        if cfg.hidden_bias:
            shapes["hidden.0.b_in"] = (h,)
    for layer in range(1, cfg.n_hidden_layers):
        shapes[f"hidden.{layer}.W_in"] = (h, h)
        if cfg.hidden_bias:
            shapes[f"hidden.{layer}.b_in"] = (h,)
    shapes["unembed.W_U"] = (h, cfg.d_vocab_out)
    if cfg.unembed_bias:
        shapes["unembed.b_U"] = (cfg.d_vocab_out,)
    return shapes


def init_params(cfg: MLPConfig) -> dict[str, Any]:
    """One run's seeded initial parameters (:func:`grokinterp.model.families.mlp.params.init_params`)."""
    from .params import init_params as init

    return init(cfg)


def hooked(cfg: MLPConfig, init: bool = True):
    """The :class:`~grokinterp.model.families.mlp.module.HookedMLP` of ``cfg`` (imports transformer_lens)."""
    from .module import HookedMLP

    return HookedMLP(cfg, init=init)


def forward(params: dict[str, Any], tokens: Any, cfg: MLPConfig, attn_coeff: Any = None) -> Any:
    """Logits ``[run, batch, vocab]`` of stacked parameters ``{name: [run, ...]}`` on ``[run, batch, pos]``
    tokens (:func:`grokinterp.model.families.mlp.functional.forward`; the stacked trainer's ``generic``)."""
    from .functional import forward as fwd

    return fwd(params, tokens, cfg, attn_coeff)


def hidden_hook(cfg: MLPConfig) -> str:
    """The neurons: the last hidden layer's activations ``[batch, d_hidden]``."""
    return f"hidden.{cfg.n_hidden_layers - 1}.hook_post"


def describe(cfg: MLPConfig) -> str:
    emb = f"embedding {cfg.d_embed} shared by a and b" if cfg.d_embed else "one-hot inputs"
    if cfg.d_input:
        emb = f"input vectors of {cfg.d_input}"
    return (f"mlp: {emb}{'' if cfg.d_input else ', ' + cfg.combine}, {cfg.n_hidden_layers} hidden layer(s) of {cfg.d_hidden} "
            f"({cfg.act_fn}{'' if cfg.hidden_bias else ', no bias'}), unembedding "
            f"{'with' if cfg.unembed_bias else 'without'} bias")


def activation_bytes(cfg: MLPConfig) -> int:
    """Bytes one example holds through a forward and backward (float32, kept for the backward)."""
    floats = (1 if cfg.d_input else 2) * cfg.d_in + 3 * cfg.n_hidden_layers * cfg.d_hidden + cfg.d_vocab_out
    return 4 * 2 * floats + cfg.d_vocab_out * (4 * 3 + 8 * 2)
