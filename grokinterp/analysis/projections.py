"""The one home of "restricted" and "excluded": projecting logits onto / off the key-frequency terms.

The generalizing circuit writes, for every output ``c``, a logit map over ``(a, b)`` that depends
on ``a + b`` through ``cos(w(a+b))`` and ``sin(w(a+b))`` for a few key frequencies ``w``
(Nanda et al. 2023). The *restricted* logits keep, per output, the mean over ``(a, b)`` and those
components; the *excluded* logits remove the components. Both are orthogonal projections in
``R^{p²}`` computed here — by FFT of the anti-diagonal sums, never by building the basis — and
:mod:`~grokinterp.analysis.losses` turns them into the restricted / excluded losses.

================================  =================================================================
function                          returns
================================  =================================================================
:func:`sum_index`                 ``(a + b) mod p`` of each grid index
:func:`antidiagonal_sums`         ``G[s, c] = Σ_{a+b≡s} L[a, b, c]``
:func:`key_filters`               ``(R, K)`` over ``s``: restricted logits and key components
:func:`sum_frequency_projection`  the projection itself on the ``(a, b)`` grid
:func:`restrict_logits`           the logits of the restricted loss
:func:`exclude_logits`            the logits of the excluded loss
================================  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .inputs import check_freq_list, check_square_axes

__all__ = ["sum_index", "antidiagonal_sums", "key_filters", "sum_frequency_projection", "restrict_logits",
           "exclude_logits"]


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


def restrict_logits(logits: Tensor, freqs: Sequence[int]) -> Tensor:
    """Keep only each output's mean and its ``cos(w(a+b))``, ``sin(w(a+b))`` components, ``w ∈ freqs``.

    The logits of the paper's *restricted loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to keep (may be empty: then only the per-output mean is left).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        With the 2-D DFT ``X[u, v, c]`` of ``L[·, ·, c]``, keep the entries ``(0, 0)``,
        ``(w, w)`` and ``(−w, −w)`` and invert: the projection onto span
        ``{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}`` for every ``c``.
    """
    _check_vocab(logits)
    return sum_frequency_projection(logits, freqs, include_mean=True)


def exclude_logits(logits: Tensor, freqs: Sequence[int]) -> Tensor:
    """Remove each output's ``cos(w(a+b))``, ``sin(w(a+b))`` components for ``w ∈ freqs``.

    The logits of the paper's *excluded loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to remove (empty: the logits are returned unchanged, as float64).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        ``L − P L`` with ``P`` the projection onto span ``{cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``
        (2-D DFT entries ``(w, w)`` and ``(−w, −w)``).
    """
    freqs = list(freqs)
    if not freqs:
        _check_vocab(logits)
        return logits.double().clone()
    _check_vocab(logits)
    return logits.double() - sum_frequency_projection(logits, freqs, include_mean=False)
