"""Representation theory against known truths: orthogonality, homomorphism on all pairs, Schur
orthogonality, Σ d² = |G| (and its real-form identity), hook lengths, C_n = the Fourier basis, and
planted irreps recovered from synthetic embeddings, unembeddings, neurons and logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from oracles import irrep_columns

from grokinterp.analysis.fourier import FourierBasis, embed_fourier_norms, neuron_logit_fourier_norms
from grokinterp.analysis.groups import (
    embed_irrep_norms,
    frobenius_schur,
    group_basis,
    irreps,
    logit_character_fit,
    logit_irrep_norms_2d,
    model_character_fit,
    neuron_irrep_fve,
    neuron_logit_irrep_norms,
    partitions,
    real_irreps,
    standard_tableaux,
    task_structure,
)
from grokinterp.analysis.keyfreqs import key_irreps
from grokinterp.analysis.logits import logit_cos_fit, logit_fourier_norms_2d
from grokinterp.analysis.neurons import neuron_fve
from grokinterp.analysis.projections import (
    antidiagonal_sums,
    exclude_logits,
    group_filters,
    key_filters,
    restrict_logits,
    structure_projection,
)
from grokinterp.config import ModelConfig
from grokinterp.errors import AnalysisError
from grokinterp.model import HookedGrokTransformer
from grokinterp.model.grid import grid_forward
from grokinterp.tasks import fixed_size, get_group, get_task

GROUPS = ["S3", "S4", "S5", "A3", "A4", "A5", "D3", "D4", "D7", "D8", "C5", "C6", "C7"]


def _group(name):
    return get_group(name[0], int(name[1:]))


def _check_all_pairs(G, ir):
    """ρ(g)ρ(h) = ρ(gh) for every pair, row by row (never |G|² matrices at once)."""
    M = ir.matrices
    worst = 0.0
    for g in range(G.order):
        worst = max(worst, float(np.abs(M[g][None] @ M - M[G.mult[g]]).max()))
    return worst


@pytest.mark.parametrize("name", GROUPS)
def test_irreps_are_orthogonal_homomorphisms(name):
    G = _group(name)
    irs = irreps(G)
    for ir in irs:
        M = ir.matrices
        assert M.shape == (G.order, ir.dim, ir.dim)
        assert np.abs(np.einsum("gji,gjk->gik", M.conj(), M) - np.eye(ir.dim)).max() < 1e-10, ir.name
        assert _check_all_pairs(G, ir) < 1e-10, ir.name
        assert np.allclose(M[0], np.eye(ir.dim))
        assert frobenius_schur(G, ir.character) == (1 if ir.kind == "real" else 0), ir.name
        if ir.kind == "real":
            assert np.isrealobj(M)


@pytest.mark.parametrize("name", GROUPS)
def test_schur_orthogonality_and_dimension_count(name):
    G = _group(name)
    irs = irreps(G)
    chars = np.stack([ir.character for ir in irs])
    gram = chars.conj() @ chars.T / G.order
    assert np.abs(gram - np.eye(len(irs))).max() < 1e-10  # irreducible and pairwise inequivalent
    assert sum(ir.dim ** 2 for ir in irs) == G.order
    assert len(irs) == len(G.conjugacy_classes)  # all of them
    # the real forms: a complex pair counts once, with 2d² basis functions
    real = real_irreps(G)
    assert sum(r.n_functions for r in real) == G.order
    assert sum(r.dim ** 2 if r.kind == "real" else r.dim ** 2 // 2 for r in real) == G.order
    B = group_basis(G).matrix64
    assert torch.allclose(B @ B.T, torch.eye(G.order, dtype=torch.float64), atol=1e-10)
    for r in real:  # every basis function lies in the span of its irrep's matrix elements
        U = irrep_columns(_ts(name), r.index)
        F = torch.tensor(r.functions)
        assert torch.allclose(F @ U @ U.T, F, atol=1e-10)


def _ts(name):
    return task_structure(get_task(name, fixed_size(name)))


def _hook_dim(lam):
    n = sum(lam)
    conj = [sum(1 for x in lam if x > j) for j in range(lam[0])]
    hooks = math.prod(lam[i] - j + conj[j] - i - 1 for i in range(len(lam)) for j in range(lam[i]))
    return math.factorial(n) // hooks


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_young_dimensions_follow_the_hook_length_formula(n):
    lams = partitions(n)
    assert len(lams) == {3: 3, 4: 5, 5: 7, 6: 11}[n]
    assert [len(standard_tableaux(lam)) for lam in lams] == [_hook_dim(lam) for lam in lams]
    assert [ir.dim for ir in irreps(f"S{n}")] == [_hook_dim(lam) for lam in lams]


def test_known_irreps_of_small_groups():
    assert [ir.dim for ir in irreps("S5")] == [1, 4, 5, 6, 5, 4, 1]
    a5 = irreps("A5")
    assert [ir.dim for ir in a5] == [1, 4, 5, 3, 3] and all(ir.kind == "real" for ir in a5)
    assert [ir.name for ir in a5][-2:] == ["[3,1,1]+", "[3,1,1]−"]  # the split of the self-conjugate [3,1,1]
    golden = (1 + 5 ** 0.5) / 2  # A5's 3-dimensional characters take (1 ± √5)/2 on the 5-cycles
    c5 = next(i for i, p in enumerate(get_group("A", 5).elements) if len(_cycles(p)) == 1)  # a 5-cycle
    assert sorted(round(float(ir.character[c5].real), 6) for ir in a5[-2:]) == sorted(
        [round(golden, 6), round(1 - golden, 6)])
    a4 = irreps("A4")
    assert [ir.kind for ir in a4] == ["real", "real", "complex", "complex"]  # ω, ω² from the split of [2,2]
    assert [r.name for r in real_irreps("A4")] == ["[4] trivial", "[3,1] standard", "[2,2]±"]
    d8 = irreps("D8")
    assert [ir.dim for ir in d8] == [1, 1, 1, 1, 2, 2, 2] and [ir.dim for ir in irreps("D7")] == [1, 1, 2, 2, 2]
    with pytest.raises(AnalysisError, match="group"):
        irreps("Q8")


def _cycles(p):
    seen, out = set(), []
    for i in range(len(p)):
        if i not in seen:
            c, j = [], i
            while j not in seen:
                seen.add(j)
                c.append(j)
                j = p[j]
            out.append(c)
    return out


@pytest.mark.parametrize("name", ["S6", "A6"])
def test_irreps_of_the_largest_groups(name):  # a few seconds: every pair of 720² row by row
    G = _group(name)
    irs = irreps(G)
    for ir in irs:
        assert _check_all_pairs(G, ir) < 1e-9, ir.name
    chars = np.stack([ir.character for ir in irs])
    assert np.abs(chars.conj() @ chars.T / G.order - np.eye(len(irs))).max() < 1e-9
    assert sum(ir.dim ** 2 for ir in irs) == G.order


# -- the cyclic group is today's Fourier analysis --------------------------------------------------
@pytest.mark.parametrize("n", [3, 4, 7, 12, 31])
def test_cyclic_group_basis_is_the_fourier_basis(n):
    B, F = group_basis(f"C{n}"), FourierBasis(n)
    assert torch.allclose(B.matrix64, F.matrix64, atol=1e-12)
    assert torch.equal(B.irrep_of_row, F.freqs) and B.labels == F.labels and B.n_irreps == F.n_freq + 1
    x = torch.randn(5, n, 3, dtype=torch.float64)
    assert torch.allclose(B.fold(x.pow(2), 1), F.fold(x.pow(2), 1))


def test_cyclic_transforms_equal_the_fourier_results():
    p = 13
    ts = _ts(f"C{p}")
    g = torch.Generator().manual_seed(0)
    W_E, W_L = torch.randn(3, p + 1, 8, generator=g), torch.randn(3, 16, p, generator=g)
    acts, L = torch.randn(2, p, p, 5, generator=g), torch.randn(2, p, p, p, generator=g)
    assert torch.allclose(embed_irrep_norms(W_E, ts), embed_fourier_norms(W_E), atol=1e-5)
    assert torch.allclose(neuron_logit_irrep_norms(W_L, ts), neuron_logit_fourier_norms(W_L), atol=1e-5)
    assert torch.allclose(neuron_irrep_fve(acts, ts), neuron_fve(acts), atol=1e-12)
    a, b = logit_character_fit(L, ts, [1, 3]), logit_cos_fit(L, [1, 3])
    assert torch.allclose(a.fve, b.fve, atol=1e-12) and torch.allclose(2 * a.alpha, b.alpha, atol=1e-12)
    assert torch.allclose(a.fve_key, b.fve_key, atol=1e-12)
    assert torch.allclose(logit_irrep_norms_2d(L, ts), logit_fourier_norms_2d(L), atol=1e-10)
    S = antidiagonal_sums(L)
    for got, ref in zip(group_filters(ts.label_sums(L), ts, [2, 5]), key_filters(S, [2, 5])):
        assert torch.allclose(got, ref, atol=1e-10)
    assert torch.allclose(restrict_logits(L, [2, 5], ts=ts), restrict_logits(L, [2, 5]), atol=1e-10)
    assert torch.allclose(exclude_logits(L, [2, 5], ts=ts), exclude_logits(L, [2, 5]), atol=1e-10)


# -- projections for any group structure against explicit columns ---------------------------------
@pytest.mark.parametrize("name, keys", [("S4", [1, 2]), ("A4", [2]), ("D5", [2]), ("S4_conj", [1])])
def test_group_projection_equals_brute_force(name, keys):
    ts = _ts(name)
    n = ts.n
    L = torch.randn(2, n, n, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s = ts.coords
    cols = [irrep_columns(ts, k)[s] for k in keys]  # [n², k] on the grid (every pair is in the block here)
    U = torch.cat(cols, 1)
    Q, _ = torch.linalg.qr(U)
    flat = L.reshape(2, n * n, n)
    key_part = Q @ (Q.T @ flat)
    mean = flat.mean(1, keepdim=True)
    assert torch.allclose(structure_projection(L, ts, keys, include_mean=False).reshape(2, n * n, n), key_part,
                          atol=1e-10)
    assert torch.allclose(structure_projection(L, ts, keys).reshape(2, n * n, n), key_part + mean, atol=1e-10)


def test_discrete_log_projection_keeps_the_zero_row_and_column():
    ts = task_structure(get_task("mul", 11))
    L = torch.randn(11, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    R = structure_projection(L, ts, [1, 5])
    outside = ts.coords < 0
    assert torch.equal(R.reshape(121, 11)[outside], L.reshape(121, 11)[outside])
    X = exclude_logits(L, [1, 5], ts=ts).reshape(121, 11)
    assert torch.equal(X[outside], L.reshape(121, 11)[outside])
    # on the block, the projection is onto functions of log a + log b in Z_10
    blk = ts.block
    s = ts.coords[blk].double()
    cols = [torch.ones(len(blk), dtype=torch.float64)]
    for k in (1, 5):
        cols += [c for c in (torch.cos(2 * math.pi * k * s / 10), torch.sin(2 * math.pi * k * s / 10))
                 if c.norm() > 1e-9]
    Q, _ = torch.linalg.qr(torch.stack(cols, 1).double())
    Lb = L.reshape(121, 11)[blk]
    assert torch.allclose(R.reshape(121, 11)[blk], Q @ (Q.T @ Lb), atol=1e-10)


# -- planted irreps are recovered ------------------------------------------------------------------
def _planted(ts, index, d_model=24, seed=0):
    """A [|G|, d_model] embedding whose rows are the matrix elements of real irrep ``index`` mixed randomly."""
    U = irrep_columns(ts, index)  # [|G|, k]
    g = torch.Generator().manual_seed(seed)
    return U @ torch.randn(U.shape[1], d_model, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name, index", [("S5", 3), ("S5", 6), ("A5", 4), ("D7", 3), ("A4", 2), ("S4_xyx", 2)])
def test_planted_irreps_are_recovered(name, index):
    ts = _ts(name)
    m = ts.m
    rows = _planted(ts, index)
    W_E = torch.zeros(ts.n + 1, rows.shape[1], dtype=torch.float64)
    W_E[ts.element_token] = rows
    norms = embed_irrep_norms(W_E.float(), ts)
    assert int(norms[1:].argmax()) + 1 == index
    assert float(norms[index] ** 2 / norms.pow(2).sum()) > 1 - 1e-6
    kf = key_irreps({"embed.W_E": W_E.float()}, ts, method="W_E")
    assert kf.freqs == (index,) and kf.names == (ts.basis.names[index],)
    # an unembedding whose columns carry the irrep
    W_U = torch.zeros(rows.shape[1], ts.n, dtype=torch.float64)
    W_U[:, ts.element_token] = rows.T
    W_out = torch.randn(40, rows.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kf = key_irreps({"blocks.0.mlp.W_out": W_out.float(), "unembed.W_U": W_U.float()}, ts, method="W_L")
    assert kf.freqs == (index,)
    # neurons that are products ρ_ij(g) ρ_kl(h) plus linear terms: FVE 1 for that irrep
    U = irrep_columns(ts, index)
    acts = torch.zeros(ts.n, ts.n, 3, dtype=torch.float64)
    e = ts.element_token
    block = torch.stack([U[:, 0][:, None] * U[:, -1][None, :], U[:, -1][:, None] + 0 * U[:, 0][None, :],
                         U[:, 0][:, None] * U[:, 0][None, :] + U[:, -1][None, :]], -1)
    acts[e[:, None], e[None, :]] = block
    fve = neuron_irrep_fve(acts, ts)
    assert torch.allclose(fve[:, index], torch.ones(3, dtype=torch.float64), atol=1e-10)
    # logits χ_ρ(s(g, h) · c⁻¹): the character fit explains all of it, by that irrep alone
    chi = torch.tensor(ts.basis.irreps[index].character)
    G = ts.group
    t = torch.arange(m)
    s = ts.coords.reshape(ts.n, ts.n)
    u = torch.from_numpy(G.mult[s.clamp_min(0).numpy()[..., None], G.inverse[t.numpy()][None, None, :]])
    L = torch.zeros(ts.n, ts.n, ts.n, dtype=torch.float64)
    L[:, :, e] = 3.0 * chi[u]
    fit = logit_character_fit(L, ts)
    assert abs(float(fit.fve[index]) - 1) < 1e-10 and abs(float(fit.alpha[index]) - 3) < 1e-10
    assert float(fit.fve_total) == pytest.approx(1.0, abs=1e-10)
    assert float(fit.fve_coordinate) == pytest.approx(1.0, abs=1e-10)  # a function of (s, c) alone
    # any function of (s, c) is within fve_coordinate; random logits have about 1/|G| of it
    F = torch.randn(m, ts.n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert float(logit_character_fit(F[s.clamp_min(0)], ts).fve_coordinate) == pytest.approx(1.0, abs=1e-10)
    noise = torch.randn(ts.n, ts.n, ts.n, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert float(logit_character_fit(noise, ts).fve_coordinate) < 3 / m


def test_untrained_group_model_has_no_key_irreps_by_the_norm_rules():
    ts = _ts("S4")
    model = HookedGrokTransformer(ModelConfig(p=24, d_model=64, n_heads=4, d_mlp=256))
    assert key_irreps(model, ts, method="W_L").freqs == ()
    assert key_irreps(model, ts, method="W_E").freqs == ()
    assert key_irreps(model, ts, method="logits").freqs == ()  # no character explains 5 % of random logits
    assert key_irreps(model, ts, method="neurons").freqs == ()  # no neuron is explained by one irrep
    assert key_irreps(model, ts).freqs == () and key_irreps(model, ts).method == "circuit"


def test_model_character_fit_streams_rows():
    ts = _ts("D5")
    cfg = ModelConfig(p=10, d_model=16, n_heads=2, d_mlp=24)
    params = {k: v.detach() for k, v in HookedGrokTransformer(cfg).named_parameters()}
    whole = logit_character_fit(grid_forward(params, cfg).logits, ts, [2])
    part = model_character_fit(params, cfg, ts, [2], rows=3)
    assert torch.allclose(whole.fve, part.fve, atol=1e-10) and torch.allclose(whole.fve_key, part.fve_key)


def test_group_analyses_refuse_bad_input():
    ts = _ts("S3")
    with pytest.raises(AnalysisError, match="irrep 3 is not in 1..2"):
        ts.basis.check_irreps([3])
    with pytest.raises(AnalysisError, match="has size 5"):
        ts.basis.to_basis(torch.zeros(5))
    with pytest.raises(AnalysisError, match="rows"):
        grid_forward({k: v.detach() for k, v in HookedGrokTransformer(ModelConfig(p=6, d_model=8, n_heads=2,
                     d_mlp=8)).named_parameters()}, ModelConfig(p=6, d_model=8, n_heads=2, d_mlp=8), rows=(4, 2))
