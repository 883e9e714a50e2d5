"""Circuit ablations: remove or keep parts of the Fourier circuit and measure loss and accuracy.

Every ablation re-evaluates the model on the whole ``p × p`` grid (via
:func:`grokinterp.model.grid.grid_forward`) and reports cross-entropy (log-softmax in float64) and
accuracy on the run's train split, its test split and all pairs.

**One table layout everywhere** (tidy, one row per ablation and split):

==============  ==================================================================
column          meaning
==============  ==================================================================
``ablation``    what was done, in words (``"none"`` for the unablated baseline)
``component``   ``none``, ``logits``, ``W_E``, ``neurons`` or ``heads``
``split``       ``train``, ``test`` or ``all``
``loss``        mean cross-entropy over the split (NaN for an empty split)
``acc``         accuracy over the split (NaN for an empty split)
``n``           number of examples in the split
==============  ==================================================================

Every ablation function returns the baseline ``"none"`` rows first (unless
``include_baseline=False``). ``df.pivot(index="ablation", columns="split", values="loss")`` gives
the wide view.

The model and its split come from a :class:`~grokinterp.store.run.Run`, a pair
``(model_or_params, train_pairs)``, or an :class:`AblationTarget` built once with
:func:`ablation_target` (cheapest when running several ablations).

The target knows its task's structure. For ``a + b`` mod p "frequencies" are those of ``Z_p`` over
the tokens, as in the paper; for any other group structure they are the task's key irreps (irrep
indices; frequencies of the group when it is cyclic, e.g. of ``Z_{p−1}`` in discrete-log coordinates
for ``a·b``), and the logit, embedding and neuron projections act on the structure's block in the
group's coordinates (pairs and tokens outside it are left alone). A task without a group structure
has no key terms: only neuron and head ablations apply.

Example:
    >>> df = ablation_table(run)                               # doctest: +SKIP
    >>> df.pivot(index="ablation", columns="split", values="loss")   # doctest: +SKIP
    >>> ablate_logit_freqs(run, [14, 35], mode="remove")       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import ModelConfig, RunConfig, is_int
from ..errors import AnalysisError
from ..model import tables
from ..model.grid import fold_unsupported, generic_grid_forward, grid_outputs, n_neurons
from ..tasks import CyclicSum, get_task
from .fourier import dft_index_freqs, fourier_basis
from .groups import TaskStructure, task_structure
from .inputs import check_indices, is_run, residue_outputs, resolve_model, task_label_grid
from .keyfreqs import key_frequencies
from .neurons import DEFAULT_THRESHOLD, check_neurons, neuron_fourier
from .projections import exclude_logits, restrict_logits

__all__ = [
    "COLUMNS",
    "SPLITS",
    "AblationTarget",
    "ablation_target",
    "evaluate_logits",
    "baseline",
    "ablate_logit_freqs",
    "project_embedding",
    "ablate_embed_freqs",
    "ablate_neurons",
    "ablate_neuron_clusters",
    "ablate_heads",
    "approximate_neurons",
    "neuron_approximation",
    "ablation_table",
    "heads_undefined",
]

COLUMNS = ("ablation", "component", "split", "loss", "acc", "n")
SPLITS = ("train", "test", "all")
_METHODS = ("zero", "mean")


# -- the model and its split -------------------------------------------------------------------
@dataclass(frozen=True)
class AblationTarget:
    """A single model with its labels and split over the grid.

    Attributes:
        params: the model's parameters (no ``ckpt`` axis).
        cfg: its :class:`~grokinterp.config.ModelConfig`.
        labels: int64 ``[p²]`` label of each grid index ``a * p + b`` (``-1`` for pairs outside
            the task, e.g. ``b = 0`` for division).
        splits: ``{"train", "test", "all"}`` → sorted int64 grid indices.
        structure: the task's :class:`~grokinterp.analysis.groups.TaskStructure` (``None``: no group
            structure, only neuron and head ablations).

    ``labels`` and ``splits`` live on the CPU whatever the parameters' device;
    :func:`evaluate_logits` moves them to the device of the logits it scores.
    """

    params: dict[str, Tensor]
    cfg: ModelConfig
    labels: Tensor
    splits: dict[str, Tensor]
    structure: TaskStructure | None = None

    @property
    def p(self) -> int:
        return self.cfg.p

    @property
    def group(self) -> TaskStructure | None:
        """The structure when it is not ``a + b`` mod p (whose ablations use the Fourier basis of the tokens)."""
        s = self.structure
        return None if s is None or isinstance(s.structure, CyclicSum) else s

    @cached_property
    def logits(self) -> Tensor:
        """The unablated grid logits ``[p, p, vocab]`` (computed once)."""
        with torch.no_grad():
            return grid_outputs(self.params, self.cfg).logits

    @cached_property
    def head_means(self) -> Tensor:
        """Mean over the grid of each head's output at the final position: ``[h, d_model]``
        (float64; computed once)."""
        P = {k: v.double() for k, v in self.params.items()}
        p = self.p
        with torch.no_grad():
            A = grid_outputs(self.params, self.cfg, return_pattern=True).pattern.double()  # [a, b, h, 3]
        W_E, W_pos, W_V, W_O = P["embed.W_E"], P["pos_embed.W_pos"], P["blocks.0.attn.W_V"], P["blocks.0.attn.W_O"]
        v0 = tables.head_outputs(W_E[:p] + W_pos[0], W_V, W_O)  # [a, h, d_model]
        v1 = tables.head_outputs(W_E[:p] + W_pos[1], W_V, W_O)  # [b, h, d_model]
        v2 = tables.head_outputs((W_E[p] + W_pos[2])[None], W_V, W_O)[0]  # [h, d_model]
        m = torch.einsum("ah,ahf->hf", A[..., 0].mean(1), v0) / p
        m = m + torch.einsum("bh,bhf->hf", A[..., 1].mean(0), v1) / p
        m = m + A[..., 2].mean((0, 1))[:, None] * v2
        return m


def ablation_target(model_or_run, train_pairs=None, *, epoch: int = -1,
                    cfg: ModelConfig | RunConfig | None = None, operation: str | None = None) -> AblationTarget:
    """Bundle a model with its labels and train/test split.

    Args:
        model_or_run: a :class:`~grokinterp.store.run.Run` (its split and operation are used), or a
            model / parameter dict (single checkpoint) together with ``train_pairs``.
        train_pairs: grid indices ``a * p + b`` of the training pairs (not for a ``Run``). The
            test split is every other pair of the task.
        epoch: checkpoint of a ``Run`` (``-1`` = last).
        cfg: model config for a parameter dict (see :func:`grokinterp.analysis.logits.resolve_model`).
        operation: the task's operation (default: the run's, else ``"add"``).

    Raises:
        AnalysisError: stacked parameters, train pairs out of range / outside the task / empty,
            or ``train_pairs`` given together with a ``Run``.
    """
    if isinstance(model_or_run, AblationTarget):
        return model_or_run
    if is_run(model_or_run):
        run = model_or_run
        if train_pairs is not None:
            raise AnalysisError("train_pairs: a Run brings its own split; pass train_pairs only with a model")
        params, mcfg = residue_outputs(run.params(epoch), run.config.model)
        train_pairs = run.split_pairs()[0]
        operation = operation or run.config.task.operation
    else:
        if train_pairs is None:
            raise AnalysisError("train_pairs: needed with a model or parameter dict (or pass a Run)")
        params, mcfg = resolve_model(model_or_run, cfg)
    if params["unembed.W_U"].ndim != 2:
        raise AnalysisError(f"ablations take one checkpoint, got stacked parameters of shape "
                            f"{list(params['unembed.W_U'].shape)} (unembed.W_U)")
    p = mcfg.p
    labels = task_label_grid(p, operation or "add")
    trn = np.asarray(train_pairs.detach().cpu() if torch.is_tensor(train_pairs) else train_pairs)
    if trn.ndim != 1 or trn.size == 0:
        raise AnalysisError(f"train_pairs: expected a non-empty 1-D list of grid indices, got shape {list(trn.shape)}")
    if not np.issubdtype(trn.dtype, np.integer):
        raise AnalysisError(f"train_pairs: expected integer grid indices, got dtype {trn.dtype}")
    bad = trn[(trn < 0) | (trn >= p * p)]
    if bad.size:
        raise AnalysisError(f"train_pairs: index {int(bad[0])} is outside the grid 0..{p * p - 1} (p = {p})")
    trn = torch.from_numpy(np.unique(trn).astype(np.int64))
    outside = trn[labels[trn] < 0]
    if len(outside):
        raise AnalysisError(f"train_pairs: index {int(outside[0])} is not a pair of the task {operation!r}")
    all_ = torch.nonzero(labels >= 0)[:, 0]  # the task's pairs, sorted
    tst = all_[~torch.isin(all_, trn)]
    ts = task_structure(get_task(operation or "add", p))
    return AblationTarget(params=params, cfg=mcfg, labels=labels, splits={"train": trn, "test": tst, "all": all_},
                          structure=ts)


def _target(target) -> AblationTarget:
    if isinstance(target, AblationTarget):
        return target
    if isinstance(target, tuple):
        if len(target) != 2:
            raise AnalysisError(f"target: expected (model_or_params, train_pairs), got a tuple of {len(target)}")
        return ablation_target(target[0], target[1])
    return ablation_target(target)


# -- evaluation --------------------------------------------------------------------------------
def evaluate_logits(logits: Tensor, target, ablation: str = "none", component: str = "none") -> pd.DataFrame:
    """Loss and accuracy of grid logits on each split, as rows of the ablation table.

    Args:
        logits: ``[p, p, vocab]`` logits of every input (any float dtype).
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        ablation, component: the row labels.

    Returns:
        DataFrame with :data:`COLUMNS`, one row per split in :data:`SPLITS`.

    Notes:
        ``loss = −mean_{(a,b) ∈ split} log_softmax(L[a, b])[label]`` in float64;
        ``acc = mean(argmax_c L[a, b, c] = label)``.
    """
    t = _target(target)
    p = t.p
    if not torch.is_tensor(logits) or tuple(logits.shape) != (p, p, p):
        shape = list(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise AnalysisError(f"logits: expected shape [{p}, {p}, {p}] for p = {p}, got {shape}")
    flat = logits.reshape(p * p, p).double()
    logp = torch.log_softmax(flat, dim=-1)
    rows = []
    for split in SPLITS:
        idx = t.splits[split]
        n = len(idx)
        if n == 0:
            loss = acc = float("nan")
        else:
            y = t.labels[idx].to(flat.device)
            idx = idx.to(flat.device)
            loss = float(-logp[idx, y].mean())
            acc = float((flat[idx].argmax(-1) == y).double().mean())
        rows.append({"ablation": ablation, "component": component, "split": split, "loss": loss, "acc": acc, "n": n})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _forward(t: AblationTarget, params: dict[str, Tensor] | None = None, **kw) -> Tensor:
    with torch.no_grad():
        return grid_outputs(t.params if params is None else params, t.cfg, **kw).logits


def _with_baseline(t: AblationTarget, df: pd.DataFrame, include_baseline: bool) -> pd.DataFrame:
    if not include_baseline:
        return df.reset_index(drop=True)
    return pd.concat([baseline(t), df], ignore_index=True)


def baseline(target) -> pd.DataFrame:
    """The unablated model's rows (``ablation = "none"``)."""
    t = _target(target)
    return evaluate_logits(t.logits, t)


def _fmt(xs) -> str:
    return "[" + ", ".join(str(int(x)) for x in xs) + "]"


def _check_mode(mode: str) -> None:
    if mode not in ("keep", "remove"):
        raise AnalysisError(f"mode: expected 'keep' or 'remove', got {mode!r}")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise AnalysisError(f"method: expected 'zero' or 'mean', got {method!r}")


def _freqs(t: AblationTarget, freqs, allow_empty: bool) -> list[int]:
    if isinstance(freqs, (int, np.integer)):
        freqs = [freqs]
    if t.structure is None:
        raise AnalysisError("freqs: the task declares no group structure, so it has no key frequencies / irreps to "
                            "ablate (neuron and head ablations apply)")
    g = t.group
    fs = fourier_basis(t.p).check_freqs(list(freqs)) if g is None else g.basis.check_irreps(list(freqs))
    if not fs and not allow_empty:
        raise AnalysisError("freqs: the frequency set is empty")
    return fs


def _fmt_keys(t: AblationTarget, xs) -> str:
    g = t.group
    if g is None or g.cyclic:
        return _fmt(xs)
    return "[" + ", ".join(g.basis.names[int(x)] for x in xs) + "]"


# -- logits ------------------------------------------------------------------------------------
def ablate_logit_freqs(target, freqs: Sequence[int], mode: str = "remove", *,
                       name: str | None = None, include_baseline: bool = True) -> pd.DataFrame:
    """Keep only, or remove, the ``cos(w(a+b))``, ``sin(w(a+b))`` components of the logits.

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        freqs: the frequencies ``w`` (may be empty: ``keep`` then leaves only the per-output
            mean, ``remove`` changes nothing).
        mode: ``"keep"`` (the restricted logits: per-output mean over ``(a, b)`` plus those
            components) or ``"remove"`` (the excluded logits).
        name: row label (default describes the ablation).
        include_baseline: prepend the ``"none"`` rows.

    Returns:
        DataFrame in the ablation-table layout (:data:`COLUMNS`).

    Notes:
        See :func:`grokinterp.analysis.projections.restrict_logits` / :func:`~grokinterp.analysis.projections.exclude_logits`:
        the components are the 2-D DFT entries ``(w, w)`` and ``(−w, −w)`` of each ``L[·, ·, c]``.
    """
    t = _target(target)
    _check_mode(mode)
    fs = _freqs(t, freqs, allow_empty=True)
    L = t.logits
    L2 = restrict_logits(L, fs, ts=t.group) if mode == "keep" else exclude_logits(L, fs, ts=t.group)
    df = evaluate_logits(L2, t, name or f"{mode} logit keys {_fmt_keys(t, fs)}", "logits")
    return _with_baseline(t, df, include_baseline)


# -- the embedding -----------------------------------------------------------------------------
def project_embedding(W_E: Tensor, freqs: Sequence[int], mode: str = "keep", p: int | None = None,
                      ts: TaskStructure | None = None) -> Tensor:
    """Project the residue rows of ``W_E`` onto (``keep``) or off (``remove``) frequencies.

    Args:
        W_E: ``[vocab, d_model]`` (rows ``0..p-1`` are the residues, row ``p`` is ``=``).
        freqs: frequencies whose cos and sin components are kept / removed (with ``ts``: irreps).
        mode: ``"keep"`` (the constant component is kept too) or ``"remove"``.
        p: modulus (default ``vocab − 1``).
        ts: a :class:`~grokinterp.analysis.groups.TaskStructure`: the rows of the group's elements are
            projected in its basis (rows of other tokens, e.g. 0 for ``a·b``, and ``=`` unchanged).

    Returns:
        float32 tensor like ``W_E``; the ``=`` row is unchanged.

    Notes:
        ``W_E' [:p] = Bᵀ (m ⊙ (B W_E[:p]))`` with the orthonormal basis ``B`` and the component mask
        ``m`` (keep: const + cos/sin of ``freqs``; remove: all but cos/sin of ``freqs``).
    """
    _check_mode(mode)
    if ts is not None:
        if W_E.ndim != 2 or W_E.shape[0] < ts.n:
            raise AnalysisError(f"W_E: expected [vocab ≥ {ts.n}, d_model], got shape {list(W_E.shape)}")
        dev = W_E.device
        comp = ts.basis.row_mask(list(freqs), include_trivial=(mode == "keep"), device=dev)
        m = comp if mode == "keep" else ~comp
        basis = ts.basis.matrix64.to(dev)
        rows = ts.element_token.to(dev)
        coeffs = basis @ W_E[rows].detach().double()
        out = W_E.detach().clone().float()
        out[rows] = (basis.T @ (coeffs * m[:, None].double())).float()
        return out
    p = W_E.shape[-2] - 1 if p is None else p
    if W_E.ndim != 2 or W_E.shape[0] < p:
        raise AnalysisError(f"W_E: expected [vocab ≥ {p}, d_model], got shape {list(W_E.shape)}")
    B = fourier_basis(p)
    dev = W_E.device
    comp = B.component_mask(list(freqs), include_const=(mode == "keep"), device=dev)
    m = comp if mode == "keep" else ~comp
    basis = B.matrix64.to(dev)
    coeffs = basis @ W_E[:p].detach().double()
    out = W_E.detach().clone().float()
    out[:p] = (basis.T @ (coeffs * m[:, None].double())).float()
    return out


def ablate_embed_freqs(target, freqs: Sequence[int], mode: str = "keep", *,
                       name: str | None = None, include_baseline: bool = True) -> pd.DataFrame:
    """Project ``W_E`` onto / off frequencies (Fourier basis over the residues) and re-run the model.

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        freqs: the frequencies (may be empty: ``keep`` then leaves only the constant component,
            ``remove`` changes nothing).
        mode: ``"keep"`` (constant + those frequencies) or ``"remove"``.
        name, include_baseline: see :func:`ablate_logit_freqs`.

    Returns:
        DataFrame in the ablation-table layout.
    """
    t = _target(target)
    _check_mode(mode)
    fs = _freqs(t, freqs, allow_empty=True)
    params = dict(t.params)
    params["embed.W_E"] = project_embedding(t.params["embed.W_E"], fs, mode, t.p, ts=t.group)
    df = evaluate_logits(_forward(t, params), t, name or f"{mode} W_E keys {_fmt_keys(t, fs)}", "W_E")
    return _with_baseline(t, df, include_baseline)


# -- neurons -----------------------------------------------------------------------------------
def _neuron_post_fn(idx: Tensor, method: str) -> Callable[[Tensor], Tensor]:
    def fn(post: Tensor) -> Tensor:  # [ckpt, a, b, d_mlp]
        out = post.clone()
        i = idx.to(post.device)
        if method == "zero":
            out[..., i] = 0.0
        else:
            out[..., i] = post[..., i].mean(dim=(-3, -2), keepdim=True)
        return out

    return fn


def ablate_neurons(target, neurons, method: str = "mean", *, name: str | None = None,
                   include_baseline: bool = True) -> pd.DataFrame:
    """Zero- or mean-ablate MLP neurons.

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        neurons: neuron indices (non-empty; validated against ``d_mlp``).
        method: ``"zero"`` (activation set to 0) or ``"mean"`` (set to its mean over the grid).
        name, include_baseline: see :func:`ablate_logit_freqs`.

    Returns:
        DataFrame in the ablation-table layout.

    Notes:
        Mean ablation: ``N'[a, b, n] = (1/p²) Σ_{a',b'} N[a', b', n]`` for the ablated ``n``.
    """
    t = _target(target)
    _check_method(method)
    idx = check_neurons(neurons, n_neurons(t.cfg))
    L = _forward(t, post_fn=_neuron_post_fn(idx, method))
    label = name or f"{method}-ablate {len(idx)} neuron{'s' if len(idx) != 1 else ''}"
    return _with_baseline(t, evaluate_logits(L, t, label, "neurons"), include_baseline)


def ablate_neuron_clusters(target, freqs, method: str = "mean", threshold: float = DEFAULT_THRESHOLD, *,
                           name: str | None = None, include_baseline: bool = True) -> pd.DataFrame:
    """Zero- or mean-ablate the neurons of the frequency clusters of ``freqs``.

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        freqs: a frequency or several (their clusters are ablated together).
        method: ``"zero"`` or ``"mean"``.
        threshold: FVE threshold of the clusters (see :func:`grokinterp.analysis.neurons.neuron_fourier`).
        name, include_baseline: see :func:`ablate_logit_freqs`.

    Raises:
        AnalysisError: unknown frequency, or the clusters hold no neuron.
    """
    t = _target(target)
    fs = _freqs(t, freqs, allow_empty=False)
    nf = neuron_fourier(t.params, t.cfg, threshold, structure=t.group)
    ids = nf.neurons_of(fs)
    if len(ids) == 0:
        raise AnalysisError(f"freqs: no neuron has FVE > {threshold:g} for frequencies {fs}")
    return ablate_neurons(t, ids, method, name=name or f"{method}-ablate clusters {_fmt(fs)} ({len(ids)} neurons)",
                          include_baseline=include_baseline)


def neuron_approximation(acts: Tensor, freqs: Sequence[int], ts: TaskStructure | None = None) -> Tensor:
    """Project each neuron's activation map onto the constant, linear and quadratic terms of ``freqs``.

    Args:
        acts: ``[..., a, b, d_mlp]`` activations.
        freqs: the frequencies (e.g. the key frequencies; may be empty: only the mean is kept).

    Returns:
        float64 tensor like ``acts``.

    Notes:
        Keeps the terms ``1``, ``cos/sin(wa)``, ``cos/sin(wb)`` and
        ``cos/sin(wa)·cos/sin(wb)`` (same ``w``) for ``w ∈ freqs``; products of two different
        frequencies are dropped, as in the FVE of :func:`grokinterp.analysis.neurons.neuron_fve`. Done
        with a mask on the 2-D DFT over ``(a, b)``: entry ``(u, v)`` is kept when
        ``f(u), f(v) ∈ freqs ∪ {0}`` and ``f(u) = f(v)`` or one of them is 0
        (``f(u) = min(u, p − u)``). With a ``ts``
        (:class:`~grokinterp.analysis.groups.TaskStructure`), ``freqs`` are irreps and the same mask is
        applied to the 2-D group Fourier coefficients on the block (components ``(i, j)`` of irreps
        ``(ρ, σ)`` kept when ``ρ, σ ∈ freqs ∪ {trivial}`` and ``ρ = σ`` or one is trivial); activations
        outside the block are left as they are.
    """
    if ts is not None:
        ks = ts.basis.check_irreps(list(freqs))
        r = ts.basis.irrep_of_row.to(acts.device)
        ok = torch.isin(r, torch.tensor([0] + ks, dtype=torch.int64, device=acts.device))
        mask = ok[:, None] & ok[None, :] & ((r[:, None] == 0) | (r[None, :] == 0) | (r[:, None] == r[None, :]))
        B = ts.basis
        C = B.to_basis(B.to_basis(ts.element_grid(acts.double()), -3), -2)
        approx = B.from_basis(B.from_basis(C * mask[:, :, None], -2), -3)
        out = acts.double().clone()
        e = ts.element_token.to(acts.device)
        out[..., e[:, None], e[None, :], :] = approx
        return out
    if not torch.is_tensor(acts) or acts.ndim < 3 or acts.shape[-3] != acts.shape[-2]:
        shape = list(acts.shape) if torch.is_tensor(acts) else type(acts).__name__
        raise AnalysisError(f"activations: expected [..., p, p, d_mlp], got shape {shape}")
    p = acts.shape[-2]
    fs = fourier_basis(p).check_freqs(list(freqs))
    f = dft_index_freqs(p, device=acts.device)
    ok = torch.isin(f, torch.tensor([0] + fs, dtype=torch.int64, device=acts.device))
    mask = ok[:, None] & ok[None, :] & ((f[:, None] == 0) | (f[None, :] == 0) | (f[:, None] == f[None, :]))
    X = torch.fft.fft2(acts.double(), dim=(-3, -2))
    return torch.fft.ifft2(X * mask[:, :, None], dim=(-3, -2)).real


def approximate_neurons(target, freqs: Sequence[int], neurons=None, *, name: str | None = None,
                        include_baseline: bool = True) -> pd.DataFrame:
    """Replace neurons by their key-frequency approximation (:func:`neuron_approximation`).

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        freqs: the frequencies (non-empty).
        neurons: which neurons to replace (default all).
        name, include_baseline: see :func:`ablate_logit_freqs`.

    Returns:
        DataFrame in the ablation-table layout.
    """
    t = _target(target)
    fs = _freqs(t, freqs, allow_empty=False)
    idx = None if neurons is None else check_neurons(neurons, n_neurons(t.cfg))

    def post_fn(post: Tensor) -> Tensor:
        approx = neuron_approximation(post, fs, ts=t.group).to(post.dtype)
        if idx is None:
            return approx
        out = post.clone()
        i = idx.to(post.device)
        out[..., i] = approx[..., i]
        return out

    who = "all neurons" if idx is None else f"{len(idx)} neurons"
    df = evaluate_logits(_forward(t, post_fn=post_fn), t, name or f"{who} → keys {_fmt_keys(t, fs)} approximation",
                         "neurons")
    return _with_baseline(t, df, include_baseline)


# -- attention heads ---------------------------------------------------------------------------
def ablate_heads(target, heads, method: str = "mean", *, name: str | None = None,
                 include_baseline: bool = True, layer: int = 0) -> pd.DataFrame:
    """Zero- or mean-ablate attention heads (their output at the final position).

    Args:
        target: an :class:`AblationTarget`, a ``Run`` or ``(model_or_params, train_pairs)``.
        heads: head indices (non-empty; validated against ``n_heads``).
        method: ``"zero"`` (output 0) or ``"mean"`` (output replaced by its mean over the grid).
        name, include_baseline: see :func:`ablate_logit_freqs`.
        layer: the block whose heads are ablated (a model of several layers; 0 for the paper's).

    Returns:
        DataFrame in the ablation-table layout.

    Raises:
        AnalysisError: the model has no attention heads (an MLP: :func:`heads_undefined`).

    Notes:
        Mean ablation of head ``h`` replaces its output ``o_h(a, b)`` by ``m_h = mean_{a,b} o_h``.
        Any transformer other than the one-layer model the table fold computes (more layers, LayerNorm,
        the ``[a, b]`` layout) is ablated through its hooked module: the head's ``z`` (``blocks.L.attn.hook_z``,
        every position) is set to 0 or to its mean over the grid, per position — the same ablation (for one
        layer only the final position reaches the logits; tested equal to the fold's).
        In a one-layer model without LayerNorm this equals scaling the head by 0 and adding
        ``m_h`` to the residual after attention, i.e. ``b_in += m_h W_in`` and ``b_out += m_h``
        (``b_out`` reaches the logits through ``W_U`` only).
    """
    t = _target(target)
    _check_method(method)
    why = heads_undefined(t.cfg)
    if why:
        raise AnalysisError(f"head ablation: {why}")
    hs = check_indices(heads, t.cfg.n_heads, "head", "n_heads").tolist()
    if not is_int(layer) or not 0 <= int(layer) < t.cfg.n_layers:
        raise AnalysisError(f"layer: expected a block index in 0..{t.cfg.n_layers - 1}, got {layer!r}")
    if fold_unsupported(t.cfg) is not None or layer != 0:
        L = _forward_hooked_heads(t, int(layer), hs, method)
        label = name or f"{method}-ablate head{'s' if len(hs) > 1 else ''} {_fmt(hs)}" + \
            (f" of layer {layer}" if t.cfg.n_layers > 1 else "")
        return _with_baseline(t, evaluate_logits(L, t, label, "heads"), include_baseline)
    scale = torch.ones(t.cfg.n_heads, device=t.params["embed.W_E"].device)
    scale[hs] = 0.0
    params = dict(t.params)
    if method == "mean":
        m = t.head_means[hs].sum(0)  # [d_model]
        params["blocks.0.mlp.b_in"] = (t.params["blocks.0.mlp.b_in"].double()
                                       + m @ t.params["blocks.0.mlp.W_in"].double()).float()
        params["blocks.0.mlp.b_out"] = (t.params["blocks.0.mlp.b_out"].double() + m).float()
    L = _forward(t, params, head_scale=scale)
    label = name or f"{method}-ablate head{'s' if len(hs) > 1 else ''} {_fmt(hs)}"
    return _with_baseline(t, evaluate_logits(L, t, label, "heads"), include_baseline)


# -- the standard set --------------------------------------------------------------------------
def ablation_table(run, key_freqs: Sequence[int] | None = None, *, epoch: int = -1,
                   threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> pd.DataFrame:
    """The standard circuit ablations of one checkpoint, in one table.

    Args:
        run: a ``Run``, ``(model_or_params, train_pairs)`` or an :class:`AblationTarget`.
        key_freqs: the key frequencies (key irreps for a structure other than ``a + b`` mod p; default:
            :func:`grokinterp.analysis.keyfreqs.key_frequencies` of the checkpoint, method ``W_L``).
        epoch: checkpoint of a ``Run`` (``-1`` = last).
        threshold: FVE threshold of the neuron clusters.
        seed: seed choosing the control set of non-key frequencies.

    Returns:
        DataFrame in the ablation-table layout (:data:`COLUMNS`), rows in this order:
        ``none``; logits: keep key freqs (restricted), remove key freqs (excluded), remove as many
        non-key freqs (control, drawn with ``seed``); W_E: keep key freqs, remove key freqs;
        neurons: all replaced by their key-frequency approximation, mean-ablate the neurons
        outside the key-frequency clusters (when there are any); heads: mean-ablate each head,
        and all heads together. A task without a group structure gets ``none``, the mean-ablation of
        each of the (up to) three largest neuron clusters by Fourier frequency over the tokens, and the
        heads (``key_freqs`` is then ignored).
    """
    t = ablation_target(run, epoch=epoch) if not isinstance(run, (AblationTarget, tuple)) else _target(run)
    kw = dict(include_baseline=False)
    if t.structure is None:
        parts = [baseline(t)]
        nf = neuron_fourier(t.params, t.cfg, threshold)
        sizes = nf.cluster_sizes.sort_values("n_neurons", ascending=False, kind="stable")
        for f in sizes["freq"].tolist()[:3]:
            ids = nf.clusters[int(f)]
            parts.append(ablate_neurons(t, ids, "mean", name=f"neurons: mean-ablate the token-frequency-{int(f)} "
                                                              f"cluster ({len(ids)} neurons)", **kw))
        return pd.concat(parts + _head_rows(t), ignore_index=True)
    g = t.group
    if key_freqs is None:
        key_freqs = key_frequencies(t.params, cfg=t.cfg, task=t.structure).freqs
    key = _freqs(t, key_freqs, allow_empty=False)
    n_keys = fourier_basis(t.p).n_freq if g is None else g.basis.n_irreps - 1
    non_key = [w for w in range(1, n_keys + 1) if w not in key]
    K = _fmt_keys(t, key)
    noun = "freqs" if g is None or g.cyclic else "irreps"
    parts = [baseline(t)]
    parts.append(ablate_logit_freqs(t, key, "keep", name=f"logits: keep key {noun} {K}", **kw))
    parts.append(ablate_logit_freqs(t, key, "remove", name=f"logits: remove key {noun} {K}", **kw))
    if non_key:
        rng = np.random.default_rng(seed)
        ctrl = sorted(int(w) for w in rng.choice(non_key, size=min(len(key), len(non_key)), replace=False))
        parts.append(ablate_logit_freqs(t, ctrl, "remove",
                                        name=f"logits: remove {len(ctrl)} non-key {noun} {_fmt_keys(t, ctrl)}", **kw))
    if "embed.W_E" in t.params:  # an MLP on one-hot inputs has no embedding to project
        parts.append(ablate_embed_freqs(t, key, "keep", name=f"W_E: keep key {noun} {K}", **kw))
        parts.append(ablate_embed_freqs(t, key, "remove", name=f"W_E: remove key {noun} {K}", **kw))
    parts.append(approximate_neurons(t, key, name=f"neurons: key-{noun[:-1]} approximation {K}", **kw))
    nf = neuron_fourier(t.params, t.cfg, threshold, structure=g)
    outside = torch.ones(n_neurons(t.cfg), dtype=torch.bool)  # host-side selection (check_neurons)
    outside[nf.neurons_of(key).cpu()] = False
    if outside.any():
        ids = torch.nonzero(outside).flatten()
        parts.append(ablate_neurons(t, ids, "mean", name=f"neurons: mean-ablate {len(ids)} outside key clusters",
                                    **kw))
    return pd.concat(parts + _head_rows(t), ignore_index=True)


def heads_undefined(cfg) -> str | None:
    """Why head ablations are undefined for a model (``None``: they are defined): a family without attention
    (the MLP) has no heads."""
    family = getattr(cfg, "family", "transformer")
    if family != "transformer":
        return f"undefined for the {family} family (it has no attention heads)"
    return None


def _forward_hooked_heads(t: AblationTarget, layer: int, hs: list[int], method: str) -> Tensor:
    """Grid logits with heads ``hs`` of block ``layer`` zero- or mean-ablated at ``blocks.L.attn.hook_z``."""
    idx = torch.tensor(hs)

    def ablate(z: Tensor, hook=None) -> Tensor:  # noqa: ARG001  z [batch, pos, h, d_head]
        z = z.clone()
        i = idx.to(z.device)
        z[:, :, i] = 0.0 if method == "zero" else z[:, :, i].mean(0, keepdim=True).expand_as(z[:, :, i])
        return z

    with torch.no_grad():
        return generic_grid_forward(t.params, t.cfg, hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]).logits


def _head_rows(t: AblationTarget) -> list[pd.DataFrame]:
    if heads_undefined(t.cfg):  # analyze_run notes why
        return []
    if t.cfg.n_layers > 1:
        kw = dict(include_baseline=False, method="mean")
        rows = []
        for layer in range(t.cfg.n_layers):
            rows += [ablate_heads(t, [h], name=f"heads: mean-ablate head {layer}.{h}", layer=layer, **kw)
                     for h in range(t.cfg.n_heads)]
            rows.append(ablate_heads(t, list(range(t.cfg.n_heads)), name=f"heads: mean-ablate all of layer {layer}",
                                     layer=layer, **kw))
        return rows
    kw = dict(include_baseline=False)
    rows = [ablate_heads(t, [h], "mean", name=f"heads: mean-ablate head {h}", **kw) for h in range(t.cfg.n_heads)]
    rows.append(ablate_heads(t, list(range(t.cfg.n_heads)), "mean", name="heads: mean-ablate all", **kw))
    return rows
