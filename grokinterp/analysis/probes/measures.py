"""The probes as measures: columns over checkpoints through :func:`~grokinterp.analysis.measures.progress_measures`.

They are registered **opt-in** (``Measure.default = False``): the default progress table and its columns do not
change; ask for them by name, ``progress_measures(run, measures=[*DEFAULT, "softmax_collapse", "rqi", ...])``,
or with :data:`PROBES` / :data:`CHEAP_PROBES`. The run report adds :data:`CHEAP_PROBES` (computed from the grid
logits and weights the progress measures already hold); the NTK alignment (a Jacobian per input and class) only
when asked.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...model.grid import grid_tokens
from ..measures.base import ChunkContext, Measure, register_measure
from ..projections import sum_index
from .collapse import collapsed, update_weight_cosine
from .logit_scale import pair_margins, pair_std
from .ntk import kernel_alignment, label_kernel, ntk_defined, ntk_gram, ntk_subset
from .rqi import DEFAULT_TOL, circle_quality, representation_quality

__all__ = ["SoftmaxCollapse", "UpdateWeightCosine", "LogitScale", "RQI", "NTKAlignment", "PROBES", "CHEAP_PROBES",
           "is_addition"]

#: The probes' measure names, cheap ones first.
CHEAP_PROBES = ("softmax_collapse", "update_cos", "logit_scale", "rqi")
PROBES = (*CHEAP_PROBES, "ntk_alignment")


def _pair_stats(ctx: ChunkContext) -> tuple[Tensor, Tensor, Tensor]:
    """Per valid pair ``[n, valid]``: collapsed (bool), label margin, logit std — one pass over the grid's blocks of
    rows (a streamed context never holds the whole grid), cached on the context for the measures that share it."""
    got = ctx.__dict__.get("probe_pair_stats")
    if got is not None:
        return got
    a, p = ctx.arrays, ctx.arrays.p
    coll, marg, std = [], [], []
    for a0, a1, L in ctx.logit_blocks():
        lo, hi = torch.searchsorted(a.valid, torch.tensor([a0 * p, a1 * p])).tolist()
        Lv = L.reshape(ctx.n, (a1 - a0) * p, -1)[:, (a.valid[lo:hi] - a0 * p).to(L.device)]
        y = a.y_valid[lo:hi].to(L.device).expand(ctx.n, -1)
        coll.append(collapsed(Lv, y))
        marg.append(pair_margins(Lv, y))
        std.append(pair_std(Lv))
    got = (torch.cat(coll, 1), torch.cat(marg, 1), torch.cat(std, 1))
    ctx.__dict__["probe_pair_stats"] = got
    return got


def is_addition(labels: Tensor, valid: Tensor, p: int) -> bool:
    """The task's labels are ``(a + b) mod p`` on every valid pair."""
    return len(valid) > 0 and bool((labels[valid] == sum_index(p)[valid]).all())


class SoftmaxCollapse(Measure):
    name = "softmax_collapse"
    columns = ("sc_train", "sc_test")
    definitions = {
        "sc_train": "softmax collapse (Prieto et al. 2025): fraction of training pairs whose float32 cross-entropy "
                    "(torch.log_softmax, max-subtracted) is exactly 0, i.e. whose float32 softmax gives the label "
                    "probability 1 and zero gradient",
        "sc_test": "the same on the test pairs (NaN without test pairs)",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        a = ctx.arrays
        coll = _pair_stats(ctx)[0].double()
        return {col: coll[:, pos].mean(-1) if len(pos) else None
                for col, pos in (("sc_train", a.train_pos), ("sc_test", a.test_pos))}


class UpdateWeightCosine(Measure):
    name = "update_cos"
    columns = ("update_weight_cos",)
    definitions = {
        "update_weight_cos": "cos(θ_t − θ_prev, θ_prev) over all parameters between consecutive measured checkpoints "
                             "(+1: weights scaled up along themselves, Prieto et al.'s naive loss minimisation; −1: a "
                             "pure weight-decay step; NaN at the first checkpoint)",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        cur = ctx.all_params
        prev = ctx.prev_params
        if prev is None:
            if ctx.n < 2:
                return {"update_weight_cos": None}
            cos = update_weight_cosine({k: v[:-1] for k, v in cur.items()}, {k: v[1:] for k, v in cur.items()})
            return {"update_weight_cos": torch.cat([torch.full((1,), float("nan"), dtype=torch.float64), cos.cpu()])}
        before = {k: torch.cat([prev[k].to(v.device), v[:-1]]) for k, v in cur.items()}
        return {"update_weight_cos": update_weight_cosine(before, cur)}


class LogitScale(Measure):
    name = "logit_scale"
    columns = ("logit_std", "logit_margin")
    definitions = {
        "logit_std": "per-pair population std of the logits over the classes, mean over all valid pairs",
        "logit_margin": "per-pair margin z_label − max of the other logits, mean over the training pairs",
    }

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        _, marg, std = _pair_stats(ctx)
        pos = ctx.arrays.train_pos
        return {"logit_std": std.mean(-1), "logit_margin": marg[:, pos].mean(-1) if len(pos) else None}


class RQI(Measure):
    name = "rqi"
    columns = ("rqi", "rqi_circle")

    def __init__(self, tol: float = DEFAULT_TOL, modular: bool = False):
        self.tol, self.modular = tol, modular
        kind = "a + b ≡ c + d (mod p)" if modular else "a + b = c + d as integers"
        self.definitions = {
            "rqi": f"representation quality index (Liu et al. 2022): share of the non-trivial parallelograms "
                   f"{kind} whose centred embeddings close, ‖E_a + E_b − E_c − E_d‖ ≤ {tol} × RMS embedding norm "
                   f"(NaN: a task other than a + b mod p, or a family without a token embedding)",
            "rqi_circle": f"the modular analogue for circle embeddings: share of the non-trivial parallelograms "
                          f"a + b ≡ c + d (mod p) that close as rotations, |z_a z_b − z_c z_d| ≤ {tol}, with z the "
                          f"whitened complex coordinates of the embeddings in one frequency's plane, the best of the "
                          f"run's key frequencies (NaN as rqi)"}

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        a = ctx.arrays
        if ctx.W_E is None or not is_addition(a.labels, a.valid, a.p):
            return {"rqi": None, "rqi_circle": None}
        keys = [int(k) for k in ctx.keys.freqs if 1 <= int(k) <= (a.p - 1) // 2] or None
        return {"rqi": representation_quality(ctx.W_E, a.p, tol=self.tol, modular=self.modular),
                "rqi_circle": circle_quality(ctx.W_E, a.p, tol=self.tol, freqs=keys)}


class NTKAlignment(Measure):
    name = "ntk_alignment"
    columns = ("ntk_alignment",)

    def __init__(self, n_inputs: int = 32, n_classes: int = 4, seed: int = 0):
        ntk_subset(torch.arange(2), torch.arange(2), n_inputs=n_inputs, n_classes=n_classes)  # checks the values
        self.n_inputs, self.n_classes, self.seed = n_inputs, n_classes, seed
        self.definitions = {
            "ntk_alignment": f"centred kernel alignment (Kumar et al. 2023) of the empirical trace NTK "
                             f"Σ_c ⟨∂f_c(x_i), ∂f_c(x_j)⟩ with the one-hot label kernel Y Yᵀ, on a fixed seeded "
                             f"class-balanced subset of the training pairs ({n_classes} labels × "
                             f"{n_inputs // n_classes} pairs, seed {seed})"}

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        if ntk_defined(ctx.cfg) is not None:
            return {"ntk_alignment": None}
        a = ctx.arrays
        idx = ntk_subset(a.train, a.labels, n_inputs=self.n_inputs, n_classes=self.n_classes, seed=self.seed)
        tokens = grid_tokens(a.p)[idx]
        with torch.enable_grad():
            K = ntk_gram(ctx.params, ctx.cfg, tokens)
        return {"ntk_alignment": kernel_alignment(K, label_kernel(a.labels[idx]))}


for _m in (SoftmaxCollapse(), UpdateWeightCosine(), LogitScale(), RQI(), NTKAlignment()):
    _m.default = False
    register_measure(_m)
