"""Frozen configuration dataclasses, presets, validation and (de)serialisation.

A run is described by one :class:`RunConfig` holding four sections: :class:`TaskConfig`,
:class:`ModelConfig`, :class:`TrainConfig` and :class:`CheckpointSchedule`. Each section checks
itself in ``__post_init__`` and raises :class:`~grokinterp.errors.ConfigError` whose message
starts with the dotted field name (``"task.frac_train: ..."``). Values derived from others are
properties, never class-body defaults (``d_head`` follows ``d_model / n_heads``, the vocabulary
follows ``p``), so changing ``p`` can never leave a stale vocabulary behind.

This module imports no torch: the CLI builds and validates configs before any heavy import.

Example:
    >>> cfg = make_config("tiny", p=29, lr=3e-3)
    >>> cfg.task.p, cfg.model.d_vocab, cfg.train.lr
    (29, 30, 0.003)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .errors import ConfigError
from .tasks import INPUT_LAYOUTS, SPLIT_METHODS, fixed_size, get_task, is_dataset_task

__all__ = [
    "FORMAT_VERSION",
    "TaskConfig",
    "ModelConfig",
    "TrainConfig",
    "CheckpointSchedule",
    "RunConfig",
    "PRESETS",
    "PRESET_HELP",
    "INIT_METHODS",
    "WARMUP_STYLES",
    "OPTIMIZER_NAMES",
    "ACT_FNS",
    "BIAS_MODES",
    "LN_STYLES",
    "POS_EMBEDS",
    "INPUT_LAYOUTS",
    "make_config",
    "field_docs",
    "SECTIONS",
    "is_int",
    "Limits",
    "LIMITS",
    "DEFAULT_P",
    "LR_SCHEDULES",
    "WEIGHT_DECAY_ON",
    "LOSSES",
    "CHECKPOINT_UNITS",
    "interventions",
    "MODEL_CONFIGS",
    "COMMON_MODEL_FIELDS",
    "register_model_config",
    "model_config_class",
    "model_config_classes",
    "check_common_model_fields",
]

#: Version of the run-directory format written by this package. Readers refuse newer ones.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Limits:
    """The one set of limits shared by config validation and the run loader.

    They are machine-independent on purpose: a config beyond them is refused before anything is
    written (``ConfigError`` naming the field), and a ``run.json`` beyond them is damage, not a
    model (the loader refuses it, ``RunError``), so a run trained on a big GPU machine always loads
    on a laptop. Whether *this* machine can hold a run is a separate question, answered by the
    trainer's pre-flight estimate at ``train`` and ``resume`` only.

    Attributes:
        p: largest modulus (every one of the p² pairs is materialised: tokens, labels, grids).
        n_layers: most blocks.
        params: most scalar parameters per checkpoint (2³⁴ float32 = 64 GiB).
        epochs: most training epochs (the paper trains 40k; metrics hold one row per epoch).
        checkpoints: most checkpoints in a schedule (an upper bound computed without building it).
        shards: most shard files (checkpoints / flush_every).
        seed: largest split seed (``task.split_seed``; a signed 64-bit integer).
        init_seed: largest ``model.init_seed``: every seed ``torch.manual_seed`` accepts, the full
            unsigned 64-bit range, so the ``torch.initial_seed()`` an unseeded run of the
            reference code records can always be given back (JSON keeps it exact).
        json_bytes: largest ``run.json`` / ``progress.json`` read (checked before reading).
        sweep_points: most points (runs) in one sweep, checked from the axis lengths before the grid
            is expanded (planning takes ~5 ms a point here; 10⁶ points got no answer in 240 s).
    """

    p: int = 5000
    n_layers: int = 1024
    params: int = 2 ** 34
    epochs: int = 10 ** 8
    checkpoints: int = 10 ** 7
    shards: int = 10 ** 6
    seed: int = 2 ** 63 - 1
    init_seed: int = 2 ** 64 - 1
    json_bytes: int = 1 << 20
    sweep_points: int = 10_000

    @property
    def manifest_bytes(self) -> int:
        """Largest ``manifest.json`` read: a few hundred bytes per listed file."""
        return (1 << 16) + 320 * (self.shards + 16)


#: The limits in force (see :class:`Limits`).
LIMITS = Limits()
#: Largest modulus accepted (``LIMITS.p``; kept as a name for existing callers).
MAX_P = LIMITS.p

#: Initialisation methods (``ModelConfig.init_method``), implemented in :mod:`grokinterp.model.params`.
INIT_METHODS = {
    "default": "one seeded generator, parameters drawn in our order and layout",
    "paper": "the reference code's draw order and [d_model, vocab] / [n_heads, d_head, d_model] layouts",
    "torch": "PyTorch's layer defaults (Power et al.'s decoder): embeddings N(0, 1), weights U(±1/sqrt(fan_in))",
}
#: Learning-rate warm-up styles (``TrainConfig.warmup_style``).
WARMUP_STYLES = {
    "default": "lr · min((e + 1) / warmup_epochs, 1): the first step moves at lr / warmup_epochs",
    "paper": "lr · min(e / warmup_epochs, 1): the reference code's LambdaLR (the first step has lr 0)",
}
#: Built-in optimizers (``TrainConfig.optimizer``), listed here without importing torch so the CLI can
#: offer them in ``--help``; :func:`grokinterp.training.optim.register_optimizer` adds new names.
#: Every optimizer :mod:`grokinterp.training.optim` registers must be named here (the CLI reads only
#: this list; tests/test_cli.py checks it in a fresh interpreter).
OPTIMIZER_NAMES: dict[str, str] = {
    "adamw": "AdamW, decoupled weight decay (the paper's)",
    "adam": "Adam, weight decay as an L2 term in the gradient",
    "sgd": "SGD with momentum",
    "ortho_adamw": "⊥AdamW: AdamW on the gradient made orthogonal to the weights (Prieto et al. 2025)",
}
#: MLP non-linearities (``ModelConfig.act_fn``).
ACT_FNS = ("relu", "gelu")
#: Where a transformer's first LayerNorm of a block acts (``ModelConfig.ln_style``).
LN_STYLES = {
    "pre": "x + attn(ln1(x)), x + mlp(ln2(x)): TransformerLens' / GPT-2's pre-LN (the default)",
    "in_place": "x = ln1(x); x + attn(x), then x + mlp(ln2(x)): Lee et al.'s Grokfast decoder",
    "post": "x = ln1(x + attn(x)), x = ln2(x + mlp(x)), no ln_final: Power et al.'s post-LN decoder",
}
#: How a transformer's positions are embedded (``ModelConfig.pos_embed``).
POS_EMBEDS = {
    "learned": "a trained pos_embed.W_pos [n_ctx, d_model] (the default)",
    "sinusoidal": "a fixed table, sin(pos / 10000^(i/d)) at even i, cos(pos / 10000^((i-1)/d)) at odd i, "
                  "not a parameter (Power et al.'s decoder)",
}
#: Which biases a transformer has (``ModelConfig.bias``); the unembedding never has one.
BIAS_MODES = {
    "mlp": "the MLP's b_in and b_out only (Nanda et al.'s model; the default)",
    "all": "also the attention's b_Q, b_K, b_V [n_heads, d_head] and b_O [d_model] (GPT-2 / Power et al. decoders)",
    "none": "no biases at all (nor the LayerNorms' b)",
    "norm": "the LayerNorms' b only, no projection has one (Power et al.'s decoder: every nn.Linear bias=False)",
}
#: ``task.p`` when a config leaves it out (an operation mod p; a group task takes its order).
DEFAULT_P = 113
#: Learning-rate schedules after the warm-up (``TrainConfig.lr_schedule``; see ``TrainConfig.lr_at``).
LR_SCHEDULES = ("constant", "cosine")
#: Which parameters weight decay applies to (``TrainConfig.weight_decay_on``).
WEIGHT_DECAY_ON = ("all", "matrices")
#: What a checkpoint schedule counts (``CheckpointSchedule.unit``).
CHECKPOINT_UNITS = ("epoch", "step")
#: Training losses (``TrainConfig.loss``), implemented in :mod:`grokinterp.training.step`.
LOSSES = ("cross_entropy", "stablemax", "mse")
#: Floating-point precisions of training (``TrainConfig.dtype``): parameters, optimizer state and checkpoints.
DTYPES = ("float32", "float64")


def _require(cond: bool, field_name: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: {msg}, got {value!r}")


def is_int(x: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _check_ints(obj: Any, section: str) -> None:
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.type in ("int",) and not is_int(v):
            raise ConfigError(f"{section}.{f.name}: must be an integer, got {v!r}")
        if f.type in ("float",) and not _is_number(v):
            raise ConfigError(f"{section}.{f.name}: must be a number, got {v!r}")


@dataclass(frozen=True)
class TaskConfig:
    """The algorithmic task: ``c = a ∘ b mod p`` (or ``g·h`` in a group) and the train/test split.

    Attributes:
        p: the task's alphabet size: the modulus (≥ 3) of an operation mod p, or a group task's order.
            The input vocabulary is ``p + 1`` tokens (``=`` is token ``p``). Left out (``None``) it is
            the group's order for a group task and 113 otherwise; a group task refuses any other value.
        operation: name in :data:`grokinterp.tasks.OPERATIONS` (``add`` by default) or a group task
            (``S5``, ``A5``, ``D59``, ``C113``, ``S5_conj``, ... see :mod:`grokinterp.tasks.groups`).
        frac_train: fraction of the valid pairs used for training, in (0, 1).
        split_seed: seed of the split permutation (independent of the model's init seed).
        split_method: how the split is drawn, a name in :data:`grokinterp.tasks.SPLIT_METHODS`
            (``random``: a PCG64 permutation of the valid pairs, ``round(frac_train · n)`` train;
            ``paper``: the reference code's ``random.seed(split_seed); random.shuffle`` of the
            row-major pair list, the first ``int(frac_train · n)`` train).
        eq_logit: whether ``=`` has an output logit (``d_vocab_out = p + 1``, as in the paper's
            code) or not (``p``, the default). The model's ``eq_logit`` follows this field.
        n_train: train on only this many of the split's training pairs (``None``: all of them): the
            first ``n_train`` of an order seeded by ``subset_seed``, so with one seed a smaller
            ``n_train`` is a subset of a larger one; the pairs left out join the test set
            (:mod:`grokinterp.tasks.subsets`). With ``train.init_from`` the split is the parent's,
            so these are drawn from the parent's training pairs.
        subset_seed: seed of the order ``n_train`` takes its pairs from.
        random_labels: train on random labels (the memorization-only baseline): every training pair
            gets a label drawn uniformly from the task's classes, a function of ``(label_seed, pair)``
            alone (independent draws, not a permutation of the true labels); test pairs keep the
            true labels.
        label_seed: seed of the random labels.
        train_size: dataset tasks (``digits``, ``mnist``, ``fashion_mnist``): the number of training
            examples drawn (seeded by ``split_seed``) from the training pool (Omnigrok: 1,000); unset:
            ``round(frac_train · pool)``. Refused for the algebraic tasks (use ``frac_train``).
        data: ``mnist`` / ``fashion_mnist``: the directory holding the four IDX files (raw or ``.gz``);
            nothing is downloaded. Refused for other tasks.
    """

    p: int | None = None
    operation: str = "add"
    frac_train: float = 0.3
    split_seed: int = 0
    split_method: str = "random"
    eq_logit: bool = False
    n_train: int | None = None
    subset_seed: int = 0
    random_labels: bool = False
    label_seed: int = 0
    train_size: int | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        size = fixed_size(self.operation) if isinstance(self.operation, str) else None
        if self.p is None:
            object.__setattr__(self, "p", DEFAULT_P if size is None else size)
        _check_ints(self, "task")
        _require(is_int(self.p), "task.p", "must be an integer", self.p)
        _require(self.p >= 3, "task.p", "must be at least 3", self.p)
        _require(self.p <= MAX_P, "task.p", f"must be at most {MAX_P} (p² examples are materialised)", self.p)
        _require(0.0 < float(self.frac_train) < 1.0, "task.frac_train", "must lie in (0, 1)", self.frac_train)
        _require(0 <= self.split_seed <= LIMITS.seed, "task.split_seed", f"must lie in [0, {LIMITS.seed}]",
                 self.split_seed)
        _require(self.split_method in SPLIT_METHODS, "task.split_method",
                 f"must be one of {', '.join(sorted(SPLIT_METHODS))}", self.split_method)
        _require(isinstance(self.eq_logit, bool), "task.eq_logit", "must be true or false", self.eq_logit)
        dataset = is_dataset_task(self.operation)
        if self.train_size is not None:
            _require(dataset, "task.train_size", "is for dataset tasks (digits, mnist, fashion_mnist); the "
                     "algebraic tasks use task.frac_train", self.train_size)
            _require(is_int(self.train_size) and self.train_size >= 1, "task.train_size", "must be a positive integer",
                     self.train_size)
        if self.data is not None:
            _require(dataset, "task.data", "is a directory of IDX files for mnist / fashion_mnist; the algebraic "
                     "tasks read no files", self.data)
            _require(isinstance(self.data, str) and self.data != "", "task.data", "must be a directory path", self.data)
        _require(isinstance(self.random_labels, bool), "task.random_labels", "must be true or false",
                 self.random_labels)
        for name in ("subset_seed", "label_seed"):
            _require(0 <= getattr(self, name) <= LIMITS.seed, f"task.{name}", f"must lie in [0, {LIMITS.seed}]",
                     getattr(self, name))
        task = self.task()  # the operation exists and is defined for this p (ConfigError naming the field)
        if self.n_train is not None:
            _require(is_int(self.n_train) and self.n_train >= 1, "task.n_train", "must be a positive integer",
                     self.n_train)
            n_split = len(task.split(self.frac_train, self.split_seed, self.split_method,
                                     *((self.train_size,) if dataset else ()))[0])
            _require(self.n_train <= n_split, "task.n_train",
                     f"must be at most {n_split}, the training pairs of the split (task.frac_train "
                     f"{self.frac_train}); a subset cannot be larger than the set it is drawn from", self.n_train)
        if dataset:
            task.split(self.frac_train, self.split_seed, self.split_method, self.train_size)  # train_size fits

    def task(self):
        """The :class:`~grokinterp.tasks.Task` this config describes."""
        return get_task(self.operation, self.p, self.eq_logit, self.data)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the hooked transformer (paper defaults).

    The vocabulary is not a free field: :class:`RunConfig` passes the task's ``p`` and ``eq_logit``
    so that ``d_vocab = p + 1`` and ``d_vocab_out = p + eq_logit`` are always the task's.

    Attributes:
        family: the model family (:data:`MODEL_CONFIGS`): ``transformer`` here; another family's
            config is its own dataclass (``--family mlp``). Runs written before families existed are
            transformers.
        p: the task's alphabet size (the modulus, or a group's order); sets the vocabulary sizes.
        eq_logit: ``=`` has an output logit (``d_vocab_out = p + 1``); kept equal to ``task.eq_logit``.
        d_model: residual width; must be divisible by ``n_heads``.
        n_heads: attention heads per layer; ``d_head = d_model // n_heads``.
        d_mlp: MLP width (neurons).
        n_layers: number of blocks (the paper uses 1; the fast kernels need 1, deeper models train
            through the hooked module, or the generic forward in stacks).
        act_fn: MLP non-linearity, ``relu`` or ``gelu``.
        n_ctx: context length (3 for ``[a, b, =]``).
        init_seed: seed of the parameter initialisation (independent of the split seed).
        init_method: how the seeded initial tensors are drawn (:data:`INIT_METHODS`): ``default``
            (one generator, our parameter order and layout), ``paper`` (the reference code's
            order and layout, so ``torch.manual_seed(init_seed)`` there gives the same tensors) or
            ``torch`` (PyTorch's layer defaults, as Power et al.'s decoder: embeddings N(0, 1),
            weights U(±1/√fan_in)).
        init_scale: every initial weight is multiplied by this factor (Liu et al. 2022, Omnigrok's
            ``α``; biases start at 0 either way). ``1`` is the paper's initialisation; must be > 0.
        attn_coeff: attention coefficient ``a ∈ [0, 1]`` of Zhong et al. 2023 ("The clock and the
            pizza"): the attention weights are ``a · softmax(scores) + (1 − a)`` on every key
            position the causal mask allows. ``1`` is standard attention, ``0`` constant
            attention (every allowed position weighted 1, so the heads *sum* the values). This is
            their code's definition (it blends towards all ones, not towards ``1/n``); they attend
            bidirectionally over ``[a, b]`` without an ``=`` token, we causally over ``[a, b, =]``,
            which for the final position (the only one the loss reads) is the same set of keys
            plus ``=`` (``input_layout = a_b`` gives their layout).
        layer_norm: pre-LayerNorm blocks as TransformerLens' (and the GPT-2 / Power et al.
            decoders'): ``ln1`` before attention, ``ln2`` before the MLP, ``ln_final`` before the
            unembedding, each with a weight ``w`` (initialised to 1) and a bias ``b`` (0; absent
            with ``bias = none``), eps 1e-5. Off by default (Nanda et al.'s model has none).
        ln_style: with ``layer_norm``, where a block's first LayerNorm acts (:data:`LN_STYLES`):
            ``pre`` (``x + attn(ln1(x))``, the default) or ``in_place`` (``x = ln1(x)`` replaces
            the residual stream before ``x + attn(x)``, as Lee et al.'s Grokfast decoder) or ``post``
            (``x = ln1(x + attn(x))``, ``x = ln2(x + mlp(x))``, the original Transformer's post-LN as
            Power et al.'s decoder; there is no ``ln_final``: the stream leaving the last block is
            already normalised).
        pos_embed: how positions are embedded (:data:`POS_EMBEDS`): ``learned`` (the parameter
            ``pos_embed.W_pos``, the default) or ``sinusoidal`` (a fixed table added to the token
            embeddings, not a parameter: Power et al.'s ``_position_encoding``; the model then has no
            ``pos_embed.W_pos``).
        bias: which biases the model has (:data:`BIAS_MODES`): ``mlp`` (the MLP's ``b_in`` and
            ``b_out``, today's model and the default), ``all`` (also the attention's ``b_Q``, ``b_K``,
            ``b_V``, ``b_O``), ``none``, or ``norm`` (the LayerNorms' ``b`` only, Power et al.'s decoder).
            Biases start at 0; the unembedding has none.
        input_layout: how an example is presented (:data:`INPUT_LAYOUTS`): ``a_b_eq`` (tokens
            ``[a, b, =]``, causal attention, read out at ``=``; the default) or ``a_b`` (Zhong et al.
            2023's ``[a, b]``: no ``=`` token, attention over both positions, read out at ``b``;
            ``n_ctx`` is then 2) or ``a_op_b_eq`` (``[a, op, b, =]``: a constant operation token
            ``p + 1`` between the operands, as Power et al.'s and Lee et al.'s decoders; ``n_ctx`` 4,
            input vocabulary ``p + 2``; causal, read out at ``=``).
    """

    family: str = "transformer"
    p: int = 113
    eq_logit: bool = False
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_layers: int = 1
    act_fn: str = "relu"
    n_ctx: int = 3
    init_seed: int = 0
    init_method: str = "default"
    init_scale: float = 1.0
    attn_coeff: float = 1.0
    layer_norm: bool = False
    ln_style: str = "pre"
    bias: str = "mlp"
    input_layout: str = "a_b_eq"
    pos_embed: str = "learned"

    def __post_init__(self) -> None:
        _check_ints(self, "model")
        _require(self.family == "transformer", "model.family", "must be 'transformer' for a ModelConfig (another "
                 "family has its own config class: model_config_class(family))", self.family)
        _require(isinstance(self.layer_norm, bool), "model.layer_norm", "must be true or false", self.layer_norm)
        _require(isinstance(self.ln_style, str) and self.ln_style in LN_STYLES, "model.ln_style",
                 f"must be one of {', '.join(LN_STYLES)}", self.ln_style)
        _require(self.ln_style == "pre" or self.layer_norm, "model.ln_style",
                 "needs model.layer_norm (a style of LayerNorm placement)", self.ln_style)
        _require(isinstance(self.pos_embed, str) and self.pos_embed in POS_EMBEDS, "model.pos_embed",
                 f"must be one of {', '.join(POS_EMBEDS)}", self.pos_embed)
        _require(isinstance(self.bias, str) and self.bias in BIAS_MODES, "model.bias",
                 f"must be one of {', '.join(BIAS_MODES)}", self.bias)
        _require(isinstance(self.input_layout, str) and self.input_layout in INPUT_LAYOUTS, "model.input_layout",
                 f"must be one of {', '.join(INPUT_LAYOUTS)}", self.input_layout)
        fixed = INPUT_LAYOUTS[self.input_layout].fixed_n_ctx
        _require(fixed is None or self.n_ctx == fixed, "model.n_ctx",
                 f"must be {fixed} in the {self.input_layout} layout", self.n_ctx)
        _require(self.p >= 3, "model.p", "must be at least 3", self.p)
        for name in ("d_model", "n_heads", "d_mlp", "n_layers", "n_ctx"):
            _require(getattr(self, name) >= 1, f"model.{name}", "must be positive", getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model: must be divisible by model.n_heads ({self.n_heads}), got {self.d_model}"
            )
        _require(self.act_fn in ACT_FNS, "model.act_fn", "must be 'relu' or 'gelu'", self.act_fn)
        _require(isinstance(self.eq_logit, bool), "model.eq_logit", "must be true or false", self.eq_logit)
        _require(self.init_method in INIT_METHODS, "model.init_method",
                 f"must be one of {', '.join(INIT_METHODS)}", self.init_method)
        _require(0 <= self.init_seed <= LIMITS.init_seed, "model.init_seed", f"must lie in [0, {LIMITS.init_seed}]",
                 self.init_seed)
        _require(self.n_layers <= LIMITS.n_layers, "model.n_layers", f"must be at most {LIMITS.n_layers}",
                 self.n_layers)
        n = self.n_params
        if n > LIMITS.params:
            raise ConfigError(f"model: {n} parameters per checkpoint (d_model {self.d_model}, d_mlp {self.d_mlp}, "
                              f"{self.n_heads} heads, {self.n_layers} layers) is more than the limit of "
                              f"{LIMITS.params}")
        _require(math.isfinite(self.init_scale) and self.init_scale > 0, "model.init_scale",
                 "must be a positive number", self.init_scale)
        _require(math.isfinite(self.attn_coeff) and 0.0 <= self.attn_coeff <= 1.0, "model.attn_coeff",
                 "must lie in [0, 1]", self.attn_coeff)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_params(self) -> int:
        """Scalar parameters per checkpoint, by formula (cheap even for absurd sizes; equals the sum
        over :func:`grokinterp.model.param_shapes`, tested)."""
        d, dm = self.d_model, self.d_mlp
        per_layer = 4 * self.n_heads * d * self.d_head + 2 * d * dm
        ln = (1 + (self.bias != "none")) * d if self.layer_norm else 0  # one LayerNorm's w (and b)
        per_layer += (dm + d if self.bias in ("mlp", "all") else 0) + (3 * self.n_heads * self.d_head + d
                                                               if self.bias == "all" else 0) + 2 * ln
        final_ln = ln if self.ln_style != "post" else 0  # post-LN blocks end normalised: no ln_final
        n_pos = self.n_ctx if self.pos_embed == "learned" else 0  # a sinusoidal table is not a parameter
        return (self.d_vocab + n_pos + self.d_vocab_out) * d + self.n_layers * per_layer + final_ln

    @property
    def d_vocab(self) -> int:
        """Input vocabulary: the residues ``0..p-1``, ``=`` (token ``p``) and, in the ``a_op_b_eq``
        layout, the operation token ``p + 1``."""
        return self.p + 1 + INPUT_LAYOUTS[self.input_layout].extra_vocab

    @property
    def d_vocab_out(self) -> int:
        """Output vocabulary: the residues, plus ``=`` when ``eq_logit`` (the paper's code has it)."""
        return self.p + int(self.eq_logit)


#: Fields every family's model config has, with the same meaning: ``family`` itself, the task's
#: vocabulary (``p``, ``eq_logit``), the token layout (``n_ctx``) and the seeded initialisation
#: (``init_seed``, ``init_scale``). Switching family (``make_config(..., family="mlp")``) keeps them.
COMMON_MODEL_FIELDS = ("family", "p", "eq_logit", "n_ctx", "init_seed", "init_scale")

#: Model-config classes by family (``model.family``): ``{family: frozen dataclass}``. The
#: ``transformer``'s is :class:`ModelConfig`; every other family registers its own from its config module
#: (:func:`register_model_config`), so this module does not grow with the families.
MODEL_CONFIGS: dict[str, type] = {"transformer": ModelConfig}


def register_model_config(cls: type) -> type:
    """Register a family's config class under its ``family`` field's default (usable as a decorator).

    The class is a frozen dataclass with every :data:`COMMON_MODEL_FIELDS` field, checks itself in
    ``__post_init__`` (:class:`ConfigError` naming ``model.<field>``; :func:`check_common_model_fields`
    checks the common fields) and offers ``d_vocab``, ``d_vocab_out`` and ``n_params``. Its
    ``Attributes:`` docstring section documents its fields (``--help`` and :func:`field_docs` read it).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"model.family: a family's config must be a dataclass, got {cls!r}")
    by_name = {f.name: f for f in fields(cls)}
    missing = [n for n in COMMON_MODEL_FIELDS if n not in by_name]
    if missing:
        raise ConfigError(f"model.family: {cls.__name__} lacks the common field(s) {', '.join(missing)}")
    family = by_name["family"].default
    if not (isinstance(family, str) and family.isidentifier()):
        raise ConfigError(f"model.family: {cls.__name__}.family must default to the family's name, got {family!r}")
    MODEL_CONFIGS[family] = cls
    return cls


@functools.cache
def _load_families() -> None:
    # The families live above this layer (grokinterp.model.families, torch-free to import) and register
    # their config classes when imported; a run.json naming one is read without the caller importing it.
    importlib.import_module("grokinterp.model.families")


def model_config_classes() -> dict[str, type]:
    """Every installed family's config class, ``{family: class}``."""
    _load_families()
    return dict(MODEL_CONFIGS)


def model_config_class(family: Any) -> type:
    """The config class of ``family`` (:class:`ConfigError` naming ``model.family`` when unknown)."""
    if family not in MODEL_CONFIGS:
        _load_families()
    if not isinstance(family, str) or family not in MODEL_CONFIGS:
        raise ConfigError(f"model.family: unknown family {family!r}; known: {', '.join(sorted(MODEL_CONFIGS))}")
    return MODEL_CONFIGS[family]


def check_field_types(obj: Any, section: str) -> None:
    """``int`` fields hold integers and ``float`` fields numbers (:class:`ConfigError` naming ``section.field``)."""
    _check_ints(obj, section)


def check_common_model_fields(cfg: Any) -> None:
    """The checks of the :data:`COMMON_MODEL_FIELDS` of a family's config, as :class:`ModelConfig` makes them."""
    _require(is_int(cfg.p) and cfg.p >= 3, "model.p", "must be an integer of at least 3", cfg.p)
    _require(isinstance(cfg.eq_logit, bool), "model.eq_logit", "must be true or false", cfg.eq_logit)
    _require(is_int(cfg.n_ctx) and cfg.n_ctx >= 1, "model.n_ctx", "must be positive", cfg.n_ctx)
    _require(is_int(cfg.init_seed) and 0 <= cfg.init_seed <= LIMITS.init_seed, "model.init_seed",
             f"must lie in [0, {LIMITS.init_seed}]", cfg.init_seed)
    _require(_is_number(cfg.init_scale) and math.isfinite(cfg.init_scale) and cfg.init_scale > 0, "model.init_scale",
             "must be a positive number", cfg.init_scale)


@dataclass(frozen=True)
class TrainConfig:
    """Training: full-batch by default (the paper's AdamW recipe), or shuffled minibatches.

    Attributes:
        epochs: number of full-batch steps (≥ 0); with ``batch_size`` set, of passes over the
            training set (epochs), each ``ceil(n_train / batch_size)`` minibatch steps.
        lr: peak learning rate.
        weight_decay: weight decay (decoupled for ``adamw``, an L2 term in the gradient for
            ``adam`` and ``sgd``, as in ``torch.optim``).
        optimizer: a name in the optimizer registry (:mod:`grokinterp.training.optim`):
            ``adamw`` (default), ``adam`` or ``sgd``.
        beta1, beta2: Adam betas (paper: 0.9, 0.98).
        momentum: SGD momentum (only ``sgd`` reads it).
        grad_transforms: names of registered gradient transforms applied, in order, between
            backward and the optimizer step (:mod:`grokinterp.training.transforms`); none by default.
        warmup_epochs: linear warm-up of the learning rate over this many steps (0 = none;
            the paper's code uses 10).
        warmup_style: ``default``: the step from epoch ``e`` uses ``lr · min((e + 1) / warmup, 1)``
            (the first step already moves); ``paper``: ``lr · min(e / warmup, 1)``, the reference
            code's ``LambdaLR(lambda step: min(step / 10, 1))``, whose first step has learning rate 0.
        eval_every: test loss/accuracy and train accuracy are recorded every this many epochs
            (train loss is recorded every epoch; in a minibatch run train loss and accuracy are a
            full-training-set evaluation recorded with the test metrics).
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        fast_path: train on final-position logits from per-(position, token) tables (1-layer
            models); ``False`` uses the general hooked forward.
        lr_schedule: after the warm-up, ``constant`` (default) or ``cosine`` (half a cosine from
            ``lr`` down to 0 at the last step); see :meth:`lr_at`.
        weight_decay_on: ``all`` parameters (default) or only the ``matrices`` (embeddings,
            attention, MLP and unembedding weights; the biases and the LayerNorms' weights and biases
            are then not decayed). Built as two optimizer parameter groups.
        loss: the training loss, ``cross_entropy`` (softmax, float64; default) or ``stablemax``
            (StableMax cross-entropy of Prieto et al. 2025, float64: ``s(x) = x + 1`` for
            ``x ≥ 0`` and ``1 / (1 − x)`` for ``x < 0``, normalised; see
            :func:`grokinterp.training.step.stablemax_cross_entropy`) or ``mse`` (Omnigrok's mean
            squared error of the logits against one-hot targets, the mean over examples and classes,
            float64; accuracy stays the argmax). The metrics' train and test losses are this loss.
        batch_size: examples per optimizer step; unset (``None``, the default) trains full-batch.
            Each epoch is a fresh seeded permutation of the training set cut into
            ``ceil(n_train / batch_size)`` batches, the last one smaller when ``batch_size`` does
            not divide ``n_train`` (as PyTorch's ``DataLoader``; see
            :mod:`grokinterp.training.data`). At least 1, at most the number of training examples.
        sampler_seed: seed of the minibatch order (epoch ``e`` is a function of this seed and ``e``
            alone); unset (``None``) it is ``model.init_seed``, as one ``torch.manual_seed``
            drives both in the reference scripts. Read only when ``batch_size`` is set.
        grokfast_alpha: EMA momentum of the ``grokfast_ema`` gradient filter (Lee et al. 2024's
            ``alpha``), in ``[0, 1)``.
        grokfast_lamb: amplification of the Grokfast filters (their ``lamb``): the gradient
            becomes ``g + grokfast_lamb · filtered(g)``; ≥ 0.
        grokfast_window: window (steps) of the ``grokfast_ma`` moving-average filter (their
            ``window_size``), ≥ 1.
        weight_norm: keep the total parameter norm fixed: after every optimizer step all
            parameters (weights and biases, as one vector) are rescaled to the norm of the initial
            parameters, ``init_scale · ‖w₀‖`` (Omnigrok's constrained-norm runs).
        weight_norm_target: with ``weight_norm``, the total norm to hold instead of the initial
            one (a positive number; the parameters are rescaled to it after every step, the first
            included, as Omnigrok's runs at a fixed norm); unset: the initial norm.
        live_every: compute the live progress measures (provisional key frequencies, restricted
            and excluded loss, restricted accuracy, Gini of W_E, Σθ²) every this many epochs
            during training; 0 = off. Wired in by :func:`grokinterp.train` (the training loop
            itself never imports the analyses).
        init_from: start from a checkpoint of this parent run directory instead of the seeded
            initialisation (``grokinterp train --from RUN[@EPOCH]``; see
            :mod:`grokinterp.training.lineage`): the parameters are the checkpoint's bits, the
            optimizer starts afresh (its state at an arbitrary checkpoint is not stored), and
            ``epochs`` counts the child's own epochs. The parent's task split and model shapes must
            be the run's; the lineage (parent, epoch, file digests, subset) is recorded in
            ``run.json``.
        init_epoch: the parent's checkpoint (an epoch, or a step label for a step-labelled
            parent) to start from; ``None``: its last checkpoint, resolved and recorded when the
            run starts.
        dtype: the precision of training, ``float32`` (default) or ``float64`` (Omnigrok trains in
            float64): the parameters (the seeded float32 initialisation, converted exactly), the
            optimizer state, the forward and backward, the gradient transforms and the checkpoints
            (safetensors ``F64``) are in this dtype; the loss is float64 either way. Runs of one
            stack share it. Not with ``init_from`` (a parent's checkpoint is read as float32).
    """

    epochs: int = 40_000
    lr: float = 1e-3
    weight_decay: float = 1.0
    optimizer: str = "adamw"
    beta1: float = 0.9
    beta2: float = 0.98
    momentum: float = 0.9
    grad_transforms: tuple[str, ...] = ()
    warmup_epochs: int = 10
    warmup_style: str = "default"
    eval_every: int = 100
    device: str = "auto"
    fast_path: bool = True
    lr_schedule: str = "constant"
    weight_decay_on: str = "all"
    loss: str = "cross_entropy"
    grokfast_alpha: float = 0.98
    grokfast_lamb: float = 2.0
    grokfast_window: int = 100
    weight_norm: bool = False
    weight_norm_target: float | None = None
    live_every: int = 0
    batch_size: int | None = None
    sampler_seed: int | None = None
    init_from: str | None = None
    init_epoch: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _check_ints(self, "train")
        _require(self.dtype in DTYPES, "train.dtype", f"must be one of {', '.join(DTYPES)}", self.dtype)
        _require(self.dtype == "float32" or self.init_from is None, "train.dtype",
                 "float64 cannot be combined with train.init_from (the parent's checkpoint is read as float32)",
                 self.dtype)
        _require(self.init_from is None or (isinstance(self.init_from, str) and self.init_from.strip() != ""),
                 "train.init_from", "must be a run directory (a non-empty path) or unset", self.init_from)
        _require(self.init_epoch is None or (is_int(self.init_epoch) and self.init_epoch >= 0), "train.init_epoch",
                 "must be a non-negative checkpoint epoch or unset", self.init_epoch)
        _require(self.init_epoch is None or self.init_from is not None, "train.init_epoch",
                 "is read only with train.init_from (a parent run)", self.init_epoch)
        _require(0 <= self.epochs <= LIMITS.epochs, "train.epochs", f"must lie in [0, {LIMITS.epochs}]", self.epochs)
        _require(math.isfinite(self.lr) and self.lr > 0, "train.lr", "must be a positive number", self.lr)
        _require(
            math.isfinite(self.weight_decay) and self.weight_decay >= 0,
            "train.weight_decay", "must be non-negative", self.weight_decay,
        )
        for name in ("beta1", "beta2", "momentum"):
            v = getattr(self, name)
            _require(0.0 <= v < 1.0, f"train.{name}", "must lie in [0, 1)", v)
        _require(isinstance(self.optimizer, str) and self.optimizer.isidentifier(), "train.optimizer",
                 "must be the name of a registered optimizer", self.optimizer)
        if isinstance(self.grad_transforms, str):
            object.__setattr__(self, "grad_transforms", (self.grad_transforms,) if self.grad_transforms else ())
        try:
            names = tuple(self.grad_transforms)
        except TypeError:
            names = (None,)
        _require(all(isinstance(n, str) and n.isidentifier() for n in names), "train.grad_transforms",
                 "must be a list of registered gradient-transform names", self.grad_transforms)
        object.__setattr__(self, "grad_transforms", names)
        _require(self.warmup_epochs >= 0, "train.warmup_epochs", "must be non-negative", self.warmup_epochs)
        _require(self.warmup_style in WARMUP_STYLES, "train.warmup_style",
                 f"must be one of {', '.join(WARMUP_STYLES)}", self.warmup_style)
        _require(self.eval_every >= 1, "train.eval_every", "must be positive", self.eval_every)
        dev = str(self.device)
        ok = dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        _require(ok, "train.device", "must be auto, cpu, cuda, cuda:N or mps", self.device)
        _require(isinstance(self.fast_path, bool), "train.fast_path", "must be true or false", self.fast_path)
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("weight_decay_on", WEIGHT_DECAY_ON), ("loss", LOSSES)):
            v = getattr(self, name)
            _require(v in allowed, f"train.{name}", f"must be one of {', '.join(allowed)}", v)
        _require(0.0 <= self.grokfast_alpha < 1.0, "train.grokfast_alpha", "must lie in [0, 1)", self.grokfast_alpha)
        _require(math.isfinite(self.grokfast_lamb) and self.grokfast_lamb >= 0, "train.grokfast_lamb",
                 "must be a non-negative number", self.grokfast_lamb)
        _require(self.grokfast_window >= 1, "train.grokfast_window", "must be at least 1", self.grokfast_window)
        _require(isinstance(self.weight_norm, bool), "train.weight_norm", "must be true or false", self.weight_norm)
        _require(not (self.weight_norm and self.init_from is not None), "train.weight_norm",
                 "cannot be combined with train.init_from (its target norm comes from the seeded initialisation, "
                 "which a run started from a parent's checkpoint does not have)", self.weight_norm)
        wt = self.weight_norm_target
        _require(wt is None or (isinstance(wt, (int, float)) and not isinstance(wt, bool) and math.isfinite(wt)
                                and wt > 0), "train.weight_norm_target", "must be a positive number (or unset)", wt)
        _require(wt is None or self.weight_norm, "train.weight_norm_target",
                 "is read only with train.weight_norm true", wt)
        if wt is not None:
            object.__setattr__(self, "weight_norm_target", float(wt))
        _require(self.live_every >= 0, "train.live_every", "must be non-negative (0 = off)", self.live_every)
        _require(self.batch_size is None or (is_int(self.batch_size) and self.batch_size >= 1), "train.batch_size",
                 "must be a positive integer (or unset for full batch)", self.batch_size)
        _require(self.sampler_seed is None or (is_int(self.sampler_seed) and 0 <= self.sampler_seed <= LIMITS.init_seed),
                 "train.sampler_seed", f"must be an integer in [0, {LIMITS.init_seed}] (or unset)", self.sampler_seed)

    @property
    def value_bytes(self) -> int:
        """Bytes per parameter, gradient, optimizer-state and activation value (``dtype``): 4 or 8."""
        return 8 if self.dtype == "float64" else 4

    def lr_at(self, epoch: int, total: int | None = None) -> float:
        """Learning rate of the step that takes the model from ``epoch`` to ``epoch + 1``.

        In a minibatch run (``batch_size`` set) the schedule counts optimizer steps: ``epoch`` is
        the step and ``total`` the run's last (:meth:`RunConfig.total_steps`; default ``epochs``),
        so ``warmup_epochs`` is a number of steps and the cosine reaches 0 at the last step.

        Notes:
            Warm-up, ``default``: ``lr · min((epoch + 1) / warmup_epochs, 1)``: the first step
            already moves (at ``lr / warmup_epochs``). ``paper``: ``lr · min(epoch / warmup_epochs, 1)``,
            as the paper's ``LambdaLR(min(step / 10, 1))``, which spends its first step at learning rate 0.
            After the warm-up, ``constant`` keeps ``lr``; ``cosine``, with ``W = warmup_epochs`` and
            ``E = epochs``, uses ``lr · ½ (1 + cos(π (e − W) / (E − W)))`` for steps ``e ≥ W`` (from
            ``lr`` at the end of the warm-up towards 0 at the last step).
        """
        if self.lr_schedule == "cosine" and epoch >= self.warmup_epochs:
            span = max((self.epochs if total is None else int(total)) - self.warmup_epochs, 1)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - self.warmup_epochs) / span))
        if self.warmup_epochs <= 0:
            return self.lr
        shift = 0 if self.warmup_style == "paper" else 1
        return self.lr * min((epoch + shift) / self.warmup_epochs, 1.0)


@dataclass(frozen=True)
class CheckpointSchedule:
    """When to snapshot the parameters, and how many snapshots go into one shard file.

    Epoch ``e`` means "after ``e`` full-batch steps"; epoch 0 (the initialisation) and the final
    epoch are always included. In a minibatch run (``train.batch_size`` set) the schedule counts
    optimizer steps instead, from step 0 to the last (``train.epochs`` · steps per epoch), unless
    ``unit`` says ``epoch`` (see :meth:`RunConfig.checkpoint_unit`).

    Attributes:
        every: a checkpoint every this many epochs (default 100).
        windows: dense windows ``(start, stop, every)``: a checkpoint every ``every`` epochs in
            ``[start, stop]`` (e.g. ``((1000, 15000, 10),)``).
        log_early: this many log-spaced checkpoints between epoch 1 and ``every`` (the first steps
            change the weights fastest).
        flush_every: snapshots per shard; they wait in a device-side buffer until then.
        unit: what ``every``, ``windows`` and ``log_early`` count: ``epoch`` or ``step``
            (optimizer steps); unset (``None``, the default) it is ``step`` for a minibatch run and
            ``epoch`` otherwise (a full-batch step is an epoch, so there the two agree).

    Example:
        >>> CheckpointSchedule(every=100, windows=((200, 300, 50),)).epochs(400).tolist()
        [0, 100, 200, 250, 300, 400]
    """

    every: int = 100
    windows: tuple[tuple[int, int, int], ...] = ()
    log_early: int = 0
    flush_every: int = 50
    unit: str | None = None

    def __post_init__(self) -> None:
        _check_ints(self, "checkpoints")
        _require(self.unit in (None, *CHECKPOINT_UNITS), "checkpoints.unit",
                 f"must be one of {', '.join(CHECKPOINT_UNITS)} (or unset)", self.unit)
        _require(self.every >= 1, "checkpoints.every", "must be positive", self.every)
        _require(self.log_early >= 0, "checkpoints.log_early", "must be non-negative", self.log_early)
        _require(self.flush_every >= 1, "checkpoints.flush_every", "must be positive", self.flush_every)
        try:
            windows = tuple(tuple(int(x) for x in w) for w in self.windows)
        except (TypeError, ValueError):
            raise ConfigError(
                f"checkpoints.windows: must be a list of (start, stop, every) triples, got {self.windows!r}"
            ) from None
        for w in windows:
            if len(w) != 3 or w[0] < 0 or w[1] < w[0] or w[2] < 1:
                raise ConfigError(
                    f"checkpoints.windows: each window must be (start ≥ 0, stop ≥ start, every ≥ 1), got {w!r}"
                )
        object.__setattr__(self, "windows", windows)

    def epochs(self, n_epochs: int) -> np.ndarray:
        """Sorted unique checkpoint epochs in ``[0, n_epochs]`` (int64)."""
        pts = set(range(0, n_epochs + 1, self.every))
        pts.add(n_epochs)
        for start, stop, step in self.windows:
            pts.update(range(start, min(stop, n_epochs) + 1, step))
        if self.log_early and min(self.every, n_epochs) > 1:
            hi = min(self.every, n_epochs)
            pts.update(int(x) for x in np.unique(np.round(np.geomspace(1, hi, self.log_early + 1))))
        return np.array(sorted(pts), dtype=np.int64)


#: Fields added after the first release, per section. A ``run.json`` written before a field
#: existed lacks it; the field's default reproduces what those runs did. Format-version policy:
#: new config fields never bump :data:`FORMAT_VERSION` (they are optional on read, always written);
#: the version is bumped only when files, tensor names or the meaning of an existing field change,
#: and a reader refuses runs of a newer version with a message to upgrade. An older grokinterp
#: reading a run that uses a newer field refuses it, naming the field.
_ADDED_FIELDS: dict[str, set[str]] = {
    "task": {"split_method", "eq_logit", "n_train", "subset_seed", "random_labels", "label_seed", "train_size",
             "data"},
    "model": {"family", "eq_logit", "init_method", "init_scale", "attn_coeff", "layer_norm", "ln_style", "bias",
              "input_layout", "pos_embed"},
    "checkpoints": {"unit"},
    "train": {"optimizer", "momentum", "grad_transforms", "warmup_style", "lr_schedule", "weight_decay_on", "loss",
              "grokfast_alpha", "grokfast_lamb", "grokfast_window", "weight_norm", "weight_norm_target",
              "live_every", "batch_size", "sampler_seed", "init_from", "init_epoch", "dtype"},
}

#: The sections of a :class:`RunConfig`, in ``run.json`` order.
SECTIONS = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "checkpoints": CheckpointSchedule}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; serialised into the run directory's ``run.json``.

    ``model.p`` must equal ``task.p`` (use :func:`make_config`, which keeps them in step).
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: CheckpointSchedule = field(default_factory=CheckpointSchedule)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls) and not (name == "model" and _is_model_config(self.model)):
                raise ConfigError(f"{name}: must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.model.p != self.task.p:
            raise ConfigError(f"model.p: must equal task.p ({self.task.p}: the model's vocabulary follows the task; "
                              f"make_config keeps them in step), got {self.model.p}")
        if self.model.eq_logit != self.task.eq_logit:
            raise ConfigError(f"model.eq_logit: must equal task.eq_logit ({self.task.eq_logit}), got "
                              f"{self.model.eq_logit}")
        task = self.task.task()
        d_input = getattr(self.model, "d_input", 0)
        if getattr(task, "vector_input", False) and d_input != task.n_ctx:
            raise ConfigError(f"model.d_input: the task {task.describe()} gives vectors of {task.n_ctx}; the model "
                              f"must read them (an mlp with d_input = {task.n_ctx}), got d_input = {d_input}")
        if getattr(task, "vector_input", False) and self.train.live_every:
            raise ConfigError(f"train.live_every: the live measures (restricted / excluded loss, Gini of the Fourier "
                              f"spectra) are undefined for the dataset task {self.task.operation}; leave it 0, got "
                              f"{self.train.live_every}")
        if not getattr(task, "vector_input", False) and d_input:
            raise ConfigError(f"model.d_input: the task {task.describe()} gives operand tokens, not vectors; give "
                              f"d_input 0, got {d_input}")
        layout = getattr(self.model, "input_layout", "a_b_eq")  # a family without layouts reads the task's rows
        if INPUT_LAYOUTS[layout].op_token and task.n_ctx != 3:
            raise ConfigError(f"model.input_layout: {layout} inserts an operation token into [a, b, =] rows; the task "
                              f"{task.describe()} has {task.n_ctx} positions")
        n_ctx = INPUT_LAYOUTS[layout].n_ctx(task)
        if self.model.n_ctx != n_ctx:
            raise ConfigError(f"model.n_ctx: the task {task.describe()} in the {layout} layout needs "
                              f"n_ctx = {n_ctx}, got {self.model.n_ctx}")
        if (self.model.d_vocab, self.model.d_vocab_out) != (task.d_vocab + INPUT_LAYOUTS[layout].extra_vocab,
                                                            task.d_vocab_out):
            raise ConfigError(f"model.p: the model's vocabulary ({self.model.d_vocab} in, {self.model.d_vocab_out} "
                              f"out) does not match the task's ({task.d_vocab} in, {task.d_vocab_out} out)")
        if self.train.batch_size is not None:
            n_train = self.n_train()
            if self.train.batch_size > n_train:
                raise ConfigError(f"train.batch_size: {self.train.batch_size} is larger than the {n_train} training "
                                  f"examples of this task and split (task.frac_train {self.task.frac_train}); give at "
                                  f"most {n_train}, or leave it unset for full batch")
            steps = self.total_steps()
            if steps > LIMITS.epochs:
                raise ConfigError(f"train.epochs: {self.train.epochs} epochs of {steps // max(self.train.epochs, 1)} "
                                  f"steps (batch_size {self.train.batch_size}) are {steps} optimizer steps, more than "
                                  f"the limit of {LIMITS.epochs}")
        n_ckpt = self.checkpoint_count_bound()
        if n_ckpt > LIMITS.checkpoints:
            raise ConfigError(f"checkpoints: the schedule has up to {n_ckpt} checkpoints over {self.train.epochs} "
                              f"epochs, more than the limit of {LIMITS.checkpoints}")
        n_shards = -(-n_ckpt // self.checkpoints.flush_every)
        if n_shards > LIMITS.shards:
            raise ConfigError(f"checkpoints.flush_every: {n_ckpt} checkpoints in shards of {self.checkpoints.flush_every} "
                              f"make up to {n_shards} files, more than the limit of {LIMITS.shards}")

    def n_train(self) -> int:
        """Number of training examples (the size of the task's seeded train split)."""
        return self._n_train

    @functools.cached_property
    def _n_train(self) -> int:
        from .tasks import split_pairs

        return len(split_pairs(self.task)[0])

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: ``ceil(n_train / batch_size)``, 1 for full batch."""
        B = self.train.batch_size
        return 1 if B is None else -(-self.n_train() // B)

    def total_steps(self) -> int:
        """Optimizer steps of the whole run: ``train.epochs · steps_per_epoch()``."""
        return self.train.epochs * self.steps_per_epoch()

    def checkpoint_unit(self) -> str:
        """What the checkpoint schedule counts: ``checkpoints.unit``, or when unset ``step`` for a
        minibatch run and ``epoch`` otherwise."""
        if self.checkpoints.unit is not None:
            return self.checkpoints.unit
        return "epoch" if self.train.batch_size is None else "step"

    def checkpoint_epochs(self) -> np.ndarray:
        """The checkpoint schedule, in :meth:`checkpoint_unit` units (epochs, or optimizer steps up to
        :meth:`total_steps`)."""
        return self.checkpoints.epochs(self._schedule_end())

    def _schedule_end(self) -> int:
        if self.train.batch_size is None or self.checkpoint_unit() == "epoch":
            return self.train.epochs
        return self.total_steps()

    def checkpoint_count_bound(self) -> int:
        """An upper bound on ``len(checkpoint_epochs())``, computed without building the schedule."""
        E, ck = self._schedule_end(), self.checkpoints
        return (E // ck.every + 2 + ck.log_early
                + sum(max(min(stop, E) - start, -1) // step + 1 for start, stop, step in ck.windows))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """A JSON-ready nested dict (tuples become lists, so it equals its own JSON round trip)."""
        import json

        return json.loads(json.dumps({name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> "RunConfig":
        """Rebuild from :meth:`to_dict` output, strictly: unknown fields raise, and so do missing
        ones, except fields added after format 1 (:data:`_ADDED_FIELDS`), which take their defaults
        (defaults that reproduce the behaviour of the runs written before them).

        ``source`` names where the dict came from (a file path) in error messages.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the config must be a JSON object, got {type(data).__name__}")
        extra = set(data) - set(SECTIONS)
        missing = set(SECTIONS) - set(data)
        if extra or missing:
            raise ConfigError(
                f"{source}: config sections {sorted(missing)} missing, {sorted(extra)} unexpected"
            )
        kwargs = {}
        for name, sec_cls in SECTIONS.items():
            sec = data[name]
            if not isinstance(sec, dict):
                raise ConfigError(f"{source}: {name} must be a JSON object, got {type(sec).__name__}")
            added = _ADDED_FIELDS.get(name, set())
            if name == "model":  # the family's own class (a run.json without 'family' is a transformer's)
                try:
                    sec_cls = model_config_class(sec.get("family", "transformer"))
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
                added = added if sec_cls is ModelConfig else set(getattr(sec_cls, "ADDED_FIELDS", ()))
            names = {f.name for f in fields(sec_cls)}
            extra, missing = set(sec) - names, (names - set(sec)) - added
            if extra:
                raise ConfigError(f"{source}: unexpected field(s) {', '.join(f'{name}.{e}' for e in sorted(extra))} "
                                  f"(written by a newer grokinterp? upgrade to read it)")
            if missing:
                raise ConfigError(f"{source}: missing field(s) {', '.join(f'{name}.{m}' for m in sorted(missing))}")
            try:
                kwargs[name] = sec_cls(**sec)
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{source}: {name}: {e}") from None
        return cls(**kwargs)

    def replace(self, **overrides: Any) -> "RunConfig":
        """A copy with fields overridden by bare name (``p=97``, ``lr=3e-3``, ``every=50``)."""
        return _apply_overrides(self, overrides)


#: Fields held by both the task and the model sections (the vocabulary), always set together.
_SHARED = ("p", "eq_logit")


def _is_model_config(obj: Any) -> bool:
    return type(obj) in MODEL_CONFIGS.values()


def field_docs(family: str | None = None) -> dict[tuple[str, str], str]:
    """What each config field means: ``{(section, field): text}``, read from the ``Attributes:``
    section of each section class's docstring (the one place fields are documented; the CLI's
    ``--help`` shows it). ``family`` picks the model section's class (default: the transformer's)."""
    out: dict[tuple[str, str], str] = {}
    classes = dict(SECTIONS)
    if family is not None:
        classes["model"] = model_config_class(family)
    for sec, cls in classes.items():
        lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
        if "Attributes:" not in lines:
            continue
        names: list[str] = []
        for line in lines[lines.index("Attributes:") + 1:]:
            if line.strip() and not line.startswith("    "):
                break  # the next section (Example:, Notes:)
            m = re.match(r"    ([a-z_0-9]+(?:, [a-z_0-9]+)*): (.*)", line)
            if m:
                names = m.group(1).split(", ")
                for n in names:
                    out[(sec, n)] = m.group(2).strip()
            elif line.strip() and names:
                for n in names:
                    out[(sec, n)] += " " + line.strip()
    return out


def interventions(cfg: RunConfig) -> list[str]:
    """The training interventions a run uses, one short line each (what ``grokinterp info`` and the
    report show); ``[]`` for the paper's recipe (AdamW, softmax cross-entropy, standard attention
    and initialisation).

    Example:
        >>> interventions(make_config("tiny", grad_transforms=("grokfast_ema",), init_scale=2.0))
        ['grad_transforms: grokfast_ema (grokfast_alpha 0.98, grokfast_lamb 2.0)', 'init_scale: 2.0']
    """
    m, t = cfg.model, cfg.train
    out = []
    if t.optimizer != "adamw":
        out.append(f"optimizer: {t.optimizer}" + (f" (momentum {t.momentum})" if t.optimizer == "sgd" else ""))
    if t.grad_transforms:
        extra = []
        if any(n == "grokfast_ema" for n in t.grad_transforms):
            extra += [f"grokfast_alpha {t.grokfast_alpha}"]
        if any(n == "grokfast_ma" for n in t.grad_transforms):
            extra += [f"grokfast_window {t.grokfast_window}"]
        if any(n.startswith("grokfast_") for n in t.grad_transforms):
            extra += [f"grokfast_lamb {t.grokfast_lamb}"]
        out.append(f"grad_transforms: {', '.join(t.grad_transforms)}" + (f" ({', '.join(extra)})" if extra else ""))
    for name, default in (("loss", "cross_entropy"), ("lr_schedule", "constant"), ("weight_decay_on", "all")):
        if getattr(t, name) != default:
            out.append(f"{name}: {getattr(t, name)}")
    if m.init_scale != 1.0:
        out.append(f"init_scale: {m.init_scale}")
    if t.dtype != "float32":
        out.append(f"dtype: {t.dtype}")
    if t.weight_norm:
        out.append("weight_norm: on (total parameter norm held at "
                   + ("init_scale · ‖w₀‖)" if t.weight_norm_target is None else f"{t.weight_norm_target:g})"))
    if getattr(m, "attn_coeff", 1.0) != 1.0:  # a transformer field
        out.append(f"attn_coeff: {m.attn_coeff}")
    k = cfg.task
    if k.n_train is not None:
        out.append(f"n_train: {k.n_train} of the split's training pairs (subset_seed {k.subset_seed})")
    if k.random_labels:
        out.append(f"random_labels: on (label_seed {k.label_seed})")
    if t.init_from is not None:
        at = "its last checkpoint" if t.init_epoch is None else f"checkpoint {t.init_epoch}"
        out.append(f"init_from: {t.init_from} at {at} (fresh optimizer)")
    return out


def _section_fields(sec: str) -> set[str]:
    """The fields of a section; for ``model``, of every installed family's config."""
    if sec == "model":
        return {f.name for cls in model_config_classes().values() for f in fields(cls)}
    return {f.name for f in fields(SECTIONS[sec])}


def _field_owner() -> dict[str, list[str]]:
    owner: dict[str, list[str]] = {}
    for sec in SECTIONS:
        for name in sorted(_section_fields(sec)):
            owner.setdefault(name, []).append(sec)
    return owner


def _model_section(current: Any, kw: dict[str, Any]) -> Any:
    """The model config after overrides ``kw``: the same family's config replaced, or, when ``family``
    names another, that family's config keeping the :data:`COMMON_MODEL_FIELDS` (the old family's other
    fields are not its own: unused). A field the target family does not have is refused, naming it."""
    family = kw.get("family", current.family)
    cls = model_config_class(family)
    own = {f.name for f in fields(cls)}
    foreign = sorted(set(kw) - own)
    if foreign:
        owners = [fam for fam, c in model_config_classes().items() if foreign[0] in {f.name for f in fields(c)}]
        raise ConfigError(f"model.{foreign[0]}: not a field of the {family} family (a field of "
                          f"{', '.join(owners) or 'no family'}); its fields: {', '.join(sorted(own))}")
    if type(current) is cls:
        return dataclasses.replace(current, **kw)
    return cls(**{**{n: getattr(current, n) for n in COMMON_MODEL_FIELDS if n != "family"}, **kw})


def _fix_group_size(cfg: RunConfig, per_section: dict[str, dict[str, Any]]) -> None:
    """A task whose name fixes its size (a group) takes ``p`` from it; another ``p`` is refused."""
    op = per_section["task"].get("operation", cfg.task.operation)
    if not isinstance(op, str):
        return
    size = fixed_size(op)
    if size is None:
        return
    given = [v for v in (per_section["task"].get("p"), per_section["model"].get("p")) if v is not None]
    for v in given:
        if not (is_int(v) and int(v) == size):
            what = (f"a dataset task of {size} classes: its output vocabulary is set by the data" if is_dataset_task(op)
                    else f"a group of order {size}: its vocabulary is set by the group")
            raise ConfigError(f"task.p: {op} is {what}; leave p out, got {v!r}")
    per_section["task"]["p"] = per_section["model"]["p"] = size


def _fix_input_width(cfg: RunConfig, per_section: dict[str, dict[str, Any]]) -> None:
    """A dataset task (vectors) sets the model's ``d_input`` and ``n_ctx`` to its input width (and
    ``d_embed`` to 0 unless given); leaving one for a token task resets them. Only the ``mlp`` family
    reads vectors: another family is refused, naming the field."""
    op = per_section["task"].get("operation", cfg.task.operation)
    model = per_section["model"]
    family = model.get("family", cfg.model.family)
    if not isinstance(op, str):
        return
    if is_dataset_task(op):
        data = per_section["task"].get("data", getattr(cfg.task, "data", None))
        try:
            width = get_task(op, per_section["task"].get("p", 10), None, data).n_ctx
        except ConfigError:
            if "operation" in per_section["task"] or "data" in per_section["task"]:
                raise
            return  # the task section itself names what is wrong
        if family != "mlp":
            raise ConfigError(f"model.family: {op} classifies input vectors; only the mlp family reads them "
                              f"(give --family mlp, or --preset omnigrok-digits), got {family!r}")
        model.setdefault("d_input", width)
        model["n_ctx"] = width
        if "d_embed" not in model and (family != cfg.model.family or getattr(cfg.model, "d_embed", 0)):
            model["d_embed"] = 0
        return
    for name in ("train_size", "data"):  # a dataset task's fields do not carry over to a token task
        if getattr(cfg.task, name, None) is not None and name not in per_section["task"]:
            per_section["task"][name] = None
    if family == "mlp" and getattr(cfg.model, "d_input", 0) and "d_input" not in model \
            and cfg.model.family == "mlp":
        model["d_input"] = 0
        model.setdefault("n_ctx", 3)


def _apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    owner = _field_owner()
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in overrides.items():
        if "." in key:
            sec, name = key.split(".", 1)
            if sec not in SECTIONS or name not in _section_fields(sec):
                raise ConfigError(f"{key}: no such config field")
            per_section[sec][name] = value
            if name in _SHARED:  # keep the model's vocabulary in step with the task
                per_section["task" if sec == "model" else "model"][name] = value
            continue
        if key not in owner:
            raise ConfigError(f"{key}: no such config field; fields: {', '.join(sorted(owner))}")
        for sec in owner[key]:  # 'p' and 'eq_logit' live in task and model: set both
            per_section[sec][key] = value
    _fix_group_size(cfg, per_section)
    _fix_input_width(cfg, per_section)
    model = per_section["model"]
    if "input_layout" in model and "n_ctx" not in model and model["input_layout"] in INPUT_LAYOUTS:
        # the context follows the layout ([a, b, =]: 3, [a, b]: 2) unless given
        task = (per_section["task"].get("operation", cfg.task.operation), per_section["task"].get("p", cfg.task.p))
        try:
            model["n_ctx"] = INPUT_LAYOUTS[model["input_layout"]].n_ctx(get_task(*task))
        except (ConfigError, TypeError, ValueError):
            pass  # the task itself is wrong: its section names the field
    sections = {
        s: (_model_section(cfg.model, kw) if s == "model" else dataclasses.replace(getattr(cfg, s), **kw))
        if kw else getattr(cfg, s)
        for s, kw in per_section.items()
    }
    return RunConfig(**sections)


def _preset_paper() -> RunConfig:
    # The paper's run, with the live progress measures every 100 epochs (they add ~1 % to training).
    return _apply_overrides(RunConfig(), dict(live_every=100))


def _preset_quick() -> RunConfig:
    # Paper architecture and recipe, with p = 97, 40 % of the pairs and lr 2e-3 so that the three
    # phases play out in ~3k epochs (memorization by ~300, test accuracy 99 % near 1.4k, cleanup
    # until ~2k): a few minutes on a 2-core CPU.
    return _apply_overrides(
        RunConfig(),
        dict(p=97, frac_train=0.4, epochs=3000, lr=2e-3, weight_decay=1.0, eval_every=25,
             every=25, log_early=6, flush_every=40, live_every=25),
    )


def _preset_tiny() -> RunConfig:
    return _apply_overrides(
        RunConfig(),
        dict(p=31, frac_train=0.7, d_model=64, n_heads=4, d_mlp=128, epochs=1000, lr=1e-2, weight_decay=2.0,
             eval_every=10, every=20, log_early=4, flush_every=10, device="cpu"),
    )


def _preset_paper_exact() -> RunConfig:
    # The paper's recipe with the reference code's conventions: an output logit for '=', its split
    # (random.shuffle), its warm-up (first step at lr 0) and its initialisation order and layout.
    return _apply_overrides(
        _preset_paper(),
        dict(eq_logit=True, split_method="paper", warmup_style="paper", init_method="paper"),
    )


def _preset_mlp_devinterp() -> RunConfig:
    # devinterp's grokking example (timaeus-research/devinterp, examples/grokking): p = 53, 40 % of the
    # pairs; an MLP with one embedding (width 12) shared by a and b, two biased 12 → 48 maps summed, GELU,
    # a 48 → 53 unembedding without bias; torch's Adam (weight decay 2e-4 as an L2 term, lr 5e-3, betas
    # 0.9 / 0.999, no warm-up), batches of 128, 25k steps: 1,124 training pairs are 9 steps an epoch, so
    # 2,778 epochs (25,002 steps). Checkpoints count steps (a minibatch run): every 250, ~100 as theirs.
    # Not theirs: each of their steps takes the first batch of a fresh shuffle (next(iter(DataLoader))),
    # ours go through the training set epoch by epoch; their split shuffles a set's order (not reproducible).
    return _apply_overrides(
        RunConfig(),
        dict(p=53, frac_train=0.4, family="mlp", d_embed=12, d_hidden=48, n_hidden_layers=1, act_fn="gelu",
             combine="sum", unembed_bias=False, optimizer="adam", lr=5e-3, weight_decay=2e-4, beta2=0.999,
             warmup_epochs=0, batch_size=128, epochs=2778, eval_every=10, every=250, log_early=6, flush_every=20),
    )


def _preset_grokfast_lee() -> RunConfig:
    # Lee et al. 2024's (Grokfast, ironjr/grokfast main.py) algorithmic setting, baseline: x · y mod 97 with
    # x in 0..96, y in 1..96 (9,312 equations), tokens [x, op, y, =] (vocabulary p + 2), a 2-layer causal
    # decoder of width 128, 4 heads, MLP 4 × 128 GELU, biases everywhere but the unembedding, their block
    # (x = ln_1(x); x = x + attn(x); x = x + mlp(ln_2(x))) and a final LayerNorm; half the equations for
    # training; torch's Adam (weight decay an L2 term; 0 in the baseline), lr 1e-3, betas 0.9 / 0.98, the
    # LambdaLR warm-up over the first 10 updates (the first at lr 0), batches of 512 over a fresh shuffle
    # each epoch (10 steps an epoch); test accuracy every epoch as theirs. 10k epochs = 100k steps (theirs:
    # 300k); their baseline reaches 95 % validation accuracy at 39,890 steps. Checkpoints count steps.
    # A checkpoint every 250 steps, written every 8 (2,000 steps): an interrupted run loses little.
    # Not theirs: the initialisation (ours N(0, 1/d_model) for the embeddings, theirs torch's N(0, 1)), the
    # split and batch order (ours seeded numpy/our sampler, theirs torch.randperm), see docs/anchors.md.
    return _apply_overrides(
        RunConfig(),
        dict(p=97, operation="mul_b_nonzero", frac_train=0.5, input_layout="a_op_b_eq", n_layers=2, d_model=128,
             n_heads=4, d_mlp=512, act_fn="gelu", layer_norm=True, ln_style="in_place", bias="all",
             optimizer="adam", lr=1e-3, beta1=0.9, beta2=0.98, weight_decay=0.0, warmup_epochs=10,
             warmup_style="paper", batch_size=512, epochs=10_000, eval_every=1, every=250, log_early=6,
             flush_every=8),
    )


def _preset_grokfast_lee_ema() -> RunConfig:
    # Their headline Grokfast run: --filter ema --alpha 0.98 --lamb 2.0 --weight_decay 0.005 (910 steps to
    # 95 % validation accuracy). The filter and the weight decay change together, as theirs.
    return _apply_overrides(
        _preset_grokfast_lee(),
        dict(grad_transforms=("grokfast_ema",), grokfast_alpha=0.98, grokfast_lamb=2.0, weight_decay=0.005,
             epochs=1000),
    )


def _preset_power() -> RunConfig:
    # Power et al. 2022's model and optimizer (openai/grok: grok/transformer.py, grok/training.py, grok/data.py;
    # docs/anchors.md): x / y mod 97 (y ≠ 0, 9,312 equations), half for training; tokens [x, op, y, =]
    # (theirs <eos> x op y = c <eos>); a 2-layer causal decoder, width 128, 4 heads, ReLU MLP 4 × 128, post-LN
    # blocks (x = LN(x + attn(x)), x = LN(x + mlp(x))) with LayerNorm weights and biases, no other bias, fixed
    # sinusoidal positions, an untied unembedding, PyTorch's default initialisation (embeddings N(0, 1): the
    # fixed positions have entries of size 1, so N(0, 1/d_model) embeddings would be drowned by them); no
    # dropout (their default 0). AdamW (decoupled decay of every
    # parameter), lr 1e-3, betas 0.9 / 0.98, eps 1e-8, weight decay 1 (the paper's appendix; their code's
    # default is 0), the LambdaLR warm-up over the first 10 updates (the first at lr 0), batches of
    # min(512, ceil(n_train / 2)) = 512 here over a fresh shuffle each epoch (10 steps an epoch), 10^5 updates.
    return _apply_overrides(
        RunConfig(),
        dict(p=97, operation="div", frac_train=0.5, input_layout="a_op_b_eq", n_layers=2, d_model=128, n_heads=4,
             d_mlp=512, act_fn="relu", layer_norm=True, ln_style="post", bias="norm", pos_embed="sinusoidal",
             init_method="torch",
             optimizer="adamw", lr=1e-3, beta1=0.9, beta2=0.98, weight_decay=1.0, weight_decay_on="all",
             warmup_epochs=10, warmup_style="paper", batch_size=512, epochs=10_000, eval_every=10, every=250,
             log_early=6, flush_every=8),
    )


def _preset_omnigrok_digits() -> RunConfig:
    # Omnigrok's MNIST recipe (Liu, Michaud & Tegmark 2022; their mnist-grokking notebook and
    # train-mnist-mlp script) on scikit-learn's 8x8 digits (no download): 1,000 training images, an MLP of
    # three Linear layers (64 -> 200 -> 200 -> 10, biases, ReLU), every initial parameter times alpha = 8,
    # MSE on one-hot targets, AdamW lr 1e-3 (torch's betas 0.9 / 0.999), weight decay 0.01, batches of 200
    # (5 steps an epoch), 100k steps = 20,000 epochs. Not theirs: float32 (they train in float64: `dtype="float64"`,
    # `--dtype float64`, trains as they do; analyses/omnigrok_digits.py --arms recipe64), a seeded
    # draw of the 1,000 images (theirs: the first 1,000), and the 797 other digits as the test set.
    return _apply_overrides(
        RunConfig(),
        dict(operation="digits", train_size=1000, family="mlp", d_embed=0, d_hidden=200, n_hidden_layers=2,
             act_fn="relu", hidden_bias=True, unembed_bias=True, init_scale=8.0, loss="mse", optimizer="adamw",
             lr=1e-3, weight_decay=0.01, beta2=0.999, warmup_epochs=0, batch_size=200, epochs=20000,
             eval_every=10, every=500, log_early=6, flush_every=20),
    )


#: Named starting points. ``paper``: Nanda et al. 2023 (p = 113, 30 % data, 40k epochs), in our
#: conventions. ``paper-exact``: the same with the reference code's conventions (``=`` logit, split,
#: warm-up, initialisation), so a seed gives the published code's split and initial tensors.
#: ``quick``: groks on a 2-core CPU and shows the phases. ``tiny``: seconds, for tests.
#: ``mlp-devinterp``: devinterp's grokking MLP (the ``mlp`` family). ``grokfast-lee`` and
#: ``grokfast-lee-ema``: Lee et al.'s Grokfast setting, baseline and headline EMA filter. ``power``: Power et
#: al. 2022's decoder and optimizer on x / y mod 97.
PRESETS = {"paper": _preset_paper, "paper-exact": _preset_paper_exact, "quick": _preset_quick,
           "tiny": _preset_tiny, "mlp-devinterp": _preset_mlp_devinterp, "grokfast-lee": _preset_grokfast_lee,
           "grokfast-lee-ema": _preset_grokfast_lee_ema, "power": _preset_power,
           "omnigrok-digits": _preset_omnigrok_digits}
#: One line per preset, for ``--help`` (no config is built to print it).
PRESET_HELP = {
    "paper": "Nanda et al. 2023: p = 113, 30% of pairs, AdamW lr 1e-3, wd 1, 40k epochs",
    "paper-exact": "paper, with the reference code's conventions: '=' logit, its split, warm-up and init",
    "quick": "p = 97, 40% of pairs, lr 2e-3, 3k epochs: groks on a CPU and shows the three phases",
    "tiny": "p = 31, small model, 1k epochs: seconds, for tests",
    "mlp-devinterp": "devinterp's grokking MLP: p = 53, 40% of pairs, embedding 12, hidden 48, GELU, Adam lr 5e-3, "
                     "wd 2e-4, batch 128, 25k steps",
    "grokfast-lee": "Lee et al.'s Grokfast baseline: x·y mod 97 (y ≠ 0), [x, op, y, =], 2-layer LN decoder width 128, "
                    "50% of pairs, Adam lr 1e-3, wd 0, batch 512, 100k steps",
    "grokfast-lee-ema": "grokfast-lee with their headline EMA filter (alpha 0.98, lamb 2) and weight decay 0.005, "
                        "10k steps",
    "power": "Power et al. 2022: x/y mod 97 (y ≠ 0), [x, op, y, =], 2-layer post-LN decoder width 128, sinusoidal "
             "positions, 50% of pairs, AdamW lr 1e-3 wd 1, batch 512, 100k steps",
    "omnigrok-digits": "Omnigrok's MNIST recipe on sklearn's 8x8 digits: 1,000 images, MLP 64-200-200-10 ReLU, "
                       "init x8, MSE, AdamW lr 1e-3 wd 0.01, batch 200, 100k steps",
}


def make_config(preset: str = "quick", **overrides: Any) -> RunConfig:
    """A preset's :class:`RunConfig` with fields overridden by name.

    Args:
        preset: ``paper``, ``paper-exact``, ``quick`` (default) or ``tiny``.
        **overrides: any config field by bare name (``p``, ``lr``, ``every``) or dotted name
            (``train.epochs``). ``p`` updates both the task and the model.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return _apply_overrides(PRESETS[preset](), overrides)
