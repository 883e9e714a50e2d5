"""Parameter names, shapes and initialisation of the model (torch only, no transformer_lens).

The loader and the trainer need the table of parameters without building the hooked module;
keeping it here lets them skip the (slow) transformer_lens import.

=========================  ===============================  ==============================
parameter                  shape                            init (paper's code)
=========================  ===============================  ==============================
``embed.W_E``              ``[d_vocab, d_model]``           N(0, 1/d_model)
``pos_embed.W_pos``        ``[n_ctx, d_model]``             N(0, 1/d_model)
``blocks.L.attn.W_Q/K/V``  ``[n_heads, d_model, d_head]``   N(0, 1/d_model)
``blocks.L.attn.W_O``      ``[n_heads, d_head, d_model]``   N(0, 1/d_model)
``blocks.L.mlp.W_in``      ``[d_model, d_mlp]``             N(0, 1/d_model)
``blocks.L.mlp.b_in``      ``[d_mlp]``                      0
``blocks.L.mlp.W_out``     ``[d_mlp, d_model]``             N(0, 1/d_model)
``blocks.L.mlp.b_out``     ``[d_model]``                    0
``unembed.W_U``            ``[d_model, d_vocab_out]``       N(0, 1/d_vocab)
=========================  ===============================  ==============================

Settings add parameters (never changing the draws of the others, so the default model and its
checkpoints stay as they were): ``ModelConfig.bias = all`` adds ``blocks.L.attn.b_Q/b_K/b_V``
``[n_heads, d_head]`` and ``blocks.L.attn.b_O`` ``[d_model]`` (0), ``bias = none`` drops every bias;
``bias = norm`` keeps only the LayerNorms' ``b``; ``ModelConfig.layer_norm`` adds ``blocks.L.ln1.w/b`` (before attention), ``blocks.L.ln2.w/b``
(before the MLP) and ``ln_final.w/b`` ``[d_model]`` (weights 1, biases 0; no ``b`` with
``bias = none``), in TransformerLens' order. None of them is drawn from the generator.
``ModelConfig.ln_style = post`` (Power et al.'s post-LN blocks) has no ``ln_final``;
``ModelConfig.pos_embed = sinusoidal`` has no ``pos_embed.W_pos`` (the fixed table
:func:`sinusoidal_positions` is not a parameter). Both change the draws of the parameters after
the missing ones, which only concerns configs that did not exist before.

``ModelConfig.init_method = torch`` draws other distributions: PyTorch's defaults for the layers of
Power et al.'s decoder (``openai/grok`` builds ``nn.Embedding`` and ``nn.Linear`` and keeps their
initialisation): ``W_E`` and a learned ``W_pos`` N(0, 1); ``W_Q/K/V``, ``W_O``, ``W_in``, ``W_out`` and
``W_U`` U(−1/√fan_in, 1/√fan_in) (``nn.Linear``'s Kaiming-uniform with a = √5; fan_in ``d_model``,
``n_heads · d_head``, ``d_model``, ``d_mlp``, ``d_model``); biases 0 and LayerNorm weights 1 (their
model has LayerNorm biases only, which PyTorch also starts at 0); one generator in the order of
:func:`param_shapes`, times ``init_scale``.

The other two methods draw the same distributions (``ModelConfig.init_method``):

* ``default`` — one ``torch.Generator`` seeded with ``init_seed``, each parameter drawn in the
  order and layout of :func:`param_shapes`.
* ``paper`` — the tensors the reference code (Nanda et al.'s ``transformers.py``) draws after
  ``torch.manual_seed(init_seed)``: its ``Transformer(config)`` constructor draws ``W_E [d_model,
  d_vocab]``, ``W_pos``, then per block ``W_K``, ``W_Q``, ``W_V`` ``[n_heads, d_head, d_model]``,
  ``W_O [d_model, n_heads·d_head]``, ``W_in [d_mlp, d_model]``, ``W_out [d_model, d_mlp]``, and
  last ``W_U [d_model, d_vocab]`` (``d_vocab = p + 1`` columns: its ``=`` logit), each
  ``randn(shape) / sqrt(fan)``. We draw the same numbers in that order and transpose them into our
  layout; without ``eq_logit`` the ``=`` column of ``W_U`` is dropped.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError

__all__ = ["param_shapes", "init_params", "n_params", "is_bias", "is_norm_weight", "sinusoidal_positions", "LN_EPS"]

#: LayerNorm's epsilon (TransformerLens' default), for the hooked module and the functional forward.
LN_EPS = 1e-5


def sinusoidal_positions(n_ctx: int, d_model: int) -> Tensor:
    """Power et al.'s fixed positional encoding ``[n_ctx, d_model]`` (float32).

    Notes:
        ``PE[pos, i] = sin(pos / 10000^(i / d))`` for even ``i`` and ``cos(pos / 10000^((i − 1) / d))``
        for odd ``i`` (``openai/grok`` ``grok/transformer.py``, ``Transformer._position_encoding``:
        sine and cosine interleaved, not concatenated). Computed in float64, rounded once.

    Example:
        >>> sinusoidal_positions(4, 8).shape
        torch.Size([4, 8])
    """
    pos = torch.arange(n_ctx, dtype=torch.float64)[:, None]
    i = torch.arange(d_model, dtype=torch.float64)
    even = (i - i % 2) / d_model  # i / d at even i, (i − 1) / d at odd i
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), even)
    return torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's TransformerLens name and shape, in initialisation order."""
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (cfg.d_vocab, cfg.d_model)}
    if getattr(cfg, "pos_embed", "learned") == "learned":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, cfg.d_model)
    bias, attn_bias, ln = cfg.bias != "none", cfg.bias == "all", cfg.layer_norm
    mlp_bias = cfg.bias in ("mlp", "all")  # bias = norm: the LayerNorms' b only
    d = cfg.d_model

    def norm(name: str) -> None:
        if ln:
            shapes[f"{name}.w"] = (d,)
            if bias:
                shapes[f"{name}.b"] = (d,)

    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        norm(f"{b}.ln1")
        shapes.update({
            f"{b}.attn.W_Q": (cfg.n_heads, d, cfg.d_head),
            f"{b}.attn.W_K": (cfg.n_heads, d, cfg.d_head),
            f"{b}.attn.W_V": (cfg.n_heads, d, cfg.d_head),
            f"{b}.attn.W_O": (cfg.n_heads, cfg.d_head, d),
        })
        if attn_bias:
            shapes.update({
                f"{b}.attn.b_Q": (cfg.n_heads, cfg.d_head),
                f"{b}.attn.b_K": (cfg.n_heads, cfg.d_head),
                f"{b}.attn.b_V": (cfg.n_heads, cfg.d_head),
                f"{b}.attn.b_O": (d,),
            })
        norm(f"{b}.ln2")
        shapes[f"{b}.mlp.W_in"] = (d, cfg.d_mlp)
        if mlp_bias:
            shapes[f"{b}.mlp.b_in"] = (cfg.d_mlp,)
        shapes[f"{b}.mlp.W_out"] = (cfg.d_mlp, d)
        if mlp_bias:
            shapes[f"{b}.mlp.b_out"] = (d,)
    if getattr(cfg, "ln_style", "pre") != "post":  # post-LN blocks end normalised
        norm("ln_final")
    shapes["unembed.W_U"] = (d, cfg.d_vocab_out)
    return shapes


def is_bias(name: str) -> bool:
    """A bias (``b_*``, or a LayerNorm's ``b``): initialised to 0, never a matrix."""
    last = name.rsplit(".", 1)[-1]
    return last == "b" or last.startswith("b_")


def is_norm_weight(name: str) -> bool:
    """A LayerNorm's weight (``ln1.w``, ``ln2.w``, ``ln_final.w``): initialised to 1."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "w" and parts[-2].startswith("ln")


def _fixed_init(name: str, shape: tuple[int, ...]) -> Tensor | None:
    """The parameters that are not drawn: biases 0, LayerNorm weights 1 (``None`` for the others)."""
    if is_bias(name):
        return torch.zeros(shape)
    if is_norm_weight(name):
        return torch.ones(shape)
    return None


def init_params(cfg: ModelConfig) -> dict[str, Tensor]:
    """Initial parameters as in the paper's code, seeded by ``cfg.init_seed`` (CPU, float32).

    Args:
        cfg: the model config; ``cfg.init_method`` picks the draw order (module notes).

    Returns:
        ``{name: tensor}`` in the order and shapes of :func:`param_shapes`.

    Notes:
        Weights are ``α · N(0, 1/d_model)`` except ``W_U``, which is ``α · N(0, 1/d_vocab)``;
        biases are 0. ``α = cfg.init_scale`` (Omnigrok's initialisation scale, 1 by default: the
        same draws, only scaled, so runs with different scales start from proportional weights).
    """
    if cfg.init_method == "paper":
        return _init_paper(cfg)
    if cfg.init_method == "torch":
        return _init_torch(cfg)
    def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        fan = cfg.d_vocab if name == "unembed.W_U" else cfg.d_model
        return torch.randn(shape, generator=gen) / math.sqrt(fan)

    return _seeded_init(cfg, draw)


def _seeded_init(cfg: ModelConfig, draw) -> dict[str, Tensor]:
    """Every parameter in ``param_shapes`` order: the fixed ones (LayerNorm, biases) as they are, the others
    ``draw(name, shape, generator)`` from one generator seeded by ``init_seed``, times ``init_scale``."""
    gen = torch.Generator().manual_seed(cfg.init_seed)
    scale = float(cfg.init_scale)
    out: dict[str, Tensor] = {}
    for name, shape in param_shapes(cfg).items():
        fixed = _fixed_init(name, shape)
        if fixed is not None:
            out[name] = fixed
        else:
            w = draw(name, shape, gen)
            out[name] = w if scale == 1.0 else w * scale
    return out


def _torch_fan_in(name: str, shape: tuple[int, ...]) -> int:
    """``nn.Linear``'s fan_in of a weight in our layout (``[..., in, out]``; ``W_O [n_heads, d_head, d_model]``
    reads ``n_heads · d_head`` inputs)."""
    if name.endswith("attn.W_O"):
        return shape[0] * shape[1]
    return shape[-2]


def _init_torch(cfg: ModelConfig) -> dict[str, Tensor]:
    """PyTorch's default initialisation of Power et al.'s layers (module notes), seeded by ``init_seed``."""
    def draw(name: str, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
        if name in ("embed.W_E", "pos_embed.W_pos"):
            return torch.randn(shape, generator=gen)  # nn.Embedding: N(0, 1)
        bound = 1.0 / math.sqrt(_torch_fan_in(name, shape))
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound

    return _seeded_init(cfg, draw)


def _init_paper(cfg: ModelConfig) -> dict[str, Tensor]:
    """The reference code's initial tensors for ``torch.manual_seed(cfg.init_seed)``, in our layout."""
    gen = torch.Generator().manual_seed(cfg.init_seed)
    d, V, h, e, m = cfg.d_model, cfg.d_vocab, cfg.n_heads, cfg.d_head, cfg.d_mlp

    def draw(*shape: int, fan: int) -> Tensor:
        return torch.randn(shape, generator=gen) / math.sqrt(fan)

    raw: dict[str, Tensor] = {
        "embed.W_E": draw(d, V, fan=d).T,  # theirs [d_model, d_vocab]
        "pos_embed.W_pos": draw(cfg.n_ctx, d, fan=d),
    }
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        for name in ("W_K", "W_Q", "W_V"):  # their order; theirs [n_heads, d_head, d_model]
            raw[f"{b}.attn.{name}"] = draw(h, e, d, fan=d).transpose(1, 2)
        raw[f"{b}.attn.W_O"] = draw(d, h * e, fan=d).T.reshape(h, e, d)  # theirs [d_model, (head d_head)]
        raw[f"{b}.mlp.W_in"] = draw(m, d, fan=d).T
        raw[f"{b}.mlp.W_out"] = draw(d, m, fan=d).T
    raw["unembed.W_U"] = draw(d, V, fan=V)[:, : cfg.d_vocab_out]  # their W_U has d_vocab columns
    out = {}
    for name, shape in param_shapes(cfg).items():  # biases and LayerNorm weights are not drawn
        fixed = _fixed_init(name, shape)
        out[name] = fixed if fixed is not None else raw[name].contiguous()
    return out


def n_params(cfg: ModelConfig) -> int:
    """Number of scalar parameters of a model (by formula: cheap even for absurd configs).

    Equals ``sum(prod(shape) for shape in param_shapes(cfg).values())`` (tested); the formula is
    :attr:`ModelConfig.n_params <grokinterp.config.ModelConfig.n_params>`, which the config's
    limits use.
    """
    return cfg.n_params


def load_named_params(module: torch.nn.Module, params: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Copy ``params`` into ``module``'s parameters of the same names (any model family): the names must
    be exactly those of ``expected`` and each shape its shape, else a :class:`ConfigError` naming them."""
    missing, extra = set(expected) - set(params), set(params) - set(expected)
    if missing or extra:
        raise ConfigError(f"parameters: missing {sorted(missing)}, unexpected {sorted(extra)}")
    own = dict(module.named_parameters())
    with torch.no_grad():
        for name, shape in expected.items():
            t = params[name]
            if tuple(t.shape) != shape:
                raise ConfigError(f"parameter {name}: expected shape {list(shape)}, got {list(t.shape)}")
            own[name].copy_(t)
