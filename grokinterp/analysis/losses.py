"""Losses and accuracies on grid logits, and the progress measures' restricted and excluded losses.

* :func:`nll_and_correct` — per-example cross-entropy accurate to float64 level at float32 speed;
* :func:`restricted_loss` — cross-entropy over all task pairs of the logits restricted to the key
  frequencies (the per-output mean plus the ``cos/sin(w(a+b))`` components);
* :func:`excluded_loss` — cross-entropy on the training pairs of the logits with those components
  removed.

The projections themselves are :mod:`~grokinterp.analysis.projections`; the per-chunk forms
:func:`restricted_nll` and :func:`excluded_nll` are what the progress measures call on a chunk of
checkpoints, from one pair of key filters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import AnalysisError
from .inputs import check_freq_list, check_grid_pairs, check_square_axes, task_label_grid
from .projections import antidiagonal_sums, group_filters, key_filters, sum_index

__all__ = ["nll_and_correct", "restricted_loss", "excluded_loss", "restricted_nll", "excluded_nll",
           "task_label_grid"]


def nll_and_correct(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example ``−log softmax(logits)[label]`` (float64) and correctness, ``logits [n, m, c]``, ``labels [m]``.

    Accurate to ~1e-6 relative even for losses of 1e-7 and below, at float32 speed: with
    ``m = max_c L``, ``−log softmax(L)[y] = (m − L_y) + log1p(Σ_{c ≠ argmax} exp(L_c − m))``; the
    exponentials are float32, the argmax term (exactly 1) is left out of the sum instead of
    subtracted from it, and ``m − L_y`` and ``log1p`` are float64. Equal to a float64
    log-softmax of the same logits within 1e-5 relative, typically 1e-6 (tested).
    """
    L = logits if logits.dtype == torch.float32 else logits.float()
    y = labels.to(L.device)[None, :, None].expand(L.shape[0], -1, 1)
    m, am = L.max(-1, keepdim=True)
    e = (L - m).exp_()
    e.scatter_(-1, am, 0.0)
    tail = e.sum(-1).double()
    gap = m[..., 0].double() - L.gather(-1, y)[..., 0].double()
    return gap + torch.log1p(tail), am[..., 0] == y[..., 0]


def _prepare(logits: Tensor, labels: Tensor | None, what: str) -> tuple[Tensor, int, Tensor]:
    p = check_square_axes(logits, (-3, -2), f"{what} [..., a, b, vocab]")
    if logits.shape[-1] != p:
        raise AnalysisError(f"{what}: the vocab axis must have size p = {p}, got shape {list(logits.shape)}")
    labels = task_label_grid(p) if labels is None else torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.shape != (p * p,):
        raise AnalysisError(f"labels: expected [p²] = [{p * p}] grid labels, got shape {list(labels.shape)}")
    return logits.reshape(-1, p, p, p), p, labels


def restricted_loss(logits: Tensor, freqs: Sequence[int], labels: Tensor | None = None, ts=None) -> Tensor:
    """Cross-entropy over all task pairs of the logits restricted to the key frequencies.

    Args:
        logits: ``[..., a, b, c]`` on the full grid (e.g. ``grid_outputs(...).logits``).
        freqs: the key frequencies (may be empty: only the per-output mean is kept).
        labels: ``[p²]`` grid labels, ``-1`` for inputs outside the task (default: ``a + b mod p``,
            see :func:`task_label_grid`).
        ts: a :class:`~grokinterp.analysis.groups.TaskStructure`: ``freqs`` are then its key irreps, the
            projection is :func:`~grokinterp.analysis.projections.group_filters` and the loss is taken over
            the task's pairs **in the block** (default labels: the task's).

    Returns:
        float64 ``[...]``.

    Notes:
        ``R = P L`` with ``P`` the projection onto ``span{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``
        for every output ``c`` (:func:`sum_frequency_projection`);
        ``restricted_loss = mean_{(a,b) valid} −log softmax(R[a, b])[label(a, b)]``.
        ``R`` depends on ``(a, b)`` only through ``s = a + b mod p``, so the softmax is taken on
        the ``p × p`` table ``R[s, c]`` and gathered per pair.
    """
    if ts is not None:
        L, labels = _prepare_ts(logits, labels, ts)
        valid = _in_block(ts, torch.nonzero(labels >= 0)[:, 0])
        R, _ = group_filters(ts.label_sums(L), ts, freqs)
        return restricted_nll(R, ts.coords[valid], labels[valid]).reshape(logits.shape[:-3])
    L, p, labels = _prepare(logits, labels, "logits")
    ws = check_freq_list(p, freqs)
    valid = torch.nonzero(labels >= 0)[:, 0]
    R, _ = key_filters(antidiagonal_sums(L), ws)  # [n, s, c]
    return restricted_nll(R, sum_index(p)[valid], labels[valid]).reshape(logits.shape[:-3])


def _prepare_ts(logits: Tensor, labels, ts) -> tuple[Tensor, Tensor]:
    n = check_square_axes(logits, (-3, -2), "logits [..., a, b, vocab]")
    if n != ts.n:
        raise AnalysisError(f"logits: the grid has {n} symbols per axis, the task {ts.task.name!r} {ts.n}")
    if labels is None:
        labels = torch.from_numpy(ts.task.label_grid().copy())
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.shape != (n * n,):
        raise AnalysisError(f"labels: expected [n²] = [{n * n}] grid labels, got shape {list(labels.shape)}")
    return logits.reshape(-1, n, n, logits.shape[-1]), labels


def _in_block(ts, pairs: Tensor) -> Tensor:
    return pairs[ts.coords[pairs] >= 0]


def restricted_nll(R: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Mean NLL of the restricted logits ``R [n, s, c]`` over pairs with sums ``s`` and labels ``y``."""
    logp = torch.log_softmax(R, dim=-1)
    return -logp[:, s.to(R.device), y.to(R.device)].mean(-1)


def excluded_loss(logits: Tensor, freqs: Sequence[int], train_pairs, labels: Tensor | None = None,
                  ts=None) -> Tensor:
    """Cross-entropy on the training pairs of the logits with the key-frequency components removed.

    Args:
        logits: ``[..., a, b, c]`` on the full grid.
        freqs: the key frequencies (empty: the plain training loss).
        train_pairs: grid indices ``a * p + b`` of the training pairs (``run.split_pairs()[0]``).
        labels: ``[p²]`` grid labels (default ``a + b mod p``).
        ts: a :class:`~grokinterp.analysis.groups.TaskStructure` (``freqs`` are its key irreps; the loss is
            over the training pairs in the block).

    Returns:
        float64 ``[...]``.

    Notes:
        ``E = L − P_key L`` with ``P_key`` the projection (over the full grid) onto
        ``span{cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``;
        ``excluded_loss = mean_{(a,b) ∈ train} −log softmax(E[a, b])[label(a, b)]``.
    """
    if ts is not None:
        L, labels = _prepare_ts(logits, labels, ts)
        trn = _in_block(ts, check_grid_pairs(labels, train_pairs, ts.n, "train_pairs"))
        _, K = group_filters(ts.label_sums(L), ts, freqs)
        return excluded_nll(L, K, trn, labels[trn], ts.coords).reshape(logits.shape[:-3])
    L, p, labels = _prepare(logits, labels, "logits")
    ws = check_freq_list(p, freqs)
    trn = check_grid_pairs(labels, train_pairs, p, "train_pairs")
    _, K = key_filters(antidiagonal_sums(L), ws)
    return excluded_nll(L, K, trn, labels[trn]).reshape(logits.shape[:-3])


def excluded_nll(L: Tensor, K: Tensor, trn: Tensor, y: Tensor, coords: Tensor | None = None,
                 n_cols: int | None = None) -> Tensor:
    """Mean NLL on the pairs ``trn`` of ``L [n, a, b, c]`` minus the key projection ``K [n, s, c]``.

    ``coords``: the label coordinate ``s`` of every grid index of ``L`` (default ``a + b mod p``); every
    pair of ``trn`` must lie in the block (``coords ≥ 0``). ``L`` may hold a block of rows only: ``trn``
    and ``coords`` then index that block and ``n_cols`` is the grid's width."""
    n = L.shape[0]
    g = L.shape[2] if n_cols is None else n_cols
    s = (sum_index(g) if coords is None else coords)[trn.cpu()]
    E = L.reshape(n, -1, L.shape[-1])[:, trn.to(L.device)].float() - K.float()[:, s.to(L.device)]
    return nll_and_correct(E, y)[0].mean(-1)
