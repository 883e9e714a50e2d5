"""The logits over all ``p²`` inputs and their Fourier structure, computed with FFTs.

The generalizing circuit of Nanda et al. (2023) writes logits of the form
``L[a, b, c] ≈ Σ_w α_w cos(w(a + b − c))`` for a few key frequencies ``w``. This module
measures that fit, the 2-D Fourier norms of the logit maps over ``(a, b)``, and projects the
logits onto / off the ``cos(w(a+b))``, ``sin(w(a+b))`` directions (the restricted and excluded
logits of the progress measures).

Conventions (see also :mod:`grokinterp.analysis.fourier` and docs/design.md):

* ``logits`` are ``[a, b, vocab]`` (``vocab = c = p``) or stacked ``[ckpt, a, b, vocab]``; every
  function here works on any number of leading axes.
* Frequency ``w`` means the angle ``2πw·x/p``; index ``k`` of a per-frequency vector is
  frequency ``k`` (index 0 = the constant, which carries no ``cos(w(a+b−c))`` term).
* The fraction of variance is taken with respect to the logits centred over ``c`` for each input
  (``L − mean_c L``): a per-input shift does not change the softmax.
* Nothing here builds the ``p³ × n_freq`` "cos cube": the projection onto ``cos(w(a+b−c))``
  is a 3-D DFT coefficient, read off a 2-D FFT of the sums along the diagonals ``a + b ≡ s``;
  the components along ``cos(w(a+b))``, ``sin(w(a+b))`` are the 2-D DFT entries ``(w, w)``
  and ``(−w, −w)``. The tests check every shortcut against the brute-force projection.

Example:
    >>> L = grid_logits(run.model(-1))                  # doctest: +SKIP
    >>> L.shape                          # [p, p, p]  # doctest: +SKIP
    >>> fit = logit_cos_fit(L, freqs=(14, 35, 41, 42, 52))   # doctest: +SKIP
    >>> float(fit.fve_key)               # ≈ 0.95 in the paper  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError
from ..model.grid import grid_outputs
from .fourier import fourier_basis, fourier_coeffs_fft
from .inputs import check_square_axes, resolve_model
from .projections import antidiagonal_sums

__all__ = [
    "grid_logits",
    "LogitCosFit",
    "logit_cos_fit",
    "logit_fourier_norms_2d",
]


# -- logits on the grid ------------------------------------------------------------------------
def grid_logits(model_or_params, cfg: ModelConfig | RunConfig | None = None) -> Tensor:
    """Final-position logits of every input ``(a, b)``.

    Args:
        model_or_params: a model, a ``Run`` (last checkpoint), or a parameter dict, single or
            stacked ``[ckpt, ...]``.
        cfg: the model config (see :func:`resolve_model`).

    Returns:
        float32 ``[p, p, vocab]`` (``[a, b, c]``), or ``[ckpt, p, p, vocab]`` for a stack.
    """
    params, cfg = resolve_model(model_or_params, cfg)
    with torch.no_grad():
        return grid_outputs(params, cfg).logits


def _check_logits(logits: Tensor) -> int:
    return check_square_axes(logits, (-3, -2, -1), "logits [..., a, b, vocab]")


# -- the cos(w(a+b−c)) fit ---------------------------------------------------------------------
@dataclass(frozen=True)
class LogitCosFit:
    """How well ``Σ_w α_w cos(w(a+b−c))`` describes the logits.

    Attributes:
        alpha: ``[..., n_freq + 1]`` least-squares coefficient ``α_w`` of each frequency (index
            ``w``; index 0 is 0).
        fve: ``[..., n_freq + 1]`` fraction of the (centred) logit variance explained by each
            frequency's term alone (index 0 is 0).
        fve_total: ``[...]`` fraction explained by all frequencies together (``fve.sum(-1)``).
        freqs: the frequency set asked for (sorted), or ``None``.
        fve_key: ``[...]`` fraction explained by the terms of ``freqs`` (``None`` without freqs).
    """

    alpha: Tensor
    fve: Tensor
    fve_total: Tensor
    freqs: tuple[int, ...] | None = None
    fve_key: Tensor | None = None

    def fit(self, p: int | None = None) -> Tensor:
        """The fitted logits ``Σ_{w ∈ freqs} α_w cos(w(a+b−c))`` (all w without freqs): ``[..., p, p, p]``."""
        n_freq = self.alpha.shape[-1] - 1
        p = 2 * n_freq + 1 if p is None else p
        if p // 2 != n_freq:
            raise AnalysisError(f"p = {p} does not match the fit's {n_freq} frequencies")
        ws = list(range(1, n_freq + 1)) if self.freqs is None else list(self.freqs)
        dev = self.alpha.device
        x = torch.arange(p, dtype=torch.float64, device=dev)
        ang = (x[:, None, None] + x[None, :, None] - x[None, None, :]) * (2 * math.pi / p)
        out = torch.zeros(*self.alpha.shape[:-1], p, p, p, dtype=torch.float64, device=dev)
        for w in ws:  # one p³ map per frequency, never the whole cube
            out = out + self.alpha[..., w, None, None, None] * torch.cos(w * ang)
        return out


def logit_cos_fit(logits: Tensor, freqs: Sequence[int] | None = None) -> LogitCosFit:
    """Project the logits on ``cos(w(a+b−c))`` for every frequency ``w``.

    Args:
        logits: ``[..., a, b, vocab]`` with ``a = b = vocab = p``.
        freqs: optional frequency set (e.g. the key frequencies) whose joint fraction of variance
            is reported as ``fve_key``.

    Returns:
        :class:`LogitCosFit` with leading axes of ``logits`` kept. Memory is a float64 copy of
        ``logits``: feed long stacks of checkpoints in chunks.

    Notes:
        With ``θ_w = 2πw(a+b−c)/p`` and the 3-D DFT ``F[u,v,t] = Σ L e^{−2πi(ua+vb+tc)/p}``:
        ``⟨L, cos θ_w⟩ = Re F[w, w, −w] = Re fft2(S)[w, −w]`` where ``S[s, c] = Σ_{a+b≡s} L[a,b,c]``.
        The cosines are orthogonal, ``‖cos θ_w‖² = p³/2`` (``p³`` for the Nyquist ``w = p/2``),
        ``α_w = ⟨L, cos θ_w⟩ / ‖cos θ_w‖²`` and
        ``FVE_w = ⟨L, cos θ_w⟩² / (‖cos θ_w‖² · ‖L − mean_c L‖²)``.
    """
    p = _check_logits(logits)
    B = fourier_basis(p)
    key = tuple(B.check_freqs(freqs)) if freqs is not None else None
    L = logits.double()
    lead = L.shape[:-3]
    dev = L.device
    S = antidiagonal_sums(L.reshape(-1, p, p, p)).reshape(*lead, p, p)  # [..., s, c]
    Fh = torch.fft.fft2(S)  # [..., u (over s), t (over c)]
    w = torch.arange(1, B.n_freq + 1, device=dev)
    proj = Fh[..., w, (-w).remainder(p)].real  # [..., n_freq]
    norm2 = torch.full((B.n_freq,), p ** 3 / 2, dtype=torch.float64, device=dev)
    if p % 2 == 0:
        norm2[-1] = p ** 3
    total = (L - L.mean(-1, keepdim=True)).pow(2).sum((-3, -2, -1))
    zero = torch.zeros(*lead, 1, dtype=torch.float64, device=dev)
    alpha = torch.cat([zero, proj / norm2], dim=-1)
    fve = torch.cat([zero, proj ** 2 / norm2 / total.clamp_min(1e-300)[..., None]], dim=-1)
    fve_key = fve[..., list(key)].sum(-1) if key is not None else None
    return LogitCosFit(alpha=alpha, fve=fve, fve_total=fve.sum(-1), freqs=key, fve_key=fve_key)


# -- 2-D Fourier norms over (a, b) -------------------------------------------------------------
def logit_fourier_norms_2d(logits: Tensor, per: str = "component", reduce: str = "norm",
                           center: bool = False) -> Tensor:
    """2-D Fourier norms of the logit maps ``L[·, ·, c]`` over ``(a, b)``, combined over ``c``.

    Args:
        logits: ``[..., a, b, vocab]``.
        per: ``"component"`` → ``[..., p, p]`` in the basis order of both axes (rows: the
            component in ``a``, columns: in ``b``); ``"freq"`` → ``[..., n_freq + 1, n_freq + 1]``,
            cos and sin combined as ``√(Σ coeff²)`` (index k = frequency k, 0 = constant).
        reduce: ``"norm"`` (root of the sum of squares over ``c``) or ``"rms"`` (root mean square).
        center: subtract each input's mean over ``c`` first.

    Returns:
        float64 tensor as described.

    Notes:
        ``C[i, j, c] = Σ_{a,b} B[i, a] B[j, b] L[a, b, c]`` (by FFT, see
        :func:`fourier_coeffs_fft`), ``N[i, j] = √(Σ_c C[i, j, c]²)``. The squared norms sum to
        ``‖L‖²`` (Parseval).
    """
    p = _check_logits(logits)
    if per not in ("component", "freq"):
        raise AnalysisError(f"per: expected 'component' or 'freq', got {per!r}")
    if reduce not in ("norm", "rms"):
        raise AnalysisError(f"reduce: expected 'norm' or 'rms', got {reduce!r}")
    L = logits.double()
    if center:
        L = L - L.mean(-1, keepdim=True)
    sq = fourier_coeffs_fft(L, (-3, -2)).pow(2).sum(-1)  # [..., i, j]
    if reduce == "rms":
        sq = sq / p
    if per == "freq":
        sq = fourier_basis(p).fold(sq, (-2, -1))
    return sq.sqrt()
