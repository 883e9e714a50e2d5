"""What analyses accept, resolved and checked in one place.

Analyses take a model, a :class:`~grokinterp.store.run.Run`, a parameter dict (single or stacked
``[ckpt, ...]``), or tensors laid out over the input grid. This module turns each into what the
computation needs and refuses anything else with a message naming the argument and its shape:

* :func:`as_params`, :func:`resolve_model` — parameters and the :class:`ModelConfig`;
* :func:`residue_outputs` — the one place where a model's ``=`` output logit is dropped;
* :func:`check_square_axes` — the ``p``-sized axes of a grid tensor (logits, activations);
* :func:`check_indices` — neuron / head indices;
* :func:`check_freq_list` — frequencies of the Fourier basis of ``Z_p``;
* :func:`check_grid_pairs` — grid indices ``a * p + b`` that must be pairs of the task;
* :func:`run_task_arrays` — a run's labels, splits and valid pairs as tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import INPUT_LAYOUTS, ModelConfig, RunConfig, is_int
from ..errors import AnalysisError
from ..tasks import get_task

__all__ = [
    "is_run", "as_params", "resolve_model", "residue_outputs", "infer_config", "check_square_axes", "check_indices",
    "check_freq_list", "check_grid_pairs", "task_label_grid", "run_task_arrays", "task_arrays",
]


def is_run(x: Any) -> bool:
    """Whether ``x`` is a loaded run (duck-typed: analyses never import the loader)."""
    return hasattr(x, "split_pairs") and hasattr(x, "params") and hasattr(x, "config")


def as_params(model_or_params: Any) -> dict[str, Tensor]:
    """Parameters of a model, or a ``{name: tensor}`` dict, as a plain dict (no grad), with the
    residue outputs only (:func:`residue_outputs`: an ``=`` output logit is dropped)."""
    if hasattr(model_or_params, "named_parameters"):
        cfg = getattr(model_or_params, "cfg", None)
        return residue_outputs({k: v.detach() for k, v in model_or_params.named_parameters()},
                               cfg if hasattr(cfg, "eq_logit") and hasattr(cfg, "family") else None)[0]
    if isinstance(model_or_params, dict):
        return residue_outputs(model_or_params)[0]
    raise AnalysisError(f"expected a model or a dict of parameters, got {type(model_or_params).__name__}")


def residue_outputs(params: dict[str, Tensor], cfg: ModelConfig | None = None) -> tuple[dict[str, Tensor], ModelConfig | None]:
    """The model restricted to its residue outputs: ``W_U [..., d_model, p]`` and ``eq_logit = False``.

    A model trained with an output logit for ``=`` (``eq_logit``, the paper's code) has
    ``d_vocab_out = p + 1``. Every analysis works on the ``p`` residue logits, as the paper's own
    analysis code does (``logits[..., :-1]``): Fourier transforms over the output axis, restricted
    and excluded losses, accuracies (an input is classified among the residues). Analysis losses
    of such a model therefore leave ``=`` out of the softmax, unlike the training loss.

    Args:
        params: parameters, single or stacked ``[ckpt, ...]`` (left unchanged when they have no
            ``=`` logit: ``W_U`` has as many columns as ``W_E`` has rows minus one).
        cfg: the model config, if known (returned with ``eq_logit = False``).

    Returns:
        ``(params, cfg)``: the same objects when there is nothing to drop.
    """
    W_U, W_E = params.get("unembed.W_U"), params.get("embed.W_E")
    n_in = _mlp_inputs(params)  # an MLP's input rows are the p residues (no '=' row)
    if cfg is not None:
        eq = cfg.eq_logit
    elif n_in is not None:
        eq = W_U is not None and W_U.ndim >= 2 and W_U.shape[-1] == n_in + 1
    else:
        eq = W_U is not None and W_E is not None and W_U.ndim >= 2 and W_E.ndim >= 2 and W_U.shape[-1] == W_E.shape[-2]
    if not eq:
        return params, cfg
    out_cfg = dataclasses.replace(cfg, eq_logit=False) if cfg is not None else None
    if W_U is None:  # nothing to drop (e.g. only the config is wanted)
        return params, out_cfg
    p = cfg.p if cfg is not None else n_in if n_in is not None else int(W_E.shape[-2]) - 1
    if W_U.shape[-1] != p + 1:
        raise AnalysisError(f"unembed.W_U: a model with an '=' logit needs p + 1 = {p + 1} output columns, "
                            f"got shape {list(W_U.shape)}")
    out = dict(params)
    out["unembed.W_U"] = W_U[..., :p]
    if "unembed.b_U" in params:  # a family with an unembedding bias (the MLP's unembed_bias)
        out["unembed.b_U"] = params["unembed.b_U"][..., :p]
    return out, out_cfg


def _mlp_inputs(params: dict[str, Tensor]) -> int | None:
    """The input rows (residues) of an ``mlp``-family parameter dict (``None``: not an MLP's)."""
    if not any(k.startswith("hidden.") for k in params):
        return None
    if "embed.W_E" in params:
        return int(params["embed.W_E"].shape[-2])
    if "hidden.0.W_a" in params:
        return int(params["hidden.0.W_a"].shape[-2])
    if "hidden.0.W_in" in params:
        return int(params["hidden.0.W_in"].shape[-2]) // 2
    return None


def resolve_model(model_or_params: Any, cfg: ModelConfig | RunConfig | None = None) -> tuple[dict[str, Tensor], ModelConfig]:
    """``(params, ModelConfig)`` of a model, a :class:`~grokinterp.store.run.Run` or a parameter dict.

    The result has the residue outputs only (:func:`residue_outputs`).

    Args:
        model_or_params: a :class:`~grokinterp.model.hooked.HookedGrokTransformer` (its ``cfg`` is
            used), a ``Run`` (its last checkpoint), or a ``{name: tensor}`` dict, single or
            stacked ``[ckpt, ...]``.
        cfg: the model config (a ``RunConfig`` is accepted too). Needed for a dict of a GELU
            model or of one with an attention coefficient (``attn_coeff < 1``): without it the
            config is read off the parameter shapes with ``act_fn="relu"`` and ``attn_coeff=1``.
    """
    if isinstance(cfg, RunConfig):
        cfg = cfg.model
    if is_run(model_or_params):
        run = model_or_params
        return residue_outputs(run.params(-1), cfg if cfg is not None else run.config.model)
    if cfg is None and _is_model_config(getattr(model_or_params, "cfg", None)):
        cfg = model_or_params.cfg
    params = as_params(model_or_params)  # residue outputs already
    if cfg is None:
        cfg = infer_config(params)
    if not _is_model_config(cfg):
        raise AnalysisError(f"cfg: expected a model config (ModelConfig, MLPConfig, ...) or a RunConfig, got "
                            f"{type(cfg).__name__}")
    return params, dataclasses.replace(cfg, eq_logit=False) if cfg.eq_logit else cfg


def _is_model_config(cfg: Any) -> bool:
    """A model config of any family (a frozen dataclass with ``family``, ``p`` and ``eq_logit``)."""
    return isinstance(cfg, ModelConfig) or (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)
                                            and all(hasattr(cfg, n) for n in ("family", "p", "eq_logit")))


def infer_config(params: dict[str, Tensor]) -> ModelConfig:
    """A :class:`ModelConfig` read off parameter shapes and names (ReLU and standard attention assumed;
    pass ``cfg`` for GELU or an attention coefficient; LayerNorm, biases and the ``a_b`` layout are read
    off which parameters exist).

    ``eq_logit`` is true when ``W_U`` has an output for every residue and ``=`` (``p + 1``); four
    positions are the ``a_op_b_eq`` layout (input vocabulary ``p + 2``)."""
    if _mlp_inputs(params) is not None:
        raise AnalysisError("cannot read an mlp-family model's config off its parameters (activation, combine); "
                            "pass cfg")
    needed = ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in")
    missing = [n for n in needed if n not in params]
    if missing:
        raise AnalysisError(f"cannot read the model config off the parameters: {missing} missing; pass cfg")
    V, d_model = params["embed.W_E"].shape[-2:]
    n_heads = params["blocks.0.attn.W_Q"].shape[-3]
    d_mlp = params["blocks.0.mlp.W_in"].shape[-1]
    n_layers = 1 + max(int(k.split(".")[1]) for k in params if k.startswith("blocks."))
    W_U = params.get("unembed.W_U")
    # the transformer's settings, from which parameters exist (model.params): LayerNorm, biases, and the
    # [a, b] layout from a positional embedding of two positions
    bias = ("all" if "blocks.0.attn.b_Q" in params else "mlp" if "blocks.0.mlp.b_in" in params
            else "norm" if "blocks.0.ln1.b" in params else "none")
    W_pos = params.get("pos_embed.W_pos")
    if W_pos is None and "blocks.0.attn.W_Q" in params:  # pos_embed = sinusoidal: nothing gives n_ctx
        raise AnalysisError("cannot read the model config off the parameters: no pos_embed.W_pos (a model with fixed "
                            "sinusoidal positions, model.pos_embed = 'sinusoidal', or a damaged one); pass cfg")
    n_ctx = int(W_pos.shape[-2]) if W_pos is not None and W_pos.ndim >= 2 else 3
    # [a, op, b, =] from four positions (its vocabulary has the operation token too)
    layout = {2: "a_b", 4: "a_op_b_eq"}.get(n_ctx, "a_b_eq")
    p = int(V) - 1 - INPUT_LAYOUTS[layout].extra_vocab
    eq_logit = W_U is not None and W_U.ndim >= 2 and int(W_U.shape[-1]) == p + 1
    ln = "blocks.0.ln1.w" in params
    post = ln and "ln_final.w" not in params  # post-LN blocks (Power et al.) have no final LayerNorm
    return ModelConfig(p=p, d_model=int(d_model), n_heads=int(n_heads), d_mlp=int(d_mlp),
                       n_layers=n_layers, eq_logit=eq_logit, layer_norm=ln, bias=bias,
                       n_ctx=n_ctx, input_layout=layout, ln_style="post" if post else "pre")


def check_square_axes(x: Any, dims: Sequence[int], what: str) -> int:
    """The common size ``p ≥ 3`` of the axes ``dims`` of tensor ``x``; :class:`AnalysisError` otherwise.

    ``what`` names the argument and its layout in messages, e.g. ``"logits [..., a, b, vocab]"``.
    """
    if not torch.is_tensor(x) or x.ndim < max(-min(dims), max(dims) + 1):
        shape = list(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise AnalysisError(f"{what}: expected a tensor with axes {list(dims)} of size p, got {shape}")
    sizes = {x.shape[d] for d in dims}
    if len(sizes) != 1:
        raise AnalysisError(f"{what}: axes {list(dims)} of shape {list(x.shape)} must all have size p")
    p = sizes.pop()
    if p < 3:
        raise AnalysisError(f"{what}: p must be at least 3, got shape {list(x.shape)}")
    return p


def check_indices(values: Any, n: int, noun: str, size_name: str, *, allow_empty: bool = False) -> Tensor:
    """Sorted unique indices in ``0..n-1`` of one kind (``noun``: ``"neuron"``, ``"head"``) as int64.

    ``values``: an int, a sequence of ints, or an integer tensor / array; ``size_name`` names the
    bound in messages (``d_mlp``, ``n_heads``).

    Raises:
        AnalysisError: an index is not an integer in ``0..n-1`` (the message names it), or the
            selection is empty and ``allow_empty`` is false.
    """
    if is_int(values):
        values = [values]
    if torch.is_tensor(values) or isinstance(values, np.ndarray):
        arr = np.asarray(values.detach().cpu() if torch.is_tensor(values) else values)
        if arr.ndim > 1:
            raise AnalysisError(f"{noun}s: expected a 1-D list of indices, got shape {list(arr.shape)}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise AnalysisError(f"{noun}s: expected integer indices, got dtype {arr.dtype}")
        values = arr.tolist()
    out = []
    try:
        items = list(values)
    except TypeError:
        raise AnalysisError(f"{noun}s: expected an index or a list of indices, got {values!r}") from None
    for v in items:
        if not is_int(v):
            raise AnalysisError(f"{noun} index {v!r} is not an integer")
        if not 0 <= int(v) < n:
            raise AnalysisError(f"{noun} index {int(v)} is out of range 0..{n - 1} ({size_name} = {n})")
        out.append(int(v))
    if not out and not allow_empty:
        raise AnalysisError(f"{noun}s: the selection is empty")
    return torch.tensor(sorted(set(out)), dtype=torch.int64)


def check_freq_list(p: int, freqs: Any) -> list[int]:
    """Frequencies of ``Z_p`` (``1..⌊p/2⌋``) as a sorted list of unique ints.

    Accepts an int, a sequence, or any object with a ``freqs`` attribute (a
    :class:`~grokinterp.analysis.keyfreqs.KeyFrequencies`).
    """
    freqs = getattr(freqs, "freqs", freqs)
    if is_int(freqs):
        freqs = [freqs]
    try:
        freqs = list(freqs)
    except TypeError:
        raise AnalysisError(f"key_freqs: expected a sequence of frequencies, got {freqs!r}") from None
    n_freq = p // 2
    out = []
    for f in freqs:
        if not is_int(f) or not 1 <= int(f) <= n_freq:
            raise AnalysisError(f"frequency {f!r} is not in 1..{n_freq} (p = {p})")
        out.append(int(f))
    return sorted(set(out))


def task_label_grid(p: int, operation: str = "add") -> Tensor:
    """Labels of every grid input: int64 ``[p²]`` (index ``a * p + b``), ``-1`` where ``(a, b)`` is not a task pair."""
    return torch.from_numpy(get_task(operation, p).label_grid().copy())


def check_grid_pairs(labels: Tensor, pairs: Any, p: int, what: str) -> Tensor:
    """Grid indices ``a * p + b`` as int64, each a pair of the task (``labels[i] ≥ 0``)."""
    pairs = torch.as_tensor(np.asarray(pairs), dtype=torch.int64).reshape(-1)
    if len(pairs) == 0:
        raise AnalysisError(f"{what}: no pairs given")
    if pairs.min() < 0 or pairs.max() >= p * p:
        raise AnalysisError(f"{what}: grid indices must lie in [0, {p * p}), got range "
                            f"[{int(pairs.min())}, {int(pairs.max())}]")
    if (labels[pairs] < 0).any():
        bad = pairs[labels[pairs] < 0][:5].tolist()
        raise AnalysisError(f"{what}: grid indices {bad} are not pairs of the task")
    return pairs


def run_task_arrays(run: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(labels [p²], train_pairs, test_pairs, valid pairs)`` of a run, as int64 tensors."""
    return task_arrays(run.config.task.p, run.config.task.operation, *run.split_pairs())


def task_arrays(p: int, operation: str, trn: Any, tst: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(labels [p²], train_pairs, test_pairs, valid pairs)`` of a task and a split, as int64 tensors."""
    labels = task_label_grid(p, operation)
    train_pairs = check_grid_pairs(labels, trn, p, "train pairs of the run")
    test_pairs = torch.from_numpy(np.asarray(tst, dtype=np.int64))
    valid = torch.nonzero(labels >= 0)[:, 0]
    return labels, train_pairs, test_pairs, valid
