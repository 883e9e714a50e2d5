"""The local learning coefficient (LLC) over checkpoints: SGLD chains run as one stacked computation.

Singular learning theory's LLC λ(w*) measures how degenerate the loss landscape is around a trained
point w*: a regular model of d parameters has λ = d / 2, a degenerate one less. It is estimated as
devinterp (Lau et al. 2023, ``devinterp.slt``) does, by sampling the tempered, localized posterior

    p(w) ∝ exp(−nβ L_n(w) − γ/2 ‖w − w*‖²)

with stochastic-gradient Langevin dynamics and averaging the sampled loss:

    λ̂(w*) = nβ (E_w[L_m(w)] − L_n(w*))

Every rule, stated (devinterp 1.3's where it has one):

- **SGLD step** (devinterp's ``SGLD``, ``noise_level = 1``, no weight decay, no bounding box):
  ``w ← w − ε/2 (nβ ∇L_B(w) + γ (w − w*)) + √ε ξ``, ``ξ ~ N(0, I)``, ``L_B`` the mean cross-entropy
  on a minibatch ``B`` of the training pairs.
- **Draws**: step ``t`` records ``L_B(w_t)``, the minibatch loss at the point *before* its update
  (devinterp's trace); ``burnin`` steps first, then ``draws`` recorded steps (one step between draws).
- **E_w[L]**: the mean of a chain's draws; the per-chain estimate is ``nβ (mean draw − L_n(w*))``;
  ``llc_mean`` / ``llc_std`` are the mean and (unbiased) standard deviation over chains.
- **L_n(w*)** (``init_loss``): ``"full"`` (default), the mean loss over every training pair at w*;
  ``"batches"``, devinterp's rule: the mean of the losses of the first ``chains`` minibatches (here,
  of chain 0's batch sequence).
- **nβ** (``nbeta``): default devinterp's ``default_nbeta``: ``m / ln m`` for batches of ``m`` pairs
  (``n / ln n`` with full batches). devinterp's grokking example uses ``nβ = 2`` (given explicitly).
- **Minibatches**: each chain walks its own seeded reshuffle of the training pairs, epoch by epoch
  (without replacement, as a shuffled ``DataLoader``); ``batch_size = None`` means full batch.
- **Stacking**: ``K`` checkpoints × ``C`` chains are ``R = K C`` models of one shape, stepped together
  through the family's functional forward over stacked parameters. Chain ``c`` uses the *same* noise
  and batches at every checkpoint (common random numbers): each checkpoint's chains are valid SGLD
  chains, an estimate does not depend on which other checkpoints share its stack (chunking changes
  nothing but float rounding), and differences between checkpoints have less noise.
- **Precision**: the chains run in float32 whatever the run's ``train.dtype``: a ``float64`` run's
  checkpoints are read as float32 (as its hooked model is), w* is that rounded point, and the loss sums
  (``L_n(w*)``, the MALA energies) are accumulated in float64. Float32's relative rounding (≈ 6e-8) is far
  below the SGLD noise of any useful ε.

Diagnostics (every estimate; :data:`LLC_FLAGS`), which mark an estimate unreliable
(``llc_reliable = False``, the reasons in ``llc_flags``, and an :class:`LLCWarning`) rather than
printing a number silently:

- ``nonfinite``: a NaN or infinite loss in some chain (the chain diverged); the estimate is NaN.
- ``diverged``: some draw's ``nβ (L_B(w) − L_n(w*))`` exceeded ``d + 10 √d``, ``d`` the number of
  parameters (the LLC is at most ``d / 2``, and a regular model's draws fluctuate by ``√(d / 2)``
  around it: a chain that far up left the basin of w*).
- ``negative``: ``llc_mean < 0``: the chains found lower loss than w*, which is then not a local
  minimum at this temperature (devinterp's documented failure mode).
- ``rhat``: the split-R̂ (Gelman–Rubin over the second half of each chain's draws, each half split
  in two) above ``max_rhat`` (1.1): the chains disagree with each other or still drift.
- ``acceptance``: the mean MALA acceptance probability below ``min_acceptance`` (0.5): ε is too
  large for the local curvature. As devinterp's ``MalaAcceptanceRate``, the Metropolis–Hastings
  acceptance of an SGLD transition ``w → w'`` read as a MALA proposal for ``exp(−U)``,
  ``U = nβ L_B + γ/2 ‖w − w*‖²``; unlike devinterp's, both ends are evaluated on the *same* minibatch
  ``B`` (one more forward and backward at ``w'``), so the batch-to-batch noise of ``L_B`` does not
  pose as a rejection: it measures the discretisation error of the step alone. Estimated on every
  ``accept_every``-th transition (default 10, ~10 % more work).

Example:
    >>> run = gi.load_run("checkpoints/mlp-devinterp-s4")                       # doctest: +SKIP
    >>> df = llc_over_checkpoints(run, SGLDConfig(epsilon=3e-3, gamma=5, nbeta=2, draws=500))  # doctest: +SKIP
    >>> df[["epoch", "llc_mean", "llc_std", "llc_reliable"]]                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import AnalysisError

__all__ = ["SGLDConfig", "LLCResult", "LLCWarning", "LLC_FLAGS", "default_nbeta", "sample_llc",
           "model_loss_fn", "fast_forward_applies", "llc_over_checkpoints", "llc_over_runs", "llc_frame", "calibrate", "split_rhat"]

#: The diagnostics that can mark an estimate unreliable (module notes).
LLC_FLAGS = ("nonfinite", "diverged", "negative", "rhat", "acceptance")


class LLCWarning(UserWarning):
    """An LLC estimate failed a diagnostic (its ``llc_flags`` say which)."""


def default_nbeta(batch: int) -> float:
    """devinterp's ``default_nbeta``: ``m / ln m`` for ``m > 1`` pairs per step, else 1.

    Example:
        >>> round(default_nbeta(128), 3)
        26.38
    """
    return batch / math.log(batch) if batch > 1 else 1.0


@dataclass(frozen=True)
class SGLDConfig:
    """The sampler's settings (module notes give every rule).

    Attributes:
        epsilon: SGLD step size ε (> 0). Default devinterp's grokking example's 3e-3.
        gamma: localization strength γ (≥ 0). Default that example's 5.
        nbeta: inverse temperature nβ (> 0); ``None``: :func:`default_nbeta` of the batch size.
        chains: independent chains per checkpoint (≥ 1).
        draws: recorded steps per chain (≥ 1).
        burnin: unrecorded steps before the draws (≥ 0).
        batch_size: pairs per step (≥ 1); ``None``: every training pair (full batch).
        seed: the noise and batch seed (chain ``c`` draws from ``seed`` and ``c``).
        init_loss: ``"full"`` or ``"batches"`` (module notes).
        accept_every: the MALA acceptance is estimated on every ``accept_every``-th transition (each costs
            one more forward and backward: 10 adds ~10 %).
        max_rhat, min_acceptance: the diagnostics' thresholds.
    """

    epsilon: float = 3e-3
    gamma: float = 5.0
    nbeta: float | None = None
    chains: int = 4
    draws: int = 200
    burnin: int = 0
    batch_size: int | None = 128
    seed: int = 0
    init_loss: str = "full"
    accept_every: int = 10
    max_rhat: float = 1.1
    min_acceptance: float = 0.5

    def __post_init__(self):
        def bad(name, why):
            raise AnalysisError(f"llc.{name}: {why}, got {getattr(self, name)!r}")

        def number(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number")
            return v

        if number("epsilon") <= 0:
            bad("epsilon", "the step size ε must be > 0")
        if number("gamma") < 0:
            bad("gamma", "the localization γ must be ≥ 0")
        if self.nbeta is not None and number("nbeta") <= 0:
            bad("nbeta", "the inverse temperature nβ must be > 0")
        for name, low in (("chains", 1), ("draws", 1), ("burnin", 0), ("accept_every", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                bad(name, f"must be an integer ≥ {low}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            bad("batch_size", "must be an integer ≥ 1 or None (full batch)")
        if self.init_loss not in ("full", "batches"):
            bad("init_loss", "must be 'full' or 'batches'")
        if number("max_rhat") <= 1:
            bad("max_rhat", "must be > 1")
        if not 0 <= number("min_acceptance") <= 1:
            bad("min_acceptance", "must be in [0, 1]")

    def batch(self, n: int) -> int:
        """Pairs per step for ``n`` training pairs."""
        return n if self.batch_size is None else min(self.batch_size, n)

    def beta(self, n: int) -> float:
        """nβ for ``n`` training pairs (the default rule when ``nbeta`` is None)."""
        return float(self.nbeta) if self.nbeta is not None else default_nbeta(self.batch(n))


@dataclass
class LLCResult:
    """The chains of ``K`` checkpoints.

    Attributes:
        llc: float64 ``[K, C]`` per-chain estimates (NaN where a chain went non-finite).
        init_loss: float64 ``[K]`` L_n(w*).
        trace: float32 ``[K, C, draws]`` the recorded losses.
        acceptance: float64 ``[K, C]`` mean MALA acceptance probability per chain.
        rhat: float64 ``[K]`` split-R̂ of the loss traces (NaN with fewer than 4 draws).
        nbeta: the inverse temperature used.
        config: the sampler settings.
        n_params: parameters per model (d).
        seconds: wall time of the sampling.
    """

    llc: np.ndarray
    init_loss: np.ndarray
    trace: np.ndarray
    acceptance: np.ndarray
    rhat: np.ndarray
    nbeta: float
    config: SGLDConfig
    n_params: int
    seconds: float = 0.0
    flags: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        if not self.flags:
            self.flags = [self._flags(k) for k in range(len(self.init_loss))]

    def _flags(self, k: int) -> list[str]:
        c = self.config
        tr = self.trace[k]
        out = []
        if not np.isfinite(tr).all():
            out.append("nonfinite")
        finite = tr[np.isfinite(tr)]
        d = self.n_params
        if finite.size and self.nbeta * (finite.max() - self.init_loss[k]) > d + 10 * math.sqrt(d):
            out.append("diverged")
        m = np.nanmean(self.llc[k]) if np.isfinite(self.llc[k]).any() else np.nan
        if np.isfinite(m) and m < 0:
            out.append("negative")
        if np.isfinite(self.rhat[k]) and self.rhat[k] > c.max_rhat:
            out.append("rhat")
        acc = np.nanmean(self.acceptance[k]) if np.isfinite(self.acceptance[k]).any() else np.nan
        if np.isfinite(acc) and acc < c.min_acceptance:
            out.append("acceptance")
        return out

    @property
    def mean(self) -> np.ndarray:
        """``[K]`` mean over chains (NaN if any chain is non-finite)."""
        return self.llc.mean(1)

    @property
    def std(self) -> np.ndarray:
        """``[K]`` unbiased standard deviation over chains (NaN with one chain)."""
        return self.llc.std(1, ddof=1) if self.llc.shape[1] > 1 else np.full(len(self.llc), np.nan)

    @property
    def reliable(self) -> np.ndarray:
        return np.array([not f for f in self.flags])

    def columns(self) -> dict[str, np.ndarray]:
        """The table's columns (module :func:`llc_frame`)."""
        cols: dict[str, np.ndarray] = {"llc_mean": self.mean, "llc_std": self.std}
        for c in range(self.llc.shape[1]):
            cols[f"llc_chain_{c}"] = self.llc[:, c]
        cols.update({
            "llc_init_loss": self.init_loss,
            "llc_loss_mean": self.trace.astype(np.float64).mean((1, 2)),
            "llc_rhat": self.rhat,
            "llc_accept": self.acceptance.mean(1),
            "llc_reliable": self.reliable,
            "llc_flags": np.array([";".join(f) for f in self.flags], dtype=object),
        })
        return cols


def split_rhat(trace: np.ndarray) -> float:
    """Split-R̂ (Gelman et al., BDA3 §11.4) of ``trace [chains, draws]`` over its second half.

    The first half of each chain is left out (warm-up: an SGLD loss trace climbs from L(w*) first), the
    second half split in two, and R̂ computed over the ``2 C`` pieces. NaN with fewer than 4 draws or
    non-finite draws.

    Notes:
        ``W`` the mean within-piece variance, ``B/n`` the variance of the piece means,
        ``R̂ = sqrt(((n − 1)/n W + B/n) / W)``.
    """
    tr = np.asarray(trace, dtype=np.float64)
    half = tr[:, tr.shape[1] // 2:]
    n = half.shape[1] // 2
    if n < 2 or not np.isfinite(half).all():
        return float("nan")
    pieces = np.concatenate([half[:, :n], half[:, n: 2 * n]], 0)
    W = pieces.var(1, ddof=1).mean()
    B_n = pieces.mean(1).var(ddof=1)
    if W <= 0:
        return 1.0 if B_n == 0 else float("inf")
    return float(math.sqrt(((n - 1) / n * W + B_n) / W))


LossFn = Callable[[dict[str, Tensor], Tensor], Tensor]


#: The per-example losses :func:`model_loss_fn` knows, by ``TrainConfig.loss`` (differentiable, in the logits'
#: dtype): the sampler explores the loss the run was trained on.
def _ce_each(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def _stablemax_each(logits: Tensor, labels: Tensor) -> Tensor:
    # StableMax (Prieto et al. 2025): s(x) = x + 1 for x ≥ 0, 1 / (1 − x) below; loss = log Σ_c s(z_c) − log s(z_y)
    s = torch.where(logits < 0, 1.0 / (1.0 - logits.clamp(max=0)), logits.clamp(min=0) + 1.0)
    return s.sum(-1).log() - s.gather(-1, labels[:, None])[:, 0].log()


def _mse_each(logits: Tensor, labels: Tensor) -> Tensor:
    # Omnigrok's MSE on one-hot targets: (1/V) Σ_c (z_c − [c = y])²
    return (logits - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)).square().mean(-1)


LLC_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _ce_each, "stablemax": _stablemax_each, "mse": _mse_each}


def fast_forward_applies(cfg, tokens: Tensor) -> str | None:
    """Why :func:`model_loss_fn`'s fast forward cannot compute models of ``cfg`` on ``tokens`` (``None`` when it
    can): it is the one-layer kernels' ``dense`` final-position forward (:mod:`grokinterp.model.stacked`), which
    needs :func:`~grokinterp.model.families.transformer.fast_kernels_apply` and a query token (the last) that is
    the same in every row."""
    from ..model.stacked import stack_unsupported

    if getattr(cfg, "family", "transformer") != "transformer":
        return f"model.family is {cfg.family!r}"
    why = stack_unsupported(cfg)
    if why:
        return why
    if tokens.ndim != 2 or tokens.shape[1] != cfg.n_ctx or tokens.is_floating_point():
        return f"tokens must be [pairs, {cfg.n_ctx}] integers, got {list(tokens.shape)}"
    if len(tokens) and not bool((tokens[:, -1] == tokens[0, -1]).all()):
        return "the last token differs between rows"
    return None


def model_loss_fn(forward: Callable, cfg, tokens: Tensor, labels: Tensor, loss: str = "cross_entropy", *,
                  fast: bool | None = None) -> LossFn:
    """A loss over stacked parameters from a family's functional forward: ``loss(P, idx) -> [R]``, the mean
    loss of run ``r`` on the training pairs ``idx[r]`` (``idx [R, m]`` rows of ``tokens``): ``loss`` names the
    run's training loss (``TrainConfig.loss``: ``cross_entropy``, ``stablemax`` or ``mse`` on one-hot targets).

    ``fast`` (default: wherever it applies, :func:`fast_forward_applies`): compute the logits with the one-layer
    kernels' ``dense`` forward instead of ``forward`` — the same logits (tested to float32 rounding, values and
    gradients), with keys, values and scores as per-(position, token) tables and one query per run (the ``=``
    row), about a quarter fewer operations at a batch of 128 than the family's forward, which computes them per
    example. ``fast=True`` where it does not apply raises :class:`AnalysisError` naming the reason.
    """
    if loss not in LLC_LOSSES:
        raise AnalysisError(f"loss: must be one of {', '.join(LLC_LOSSES)}, got {loss!r}")
    each = LLC_LOSSES[loss]
    why = fast_forward_applies(cfg, tokens) if fast is not False else "not asked for"
    if fast and why:
        raise AnalysisError(f"fast: the fast forward does not apply: {why}")
    if why is None:
        from ..model.stacked import StackPlan, stacked_final_logits

        def logits_of(P: dict[str, Tensor], idx: Tensor) -> Tensor:
            plan = StackPlan.build(cfg, tokens[idx], impl="dense")
            return stacked_final_logits(P, plan, "dense")
    else:
        def logits_of(P: dict[str, Tensor], idx: Tensor) -> Tensor:
            return forward(P, tokens[idx], cfg)

    def fn(P: dict[str, Tensor], idx: Tensor) -> Tensor:
        R, m = idx.shape
        logits = logits_of(P, idx)  # [R, m, vocab]
        return each(logits.reshape(R * m, -1), labels[idx].reshape(-1)).view(R, m).mean(1)

    fn.fast = why is None  # type: ignore[attr-defined]
    return fn


def _batches(n: int, m: int, chains: int, seed: int, device) -> Callable[[], Tensor]:
    """Each chain's seeded reshuffles of ``range(n)``, ``m`` at a time: a function returning ``[C, m]``."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
    state = {"perm": None, "pos": n}

    def nxt() -> Tensor:
        if m == n:
            return torch.arange(n, device=device).expand(chains, n)
        if state["pos"] + m > n:
            state["perm"] = torch.argsort(torch.rand(chains, n, generator=g), dim=1).to(device)
            state["pos"] = 0
        out = state["perm"][:, state["pos"]: state["pos"] + m]
        state["pos"] += m
        return out

    return nxt


def sample_llc(params: dict[str, Tensor], loss_fn: LossFn, n: int, config: SGLDConfig = SGLDConfig(), *,
               device: str | torch.device = "cpu", full_loss: Callable[[dict[str, Tensor]], Tensor] | None = None
               ) -> LLCResult:
    """SGLD chains around ``K`` stacked points, as one computation.

    Args:
        params: ``{name: [K, ...]}`` the points w* (checkpoints).
        loss_fn: ``loss_fn(P, idx) -> [R]``: each run's mean loss on its data rows ``idx [R, m]``, for
            stacked parameters ``P {name: [R, ...]}`` (differentiable; :func:`model_loss_fn`).
        n: training pairs (rows of the data ``idx`` indexes).
        config: the sampler.
        device: where to sample.
        full_loss: ``full_loss(P) -> [K]`` L_n at ``P`` (default: ``loss_fn`` over all rows, in pieces).

    Returns:
        :class:`LLCResult`.
    """
    if not params:
        raise AnalysisError("llc: no parameters to sample")
    if n < 1:
        raise AnalysisError(f"llc: the training set is empty (n = {n})")
    dev = torch.device(device)
    c = config
    t0 = time.perf_counter()
    names = list(params)
    K = int(params[names[0]].shape[0])
    C = c.chains
    R = K * C
    shapes = [tuple(params[k].shape[1:]) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    w0 = torch.cat([params[k].detach().to(dev, torch.float32).reshape(K, -1) for k in names], 1)  # [K, P]
    P_ = w0.shape[1]

    def views(flat: Tensor, rows: int) -> dict[str, Tensor]:
        return {k: v.view(rows, *s) for k, v, s in zip(names, flat.split(sizes, 1), shapes)}

    m = c.batch(n)
    nbeta = c.beta(n)
    eps, gamma = float(c.epsilon), float(c.gamma)
    nxt = _batches(n, m, C, c.seed, dev)
    g = torch.Generator(device=dev).manual_seed(int(c.seed))

    # L_n(w*)
    with torch.no_grad():
        if c.init_loss == "full":
            if full_loss is not None:
                init = full_loss(views(w0, K)).double()
            else:
                tot = torch.zeros(K, dtype=torch.float64, device=dev)
                step = max(1, min(n, 262_144 // K))  # rows per forward: bounds K × rows activations
                for a in range(0, n, step):
                    idx = torch.arange(a, min(a + step, n), device=dev).expand(K, -1)
                    tot += loss_fn(views(w0, K), idx).double() * idx.shape[1]
                init = tot / n
        else:
            peek = _batches(n, m, C, c.seed, dev)
            first = [peek()[0] for _ in range(C)]
            init = torch.stack([loss_fn(views(w0, K), b.expand(K, -1)).double() for b in first]).mean(0)

    w = w0.repeat_interleave(C, 0)  # [R, P], run r = k C + chain
    anchor = w0[:, None]  # [K, 1, P]: w* of run k C + c, broadcast over the chains (not copied C times)
    trace = torch.empty(K, C, c.draws, dtype=torch.float32, device=dev)
    acc_sum = torch.zeros(R, dtype=torch.float64, device=dev)
    acc_n = 0
    sq = math.sqrt(eps)
    h_loc, h_grad = 0.5 * eps * gamma, -0.5 * eps * nbeta

    def loss_grad(wt: Tensor, idx: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``L_B [R]`` at ``wt`` on the batches ``idx`` and ``∇ Σ_r L_B`` per parameter (each run's gradient
        is its own: the runs are independent). The parameters are leaf views of ``wt``, so their gradients
        are never concatenated into a flat tensor."""
        leaves = [v.detach().view(R, *s).requires_grad_(True) for v, s in zip(wt.split(sizes, 1), shapes)]
        loss = loss_fn(dict(zip(names, leaves)), idx)
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
        return loss.detach(), [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]

    def grad_u(wt: Tensor, grads: list[Tensor]) -> Tensor:
        """``∇U [R, P]`` = nβ ∇L_B + γ (w − w*) (the acceptance's only)."""
        flat = torch.cat([g.reshape(R, -1) for g in grads], 1).mul_(nbeta)
        return flat.view(K, C, P_).add_(wt.view(K, C, P_) - anchor, alpha=gamma).view(R, P_)

    def sgld_step(wt: Tensor, grads: list[Tensor], xi: Tensor, out: Tensor) -> Tensor:
        """``out ← wt − ε/2 (nβ ∇L_B + γ (wt − w*)) + √ε ξ`` as three passes (``out`` may be ``wt``): the
        localization as a ``lerp`` towards w*, the gradient added per parameter, the noise per chain."""
        out3 = out.view(K, C, P_)
        torch.lerp(wt.view(K, C, P_), anchor.expand(K, C, P_), h_loc, out=out3)
        torch._foreach_add_([o.view_as(g) for o, g in zip(out.split(sizes, 1), grads)], grads, alpha=h_grad)
        out3.add_(xi, alpha=sq)
        return out

    for t in range(c.burnin + c.draws):
        idx = nxt().repeat(K, 1)  # [R, m]: chain c's batch at every checkpoint
        loss, grads = loss_grad(w, idx)
        with torch.no_grad():
            if t >= c.burnin:
                trace[:, :, t - c.burnin] = loss.view(K, C)
            xi = torch.randn(C, P_, generator=g, device=dev)
        if t % c.accept_every:
            with torch.no_grad():
                sgld_step(w, grads, xi, w)  # in place: the same arithmetic as below, so the chains do not
            continue  # depend on accept_every
        # this transition as a MALA proposal, on its own batch
        with torch.no_grad():
            gU = grad_u(w, grads)
            w_new = sgld_step(w, grads, xi, torch.empty_like(w))
        loss1, grads1 = loss_grad(w_new, idx)
        with torch.no_grad():
            gU1 = grad_u(w_new, grads1)
            # log α = U − U' − ‖a‖²/2 + a·ξ, a = √ε/2 (∇U + ∇U'): the proposal densities' ‖ξ‖² cancel
            # analytically rather than as two large float sums; U − U' from its parts, in float64 sums:
            # nβ (L − L') − γ/2 (w' − w)·(w' + w − 2 w*)
            a = gU.add_(gU1).mul_(0.5 * sq).view(K, C, P_)
            step = (w_new - w).view(K, C, P_)
            loc = (step * ((w_new.view(K, C, P_) - anchor) + (w.view(K, C, P_) - anchor))).double().sum(2).view(R)
            dU = nbeta * (loss.double() - loss1.double()) - 0.5 * gamma * loc
            quad = a.double().pow(2).sum(2).view(R) / 2 - (a * xi).double().sum(2).view(R)
            log_a = dU - quad
            acc_sum += torch.nan_to_num(torch.exp(torch.clamp(log_a, max=0.0)), nan=0.0)
            acc_n += 1
        w = w_new
    tr = trace.cpu().numpy()
    init_np = init.cpu().numpy().astype(np.float64)
    llc = nbeta * (tr.astype(np.float64).mean(2) - init_np[:, None])
    llc[~np.isfinite(tr).all(2)] = np.nan
    acc = (acc_sum / max(acc_n, 1)).view(K, C).cpu().numpy() if acc_n else np.full((K, C), np.nan)
    rhat = np.array([split_rhat(tr[k]) for k in range(K)])
    return LLCResult(llc, init_np, tr, acc, rhat, nbeta, c, P_, time.perf_counter() - t0)


def _warn(result: LLCResult, epochs: Sequence[int], runs: Sequence[int] | None = None) -> None:
    """One :class:`LLCWarning` naming the unreliable estimates by epoch (``run j @ epoch`` with ``runs``)."""
    where = [str(int(e)) for e in epochs] if runs is None else [f"run {int(j)} @ {int(e)}" for j, e in zip(runs, epochs)]
    bad = [(e, f) for e, f in zip(where, result.flags) if f]
    if bad:
        shown = ", ".join(f"{e} ({';'.join(f)})" for e, f in bad[:5]) + (" …" if len(bad) > 5 else "")
        warnings.warn(f"LLC: {len(bad)} of {len(result.flags)} estimate(s) unreliable: {shown}", LLCWarning,
                      stacklevel=3)


def llc_frame(results: Sequence[tuple[Sequence[int], LLCResult]]) -> pd.DataFrame:
    """One row per checkpoint: ``epoch`` and :meth:`LLCResult.columns`; settings in ``df.attrs``."""
    frames = []
    for epochs, r in results:
        df = pd.DataFrame({"epoch": np.asarray(epochs, dtype=np.int64), **r.columns()})
        frames.append(df)
    if not frames:
        raise AnalysisError("llc: no checkpoints")
    out = pd.concat(frames, ignore_index=True)
    r0 = results[0][1]
    out.attrs["llc"] = {**asdict(r0.config), "nbeta_used": r0.nbeta,
                        "seconds": float(sum(r.seconds for _, r in results))}
    return out


def _run_pieces(run, device):
    """A run's family forward, model config, training data on ``device`` and training loss."""
    from ..model.families import family_of

    mc = run.config.model
    fam = family_of(mc)
    tokens, labels = run.train_data()  # [a, b, =] rows: every family's forward reads them
    return fam.forward, mc, tokens.to(device), labels.to(device), run.config.train.loss


def _default_chunk(mc, config: SGLDConfig, n: int) -> int:
    """Checkpoints per stacked computation that keep the ``K C`` models' batch activations under ~1 GB."""
    from ..model.families import family_of

    per_run = family_of(mc).activation_bytes(mc) * config.batch(n)
    return max(1, int(1e9 // max(per_run * config.chains, 1)))


def llc_over_checkpoints(run, config: SGLDConfig = SGLDConfig(), *, epochs=None, device: str | torch.device = "cpu",
                         chunk: int | None = None, warn: bool = True, progress: Callable[[int, int], None] | None = None
                         ) -> pd.DataFrame:
    """The LLC at a run's checkpoints: one row per checkpoint (:func:`llc_frame`).

    Args:
        run: a :class:`~grokinterp.store.Run` (or a path to one).
        config: the sampler.
        epochs: which checkpoints (default: all).
        device: where to sample.
        chunk: checkpoints per stacked computation (default: as many as keep ``R = K C`` models' batch
            activations under ~1 GB).
        warn: emit an :class:`LLCWarning` naming unreliable estimates.
        progress: called with ``(done, total)`` checkpoints after each chunk.

    Raises:
        AnalysisError: a run without checkpoints, or a bad ``epochs`` selection.
    """
    from ..store.run import load_run

    if not hasattr(run, "stacks"):
        run = load_run(run)
    if len(run.epochs) == 0:
        raise AnalysisError(f"{run.path}: the run has no checkpoints to estimate the LLC at")
    eps = np.asarray(run.epochs if epochs is None else [run.resolve_epoch(int(e)) for e in epochs], dtype=np.int64)
    if len(eps) == 0:
        raise AnalysisError("epochs: the selection is empty")
    dev = torch.device(device)
    forward, mc, tokens, labels, loss_name = _run_pieces(run, dev)
    n = len(labels)
    loss = model_loss_fn(forward, mc, tokens, labels, loss_name)
    if chunk is None:
        chunk = _default_chunk(mc, config, n)
    out = []
    for i in range(0, len(eps), chunk):
        part = eps[i: i + chunk]
        P = {k: v.to(dev) for k, v in run.stacks(epochs=part).items()}
        out.append((part, sample_llc(P, loss, n, config, device=dev)))
        if progress is not None:
            progress(min(i + chunk, len(eps)), len(eps))
    df = llc_frame(out)
    if warn:
        _warn(_merge(out), df["epoch"].tolist())
    return df


def llc_over_runs(runs: Sequence, config: SGLDConfig = SGLDConfig(), *, epochs: Sequence | None = None,
                  device: str | torch.device = "cpu", chunk: int | None = None,
                  order: Sequence[tuple[int, int]] | None = None,
                  on_chunk: Callable[[pd.DataFrame], None] | None = None, warn: bool = True) -> pd.DataFrame:
    """The LLC at the checkpoints of several runs of one model shape (e.g. seeds), as one stacked computation.

    Each run's checkpoints sample that run's own training loss (its own split): run ``j``'s pairs are rows
    ``j n … (j + 1) n`` of one table, and a chain's batch indices are offset by its run's rows, so chain ``c``
    draws the same batch *positions* and noise at every checkpoint of every run (common random numbers, as
    :func:`llc_over_checkpoints`): an estimate equals the one :func:`llc_over_checkpoints` makes for its run
    alone, up to float rounding (tested).

    Args:
        runs: :class:`~grokinterp.store.Run` objects (or paths) with equal model configs, training losses and
            numbers of training pairs.
        config: the sampler.
        epochs: per run, which checkpoints (default: all of each).
        chunk: checkpoints per stacked computation (default: as :func:`llc_over_checkpoints`).
        order: the ``(run index, epoch)`` pairs in the order to sample them (default: by epoch, then run), e.g.
            interleaved so that a partial result covers the whole curve; every pair must be one of ``epochs``.
        on_chunk: called with each chunk's table (columns ``run``, ``epoch`` and the LLC columns) when it is
            done, to write a partial result.
        warn: emit an :class:`LLCWarning` naming unreliable estimates.

    Returns:
        One row per ``(run, epoch)`` in ``order``: ``run`` (the index into ``runs``), ``epoch``, the LLC columns.

    Raises:
        AnalysisError: no runs, runs of different shapes, losses or training-set sizes, a run without checkpoints,
            ``epochs`` not one list per run, an ``order`` entry outside the runs or the selected checkpoints.
    """
    from ..store.run import load_run

    runs = [r if hasattr(r, "stacks") else load_run(r) for r in runs]
    if not runs:
        raise AnalysisError("runs: no runs to estimate the LLC of")
    dev = torch.device(device)
    pieces = [_run_pieces(r, dev) for r in runs]
    forward, mc, _, _, loss_name = pieces[0]
    n = len(pieces[0][3])
    for j, (r, (_, mc_j, _, lab_j, loss_j)) in enumerate(zip(runs, pieces)):
        if len(r.epochs) == 0:
            raise AnalysisError(f"{r.path}: the run has no checkpoints to estimate the LLC at")
        if dataclasses.replace(mc_j, init_seed=mc.init_seed) != mc or loss_j != loss_name or len(lab_j) != n:
            raise AnalysisError(f"runs[{j}]: {r.path} differs from runs[0] in its model config, training loss or "
                                f"number of training pairs ({len(lab_j)} vs {n}); one stack needs them equal")
    tokens = torch.cat([p[2] for p in pieces])
    labels = torch.cat([p[3] for p in pieces])
    base = model_loss_fn(forward, mc, tokens, labels, loss_name)
    if epochs is not None and (len(epochs) != len(runs) or any(np.ndim(e) != 1 for e in epochs)):
        raise AnalysisError(f"epochs: one list of checkpoints per run ({len(runs)} lists), got {list(epochs)[:3]!r}")
    eps = [np.asarray(r.epochs if epochs is None else [r.resolve_epoch(int(e)) for e in epochs[j]], dtype=np.int64)
           for j, r in enumerate(runs)]
    if order is None:
        order = sorted(((j, int(e)) for j in range(len(runs)) for e in eps[j]), key=lambda x: (x[1], x[0]))
    else:
        allowed = {(j, int(e)) for j in range(len(runs)) for e in eps[j]}
        bad = [j for j, _ in order if not 0 <= int(j) < len(runs)]
        if bad:
            raise AnalysisError(f"order: run indices must lie in 0..{len(runs) - 1}, got {bad[:3]}")
        order = [(int(j), int(runs[int(j)].resolve_epoch(int(e)))) for j, e in order]
        missing = [x for x in order if x not in allowed]
        if missing:
            raise AnalysisError(f"order: {missing[:3]} are not among the selected checkpoints")
    if not order:
        raise AnalysisError("epochs: the selection is empty")
    if chunk is None:
        chunk = _default_chunk(mc, config, n)
    C = config.chains
    frames, parts = [], []
    for i in range(0, len(order), chunk):
        part = order[i: i + chunk]
        stacks = {}
        for j, e in part:
            for name, v in runs[j].stacks(epochs=[e]).items():
                stacks.setdefault(name, []).append(v)
        P = {name: torch.cat(v).to(dev) for name, v in stacks.items()}
        off_k = torch.tensor([j * n for j, _ in part], device=dev)
        off_r = off_k.repeat_interleave(C)

        def loss(Pr, idx, off_k=off_k, off_r=off_r):  # idx [K, rows] (L_n(w*)) or [K C, m] (the chains)
            return base(Pr, idx + (off_k if idx.shape[0] == off_k.shape[0] else off_r)[:, None])

        r = sample_llc(P, loss, n, config, device=dev)
        parts.append(([e for _, e in part], r))
        df = pd.DataFrame({"run": np.array([j for j, _ in part], dtype=np.int64),
                           "epoch": np.array([e for _, e in part], dtype=np.int64), **r.columns()})
        frames.append(df)
        if on_chunk is not None:
            on_chunk(df)
    out = pd.concat(frames, ignore_index=True)
    merged = _merge(parts)
    out.attrs["llc"] = {**asdict(config), "nbeta_used": merged.nbeta, "seconds": float(merged.seconds)}
    if warn:
        _warn(merged, out["epoch"].tolist(), out["run"].tolist())
    return out


def _merge(parts: Sequence[tuple[Sequence[int], LLCResult]]) -> LLCResult:
    rs = [r for _, r in parts]
    return LLCResult(np.concatenate([r.llc for r in rs]), np.concatenate([r.init_loss for r in rs]),
                     np.concatenate([r.trace for r in rs]), np.concatenate([r.acceptance for r in rs]),
                     np.concatenate([r.rhat for r in rs]), rs[0].nbeta, rs[0].config, rs[0].n_params,
                     sum(r.seconds for r in rs), [f for r in rs for f in r.flags])


def calibrate(run, epsilons: Sequence[float], nbetas: Sequence[float], base: SGLDConfig = SGLDConfig(), *,
              epoch: int = -1, device: str | torch.device = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """An ε × nβ grid at one checkpoint (devinterp's ``EpsilonBetaAnalyzer``): pick values where the
    estimate is flat in ε, the chains agree and accept.

    Every (ε, nβ) pair is one :func:`sample_llc` (the grid's cells differ in step, so they are not one
    stack); they share the seed, hence the batches and noise.

    Returns:
        ``(grid, traces)``: one row per (ε, nβ) with the estimate and its diagnostics; and the loss traces,
        long format ``epsilon, nbeta, chain, draw, loss``.
    """
    from ..store.run import load_run

    if not hasattr(run, "stacks"):
        run = load_run(run)
    if len(run.epochs) == 0:
        raise AnalysisError(f"{run.path}: the run has no checkpoints to estimate the LLC at")
    e = run.resolve_epoch(int(epoch))
    forward, mc, tokens, labels, loss_name = _run_pieces(run, torch.device(device))
    loss = model_loss_fn(forward, mc, tokens, labels, loss_name)
    P = {k: v.to(device) for k, v in run.stacks(epochs=[e]).items()}
    rows, traces = [], []
    import dataclasses

    for eps_ in epsilons:
        for nb in nbetas:
            cfg = dataclasses.replace(base, epsilon=float(eps_), nbeta=float(nb))
            r = sample_llc(P, loss, len(labels), cfg, device=device)
            cols = r.columns()
            rows.append({"epsilon": float(eps_), "nbeta": float(nb), "epoch": e,
                         **{k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in cols.items()}})
            C, D = r.trace.shape[1:]
            traces.append(pd.DataFrame({"epsilon": float(eps_), "nbeta": float(nb),
                                        "chain": np.repeat(np.arange(C), D), "draw": np.tile(np.arange(D), C),
                                        "loss": r.trace[0].reshape(-1)}))
    return pd.DataFrame(rows), pd.concat(traces, ignore_index=True)
