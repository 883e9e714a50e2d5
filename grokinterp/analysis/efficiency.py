"""Circuit efficiency (Varma, Shah, Kenton, Kramár & Kumar 2023, "Explaining grokking through circuit
efficiency"): how large the logits a network produces are for the size of its parameters.

Varma et al. explain grokking by two circuits that both fit the training set: a memorizing one,
learned fast, and a generalizing one, learned slowly but *more efficient*, "producing larger logits
with the same parameter norm". Weight decay favours the efficient one. The efficiency of memorizing
falls as the training set grows (more examples to store), that of generalizing does not, so they
cross at a critical dataset size ``D_crit``: below it memorizing wins (and a grokked network trained
on fewer examples *ungroks*), above it generalizing wins.

Definitions (every quantity over one checkpoint; ``θ`` all parameters, weights and biases):

- ``param_norm = ‖θ‖₂``.
- ``margin`` — the mean over the training examples of the centred correct-class logit,
  ``z_y − mean_c z_c`` (``y`` the label the run trained on: a random one for a random-label run;
  residue logits only). Softmax ignores a common shift of the logits, hence the centring.
- ``logit_norm`` — the root mean square over examples of ``‖z − mean_c z_c‖₂``.
- ``degree`` — the local homogeneity degree ``d log logit_norm / d log c`` of ``θ ↦ c θ`` at
  ``c = 1`` (a central difference). A ReLU network in which every path from the input to a logit
  multiplies ``L`` parameters is homogeneous of degree ``L`` (``logits(cθ) = c^L logits(θ)``):
  one-hot input → hidden → unembedding is 2 (a first-layer bias too sits on a path of two), with an
  embedding 3; an unembedding bias (a path of one) breaks it. The one-layer transformer is not
  homogeneous (softmax attention, the direct path ``W_E W_U`` of degree 2 beside the MLP's 4);
  its measured degree says how it scales *there* (trained runs measure ≈ 6: the attention sharpens).
- ``efficiency = margin / param_norm ** degree`` — the margin a network of unit parameter norm
  would have if the logits scaled as they do locally (invariant under ``θ → cθ`` for a homogeneous
  network: the oracle of the tests). ``efficiency_1 = margin / param_norm`` is the plain "logit per
  parameter norm" of Varma et al.'s abstract.

Varma et al. measure efficiency through the parameter norm a circuit settles at under weight
decay at convergence (a lower norm for the same fit = more efficient); this module gives both
that norm and the logit-based ratios, so ``D_crit`` can be read off either
(:func:`crossing`).

Example:
    >>> import torch
    >>> params = {"W": torch.ones(2, 2)}
    >>> round(parameter_norm(params), 6)
    2.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import AnalysisError

__all__ = ["parameter_norm", "logit_margin", "logit_norm", "homogeneity_degree", "efficiency",
           "efficiency_table", "crossing", "DEFINITIONS"]

#: Column definitions of :func:`efficiency_table`.
DEFINITIONS = {
    "param_norm": "‖θ‖₂ over every parameter (weights and biases)",
    "margin": "mean over training examples of z_y − mean_c z_c (y: the label trained on)",
    "logit_norm": "RMS over training examples of ‖z − mean_c z_c‖₂",
    "degree": "local homogeneity degree d log logit_norm / d log c of θ → cθ at c = 1",
    "efficiency": "margin / param_norm ** degree",
    "efficiency_1": "margin / param_norm",
    "train_loss": "cross-entropy on the labels trained on (float64)",
    "train_acc": "accuracy on the labels trained on",
}


def parameter_norm(params: dict[str, Tensor]) -> float:
    """``‖θ‖₂``: the Euclidean norm of all parameters together (float64)."""
    if not params:
        raise AnalysisError("params: no parameters")
    return math.sqrt(sum(float(v.detach().double().pow(2).sum()) for v in params.values()))


def _centred(logits: Tensor) -> Tensor:
    if logits.ndim != 2:
        raise AnalysisError(f"logits: expected [batch, classes], got shape {list(logits.shape)}")
    z = logits.detach().double()
    return z - z.mean(-1, keepdim=True)


def logit_margin(logits: Tensor, labels: Tensor) -> float:
    """Mean centred correct-class logit ``mean_i (z_{i,y_i} − mean_c z_{i,c})``."""
    z = _centred(logits)
    labels = torch.as_tensor(labels).long()
    if labels.shape != z.shape[:1] or (len(labels) and (labels.min() < 0 or labels.max() >= z.shape[1])):
        raise AnalysisError(f"labels: expected {z.shape[0]} class indices in [0, {z.shape[1]}), got shape "
                            f"{list(labels.shape)}")
    return float(z.gather(1, labels[:, None]).mean())


def logit_norm(logits: Tensor) -> float:
    """Root mean square over examples of the centred logit vector's norm."""
    return float(_centred(logits).pow(2).sum(-1).mean().sqrt())


def homogeneity_degree(logits_fn: Callable[[dict[str, Tensor]], Tensor], params: dict[str, Tensor],
                       eps: float = 1e-2) -> float:
    """``d log logit_norm(logits_fn(c θ)) / d log c`` at ``c = 1`` by a central difference in ``log c``.

    Exactly ``L`` (up to rounding) for a network homogeneous of degree ``L``.
    """
    def at(c: float) -> float:
        with torch.no_grad():
            return logit_norm(logits_fn({k: v * c for k, v in params.items()}))

    hi, lo = at(math.exp(eps)), at(math.exp(-eps))
    if not (hi > 0 and lo > 0):
        raise AnalysisError("logits: zero after centring; the homogeneity degree is undefined")
    return (math.log(hi) - math.log(lo)) / (2 * eps)


def efficiency(logits: Tensor, labels: Tensor, params: dict[str, Tensor], degree: float = 1.0) -> float:
    """``margin / param_norm ** degree`` (see the module notes)."""
    return logit_margin(logits, labels) / parameter_norm(params) ** float(degree)


def _run_logits_fn(run: Any, tokens: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
    from ..model.families import family_of

    cfg = run.config.model
    fam = family_of(cfg)
    p = run.p

    def fn(params: dict[str, Tensor]) -> Tensor:
        stacked = {k: v.unsqueeze(0) for k, v in params.items()}
        with torch.no_grad():
            return fam.forward(stacked, tokens, cfg)[0][:, :p]  # residue logits (no '=' output)
    return fn


def efficiency_table(run: Any, epochs: Sequence[int] | None = None, degree: bool = True) -> pd.DataFrame:
    """One row per checkpoint of ``run``: the columns of :data:`DEFINITIONS`, on the run's training
    pairs with the labels it trained on (:meth:`Run.train_data`, random ones for a random-label run).

    Args:
        run: a :class:`~grokinterp.store.run.Run`.
        epochs: checkpoint epochs (default: all).
        degree: measure the local homogeneity degree (two more forwards a checkpoint); when False,
            ``degree`` is 1 and ``efficiency`` equals ``efficiency_1``.
    """
    tokens, labels = run.train_data()
    tokens = tokens[:, : int(getattr(run.config.model, "n_ctx", tokens.shape[1]))]
    fn = _run_logits_fn(run, tokens)
    rows = []
    for e in (run.epochs if epochs is None else epochs):
        params = {k: v.double() for k, v in run.params(int(e)).items()}
        z = fn(params)
        deg = homogeneity_degree(fn, params) if degree else 1.0
        norm, m = parameter_norm(params), logit_margin(z, labels)
        logp = torch.log_softmax(z, -1)
        rows.append({"epoch": int(e), "param_norm": norm, "margin": m, "logit_norm": logit_norm(z), "degree": deg,
                     "efficiency": m / norm ** deg, "efficiency_1": m / norm,
                     "train_loss": float(-logp.gather(1, labels[:, None]).mean()),
                     "train_acc": float((z.argmax(-1) == labels).double().mean())})
    return pd.DataFrame(rows)


def crossing(x: Sequence[float], y: Sequence[float], level: float | Sequence[float], *, log_x: bool = True,
             log_y: bool = True) -> float | None:
    """The first ``x`` where the curve ``y(x)`` crosses ``level`` (a constant or a second curve on the same
    ``x``), interpolated linearly (in ``log x`` and ``log y`` by default) between the two points that
    bracket it; ``None`` when it does not cross. ``x`` must increase.

    Example:
        >>> crossing([100, 1000], [1.0, 3.0], 2.0, log_x=False, log_y=False)
        550.0
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    lv = np.broadcast_to(np.asarray(level, float), y.shape)
    if x.ndim != 1 or len(x) != len(y) or np.any(np.diff(x) <= 0):
        raise AnalysisError("x: must be increasing and as long as y")
    tx = np.log(x) if log_x else x
    if log_y:
        if np.any(y <= 0) or np.any(lv <= 0):
            raise AnalysisError("y, level: must be positive on a log scale (pass log_y=False)")
        d = np.log(y) - np.log(lv)
    else:
        d = y - lv
    ok = np.isfinite(d)
    tx, d = tx[ok], d[ok]
    for i in range(len(d) - 1):
        if d[i] == 0:
            t = tx[i]
            return float(np.exp(t) if log_x else t)
        if d[i] * d[i + 1] < 0:
            t = tx[i] + (tx[i + 1] - tx[i]) * d[i] / (d[i] - d[i + 1])
            return float(np.exp(t) if log_x else t)
    if len(d) and d[-1] == 0:
        return float(np.exp(tx[-1]) if log_x else tx[-1])
    return None
