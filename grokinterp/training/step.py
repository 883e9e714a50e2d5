"""Step executors: one full-batch training step, run eagerly or replayed from a CUDA graph.

The step itself is the trainer's (:meth:`grokinterp.training.stacked.StackedLoop._step`: forward,
loss, gradients, the gradient transforms, the optimizer step; a single run's update through
:func:`step_one_run`); it returns ``(logits, loss)`` without waiting for the device.
:class:`CudaGraphStep` wraps any such step: a few eager warm-up steps on a side stream (CUDA's
requirement before a capture; they are real steps), one capture, then a replay per call. A step
is a few hundred small kernels; replaying them is ~3.5× faster than launching them one by one from
Python. A capture that fails falls back to eager steps for good, with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .optim import StackedOptimizer
from .transforms import GradientTransform

__all__ = ["CudaGraphStep", "step_one_run", "graphs_enabled", "GRAPH_WARMUP_STEPS", "cross_entropy64",
           "stablemax", "log_stablemax", "stablemax_cross_entropy", "mse_one_hot", "LOSS_FUNCTIONS", "loss_function",
           "PER_EXAMPLE_LOSSES", "per_example_loss"]

#: Eager steps on CUDA before the training step is captured as a graph.
GRAPH_WARMUP_STEPS = 3

LossFn = Callable[[Tensor, Tensor], Tensor]


def cross_entropy64(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy with the log-softmax in float64 (the paper's losses reach 1e-7)."""
    return F.cross_entropy(logits.double(), labels)


def stablemax(x: Tensor) -> Tensor:
    """The StableMax kernel ``s(x)`` of Prieto et al. 2025, elementwise.

    Notes:
        ``s(x) = x + 1`` for ``x ≥ 0`` and ``s(x) = 1 / (1 − x)`` for ``x < 0``: continuous with a
        continuous first derivative at 0, positive everywhere, growing linearly instead of
        exponentially (so the probabilities cannot round to exactly 1 in float arithmetic, the
        "softmax collapse" they identify). Each branch sees clamped inputs, so the branch not
        taken never produces an infinite gradient.
    """
    return torch.where(x >= 0, x.clamp(min=0) + 1.0, 1.0 / (1.0 - x.clamp(max=0)))


def log_stablemax(x: Tensor, dim: int = -1) -> Tensor:
    """``log(s(x) / Σ s(x))`` along ``dim``: the StableMax analogue of ``log_softmax``.

    Unlike the softmax it is not invariant to adding a constant to every logit (as in their code,
    nothing is subtracted before ``s``).
    """
    s = stablemax(x)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean StableMax cross-entropy, in float64 (``loss = "stablemax"``).

    Notes:
        ``−mean_i log(s(L_i)[y_i] / Σ_c s(L_i)[c])`` with :func:`stablemax` ``s``, the logits cast
        to float64 first: the definition of Prieto et al. 2025 ("Grokking at the edge of
        numerical stability", their ``stablemax_cross_entropy``, which also computes in float64;
        their ``s`` adds ``1e-30`` to ``1 − x``, which float64 ignores for ``x < 0``).
    """
    logp = log_stablemax(logits.double(), dim=-1)
    return -logp.gather(-1, labels[:, None].long()).mean()


def _mse_one_hot_each(logits: Tensor, labels: Tensor) -> Tensor:
    x = logits.double()
    target = F.one_hot(labels.long(), x.shape[-1]).to(x.dtype)
    return (x - target).square().mean(-1)


def mse_one_hot(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error of the raw logits against one-hot targets, in float64 (``loss = "mse"``).

    Args:
        logits: ``[batch, vocab]`` (no softmax is applied).
        labels: ``[batch]`` integer classes in ``[0, vocab)``.

    Returns:
        A float64 scalar.

    Notes:
        ``(1 / (n V)) Σ_i Σ_c (L_ic − [c = y_i])²``: the mean over the examples *and* the classes,
        which is ``torch.nn.MSELoss()(logits, one_hot(labels))``, Omnigrok's loss (Liu et al. 2022
        train with ``nn.MSELoss()`` on one-hot labels). Accuracy is still the argmax of the logits.

    Example:
        >>> float(mse_one_hot(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])))
        0.25
    """
    return _mse_one_hot_each(logits, labels).mean()


#: Training losses by the name in ``TrainConfig.loss`` (see :data:`grokinterp.config.LOSSES`).
LOSS_FUNCTIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": cross_entropy64,
    "stablemax": stablemax_cross_entropy,
    "mse": mse_one_hot,
}


def loss_function(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss named ``name`` (``TrainConfig.loss``)."""
    return LOSS_FUNCTIONS[name]


def _cross_entropy_each(logits: Tensor, labels: Tensor) -> Tensor:
    return -torch.log_softmax(logits.double(), dim=-1).gather(-1, labels[..., None].long())[..., 0]


def _stablemax_each(logits: Tensor, labels: Tensor) -> Tensor:
    return -log_stablemax(logits.double(), dim=-1).gather(-1, labels[..., None].long())[..., 0]


#: Per-example float64 losses by the name in ``TrainConfig.loss``, for stacked runs and
#: minibatches: ``fn(logits [..., vocab], labels [...]) -> [...]``, any leading axes (``[run, n]``).
#: The mean of ``fn`` over the examples is :data:`LOSS_FUNCTIONS` ``[name]``; a weighted sum with
#: weights ``1 / n_r`` on a run's real examples and 0 on padding (:mod:`grokinterp.training.data`)
#: is each run's own mean loss.
PER_EXAMPLE_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy_each,
    "stablemax": _stablemax_each,
    "mse": _mse_one_hot_each,
}


def per_example_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-example form of the loss named ``name`` (:data:`PER_EXAMPLE_LOSSES`).

    Example:
        >>> per_example_loss("mse")(torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5])
    """
    return PER_EXAMPLE_LOSSES[name]


def graphs_enabled() -> bool:
    """CUDA graphs for the training step, unless ``GROKINTERP_CUDA_GRAPHS=0``."""
    return os.environ.get("GROKINTERP_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


def step_one_run(grads: dict[str, Tensor], transforms: Sequence[GradientTransform], optimizer: StackedOptimizer,
                 out: Tensor) -> None:
    """The update of a stack of one from the gradients where autograd wrote them (``{name: [1, ...]}``):
    the transforms and the optimizer's own preparation (⊥AdamW) act on them there, then they are
    gathered into ``out`` (``[1, n_params]``, in the optimizer's layout order), which becomes the
    flat gradient, and the optimizer steps. Acting before the gather keeps every operation on the
    memory it always read (``torch.dot`` rounds by alignment): bit for bit the single-run trainer of
    earlier releases (NOTES.md, "One training loop")."""
    for t in transforms:
        t(grads)
    optimizer.prepare_grads(grads)
    torch.cat([g.reshape(1, -1) for g in grads.values()], dim=1, out=out)
    optimizer.flat.grad = out
    optimizer.step()


class CudaGraphStep:
    """Replays ``step`` from a CUDA graph after :data:`GRAPH_WARMUP_STEPS` eager warm-up steps.

    The replayed kernels are those of the eager step, writing into the same parameter, gradient,
    optimizer-state and transform-state tensors; ``step`` must be capturable (no host syncs, no
    new allocations that outlive the capture, a capturable optimizer with a tensor learning rate).
    """

    def __init__(self, step: Callable[[], tuple[Tensor, Tensor]], device: torch.device):
        self.step, self.device = step, device
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager = False  # capture failed: eager from then on
        self._out: tuple[Tensor, Tensor] | None = None
        self._warm = 0

    def __call__(self) -> tuple[Tensor, Tensor]:
        if self.eager:
            return self.step()
        if self.graph is None and self._warm < GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self.step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._warm += 1
            return out
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            try:  # zero_grad(set_to_none) in the step lets backward write fresh gradients
                with torch.cuda.graph(graph):
                    logits, loss = self.step()
            except RuntimeError as e:  # pragma: no cover - depends on the CUDA build
                warnings.warn(f"CUDA graph capture of the training step failed ({e}); training on with eager "
                              f"steps", RuntimeWarning, stacklevel=2)
                self.eager = True
                torch.cuda.synchronize(self.device)
                return self.step()
            self.graph, self._out = graph, (logits.detach(), loss.detach())
        self.graph.replay()
        assert self._out is not None
        return self._out
