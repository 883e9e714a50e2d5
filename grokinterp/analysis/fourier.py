"""Fourier analysis over Z_p: an orthonormal basis with named components, projections,
per-frequency norms of W_E / W_U / W_L (one model or a stack of checkpoints), FFT shortcuts,
the one fold of components into frequencies, and Gini coefficients. Key frequencies live in
:mod:`~grokinterp.analysis.keyfreqs`.

Conventions (also in docs/design.md):

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
from functools import cached_property
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import AnalysisError
from ..model.grid import neuron_logit_map
from .inputs import as_params, check_freq_list

__all__ = [
    "FourierBasis",
    "fourier_basis",
    "embed_fourier_norms",
    "unembed_fourier_norms",
    "neuron_logit_fourier_norms",
    "neuron_logit_matrix",
    "gini",
    "fourier_coeffs_fft",
    "dft_index_freqs",
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
        return check_freq_list(self.p, freqs)

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

    def fold(self, sq: Tensor, dims: int | Sequence[int] = -1) -> Tensor:
        """Sum squared per-component values into per-frequency values along each axis in ``dims``.

        The one frequency fold of the package: an axis of size ``p`` in the basis order becomes
        an axis of size ``n_freq + 1`` (index ``k`` = frequency ``k``, 0 = the constant), holding
        ``Σ`` of the entries of ``cos k`` and ``sin k``. Over two axes (a 2-D spectrum) entry
        ``[k, l]`` sums the four components ``(cos|sin k) ⊗ (cos|sin l)``.
        """
        for d in ([dims] if isinstance(dims, int) else list(dims)):
            self._check_axis(sq, d)
            d = d % sq.ndim
            shape = list(sq.shape)
            shape[d] = self.n_freq + 1
            out = torch.zeros(shape, dtype=sq.dtype, device=sq.device)
            sq = out.index_add_(d, self.freqs.to(sq.device), sq)
        return sq

    def freq_norms(self, coeffs: Tensor, dim: int = -1) -> Tensor:
        """Combine per-component values along ``dim`` into per-frequency ``√(cos² + sin²)``.

        ``coeffs`` holds non-negative component norms (or signed coefficients) along ``dim``;
        the result has size ``n_freq + 1`` there, index ``k`` = frequency ``k`` (0 = constant).
        """
        return self.fold(coeffs ** 2, dim).sqrt()


_BASES: dict[int, FourierBasis] = {}


def fourier_basis(p: int) -> FourierBasis:
    """A cached :class:`FourierBasis` for ``p``."""
    if p not in _BASES:
        _BASES[p] = FourierBasis(p)
    return _BASES[p]


def _get(params_or_model, name: str) -> Tensor:
    params = as_params(params_or_model)
    if name not in params:
        raise AnalysisError(f"parameter {name!r} not found")
    return params[name].detach().float()


def _model_p(model: Any) -> int | None:
    """``p`` of a model that carries its config (``None``: read it off the shapes)."""
    cfg = getattr(model, "cfg", None)
    return int(cfg.p) if hasattr(cfg, "p") else None


def neuron_logit_matrix(params_or_model) -> Tensor:
    """The neurons' map to the logits of a model / parameter dict (:func:`~grokinterp.model.grid.neuron_logit_map`):
    ``W_out W_U`` of a transformer's last block, ``W_U`` of an MLP."""
    params = as_params(params_or_model)
    cfg = getattr(params_or_model, "cfg", None)
    if cfg is None:
        if any(k.startswith("hidden.") for k in params):
            cfg = SimpleNamespace(family="mlp", n_hidden_layers=1 + max(int(k.split(".")[1]) for k in params
                                                                         if k.startswith("hidden.")))
        else:
            layers = [int(k.split(".")[1]) for k in params if k.startswith("blocks.") and k.endswith(".mlp.W_out")]
            cfg = SimpleNamespace(family="transformer", n_layers=1 + max(layers, default=0))
    W_L, why = neuron_logit_map(params, cfg)
    if W_L is None:
        raise AnalysisError(why)
    return W_L.detach().float()


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
        p = _model_p(W_E) if p is None else p
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
        W_L = neuron_logit_matrix(W_L)
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


def dft_index_freqs(p: int, device: torch.device | str | None = None) -> Tensor:
    """Frequency ``min(u, p − u)`` of each DFT index ``u`` (int64 ``[p]``, on ``device``)."""
    u = torch.arange(p, device=device)
    return torch.minimum(u, p - u)


def fourier_coeffs_fft(x: Tensor, dims: int | Sequence[int] = -1) -> Tensor:
    """Coefficients in the :class:`~grokinterp.analysis.fourier.FourierBasis` along one or more axes, by FFT.

    Equal to ``fourier_basis(p).to_fourier(x, dim)`` applied along each axis in ``dims``, in
    ``O(p log p)`` per line instead of ``O(p²)``. Computed in float64.

    Args:
        x: real tensor whose axes ``dims`` have size ``p``.
        dims: an axis or a sequence of axes.

    Returns:
        float64 tensor of the shape of ``x``; along each axis in ``dims`` the components are in
        the basis order ``const, cos 1, sin 1, ..., (cos p/2)``.

    Notes:
        With ``X_k = Σ_x x[x] e^{−2πikx/p}`` (``rfft``): ``const = X_0/√p``,
        ``cos k = √(2/p) Re X_k``, ``sin k = −√(2/p) Im X_k`` and, for even p,
        ``cos p/2 = X_{p/2}/√p``.
    """
    dims = [dims] if isinstance(dims, int) else list(dims)
    out = x.double()
    for d in dims:
        p = out.shape[d]
        if p < 3:
            raise AnalysisError(f"axis {d} of a tensor of shape {list(x.shape)} has size {p}; need p ≥ 3")
        X = torch.movedim(torch.fft.rfft(out, dim=d), d, -1)
        m = (p - 1) // 2
        pairs = torch.stack([X.real[..., 1:m + 1], -X.imag[..., 1:m + 1]], dim=-1)
        parts = [X.real[..., :1] / math.sqrt(p), pairs.flatten(-2) * math.sqrt(2 / p)]
        if p % 2 == 0:
            parts.append(X.real[..., p // 2: p // 2 + 1] / math.sqrt(p))
        out = torch.movedim(torch.cat(parts, dim=-1), -1, d)
    return out
