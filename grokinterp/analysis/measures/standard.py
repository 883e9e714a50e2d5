"""The built-in progress measures of Nanda et al. (2023, §5 and App. C), one class each.

Which inputs each uses (our choice, stated because the study's codebases differ) is in each
class's ``definitions``; :func:`~grokinterp.analysis.measures.progress_measures` copies them into
``df.attrs["definitions"]``.
"""

from __future__ import annotations

from torch import Tensor

from ..fourier import embed_fourier_norms, gini, neuron_logit_fourier_norms
from ..losses import excluded_nll, restricted_nll
from .base import ChunkContext, Measure, register_measure

__all__ = ["Losses", "Restricted", "Excluded", "FourierGini", "WeightNorm"]


class Losses(Measure):
    name = "losses"
    columns = ("train_loss", "test_loss", "train_acc", "test_acc", "all_loss")
    definitions = {
        "train_loss": "cross-entropy of the original logits on the stored training pairs",
        "test_loss": "the same on the stored test pairs",
        "train_acc": "accuracy on the stored training pairs",
        "test_acc": "accuracy on the stored test pairs",
        "all_loss": "cross-entropy over all valid pairs of the task (train ∪ test)",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        nll, correct = ctx.nll_correct
        a = ctx.arrays
        correct = correct.double()
        has_test = len(a.test_pos) > 0
        return {
            "train_loss": nll[:, a.train_pos].mean(-1), "test_loss": nll[:, a.test_pos].mean(-1) if has_test else None,
            "train_acc": correct[:, a.train_pos].mean(-1),
            "test_acc": correct[:, a.test_pos].mean(-1) if has_test else None,
            "all_loss": nll.mean(-1),
        }


class Restricted(Measure):
    name = "restricted"
    columns = ("restricted_loss", "restricted_acc")
    definitions = {
        "restricted_loss": "logits of all p² inputs projected, per output c, onto span{1, cos(w(a+b)), "
                           "sin(w(a+b)) : w key}; cross-entropy over all valid pairs",
        "restricted_acc": "accuracy of those restricted logits over all valid pairs",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        R, _ = ctx.filters
        a = ctx.arrays
        # R depends on (a, b) only through s = a + b: one argmax per (s, checkpoint)
        acc = (R.argmax(-1)[:, a.s_valid.to(R.device)] == a.y_valid.to(R.device)).double().mean(-1)
        return {"restricted_loss": restricted_nll(R, a.s_valid, a.y_valid), "restricted_acc": acc}


class Excluded(Measure):
    name = "excluded"
    columns = ("excluded_loss",)
    definitions = {
        "excluded_loss": "logits with the key-frequency cos(w(a+b)), sin(w(a+b)) components removed "
                         "(projection over the full p×p grid); cross-entropy on the training pairs",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        _, K = ctx.filters
        a = ctx.arrays
        return {"excluded_loss": excluded_nll(ctx.logits, K, a.train, a.labels[a.train])}


class FourierGini(Measure):
    name = "gini"
    columns = ("gini_W_E", "gini_W_L")
    definitions = {
        "gini_W_E": "Hurley & Rickard Gini of the per-frequency Fourier norms of W_E[:p], frequencies 1..p//2",
        "gini_W_L": "the same for W_L = W_out W_U along the output (vocab) axis",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        p = ctx.arrays.p
        return {"gini_W_E": gini(embed_fourier_norms(ctx.params["embed.W_E"], p)[:, 1:], dim=-1),
                "gini_W_L": gini(neuron_logit_fourier_norms(ctx.W_L, p)[:, 1:], dim=-1)}


class WeightNorm(Measure):
    name = "weight_norm"
    columns = ("sum_sq_weights",)
    definitions = {"sum_sq_weights": "Σ θ² over every parameter (weights and biases; the '=' output column too)"}

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        return {"sum_sq_weights": sum(v.double().pow(2).reshape(ctx.n, -1).sum(-1) for v in ctx.all_params.values())}


for _m in (Losses(), Restricted(), Excluded(), FourierGini(), WeightNorm()):
    register_measure(_m)
