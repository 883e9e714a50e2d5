"""The one home of "restricted" and "excluded": projecting logits onto / off the key terms.

The generalizing circuit writes, for every output ``c``, a logit map over ``(a, b)`` that depends
on ``a + b`` through ``cos(w(a+b))`` and ``sin(w(a+b))`` for a few key frequencies ``w``
(Nanda et al. 2023). The *restricted* logits keep, per output, the mean over ``(a, b)`` and those
components; the *excluded* logits remove the components. Both are orthogonal projections in
``R^{p²}`` computed here — by FFT of the anti-diagonal sums, never by building the basis — and
:mod:`~grokinterp.analysis.losses` turns them into the restricted / excluded losses.

Every task with a group structure (:mod:`grokinterp.tasks.algebra`) generalises this: on the block
of the grid where the label is the group element ``s(a, b)`` (``a + b``, ``a − b``, ``log a ± log b``,
``g·h``, ...), the key terms are the matrix elements ``ρ_ij(s(a, b))`` of the key irreps (for a cyclic
group: ``cos/sin(w·s)``). Because ``b ↦ s(a, b)`` is a bijection onto the group for every ``a`` of the
block, the projection only needs the *label sums* ``S[s, c] = Σ_{s(a,b) = s} L[a, b, c]``
(:meth:`~grokinterp.analysis.groups.TaskStructure.label_sums`) and one ``|G| × |G|`` projector
(:func:`group_filters`); ``|G|³`` logits are never projected as a whole. Pairs outside the block
(``mul``'s row and column of 0) keep their logits in the restricted logits and lose nothing in the
excluded ones.

================================  =================================================================
function                          returns
================================  =================================================================
:func:`sum_index`                 ``(a + b) mod p`` of each grid index
:func:`antidiagonal_sums`         ``G[s, c] = Σ_{a+b≡s} L[a, b, c]``
:func:`key_filters`               ``(R, K)`` over ``s``: restricted logits and key components
:func:`sum_frequency_projection`  the projection itself on the ``(a, b)`` grid
:func:`restrict_logits`           the logits of the restricted loss
:func:`exclude_logits`            the logits of the excluded loss
:func:`group_filters`             ``(R, K)`` over ``s`` for any group structure (key irreps)
:func:`structure_projection`      the projection on the grid for any group structure
================================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import AnalysisError
from .inputs import check_freq_list, check_square_axes

__all__ = ["sum_index", "antidiagonal_sums", "key_filters", "sum_frequency_projection", "restrict_logits",
           "exclude_logits", "group_filters", "structure_projection"]


def _check_vocab(logits: Tensor) -> int:
    return check_square_axes(logits, (-3, -2, -1), "logits [..., a, b, vocab]")


def sum_index(p: int) -> Tensor:
    """``(a + b) mod p`` for every grid index ``a * p + b`` (int64 ``[p²]``)."""
    a = torch.arange(p)
    return ((a[:, None] + a[None, :]) % p).reshape(-1)


def antidiagonal_sums(logits: Tensor) -> Tensor:
    """``G[n, s, c] = Σ_{a+b≡s} L[n, a, b, c]`` (float64) of ``logits [n, a, b, c]`` or ``[n, a*b, c]``."""
    n, c = logits.shape[0], logits.shape[-1]
    p = math.isqrt(logits[0].numel() // c)
    L = logits.reshape(n, p * p, c).double()
    G = torch.zeros(n, p, c, dtype=torch.float64, device=L.device)
    return G.index_add_(1, sum_index(p).to(L.device), L)


def key_filters(G: Tensor, freqs: Sequence[int]) -> tuple[Tensor, Tensor]:
    """From anti-diagonal sums ``G [n, s, c]``: the projections onto ``{1, cos/sin(w(a+b))}`` and onto
    ``{cos/sin(w(a+b))}`` alone, as functions of ``s``: ``(R [n, s, c], K [n, s, c])`` float64.

    ``K = ifft_s(mask · fft_s(G)) / p`` with ``mask`` selecting the DFT indices ``w`` and ``−w``;
    ``R = K + mean``, the mean of ``L[·, ·, c]`` over ``(a, b)`` being ``Σ_s G[s, c] / p²``.
    """
    p = G.shape[1]
    mean = G.sum(1, keepdim=True) / (p * p)
    if not freqs:
        K = torch.zeros_like(G)
    else:
        mask = torch.zeros(p, dtype=torch.bool)
        for w in freqs:
            mask[w] = mask[(-w) % p] = True
        K = torch.fft.ifft(torch.fft.fft(G, dim=1) * mask.to(G.device)[None, :, None], dim=1).real / p
    return K + mean, K


def sum_frequency_projection(logits: Tensor, freqs: Sequence[int], include_mean: bool = True) -> Tensor:
    """Project each output's logit map onto ``cos(w(a+b))``, ``sin(w(a+b))`` (and the mean), by FFT.

    Args:
        logits: ``[..., a, b, c]`` (any number of leading axes, e.g. ``ckpt``).
        freqs: frequencies ``w`` in ``1..⌊p/2⌋`` (may be empty).
        include_mean: also keep the mean of ``L[·, ·, c]`` over ``(a, b)``.

    Returns:
        float64 ``[..., a, b, c]``: the orthogonal projection (in ``R^{p²}``, for every ``c``)
        onto ``span{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``.

    Notes:
        With ``F[u, v, c] = Σ_{a,b} L[a, b, c] e^{−2πi(ua+vb)/p}`` the 2-D DFT, the projection onto
        ``span{cos(w(a+b)), sin(w(a+b))}`` is ``(2/p²) Re(F[w, w, c] e^{2πiw(a+b)/p})``
        (``1/p²`` instead of ``2/p²`` for the Nyquist frequency ``w = p/2`` of even ``p``, whose
        sine vanishes) and the mean is ``F[0, 0, c]/p²``. Since
        ``F[w, w, c] = Σ_s G[s, c] e^{−2πiws/p}`` with ``G[s, c] = Σ_{a+b≡s} L[a, b, c]``, only
        the 1-D DFT of the anti-diagonal sums ``G`` is needed: the projection is
        ``ifft_s(mask · fft_s(G))[a+b mod p] / p`` with ``mask`` selecting ``0, ±w``. This costs
        ``O(p³)`` additions and ``p`` FFTs of length ``p`` per checkpoint instead of a full 2-D FFT.
    """
    p = check_square_axes(logits, (-3, -2), "logits [..., a, b, vocab]")
    ws = check_freq_list(p, freqs)
    lead = logits.shape[:-3]
    flat = logits.reshape(-1, p, p, logits.shape[-1])
    R, K = key_filters(antidiagonal_sums(flat), ws)  # [n, s, c]
    out = (R if include_mean else K)[:, sum_index(p).to(R.device)]  # [n, a*p+b, c]
    return out.reshape(*lead, p, p, logits.shape[-1])


def group_filters(S: Tensor, ts, keys: Sequence[int]) -> tuple[Tensor, Tensor]:
    """From label sums ``S [n, s, c]``: the restricted logits and the key components as functions of ``s``.

    Args:
        S: label sums (:meth:`~grokinterp.analysis.groups.TaskStructure.label_sums`), float64.
        ts: the task's :class:`~grokinterp.analysis.groups.TaskStructure`.
        keys: key irreps (irrep indices; for a cyclic group the frequencies), may be empty.

    Returns:
        ``(R, K)``, float64 ``[n, |G|, c]``: ``R[s, c]`` is the restricted logit of every block pair with
        label coordinate ``s``; ``K`` the key components alone.

    Notes:
        With ``P`` the projector on functions on ``G`` onto the matrix elements of the key irreps
        (:meth:`~grokinterp.analysis.groups.GroupBasis.projector`): the projection of ``L[·, ·, c]`` (on the
        block) onto ``span{u(s(a, b)) : u ∈ key irreps}`` is ``(P S[·, c])(s(a, b)) / |G|`` (each ``u(s(a,b))``
        has squared norm ``|G|`` on the block), and the per-output mean is ``Σ_s S[s, c] / |G|²``. For
        ``a + b`` mod p this is :func:`key_filters` (``P`` then selects the DFT indices ``±w``).
    """
    m = ts.m
    keys = ts.basis.check_irreps(keys)
    mean = S.sum(1, keepdim=True) / (m * m)
    if not keys:
        K = torch.zeros_like(S)
    else:
        P = ts.basis.projector(keys, device=S.device)
        K = torch.matmul(P, S) / m
    return K + mean, K


def structure_projection(logits: Tensor, ts, keys: Sequence[int], include_mean: bool = True) -> Tensor:
    """Project each output's logit map on the block onto the key terms of a group structure.

    Args:
        logits: ``[..., a, b, c]`` on the task's grid.
        ts: the :class:`~grokinterp.analysis.groups.TaskStructure`.
        keys: key irreps (may be empty).
        include_mean: keep the per-output mean (the restricted logits) or only the key components.

    Returns:
        float64 like ``logits``. Outside the block: the logits themselves (``include_mean``) or 0.
    """
    n = check_square_axes(logits, (-3, -2), "logits [..., a, b, vocab]")
    if n != ts.n:
        raise AnalysisError(f"logits: the grid has {n} symbols per axis, the task {ts.task.name!r} {ts.n}")
    lead, c = logits.shape[:-3], logits.shape[-1]
    flat = logits.reshape(-1, n, n, c)
    R, K = group_filters(ts.label_sums(flat), ts, keys)
    F = R if include_mean else K
    out = flat.double().reshape(-1, n * n, c).clone() if include_mean else \
        torch.zeros(flat.shape[0], n * n, c, dtype=torch.float64, device=flat.device)
    blk = ts.block.to(flat.device)
    out[:, blk] = F[:, ts.coords[ts.block].to(flat.device)]
    return out.reshape(*lead, n, n, c)


def restrict_logits(logits: Tensor, freqs: Sequence[int], ts=None) -> Tensor:
    """Keep only each output's mean and its ``cos(w(a+b))``, ``sin(w(a+b))`` components, ``w ∈ freqs``.

    The logits of the paper's *restricted loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to keep (may be empty: then only the per-output mean is left); with ``ts``,
            key irreps.
        ts: a :class:`~grokinterp.analysis.groups.TaskStructure` (default: ``a + b`` mod p).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        With the 2-D DFT ``X[u, v, c]`` of ``L[·, ·, c]``, keep the entries ``(0, 0)``,
        ``(w, w)`` and ``(−w, −w)`` and invert: the projection onto span
        ``{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}`` for every ``c``. With ``ts``:
        :func:`structure_projection`.
    """
    if ts is not None:
        return structure_projection(logits, ts, freqs, include_mean=True)
    _check_vocab(logits)
    return sum_frequency_projection(logits, freqs, include_mean=True)


def exclude_logits(logits: Tensor, freqs: Sequence[int], ts=None) -> Tensor:
    """Remove each output's ``cos(w(a+b))``, ``sin(w(a+b))`` components for ``w ∈ freqs``.

    The logits of the paper's *excluded loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to remove (empty: the logits are returned unchanged, as float64).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        ``L − P L`` with ``P`` the projection onto span ``{cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``
        (2-D DFT entries ``(w, w)`` and ``(−w, −w)``). With a ``ts``
        (:class:`~grokinterp.analysis.groups.TaskStructure`), ``freqs`` are key irreps and ``P`` is
        :func:`structure_projection` without the mean.
    """
    if ts is not None:
        return logits.double() - structure_projection(logits, ts, freqs, include_mean=False)
    freqs = list(freqs)
    if not freqs:
        _check_vocab(logits)
        return logits.double().clone()
    _check_vocab(logits)
    return logits.double() - sum_frequency_projection(logits, freqs, include_mean=False)
