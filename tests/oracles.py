"""Plain reference implementations the tests (and the benchmarks) check the package against.

Nothing here is fast or clever on purpose: every quantity is computed the textbook way — explicit
loops over checkpoints, explicit orthonormal bases, full forwards of the hooked model — so that a
disagreement with the vectorised package code points at the package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from grokinterp.analysis.groups import irreps, task_structure
from grokinterp.analysis.inputs import run_task_arrays
from grokinterp.analysis.keyfreqs import KeyFrequencies, resolve_key_frequencies
from grokinterp.analysis.measures import MEASURE_COLUMNS, measures_frame, select_epochs
from grokinterp.model.grid import grid_tokens

__all__ = ["progress_measures_reference", "irrep_columns"]


def _brute_sum_basis(p: int, freqs: Sequence[int], include_mean: bool) -> Tensor:
    """Orthonormal columns ``[p², m]``: the constant and ``cos/sin(2πw(a+b)/p)`` on the grid."""
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None] + a[None, :]).reshape(-1)
    cols = [torch.ones(p * p, dtype=torch.float64)] if include_mean else []
    for w in freqs:
        for fn in (torch.cos, torch.sin):
            v = fn(2 * math.pi * w * s / p)
            if v.norm() > 1e-6:  # the Nyquist sine vanishes
                cols.append(v)
    if not cols:
        return torch.zeros(p * p, 0, dtype=torch.float64)
    B = torch.stack(cols, dim=1)
    return B / B.norm(dim=0, keepdim=True)


def _brute_freq_norms(W: Tensor, p: int) -> np.ndarray:
    """Per-frequency norms ``√(‖c_k·W‖² + ‖s_k·W‖²)``, k = 1..p//2, of ``W [p, d]`` along axis 0."""
    x = torch.arange(p, dtype=torch.float64)
    out = []
    for k in range(1, p // 2 + 1):
        sq = 0.0
        for fn in (torch.cos, torch.sin):
            v = fn(2 * math.pi * k * x / p)
            if v.norm() > 1e-6:
                sq += float(((v / v.norm()) @ W.double()).pow(2).sum())
        out.append(math.sqrt(sq))
    return np.array(out)


def irrep_columns(ts, index: int) -> Tensor:
    """Orthonormal columns ``[|G|, k]`` spanning the matrix elements of real irrep ``index`` of ``ts``'s group,
    built from the complex irreps' matrices (real and imaginary parts of ``ρ_ij``, made orthonormal by
    QR): independent of :class:`~grokinterp.analysis.groups.GroupBasis`."""
    chi = ts.basis.irreps[index].character
    cols = []
    for ir in irreps(ts.group):
        if np.allclose(ir.character.real * (1 if ir.kind == "real" else 2), chi):
            M = ir.matrices.reshape(ts.m, -1)
            cols += [M.real, M.imag] if ir.kind == "complex" else [M.real]
    A = torch.tensor(np.concatenate(cols, axis=1), dtype=torch.float64)
    U, S, _ = torch.linalg.svd(A, full_matrices=False)
    return U[:, S > 1e-8 * S.max()]


def _brute_irrep_norms(W: Tensor, ts) -> np.ndarray:
    """Per-irrep norms (irreps 1..) of ``W [|G|, d]`` (rows in element order) along axis 0."""
    return np.array([float((irrep_columns(ts, i).T @ W.double()).norm()) for i in range(1, ts.basis.n_irreps)])


def _brute_block_basis(ts, keys: Sequence[int], include_mean: bool) -> Tensor:
    """Orthonormal columns over the block pairs: the constant and ``u(s(a, b))`` for the key irreps' columns."""
    s = ts.coords[ts.block]
    cols = [torch.ones(len(s), dtype=torch.float64)] if include_mean else []
    for k in keys:
        U = irrep_columns(ts, k)
        cols += list(U[s].T)
    if not cols:
        return torch.zeros(len(s), 0, dtype=torch.float64)
    B = torch.stack(cols, dim=1)
    Q, R = torch.linalg.qr(B)
    return Q[:, R.diagonal().abs() > 1e-9]


def _ce(L: Tensor, labels: Tensor, idx: Tensor, rows_of: Tensor | None = None) -> float:
    """Mean cross-entropy of the pairs ``idx`` (their logits at ``rows_of`` of ``L`` when given)."""
    logp = torch.log_softmax(L[idx if rows_of is None else rows_of], dim=-1)
    return float(-logp[torch.arange(len(idx), device=L.device), labels[idx]].mean())


def _setup(run, key_freqs, epochs, key_freq_method, device):
    """Epochs, key frequencies, device and the task arrays (labels, train, test, valid) on it."""
    dev = torch.device(device)
    return (select_epochs(run, epochs), resolve_key_frequencies(run, key_freqs, key_freq_method), dev,
            tuple(t.to(dev) for t in run_task_arrays(run)))


def _forward(run, epoch, tokens: Tensor, dev):
    """The hooked model at ``epoch`` and its final-position logits on every grid token sequence."""
    model = run.model(int(epoch), device=dev)
    with torch.no_grad():
        return model, model(tokens)[:, -1]  # [p², c]


def _plain_columns(model, L32: Tensor, labels: Tensor, trn: Tensor, tst: Tensor, valid: Tensor) -> dict[str, float]:
    """The columns that do not depend on the structure: losses, accuracies, weight norm."""
    L = L32.double()
    return {
        "train_loss": _ce(L, labels, trn), "test_loss": _ce(L, labels, tst) if len(tst) else np.nan,
        "train_acc": float((L32[trn].argmax(-1) == labels[trn]).double().mean()),
        "test_acc": float((L32[tst].argmax(-1) == labels[tst]).double().mean()) if len(tst) else np.nan,
        "all_loss": _ce(L, labels, valid),
        "sum_sq_weights": float(sum(t.detach().double().pow(2).sum() for t in model.parameters())),
    }


def _brute_gini(x: np.ndarray) -> float:
    xs = np.sort(np.abs(x))
    n = len(xs)
    k = np.arange(1, n + 1)
    return float(1 - 2 * np.sum(xs / xs.sum() * (n - k + 0.5) / n))


def progress_measures_reference(
    run,
    key_freqs: Sequence[int] | KeyFrequencies | None = None,
    *,
    epochs: Sequence[int] | None = None,
    key_freq_method: str = "W_L",
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """The same table as :func:`progress_measures`, computed plainly one checkpoint at a time.

    For each checkpoint: build the model (``run.model(epoch)``), run it on the ``p²`` grid tokens,
    project the final-position logits onto explicit orthonormal vectors ``1``, ``cos(w(a+b))``,
    ``sin(w(a+b))`` (``B Bᵀ L``), and compute Fourier norms from explicit cos/sin vectors. Slow
    (a Python loop of full forwards); it exists to check the vectorised path and as the baseline
    of ``benchmarks/analysis_speed.py``.

    Args and Returns: as :func:`~grokinterp.analysis.measures.progress_measures` with the built-in
    measures (``device``: where the forwards run).

    Tasks with another group structure project, on the block, onto explicit orthonormal columns
    ``u(s(a, b))`` built from the irreps' matrices (:func:`irrep_columns`); tasks without one have NaN
    restricted / excluded columns and Fourier Gini over the tokens.
    """
    ts = task_structure(run.task)
    if ts is not None and type(ts.structure).__name__ != "CyclicSum":
        return _reference_structured(run, ts, key_freqs, epochs=epochs, key_freq_method=key_freq_method,
                                     device=device)
    p = run.config.model.p
    eps, keys, dev, (labels, trn, tst, valid) = _setup(run, key_freqs, epochs, key_freq_method, device)
    B_all = _brute_sum_basis(p, keys.freqs, include_mean=True).to(dev)
    B_key = _brute_sum_basis(p, keys.freqs, include_mean=False).to(dev)
    tokens = grid_tokens(p).to(dev)
    rows: dict[str, list] = {c: [] for c in MEASURE_COLUMNS[1:]}
    for e in eps:
        model, L32 = _forward(run, e, tokens, dev)
        L = L32.double()
        restricted = B_all @ (B_all.T @ L)
        excluded = L - B_key @ (B_key.T @ L)
        W_E = model.embed.W_E.detach()[:p].cpu()
        W_L = (model.blocks[0].mlp.W_out @ model.unembed.W_U).detach().cpu()  # [d_mlp, c]
        vals = {
            **_plain_columns(model, L32, labels, trn, tst, valid), "restricted_loss": _ce(restricted, labels, valid),
            "restricted_acc": float((restricted[valid].argmax(-1) == labels[valid]).double().mean()),
            "excluded_loss": _ce(excluded, labels, trn),
            "gini_W_E": _brute_gini(_brute_freq_norms(W_E, p)),
            "gini_W_L": _brute_gini(_brute_freq_norms(W_L.T, p)),
        }
        for c, v in vals.items():
            rows[c].append(np.array([v], dtype=np.float64))
    return measures_frame(rows, keys, eps, "reference (per-checkpoint forward, brute-force projection)", p, {})


def _reference_structured(run, ts, key_freqs, *, epochs, key_freq_method, device) -> pd.DataFrame:
    n = run.config.model.p
    eps, keys, dev, (labels, trn, tst, valid) = _setup(run, key_freqs, epochs, key_freq_method, device)
    blk = ts.block.to(dev)
    B_all = _brute_block_basis(ts, keys.freqs, include_mean=True).to(dev)
    B_key = _brute_block_basis(ts, keys.freqs, include_mean=False).to(dev)
    pos = torch.full((n * n,), -1, dtype=torch.int64, device=dev)
    pos[blk] = torch.arange(len(blk), device=dev)
    v_blk = valid[pos[valid] >= 0]
    t_blk = trn[pos[trn] >= 0]
    tokens = grid_tokens(n).to(dev)
    e_tok = ts.element_token.to(dev)
    rows: dict[str, list] = {c: [] for c in MEASURE_COLUMNS[1:]}
    for e in eps:
        model, L32 = _forward(run, e, tokens, dev)
        Lb = L32.double()[blk]
        restricted = B_all @ (B_all.T @ Lb)  # [block, c]
        excluded = Lb - B_key @ (B_key.T @ Lb)
        W_E = model.embed.W_E.detach()[e_tok].cpu()
        W_L = (model.blocks[0].mlp.W_out @ model.unembed.W_U).detach()[:, e_tok].cpu()
        vals = {
            **_plain_columns(model, L32, labels, trn, tst, valid),
            "restricted_loss": _ce(restricted, labels, v_blk, pos[v_blk]),
            "restricted_acc": float((restricted[pos[v_blk]].argmax(-1) == labels[v_blk]).double().mean()),
            "excluded_loss": _ce(excluded, labels, t_blk, pos[t_blk]),
            "gini_W_E": _brute_gini(_brute_irrep_norms(W_E, ts)),
            "gini_W_L": _brute_gini(_brute_irrep_norms(W_L.T, ts)),
        }
        for c, v in vals.items():
            rows[c].append(np.array([v], dtype=np.float64))
    return measures_frame(rows, keys, eps, "reference (per-checkpoint forward, brute-force projection)", n, {}, ts)
