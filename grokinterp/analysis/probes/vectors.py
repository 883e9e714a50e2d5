"""The probes on a run of a dataset task (input vectors: ``digits``, ``mnist``; issues 20 and 22).

Softmax collapse, the logit scale (std, margin) and the update–weight cosine are defined for any classifier: here
they read the logits of the family's functional forward on the run's own training and test examples (as
:func:`~grokinterp.analysis.vectors.checkpoint_metrics` does), with the same functions and the same splits as on
an algebraic run (``sc_train`` / ``logit_margin`` over the training examples, ``sc_test`` over the test examples,
``logit_std`` over all of them). The NTK–label alignment has the token version's definition
(:mod:`~grokinterp.analysis.probes.ntk`): the centred alignment of the trace-over-logits empirical NTK with ``Y Yᵀ``
over a seeded class-balanced subset of the training examples (:func:`~grokinterp.analysis.probes.ntk.ntk_subset`
over their positions ``0 .. n_train − 1`` in the run's split order, where the token version draws grid indices),
the inputs being the examples' vectors. The representation quality index (parallelograms ``a + b = c + d`` of token
embeddings) is **undefined** for such a task: its columns are NaN and the definitions say why — never a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ...errors import AnalysisError
from ...model.families import family_of
from ..vectors import input_logits, is_vector_run, mean_loss, run_loss, stacked_params
from .collapse import collapsed, update_weight_cosine
from .logit_scale import pair_margins, pair_std
from .measures import PROBES, LogitScale, SoftmaxCollapse, UpdateWeightCosine
from .ntk import kernel_alignment, label_kernel, ntk_gram, ntk_subset

__all__ = ["vector_probes", "VECTOR_UNDEFINED"]

#: Why the probes that need token pairs are NaN on a dataset task.
VECTOR_UNDEFINED = {
    "rqi": "undefined for this task (it classifies vectors: no token embedding and no a + b = c + d "
           "parallelograms): NaN",
}
_COLUMNS = {"softmax_collapse": SoftmaxCollapse.columns, "update_cos": UpdateWeightCosine.columns,
            "logit_scale": LogitScale.columns, "rqi": ("rqi", "rqi_circle"), "ntk_alignment": ("ntk_alignment",)}


def vector_probes(run: Any, probes: Sequence[str] = PROBES, epochs: np.ndarray | None = None, *,
                  chunk: int = 64, ntk_inputs: int = 32, ntk_classes: int = 4, ntk_seed: int = 0) -> pd.DataFrame:
    """The probes at checkpoints of a run on a dataset task, one row per checkpoint.

    Args:
        run: a run whose ``model.d_input > 0``.
        probes: probe names among :data:`~grokinterp.analysis.probes.PROBES` (their columns, in that order).
        epochs: the checkpoints (default: all); the update–weight cosine compares consecutive ones of this
            selection (NaN at the first).
        chunk: checkpoints per stacked forward.
        ntk_inputs, ntk_classes, ntk_seed: the NTK subset (``ntk_classes`` labels × ``ntk_inputs // ntk_classes``
            training examples, seeded, fewer where the run has fewer; :func:`~grokinterp.analysis.probes.ntk.ntk_subset`;
            the column's definition states the subset as drawn).

    Returns:
        DataFrame ``epoch``, ``train_loss``, ``test_loss`` (the run's loss, as ``checkpoint_metrics``), then the
        probes' columns (float64); ``df.attrs["definitions"]`` has one line per column.
    """
    if not is_vector_run(run):
        raise AnalysisError(f"{getattr(run, 'path', run)}: not a run on a dataset task (model.d_input is 0); use "
                            f"progress_measures(run, measures=PROBES)")
    unknown = [p for p in probes if p not in _COLUMNS]
    if unknown:
        raise AnalysisError(f"probes: unknown probe(s) {unknown}; known: {', '.join(PROBES)}")
    probes = list(dict.fromkeys(probes))
    epochs = np.asarray(run.epochs if epochs is None else epochs)
    if len(epochs) == 0:
        raise AnalysisError(f"{run.path}: no checkpoints to probe")
    cfg = run.config.model
    fam = family_of(cfg)
    loss = run_loss(run)
    (xtr, ytr), (xte, yte) = run.train_data(), run.test_data()
    if len(ytr) == 0:
        raise AnalysisError(f"{run.path}: the run has no training examples to probe")
    if "ntk_alignment" in probes:  # the same examples at every checkpoint
        ntk_idx = ntk_subset(torch.arange(len(ytr)), ytr, n_inputs=ntk_inputs, n_classes=ntk_classes, seed=ntk_seed)
        ntk_x, ntk_L = xtr[ntk_idx], label_kernel(ytr[ntk_idx])
        # the subset as drawn (ntk_subset clamps the labels and examples to what the training set has)
        _, per_label = torch.unique(ytr[ntk_idx], return_counts=True)
        sizes = sorted({int(c) for c in per_label})
        ntk_subset_size = (f"{len(per_label)} labels × {sizes[0]} examples" if len(sizes) == 1 else
                           f"{len(ntk_idx)} examples over {len(per_label)} labels, {sizes[0]}–{sizes[-1]} each")
    cols = ["train_loss", "test_loss"] + [c for p in probes for c in _COLUMNS[p]]
    table: dict[str, list[float]] = {c: [] for c in cols}
    prev = None
    with torch.no_grad():
        for i in range(0, len(epochs), chunk):
            P = stacked_params(run, epochs[i:i + chunk])
            n = len(epochs[i:i + chunk])
            Ltr = input_logits(fam, P, xtr, cfg)
            Lte = input_logits(fam, P, xte, cfg) if len(yte) else None
            out: dict[str, Tensor | None] = {
                "train_loss": mean_loss(Ltr, ytr, loss), "test_loss": None if Lte is None else mean_loss(Lte, yte, loss)}
            if "softmax_collapse" in probes:
                out["sc_train"] = collapsed(Ltr, ytr.expand(n, -1)).double().mean(-1)
                out["sc_test"] = None if Lte is None else collapsed(Lte, yte.expand(n, -1)).double().mean(-1)
            if "logit_scale" in probes:
                std = pair_std(Ltr) if Lte is None else torch.cat([pair_std(Ltr), pair_std(Lte)], 1)
                out["logit_std"] = std.mean(-1)
                out["logit_margin"] = pair_margins(Ltr, ytr.expand(n, -1)).mean(-1)
            if "update_cos" in probes:
                before = {k: (v[:-1] if prev is None else torch.cat([prev[k], v[:-1]])) for k, v in P.items()}
                after = {k: (v[1:] if prev is None else v) for k, v in P.items()}
                cos = update_weight_cosine(before, after) if len(next(iter(after.values()))) else torch.zeros(0)
                out["update_weight_cos"] = cos if prev is not None else torch.cat(
                    [torch.full((1,), math.nan, dtype=torch.float64), cos.double()])
            if "ntk_alignment" in probes:
                out["ntk_alignment"] = kernel_alignment(ntk_gram(P, cfg, ntk_x), ntk_L)
            prev = {k: v[-1:] for k, v in P.items()}
            for c in cols:
                v = out.get(c)
                table[c].extend([math.nan] * n if v is None else torch.as_tensor(v).double().reshape(n).tolist())
    df = pd.DataFrame({"epoch": epochs.astype(np.int64), **table})
    definitions = {"train_loss": f"the run's loss ({loss}) on the training examples",
                   "test_loss": f"the run's loss ({loss}) on the test examples (NaN without any)"}
    for p in probes:
        for c in _COLUMNS[p]:
            if p in VECTOR_UNDEFINED:
                definitions[c] = VECTOR_UNDEFINED[p]
            elif p == "ntk_alignment":
                definitions[c] = (f"centred kernel alignment (Kumar et al. 2023) of the empirical trace NTK "
                                  f"Σ_c ⟨∂f_c(x_i), ∂f_c(x_j)⟩ with the one-hot label kernel Y Yᵀ, on a fixed seeded "
                                  f"class-balanced subset of the training examples ({ntk_subset_size}, seed "
                                  f"{ntk_seed})")
            else:
                d = {**SoftmaxCollapse.definitions, **UpdateWeightCosine.definitions, **LogitScale.definitions}[c]
                definitions[c] = d.replace("pairs", "examples")
    df.attrs["definitions"] = definitions
    df.attrs["implementation"] = (f"the {getattr(cfg, 'family', 'mlp')} family's functional forward on the run's "
                                  f"input vectors, chunks of {chunk} checkpoints")
    return df
