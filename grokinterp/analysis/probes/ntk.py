"""NTK–label alignment (Kumar, Bordelon, Gershman & Pehlevan 2023, "Grokking as the transition from lazy to
rich training dynamics").

Kumar et al. track how well the empirical neural tangent kernel ``K`` fits the task with the centred kernel
alignment between ``K`` and the label kernel ``y yᵀ``: lazy training keeps the initial (misaligned) kernel,
rich training rotates it towards the labels.

Definitions (ours for the multi-class case; theirs is scalar regression):

* **Empirical NTK** on inputs ``x_1..x_N``: the trace kernel over the output logits,
  ``K_ij = Σ_c ⟨∂f_c(x_i)/∂θ, ∂f_c(x_j)/∂θ⟩`` over every parameter θ (biases included) — the kernel that
  drives gradient flow on a loss summed over classes.
* **Label kernel**: ``Y Yᵀ`` with ``Y`` the one-hot labels ``[N, C]`` (1 where two inputs share a label).
* **Alignment**: ``A(K, L) = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)`` with ``H = I − 11ᵀ/N`` (centred kernel
  alignment, Cortes et al. 2012). ``A = 1`` when ``K`` is a positive multiple of ``Y Yᵀ`` (after centring).
* **Inputs**: a fixed, seeded, class-balanced subset of the *training* pairs — ``n_classes`` labels (default 4)
  with ``n_inputs // n_classes`` pairs each (default 32 inputs: 4 × 8) — so that the label kernel has blocks (a random subset of p² pairs
  over p classes would almost never repeat a label). The same subset at every checkpoint.

Computation: the family's functional forward over stacked parameters with ``N`` copies of the checkpoint, one
per input, so that one backward per class gives every input's own gradient ``[N, parameters]``; ``K`` is
accumulated in float64 over the classes. Cost per checkpoint: ``C`` backward passes and ``N² · C · parameters``
multiply-adds (the Gram products dominate: keep ``N`` small; default 32). The plain oracle
(one ``autograd.grad`` per input and class through the hooked module) lives with the tests.

Example:
    >>> K = ntk_gram(params, cfg, tokens)            # [n, N, N]             # doctest: +SKIP
    >>> kernel_alignment(K, label_kernel(labels, p))  # [n]                    # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...errors import AnalysisError
from ...model.families import family_of

__all__ = ["ntk_gram", "label_kernel", "kernel_alignment", "ntk_subset", "ntk_defined"]


def ntk_defined(cfg) -> str | None:
    """``None`` if the NTK can be computed for models of ``cfg``, else why not (a family without a functional
    forward over stacked parameters)."""
    try:
        fam = family_of(cfg)
    except Exception as e:  # noqa: BLE001  (an unknown family: say so)
        return f"unknown model family ({e})"
    if not callable(getattr(fam, "forward", None)):
        return f"the {getattr(cfg, 'family', 'transformer')} family has no functional forward over parameters"
    return None


def _float(t: Tensor) -> Tensor:
    """A checkpoint's parameter as the NTK differentiates it: float64 stays float64 (a float64 run), else float32."""
    return t if t.dtype == torch.float64 else t.float()


def ntk_gram(params: dict[str, Tensor], cfg, tokens: Tensor) -> Tensor:
    """The empirical (trace) NTK of each stacked checkpoint on ``tokens``: float64 ``[n, N, N]``.

    Args:
        params: ``{name: [n, ...]}`` stacked checkpoints (every parameter the family's forward reads).
        cfg: the model config.
        tokens: ``[N, pos]`` the task's input rows (``[a, b, =]``), or ``[N, d_input]`` input vectors (a dataset
            task: the family's forward reads them as vectors).
    """
    why = ntk_defined(cfg)
    if why is not None:
        raise AnalysisError(f"ntk: undefined for this model: {why}")
    if tokens.ndim != 2 or tokens.shape[0] == 0:
        raise AnalysisError(f"tokens: expected a non-empty [N, pos] set of inputs, got shape {list(tokens.shape)}")
    if not params:
        raise AnalysisError("params: no parameters")
    fwd = family_of(cfg).forward
    names = list(params)
    n = next(iter(params.values())).shape[0]
    N = tokens.shape[0]
    dev = params[names[0]].device
    tokens = tokens.to(dev)[:, None, :]  # each input its own "run"
    out = torch.zeros(n, N, N, dtype=torch.float64, device=dev)
    for r in range(n):
        # N copies of checkpoint r, one per input: one backward gives every input's own gradient
        theta = {k: _float(params[k][r].detach()).unsqueeze(0).repeat(N, *([1] * (params[k].ndim - 1)))
                 .requires_grad_(True) for k in names}
        with torch.enable_grad():
            F = fwd(theta, tokens, cfg)[:, 0, :]  # [N, C]
            leaves = [theta[k] for k in names]
            C = F.shape[-1]
            for c in range(C):
                grads = torch.autograd.grad(F[:, c].sum(), leaves, retain_graph=c < C - 1, allow_unused=True)
                for g in grads:  # products in the parameters' dtype (float32; float64 runs: float64), summed in float64
                    if g is not None:
                        g = g.reshape(N, -1)
                        out[r] += (g @ g.T).double()
    return out


def label_kernel(labels: Tensor, n_classes: int | None = None) -> Tensor:
    """``Y Yᵀ`` for one-hot labels: float64 ``[N, N]``, 1 where two inputs share a label."""
    if labels.ndim != 1 or labels.numel() == 0:
        raise AnalysisError(f"labels: expected a non-empty [N] vector, got shape {list(labels.shape)}")
    y = labels.long()
    return (y[:, None] == y[None, :]).double()


def kernel_alignment(K: Tensor, L: Tensor) -> Tensor:
    """Centred kernel alignment of ``K [..., N, N]`` with ``L [N, N]``: float64 ``[...]`` in [−1, 1].

    Raises:
        AnalysisError: ``L`` constant after centring (every input has the same label: no alignment to measure),
            fewer than 2 inputs, mismatched shapes.
    """
    N = L.shape[-1]
    if L.ndim != 2 or L.shape[0] != N or N < 2:
        raise AnalysisError(f"labels: the label kernel needs at least 2 inputs, got shape {list(L.shape)}")
    if K.shape[-2:] != L.shape:
        raise AnalysisError(f"K: expected [..., {N}, {N}], got {list(K.shape)}")
    H = torch.eye(N, dtype=torch.float64, device=K.device) - 1.0 / N
    Lc = H @ L.double().to(K.device) @ H
    nl = Lc.norm()
    if nl <= 1e-12:
        raise AnalysisError("labels: all inputs share one label; the centred label kernel is zero and the alignment "
                            "is undefined")
    Kc = H @ K.double() @ H
    nk = Kc.flatten(-2).norm(dim=-1)
    num = (Kc * Lc).sum((-2, -1))
    return torch.where(nk > 0, num / (nk.clamp_min(1e-300) * nl), torch.full_like(nk, float("nan")))


def ntk_subset(train: Tensor, labels: Tensor, *, n_inputs: int = 32, n_classes: int = 4, seed: int = 0) -> Tensor:
    """A seeded class-balanced subset of the training pairs (grid indices), sorted.

    Args:
        train: grid indices of the training pairs.
        labels: the label of every grid index (``[p²]``).
        n_inputs: how many pairs (≥ 2); ``n_classes`` labels with ``n_inputs // n_classes`` pairs each (fewer
            where a label has fewer training pairs).
        n_classes: how many distinct labels (≥ 2).
        seed: the subset's seed (numpy ``default_rng``).
    """
    if not isinstance(n_inputs, (int, np.integer)) or isinstance(n_inputs, bool) or n_inputs < 2:
        raise AnalysisError(f"n_inputs: must be an integer ≥ 2, got {n_inputs!r}")
    if not isinstance(n_classes, (int, np.integer)) or isinstance(n_classes, bool) or n_classes < 2:
        raise AnalysisError(f"n_classes: must be an integer ≥ 2, got {n_classes!r}")
    if len(train) == 0:
        raise AnalysisError("train: the run has no training pairs to take the NTK subset from")
    rng = np.random.default_rng(seed)
    y = labels[train].cpu().numpy()
    classes = np.unique(y)
    if len(classes) < 2:
        raise AnalysisError("train: the training pairs have fewer than 2 labels; the alignment is undefined")
    k = min(n_classes, len(classes), n_inputs)
    chosen = rng.choice(classes, size=k, replace=False)
    per = max(1, n_inputs // k)
    idx = []
    tr = train.cpu().numpy()
    for c in chosen:
        pool = tr[y == c]
        idx.append(rng.choice(pool, size=min(per, len(pool)), replace=False))
    return torch.as_tensor(np.sort(np.concatenate(idx)), dtype=torch.int64)
