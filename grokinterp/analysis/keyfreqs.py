"""Key frequencies: which frequencies a trained model uses, chosen by a named rule.

Rules are registered in :data:`KEY_FREQ_RULES` (``method=`` of :func:`key_frequencies`):

* ``W_L`` (default) — the share of the non-constant squared Fourier norm of the neuron → logit
  map ``W_L = W_out W_U``;
* ``W_E`` — the same rule on the embedding;
* ``neurons`` — the dominant frequencies of the neurons well explained by one frequency.

A rule returns a :class:`KeyFrequencies` carrying the rule in words, so reports can say how the
frequencies were chosen. :func:`resolve_key_frequencies` is how run-level analyses fix them once
(by default from the final checkpoint) and hold them across checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError
from .fourier import embed_fourier_norms, neuron_logit_fourier_norms
from .inputs import check_freq_list
from .neurons import DEFAULT_THRESHOLD, neuron_fourier

__all__ = ["KeyFrequencies", "key_frequencies", "neuron_key_frequencies", "KEY_FREQ_RULES",
           "register_key_freq_rule", "ResolvedKeys", "resolve_key_frequencies"]


@dataclass(frozen=True)
class KeyFrequencies:
    """The key frequencies of a model and how they were chosen.

    Attributes:
        freqs: the key frequencies, sorted.
        method: the rule used (``W_L``, ``W_E`` or ``neurons``).
        scores: per-frequency score the rule used (index k = frequency k), as a numpy array.
        rule: the rule in words, for reports.
    """

    freqs: tuple[int, ...]
    method: str
    scores: np.ndarray
    rule: str

    def __iter__(self):
        return iter(self.freqs)

    def __len__(self) -> int:
        return len(self.freqs)


def key_frequencies(model_or_params, method: str = "W_L", min_fraction: float = 0.05,
                    p: int | None = None, cfg: ModelConfig | RunConfig | None = None) -> KeyFrequencies:
    """The frequencies a trained model uses.

    Args:
        model_or_params: a model or a parameter dict of **one** checkpoint (stacked
            ``[ckpt, ...]`` parameters are refused: choose a checkpoint first).
        method:
            ``"W_L"`` (default): frequencies whose share of the non-constant squared Fourier
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
    if method not in KEY_FREQ_RULES:
        raise AnalysisError(f"method: unknown key-frequency method {method!r}; use "
                            f"{', '.join(repr(m) for m in KEY_FREQ_RULES)}")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(min_fraction) <= 1.0:
        raise AnalysisError(f"min_fraction: must be a number in (0, 1], got {min_fraction!r}")
    return KEY_FREQ_RULES[method](model_or_params, float(min_fraction), p, cfg)


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
    scores = np.zeros(nf.fve.shape[1])
    n_explained = int(nf.explained.sum())
    for k, ids in nf.clusters.items():
        scores[k] = len(ids) / n_explained
    freqs = tuple(int(k) for k in np.flatnonzero(scores >= min_fraction))
    rule = (f"dominant frequency of ≥ {min_fraction:.0%} of the {n_explained} neurons with "
            f"FVE > {threshold:g} for one frequency")
    return KeyFrequencies(freqs, "neurons", scores, rule)


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
    """Key frequencies fixed for a run-level analysis, and where they came from."""

    freqs: list[int]
    method: str
    rule: str
    epoch: int | None


def resolve_key_frequencies(run, key_freqs=None, method: str = "W_L") -> ResolvedKeys:
    """The key frequencies a run-level analysis holds fixed across checkpoints.

    ``None``: the rule ``method`` on the run's final checkpoint; a :class:`KeyFrequencies`: as
    given, with its rule; a sequence of ints: "given by the caller". Every frequency is checked
    against the run's ``p``.
    """
    p = run.config.task.p
    if key_freqs is None:
        e = int(run.resolve_epoch(-1))
        kf = key_frequencies(run.model(e), method=method)  # the model carries its config (act_fn)
        return ResolvedKeys(check_freq_list(p, kf.freqs), kf.method, kf.rule + f" (checkpoint at epoch {e})", e)
    if isinstance(key_freqs, KeyFrequencies):
        return ResolvedKeys(check_freq_list(p, key_freqs.freqs), key_freqs.method, key_freqs.rule, None)
    return ResolvedKeys(check_freq_list(p, key_freqs), "given", "frequencies given by the caller", None)
