"""Fourier analysis over Z_p: an orthonormal basis with named components, projections,
per-frequency norms of W_E / W_U / W_L (one model or a stack of checkpoints), Gini
coefficients, and the key frequencies of a model.

Conventions (also in DESIGN.md):

* Row 0 of the basis is the constant ``1/√p``; then for ``k = 1 .. ⌊(p−1)/2⌋`` the rows
  ``cos k`` and ``sin k`` **in that order** (cos first), each scaled to unit norm; for even ``p``
  the Nyquist cosine ``cos p/2`` comes last. Rows are orthonormal, so the basis is an orthogonal
  matrix and projections preserve norms.
* Frequency ``k`` means the angle ``2πk·x/p``.
* Per-frequency norms combine the cos and sin components as ``√(cos² + sin²)``; index ``k`` of a
  per-frequency vector is frequency ``k`` (index 0 is the constant component).

Example:
    >>> B = FourierBasis(7)
    >>> B.labels[:4], B.n_freq
    (('const', 'cos 1', 'sin 1', 'cos 2'), 3)
    >>> bool(torch.allclose(B.matrix @ B.matrix.T, torch.eye(7), atol=1e-6))
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .errors import AnalysisError

if TYPE_CHECKING:
    from .config import ModelConfig, RunConfig

__all__ = [
    "FourierBasis",
    "fourier_basis",
    "embed_fourier_norms",
    "unembed_fourier_norms",
    "neuron_logit_fourier_norms",
    "gini",
    "KeyFrequencies",
    "key_frequencies",
]


class FourierBasis:
    """Orthonormal Fourier basis of functions on Z_p (see the module docstring for the order).

    Attributes:
        p: the modulus.
        matrix: ``[p, p]`` float64-accurate float32 tensor; row ``i`` is component ``labels[i]``.
        labels: component names (``const``, ``cos 1``, ``sin 1``, ...).
        freqs: ``[p]`` int64, the frequency of each component (0 for the constant).
        n_freq: number of non-constant frequencies, ``⌊p/2⌋``.
    """

    def __init__(self, p: int):
        if not isinstance(p, (int, np.integer)) or p < 3:
            raise AnalysisError(f"p: a Fourier basis needs an integer p ≥ 3, got {p!r}")
        self.p = int(p)
        x = np.arange(p)
        rows, labels, freqs = [np.full(p, 1.0 / math.sqrt(p))], ["const"], [0]
        for k in range(1, (p - 1) // 2 + 1):
            for name, fn in (("cos", np.cos), ("sin", np.sin)):
                v = fn(2 * np.pi * k * x / p)
                rows.append(v / np.linalg.norm(v))
                labels.append(f"{name} {k}")
                freqs.append(k)
        if p % 2 == 0:
            v = np.cos(np.pi * x)
            rows.append(v / np.linalg.norm(v))
            labels.append(f"cos {p // 2}")
            freqs.append(p // 2)
        self.matrix64 = torch.tensor(np.stack(rows), dtype=torch.float64)
        self.matrix = self.matrix64.float()
        self.labels = tuple(labels)
        self.freqs = torch.tensor(freqs, dtype=torch.int64)
        self.n_freq = p // 2

    def __repr__(self) -> str:
        return f"FourierBasis(p={self.p}, components: const, cos 1, sin 1, ..., {self.labels[-1]})"

    # -- components ----------------------------------------------------------------------------
    def index(self, label: str) -> int:
        """Row of a named component (``"sin 3"``)."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise AnalysisError(f"no Fourier component {label!r} for p = {self.p}") from None

    def check_freqs(self, freqs: Sequence[int]) -> list[int]:
        """Validate frequencies (each in ``1..n_freq``); returns them as a sorted list of ints."""
        out = []
        for f in freqs:
            if not isinstance(f, (int, np.integer)) or not 1 <= int(f) <= self.n_freq:
                raise AnalysisError(f"frequency {f!r} is not in 1..{self.n_freq} (p = {self.p})")
            out.append(int(f))
        return sorted(set(out))

    def component_mask(self, freqs: Sequence[int], include_const: bool = False,
                       device: torch.device | str | None = None) -> Tensor:
        """Boolean ``[p]`` (on ``device``, default CPU): the components (cos and sin) of the given frequencies."""
        freqs = self.check_freqs(freqs)
        mask = torch.isin(self.freqs, torch.tensor(freqs, dtype=torch.int64)).to(device)
        if include_const:
            mask[0] = True
        return mask

    @cached_property
    def freq_labels(self) -> tuple[str, ...]:
        return ("const",) + tuple(str(k) for k in range(1, self.n_freq + 1))

    # -- projections --------------------------------------------------------------------------
    def _check_axis(self, x: Tensor, dim: int) -> None:
        if x.shape[dim] != self.p:
            raise AnalysisError(f"axis {dim} of a tensor of shape {list(x.shape)} has size {x.shape[dim]}, "
                                f"but the Fourier basis has p = {self.p}")

    def to_fourier(self, x: Tensor, dim: int = -1) -> Tensor:
        """Coefficients of ``x`` along axis ``dim`` (size p): ``Σ_x basis[i, x] · x[..., x, ...]``."""
        self._check_axis(x, dim)
        m = self.matrix64 if x.dtype == torch.float64 else self.matrix
        return torch.movedim(torch.movedim(x, dim, -1) @ m.to(x.device).T, -1, dim)

    def from_fourier(self, coeffs: Tensor, dim: int = -1) -> Tensor:
        """Inverse of :meth:`to_fourier` (the basis is orthogonal)."""
        self._check_axis(coeffs, dim)
        m = self.matrix64 if coeffs.dtype == torch.float64 else self.matrix
        return torch.movedim(torch.movedim(coeffs, dim, -1) @ m.to(coeffs.device), -1, dim)

    def to_fourier_2d(self, x: Tensor, dims: tuple[int, int] = (0, 1)) -> Tensor:
        """2-D coefficients over two axes of size p (e.g. ``(a, b)``)."""
        return self.to_fourier(self.to_fourier(x, dims[0]), dims[1])

    def from_fourier_2d(self, coeffs: Tensor, dims: tuple[int, int] = (0, 1)) -> Tensor:
        return self.from_fourier(self.from_fourier(coeffs, dims[1]), dims[0])

    def freq_norms(self, coeffs: Tensor, dim: int = -1) -> Tensor:
        """Combine per-component values along ``dim`` into per-frequency ``√(cos² + sin²)``.

        ``coeffs`` holds non-negative component norms (or signed coefficients) along ``dim``;
        the result has size ``n_freq + 1`` there, index ``k`` = frequency ``k`` (0 = constant).
        """
        self._check_axis(coeffs, dim)
        sq = torch.movedim(coeffs, dim, -1) ** 2
        out = torch.zeros(*sq.shape[:-1], self.n_freq + 1, dtype=sq.dtype, device=sq.device)
        out.index_add_(-1, self.freqs.to(sq.device), sq)
        return torch.movedim(out.sqrt(), -1, dim)


_BASES: dict[int, FourierBasis] = {}


def fourier_basis(p: int) -> FourierBasis:
    """A cached :class:`FourierBasis` for ``p``."""
    if p not in _BASES:
        _BASES[p] = FourierBasis(p)
    return _BASES[p]


def _get(params_or_model, name: str) -> Tensor:
    from .grid import as_params

    params = as_params(params_or_model)
    if name not in params:
        raise AnalysisError(f"parameter {name!r} not found")
    return params[name].detach().float()


def embed_fourier_norms(W_E, p: int | None = None, per: str = "freq") -> Tensor:
    """Fourier norms of the embedding of the residues ``0..p-1``.

    Args:
        W_E: ``[vocab, d_model]`` or stacked ``[ckpt, vocab, d_model]`` (or a model / param dict).
        p: the modulus (default ``vocab - 1``, i.e. the ``=`` row is dropped).
        per: ``"freq"`` → ``[..., n_freq + 1]`` (index k = frequency k) or ``"component"`` →
            ``[..., p]`` in the basis order.

    Notes:
        ``norm_i = ‖(basis @ W_E[:p])[i]‖₂``; per frequency ``√(norm_cos k² + norm_sin k²)``.
    """
    if not torch.is_tensor(W_E):
        W_E = _get(W_E, "embed.W_E")
    p = W_E.shape[-2] - 1 if p is None else p
    B = fourier_basis(p)
    comp = B.to_fourier(W_E[..., :p, :].float(), dim=-2).norm(dim=-1)
    return comp if per == "component" else B.freq_norms(comp, dim=-1)


def _vocab_axis_norms(W: Tensor, p: int, per: str) -> Tensor:
    B = fourier_basis(p)
    if W.shape[-1] != p:
        raise AnalysisError(f"expected the last axis (vocab) of size p = {p}, got shape {list(W.shape)}")
    comp = B.to_fourier(W.float(), dim=-1).norm(dim=-2)
    return comp if per == "component" else B.freq_norms(comp, dim=-1)


def unembed_fourier_norms(W_U, p: int | None = None, per: str = "freq") -> Tensor:
    """Fourier norms of ``W_U [.., d_model, vocab]`` along the output (vocab) axis."""
    if not torch.is_tensor(W_U):
        W_U = _get(W_U, "unembed.W_U")
    return _vocab_axis_norms(W_U, W_U.shape[-1] if p is None else p, per)


def neuron_logit_fourier_norms(W_L, p: int | None = None, per: str = "freq") -> Tensor:
    """Fourier norms of ``W_L = W_out @ W_U`` (``[.., d_mlp, vocab]``) along the vocab axis.

    Accepts ``W_L`` itself, or a model / param dict (then ``W_L`` is computed).
    """
    if not torch.is_tensor(W_L):
        W_L = _get(W_L, "blocks.0.mlp.W_out") @ _get(W_L, "unembed.W_U")
    return _vocab_axis_norms(W_L, W_L.shape[-1] if p is None else p, per)


def gini(x: Tensor, dim: int = -1) -> Tensor:
    """Gini coefficient of non-negative values along ``dim`` (Hurley & Rickard 2009).

    Returns:
        float64 tensor with ``dim`` removed, on the device of ``x``.

    Notes:
        With ``x`` sorted ascending, ``N`` values and ``‖x‖₁ > 0``:
        ``G = 1 − 2 Σ_k (x_(k) / ‖x‖₁) · (N − k + ½) / N``. 0 for equal values, ``1 − 1/N`` for
        a single spike. An all-zero vector has no inequality and gives 0 (the formula is 0/0
        there). Negative values enter by their absolute value.
    """
    x = torch.movedim(x.double(), dim, -1)
    n = x.shape[-1]
    xs, _ = torch.sort(x.abs(), dim=-1)
    k = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    total = xs.sum(-1, keepdim=True)
    g = 1 - 2 * ((xs / total.clamp_min(torch.finfo(x.dtype).tiny)) * (n - k + 0.5) / n).sum(-1)
    return torch.where(total[..., 0] > 0, g, torch.zeros_like(g))


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
            (see :func:`grokinterp.neurons.neuron_key_frequencies`).
        min_fraction: the threshold of the rule, in ``(0, 1]``.
        p: modulus (default from the parameter shapes).
        cfg: the model config (``ModelConfig`` or ``RunConfig``), used by ``"neurons"``: a
            parameter dict of a GELU model needs it, since the config read off the shapes
            assumes ReLU (see :func:`grokinterp.logits.resolve_model`).

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
    if method not in ("W_L", "W_E", "neurons"):
        raise AnalysisError(f"method: unknown key-frequency method {method!r}; use 'W_L', 'W_E' or 'neurons'")
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, (int, float, np.integer, np.floating)) \
            or not 0.0 < float(min_fraction) <= 1.0:
        raise AnalysisError(f"min_fraction: must be a number in (0, 1], got {min_fraction!r}")
    if method == "neurons":
        from .neurons import neuron_key_frequencies

        return neuron_key_frequencies(model_or_params, min_fraction=min_fraction, cfg=cfg)
    norms = (neuron_logit_fourier_norms if method == "W_L" else embed_fourier_norms)(model_or_params, p)
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
