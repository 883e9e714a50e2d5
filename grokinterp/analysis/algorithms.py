"""Which algorithm a model implements for modular addition: clock or pizza (Zhong et al. 2023).

Zhong, Liu, Tegmark & Andreas ("The clock and the pizza", NeurIPS 2023) show that transformers on
``a + b mod p`` learn one of two algorithms on the same circular embeddings ``E_t ≈ (cos wt, sin wt)``:

* the **clock** (Nanda et al.'s): rotate by ``a`` then by ``b`` — the logits
  ``Q_abc ∝ cos(w(a + b − c))`` need *products* of ``E_a`` and ``E_b`` (attention makes them);
* the **pizza**: average the embeddings first, ``E_a + E_b = 2cos(w(a−b)/2)(cos, sin)(w(a+b)/2)``, then
  a non-linearity — ``Q_abc ∝ |cos(w(a−b)/2)| cos(w(a+b−c))``, which depends on ``E_a + E_b`` only.

Their two signatures, computed here as in their released evaluation (``eval-main.ipynb``):

* :func:`gradient_symmetricity` — mean cosine similarity between ``∂Q_abc/∂E_a`` and ``∂Q_abc/∂E_b``
  (gradients with respect to the token embeddings at positions 0 and 1, before the positional
  embedding) over random triples ``(a, b, c)``. A model of ``E_a + E_b`` has identical gradients
  (≈ 1); a clock's are rotated by ``w(a − b)`` (≈ 0 for an ideal one; 0.46–0.6 in their trained runs);
* :func:`distance_irrelevance` — how little the correct logit ``Q_{ab,a+b}`` depends on the distance
  ``d = a − b``: ``mean_d std_{pairs with a−b=d}(Q) / std_{all pairs}(Q)``. A pizza's correct logit is
  a function of ``d`` (small values); a clock's does not depend on ``d`` (near 1; 0.86 in their runs).

and the circularity of the embedding, which both share:

* :func:`embedding_circles` — for each key frequency ``k``, the part of ``W_E[:p]`` along the Fourier
  components ``cos k`` and ``sin k`` of the token axis (a rank-2 matrix; "PCA of W_E's cos/sin
  components"): its principal plane, the tokens' coordinates in it (the circle of the figure), its
  **circularity** ``σ₂/σ₁`` (1 = a circle, 0 = a line) and its share of the embedding's variance;
* :func:`zhong_circularity` — their measure: for each of the first four principal components of
  ``W_E[:p]``, the share of its variance in its best single frequency, averaged.

:func:`identify_algorithm` applies a stated rule (see there) and returns an :class:`AlgorithmReport`,
from a run (any checkpoint) or a model. Where the architecture forces a signature the label is
``"not identifiable"`` (:func:`forced_by_architecture`): with attention coefficient 0 our model, which
reads out at ``=``, has gradient symmetricity exactly 1 whatever its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError
from ..model.grid import grid_outputs
from .fourier import fourier_basis
from .inputs import check_freq_list, is_run, resolve_model, task_label_grid

__all__ = ["undefined_for", "UNDEFINED", "gradient_symmetricity", "distance_irrelevance", "embedding_circles", "EmbeddingCircle",
           "zhong_circularity", "identify_algorithm", "AlgorithmReport", "algorithm_over_training",
           "GS_PIZZA", "DI_CLOCK", "CIRCULAR_MIN", "ACCURACY_MIN", "NOT_IDENTIFIABLE", "forced_by_architecture",
           "untrained_symmetricity"]

#: Gradient symmetricity at or above which a circular, accurate model is labelled pizza.
GS_PIZZA = 0.98
#: Distance irrelevance at or above which a model with asymmetric gradients is labelled clock.
DI_CLOCK = 0.6
#: Zhong et al.'s circularity below which the embedding is not circular (their released table's filter).
CIRCULAR_MIN = 0.8
#: Accuracy over all pairs below which the model does not implement the task (no label).
ACCURACY_MIN = 0.95
#: The label of a model whose architecture forces a signature (:func:`forced_by_architecture`).
NOT_IDENTIFIABLE = "not identifiable"
#: The label of a model the question is not defined for (no attention: :func:`undefined_for`).
UNDEFINED = "undefined"


def forced_by_architecture(cfg: ModelConfig | RunConfig) -> str | None:
    """Why the architecture alone fixes a clock-vs-pizza signature, or ``None`` when it does not.

    Our model reads out at the ``=`` token (inputs ``[a, b, =]``, the final position). With attention
    coefficient 0 every allowed key is weighted 1, so the one attention layer gives the ``=`` position
    ``Σ_t (E_t + P_t) W_V W_O``: ``a`` and ``b`` reach the readout only through ``(E_a + E_b) W_V``, and
    ``∂Q/∂E_a = ∂Q/∂E_b`` for every triple — gradient symmetricity is exactly 1 for *any* such model,
    trained or untrained, so it says nothing about the algorithm. (With two or more layers the positions
    of ``a`` and ``b`` are transformed differently before the last layer reads them; that is not forced.)
    Zhong et al.'s model has no ``=`` token and reads out at ``b``'s position, where the question is open:
    ``model.input_layout = a_b`` is their layout, and there nothing is forced (the readout position adds
    its own ``E_b`` to the attention's sum; untrained models sit far below :data:`GS_PIZZA`).
    """
    mcfg = cfg.model if isinstance(cfg, RunConfig) else cfg
    if mcfg.attn_coeff == 0.0 and mcfg.n_layers == 1 and getattr(mcfg, "input_layout", "a_b_eq") == "a_b_eq":
        return ("attention coefficient 0 with the readout at '=': the final position sees a and b only "
                "through (E_a + E_b)·W_V, so gradient symmetricity is 1 for any such model, trained or not (the "
                "architecture forces it); telling clock from pizza needs Zhong et al.'s layout (tokens [a, b], "
                "read out at b)")
    return None


def _config_of(model_or_run, cfg) -> Any:
    """The model config of a run, a model or ``cfg`` (``None``: a parameter dict without one)."""
    if cfg is not None:
        return cfg.model if isinstance(cfg, RunConfig) else cfg
    if is_run(model_or_run):
        return model_or_run.config.model
    return getattr(model_or_run, "cfg", None)


def undefined_for(cfg) -> str | None:
    """Why clock vs pizza is undefined for a model (``None``: defined). Zhong et al.'s question is which way
    attention combines the two operands' embeddings; a model without attention (the ``mlp`` family) has no
    such choice."""
    family = getattr(cfg, "family", "transformer")
    if family != "transformer":
        return (f"undefined for the {family} family: clock vs pizza (Zhong et al. 2023) asks how attention combines "
                f"the operands' embeddings, and this model has no attention")
    return None


def untrained_symmetricity(cfg: ModelConfig | RunConfig, *, n_samples: int | None = 1000, seed: int = 42) -> float:
    """The control of :func:`gradient_symmetricity`: its value for the untrained model of ``cfg``
    (initialised as training would, from ``cfg``'s init seed).

    A pizza label needs the trained model to be symmetric *and* an untrained one not to be: in our layout
    (read out at ``=``) untrained models sit above :data:`GS_PIZZA` at every attention coefficient
    (≈ 0.998 at 1, ≈ 0.99999 at 0.1, exactly 1 at 0), so there a high value is not evidence of a pizza.
    """
    from ..model.hooked import HookedGrokTransformer

    mcfg = cfg.model if isinstance(cfg, RunConfig) else cfg
    return gradient_symmetricity(HookedGrokTransformer(mcfg).eval(), cfg=mcfg, n_samples=n_samples, seed=seed)


def _model(model_or_run, epoch: int, cfg: ModelConfig | RunConfig | None):
    """A :class:`~grokinterp.model.hooked.HookedGrokTransformer` and its config."""
    from ..model.hooked import HookedGrokTransformer

    if is_run(model_or_run):
        return model_or_run.model(epoch), model_or_run.config.model
    if isinstance(model_or_run, HookedGrokTransformer):
        return model_or_run, model_or_run.cfg
    params, mcfg = resolve_model(model_or_run, cfg)
    if "embed.W_E" in params and params["embed.W_E"].ndim != 2:
        raise AnalysisError("identify one checkpoint at a time: got stacked parameters [ckpt, ...]")
    model = HookedGrokTransformer(mcfg, init=False)
    model.load_params({k: v.detach().float().cpu() for k, v in params.items()})
    return model.eval(), mcfg


def gradient_symmetricity(model_or_run, *, epoch: int = -1, cfg: ModelConfig | RunConfig | None = None,
                          n_samples: int | None = 1000, seed: int = 42) -> float:
    """Mean cosine similarity of the gradients of ``Q_abc`` with respect to ``E_a`` and ``E_b``.

    Args:
        model_or_run: a model, a parameter dict (pass ``cfg``: the attention coefficient and the
            activation are not readable off the shapes) or a ``Run``.
        epoch: the run's checkpoint (``-1``: the last).
        cfg: the model config for a parameter dict.
        n_samples: random triples ``(a, b, c)`` (uniform over ``p³``, seeded); ``None``: all ``p³``.
            Zhong et al. use 100.
        seed: seed of the triples.

    Returns:
        The mean over triples of ``cos(∂Q_abc/∂x_0, ∂Q_abc/∂x_1)``, ``x_j`` the token embedding
        ``W_E[t_j]`` fed at position ``j`` (the ``hook_embed`` output, before the positional
        embedding) and ``Q_abc`` the final-position logit of output ``c``.
    """
    model, mcfg = _model(model_or_run, epoch, cfg)
    p = mcfg.p
    if n_samples is None:
        idx = torch.arange(p ** 3)
    else:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, p ** 3, (int(n_samples),), generator=gen)
    a, b, c = idx // (p * p), (idx // p) % p, idx % p
    sims = []
    for sl in torch.split(torch.arange(len(idx)), 4096):
        tokens = torch.stack([a[sl], b[sl], torch.full((len(sl),), mcfg.d_vocab - 1)], dim=1)[:, : mcfg.n_ctx]
        dev = next(model.parameters()).device
        tokens = tokens.to(dev)
        emb = model.embed.W_E.detach()[tokens].clone().requires_grad_(True)
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda value, hook, emb=emb: emb)])
        q = logits[torch.arange(len(sl), device=dev), -1, c[sl].to(dev)]
        (grad,) = torch.autograd.grad(q.sum(), emb)
        g0, g1 = grad[:, 0].double(), grad[:, 1].double()
        sims.append((g0 * g1).sum(-1) / (g0.norm(dim=-1) * g1.norm(dim=-1)).clamp_min(1e-300))
    return float(torch.cat(sims).mean())


def _grid_logits(model, mcfg: ModelConfig) -> Tensor:
    params = {k: v.detach().float().cpu() for k, v in model.named_parameters()}
    with torch.no_grad():
        return grid_outputs(params, mcfg).logits  # [a, b, c]


def distance_irrelevance(logits: Tensor, labels: Tensor | None = None) -> float:
    """How little the correct logit depends on the distance ``a − b`` (Zhong et al.'s definition).

    Args:
        logits: grid logits ``[a, b, c]`` (final position, every input).
        labels: ``[p²]`` label of each grid input, ``-1`` outside the task (default ``a + b mod p``).

    Returns:
        ``mean_d std_{(a,b): a−b≡d}(Q[a, b]) / std_{(a,b)}(Q[a, b])`` with ``Q[a, b]`` the logit of
        the correct output, standard deviations with ``ddof = 0`` over the task's pairs (their
        ``np.std(oo, axis=0)`` over the ``(a+b, a−b)`` table, averaged, divided by ``np.std`` of all).
    """
    p = logits.shape[0]
    if logits.ndim != 3 or logits.shape[1] != p:
        raise AnalysisError(f"logits: expected one model's grid [a, b, vocab], got shape {list(logits.shape)}")
    labels = task_label_grid(p) if labels is None else torch.as_tensor(labels).reshape(-1)
    valid = torch.nonzero(labels >= 0)[:, 0]
    q = logits.reshape(p * p, -1)[valid, labels[valid]].double()
    a, b = valid // p, valid % p
    d = (a - b) % p
    total = q.std(unbiased=False)
    per_d = [q[d == k].std(unbiased=False) for k in torch.unique(d)]
    return float(torch.stack(per_d).mean() / total.clamp_min(1e-300))


@dataclass(frozen=True)
class EmbeddingCircle:
    """One key frequency's plane of the embedding.

    Attributes:
        freq: the frequency ``k``.
        circularity: ``σ₂/σ₁`` of the frequency-``k`` part of ``W_E[:p]`` (1 = circle, 0 = line).
        share: its share of the (centred) embedding's squared norm.
        coords: ``[p, 2]`` each residue's embedding (centred) projected on the plane's two
            principal directions: the points of the circle.
        singular_values: ``(σ₁, σ₂)``.
    """

    freq: int
    circularity: float
    share: float
    coords: np.ndarray
    singular_values: tuple[float, float]


def embedding_circles(W_E: Tensor, freqs: Sequence[int], p: int | None = None) -> list[EmbeddingCircle]:
    """The circle of each frequency in the embedding (see :class:`EmbeddingCircle`).

    Args:
        W_E: ``[d_vocab, d_model]`` (one model); rows ``0..p-1`` are the residues.
        freqs: frequencies in ``1..⌊p/2⌋`` (typically the key frequencies).
        p: the modulus (default ``d_vocab − 1``).

    Notes:
        With ``B_k = [cos k; sin k]`` the two Fourier basis rows of frequency ``k`` (unit norm,
        :class:`~grokinterp.analysis.fourier.FourierBasis`) and ``A_k = B_k W_E[:p]`` (``[2, d_model]``),
        the frequency-``k`` part of the embedding is ``B_kᵀ A_k``, rank ≤ 2. With the SVD
        ``A_k = U diag(σ₁, σ₂) Vᵀ``: circularity ``σ₂/σ₁``; share ``(σ₁² + σ₂²) / ‖W_E[:p] − mean‖²``;
        coordinates ``(W_E[:p] − mean) V`` (the full embedding seen in that plane).
    """
    W = W_E.detach().double().cpu()
    p = W.shape[0] - 1 if p is None else int(p)
    freqs = check_freq_list(p, freqs)
    E = W[:p] - W[:p].mean(0, keepdim=True)
    total = float(E.pow(2).sum())
    B = fourier_basis(p)
    out = []
    for k in freqs:
        rows = [B.index(f"cos {k}")] + ([B.index(f"sin {k}")] if f"sin {k}" in B.labels else [])
        A = B.matrix64[rows] @ E  # [2, d_model]
        _, S, Vh = torch.linalg.svd(A, full_matrices=False)
        s1 = float(S[0])
        s2 = float(S[1]) if len(S) > 1 else 0.0
        V = Vh[:2].T if Vh.shape[0] >= 2 else torch.cat([Vh.T, torch.zeros_like(Vh.T)], dim=1)
        out.append(EmbeddingCircle(k, s2 / s1 if s1 > 0 else 0.0, (s1 ** 2 + s2 ** 2) / total if total > 0 else 0.0,
                                   (E @ V).numpy(), (s1, s2)))
    return out


def zhong_circularity(W_E: Tensor, p: int | None = None, n_components: int = 4) -> float:
    """Zhong et al.'s circularity: for the first ``n_components`` principal components of ``W_E[:p]``,
    the share of each component's variance in its best single frequency, averaged.

    Components with (numerically) no variance are skipped (a model whose embedding spans fewer than
    four directions). Their code normalises each component and takes ``2|Σ_t v_t e^{2πi·kt/p}|²``
    at the best ``k``, which is this share for odd ``p``.
    """
    W = W_E.detach().double().cpu()
    p = W.shape[0] - 1 if p is None else int(p)
    E = W[:p] - W[:p].mean(0, keepdim=True)
    U, S, _ = torch.linalg.svd(E, full_matrices=False)
    B = fourier_basis(p)
    keep = [i for i in range(min(n_components, len(S))) if S[i] > 1e-6 * S[0]]
    shares = []
    for i in keep:
        score = U[:, i] * S[i]
        per_freq = B.fold(B.to_fourier(score) ** 2)  # [n_freq + 1]
        shares.append(float(per_freq[1:].max() / per_freq.sum()))
    return float(np.mean(shares)) if shares else 0.0


@dataclass(frozen=True)
class AlgorithmReport:
    """What :func:`identify_algorithm` found.

    Attributes:
        label: ``"clock"``, ``"pizza"``, ``"neither"`` or ``"not identifiable"`` (the architecture
            forces a signature: :func:`forced_by_architecture`), or ``"undefined"`` (a model without attention:
            :func:`undefined_for`; the signatures are then NaN).
        reason: why, in words.
        rule: the rule in words.
        gradient_symmetricity, distance_irrelevance: Zhong et al.'s two signatures.
        circularity: ``{key frequency: σ₂/σ₁}`` of each key frequency's embedding plane.
        circularity_zhong: their PCA circularity.
        accuracy: accuracy of the model over all pairs.
        key_freqs: the key frequencies used.
        circles: the :class:`EmbeddingCircle` of each key frequency (for the figure).
        epoch: the checkpoint (``None`` for a model).
    """

    label: str
    reason: str
    rule: str
    gradient_symmetricity: float
    distance_irrelevance: float
    circularity: dict[int, float]
    circularity_zhong: float
    accuracy: float
    key_freqs: tuple[int, ...]
    circles: list[EmbeddingCircle] = field(repr=False, default_factory=list)
    epoch: int | None = None

    def summary(self) -> dict[str, Any]:
        """The report as JSON-ready values (no coordinates)."""
        def f(x: float) -> float | None:  # NaN (undefined) as None
            return None if x != x else x

        return {"label": self.label, "reason": self.reason, "rule": self.rule,
                "gradient_symmetricity": f(self.gradient_symmetricity),
                "distance_irrelevance": f(self.distance_irrelevance),
                "circularity": {str(k): v for k, v in self.circularity.items()},
                "circularity_zhong": f(self.circularity_zhong), "accuracy": f(self.accuracy),
                "key_freqs": list(self.key_freqs), "epoch": self.epoch}


RULE = (f"not identifiable when the architecture forces a signature (attention coefficient 0 read out at '=': "
        f"gradient symmetricity is 1 for any such model); otherwise neither unless the model classifies ≥ {ACCURACY_MIN:.0%} of all pairs and its embedding is circular "
        f"(Zhong et al.'s circularity ≥ {CIRCULAR_MIN}); then pizza if gradient symmetricity ≥ {GS_PIZZA} while an "
        f"untrained model of the same config stays below it (else not identifiable: the control), "
        f"clock if gradient symmetricity < {GS_PIZZA} and distance irrelevance ≥ {DI_CLOCK}, otherwise neither "
        f"(asymmetric gradients with distance-dependent logits: a mixture)")


def identify_algorithm(model_or_run, *, epoch: int = -1, key_freqs: Sequence[int] | None = None,
                       cfg: ModelConfig | RunConfig | None = None, n_samples: int | None = 1000,
                       seed: int = 42) -> AlgorithmReport:
    """Clock, pizza or neither: Zhong et al.'s signatures and a stated rule.

    Args:
        model_or_run: a ``Run`` (checkpoint ``epoch``), a model, or a parameter dict with ``cfg``.
        epoch: the run's checkpoint (``-1`` = last).
        key_freqs: the frequencies whose circles are measured (default: the ``W_L`` rule of
            :func:`~grokinterp.analysis.keyfreqs.key_frequencies` on this checkpoint).
        cfg: the model config for a parameter dict.
        n_samples, seed: triples for :func:`gradient_symmetricity`.

    Returns:
        :class:`AlgorithmReport`.

    Notes:
        The rule (:data:`RULE`): a model whose architecture forces a signature is ``"not identifiable"``
        (:func:`forced_by_architecture`: one layer with attention coefficient 0, read out at ``=``, has
        gradient symmetricity exactly 1 whatever its weights), trained or not; its signatures are still
        measured and reported. Otherwise a model that does not solve the task (accuracy over all pairs
        < :data:`ACCURACY_MIN`) or whose embedding is not circular (Zhong et al.'s circularity
        < :data:`CIRCULAR_MIN`, the filter of their released table) is ``neither``. Otherwise it is
        ``pizza`` when the gradient symmetricity is ≥ :data:`GS_PIZZA` — the model reads ``E_a``
        and ``E_b`` only through their sum — *and* the untrained model of the same config is below it
        (the control, :func:`untrained_symmetricity`; where it is not, the label is again ``"not
        identifiable"``: in our ``=`` layout untrained models sit at ≈ 0.998 even with full attention), and ``clock`` when it is below and the distance
        irrelevance is ≥ :data:`DI_CLOCK`; anything else is ``neither`` (a mixture). Distance
        irrelevance is not required to be low for a pizza: pizzas that come with their
        "accompanying pizza" cancel the distance dependence (Zhong et al. §5), and half of the
        constant-attention runs of their released table (``result/1l_fixedwidth.csv``, circular
        and ≥ 99 % accurate) have it above 0.55. On that table the rule labels 85 % of the runs with
        attention coefficient < 0.1 pizza and 95 % of those with coefficient ≥ 0.9 clock (the rest
        pizza ↔ clock, or neither).
    """
    from .keyfreqs import key_frequencies

    why = undefined_for(_config_of(model_or_run, cfg))
    if why is not None:
        nan = float("nan")
        run_epoch = int(model_or_run.resolve_epoch(epoch)) if is_run(model_or_run) else None
        return AlgorithmReport(UNDEFINED, why, RULE, nan, nan, {}, nan, nan, (), [], run_epoch)
    model, mcfg = _model(model_or_run, epoch, cfg)
    run_epoch = int(model_or_run.resolve_epoch(epoch)) if is_run(model_or_run) else None
    op = model_or_run.config.task.operation if is_run(model_or_run) else "add"
    labels = task_label_grid(mcfg.p, op)
    logits = _grid_logits(model, mcfg)
    valid = torch.nonzero(labels >= 0)[:, 0]
    acc = float((logits.reshape(mcfg.p ** 2, -1)[valid].argmax(-1) == labels[valid]).double().mean())
    keys = tuple(check_freq_list(mcfg.p, key_freqs)) if key_freqs is not None else \
        tuple(key_frequencies(model, method="W_L").freqs)
    W_E = model.embed.W_E.detach()
    circles = embedding_circles(W_E, keys, mcfg.p) if keys else []
    gs = gradient_symmetricity(model, cfg=mcfg, n_samples=n_samples, seed=seed)
    di = distance_irrelevance(logits, labels)
    zc = zhong_circularity(W_E, mcfg.p)
    forced = forced_by_architecture(mcfg)
    if forced is not None:
        label, reason = NOT_IDENTIFIABLE, forced + f" (measured: gradient symmetricity {gs:.6f})"
    elif acc < ACCURACY_MIN:
        label, reason = "neither", f"classifies only {acc:.1%} of all pairs (< {ACCURACY_MIN:.0%})"
    elif zc < CIRCULAR_MIN:
        label, reason = "neither", f"the embedding is not circular (circularity {zc:.2f} < {CIRCULAR_MIN})"
    elif gs >= GS_PIZZA and (gs0 := untrained_symmetricity(mcfg, n_samples=n_samples, seed=seed)) >= GS_PIZZA:
        label, reason = NOT_IDENTIFIABLE, (
            f"gradient symmetricity {gs:.3f} ≥ {GS_PIZZA}, but an untrained model of this architecture (its "
            f"initialisation, attention coefficient {mcfg.attn_coeff:g}) already has {gs0:.4f}: with the readout at "
            f"'=' the signature does not tell a pizza from the architecture; only a clock (symmetricity below "
            f"{GS_PIZZA}) is evidence here")
    elif gs >= GS_PIZZA:
        label, reason = "pizza", f"gradient symmetricity {gs:.3f} ≥ {GS_PIZZA}: reads E_a + E_b"
    elif di >= DI_CLOCK:
        label, reason = "clock", (f"gradient symmetricity {gs:.3f} < {GS_PIZZA} and distance irrelevance "
                                  f"{di:.2f} ≥ {DI_CLOCK}")
    else:
        label, reason = "neither", (f"asymmetric gradients ({gs:.3f}) but distance-dependent correct logits "
                                    f"(distance irrelevance {di:.2f} < {DI_CLOCK}): a mixture")
    return AlgorithmReport(label, reason, RULE, gs, di, {c.freq: c.circularity for c in circles}, zc, acc, keys,
                           circles, run_epoch)


def algorithm_over_training(run, epochs: Sequence[int] | None = None, *, max_checkpoints: int = 12,
                            n_samples: int = 300) -> pd.DataFrame:
    """:func:`identify_algorithm` at several checkpoints of a run, one row each.

    Args:
        run: a ``Run``.
        epochs: the checkpoints (default: ``max_checkpoints`` evenly spread over the run's).
        max_checkpoints: how many, by default.
        n_samples: triples per gradient symmetricity.

    Returns:
        Columns ``epoch, label, gradient_symmetricity, distance_irrelevance, circularity_zhong,
        circularity_mean, accuracy, key_freqs``.
    """
    if epochs is None:
        eps = run.epochs
        idx = np.unique(np.round(np.linspace(0, len(eps) - 1, min(max_checkpoints, len(eps)))).astype(int))
        epochs = [int(eps[i]) for i in idx]
    rows = []
    for e in epochs:
        r = identify_algorithm(run, epoch=int(e), n_samples=n_samples)
        rows.append({"epoch": int(run.resolve_epoch(e)), "label": r.label, "gradient_symmetricity": r.gradient_symmetricity,
                     "distance_irrelevance": r.distance_irrelevance, "circularity_zhong": r.circularity_zhong,
                     "circularity_mean": float(np.mean(list(r.circularity.values()))) if r.circularity else float("nan"),
                     "accuracy": r.accuracy, "key_freqs": list(r.key_freqs)})
    return pd.DataFrame(rows)
