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

from torch import Tensor

from ...errors import AnalysisError

__all__ = ["logit_std", "logit_margin", "pair_margins", "pair_std"]


def _batch(logits: Tensor, field: str = "logits") -> None:
    if logits.ndim < 2 or logits.shape[-2] == 0 or logits.shape[-1] < 2:
        raise AnalysisError(f"{field}: expected [..., batch ≥ 1, classes ≥ 2], got shape {list(logits.shape)}")


def logit_std(logits: Tensor) -> Tensor:
    """Mean over the batch of the per-example population std of the logits over the classes: float64 ``[...]``."""
    _batch(logits)
    return pair_std(logits).mean(-1)


def pair_std(logits: Tensor) -> Tensor:
    """Per example population std of the logits over the classes: float64 ``[..., batch]``.

    In float32 as ``sqrt(E[x²] − E[x]²)`` of the logits shifted by their first entry (the std is shift-free, and
    the shift keeps the two moments of the same size, so the difference does not cancel)."""
    x = logits.float()
    x = x - x[..., :1]
    return (x.square().mean(-1) - x.mean(-1).square()).clamp_min(0).sqrt().double()


def pair_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """Per example ``z_y − max_{j≠y} z_j``: float64 ``[..., batch]``."""
    if logits.ndim < 1 or logits.shape[-1] < 2:
        raise AnalysisError(f"logits: expected [..., classes ≥ 2], got shape {list(logits.shape)}")
    if labels.shape != logits.shape[:-1]:
        raise AnalysisError(f"labels: expected shape {list(logits.shape[:-1])}, got {list(labels.shape)}")
    y = labels.long().unsqueeze(-1)
    zy = logits.gather(-1, y).squeeze(-1)
    other = logits.scatter(-1, y, float("-inf")).amax(-1)  # the best other logit
    return zy.double() - other.double()


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over the batch of ``z_y − max_{j≠y} z_j``: float64 ``[...]`` (``logits [..., batch, classes]``)."""
    _batch(logits)
    return pair_margins(logits, labels).mean(-1)
