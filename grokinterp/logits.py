"""The logits over all ``p²`` inputs and their Fourier structure, computed with FFTs.

The generalizing circuit of Nanda et al. (2023) writes logits of the form
``L[a, b, c] ≈ Σ_w α_w cos(w(a + b − c))`` for a few key frequencies ``w``. This module
measures that fit, the 2-D Fourier norms of the logit maps over ``(a, b)``, and projects the
logits onto / off the ``cos(w(a+b))``, ``sin(w(a+b))`` directions (the restricted and excluded
logits of the progress measures).

Conventions (see also :mod:`grokinterp.fourier` and DESIGN.md):

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

from .config import ModelConfig, RunConfig
from .errors import AnalysisError
from .fourier import fourier_basis
from .grid import as_params, grid_forward
from .progress import _antidiagonal_sums, sum_frequency_projection

__all__ = [
    "grid_logits",
    "LogitCosFit",
    "logit_cos_fit",
    "logit_fourier_norms_2d",
    "restrict_logits",
    "exclude_logits",
    "fourier_coeffs_fft",
    "resolve_model",
]


# -- shared helpers (also used by neurons.py and ablations.py) ---------------------------------
def resolve_model(model_or_params, cfg: ModelConfig | RunConfig | None = None) -> tuple[dict[str, Tensor], ModelConfig]:
    """``(params, ModelConfig)`` of a model, a :class:`~grokinterp.run.Run` or a parameter dict.

    Args:
        model_or_params: a :class:`~grokinterp.model.HookedGrokTransformer` (its ``cfg`` is
            used), a ``Run`` (its last checkpoint), or a ``{name: tensor}`` dict, single or
            stacked ``[ckpt, ...]``.
        cfg: the model config (a ``RunConfig`` is accepted too). Needed for a dict of a GELU
            model: without it the config is read off the parameter shapes with ``act_fn="relu"``.
    """
    if isinstance(cfg, RunConfig):
        cfg = cfg.model
    if hasattr(model_or_params, "split_pairs") and hasattr(model_or_params, "params"):  # a Run
        run = model_or_params
        return run.params(-1), cfg if cfg is not None else run.config.model
    if cfg is None and isinstance(getattr(model_or_params, "cfg", None), ModelConfig):
        cfg = model_or_params.cfg
    params = as_params(model_or_params)
    if cfg is None:
        cfg = _infer_config(params)
    if not isinstance(cfg, ModelConfig):
        raise AnalysisError(f"cfg: expected a ModelConfig or RunConfig, got {type(cfg).__name__}")
    return params, cfg


def _infer_config(params: dict[str, Tensor]) -> ModelConfig:
    needed = ("embed.W_E", "blocks.0.attn.W_Q", "blocks.0.mlp.W_in")
    missing = [n for n in needed if n not in params]
    if missing:
        raise AnalysisError(f"cannot read the model config off the parameters: {missing} missing; pass cfg")
    V, d_model = params["embed.W_E"].shape[-2:]
    n_heads = params["blocks.0.attn.W_Q"].shape[-3]
    d_mlp = params["blocks.0.mlp.W_in"].shape[-1]
    n_layers = 1 + max(int(k.split(".")[1]) for k in params if k.startswith("blocks."))
    return ModelConfig(p=int(V) - 1, d_model=int(d_model), n_heads=int(n_heads), d_mlp=int(d_mlp),
                       n_layers=n_layers)


def _check_p(x: Tensor, dims: Sequence[int], what: str) -> int:
    sizes = {x.shape[d] for d in dims}
    if len(sizes) != 1:
        raise AnalysisError(f"{what}: axes {list(dims)} of shape {list(x.shape)} must all have size p")
    p = sizes.pop()
    if p < 3:
        raise AnalysisError(f"{what}: p must be at least 3, got shape {list(x.shape)}")
    return p


def _freq_of_index(p: int, device: torch.device | str | None = None) -> Tensor:
    """Frequency ``min(u, p − u)`` of each DFT index ``u`` (int64 ``[p]``, on ``device``)."""
    u = torch.arange(p, device=device)
    return torch.minimum(u, p - u)


def fourier_coeffs_fft(x: Tensor, dims: int | Sequence[int] = -1) -> Tensor:
    """Coefficients in the :class:`~grokinterp.fourier.FourierBasis` along one or more axes, by FFT.

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
        return grid_forward(params, cfg).logits


def _check_logits(logits: Tensor) -> int:
    if not torch.is_tensor(logits) or logits.ndim < 3:
        shape = list(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise AnalysisError(f"logits: expected a tensor [..., a, b, vocab], got {shape}")
    return _check_p(logits, (-3, -2, -1), "logits [..., a, b, vocab]")


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
    S = _antidiagonal_sums(L.reshape(-1, p, p, p)).reshape(*lead, p, p)  # [..., s, c]
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
        B = fourier_basis(p)
        n = B.n_freq + 1
        lead = sq.shape[:-2]
        f = B.freqs.to(sq.device)
        out = torch.zeros(*lead, n, p, dtype=sq.dtype, device=sq.device).index_add_(-2, f, sq)
        sq = torch.zeros(*lead, n, n, dtype=sq.dtype, device=sq.device).index_add_(-1, f, out)
    return sq.sqrt()


# -- projections on / off cos(w(a+b)), sin(w(a+b)) ---------------------------------------------
def _diag_projection(logits: Tensor, freqs: Sequence[int], include_mean: bool) -> Tensor:
    # One implementation of the cos/sin(w(a+b)) projection for the whole package: the
    # anti-diagonal-sum FFT of the progress measures (≈ 8× cheaper than a 2-D FFT of the logits).
    _check_logits(logits)
    return sum_frequency_projection(logits, freqs, include_mean=include_mean)


def restrict_logits(logits: Tensor, freqs: Sequence[int]) -> Tensor:
    """Keep only each output's mean and its ``cos(w(a+b))``, ``sin(w(a+b))`` components, ``w ∈ freqs``.

    The logits of the paper's *restricted loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to keep (may be empty: then only the per-output mean is left).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        With the 2-D DFT ``X[u, v, c]`` of ``L[·, ·, c]``, keep the entries ``(0, 0)``,
        ``(w, w)`` and ``(−w, −w)`` and invert: the projection onto span
        ``{1, cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}`` for every ``c``.
    """
    return _diag_projection(logits, freqs, include_mean=True)


def exclude_logits(logits: Tensor, freqs: Sequence[int]) -> Tensor:
    """Remove each output's ``cos(w(a+b))``, ``sin(w(a+b))`` components for ``w ∈ freqs``.

    The logits of the paper's *excluded loss*.

    Args:
        logits: ``[..., a, b, vocab]``.
        freqs: frequencies to remove (empty: the logits are returned unchanged, as float64).

    Returns:
        float64 tensor of the shape of ``logits``.

    Notes:
        ``L − P L`` with ``P`` the projection onto span ``{cos(w(a+b)), sin(w(a+b)) : w ∈ freqs}``
        (2-D DFT entries ``(w, w)`` and ``(−w, −w)``).
    """
    freqs = list(freqs)
    if not freqs:
        _check_logits(logits)
        return logits.double().clone()
    return logits.double() - _diag_projection(logits, freqs, include_mean=False)

