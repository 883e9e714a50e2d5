"""Fourier basis, projections, per-frequency norms, Gini and key frequencies against known truths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import grokinterp.analysis.keyfreqs
from grokinterp.analysis.fourier import (
    FourierBasis,
    embed_fourier_norms,
    fourier_basis,
    gini,
    neuron_logit_fourier_norms,
    unembed_fourier_norms,
)
from grokinterp.analysis.keyfreqs import key_frequencies, neuron_key_frequencies
from grokinterp.config import ModelConfig
from grokinterp.errors import AnalysisError
from grokinterp.model import HookedGrokTransformer

PS = (3, 4, 7, 8, 113)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _wave(p: int, k: int, kind: str) -> torch.Tensor:
    """``cos`` / ``sin`` of ``2πk·x/p`` over ``x = 0..p-1`` (float64, not normalised)."""
    x = torch.arange(p, dtype=torch.float64)
    return (torch.cos if kind == "cos" else torch.sin)(2 * math.pi * k * x / p)


# -- the basis ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", PS)
def test_basis_is_orthonormal(p):
    B = FourierBasis(p)
    assert B.matrix64.dtype == torch.float64 and B.matrix64.shape == (p, p)
    eye = torch.eye(p, dtype=torch.float64)
    assert torch.allclose(B.matrix64 @ B.matrix64.T, eye, atol=1e-12)
    assert torch.allclose(B.matrix64.T @ B.matrix64, eye, atol=1e-12)
    assert B.matrix.dtype == torch.float32
    assert torch.allclose(B.matrix.double(), B.matrix64, atol=1e-7)


@pytest.mark.parametrize("p, labels", [
    (3, ("const", "cos 1", "sin 1")),
    (4, ("const", "cos 1", "sin 1", "cos 2")),
    (7, ("const", "cos 1", "sin 1", "cos 2", "sin 2", "cos 3", "sin 3")),
    (8, ("const", "cos 1", "sin 1", "cos 2", "sin 2", "cos 3", "sin 3", "cos 4")),
])
def test_labels_and_order(p, labels):
    B = FourierBasis(p)
    assert B.labels == labels
    assert B.n_freq == p // 2
    assert B.freq_labels == ("const",) + tuple(str(k) for k in range(1, p // 2 + 1))


@pytest.mark.parametrize("p", PS)
def test_rows_are_the_named_waves(p):
    B = FourierBasis(p)
    assert torch.allclose(B.matrix64[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64), atol=1e-15)
    for i, label in enumerate(B.labels[1:], start=1):
        kind, k = label.split()
        want = _wave(p, int(k), kind)
        want = want / want.norm()
        assert torch.allclose(B.matrix64[i], want, atol=1e-12), label
        assert B.index(label) == i
    if p % 2 == 0:  # Nyquist cosine last: (−1)^x / √p
        alt = torch.tensor([(-1.0) ** x for x in range(p)], dtype=torch.float64) / math.sqrt(p)
        assert B.labels[-1] == f"cos {p // 2}"
        assert torch.allclose(B.matrix64[-1], alt, atol=1e-12)
    assert fourier_basis(p) is fourier_basis(p)  # cached


@pytest.mark.parametrize("p, freqs", [
    (3, [0, 1, 1]),
    (4, [0, 1, 1, 2]),
    (7, [0, 1, 1, 2, 2, 3, 3]),
    (8, [0, 1, 1, 2, 2, 3, 3, 4]),
])
def test_freqs_map_components_to_frequencies(p, freqs):
    B = FourierBasis(p)
    assert B.freqs.dtype == torch.int64 and B.freqs.tolist() == freqs
    for label, f in zip(B.labels, B.freqs.tolist()):
        assert f == (0 if label == "const" else int(label.split()[1]))
    assert B.component_mask([p // 2]).tolist() == [f == p // 2 for f in freqs]
    assert B.component_mask([1], include_const=True).tolist() == [f in (0, 1) for f in freqs]


# -- projections -------------------------------------------------------------------------------
@pytest.mark.parametrize("p", (7, 8))
def test_to_fourier_round_trip_and_other_axes(p):
    B = fourier_basis(p)
    x = torch.randn(5, p, 3, dtype=torch.float64, generator=_gen(1))
    c = B.to_fourier(x, dim=1)
    assert c.shape == x.shape and c.dtype == torch.float64
    assert torch.allclose(B.from_fourier(c, dim=1), x, atol=1e-12)
    assert torch.allclose(c.norm(), x.norm(), atol=1e-12)  # orthogonal: Parseval
    assert torch.allclose(c, torch.einsum("ix,nxd->nid", B.matrix64, x), atol=1e-12)
    x32 = x.float()
    assert torch.allclose(B.from_fourier(B.to_fourier(x32, dim=-2), dim=-2), x32, atol=1e-5)
    assert B.to_fourier(x32, dim=1).dtype == torch.float32


@pytest.mark.parametrize("p", (7, 8))
def test_2d_projection_and_round_trip(p):
    B = fourier_basis(p)
    x = torch.randn(p, p, dtype=torch.float64, generator=_gen(2))
    c = B.to_fourier_2d(x)
    assert torch.allclose(c, B.matrix64 @ x @ B.matrix64.T, atol=1e-12)
    assert torch.allclose(B.from_fourier_2d(c), x, atol=1e-12)
    # other axes: [d, a, b] over (1, 2)
    y = torch.randn(3, p, p, dtype=torch.float64, generator=_gen(3))
    cy = B.to_fourier_2d(y, dims=(1, 2))
    for d in range(3):
        assert torch.allclose(cy[d], B.matrix64 @ y[d] @ B.matrix64.T, atol=1e-12)
    assert torch.allclose(B.from_fourier_2d(cy, dims=(1, 2)), y, atol=1e-12)
    # a product of two waves is one coefficient
    wave = torch.outer(_wave(p, 2, "cos"), _wave(p, 3, "sin"))
    cw = B.to_fourier_2d(wave)
    i, j = B.index("cos 2"), B.index("sin 3")
    assert cw[i, j].item() == pytest.approx(p / 2, abs=1e-10)  # ‖cos 2‖ · ‖sin 3‖ = √(p/2)²
    cw[i, j] = 0
    assert cw.abs().max().item() < 1e-10


@pytest.mark.parametrize("p", (7, 8, 113))
def test_projection_equals_explicit_cos_sin_dot_products(p):
    B = fourier_basis(p)
    x = torch.randn(4, p, dtype=torch.float64, generator=_gen(4))
    c = B.to_fourier(x)
    assert torch.allclose(c[:, 0], x.sum(-1) / math.sqrt(p), atol=1e-12)
    for k in range(1, (p - 1) // 2 + 1):
        for kind in ("cos", "sin"):
            want = (x * _wave(p, k, kind)).sum(-1) * math.sqrt(2 / p)
            assert torch.allclose(c[:, B.index(f"{kind} {k}")], want, atol=1e-11), (kind, k)
    if p % 2 == 0:
        assert torch.allclose(c[:, -1], (x * _wave(p, p // 2, "cos")).sum(-1) / math.sqrt(p), atol=1e-12)


@pytest.mark.parametrize("p", (7, 8))
def test_freq_norms_combine_cos_and_sin(p):
    B = fourier_basis(p)
    c = torch.randn(3, p, dtype=torch.float64, generator=_gen(5))
    out = B.freq_norms(c)
    assert out.shape == (3, p // 2 + 1)
    assert torch.allclose(out[:, 0], c[:, 0].abs())
    for k in range(1, (p - 1) // 2 + 1):
        want = torch.sqrt(c[:, B.index(f"cos {k}")] ** 2 + c[:, B.index(f"sin {k}")] ** 2)
        assert torch.allclose(out[:, k], want, atol=1e-14)
    if p % 2 == 0:
        assert torch.allclose(out[:, p // 2], c[:, -1].abs())
    assert torch.allclose(out.pow(2).sum(-1), c.pow(2).sum(-1))  # energy is kept
    assert torch.allclose(B.freq_norms(c.T, dim=0), out.T)


# -- planted frequencies -----------------------------------------------------------------------
def _planted_embed(p: int, freqs, d_model: int = 32, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """``W_E [p + 1, d_model]``: residue rows ``Σ_k cos(kx) u_k + sin(kx) v_k`` (+ a constant and noise)."""
    g = _gen(seed)
    rows = 0.5 * torch.randn(1, d_model, dtype=torch.float64, generator=g).expand(p, d_model)
    for k in freqs:
        u, v = torch.randn(2, d_model, dtype=torch.float64, generator=g)
        rows = rows + _wave(p, k, "cos")[:, None] * u + _wave(p, k, "sin")[:, None] * v
    rows = rows + noise * torch.randn(p, d_model, dtype=torch.float64, generator=g)
    eq = 5 * torch.randn(1, d_model, dtype=torch.float64, generator=g)  # '=' row: must be ignored
    return torch.cat([rows, eq]).float()


def _planted_unembed(p: int, freqs, d_model: int = 32, d_mlp: int = 64, noise: float = 0.01,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """``W_out`` random, ``W_U`` columns ``Σ_k cos(kc) a_k + sin(kc) b_k``: ``W_L`` has only ``freqs``."""
    g = _gen(seed)
    W_U = 0.7 * torch.randn(d_model, 1, dtype=torch.float64, generator=g).expand(d_model, p)
    for k in freqs:
        a, b = torch.randn(2, d_model, 1, dtype=torch.float64, generator=g)
        W_U = W_U + a * _wave(p, k, "cos") + b * _wave(p, k, "sin")
    W_U = W_U + noise * torch.randn(d_model, p, dtype=torch.float64, generator=g)
    W_out = torch.randn(d_mlp, d_model, dtype=torch.float64, generator=g) / math.sqrt(d_model)
    return {"blocks.0.mlp.W_out": W_out.float(), "unembed.W_U": W_U.float()}


PLANTED = [(31, (4, 9, 13)), (30, (2, 11)), (113, (14, 35, 41, 42, 52))]


@pytest.mark.parametrize("p, freqs", PLANTED)
def test_embed_norms_peak_at_planted_frequencies(p, freqs):
    W_E = _planted_embed(p, freqs)
    norms = embed_fourier_norms(W_E)
    assert norms.shape == (p // 2 + 1,)
    top = torch.argsort(norms[1:], descending=True)[: len(freqs)] + 1
    assert sorted(top.tolist()) == list(freqs)
    others = [k for k in range(1, p // 2 + 1) if k not in freqs]
    assert norms[others].max() < 0.1 * norms[list(freqs)].min()
    kf = key_frequencies({"embed.W_E": W_E}, method="W_E")
    assert kf.freqs == tuple(freqs) and kf.method == "W_E"
    assert kf.scores[0] == 0 and kf.scores.sum() == pytest.approx(1.0)
    assert tuple(kf) == kf.freqs and len(kf) == len(freqs)
    comp = embed_fourier_norms(W_E, per="component")
    assert comp.shape == (p,)
    assert torch.allclose(fourier_basis(p).freq_norms(comp), norms)


@pytest.mark.parametrize("p, freqs", PLANTED)
def test_neuron_logit_norms_peak_at_planted_frequencies(p, freqs):
    params = _planted_unembed(p, freqs)
    W_L = params["blocks.0.mlp.W_out"] @ params["unembed.W_U"]
    norms = neuron_logit_fourier_norms(W_L)
    assert torch.allclose(neuron_logit_fourier_norms(params), norms)  # W_L computed from the dict
    top = torch.argsort(norms[1:], descending=True)[: len(freqs)] + 1
    assert sorted(top.tolist()) == list(freqs)
    kf = key_frequencies(params)  # default method W_L
    assert kf.freqs == tuple(freqs) and kf.method == "W_L"
    # W_U alone carries the same frequencies along its vocab axis
    u = unembed_fourier_norms(params["unembed.W_U"])
    assert sorted((torch.argsort(u[1:], descending=True)[: len(freqs)] + 1).tolist()) == list(freqs)


def test_a_planted_frequency_below_the_threshold_is_not_key():
    p = 31  # n_freq = 15: threshold max(5 %, 2/15 ≈ 13.3 %)
    W_E = _planted_embed(p, (4, 9, 13))
    B = fourier_basis(p)
    weak = 0.3 * torch.randn(1, W_E.shape[1], generator=_gen(9))  # share ≈ 0.3² / 3 ≈ 3 %: not key
    W_E[:p] += B.matrix[B.index("cos 6")][:, None] * weak * math.sqrt(p / 2)
    kf = key_frequencies({"embed.W_E": W_E}, method="W_E")
    assert 0.005 < kf.scores[6] < 2 / 15
    assert kf.freqs == (4, 9, 13)


def test_stacked_norms_equal_per_checkpoint_norms():
    p, n = 13, 3
    W_E = torch.stack([_planted_embed(p, (2, 5), seed=s) for s in range(n)])
    ps = [_planted_unembed(p, (1, 6), seed=s) for s in range(n)]
    stacked = {k: torch.stack([q[k] for q in ps]) for k in ps[0]}
    for per in ("freq", "component"):
        E = embed_fourier_norms(W_E, per=per)
        L = neuron_logit_fourier_norms(stacked, per=per)
        U = unembed_fourier_norms(stacked["unembed.W_U"], per=per)
        assert E.shape[0] == L.shape[0] == U.shape[0] == n
        for i in range(n):
            assert torch.allclose(E[i], embed_fourier_norms(W_E[i], per=per), atol=1e-5)
            assert torch.allclose(L[i], neuron_logit_fourier_norms(ps[i], per=per), atol=1e-5)
            assert torch.allclose(U[i], unembed_fourier_norms(ps[i]["unembed.W_U"], per=per), atol=1e-5)


# -- Gini ----------------------------------------------------------------------------------------
def _hurley_rickard(x) -> float:
    """The formula written out: ``1 − 2 Σ_k (x_(k)/‖x‖₁)((N − k + ½)/N)``, k = 1..N ascending."""
    xs = sorted(abs(float(v)) for v in x)
    n, total = len(xs), sum(xs)
    return 1 - 2 * sum(v / total * (n - k + 0.5) / n for k, v in enumerate(xs, start=1))


def test_gini_known_values():
    assert gini(torch.ones(10)).item() == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.full((7,), 3.5)).item() == pytest.approx(0.0, abs=1e-12)
    for n in (1, 2, 5, 56):
        spike = torch.zeros(n)
        spike[n // 2] = 4.0
        assert gini(spike).item() == pytest.approx(1 - 1 / n, abs=1e-12)
    # by hand: sorted [1, 2, 3, 4], ‖x‖₁ = 10, N = 4:
    # Σ = (1·3.5 + 2·2.5 + 3·1.5 + 4·0.5) / 40 = 15/40, G = 1 − 2·15/40 = 0.25
    assert gini(torch.tensor([3.0, 1.0, 4.0, 2.0])).item() == pytest.approx(0.25, abs=1e-12)
    # [0, 0, 1, 3]: Σ = (1·1.5 + 3·0.5) / 16 = 3/16, G = 1 − 6/16 = 0.625
    assert gini(torch.tensor([0.0, 3.0, 0.0, 1.0])).item() == pytest.approx(0.625, abs=1e-12)
    x = torch.rand(20, generator=_gen(6), dtype=torch.float64)
    assert gini(x).item() == pytest.approx(_hurley_rickard(x.tolist()), abs=1e-12)
    assert gini(7 * x).item() == pytest.approx(gini(x).item(), abs=1e-12)  # scale invariant


def test_gini_of_zero_vector_is_zero_and_batches():
    assert gini(torch.zeros(5)).item() == 0.0
    rows = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    out = gini(rows)
    assert out.dtype == torch.float64 and out.shape == (3,)
    assert torch.allclose(out, torch.tensor([0.0, 0.75, 0.0], dtype=torch.float64))
    assert torch.allclose(gini(rows.T, dim=0), out)


# -- key frequencies -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", (7, 13, 31, 37, 41))
def test_flat_spectrum_has_no_key_frequency(p):
    # Every frequency holds the same share 1/n_freq (≥ 5 % for p ≤ 40): none is key.
    B = fourier_basis(p)
    W_E = torch.cat([B.matrix.T, torch.ones(1, p)])  # residue x → its row of basis values
    norms = embed_fourier_norms(W_E)
    assert torch.allclose(norms[1:], torch.full((p // 2,), math.sqrt(2.0)), atol=1e-5)
    kf = key_frequencies({"embed.W_E": W_E}, method="W_E")
    assert kf.freqs == ()
    assert np.allclose(kf.scores[1:], 1 / (p // 2))
    params = {"blocks.0.mlp.W_out": torch.eye(p), "unembed.W_U": B.matrix.clone()}  # W_L = basis
    assert key_frequencies(params).freqs == ()
    assert "2/n_freq" in kf.rule and f"2/{p // 2}" in kf.rule


def test_untrained_model_has_no_key_frequency():
    model = HookedGrokTransformer(ModelConfig(p=31, d_model=64, n_heads=4, d_mlp=128))
    assert key_frequencies(model, method="W_E").freqs == ()
    assert key_frequencies(model, method="W_L").freqs == ()


def test_threshold_is_the_larger_of_min_fraction_and_twice_uniform():
    p = 113  # n_freq = 56: 2/56 ≈ 3.6 % < 5 %
    W_E = _planted_embed(p, (14, 35, 41, 42, 52))
    kf = key_frequencies({"embed.W_E": W_E}, method="W_E")
    assert "= 5.0%" in kf.rule
    strict = key_frequencies({"embed.W_E": W_E}, method="W_E", min_fraction=0.9)
    assert strict.freqs == () and "= 90.0%" in strict.rule
    assert key_frequencies({"embed.W_E": W_E}, method="W_E", min_fraction=0.01).freqs == kf.freqs
    # p = 3: one frequency holds the whole non-constant norm; the bound 2/n_freq is capped at 1
    assert key_frequencies({"embed.W_E": torch.randn(4, 5, generator=_gen(7))}, method="W_E").freqs == (1,)


def test_key_frequencies_refuses_stacked_parameters():
    W_E = torch.stack([_planted_embed(13, (2, 5), seed=s) for s in range(2)])
    with pytest.raises(AnalysisError, match=r"one checkpoint.*\[2, 7\]"):
        key_frequencies({"embed.W_E": W_E}, method="W_E")
    ps = [_planted_unembed(13, (1, 6), seed=s) for s in range(2)]
    with pytest.raises(AnalysisError, match="stacked"):
        key_frequencies({k: torch.stack([q[k] for q in ps]) for k in ps[0]})
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24)
    model = HookedGrokTransformer(cfg)
    stacked = {k: torch.stack([v.detach()] * 2) for k, v in model.named_parameters()}
    for method in ("W_L", "W_E", "neurons"):
        with pytest.raises(AnalysisError, match="one (checkpoint|model)"):
            key_frequencies(stacked, method=method, cfg=cfg)


def test_neurons_method_passes_cfg_through(monkeypatch):
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24, act_fn="gelu")
    model = HookedGrokTransformer(cfg)
    params = {k: v.detach() for k, v in model.named_parameters()}
    seen = {}

    def spy(model_or_params, min_fraction=0.05, cfg=None, **kw):
        seen.update(cfg=cfg, min_fraction=min_fraction)
        return neuron_key_frequencies(model_or_params, min_fraction=min_fraction, cfg=cfg, **kw)

    monkeypatch.setattr(grokinterp.analysis.keyfreqs, "neuron_key_frequencies", spy)
    out = key_frequencies(params, method="neurons", min_fraction=0.2, cfg=cfg)
    assert seen == {"cfg": cfg, "min_fraction": 0.2}
    ref = neuron_key_frequencies(model, min_fraction=0.2)  # the model brings its GELU config
    assert out.freqs == ref.freqs and np.array_equal(out.scores, ref.scores) and out.rule == ref.rule


# -- devices -------------------------------------------------------------------------------------
def test_results_stay_on_the_input_device():
    # 'meta' tensors have no data but refuse to mix with CPU tensors, as CUDA tensors do.
    p, m = 8, "meta"
    B = fourier_basis(p)
    x = torch.empty(3, p, device=m)
    assert B.to_fourier(x).device.type == m and B.from_fourier(x).device.type == m
    assert B.to_fourier_2d(torch.empty(p, p, 2, device=m)).device.type == m
    assert B.freq_norms(x).device.type == m
    assert B.component_mask([1, 2], device=m).device.type == m
    assert embed_fourier_norms(torch.empty(2, p + 1, 5, device=m)).device.type == m
    assert unembed_fourier_norms(torch.empty(5, p, device=m)).device.type == m
    assert neuron_logit_fourier_norms(torch.empty(2, 9, p, device=m)).device.type == m
    assert gini(torch.empty(2, 5, device=m)).device.type == m


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_raises_analysis_error_naming_the_value():
    for p in (2, 1, 0, -3):
        with pytest.raises(AnalysisError, match=rf"got {p}"):
            FourierBasis(p)
    with pytest.raises(AnalysisError, match="7.0"):
        FourierBasis(7.0)
    B = fourier_basis(7)
    with pytest.raises(AnalysisError, match=r"size 8.*p = 7"):
        B.to_fourier(torch.zeros(3, 8))
    with pytest.raises(AnalysisError, match=r"size 3.*p = 7"):
        B.from_fourier(torch.zeros(3, 8), dim=0)
    with pytest.raises(AnalysisError, match="size 6"):
        B.freq_norms(torch.zeros(6))
    with pytest.raises(AnalysisError, match="size 6"):
        B.to_fourier_2d(torch.zeros(7, 6))
    with pytest.raises(AnalysisError, match=r"shape \[4, 8\]"):
        unembed_fourier_norms(torch.zeros(4, 8), p=7)
    with pytest.raises(AnalysisError, match="size 5"):
        embed_fourier_norms(torch.zeros(5, 4), p=7)
    with pytest.raises(AnalysisError, match="'cos 9'"):
        B.index("cos 9")
    with pytest.raises(AnalysisError, match="'tan 1'"):
        B.index("tan 1")
    with pytest.raises(AnalysisError, match=r"frequency 4 is not in 1\.\.3"):
        B.check_freqs([1, 4])
    with pytest.raises(AnalysisError, match="frequency 0"):
        B.component_mask([0])
    with pytest.raises(AnalysisError, match="frequency '1'"):
        B.check_freqs(["1"])
    with pytest.raises(AnalysisError, match="'fft'"):
        key_frequencies({}, method="fft")
    for bad in (0, -0.1, 1.5, "5%"):
        with pytest.raises(AnalysisError, match="min_fraction"):
            key_frequencies({"embed.W_E": torch.zeros(8, 4)}, method="W_E", min_fraction=bad)
    with pytest.raises(AnalysisError, match="'embed.W_E' not found"):
        key_frequencies({"unembed.W_U": torch.zeros(4, 7)}, method="W_E")
