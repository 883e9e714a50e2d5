"""Key frequencies (and key irreps): which frequencies / irreps a trained model uses, by a named rule.

Rules for ``a + b`` mod p are registered in :data:`KEY_FREQ_RULES` (``method=`` of :func:`key_frequencies`):

* ``W_L`` (default) — the share of the non-constant squared Fourier norm of the neuron → logit
  map ``W_L = W_out W_U``;
* ``W_E`` — the same rule on the embedding;
* ``neurons`` — the dominant frequencies of the neurons well explained by one frequency.

Every other task with a group structure (``a − b``, ``a·b`` and ``a/b`` mod a prime in discrete-log
coordinates, finite groups) has **key irreps**, chosen by the rules of :data:`KEY_IRREP_RULES`
(:func:`key_irreps`): the same three in the group's coordinates and real irreps, plus ``logits``
(Chughtai et al.'s logit attribution). For a cyclic group an irrep index is a frequency of that
group (of ``Z_{p−1}`` for ``mul``). A task without a group structure has no key terms.

A rule returns a :class:`KeyFrequencies` carrying the rule in words, so reports can say how the
frequencies were chosen. :func:`resolve_key_frequencies` is how run-level analyses fix them once
(by default at the first checkpoint at or after test accuracy reached 99 %: :func:`key_checkpoint`) and hold
them across checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError, RunError
from ..model.grid import grid_rows
from ..tasks import CyclicSum
from .fourier import embed_fourier_norms, neuron_logit_fourier_norms, neuron_logit_matrix
from .groups import (
    TaskStructure,
    embed_irrep_norms,
    model_character_fit,
    neuron_logit_irrep_norms,
    task_structure,
)
from .inputs import as_params, check_freq_list, resolve_model
from .neurons import DEFAULT_THRESHOLD, neuron_fourier

__all__ = ["KeyFrequencies", "key_frequencies", "neuron_key_frequencies", "KEY_FREQ_RULES",
           "register_key_freq_rule", "ResolvedKeys", "resolve_key_frequencies", "resolve_model_keys", "key_irreps", "KEY_IRREP_RULES",
           "register_key_irrep_rule", "structure_of", "SHARE_CAP", "default_key_method", "key_checkpoint"]


@dataclass(frozen=True)
class KeyFrequencies:
    """The key frequencies of a model and how they were chosen.

    Attributes:
        freqs: the key frequencies (key irreps: irrep indices), sorted.
        method: the rule used (``W_L``, ``W_E``, ``neurons``, ``logits``).
        scores: per-frequency (per-irrep) score the rule used (index k = frequency / irrep k), numpy.
        rule: the rule in words, for reports.
        names: the keys' names (irrep names; frequencies as numbers), empty for ``a + b`` mod p.
    """

    freqs: tuple[int, ...]
    method: str
    scores: np.ndarray
    rule: str
    names: tuple[str, ...] = ()

    def __iter__(self):
        return iter(self.freqs)

    def __len__(self) -> int:
        return len(self.freqs)


def key_frequencies(model_or_params, method: str | None = None, min_fraction: float = 0.05,
                    p: int | None = None, cfg: ModelConfig | RunConfig | None = None, *,
                    task=None) -> KeyFrequencies:
    """The frequencies a trained model uses (for a task with another group structure: its key irreps).

    Args:
        model_or_params: a model or a parameter dict of **one** checkpoint (stacked
            ``[ckpt, ...]`` parameters are refused: choose a checkpoint first).
        method (default ``W_L``; for a task with another structure :func:`default_key_method`):
            ``"W_L"``: frequencies whose share of the non-constant squared Fourier
            norm of ``W_L = W_out W_U`` (the neuron → logit map; each key frequency holds two
            directions of it) is at least ``max(min_fraction, 2 / n_freq)``.
            ``"W_E"``: the same rule on the embedding ``W_E``.
            ``"neurons"``: frequencies that are the dominant frequency of at least
            ``min_fraction`` of the MLP neurons well explained (FVE > 0.85) by one frequency
            (see :func:`neuron_key_frequencies`).
        min_fraction: the threshold of the rule, in ``(0, 1]``.
        p: modulus (default from the parameter shapes).
        cfg: the model config (``ModelConfig`` or ``RunConfig``), used by ``"neurons"``: a
            parameter dict of a GELU model needs it, since the config read off the shapes
            assumes ReLU (see :func:`grokinterp.analysis.inputs.resolve_model`).
        task: the model's task (a :class:`~grokinterp.tasks.Task` or its
            :class:`~grokinterp.analysis.groups.TaskStructure`); default ``a + b`` mod p. A task whose
            structure is not ``a + b`` goes to :func:`key_irreps`; one without a group structure is refused.

    Returns:
        :class:`KeyFrequencies`; for ``W_L`` / ``W_E``, ``scores[k]`` is frequency ``k``'s share
        of the non-constant squared norm (``scores[0] = 0``).

    Notes:
        Why ``2 / n_freq``: a flat spectrum (an untrained model) gives every one of the
        ``n_freq = ⌊p/2⌋`` frequencies the share ``1 / n_freq``, which a fixed threshold such as
        5 % does not exceed only when ``p > 40``. Requiring twice the uniform share keeps a flat
        spectrum free of key frequencies for every ``p``; a grokked model concentrates most of
        the norm on a few frequencies and passes both bounds. The bound ``2 / n_freq`` is capped
        at 1 (for ``p = 3, 4`` the single frequency holds the whole non-constant norm).

    Raises:
        AnalysisError: unknown method, ``min_fraction`` outside ``(0, 1]``, stacked parameters.
    """
    if task is not None:
        ts = structure_of(task)
        if ts is None:
            raise AnalysisError(f"task {getattr(task, 'name', task)!r} declares no group structure: it has no key "
                                f"frequencies")
        if not isinstance(ts.structure, CyclicSum):
            return key_irreps(model_or_params, ts, method, min_fraction, cfg)
    method = "W_L" if method is None else method
    if p is None:  # a model that carries its config: its p (an MLP's W_E has no '=' row to drop)
        c = cfg.model if isinstance(cfg, RunConfig) else cfg if cfg is not None else getattr(model_or_params, "cfg", None)
        p = int(c.p) if hasattr(c, "p") else None
    if method not in KEY_FREQ_RULES:
        raise AnalysisError(f"method: unknown key-frequency method {method!r}; use "
                            f"{', '.join(repr(m) for m in KEY_FREQ_RULES)}")
    _check_fraction(min_fraction)
    return KEY_FREQ_RULES[method](model_or_params, float(min_fraction), p, cfg)


def _check_fraction(min_fraction) -> None:
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(min_fraction) <= 1.0:
        raise AnalysisError(f"min_fraction: must be a number in (0, 1], got {min_fraction!r}")


def structure_of(task) -> TaskStructure | None:
    """The :class:`~grokinterp.analysis.groups.TaskStructure` of a task, a run, or a structure itself."""
    if isinstance(task, TaskStructure):
        return task
    if hasattr(task, "split_pairs") and hasattr(task, "config"):  # a Run
        task = task.task
    if not hasattr(task, "structure"):
        raise AnalysisError(f"task: expected a Task, a Run or a TaskStructure, got {type(task).__name__}")
    return task_structure(task)


def _norm_share_rule(method: str):
    norms_of = neuron_logit_fourier_norms if method == "W_L" else embed_fourier_norms

    def rule(model_or_params, min_fraction: float, p: int | None, cfg) -> KeyFrequencies:
        return _norm_share(norms_of(model_or_params, p), method, min_fraction)

    return rule


def _norm_share(norms: Tensor, method: str, min_fraction: float) -> KeyFrequencies:
    if norms.ndim != 1:
        raise AnalysisError(f"key_frequencies takes one checkpoint, but the Fourier norms of {method} have "
                            f"shape {list(norms.shape)} (stacked parameters [ckpt, ...]?); pick a checkpoint")
    n_freq = norms.shape[0] - 1
    energy = norms[1:].detach().double().cpu() ** 2
    frac = (energy / energy.sum().clamp_min(1e-300)).numpy()
    scores = np.concatenate([[0.0], frac])
    uniform_bound = min(2.0 / n_freq, 1.0)
    threshold = max(float(min_fraction), uniform_bound)
    freqs = tuple(int(k) for k in np.flatnonzero(scores >= threshold))
    rule = (f"frequencies with ≥ max({float(min_fraction):.0%}, 2/n_freq = 2/{n_freq} = {uniform_bound:.1%}) "
            f"= {threshold:.1%} of the non-constant squared Fourier norm of {method}")
    return KeyFrequencies(freqs, method, scores, rule)


def neuron_key_frequencies(model_or_params, min_fraction: float = 0.05,
                           cfg: ModelConfig | RunConfig | None = None,
                           threshold: float = DEFAULT_THRESHOLD) -> KeyFrequencies:
    """Key frequencies read off the neuron clusters (method ``"neurons"``).

    Args:
        model_or_params: a model, a ``Run`` (last checkpoint), a parameter dict or activations.
        min_fraction: a frequency is key when it is the dominant frequency of at least this
            fraction of the well-explained neurons.
        cfg: the model config (see :func:`grokinterp.analysis.inputs.resolve_model`).
        threshold: the FVE that makes a neuron well explained (paper: 0.85).

    Returns:
        :class:`KeyFrequencies` with ``method="neurons"``; ``scores[k]`` is the
        fraction of the well-explained neurons in cluster ``k``. No well-explained neuron gives
        an empty frequency set (and zero scores).
    """
    if not 0.0 < float(min_fraction) <= 1.0:
        raise AnalysisError(f"min_fraction: must lie in (0, 1], got {min_fraction!r}")
    nf = neuron_fourier(model_or_params, cfg, threshold)
    scores, n_explained = _cluster_scores(nf)
    freqs = tuple(int(k) for k in np.flatnonzero(scores >= min_fraction))
    rule = (f"dominant frequency of ≥ {min_fraction:.0%} of the {n_explained} neurons with "
            f"FVE > {threshold:g} for one frequency")
    return KeyFrequencies(freqs, "neurons", scores, rule)


def _cluster_scores(nf) -> tuple[np.ndarray, int]:
    """Fraction of the well-explained neurons in each cluster (index k = frequency / irrep k)."""
    scores = np.zeros(nf.fve.shape[1])
    n_explained = int(nf.explained.sum())
    for k, ids in nf.clusters.items():
        scores[k] = len(ids) / n_explained
    return scores, n_explained


KeyFreqRule = Callable[..., KeyFrequencies]


def _neurons_rule(model_or_params, min_fraction: float, p: int | None, cfg) -> KeyFrequencies:
    return neuron_key_frequencies(model_or_params, min_fraction=min_fraction, cfg=cfg)


#: Key-frequency rules by name: ``rule(model_or_params, min_fraction, p, cfg) -> KeyFrequencies``.
KEY_FREQ_RULES: dict[str, KeyFreqRule] = {
    "W_L": _norm_share_rule("W_L"),
    "W_E": _norm_share_rule("W_E"),
    "neurons": _neurons_rule,
}


def register_key_freq_rule(name: str, rule: KeyFreqRule) -> None:
    """Add a rule usable as ``key_frequencies(model, method=name)`` (and by the measures)."""
    KEY_FREQ_RULES[name] = rule


@dataclass(frozen=True)
class ResolvedKeys:
    """Key frequencies (key irreps) fixed for a run-level analysis, and where they came from.

    ``freqs`` are irrep indices for a task with a group structure other than ``a + b`` (frequencies of
    the group for a cyclic one); ``names`` names them; both are empty for a task without structure."""

    freqs: list[int]
    method: str
    rule: str
    epoch: int | None
    names: tuple[str, ...] = ()


def key_checkpoint(run) -> tuple[int, bool]:
    """The checkpoint a run's key set is chosen at, and whether that choice is final.

    The first checkpoint at or after the epoch test accuracy first reached 99 % (the training
    metrics): training longer, or resuming an interrupted run, adds checkpoints only after it, so
    the key set — and every date that uses it (circuit formed, restricted / excluded loss) — does not
    move (``final = True``). A run whose test accuracy has not reached 99 % at a checkpoint yet gets its
    last checkpoint (``final = False``: provisional, training longer may change it). Choosing always at
    the last checkpoint made dates move with the run's length: ``quick`` (init seed 42, split seed 43)
    dated the circuit at 625 (650 on a later check) when stopped at 925 (test accuracy 91 %; 99 % came at 1,050) and at 725
    after resuming to 1,644 (keys {4, 5, 10, 27, 45} → {4, 5, 10, 27}); with this rule the 925 set is
    flagged provisional, and from 1,050 on set and date stay fixed.
    """
    last = int(run.resolve_epoch(-1))
    try:
        t99 = run.summary().get("test_acc_99_epoch")
    except RunError:  # unreadable metrics: no 99 % epoch to anchor on
        t99 = None
    if t99 is not None:
        eps = np.asarray(run.epochs)
        after = eps[eps >= run.checkpoint_label(int(t99))]  # t99 is an epoch; labels may count steps
        if len(after):
            return int(after[0]), True
    return last, False


def resolve_key_frequencies(run, key_freqs=None, method: str | None = None) -> ResolvedKeys:
    """The key frequencies (key irreps) a run-level analysis holds fixed across checkpoints.

    ``None``: the rule ``method`` (default :func:`default_key_method`: ``W_L``, or ``circuit`` for a
    non-cyclic group) on the checkpoint :func:`key_checkpoint` picks (the first at or after test
    accuracy reached 99 %, so dates do not move when the run trains longer; else the last, said
    provisional in the rule); a :class:`KeyFrequencies`: as
    given, with its rule; a sequence of ints: "given by the caller". Every frequency is checked
    against the run's ``p`` (every irrep index against the task's group). A task without a group
    structure has none (``method = "undefined"``); giving some is refused.
    """
    ts = task_structure(run.task)
    if ts is None or key_freqs is not None:
        return resolve_model_keys(None, ts, run.config.task.p, key_freqs, method, what=run.task.describe())
    e, final = key_checkpoint(run)
    where = (f"checkpoint at epoch {e}, the first at or after test accuracy reached 99 %: training longer does "
             f"not change the set" if final else
             f"checkpoint at epoch {e}, the last: test accuracy has not reached 99 % at a checkpoint, so the set "
             f"is provisional and training longer may change it")
    # the model carries its config (act_fn)
    return resolve_model_keys(run.model(e), ts, run.config.task.p, None, method, epoch=e, where=where)


def resolve_model_keys(model_or_params, ts, p: int, key_freqs=None, method: str | None = None, *,
                       epoch: int | None = None, where: str | None = None, cfg: ModelConfig | None = None,
                       what: str | None = None) -> ResolvedKeys:
    """The key frequencies (irreps) of one model of a task with structure ``ts`` (see
    :func:`resolve_key_frequencies`, which applies it to the checkpoint :func:`key_checkpoint` picks).

    Args:
        model_or_params: the model (or one checkpoint's parameters) the rule reads when
            ``key_freqs`` is ``None``.
        ts: the task's :class:`~grokinterp.analysis.groups.TaskStructure` (``None``: none).
        p: the task's alphabet size.
        key_freqs: ``None`` (choose by ``method``), a :class:`KeyFrequencies` or a sequence of ints.
        epoch, where: recorded with the rule (``where`` names the model in the rule text).
        cfg: the model config for a parameter dict (a GELU model).
        what: the task in words, for the messages of a task without structure.
    """
    if ts is None:
        what = what or "of this run"
        if key_freqs is not None and list(getattr(key_freqs, "freqs", key_freqs)):
            raise AnalysisError(f"key frequencies: the task {what} declares no group structure, so "
                                f"it has no key frequencies or irreps to fix")
        return ResolvedKeys([], "undefined", f"undefined: the task {what} declares no group "
                                             f"structure (no key frequencies, no restricted / excluded loss)", None)
    plain = isinstance(ts.structure, CyclicSum)

    def check(keys) -> list[int]:
        return check_freq_list(p, keys) if plain else ts.basis.check_irreps(keys)

    def names(keys) -> tuple[str, ...]:
        return () if plain else tuple(ts.key_names(keys))

    if key_freqs is None:
        kf = key_frequencies(model_or_params, method=method, task=ts, cfg=cfg)
        ks = check(kf.freqs)
        return ResolvedKeys(ks, kf.method, kf.rule + (f" ({where})" if where else ""), epoch, names(ks))
    if isinstance(key_freqs, KeyFrequencies):
        ks = check(key_freqs.freqs)
        return ResolvedKeys(ks, key_freqs.method, key_freqs.rule, None, names(ks))
    ks = check(key_freqs)
    noun = "frequencies" if plain or ts.cyclic else "irreps"
    return ResolvedKeys(ks, "given", f"{noun} given by the caller", epoch, names(ks))


# -- key irreps: every group structure other than a + b mod p ----------------------------------------
#: Largest share threshold of the norm rules: ``2 × uniform share`` is capped here, so that one large
#: irrep (S5's 6-dimensional holds 36/119 = 30 % of a flat spectrum) can be key next to another.
SHARE_CAP = 0.5


def default_key_method(ts) -> str:
    """The rule run-level analyses use by default: ``W_L`` for a cyclic structure (``a + b``, ``a − b``,
    ``a·b`` mod p, ``C_n``: every irrep but the Nyquist one has two basis functions, so the norm shares
    compare like with like) and ``circuit`` for other groups, whose irreps differ in size (S5's
    6-dimensional irrep holds 30 % of a flat W_L spectrum, its sign irrep 0.8 %), so that norm shares
    cannot separate used from unused irreps: there an irrep is key when the neurons compute with it (a
    cluster) or the logits read it out (a character term, Chughtai et al.'s logit attribution)."""
    ts = structure_of(ts) if ts is not None else None
    return "W_L" if ts is None or ts.cyclic else "circuit"


def key_irreps(model_or_params, ts, method: str | None = None, min_fraction: float = 0.05,
               cfg: ModelConfig | RunConfig | None = None) -> KeyFrequencies:
    """The irreps a trained model uses (the key frequencies of a cyclic structure such as ``a − b``).

    Args:
        model_or_params: a model or a parameter dict of one checkpoint.
        ts: the task's :class:`~grokinterp.analysis.groups.TaskStructure` (or a Task / Run).
        method: a rule of :data:`KEY_IRREP_RULES` (default: :func:`default_key_method`):
            ``"W_L"``: irreps whose share of the non-trivial squared group-Fourier norm of
            ``W_L = W_out W_U`` along the output axis (outputs read as group elements) is at least
            ``max(min_fraction, min(2 k_ρ / Σ k, SHARE_CAP))``, ``k_ρ`` being the irrep's number of basis
            functions (``d²``, ``2d²`` for a complex pair): twice its share of a flat spectrum.
            ``"W_E"``: the same rule on the embedding of the elements.
            ``"neurons"``: dominant irreps of ≥ ``min_fraction`` of the neurons with FVE > 0.85.
            ``"logits"``: irreps whose character term ``χ_ρ(s(a,b)·t(c)⁻¹)`` alone explains at least
            ``min_fraction`` of the centred logit variance on the block (Chughtai et al.'s logit attribution).
            ``"circuit"`` (default for non-cyclic groups): the union of ``neurons`` and ``logits``.
        min_fraction: the rule's threshold, in ``(0, 1]``.
        cfg: the model config (for a parameter dict of a GELU model).

    Returns:
        :class:`KeyFrequencies` whose ``freqs`` are irrep indices and ``names`` their names.

    Notes:
        For a cyclic group ``k_ρ = 2`` (1 for the Nyquist frequency), so ``2 k_ρ / Σ k = 4 / (m − 1)``:
        the ``2 / n_freq`` of :func:`key_frequencies`.
    """
    ts = structure_of(ts)
    if ts is None:
        raise AnalysisError("key irreps: the task declares no group structure")
    method = default_key_method(ts) if method is None else method
    if method not in KEY_IRREP_RULES:
        raise AnalysisError(f"method: unknown key-irrep method {method!r}; use "
                            f"{', '.join(repr(m) for m in KEY_IRREP_RULES)}")
    _check_fraction(min_fraction)
    kf = KEY_IRREP_RULES[method](model_or_params, float(min_fraction), ts, cfg)
    return KeyFrequencies(kf.freqs, kf.method, kf.scores, kf.rule, tuple(ts.key_names(kf.freqs)))


def _irrep_share(norms, ts, method: str, min_fraction: float, what: str) -> KeyFrequencies:
    if norms.ndim != 1:
        raise AnalysisError(f"key_irreps takes one checkpoint, but the norms of {method} have shape "
                            f"{list(norms.shape)} (stacked parameters [ckpt, ...]?); pick a checkpoint")
    energy = norms[1:].detach().double().cpu() ** 2
    frac = (energy / energy.sum().clamp_min(1e-300)).numpy()
    scores = np.concatenate([[0.0], frac])
    k = ts.basis.n_functions.double().numpy()
    base = k / k[1:].sum()
    thr = np.maximum(float(min_fraction), np.minimum(2 * base, SHARE_CAP))
    thr[0] = np.inf
    keys = tuple(int(i) for i in np.flatnonzero(scores >= thr))
    rule = (f"{ts.nouns} of {ts.group.name} holding ≥ max({float(min_fraction):.0%}, min(2 × their share of a flat "
            f"spectrum, {SHARE_CAP:.0%})) of the non-trivial squared group-Fourier norm of {what}")
    return KeyFrequencies(keys, method, scores, rule)


def _irrep_norm_rule(method: str):
    def rule(model_or_params, min_fraction: float, ts, cfg) -> KeyFrequencies:
        params = as_params(model_or_params)
        if method == "W_E":
            if "embed.W_E" not in params:
                raise AnalysisError("parameter 'embed.W_E' not found")
            norms = embed_irrep_norms(params["embed.W_E"].detach().float(), ts)
            what = "W_E (rows of the elements)"
        else:
            W_L = neuron_logit_matrix(model_or_params)
            norms = neuron_logit_irrep_norms(W_L, ts)
            what = "W_L = W_out W_U (outputs of the elements; an MLP's: W_U)"
        return _irrep_share(norms, ts, method, min_fraction, what)

    return rule


def _irrep_neurons_rule(model_or_params, min_fraction: float, ts, cfg) -> KeyFrequencies:
    nf = neuron_fourier(model_or_params, cfg, structure=ts)
    scores, n_explained = _cluster_scores(nf)
    keys = tuple(int(k) for k in np.flatnonzero(scores >= min_fraction))
    rule = (f"dominant {ts.noun} of ≥ {min_fraction:.0%} of the {n_explained} neurons with FVE > {nf.threshold:g} "
            f"for one {ts.noun} (maps over the block in {ts.group.name}'s coordinates)")
    return KeyFrequencies(keys, "neurons", scores, rule)


def _irrep_logits_rule(model_or_params, min_fraction: float, ts, cfg) -> KeyFrequencies:
    params, mcfg = resolve_model(model_or_params, cfg)
    if params["embed.W_E"].ndim != 2:
        raise AnalysisError(f"key_irreps takes one checkpoint, got stacked parameters of shape "
                            f"{list(params['embed.W_E'].shape)}")
    fit = model_character_fit(params, mcfg, ts, rows=grid_rows(mcfg))
    scores = fit.fve.cpu().numpy()
    keys = tuple(int(k) for k in np.flatnonzero(scores[1:] >= min_fraction) + 1)
    rule = (f"{ts.nouns} of {ts.group.name} whose character term χ(s(a,b)·t(c)⁻¹) explains ≥ {min_fraction:.0%} of "
            f"the centred logit variance on the block")
    return KeyFrequencies(keys, "logits", scores, rule)


def _irrep_circuit_rule(model_or_params, min_fraction: float, ts, cfg) -> KeyFrequencies:
    neurons = _irrep_neurons_rule(model_or_params, min_fraction, ts, cfg)
    logits = _irrep_logits_rule(model_or_params, min_fraction, ts, cfg)
    keys = tuple(sorted(set(neurons.freqs) | set(logits.freqs)))
    rule = (f"{ts.nouns} of {ts.group.name} the circuit computes with: a neuron cluster of ≥ {min_fraction:.0%} of the "
            f"neurons explained by one {ts.noun} (FVE > {DEFAULT_THRESHOLD:g}) or a character term χ(s(a,b)·t(c)⁻¹) "
            f"explaining ≥ {min_fraction:.0%} of the centred logit variance on the block (score: the larger share)")
    return KeyFrequencies(keys, "circuit", np.maximum(neurons.scores, logits.scores), rule)


KeyIrrepRule = Callable[..., KeyFrequencies]

#: Key-irrep rules by name: ``rule(model_or_params, min_fraction, ts, cfg) -> KeyFrequencies``.
KEY_IRREP_RULES: dict[str, KeyIrrepRule] = {
    "W_L": _irrep_norm_rule("W_L"),
    "W_E": _irrep_norm_rule("W_E"),
    "neurons": _irrep_neurons_rule,
    "logits": _irrep_logits_rule,
    "circuit": _irrep_circuit_rule,
}


def register_key_irrep_rule(name: str, rule: KeyIrrepRule) -> None:
    """Add a rule usable as ``key_irreps(model, ts, method=name)`` (and by run analyses of group tasks)."""
    KEY_IRREP_RULES[name] = rule
