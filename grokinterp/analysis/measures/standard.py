"""The built-in progress measures of Nanda et al. (2023, §5 and App. C), one class each.

Which inputs each uses (our choice, stated because the study's codebases differ) is in each
class's ``definitions``; :func:`~grokinterp.analysis.measures.progress_measures` copies them into
``df.attrs["definitions"]``.
"""

from __future__ import annotations

from torch import Tensor

from ..fourier import embed_fourier_norms, gini, neuron_logit_fourier_norms
from ..groups import embed_irrep_norms, neuron_logit_irrep_norms
from ..losses import restricted_nll
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
        "restricted_loss": "logits of all inputs of the block projected, per output c, onto the per-output mean "
                           "and the key terms u(s(a,b)) — cos/sin(w·s) of the key frequencies, or the matrix "
                           "elements of the key irreps — with s the label coordinate (a + b; a − b; log a ± log b; "
                           "g·h); cross-entropy over all valid pairs of the block (undefined without a group "
                           "structure)",
        "restricted_acc": "accuracy of those restricted logits over all valid pairs of the block",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        if ctx.filters is None:
            return {"restricted_loss": None, "restricted_acc": None}
        R, _ = ctx.filters
        a = ctx.arrays
        # R depends on (a, b) only through s(a, b): one argmax per (s, checkpoint)
        acc = (R.argmax(-1)[:, a.s_block.to(R.device)] == a.y_block.to(R.device)).double().mean(-1)
        return {"restricted_loss": restricted_nll(R, a.s_block, a.y_block), "restricted_acc": acc}


class Excluded(Measure):
    name = "excluded"
    columns = ("excluded_loss",)
    definitions = {
        "excluded_loss": "logits with the key terms removed (projection over the whole block, as for the "
                         "restricted loss); cross-entropy on the training pairs of the block (undefined without a "
                         "group structure)",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        return {"excluded_loss": ctx.excluded_nll}


class FourierGini(Measure):
    name = "gini"
    columns = ("gini_W_E", "gini_W_L")
    definitions = {
        "gini_W_E": "Hurley & Rickard Gini of the per-frequency Fourier norms of W_E[:p], frequencies 1..p//2 "
                    "(with a group structure: of the per-irrep norms of its group Fourier transform in the group's "
                    "coordinates, the trivial irrep left out)",
        "gini_W_L": "the same for W_L = W_out W_U along the output (vocab) axis (an MLP: W_U, the last hidden "
                    "layer's map to the logits; NaN where the family has no such map, gini_W_E NaN without an "
                    "embedding)",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        ts, p = ctx.arrays.structure, ctx.arrays.p
        W_E, W_L = ctx.W_E, ctx.W_L  # None where the family has no embedding / no neuron-to-logit map
        if ts is not None:
            return {"gini_W_E": None if W_E is None else gini(embed_irrep_norms(W_E, ts)[:, 1:], dim=-1),
                    "gini_W_L": None if W_L is None else gini(neuron_logit_irrep_norms(W_L, ts)[:, 1:], dim=-1)}
        return {"gini_W_E": None if W_E is None else gini(embed_fourier_norms(W_E, p)[:, 1:], dim=-1),
                "gini_W_L": None if W_L is None else gini(neuron_logit_fourier_norms(W_L, p)[:, 1:], dim=-1)}


class WeightNorm(Measure):
    name = "weight_norm"
    columns = ("sum_sq_weights",)
    definitions = {"sum_sq_weights": "Σ θ² over every parameter (weights and biases; the '=' output column too)"}

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        return {"sum_sq_weights": sum(v.double().pow(2).reshape(ctx.n, -1).sum(-1) for v in ctx.all_params.values())}


for _m in (Losses(), Restricted(), Excluded(), FourierGini(), WeightNorm()):
    register_measure(_m)
