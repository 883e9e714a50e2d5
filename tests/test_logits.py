"""Logit analyses: FFT shortcuts against brute-force projections, planted structure, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokinterp.analysis.fourier import fourier_basis, fourier_coeffs_fft
from grokinterp.analysis.logits import grid_logits, logit_cos_fit, logit_fourier_norms_2d
from grokinterp.analysis.projections import exclude_logits, restrict_logits
from grokinterp.config import ModelConfig
from grokinterp.errors import AnalysisError
from grokinterp.model import HookedGrokTransformer
from grokinterp.model.grid import grid_tokens


def _angles(p: int) -> np.ndarray:
    x = np.arange(p)
    return 2 * np.pi * (x[:, None, None] + x[None, :, None] - x[None, None, :]) / p  # [a, b, c]


def _brute_cos_fit(L: np.ndarray, p: int):
    """α_w and FVE_w by explicit projection on cos(w(a+b−c)) (the "cos cube", small p only)."""
    ang = _angles(p)
    Lc = L - L.mean(-1, keepdims=True)
    total = (Lc ** 2).sum()
    alpha, fve = [0.0], [0.0]
    for w in range(1, p // 2 + 1):
        cw = np.cos(w * ang)
        proj = (L * cw).sum()
        n2 = (cw ** 2).sum()
        alpha.append(proj / n2)
        fve.append(proj ** 2 / n2 / total)
    return np.array(alpha), np.array(fve)


@pytest.mark.parametrize("p", [3, 4, 7, 8, 11])
def test_fourier_coeffs_fft_equals_basis(p):
    g = torch.Generator().manual_seed(p)
    x = torch.randn(3, p, p, 5, generator=g, dtype=torch.float64)
    B = fourier_basis(p)
    torch.testing.assert_close(fourier_coeffs_fft(x, 1), B.to_fourier(x, 1))
    torch.testing.assert_close(fourier_coeffs_fft(x, (1, 2)), B.to_fourier_2d(x, (1, 2)))


@pytest.mark.parametrize("p", [7, 8, 11])
def test_cos_fit_equals_brute_force(p):
    g = torch.Generator().manual_seed(p)
    L = torch.randn(2, p, p, p, generator=g, dtype=torch.float64)
    fit = logit_cos_fit(L, freqs=[1, 2])
    for i in range(2):
        alpha, fve = _brute_cos_fit(L[i].numpy(), p)
        np.testing.assert_allclose(fit.alpha[i].numpy(), alpha, atol=1e-12)
        np.testing.assert_allclose(fit.fve[i].numpy(), fve, atol=1e-12)
        np.testing.assert_allclose(float(fit.fve_key[i]), fve[1] + fve[2], atol=1e-12)
    assert fit.alpha.shape == (2, p // 2 + 1)
    torch.testing.assert_close(fit.fve_total, fit.fve.sum(-1))


@pytest.mark.parametrize("p", [11, 12])
def test_planted_cosines_have_fve_one(p):
    ang = torch.tensor(_angles(p))
    planted = {2: 1.5, 5: -0.7}
    shift = torch.randn(p, p, 1, dtype=torch.float64)  # per-input shifts do not count as variance
    L = sum(a * torch.cos(w * ang) for w, a in planted.items()) + shift
    fit = logit_cos_fit(L.float(), freqs=list(planted))
    assert float(fit.fve_key) == pytest.approx(1.0, abs=1e-6)
    assert float(fit.fve_total) == pytest.approx(1.0, abs=1e-6)
    for w in range(1, p // 2 + 1):
        assert float(fit.alpha[w]) == pytest.approx(planted.get(w, 0.0), abs=1e-5)
    torch.testing.assert_close(fit.fit(p), L - shift, atol=1e-5, rtol=0)


def test_nyquist_cosine_norm():
    p = 8
    L = torch.tensor(np.cos(4 * _angles(p)))  # cos(π(a+b−c)) = ±1: norm² p³
    fit = logit_cos_fit(L)
    assert float(fit.alpha[4]) == pytest.approx(1.0)
    assert float(fit.fve[4]) == pytest.approx(1.0)


@pytest.mark.parametrize("p", [7, 8])
def test_fourier_norms_2d_equal_brute_force(p):
    g = torch.Generator().manual_seed(p)
    L = torch.randn(p, p, p, generator=g, dtype=torch.float64)
    B = fourier_basis(p).matrix64
    C = torch.einsum("ia,jb,abc->ijc", B, B, L)
    comp = logit_fourier_norms_2d(L)
    torch.testing.assert_close(comp, C.pow(2).sum(-1).sqrt())
    torch.testing.assert_close(comp.pow(2).sum(), L.pow(2).sum())  # Parseval
    torch.testing.assert_close(logit_fourier_norms_2d(L, reduce="rms"), comp / math.sqrt(p))
    # per frequency: sum the squared components of each (freq in a, freq in b) block
    freqs = fourier_basis(p).freqs
    n = p // 2 + 1
    want = torch.zeros(n, n, dtype=torch.float64)
    for i in range(p):
        for j in range(p):
            want[freqs[i], freqs[j]] += comp[i, j] ** 2
    torch.testing.assert_close(logit_fourier_norms_2d(L, per="freq"), want.sqrt())
    centred = L - L.mean(-1, keepdim=True)
    torch.testing.assert_close(logit_fourier_norms_2d(L, center=True), logit_fourier_norms_2d(centred))


def _brute_diag_projection(L: np.ndarray, p: int, freqs, include_mean: bool) -> np.ndarray:
    """Least-squares projection of each L[·,·,c] onto {1?, cos(w(a+b)), sin(w(a+b))}."""
    x = np.arange(p)
    s = 2 * np.pi * (x[:, None] + x[None, :]) / p
    cols = [np.ones((p, p))] if include_mean else []
    for w in freqs:
        cols.append(np.cos(w * s))
        if (2 * w) % p:
            cols.append(np.sin(w * s))
    A = np.stack([c.reshape(-1) for c in cols], axis=1)
    coef, *_ = np.linalg.lstsq(A, L.reshape(p * p, p), rcond=None)
    return (A @ coef).reshape(p, p, p)


@pytest.mark.parametrize("p,freqs", [(7, [1, 3]), (8, [2, 4]), (11, [5])])
def test_restrict_and_exclude_equal_brute_force(p, freqs):
    g = torch.Generator().manual_seed(p)
    L = torch.randn(p, p, p, generator=g, dtype=torch.float64)
    keep = _brute_diag_projection(L.numpy(), p, freqs, include_mean=True)
    drop = L.numpy() - _brute_diag_projection(L.numpy(), p, freqs, include_mean=False)
    np.testing.assert_allclose(restrict_logits(L, freqs).numpy(), keep, atol=1e-10)
    np.testing.assert_allclose(exclude_logits(L, freqs).numpy(), drop, atol=1e-10)
    # stacked checkpoints go through unchanged
    both = restrict_logits(torch.stack([L, 2 * L]), freqs)
    torch.testing.assert_close(both[1], 2 * both[0])


def test_keep_all_and_remove_none_leave_logits_unchanged():
    p = 9
    g = torch.Generator().manual_seed(0)
    L = torch.randn(p, p, p, generator=g, dtype=torch.float64)
    torch.testing.assert_close(exclude_logits(L, []), L)
    # logits that depend on (a + b) only: keeping every frequency keeps everything
    G = torch.randn(p, p, generator=g, dtype=torch.float64)
    idx = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % p
    Ls = G[idx]  # [a, b, c]
    torch.testing.assert_close(restrict_logits(Ls, range(1, p // 2 + 1)), Ls)
    torch.testing.assert_close(exclude_logits(Ls, range(1, p // 2 + 1)), Ls.mean((0, 1), keepdim=True).expand_as(Ls))
    # keep-only-nothing leaves the per-output mean
    torch.testing.assert_close(restrict_logits(L, []), L.mean((0, 1), keepdim=True).expand_as(L))


def test_grid_logits_match_model():
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24, init_seed=3)
    model = HookedGrokTransformer(cfg)
    with torch.no_grad():
        want = model(grid_tokens(7))[:, -1].reshape(7, 7, 7)
    torch.testing.assert_close(grid_logits(model), want, atol=1e-5, rtol=1e-5)
    params = {k: v.detach() for k, v in model.named_parameters()}
    stacked = {k: torch.stack([v, v]) for k, v in params.items()}
    out = grid_logits(stacked)  # config read off the shapes
    assert out.shape == (2, 7, 7, 7)
    torch.testing.assert_close(out[1], want, atol=1e-5, rtol=1e-5)


def test_trained_logits_become_fourier(tiny_run):
    init = logit_cos_fit(grid_logits(tiny_run.model(0)))
    final = logit_cos_fit(grid_logits(tiny_run))
    assert float(final.fve_total) > float(init.fve_total) + 0.1


def test_errors():
    with pytest.raises(AnalysisError, match="size p"):
        logit_cos_fit(torch.zeros(7, 7, 8))
    with pytest.raises(AnalysisError, match="frequency 4"):
        logit_cos_fit(torch.zeros(7, 7, 7), freqs=[4])
    with pytest.raises(AnalysisError, match="frequency 0"):
        restrict_logits(torch.zeros(7, 7, 7), [0])
    with pytest.raises(AnalysisError, match="2.5"):
        exclude_logits(torch.zeros(7, 7, 7), [2.5])
    with pytest.raises(AnalysisError, match="expected a tensor"):
        logit_fourier_norms_2d(torch.zeros(7, 7))
    with pytest.raises(AnalysisError, match="per"):
        logit_fourier_norms_2d(torch.zeros(7, 7, 7), per="bogus")
    fit = logit_cos_fit(torch.zeros(7, 7, 7))
    with pytest.raises(AnalysisError, match="p = 9"):
        fit.fit(9)
    with pytest.raises(AnalysisError, match="cannot read the model config"):
        grid_logits({"embed.W_E": torch.zeros(8, 4)})
