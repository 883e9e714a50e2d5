"""Softmax collapse and the update–weight cosine (Prieto et al. 2025, "Grokking at the edge of numerical stability").

Without regularisation the cross-entropy keeps lowering the loss after the training set is fit by scaling the
logits up along the current weights ("naïve loss minimisation", NLM), until float32 can no longer tell the
correct class's softmax probability from 1: the loss and its gradient are then exactly zero for that example
(*softmax collapse*, SC) and learning stops for it.

Rules (ours, stated because the paper states them in words):

* **Collapsed example**: in float32, with the max-subtracted log-sum-exp of :func:`torch.log_softmax`,
  ``log_softmax(z)[y] == 0.0`` exactly. Equivalently the float32 ``softmax(z)[y] == 1.0``: the label is the
  argmax and ``1 + Σ_{j≠y} exp(z_j − z_y)`` rounds to 1 in float32 — each term below half an ulp of 1 (2⁻²⁴) is
  absorbed (Prieto et al.'s absorption error). Against ``C − 1`` equal other logits that needs a margin between
  ``24 ln 2 ≈ 16.6`` (every term absorbed on its own) and ``16.6 + ln(C − 1)`` (their exact sum absorbed),
  depending on the order in which the kernel sums.
  :func:`softmax_collapse` returns the fraction of collapsed examples.
* **Update–weight cosine**: ``cos(Δθ, θ_prev)`` with ``Δθ = θ_t − θ_prev`` the change of *all* parameters
  (flattened, biases included) between two consecutive checkpoints of the selection and ``θ_prev`` the earlier
  one. ``+1``: the update scales the weights up along themselves (NLM: the paper's ``cos(∇L, θ) → −1`` for
  gradient descent, whose update is ``−η∇L``); ``−1``: a pure weight-decay step ``Δθ = −λθ``; ``0``: an update
  orthogonal to the weights (⊥Grad). Not the paper's quantity exactly: theirs is the gradient at one step,
  ours is the net update of the optimizer (Adam's, weight decay included) over the epochs between checkpoints.

Example:
    >>> z = torch.tensor([[40.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    >>> softmax_collapse(z, torch.tensor([0, 0]))
    tensor(0.5000, dtype=torch.float64)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import AnalysisError

__all__ = ["collapsed", "softmax_collapse", "update_weight_cosine"]


def _check_logits(logits: Tensor, labels: Tensor, field: str) -> None:
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise AnalysisError(f"{field}: expected logits [..., classes ≥ 2], got shape {list(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise AnalysisError(f"labels: expected shape {list(logits.shape[:-1])} (the logits' leading axes), "
                            f"got {list(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[-1]):
        raise AnalysisError(f"labels: values must lie in 0..{logits.shape[-1] - 1}")


def collapsed(logits: Tensor, labels: Tensor) -> Tensor:
    """Bool ``[...]``: the example's float32 cross-entropy is exactly zero (see the module's rule).

    Args:
        logits: ``[..., classes]`` (cast to float32: the precision the model trains in).
        labels: int ``[...]``.
    """
    _check_logits(logits, labels, "logits")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1) == 0.0


def softmax_collapse(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of examples whose float32 softmax has collapsed onto the label, over the last axis but one.

    Args:
        logits: ``[..., batch, classes]``.
        labels: int ``[..., batch]``.

    Returns:
        float64 ``[...]`` in [0, 1].

    Raises:
        AnalysisError: an empty batch (``labels`` names it), mismatched shapes.
    """
    if logits.ndim < 2 or logits.shape[-2] == 0:
        raise AnalysisError(f"labels: no examples to measure softmax collapse on (logits {list(logits.shape)})")
    return collapsed(logits, labels).double().mean(-1)


def update_weight_cosine(prev: dict[str, Tensor], cur: dict[str, Tensor]) -> Tensor:
    """``cos(θ_cur − θ_prev, θ_prev)`` over all parameters, per stacked checkpoint.

    Args:
        prev, cur: ``{name: [n, ...]}`` with the same names and shapes (``n`` checkpoint pairs).

    Returns:
        float64 ``[n]`` (NaN where ``θ_prev`` or the update is zero).
    """
    if set(prev) != set(cur):
        raise AnalysisError(f"params: the two checkpoints have different parameters "
                            f"({sorted(set(prev) ^ set(cur))})")
    if not prev:
        raise AnalysisError("params: no parameters to compare")
    dot = nu = nt = 0
    for k in prev:
        if prev[k].shape != cur[k].shape:
            raise AnalysisError(f"params[{k!r}]: shapes differ ({list(prev[k].shape)} vs {list(cur[k].shape)})")
        t = prev[k].reshape(prev[k].shape[0], -1)
        u = cur[k].reshape(t.shape) - t  # the weights' own precision; each tensor's sums added in float64
        dot = dot + (u * t).sum(-1, dtype=torch.float64)
        nu = nu + u.square().sum(-1, dtype=torch.float64)
        nt = nt + t.square().sum(-1, dtype=torch.float64)
    den = (nu * nt).sqrt()
    return torch.where(den > 0, dot / den.clamp_min(1e-300), torch.full_like(den, float("nan")))
