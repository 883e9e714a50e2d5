"""Analyses of runs on dataset tasks (vectors: ``digits``, ``mnist``; issue 22).

What stays defined without an algebraic structure: losses and accuracies at every checkpoint, the
weight norm (Omnigrok's ``‖θ‖``), the grokking dates on test accuracy, and neuron statistics of the
hidden layers. What needs a group structure — Fourier spectra, key frequencies, restricted and
excluded loss, the circuit-formation date, the logit fit — is **undefined for these tasks** and said
so (:data:`UNDEFINED`), never given as a number.

Grokking on test accuracy (:func:`grokking_dates`), from the run's evaluations (every
``train.eval_every`` epochs):

* ``train_100``: the first evaluation with training accuracy 100 % (every training example right);
* ``test_at_train_100``: test accuracy there; ``test_final``: at the last evaluation;
* ``rise = test_final − test_at_train_100``; the run **grokked** when ``rise ≥ 0.2`` (the issue's bar);
* ``generalized``: the first evaluation after ``train_100`` whose test accuracy has covered 90 % of
  the rise (``test_at_train_100 + 0.9 · rise``), ``None`` when the rise is below 0.2.

Steps are optimizer steps (``epoch · steps_per_epoch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import AnalysisError
from ..model.families import family_of

__all__ = ["UNDEFINED", "is_vector_run", "checkpoint_metrics", "input_logits", "run_loss", "grokking_dates",
           "GrokkingDates", "neuron_statistics", "weight_norms", "hidden_activations", "mean_loss", "stacked_params"]

#: The analyses a dataset task leaves undefined, and why (for notes and the report).
UNDEFINED = ("undefined for this task (it classifies vectors: no group structure, so no Fourier basis over "
             "its inputs): key frequencies, Fourier spectra, restricted and excluded loss, the circuit-formation "
             "date, the logit fit and head ablations")

GROK_RISE = 0.2
CHUNK_INPUTS = 4096


def is_vector_run(run: Any) -> bool:
    """Whether ``run`` (a Run, or a RunConfig) trains on a dataset task (input vectors)."""
    cfg = getattr(run, "config", run)
    return bool(getattr(cfg.model, "d_input", 0))


def _check(run: Any) -> None:
    if not is_vector_run(run):
        raise AnalysisError(f"{getattr(run, 'path', run)}: not a run on a dataset task (model.d_input is 0); "
                            f"use the algebraic analyses")


def weight_norms(run: Any, epochs: np.ndarray | None = None) -> pd.DataFrame:
    """``‖θ‖`` (the square root of the sum of every parameter's squares, Omnigrok's weight norm) and
    its per-parameter parts at the checkpoints ``epochs`` (default: all): one row per checkpoint."""
    epochs = np.asarray(run.epochs if epochs is None else epochs)
    rows = {"epoch": epochs}
    total = np.zeros(len(epochs))
    for name in run.params(int(epochs[-1])):
        sq = run.stack(name, epochs, dtype=None).double().pow(2).flatten(1).sum(1).numpy()  # as stored (train.dtype)
        rows[f"sq_{name}"] = sq
        total += sq
    out = pd.DataFrame(rows)
    out.insert(1, "weight_norm", np.sqrt(total))
    return out


def stacked_params(run: Any, epochs: np.ndarray) -> dict[str, Tensor]:
    """Every parameter of the checkpoints ``epochs``, stacked: ``{name: [ckpt, ...]}`` in the run's ``train.dtype``
    (float32, or float64 for a run trained in it: evaluated as it was trained)."""
    names = list(run.params(int(epochs[-1])))
    return {n: run.stack(n, epochs, dtype=None) for n in names}


def mean_loss(logits: Tensor, labels: Tensor, loss: str) -> Tensor:
    """Per-checkpoint mean loss ``[ckpt]`` (float64) of ``logits [ckpt, n, classes]``: the run's training loss
    (``mse`` on one-hot targets, else softmax cross-entropy)."""
    x = logits.double()
    if loss == "mse":
        onehot = torch.nn.functional.one_hot(labels, x.shape[-1]).double()
        return (x - onehot).pow(2).mean((1, 2))
    logp = torch.log_softmax(x, -1)
    return -logp.gather(-1, labels.expand(x.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(1)


def input_logits(fam: Any, P: dict[str, Tensor], x: Tensor, cfg: Any) -> Tensor:
    """The family's forward of stacked checkpoints ``P`` on input rows ``x [n, ...]``, ``CHUNK_INPUTS`` rows at a
    time: logits ``[ckpt, n, classes]``."""
    return torch.cat([fam.forward(P, x[j:j + CHUNK_INPUTS], cfg) for j in range(0, len(x), CHUNK_INPUTS)], 1)


def run_loss(run: Any) -> str:
    """The name :func:`mean_loss` takes for the run's training loss: ``mse``, else ``cross_entropy``."""
    return "mse" if run.config.train.loss == "mse" else "cross_entropy"


def checkpoint_metrics(run: Any, epochs: np.ndarray | None = None, *, chunk: int = 64) -> pd.DataFrame:
    """Loss and accuracy of every checkpoint on the whole training and test sets, and the weight norm.

    One row per checkpoint label: ``epoch`` (a label: optimizer steps in a step schedule),
    ``weight_norm``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (the run's loss: MSE on one-hot
    targets for ``loss = mse``, cross-entropy otherwise). Checkpoints go through the family's functional forward
    ``chunk`` at a time.
    """
    _check(run)
    epochs = np.asarray(run.epochs if epochs is None else epochs)
    if len(epochs) == 0:
        raise AnalysisError(f"{run.path}: no checkpoints to evaluate")
    cfg = run.config.model
    fam = family_of(cfg)
    loss = run_loss(run)
    data = {"train": run.train_data(), "test": run.test_data()}
    out: dict[str, list[float]] = {f"{s}_{m}": [] for s in data for m in ("loss", "acc")}
    with torch.no_grad():
        for i in range(0, len(epochs), chunk):
            P = stacked_params(run, epochs[i:i + chunk])
            for s, (x, y) in data.items():
                if len(y) == 0:
                    out[f"{s}_loss"].extend([math.nan] * len(epochs[i:i + chunk]))
                    out[f"{s}_acc"].extend([math.nan] * len(epochs[i:i + chunk]))
                    continue
                logits = input_logits(fam, P, x, cfg)
                out[f"{s}_loss"].extend(mean_loss(logits, y, loss).tolist())
                out[f"{s}_acc"].extend((logits.argmax(-1) == y).double().mean(1).tolist())
    df = weight_norms(run, epochs)[["epoch", "weight_norm"]]
    for k, v in out.items():
        df[k] = v
    df.attrs["loss"] = loss
    return df


@dataclass(frozen=True)
class GrokkingDates:
    """Grokking read off test accuracy (module notes). Epochs and optimizer steps; ``None`` with a reason."""

    train_100_epoch: int | None
    train_100_step: int | None
    test_at_train_100: float | None
    test_final: float | None
    final_epoch: int | None
    rise: float | None
    grokked: bool
    generalized_epoch: int | None
    generalized_step: int | None
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def grokking_dates(evals: pd.DataFrame, steps_per_epoch: int = 1, *, rise: float = GROK_RISE) -> GrokkingDates:
    """Grokking on test accuracy from evaluation rows ``epoch, train_acc, test_acc`` (``run.evals``).

    Args:
        evals: one row per evaluation (NaN rows are dropped).
        steps_per_epoch: optimizer steps an epoch (to give steps too).
        rise: the test-accuracy rise after training accuracy reached 100 % that counts as grokking.

    Example:
        >>> ev = pd.DataFrame({"epoch": [0, 10, 20, 30], "train_acc": [0.1, 1.0, 1.0, 1.0],
        ...                    "test_acc": [0.1, 0.3, 0.6, 0.8]})
        >>> d = grokking_dates(ev)
        >>> d.train_100_epoch, round(d.rise, 2), d.grokked, d.generalized_epoch
        (10, 0.5, True, 30)
    """
    for c in ("epoch", "train_acc", "test_acc"):
        if c not in evals.columns:
            raise AnalysisError(f"evals: needs a column {c!r}, has {list(evals.columns)}")
    ev = evals.dropna(subset=["train_acc", "test_acc"]).sort_values("epoch")
    reasons: dict[str, str] = {}
    if len(ev) == 0:
        return GrokkingDates(None, None, None, None, None, None, False, None, None, {"all": "no evaluations"})
    final = ev.iloc[-1]
    hit = ev[ev["train_acc"] >= 1.0]
    if len(hit) == 0:
        reasons["train_100"] = f"training accuracy never reached 100 % (max {ev['train_acc'].max():.3f})"
        return GrokkingDates(None, None, None, float(final["test_acc"]), int(final["epoch"]), None, False, None, None,
                             reasons)
    first = hit.iloc[0]
    e100, t100 = int(first["epoch"]), float(first["test_acc"])
    r = float(final["test_acc"]) - t100
    gen_e = None
    if r >= rise:
        after = ev[(ev["epoch"] >= e100) & (ev["test_acc"] >= t100 + 0.9 * r)]
        gen_e = int(after.iloc[0]["epoch"]) if len(after) else None
    else:
        reasons["generalized"] = (f"test accuracy rose by {r:.3f} after training accuracy reached 100 %, below the "
                                  f"{rise} of grokking")
    k = int(steps_per_epoch)
    return GrokkingDates(e100, e100 * k, t100, float(final["test_acc"]), int(final["epoch"]), r, r >= rise, gen_e,
                         None if gen_e is None else gen_e * k, reasons)


def hidden_activations(run: Any, epoch: int = -1, layer: int | None = None, which: str = "all"
                       ) -> tuple[Tensor, Tensor]:
    """A hidden layer's activations ``[n, d_hidden]`` on the run's examples and their labels ``[n]``.

    Args:
        run: a run on a dataset task.
        epoch: the checkpoint (``-1``: last).
        layer: the hidden layer (default: the last, the family's neurons).
        which: ``train``, ``test`` or ``all`` (train then test).
    """
    _check(run)
    cfg = run.config.model
    layer = cfg.n_hidden_layers - 1 if layer is None else int(layer)
    if not 0 <= layer < cfg.n_hidden_layers:
        raise AnalysisError(f"layer: must lie in [0, {cfg.n_hidden_layers}), got {layer}")
    parts = {"train": [run.train_data()], "test": [run.test_data()],
             "all": [run.train_data(), run.test_data()]}
    if which not in parts:
        raise AnalysisError(f"which: must be train, test or all, got {which!r}")
    x = torch.cat([p[0] for p in parts[which]])
    y = torch.cat([p[1] for p in parts[which]])
    model = run.model(epoch)
    hook = f"hidden.{layer}.hook_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == hook)
    return cache[hook], y


def neuron_statistics(acts: Tensor, labels: Tensor) -> pd.DataFrame:
    """Per-neuron statistics of activations ``[n, d]`` with class labels ``[n]``: one row per neuron.

    Columns: ``neuron``, ``mean``, ``std``, ``frac_active`` (share of inputs with activation > 0),
    ``dead`` (never active), ``class_fve`` (the fraction of the neuron's variance explained by the class
    means: between-class variance / total variance; 1 = a function of the class alone, NaN for a constant
    neuron), ``top_class`` (the class with the largest mean activation).

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]]); y = torch.tensor([0, 0, 1])
        >>> s = neuron_statistics(a, y)
        >>> s["class_fve"].round(3).tolist(), s["dead"].tolist(), s["top_class"].tolist()
        ([1.0, nan], [False, True], [1, 0])
    """
    a = acts.double()
    if a.ndim != 2 or labels.shape != (a.shape[0],):
        raise AnalysisError(f"acts [n, d] and labels [n]: got {list(acts.shape)} and {list(labels.shape)}")
    y = labels.long()
    k = int(y.max()) + 1 if len(y) else 0
    counts = torch.bincount(y, minlength=k).double()
    means = torch.zeros(k, a.shape[1], dtype=torch.float64).index_add_(0, y, a) / counts.clamp(min=1)[:, None]
    mu = a.mean(0)
    total = (a - mu).pow(2).sum(0)
    between = (counts[:, None] * (means - mu).pow(2)).sum(0)
    fve = torch.where(total > 0, between / total.clamp(min=1e-300), torch.full_like(total, math.nan))
    active = (a > 0).double().mean(0)
    return pd.DataFrame({"neuron": np.arange(a.shape[1]), "mean": mu.numpy(), "std": a.std(0).numpy(),
                         "frac_active": active.numpy(), "dead": (active == 0).numpy(), "class_fve": fve.numpy(),
                         "top_class": means.argmax(0).numpy()})
