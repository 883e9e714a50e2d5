"""Export a model to TransformerLens 4.x, so TransformerLens users can use their own tools on our checkpoints.

TransformerLens 4 removed ``HookedTransformer``; its supported way to build a model from a config
(no HuggingFace checkpoint) is ``TransformerBridge.boot_native(TransformerBridgeConfig)``: a
TL-native transformer (``nn.Linear`` projections with biases, optional norms) wrapped in a
``TransformerBridge`` with the usual hook names (``hook_embed``, ``blocks.0.attn.hook_pattern``,
``blocks.0.mlp.hook_post``, ...), ``run_with_cache`` and the weight properties ``W_E``, ``W_Q``
``[n_layers, n_heads, d_model, d_head]``, ``W_O``, ``W_in``, ``W_out``, ``W_U``, ...

:func:`to_transformer_lens` boots one with our architecture — LayerNorm as ours
(``normalization_type`` ``LN`` with ``model.layer_norm``, else ``None``; eps 1e-5), learned
positions (a ``pos_embed = sinusoidal`` model's fixed table is copied into TransformerLens' learned
``W_pos``: the same values, so the same logits), attention scaled by ``1/sqrt(d_head)`` (causal, or bidirectional in the ``a_b`` layout),
ReLU or GELU, no unembedding bias — with TransformerLens' own initialisation off, and copies our
parameters in; the biases our model does not have (by default the attention's) are zero. No weight processing
is applied (no ``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``:
the bridge is not put in compatibility mode), so its weights are ours as they are and its logits
equal ours (tested to float32 rounding, with the hook activations). Call ``bridge.process_weights()``
yourself if you want TransformerLens' processing; ``center_unembed`` then shifts every logit of a
position by the same amount (the softmax is unchanged).

``transformer_lens`` is imported only when the function runs (it takes seconds to import).

Example:
    >>> bridge = run.to_transformer_lens(-1)                          # doctest: +SKIP
    >>> logits, cache = bridge.run_with_cache(run.test_data()[0][:8])  # doctest: +SKIP
    >>> cache["blocks.0.mlp.hook_post"].shape                          # [8, 3, d_mlp]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError
from .params import LN_EPS, param_shapes, sinusoidal_positions

__all__ = ["to_transformer_lens", "transformer_lens_state_dict"]


def transformer_lens_state_dict(params: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our parameters in the TL-native bridge's layout (its ``state_dict()`` keys, ``nn.Linear`` weights
    ``[out, in]``), biases our model lacks as zeros.

    Notes:
        ``q.weight[(h, e), d] = W_Q[h, d, e]`` (likewise ``k``, ``v``), ``o.weight[d, (h, e)] =
        W_O[h, e, d]`` (heads major, as the native attention flattens ``z``), ``in.weight = W_inᵀ``,
        ``out.weight = W_outᵀ``, ``unembed.weight = W_Uᵀ``.
    """
    expected = param_shapes(cfg)
    missing = set(expected) - set(params)
    if missing:
        raise ConfigError(f"parameters: missing {sorted(missing)}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ConfigError(f"parameter {name}: expected shape {list(shape)}, got {list(params[name].shape)}")
    P = {k: v.detach().float().cpu() for k, v in params.items()}
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    W_pos = P["pos_embed.W_pos"] if "pos_embed.W_pos" in P else sinusoidal_positions(cfg.n_ctx, d)  # fixed table
    sd = {"embed.weight": P["embed.W_E"], "pos_embed.weight": W_pos}
    for L in range(cfg.n_layers):
        b = f"blocks.{L}"
        for ours, theirs in (("Q", "q"), ("K", "k"), ("V", "v")):
            sd[f"{b}.attn.{theirs}.weight"] = P[f"{b}.attn.W_{ours}"].permute(0, 2, 1).reshape(h * e, d)
            sd[f"{b}.attn.{theirs}.bias"] = P.get(f"{b}.attn.b_{ours}", torch.zeros(h, e)).reshape(h * e)
        sd[f"{b}.attn.o.weight"] = P[f"{b}.attn.W_O"].reshape(h * e, d).T
        sd[f"{b}.attn.o.bias"] = P.get(f"{b}.attn.b_O", torch.zeros(d))
        sd[f"{b}.mlp.in.weight"] = P[f"{b}.mlp.W_in"].T
        sd[f"{b}.mlp.in.bias"] = P.get(f"{b}.mlp.b_in", torch.zeros(cfg.d_mlp))
        sd[f"{b}.mlp.out.weight"] = P[f"{b}.mlp.W_out"].T
        sd[f"{b}.mlp.out.bias"] = P.get(f"{b}.mlp.b_out", torch.zeros(d))
    if cfg.layer_norm:
        for name in [f"blocks.{L}.{n}" for L in range(cfg.n_layers) for n in ("ln1", "ln2")] + ["ln_final"]:
            sd[f"{name}.weight"] = P[f"{name}.w"]
            sd[f"{name}.bias"] = P.get(f"{name}.b", torch.zeros(d))
    sd["unembed.weight"] = P["unembed.W_U"].T
    return {k: v.contiguous() for k, v in sd.items()}


def to_transformer_lens(params: dict[str, Tensor], cfg: ModelConfig, device: str | torch.device = "cpu") -> Any:
    """A TransformerLens 4.x ``TransformerBridge`` computing our model (module notes).

    Args:
        params: our parameters ``{name: tensor}`` (one checkpoint, TransformerLens names).
        cfg: the model's config (vocabulary, widths, activation).
        device: where the bridge lives.

    Returns:
        A ``transformer_lens.model_bridge.TransformerBridge`` in eval mode: ``bridge(tokens)``
        gives logits ``[batch, pos, d_vocab_out]`` equal to ours; ``bridge.run_with_cache``
        caches the TransformerLens hook names.

    Raises:
        ConfigError: wrong parameter names or shapes; a parameter the bridge does not take; a model
            with an attention coefficient (``attn_coeff < 1``), which TransformerLens attention
            cannot express.
    """
    family = getattr(cfg, "family", "transformer")
    if family != "transformer":
        raise ConfigError(f"model.family: {family!r} — a TransformerBridge is a transformer; this model is already a "
                          f"TransformerLens HookedRootModule (Run.model())")
    if cfg.layer_norm and cfg.ln_style != "pre":
        why = ("a block whose first LayerNorm replaces the residual stream" if cfg.ln_style == "in_place" else
               "a post-LN block (x = ln1(x + attn(x)), x = ln2(x + mlp(x)))")
        raise ConfigError(f"model.ln_style: {cfg.ln_style!r} — TransformerLens blocks are pre-LN; {why} has no "
                          f"TransformerLens equivalent")
    if cfg.attn_coeff != 1.0:
        raise ConfigError(f"model.attn_coeff: {cfg.attn_coeff} — TransformerLens attention is softmax attention; a model "
                          f"blending it with constant attention (attn_coeff < 1) has no TransformerLens equivalent")
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches TransformerBridge.boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    sd = transformer_lens_state_dict(params, cfg)
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, d_head=cfg.d_head, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp, n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx, d_vocab=cfg.d_vocab, d_vocab_out=cfg.d_vocab_out, act_fn=cfg.act_fn,
        normalization_type="LN" if cfg.layer_norm else None, eps=LN_EPS, positional_embedding_type="standard",
        attention_dir="bidirectional" if cfg.input_layout == "a_b" else "causal",
        init_weights=False, original_architecture="grokinterp.HookedGrokTransformer",
    )
    bridge = TransformerBridge.boot_native(tl_cfg)
    own = bridge.state_dict()
    extra = sorted(set(sd) - set(own))
    if extra:
        raise ConfigError(f"TransformerLens bridge: no place for {extra} (its keys: {sorted(own)})")
    full = {k: torch.zeros_like(v) for k, v in own.items()}  # anything of theirs we do not have: zero
    full.update(sd)
    with torch.no_grad():
        bridge.load_state_dict(full, strict=True)
    return bridge.to(torch.device(device), print_details=False).eval()
