"""Representation quality index (Liu et al. 2022, "Towards understanding grokking: an effective theory of
representation learning").

Liu et al. call a representation of addition good when its embeddings form parallelograms: for
``a + b = c + d`` the sums ``E_a + E_b`` and ``E_c + E_d`` coincide. The RQI is the share of the
non-trivial parallelograms (``{a, b} ≠ {c, d}``) that close.

Our rule (the paper's toy model has scalar-valued, unnormalised embeddings; we state the normalisation):

* ``E = W_E[:p]`` centred over the tokens; scale ``s = sqrt(mean_a ‖E_a‖²)`` (the RMS embedding norm);
* a parallelogram ``(a, b, c, d)`` — unordered pairs ``{a, b} ≠ {c, d}`` with ``a + b = c + d`` **as integers**
  (Liu et al.'s addition; ``modular=True``: ``a + b ≡ c + d (mod p)``) — closes when
  ``‖E_a + E_b − E_c − E_d‖ ≤ tol · s`` (default ``tol = 0.1``);
* RQI = closed / all (for ``p > 160`` over a seeded sample of 2¹⁸ parallelograms). Computed from the Gram
  matrix ``E Eᵀ`` (ten entries per parallelogram), so the cost does not grow with the width. A linear embedding ``E_a = a·v`` gives 1; random embeddings give ≈ 0.

Undefined for a task that is not ``a + b`` mod p (no parallelograms to close) and for a family without a
token embedding (an MLP on one-hot inputs): :func:`representation_quality` raises, the ``rqi`` measure records
NaN and says why. Note: the circle a modular-addition transformer learns (Nanda et al.; Liu et al.'s own
transformer figures) does **not** close integer parallelograms — ``cos wa + cos wb`` depends on ``a − b`` too —
so on those models the index measures how *linear* (number-line) the embedding is, not whether the circuit
formed; the study reports what it finds.

Example:
    >>> W_E = torch.arange(7.0)[:, None] * torch.ones(1, 4)      # a number line
    >>> representation_quality(W_E, 7)
    tensor(1., dtype=torch.float64)
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from ...errors import AnalysisError

__all__ = ["representation_quality", "circle_quality", "parallelograms", "DEFAULT_TOL"]

#: Default closing tolerance, relative to the RMS embedding norm.
DEFAULT_TOL = 0.1
#: Largest ``p`` whose parallelograms are all enumerated (≈ p³/12 of them); above, a seeded sample of 2¹⁸.
MAX_EXACT_P = 160


@lru_cache(maxsize=16)
def parallelograms(p: int, modular: bool = False) -> tuple[Tensor, Tensor]:
    """The non-trivial parallelograms over ``0..p−1`` as two ``[m, 2]`` int64 pair lists ``(a, b)``, ``(c, d)``
    (unordered pairs ``a ≤ b``, ``c ≤ d``, each parallelogram once)."""
    if p < 3:
        raise AnalysisError(f"p: parallelograms need at least 3 tokens, got p = {p}")
    a, b = torch.triu_indices(p, p)  # a ≤ b
    s = (a + b) % p if modular else a + b
    left, right = [], []
    order = torch.argsort(s, stable=True)
    s_sorted = s[order]
    bounds = torch.searchsorted(s_sorted, torch.unique(s_sorted))
    ends = torch.cat([bounds[1:], torch.tensor([len(s)])])
    for lo, hi in zip(bounds.tolist(), ends.tolist()):
        if hi - lo < 2:
            continue
        i, j = torch.triu_indices(hi - lo, hi - lo, offset=1)
        left.append(order[lo:hi][i])
        right.append(order[lo:hi][j])
    li, ri = torch.cat(left), torch.cat(right)
    return torch.stack([a[li], b[li]], 1), torch.stack([a[ri], b[ri]], 1)


def _centred_embeddings(W_E: Tensor | None, p: int, tol: float) -> tuple[Tensor, bool]:
    """The checked, centred float64 embeddings of the ``p`` residues, ``[n, p, d]``, and whether ``W_E``
    was one matrix (``[vocab, d]``) rather than a stack of them."""
    if W_E is None:
        raise AnalysisError("W_E: the RQI is undefined for a model without a token embedding "
                            "(an MLP on one-hot inputs): there are no embeddings to form parallelograms")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise AnalysisError(f"tol: must be a positive number, got {tol!r}")
    single = W_E.ndim == 2
    E = W_E[None] if single else W_E
    if E.ndim != 3 or E.shape[1] < p or E.shape[-1] == 0 or E.shape[0] == 0:
        raise AnalysisError(f"W_E: expected [vocab ≥ p = {p}, d ≥ 1] or [n ≥ 1, vocab, d], got {list(W_E.shape)}")
    E = E[:, :p].double()
    E = E - E.mean(1, keepdim=True)
    return E, single


def representation_quality(W_E: Tensor | None, p: int, *, tol: float = DEFAULT_TOL, modular: bool = False) -> Tensor:
    """The RQI of the embeddings (see the module's rule).

    Args:
        W_E: ``[vocab, d]`` or stacked ``[n, vocab, d]`` (rows ``0..p−1`` are the residues); ``None`` for a
            family without an embedding (raises).
        p: the modulus.
        tol: closing tolerance relative to the RMS embedding norm (> 0).
        modular: parallelograms of ``a + b ≡ c + d (mod p)`` instead of integer sums.

    Returns:
        float64 ``[]`` or ``[n]`` in [0, 1] (NaN where the embedding is all zero after centring).
    """
    E, single = _centred_embeddings(W_E, p, tol)
    G = E @ E.transpose(1, 2)  # [n, p, p]: ‖E_a + E_b − E_c − E_d‖² is a signed sum of ten Gram entries
    scale2 = torch.diagonal(G, dim1=1, dim2=2).mean(-1)  # [n] mean ‖E_a‖²
    L, R = parallelograms(int(p), bool(modular)) if p <= MAX_EXACT_P else sampled_parallelograms(int(p), bool(modular))
    a, b, c, d = L[:, 0], L[:, 1], R[:, 0], R[:, 1]
    closed = torch.zeros(E.shape[0], dtype=torch.float64)
    Gf = G.reshape(G.shape[0], -1)  # flat [n, p²]: one gather per term
    diag = torch.diagonal(G, dim1=1, dim2=2)  # [n, p]
    step = 1 << 16
    for lo in range(0, len(a), step):
        i = slice(lo, lo + step)
        ai, bi, ci, di = a[i], b[i], c[i], d[i]
        sq = diag[:, ai] + diag[:, bi] + diag[:, ci] + diag[:, di]
        cross = Gf[:, ai * p + bi] + Gf[:, ci * p + di] - Gf[:, ai * p + ci] - Gf[:, ai * p + di] \
            - Gf[:, bi * p + ci] - Gf[:, bi * p + di]
        closed += (sq + 2 * cross <= (tol ** 2) * scale2[:, None]).double().sum(-1)
    out = torch.where(scale2 > 0, closed / len(a), torch.full_like(closed, float("nan")))
    return out[0] if single else out


def sampled_parallelograms(p: int, modular: bool = False, n: int = 1 << 18, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded sample of non-trivial parallelograms for a large ``p`` (ordered draws of ``a, b, c`` with
    ``d = a + b − c``, kept when ``d`` is a token and ``{a, b} ≠ {c, d}``), as :func:`parallelograms` returns."""
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randint(0, p, (2 * n,), generator=g) for _ in range(3))
    d = a + b - c
    d = d % p if modular else d
    keep = (d >= 0) & (d < p) & (c != a) & (c != b)
    a, b, c, d = a[keep][:n], b[keep][:n], c[keep][:n], d[keep][:n]
    return torch.stack([a, b], 1), torch.stack([c, d], 1)


def circle_quality(W_E: Tensor | None, p: int, *, tol: float = DEFAULT_TOL, freqs=None) -> Tensor:
    """The modular analogue of the RQI for circle embeddings: the share of modular parallelograms
    ``a + b ≡ c + d (mod p)`` (non-trivial) that close as *rotations* in the best frequency's plane.

    For each frequency ``k = 1..⌊(p−1)/2⌋``: the plane of ``R^d`` spanned by the embedding's ``cos(wa)`` and
    ``sin(wa)`` Fourier coefficient vectors (``w = 2πk/p``); every (centred) ``E_a`` projected onto it, the
    projections whitened (their 2 × 2 covariance made the identity, so an ellipse becomes a circle) and read as
    complex numbers ``z_a`` of RMS modulus 1. The parallelogram closes when ``|z_a z_b − z_c z_d| ≤ tol`` (a
    circle ``z_a = e^{±iwa}`` closes every one). The index is the largest share over the frequencies (``freqs``:
    those only; the ``rqi`` measure passes the run's key frequencies, which keeps it cheap in the report).

    A circle at any frequency (ellipse, rotated into any plane of ``R^d``) gives 1; random embeddings give a few
    per cent (the best of ``⌊(p−1)/2⌋`` chances); a number line does not close mod p. Undefined (raises) as
    :func:`representation_quality`.

    Returns:
        float64 ``[]`` or ``[n]`` in [0, 1].
    """
    E, single = _centred_embeddings(W_E, p, tol)
    L, R = parallelograms(int(p), True) if p <= MAX_EXACT_P else sampled_parallelograms(int(p), True)
    left, right = L[:, 0] * p + L[:, 1], R[:, 0] * p + R[:, 1]  # flat indices of the products z_a z_b, z_c z_d
    x = torch.arange(p, dtype=torch.float64)
    best = torch.zeros(E.shape[0], dtype=torch.float64)
    ks = list(range(1, (p - 1) // 2 + 1)) if freqs is None else [int(k) for k in freqs]
    if not ks or any(k < 1 or k > (p - 1) // 2 for k in ks):
        raise AnalysisError(f"freqs: expected frequencies in 1..{(p - 1) // 2}, got {list(ks)}")
    for k in ks:
        w = 2 * torch.pi * k / p
        F = torch.stack([torch.cos(w * x), torch.sin(w * x)])  # [2, p]
        B = F @ E  # [n, 2, d] the coefficient vectors
        Q, _ = torch.linalg.qr(B.transpose(1, 2))  # [n, d, 2] an orthonormal basis of their plane
        X = E @ Q  # [n, p, 2]
        C = X.transpose(1, 2) @ X / p  # [n, 2, 2]
        evals, evecs = torch.linalg.eigh(C)
        ok = evals[:, 0] > 1e-12 * evals[:, 1].clamp_min(1e-300)
        W = evecs @ torch.diag_embed(evals.clamp_min(1e-300).rsqrt()) @ evecs.transpose(1, 2)
        Z = X @ W  # whitened: RMS |z| = sqrt(2)
        z = torch.complex(Z[..., 0], Z[..., 1]).to(torch.complex64) / (2 ** 0.5)  # float32: ample for tol ~ 0.1
        prod = (z[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)  # [n, p²] the products z_a z_b
        share = ((prod[:, left] - prod[:, right]).abs() <= tol).double().mean(-1)
        best = torch.maximum(best, torch.where(ok, share, torch.zeros_like(share)))
    return best[0] if single else best
