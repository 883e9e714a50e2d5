"""The local learning coefficient as a progress measure (issue 20): :class:`LLCMeasure`.

Not in the default set (SGLD chains cost far more than every other measure together): pass an
instance, ``progress_measures(run, measures=[..., LLCMeasure(SGLDConfig(draws=500))])``. Each chunk of
checkpoints is one stacked computation of its checkpoints × chains
(:func:`~grokinterp.analysis.llc.sample_llc`); the chains share their noise and batches across
checkpoints, so the result does not depend on the chunk size.

The sampled loss is the run's own training loss (``train.loss``: cross-entropy, StableMax or MSE on one-hot
targets), as :func:`~grokinterp.analysis.llc.llc_over_checkpoints` samples it: the driver hands it to the measure
(``ChunkContext.train_loss``); ``LLCMeasure(loss=...)`` overrides it.

Columns: ``llc_mean``, ``llc_std``, ``llc_chain_<c>`` (one per chain), ``llc_rhat``, ``llc_accept``,
``llc_init_loss`` (L_n(w*), the sampled loss at the checkpoint) and ``llc_reliable`` (1.0 / 0.0; the flags in words are in :func:`~grokinterp.analysis.llc.llc_over_checkpoints`'
``llc_flags``). The model is the one the run trained (``ChunkContext.all_params``): a run with an output for
``=`` keeps that column, unlike the other measures' residue logits, because the LLC is a property of the training
loss's landscape over every parameter (before, its L_n(w*) was not the run's training loss, and its estimate was
up to 14 % below :func:`~grokinterp.analysis.llc.llc_over_checkpoints`' on a ``tiny`` ``eq_logit`` run); on the
stored training pairs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ...errors import AnalysisError
from ...model.families import family_of
from ...model.grid import grid_tokens
from ..llc import LLC_LOSSES, SGLDConfig, model_loss_fn, sample_llc
from .base import ChunkContext, Measure

__all__ = ["LLCMeasure"]


class LLCMeasure(Measure):
    """SGLD estimate of the local learning coefficient at each checkpoint (not registered by default).

    ``loss``: the training loss the sampler uses (``TrainConfig.loss``: ``cross_entropy``, ``stablemax`` or
    ``mse``); ``None`` (default): the run's own (``ChunkContext.train_loss``, which
    :func:`~grokinterp.analysis.measures.progress_measures` sets; cross-entropy where a context does not know it),
    as :func:`~grokinterp.analysis.llc.llc_over_checkpoints` samples it.
    """

    name = "llc"

    def __init__(self, config: SGLDConfig | None = None, *, loss: str | None = None):
        self.config = config if config is not None else SGLDConfig()
        if loss is not None and loss not in LLC_LOSSES:
            raise AnalysisError(f"loss: must be one of {', '.join(LLC_LOSSES)}, got {loss!r}")
        self.loss = loss
        chains = tuple(f"llc_chain_{c}" for c in range(self.config.chains))
        self.columns = ("llc_mean", "llc_std", *chains, "llc_rhat", "llc_accept", "llc_init_loss", "llc_reliable")
        c = self.config
        how = (f"SGLD ε = {c.epsilon:g}, γ = {c.gamma:g}, nβ = {'m / ln m' if c.nbeta is None else f'{c.nbeta:g}'}, "
               f"{c.chains} chain(s) × {c.draws} draws after {c.burnin} burn-in, batches of "
               f"{c.batch_size or 'all'} training pairs, seed {c.seed}")
        self.definitions = {
            "llc_mean": f"local learning coefficient nβ (E[L_batch] − L_train(w*)) of the "
                        f"{'run' + chr(39) + 's training' if loss is None else loss} loss, mean over chains ({how})",
            "llc_std": "standard deviation of the per-chain estimates (ddof 1)",
            **{k: f"chain {i}'s estimate" for i, k in enumerate(chains)},
            "llc_rhat": "split-R̂ of the chains' loss traces (second half of the draws)",
            "llc_accept": "mean MALA acceptance probability of the SGLD transitions",
            "llc_init_loss": "L_n(w*): the sampled loss at the checkpoint (the SGLD chains' centre)",
            "llc_reliable": "1 when no diagnostic (non-finite, diverged, negative, R̂, acceptance) failed",
        }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        a = ctx.arrays
        trn = a.train.to(ctx.device)
        tokens = grid_tokens(a.p).to(ctx.device)[trn]
        labels = a.labels.to(ctx.device)[trn]
        name = self.loss or ctx.train_loss or "cross_entropy"
        if name not in LLC_LOSSES:
            raise AnalysisError(f"train.loss: the LLC samples {', '.join(LLC_LOSSES)}, the run trained with {name!r}")
        params, cfg = ctx.params, ctx.cfg
        if ctx.model_params is not None:  # an output for '=' (eq_logit): the model as trained, its own loss
            params, cfg = ctx.model_params, dataclasses.replace(ctx.cfg, eq_logit=True)
        loss = model_loss_fn(family_of(cfg).forward, cfg, tokens, labels, name)
        with torch.enable_grad():
            r = sample_llc(params, loss, len(labels), self.config, device=ctx.device)
        cols = r.columns()
        out = {k: torch.as_tensor(cols[k].astype("float64")) for k in self.columns if k != "llc_reliable"}
        out["llc_reliable"] = torch.as_tensor(cols["llc_reliable"].astype("float64"))
        return out
