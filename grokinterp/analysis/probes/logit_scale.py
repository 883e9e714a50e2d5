"""The effective logit scale: how far the logits have been stretched (the quantity NLM grows, Prieto et al. 2025).

Two numbers per checkpoint (our definitions):

* ``logit_std``: the per-example standard deviation of the logits over the classes (population, so shifting
  every logit by a constant, which the softmax ignores, leaves it unchanged), averaged over the examples.
* ``logit_margin``: the per-example margin ``z_y − max_{j≠y} z_j`` of the label over the best other class,
  averaged over the examples (negative where the example is misclassified). A float32 softmax collapses
  (:mod:`~grokinterp.analysis.probes.collapse`) once the margin passes ``16.6`` to ``16.6 + ln(C − 1)`` against
  equal other logits.

Example:
    >>> z = torch.tensor([[3.0, 1.0, 0.0]])
    >>> logit_margin(z, torch.tensor([0])), logit_std(z)
    (tensor(2., dtype=torch.float64), tensor(1.2472, dtype=torch.float64))
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import AnalysisError

__all__ = ["logit_std", "logit_margin", "pair_margins"]


def _batch(logits: Tensor, field: str = "logits") -> None:
    if logits.ndim < 2 or logits.shape[-2] == 0 or logits.shape[-1] < 2:
        raise AnalysisError(f"{field}: expected [..., batch ≥ 1, classes ≥ 2], got shape {list(logits.shape)}")


def logit_std(logits: Tensor) -> Tensor:
    """Mean over the batch of the per-example population std of the logits over the classes: float64 ``[...]``."""
    _batch(logits)
    return logits.float().std(-1, correction=0).double().mean(-1)  # float32 per pair (the logits' precision)


def pair_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Per example ``z_y − max_{j≠y} z_j``: float64 ``[..., batch]``."""
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise AnalysisError(f"logits: expected [..., classes ≥ 2], got shape {list(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise AnalysisError(f"labels: expected shape {list(logits.shape[:-1])}, got {list(labels.shape)}")
    y = labels.long().unsqueeze(-1)
    zy = logits.gather(-1, y).squeeze(-1)
    top, idx = logits.topk(2, dim=-1)  # the best other logit: the runner-up where the label is the top one
    other = torch.where(idx[..., 0] == y[..., 0], top[..., 1], top[..., 0])
    return zy.double() - other.double()


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of ``z_y − max_{j≠y} z_j``: float64 ``[...]`` (``logits [..., batch, classes]``)."""
    _batch(logits)
    return pair_margins(logits, labels).mean(-1)
