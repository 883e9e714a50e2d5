"""Progress measures across a run: restricted / excluded loss, Fourier sparsity, weight norm.

Nanda et al. (2023, §5 and App. C) track the formation of the generalizing circuit with measures
computed at every checkpoint. :func:`progress_measures` computes all of them for a whole run,
one row per checkpoint, vectorised over chunks of stacked checkpoints;
:func:`progress_measures_reference` is the plain per-checkpoint implementation used to check it.

Which inputs each measure uses (our choice, stated because the study's codebases differ):

=====================  ==========================================================================
column                 definition
=====================  ==========================================================================
``train_loss/_acc``    cross-entropy / accuracy of the original logits on the stored **training**
                       pairs (``run.split_pairs()[0]``).
``test_loss/_acc``     the same on the stored **test** pairs.
``all_loss``           the same over **all** valid pairs of the task (train ∪ test).
``restricted_loss``    the logits of **all** ``p²`` inputs projected, per output ``c``, onto
                       ``span{1, cos(w(a+b)), sin(w(a+b)) : w ∈ key}`` (the per-output mean plus
                       the key-frequency components); cross-entropy over **all** valid pairs.
``restricted_acc``     accuracy of those restricted logits over **all** valid pairs: how well the
                       key-frequency circuit alone would classify.
``excluded_loss``      the logits with the key-frequency ``cos(w(a+b))``, ``sin(w(a+b))``
                       components removed (projection taken over the full grid, as above);
                       cross-entropy on the **training** pairs.
``gini_W_E``           Gini coefficient (Hurley & Rickard) of the per-frequency Fourier norms of
                       ``W_E[:p]``, frequencies ``1..⌊p/2⌋`` (the constant left out).
``gini_W_L``           the same for ``W_L = W_out W_U`` along the output (vocab) axis.
``sum_sq_weights``     ``Σ θ²`` over every parameter (weights and biases).
=====================  ==========================================================================

Losses are computed from the float32 grid logits of that checkpoint (exact per checkpoint, not
the metrics logged during training) with a log-softmax accurate to float64 level even for
losses of 1e-7 and below (see ``_nll``; the reference uses a plain float64 log-softmax). The key frequencies are chosen once (by
default by :func:`~grokinterp.fourier.key_frequencies` on the final checkpoint) and held fixed
across checkpoints; they are reported in ``df.attrs``.

Example:
    >>> df = progress_measures(run)                                  # doctest: +SKIP
    >>> df.attrs["key_freqs"], df.columns.tolist()[:5]               # doctest: +SKIP
    ([14, 35, 41, 42, 52], ['epoch', 'train_loss', 'test_loss', 'train_acc', 'test_acc'])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .errors import AnalysisError
from .fourier import (
    KeyFrequencies,
    embed_fourier_norms,
    fourier_basis,
    gini,
    key_frequencies,
    neuron_logit_fourier_norms,
)

__all__ = [
    "MEASURE_COLUMNS",
    "progress_measures",
    "progress_measures_reference",
    "sum_frequency_projection",
    "restricted_loss",
    "excluded_loss",
    "task_label_grid",
]

#: Columns of :func:`progress_measures`, in order.
MEASURE_COLUMNS = (
    "epoch", "train_loss", "test_loss", "train_acc", "test_acc", "all_loss",
    "restricted_loss", "restricted_acc", "excluded_loss", "gini_W_E", "gini_W_L", "sum_sq_weights",
)

_SPLITS = {
    "train_loss": "train pairs", "test_loss": "test pairs", "all_loss": "all valid pairs",
    "restricted_loss": "all valid pairs (projection over the full p×p grid)",
    "restricted_acc": "all valid pairs (projection over the full p×p grid)",
    "excluded_loss": "train pairs (projection over the full p×p grid)",
}

#: Working memory aimed at per chunk of checkpoints when ``chunk`` is not given (bytes).
_CHUNK_BUDGET = 768 * 2 ** 20


# -- the cos(w(a+b)), sin(w(a+b)) projection ------------------------------------------------------
def _sum_index(p: int) -> Tensor:
    """``(a + b) mod p`` for every grid index ``a * p + b`` (int64 ``[p²]``)."""
    a = torch.arange(p)
    return ((a[:, None] + a[None, :]) % p).reshape(-1)


def _antidiagonal_sums(logits: Tensor) -> Tensor:
    """``G[n, s, c] = Σ_{a+b≡s} L[n, a, b, c]`` (float64) of ``logits [n, a, b, c]`` or ``[n, a*b, c]``."""
    n, c = logits.shape[0], logits.shape[-1]
    p = math.isqrt(logits[0].numel() // c)
    L = logits.reshape(n, p * p, c).double()
    G = torch.zeros(n, p, c, dtype=torch.float64, device=L.device)
    return G.index_add_(1, _sum_index(p).to(L.device), L)


def _sum_filters(G: Tensor, freqs: Sequence[int]) -> tuple[Tensor, Tensor]:
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


def _nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
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


def _check_grid(logits: Tensor, what: str = "logits") -> int:
    if not torch.is_tensor(logits) or logits.ndim < 3:
        shape = list(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise AnalysisError(f"{what}: expected a tensor [..., a, b, vocab], got {shape}")
    p = logits.shape[-3]
    if logits.shape[-2] != p or p < 3:
        raise AnalysisError(f"{what}: axes a and b must have the same size p ≥ 3, got shape {list(logits.shape)}")
    return p


def _check_freqs(p: int, freqs) -> list[int]:
    if isinstance(freqs, KeyFrequencies):
        freqs = freqs.freqs
    if isinstance(freqs, (int, np.integer)):
        freqs = [freqs]
    try:
        freqs = list(freqs)
    except TypeError:
        raise AnalysisError(f"key_freqs: expected a sequence of frequencies, got {freqs!r}") from None
    return fourier_basis(p).check_freqs(freqs)


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
    p = _check_grid(logits)
    ws = _check_freqs(p, freqs)
    lead = logits.shape[:-3]
    flat = logits.reshape(-1, p, p, logits.shape[-1])
    R, K = _sum_filters(_antidiagonal_sums(flat), ws)  # [n, s, c]
    out = (R if include_mean else K)[:, _sum_index(p).to(R.device)]  # [n, a*p+b, c]
    return out.reshape(*lead, p, p, logits.shape[-1])


# -- losses ---------------------------------------------------------------------------------------
def task_label_grid(p: int, operation: str = "add") -> Tensor:
    """Labels of every grid input: int64 ``[p²]`` (index ``a * p + b``), ``-1`` where ``(a, b)`` is not a task pair."""
    from .tasks import make_dataset

    ds = make_dataset(p, operation)
    labels = torch.full((p * p,), -1, dtype=torch.int64)
    labels[torch.from_numpy(ds.pair_index)] = torch.from_numpy(ds.labels)
    return labels


def _pairs(labels: Tensor, pairs, p: int, what: str) -> Tensor:
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


def _prepare(logits: Tensor, labels: Tensor | None, what: str) -> tuple[Tensor, int, Tensor]:
    p = _check_grid(logits, what)
    if logits.shape[-1] != p:
        raise AnalysisError(f"{what}: the vocab axis must have size p = {p}, got shape {list(logits.shape)}")
    labels = task_label_grid(p) if labels is None else torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if labels.shape != (p * p,):
        raise AnalysisError(f"labels: expected [p²] = [{p * p}] grid labels, got shape {list(labels.shape)}")
    return logits.reshape(-1, p, p, p), p, labels


def restricted_loss(logits: Tensor, freqs: Sequence[int], labels: Tensor | None = None) -> Tensor:
    """Cross-entropy over all task pairs of the logits restricted to the key frequencies.

    Args:
        logits: ``[..., a, b, c]`` on the full grid (e.g. ``grid_forward(...).logits``).
        freqs: the key frequencies (may be empty: only the per-output mean is kept).
        labels: ``[p²]`` grid labels, ``-1`` for inputs outside the task (default: ``a + b mod p``,
            see :func:`task_label_grid`).

    Returns:
        float64 ``[...]``.

    Notes:
        ``R = P L`` with ``P`` the projection onto ``span{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``
        for every output ``c`` (:func:`sum_frequency_projection`);
        ``restricted_loss = mean_{(a,b) valid} −log softmax(R[a, b])[label(a, b)]``.
        ``R`` depends on ``(a, b)`` only through ``s = a + b mod p``, so the softmax is taken on
        the ``p × p`` table ``R[s, c]`` and gathered per pair.
    """
    L, p, labels = _prepare(logits, labels, "logits")
    ws = _check_freqs(p, freqs)
    valid = torch.nonzero(labels >= 0)[:, 0]
    R, _ = _sum_filters(_antidiagonal_sums(L), ws)  # [n, s, c]
    return _restricted(R, _sum_index(p)[valid], labels[valid]).reshape(logits.shape[:-3])


def _restricted(R: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Mean NLL of the restricted logits ``R [n, s, c]`` over pairs with sums ``s`` and labels ``y``."""
    logp = torch.log_softmax(R, dim=-1)
    return -logp[:, s.to(R.device), y.to(R.device)].mean(-1)


def excluded_loss(logits: Tensor, freqs: Sequence[int], train_pairs, labels: Tensor | None = None) -> Tensor:
    """Cross-entropy on the training pairs of the logits with the key-frequency components removed.

    Args:
        logits: ``[..., a, b, c]`` on the full grid.
        freqs: the key frequencies (empty: the plain training loss).
        train_pairs: grid indices ``a * p + b`` of the training pairs (``run.split_pairs()[0]``).
        labels: ``[p²]`` grid labels (default ``a + b mod p``).

    Returns:
        float64 ``[...]``.

    Notes:
        ``E = L − P_key L`` with ``P_key`` the projection (over the full grid) onto
        ``span{cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``;
        ``excluded_loss = mean_{(a,b) ∈ train} −log softmax(E[a, b])[label(a, b)]``.
    """
    L, p, labels = _prepare(logits, labels, "logits")
    ws = _check_freqs(p, freqs)
    trn = _pairs(labels, train_pairs, p, "train_pairs")
    _, K = _sum_filters(_antidiagonal_sums(L), ws)
    return _excluded(L, K, trn, labels[trn]).reshape(logits.shape[:-3])


def _excluded(L: Tensor, K: Tensor, trn: Tensor, y: Tensor) -> Tensor:
    """Mean NLL on the pairs ``trn`` of ``L [n, a, b, c]`` minus the key projection ``K [n, s, c]``."""
    n, p = L.shape[0], K.shape[1]
    E = L.reshape(n, p * p, -1)[:, trn.to(L.device)].float() - K.float()[:, _sum_index(p)[trn].to(L.device)]
    return _nll(E, y)[0].mean(-1)


# -- key frequencies --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Keys:
    freqs: list[int]
    method: str
    rule: str
    epoch: int | None


def _resolve_keys(run, key_freqs, method: str) -> _Keys:
    p = run.config.task.p
    if key_freqs is None:
        e = int(run.resolve_epoch(-1))
        kf = key_frequencies(run.model(e), method=method)  # the model carries its config (act_fn)
        return _Keys(_check_freqs(p, kf.freqs), kf.method, kf.rule + f" (checkpoint at epoch {e})", e)
    if isinstance(key_freqs, KeyFrequencies):
        return _Keys(_check_freqs(p, key_freqs.freqs), key_freqs.method, key_freqs.rule, None)
    return _Keys(_check_freqs(p, key_freqs), "given", "frequencies given by the caller", None)


def _select_epochs(run, epochs) -> np.ndarray:
    eps = run.epochs if epochs is None else np.array([run.resolve_epoch(e) for e in epochs], dtype=np.int64)
    if len(eps) == 0:
        raise AnalysisError(f"{run.path}: no checkpoints to measure (epochs = {list(eps)})")
    return eps


def _task_arrays(run) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(labels [p²], train_pairs, test_pairs, valid pairs)`` as int64 tensors."""
    p = run.config.task.p
    labels = task_label_grid(p, run.config.task.operation)
    trn, tst = run.split_pairs()
    train_pairs = _pairs(labels, trn, p, "train pairs of the run")
    test_pairs = torch.from_numpy(np.asarray(tst, dtype=np.int64))
    valid = torch.nonzero(labels >= 0)[:, 0]
    return labels, train_pairs, test_pairs, valid


def _auto_chunk(cfg, device: str | torch.device = "cpu") -> int:
    """Checkpoints per chunk: as many as fit the memory budget (on CPU a fixed budget, where larger
    chunks gain nothing; on CUDA a quarter of the free GPU memory, where they amortise launches:
    32 instead of 4 made the 400-checkpoint benchmark 2.4× faster on an H100), at most 64."""
    p, dm = cfg.p, cfg.d_mlp
    # grid_forward: acc [p², d_mlp + p] (twice while summing), pre and post [p², d_mlp], logits;
    # then float64 copies of the logits and the train logits.
    per_ckpt = 4 * p * p * (3 * (dm + p) + 2 * dm + 2 * p) + 8 * 3 * p ** 3
    budget = _CHUNK_BUDGET
    dev = torch.device(device)
    if dev.type == "cuda":
        budget = max(budget, torch.cuda.mem_get_info(dev)[0] // 4)
    return int(min(max(budget // per_ckpt, 1), 64))


def _frame(rows: dict[str, list], keys: _Keys, epochs: np.ndarray, impl: str, p: int) -> pd.DataFrame:
    df = pd.DataFrame({c: np.concatenate(rows[c]) if c != "epoch" else epochs for c in MEASURE_COLUMNS})
    df["epoch"] = df["epoch"].astype(np.int64)
    df.attrs.update({
        "key_freqs": list(keys.freqs),
        "key_freq_method": keys.method,
        "key_freq_rule": keys.rule,
        "key_freq_epoch": keys.epoch,
        "splits": dict(_SPLITS),
        "gini": "Hurley & Rickard Gini of the per-frequency Fourier norms, frequencies 1..p//2",
        "implementation": impl,
        "p": int(p),
    })
    return df


# -- the vectorised measures ------------------------------------------------------------------------
def progress_measures(
    run,
    key_freqs: Sequence[int] | KeyFrequencies | None = None,
    *,
    chunk: int | None = None,
    device: str | torch.device = "cpu",
    epochs: Sequence[int] | None = None,
    key_freq_method: str = "W_L",
) -> pd.DataFrame:
    """Every progress measure at every checkpoint of a run, one row per checkpoint.

    Args:
        run: a :class:`~grokinterp.run.Run` (one-layer model).
        key_freqs: the frequencies held fixed across checkpoints: a sequence of ints, a
            :class:`~grokinterp.fourier.KeyFrequencies`, or ``None`` for
            ``key_frequencies(final checkpoint, method=key_freq_method)``.
        chunk: checkpoints per vectorised forward (default: sized to keep the working memory
            near 768 MiB, e.g. 4 for the paper's p = 113 model).
        device: where to compute (``"cpu"``, ``"cuda"``); results come back to the CPU.
        epochs: checkpoint epochs to measure (default: all of ``run.epochs``).
        key_freq_method: rule for the default key frequencies (``W_L``, ``W_E`` or ``neurons``).

    Returns:
        DataFrame with the columns of :data:`MEASURE_COLUMNS` (``epoch`` int64, the rest float64),
        one row per checkpoint in epoch order. ``df.attrs`` holds ``key_freqs`` (list of ints),
        ``key_freq_method``, ``key_freq_rule``, ``key_freq_epoch`` (the checkpoint they were taken
        from, ``None`` if given), ``splits`` (which pairs each loss averages over), ``gini`` (what
        the Gini columns measure) and ``implementation``.

    Notes:
        For a chunk of stacked checkpoints, :func:`~grokinterp.grid.grid_forward` gives the logits
        ``L [ckpt, a, b, c]`` of every input; the anti-diagonal sums ``G[s, c]`` and one FFT over
        ``s`` give the key-frequency projection (:func:`sum_frequency_projection`), which depends
        on ``(a, b)`` only through ``s = a + b mod p``. The module docstring lists each column's
        definition and split.
    """
    from .grid import grid_forward

    cfg = run.config.model
    if cfg.n_layers != 1:
        raise AnalysisError(f"progress_measures supports one-layer models, got n_layers = {cfg.n_layers}")
    if chunk is None:
        chunk = _auto_chunk(cfg, device)
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise AnalysisError(f"chunk: must be a positive integer, got {chunk!r}")
    eps = _select_epochs(run, epochs)
    keys = _resolve_keys(run, key_freqs, key_freq_method)
    p = cfg.p
    dev = torch.device(device)
    labels, trn, tst, valid = _task_arrays(run)
    all_valid = len(valid) == p * p
    s_valid, y_valid = _sum_index(p)[valid], labels[valid]
    # positions of the train / test pairs among the valid pairs (all losses share one pass)
    pos = torch.full((p * p,), -1, dtype=torch.int64)
    pos[valid] = torch.arange(len(valid))
    trn_v, tst_v = pos[trn].to(dev), pos[tst].to(dev)
    rows: dict[str, list] = {c: [] for c in MEASURE_COLUMNS}

    for _part, params in run.iter_chunks(int(chunk), epochs=eps):
        P = {k: v.to(dev) for k, v in params.items()}
        with torch.no_grad():
            L = grid_forward(P, cfg).logits  # [n, a, b, c] float32
            n = L.shape[0]
            Lv = L.reshape(n, p * p, p) if all_valid else L.reshape(n, p * p, p)[:, valid.to(dev)]
            nll, correct = _nll(Lv, y_valid)  # [n, valid]
            del Lv
            R, K = _sum_filters(_antidiagonal_sums(L), keys.freqs)  # [n, s, c]
            restricted = _restricted(R, s_valid, y_valid)
            # R depends on (a, b) only through s = a + b: one argmax per (s, checkpoint)
            r_acc = (R.argmax(-1)[:, s_valid.to(dev)] == y_valid.to(dev)).double().mean(-1)
            excluded = _excluded(L, K, trn, labels[trn])
            del L, R, K
            W_L = P["blocks.0.mlp.W_out"].float() @ P["unembed.W_U"].float()
            g_E = gini(embed_fourier_norms(P["embed.W_E"], p)[:, 1:], dim=-1)
            g_L = gini(neuron_logit_fourier_norms(W_L, p)[:, 1:], dim=-1)
            ssq = sum(v.double().pow(2).reshape(n, -1).sum(-1) for v in P.values())
        has_test = len(tst_v) > 0
        correct = correct.double()
        cols = {
            "train_loss": nll[:, trn_v].mean(-1), "test_loss": nll[:, tst_v].mean(-1) if has_test else None,
            "train_acc": correct[:, trn_v].mean(-1), "test_acc": correct[:, tst_v].mean(-1) if has_test else None,
            "all_loss": nll.mean(-1), "restricted_loss": restricted, "restricted_acc": r_acc,
            "excluded_loss": excluded,
            "gini_W_E": g_E, "gini_W_L": g_L, "sum_sq_weights": ssq,
        }
        for c, v in cols.items():
            rows[c].append(np.full(n, np.nan) if v is None else v.double().cpu().numpy())
    return _frame(rows, keys, eps, f"vectorised (grid_forward, chunks of {int(chunk)} checkpoints)", p)


# -- the plain reference ----------------------------------------------------------------------------
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

    Args and Returns: as :func:`progress_measures` (``device``: where the forwards run).
    """
    from .grid import grid_tokens

    cfg = run.config.model
    p = cfg.p
    eps = _select_epochs(run, epochs)
    keys = _resolve_keys(run, key_freqs, key_freq_method)
    dev = torch.device(device)
    labels, trn, tst, valid = (t.to(dev) for t in _task_arrays(run))
    B_all = _brute_sum_basis(p, keys.freqs, include_mean=True).to(dev)
    B_key = _brute_sum_basis(p, keys.freqs, include_mean=False).to(dev)
    tokens = grid_tokens(p).to(dev)
    rows: dict[str, list] = {c: [] for c in MEASURE_COLUMNS}

    def ce(L: Tensor, idx: Tensor) -> float:
        logp = torch.log_softmax(L[idx], dim=-1)
        return float(-logp[torch.arange(len(idx), device=dev), labels[idx]].mean())

    for e in eps:
        model = run.model(int(e), device=dev)
        with torch.no_grad():
            L32 = model(tokens)[:, -1]  # [p², c]
        L = L32.double()
        restricted = B_all @ (B_all.T @ L)
        excluded = L - B_key @ (B_key.T @ L)
        W_E = model.embed.W_E.detach()[:p].cpu()
        W_L = (model.blocks[0].mlp.W_out @ model.unembed.W_U).detach().cpu()  # [d_mlp, c]
        vals = {
            "train_loss": ce(L, trn), "test_loss": ce(L, tst) if len(tst) else np.nan,
            "train_acc": float((L32[trn].argmax(-1) == labels[trn]).double().mean()),
            "test_acc": float((L32[tst].argmax(-1) == labels[tst]).double().mean()) if len(tst) else np.nan,
            "all_loss": ce(L, valid), "restricted_loss": ce(restricted, valid),
            "restricted_acc": float((restricted[valid].argmax(-1) == labels[valid]).double().mean()),
            "excluded_loss": ce(excluded, trn),
            "gini_W_E": _brute_gini(_brute_freq_norms(W_E, p)),
            "gini_W_L": _brute_gini(_brute_freq_norms(W_L.T, p)),
            "sum_sq_weights": float(sum(t.detach().double().pow(2).sum() for t in model.parameters())),
        }
        for c, v in vals.items():
            rows[c].append(np.array([v], dtype=np.float64))
    return _frame(rows, keys, eps, "reference (per-checkpoint forward, brute-force projection)", p)
