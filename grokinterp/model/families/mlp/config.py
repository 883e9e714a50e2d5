"""The ``mlp`` family's config (torch-free: the CLI and ``RunConfig.from_dict`` read it).

Registered with :func:`grokinterp.config.register_model_config` when imported
(:mod:`grokinterp.model.families` imports it), so ``model.family = "mlp"`` in a ``run.json`` or
``--family mlp`` picks :class:`MLPConfig`.

Example:
    >>> from grokinterp.config import make_config
    >>> c = make_config("tiny", family="mlp", d_hidden=64).model
    >>> type(c).__name__, c.d_vocab, c.d_vocab_out, c.n_params
    ('MLPConfig', 32, 31, 22464)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ....config import LIMITS, check_common_model_fields, check_field_types, register_model_config
from ....errors import ConfigError

__all__ = ["MLPConfig", "MLP_ACT_FNS", "COMBINES"]

#: Non-linearities of the hidden layers (``MLPConfig.act_fn``); ``quadratic`` is ``x²`` (Gromov 2023).
MLP_ACT_FNS = ("relu", "gelu", "quadratic")
#: How the first hidden layer reads the two operands (``MLPConfig.combine``).
COMBINES = {
    "sum": "W_a e_a + b_a + W_b e_b + b_b: one map per operand, summed (devinterp's grokking MLP)",
    "concat": "W [e_a; e_b] + b: one map of the concatenated operands (Gromov 2023, Liu et al. 2022)",
}


@register_model_config
@dataclass(frozen=True)
class MLPConfig:
    """An MLP over the two operands of ``a ∘ b``: embeddings, hidden layers, unembedding.

    The ``=`` token is not read: the model sees ``a = tokens[:, 0]`` and ``b = tokens[:, 1]``.
    Initialisation (one ``torch.Generator`` seeded with ``init_seed``, parameters drawn in the
    order of :func:`~grokinterp.model.families.mlp.param_shapes`) is torch's own for these layers:
    embedding ``N(0, 1)``, every weight and bias ``U(−1/√fan_in, 1/√fan_in)`` (``nn.Embedding`` and
    ``nn.Linear``, as devinterp's model), all multiplied by ``init_scale``.

    Attributes:
        family: ``mlp``.
        p: the task's alphabet size (sets the vocabulary sizes); kept equal to ``task.p``.
        eq_logit: ``=`` has an output logit; kept equal to ``task.eq_logit``.
        n_ctx: the task's token layout (3 for ``[a, b, =]``); the MLP reads the first two tokens.
        d_embed: embedding width, one embedding shared by ``a`` and ``b`` (``embed.W_E [p, d_embed]``);
            0 = no embedding: the first layer reads one-hot vectors (Gromov's and Kumar et al.'s models).
        d_hidden: width of every hidden layer (neurons).
        n_hidden_layers: hidden layers (≥ 1); the neurons analyses read are the last one's.
        act_fn: hidden non-linearity, ``relu``, ``gelu`` or ``quadratic`` (``x²``).
        combine: how the first layer reads the operands: ``sum`` (``W_a e_a + b_a + W_b e_b + b_b``,
            devinterp's) or ``concat`` (``W [e_a; e_b] + b``, Gromov's and Liu et al.'s).
        hidden_bias: the hidden layers have biases.
        unembed_bias: the unembedding has a bias (``unembed.b_U``).
        init_seed: seed of the parameter initialisation (independent of the split seed).
        init_scale: every initial parameter is multiplied by this factor (Omnigrok's ``α``); > 0.
        d_input: 0 (default): the model reads the two operand tokens. ``> 0``: the model reads the
            task's input vectors of this width (a dataset task, ``digits`` 64, MNIST 784; set from the
            task, with ``n_ctx = d_input``): ``hidden.0.W_in [d_input, d_hidden]``, no embedding
            (``d_embed`` must be 0; ``combine`` is not read). Omnigrok's MNIST MLP is
            ``d_input 784, d_hidden 200, n_hidden_layers 2, relu, unembed_bias``.
    """

    #: Fields added after the family's first release (a ``run.json`` without them takes the default).
    ADDED_FIELDS: ClassVar[frozenset[str]] = frozenset({"d_input"})
    #: The allowed values of the enumerated fields (the CLI offers them).
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"act_fn": MLP_ACT_FNS, "combine": tuple(COMBINES)}

    family: str = "mlp"
    p: int = 113
    eq_logit: bool = False
    n_ctx: int = 3
    d_embed: int = 128
    d_hidden: int = 512
    n_hidden_layers: int = 1
    act_fn: str = "relu"
    combine: str = "sum"
    hidden_bias: bool = True
    unembed_bias: bool = False
    init_seed: int = 0
    init_scale: float = 1.0
    d_input: int = 0

    def __post_init__(self) -> None:
        check_field_types(self, "model")
        if self.family != "mlp":
            raise ConfigError(f"model.family: must be 'mlp' for an MLPConfig, got {self.family!r}")
        check_common_model_fields(self)
        if self.n_ctx < 2:
            raise ConfigError(f"model.n_ctx: the MLP reads two operands (tokens a, b), got {self.n_ctx}")
        if not isinstance(self.d_input, int) or isinstance(self.d_input, bool) or self.d_input < 0:
            raise ConfigError(f"model.d_input: must be a non-negative integer (0 = operand tokens), got {self.d_input!r}")
        if self.d_input and self.d_embed:
            raise ConfigError(f"model.d_embed: a model over input vectors (d_input {self.d_input}) has no embedding; "
                              f"give d_embed 0, got {self.d_embed}")
        if self.d_input and self.n_ctx != self.d_input:
            raise ConfigError(f"model.n_ctx: a model over input vectors reads d_input = {self.d_input} values per "
                              f"example, got n_ctx {self.n_ctx}")
        if self.d_embed < 0:
            raise ConfigError(f"model.d_embed: must be non-negative (0 = one-hot inputs), got {self.d_embed}")
        for name in ("d_hidden", "n_hidden_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: must be positive, got {getattr(self, name)}")
        if self.n_hidden_layers > LIMITS.n_layers:
            raise ConfigError(f"model.n_hidden_layers: must be at most {LIMITS.n_layers}, got {self.n_hidden_layers}")
        if self.act_fn not in MLP_ACT_FNS:
            raise ConfigError(f"model.act_fn: must be one of {', '.join(MLP_ACT_FNS)}, got {self.act_fn!r}")
        if self.combine not in COMBINES:
            raise ConfigError(f"model.combine: must be one of {', '.join(COMBINES)}, got {self.combine!r}")
        for name in ("hidden_bias", "unembed_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name}: must be true or false, got {getattr(self, name)!r}")
        if self.n_params > LIMITS.params:
            raise ConfigError(f"model: {self.n_params} parameters per checkpoint (d_embed {self.d_embed}, d_hidden "
                              f"{self.d_hidden}, {self.n_hidden_layers} hidden layers) is more than the limit of "
                              f"{LIMITS.params}")

    @property
    def d_vocab(self) -> int:
        """Input vocabulary of the task's tokens: the residues and ``=`` (token ``p``, not read)."""
        return self.p + 1

    @property
    def d_vocab_out(self) -> int:
        """Output vocabulary: the residues, plus ``=`` when ``eq_logit``."""
        return self.p + int(self.eq_logit)

    @property
    def input_layout(self) -> str:
        """How the task's examples are presented: ``a_b_eq`` (``[a, b, =]``; the MLP reads ``a`` and ``b``),
        so code that reads a transformer's token layout reads an MLP's too."""
        return "a_b_eq"

    @property
    def d_in(self) -> int:
        """Width of one operand's input to the first layer: ``d_embed``, or ``p`` (one-hot); a vector
        model's whole input, ``d_input``."""
        return self.d_input or self.d_embed or self.p

    @property
    def vector_input(self) -> bool:
        """The model reads input vectors (``d_input > 0``), not operand tokens."""
        return self.d_input > 0

    @property
    def n_params(self) -> int:
        """Scalar parameters per checkpoint, by formula (equals the sum over ``param_shapes``, tested)."""
        h, hb = self.d_hidden, int(self.hidden_bias)
        first = 2 * self.d_in * h + (2 if self.combine == "sum" else 1) * h * hb
        if self.d_input:
            first = self.d_input * h + h * hb
        rest = (self.n_hidden_layers - 1) * (h * h + h * hb)
        return self.p * self.d_embed + first + rest + h * self.d_vocab_out + self.d_vocab_out * int(self.unembed_bias)
