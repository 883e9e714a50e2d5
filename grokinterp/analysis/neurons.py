"""MLP neurons over the ``(a, b)`` grid: 2-D Fourier decomposition, fraction of variance
explained per frequency, dominant frequencies and frequency clusters.

In a grokked model almost every neuron's activation map ``N[a, b]`` is a function of one
frequency ``w``: a constant plus *linear* terms ``cos(wa), sin(wa), cos(wb), sin(wb)`` plus
*quadratic* terms ``cos(wa)cos(wb), cos(wa)sin(wb), sin(wa)cos(wb), sin(wa)sin(wb)``
(Nanda et al. 2023, §4.2: 433 of 512 neurons have more than 85 % of their variance explained by
one frequency).

Conventions:

* Activations are ``[a, b, d_mlp]`` (or stacked ``[ckpt, a, b, d_mlp]``), taken at the final
  position after the non-linearity (``blocks.0.mlp.hook_post``).
* 2-D coefficients are in :class:`~grokinterp.analysis.fourier.FourierBasis` ⊗ ``FourierBasis`` order
  (``const, cos 1, sin 1, ...`` along ``a`` and along ``b``).
* FVE per frequency: index ``k`` is frequency ``k``; index 0 (the constant) is always 0 because
  the constant is not variance.

Example:
    >>> nf = neuron_fourier(run.model(-1))            # doctest: +SKIP
    >>> nf.fve.shape, nf.explained_fraction    # [d_mlp, n_freq + 1], ≈ 0.85  # doctest: +SKIP
    >>> nf.cluster_sizes                       # freq, n_neurons, fraction  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError
from ..model.grid import grid_outputs, n_neurons
from .fourier import fourier_basis, fourier_coeffs_fft
from .groups import neuron_irrep_fve
from .inputs import check_indices, check_square_axes, resolve_model

__all__ = [
    "DEFAULT_THRESHOLD",
    "neuron_activations",
    "neuron_fourier_coeffs",
    "neuron_fve",
    "NeuronFourier",
    "neuron_fourier",
    "check_neurons",
    "clusters_from_fve",
]

#: FVE above which a neuron counts as explained by one frequency (paper: 0.85).
DEFAULT_THRESHOLD = 0.85


def check_neurons(neurons, d_mlp: int, *, allow_empty: bool = False) -> Tensor:
    """Validate neuron indices; returns them as a sorted, de-duplicated int64 tensor.

    Args:
        neurons: an int, a sequence of ints, or an integer tensor / array.
        d_mlp: the number of neurons.
        allow_empty: accept an empty selection.

    Raises:
        AnalysisError: an index is not an integer in ``0..d_mlp-1`` (the message names it), or the
            selection is empty and ``allow_empty`` is false.
    """
    return check_indices(neurons, d_mlp, "neuron", "d_mlp", allow_empty=allow_empty)


def neuron_activations(model_or_params, cfg: ModelConfig | RunConfig | None = None,
                       neurons=None) -> Tensor:
    """Activations of the neurons (the family's hidden layer: a transformer's last MLP, an MLP's last hidden
    layer) at the final position on every input ``(a, b)``.

    Args:
        model_or_params: a model, a ``Run`` (last checkpoint) or a parameter dict, single or
            stacked ``[ckpt, ...]``.
        cfg: the model config (needed for a dict of a GELU model; see
            :func:`grokinterp.analysis.logits.resolve_model`).
        neurons: optional neuron indices to keep (validated).

    Returns:
        float32 ``[p, p, d_mlp]`` (``[a, b, neuron]``), or ``[ckpt, p, p, d_mlp]`` for a stack;
        the last axis has ``len(neurons)`` entries when ``neurons`` is given.
    """
    params, cfg = resolve_model(model_or_params, cfg)
    with torch.no_grad():
        post = grid_outputs(params, cfg, return_post=True).post
    if neurons is not None:
        post = post[..., check_neurons(neurons, n_neurons(cfg)).to(post.device)]
    return post


def _check_acts(acts: Tensor) -> int:
    return check_square_axes(acts, (-3, -2), "activations [..., a, b, d_mlp]")


def neuron_fourier_coeffs(acts: Tensor) -> Tensor:
    """2-D Fourier coefficients of each neuron's activation map over ``(a, b)``.

    Args:
        acts: ``[..., a, b, d_mlp]`` activations (see :func:`neuron_activations`).

    Returns:
        float64 ``[..., p, p, d_mlp]``; entry ``[i, j, n]`` is the coefficient of neuron ``n``
        along ``basis[i](a) · basis[j](b)`` (labels in ``fourier_basis(p).labels``).

    Notes:
        ``C[i, j, n] = Σ_{a,b} B[i, a] B[j, b] N[a, b, n]`` with the orthonormal basis ``B``,
        computed by FFT (:func:`grokinterp.analysis.fourier.fourier_coeffs_fft`).
    """
    _check_acts(acts)
    return fourier_coeffs_fft(acts, (-3, -2))


def _freq_energy(acts: Tensor) -> Tensor:
    """Energy per (frequency in a, frequency in b): ``[..., d_mlp, n_freq + 1, n_freq + 1]``."""
    p = _check_acts(acts)
    sq = neuron_fourier_coeffs(acts).pow(2)  # [..., i, j, d_mlp]
    return fourier_basis(p).fold(torch.movedim(sq, -1, -3), (-2, -1))  # [..., d_mlp, k, l]


def neuron_fve(acts: Tensor) -> Tensor:
    """Fraction of each neuron's variance explained by each single frequency.

    Args:
        acts: ``[..., a, b, d_mlp]`` activations (a stack ``[ckpt, a, b, d_mlp]`` works).

    Returns:
        float64 ``[..., d_mlp, n_freq + 1]``; index ``k`` = frequency ``k``, index 0 is 0. A
        neuron that is constant over the grid (e.g. dead) has FVE 0 everywhere.

    Notes:
        With 2-D coefficients ``C[i, j]`` (see :func:`neuron_fourier_coeffs`) and ``f(i)`` the
        frequency of component ``i``:
        ``FVE_k = Σ_{(i,j) ∈ T_k} C[i,j]² / (Σ_{i,j} C[i,j]² − C[0,0]²)`` where ``T_k`` holds the
        linear terms (``f(i) = k, j = 0`` and ``i = 0, f(j) = k``) and the quadratic terms
        (``f(i) = f(j) = k``). The rest of the variance sits in products of two different
        frequencies.
    """
    E = _freq_energy(acts)
    n = E.shape[-1]
    k = torch.arange(1, n, device=E.device)
    own = E[..., k, 0] + E[..., 0, k] + E[..., k, k]  # [..., d_mlp, n_freq]
    var = E.sum((-2, -1)) - E[..., 0, 0]
    tiny = 1e-12 * E.sum((-2, -1)).clamp_min(1e-300)  # constant maps: rounding noise only
    ok = var > tiny
    fve = torch.where(ok[..., None], own / torch.where(ok, var, 1.0)[..., None], 0.0)
    return torch.cat([torch.zeros_like(fve[..., :1]), fve], dim=-1)


@dataclass(frozen=True)
class NeuronFourier:
    """Per-neuron frequency analysis of one model.

    Attributes:
        fve: ``[d_mlp, n_freq + 1]`` fraction of variance explained per frequency (index k =
            frequency k; index 0 is 0).
        dominant_freq: ``[d_mlp]`` int64, the frequency with the largest FVE (0 when no
            frequency explains any variance, e.g. a constant neuron).
        dominant_fve: ``[d_mlp]`` its FVE.
        threshold: the FVE a neuron's dominant frequency must exceed to join a cluster.
        clusters: ``{freq: int64 tensor of neuron ids}`` for the well-explained neurons, sorted by
            frequency; only non-empty clusters appear.
        cluster_sizes: DataFrame ``freq, n_neurons, fraction`` (fraction of all ``d_mlp``), one
            row per cluster.
        explained_fraction: fraction of the neurons in some cluster (paper: 433/512 ≈ 0.846).
        p: the modulus (the task's alphabet size).
        names: with a group structure (``neuron_fourier(..., structure=ts)``) the names of the irreps
            that index ``fve`` (a "frequency" is then an irrep index); empty for Fourier over ``Z_p``.
    """

    fve: Tensor
    dominant_freq: Tensor
    dominant_fve: Tensor
    threshold: float
    clusters: dict[int, Tensor] = field(repr=False)
    cluster_sizes: pd.DataFrame = field(repr=False)
    explained_fraction: float
    p: int
    names: tuple[str, ...] = ()

    @property
    def d_mlp(self) -> int:
        return int(self.fve.shape[0])

    @property
    def explained(self) -> Tensor:
        """Boolean ``[d_mlp]``: the neuron is in a cluster."""
        return self.dominant_fve > self.threshold

    def _check(self, freqs: Sequence[int]) -> list[int]:
        if not self.names:
            return fourier_basis(self.p).check_freqs(list(freqs))
        return check_indices(list(freqs), len(self.names), "irrep", "n_irreps", allow_empty=True).tolist()

    def cluster(self, freq: int) -> Tensor:
        """Neuron ids of the cluster of ``freq`` (empty tensor if no neuron has it)."""
        (f,) = self._check([freq])
        return self.clusters.get(f, torch.zeros(0, dtype=torch.int64, device=self.fve.device))

    def neurons_of(self, freqs: Sequence[int]) -> Tensor:
        """Neuron ids of the clusters of all ``freqs`` together, sorted."""
        fs = self._check(list(freqs))
        ids = [self.clusters[f] for f in fs if f in self.clusters]
        return torch.sort(torch.cat(ids))[0] if ids else torch.zeros(0, dtype=torch.int64, device=self.fve.device)

    def table(self, neurons=None) -> pd.DataFrame:
        """One row per neuron: ``neuron, dominant_freq, dominant_fve, cluster`` (cluster = freq or -1)."""
        idx = check_neurons(neurons, self.d_mlp) if neurons is not None else torch.arange(self.d_mlp)
        dom, dom_fve = self.dominant_freq.cpu()[idx], self.dominant_fve.cpu()[idx]  # host-side table
        explained = dom_fve > self.threshold
        return pd.DataFrame({
            "neuron": idx.numpy(),
            "dominant_freq": dom.numpy(),
            "dominant_fve": dom_fve.numpy(),
            "cluster": torch.where(explained, dom, -1).numpy(),
        })


def _resolve_acts(x, cfg) -> Tensor:
    if torch.is_tensor(x):
        _check_acts(x)
        return x
    return neuron_activations(x, cfg)


def neuron_fourier(model_or_acts, cfg: ModelConfig | RunConfig | None = None,
                   threshold: float = DEFAULT_THRESHOLD, *, structure=None) -> NeuronFourier:
    """Frequency analysis of every MLP neuron of one model (irrep analysis with a group ``structure``).

    Args:
        model_or_acts: a model, a ``Run`` (last checkpoint), a parameter dict, or activations
            ``[a, b, d_mlp]`` themselves (a tensor).
        cfg: the model config (see :func:`grokinterp.analysis.inputs.resolve_model`).
        threshold: FVE a neuron's dominant frequency must exceed to count as explained
            (paper: 0.85).
        structure: a :class:`~grokinterp.analysis.groups.TaskStructure`: the maps are read on its block
            in the group's coordinates and clustered by irrep (:func:`~grokinterp.analysis.groups.neuron_irrep_fve`;
            a "frequency" of the result is an irrep index). Default: Fourier over ``Z_p × Z_p`` of the tokens.

    Returns:
        :class:`NeuronFourier`. For a stack of checkpoints use :func:`neuron_fve`.

    Notes:
        ``dominant_freq = argmax_k FVE_k``; cluster ``k`` = ``{n : dominant_freq_n = k and
        FVE_k(n) > threshold}`` (see :func:`neuron_fve` for ``FVE``).
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise AnalysisError(f"threshold: must lie in [0, 1), got {threshold!r}")
    acts = _resolve_acts(model_or_acts, cfg)
    if acts.ndim != 3:
        raise AnalysisError(f"neuron_fourier takes one model ([a, b, d_mlp] activations), got shape "
                            f"{list(acts.shape)}; use neuron_fve for a stack of checkpoints")
    fve = neuron_fve(acts) if structure is None else neuron_irrep_fve(acts, structure)
    return clusters_from_fve(fve, acts.shape[0], threshold, names=() if structure is None else structure.basis.names)


def clusters_from_fve(fve: Tensor, p: int, threshold: float = DEFAULT_THRESHOLD,
                      names: tuple[str, ...] = ()) -> NeuronFourier:
    """:class:`NeuronFourier` from per-neuron FVEs ``[d_mlp, n_freq + 1]`` (or ``[d_mlp, n_irreps]`` with ``names``)."""
    dom_fve, dom = fve[:, 1:].max(-1)
    dom = torch.where(dom_fve > 1e-9, dom + 1, 0)  # no single-frequency variance: 0
    explained = dom_fve > threshold
    clusters = {}
    for k in torch.unique(dom[explained]).tolist():
        clusters[int(k)] = torch.nonzero(explained & (dom == k)).flatten()
    d_mlp = fve.shape[0]
    sizes = pd.DataFrame({
        "freq": np.array(list(clusters), dtype=np.int64),
        "n_neurons": np.array([len(v) for v in clusters.values()], dtype=np.int64),
    })
    sizes["fraction"] = sizes["n_neurons"] / d_mlp
    return NeuronFourier(fve=fve, dominant_freq=dom, dominant_fve=dom_fve, threshold=float(threshold),
                         clusters=clusters, cluster_sizes=sizes,
                         explained_fraction=float(explained.double().mean()), p=int(p), names=tuple(names))
