"""The ``transformer`` family: Nanda et al.'s one-layer transformer and its generalisations.

Parameters and initialisation are :mod:`grokinterp.model.params`; the analysis module is
:class:`~grokinterp.model.hooked.HookedGrokTransformer`; the fast kernels (one layer, no LayerNorm)
are :mod:`~grokinterp.model.fastpath` (one run) and :mod:`~grokinterp.model.stacked` (a stack).
"""

from __future__ import annotations

from typing import Any

from ..params import init_params, param_shapes

__all__ = ["param_shapes", "init_params", "hooked", "hidden_hook", "describe", "activation_bytes"]


def hooked(cfg: Any, init: bool = True):
    """The hooked transformer of ``cfg`` (imports transformer_lens on first use)."""
    from ..hooked import HookedGrokTransformer

    return HookedGrokTransformer(cfg, init=init)


def hidden_hook(cfg: Any) -> str:
    """The neurons: the last block's MLP activations."""
    return f"blocks.{cfg.n_layers - 1}.mlp.hook_post"


def describe(cfg: Any) -> str:
    return (f"transformer: {cfg.n_layers} layer(s), d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, "
            f"{cfg.act_fn}")


def activation_bytes(cfg: Any) -> int:
    """Bytes one example holds through the hooked forward and backward (the pre-flight estimate)."""
    return (cfg.n_ctx * cfg.n_layers * (8 * cfg.d_model + 3 * cfg.d_mlp) * 4 * 2  # hooked forward + backward
            + cfg.d_vocab_out * (4 * 3 + 8 * 2))  # logits, their gradient, the float64 log-softmax
