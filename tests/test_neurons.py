"""Neuron analyses: planted frequencies recovered, FFT equals brute force, model agreement, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokinterp.analysis.fourier import fourier_basis
from grokinterp.analysis.keyfreqs import key_frequencies, neuron_key_frequencies
from grokinterp.analysis.neurons import (
    NeuronFourier,
    check_neurons,
    neuron_activations,
    neuron_fourier,
    neuron_fourier_coeffs,
    neuron_fve,
)
from grokinterp.config import ModelConfig
from grokinterp.errors import AnalysisError
from grokinterp.model import HookedGrokTransformer
from grokinterp.model.grid import grid_tokens

P = 13


def _planted(p: int = P) -> tuple[torch.Tensor, dict[int, int]]:
    """Synthetic neurons ``[a, b, neuron]`` and the frequency planted in each clean one."""
    x = torch.arange(p, dtype=torch.float64)
    th = 2 * math.pi * x / p
    A, Bb = th[:, None], th[None, :]
    cos, sin = torch.cos, torch.sin
    g = torch.Generator().manual_seed(0)
    cols = [
        cos(3 * A) * cos(3 * Bb) + 2.0,                            # 0: quadratic, freq 3, plus a constant
        sin(5 * A) + 0.5 * cos(5 * Bb) + sin(5 * A) * sin(5 * Bb),  # 1: linear + quadratic, freq 5
        cos(3 * A) + 0 * Bb,                                      # 2: linear in a only, freq 3
        cos(2 * A) * cos(4 * Bb),                                 # 3: product of two frequencies
        torch.full((p, p), 1.7, dtype=torch.float64),             # 4: constant (dead) neuron
        cos(6 * A) * sin(6 * Bb) + 0.2 * torch.randn(p, p, generator=g, dtype=torch.float64),  # 5: noisy, freq 6
        torch.relu(cos(5 * A) + cos(5 * Bb)),                     # 6: ReLU of a sum: dominant freq 5
    ]
    return torch.stack(cols, dim=-1), {0: 3, 1: 5, 2: 3, 5: 6, 6: 5}


def test_planted_frequencies_recovered():
    acts, planted = _planted()
    fve = neuron_fve(acts)
    assert fve.shape == (7, P // 2 + 1)
    assert torch.all(fve[:, 0] == 0)
    for n, w in planted.items():
        assert int(fve[n].argmax()) == w
    for n in (0, 1, 2):  # exact single-frequency neurons: everything explained
        assert float(fve[n, planted[n]]) == pytest.approx(1.0, abs=1e-12)
    assert float(fve[3].max()) < 1e-12  # cos 2a · cos 4b belongs to no single frequency
    assert float(fve[4].sum()) == 0.0  # constant neuron: no variance
    assert bool(torch.all(fve.sum(-1) <= 1 + 1e-12))

    nf = neuron_fourier(acts)
    assert isinstance(nf, NeuronFourier)
    assert nf.dominant_freq.tolist() == [3, 5, 3, 0, 0, 6, 5]
    assert {k: v.tolist() for k, v in nf.clusters.items()} == {3: [0, 2], 5: [1, 6], 6: [5]}
    assert nf.cluster(3).tolist() == [0, 2]
    assert nf.cluster(1).tolist() == []
    assert nf.neurons_of([3, 5]).tolist() == [0, 1, 2, 6]
    n_in = sum(len(v) for v in nf.clusters.values())
    assert nf.explained_fraction == pytest.approx(n_in / 7)
    assert nf.cluster_sizes["n_neurons"].sum() == n_in
    assert list(nf.cluster_sizes.columns) == ["freq", "n_neurons", "fraction"]
    tab = nf.table()
    assert list(tab.columns) == ["neuron", "dominant_freq", "dominant_fve", "cluster"]
    assert tab.loc[3, "cluster"] == -1 and tab.loc[0, "cluster"] == 3
    assert nf.table([1, 0])["neuron"].tolist() == [0, 1]


def test_threshold_controls_clusters():
    acts, _ = _planted()
    strict = neuron_fourier(acts, threshold=0.999)
    loose = neuron_fourier(acts, threshold=0.0)
    assert strict.explained_fraction <= loose.explained_fraction
    assert 4 not in torch.cat(list(loose.clusters.values())).tolist()  # constant neuron never clusters


@pytest.mark.parametrize("p", [7, 8])
def test_coeffs_and_fve_equal_brute_force(p):
    g = torch.Generator().manual_seed(p)
    acts = torch.randn(p, p, 5, generator=g, dtype=torch.float64)
    B = fourier_basis(p)
    C = torch.einsum("ia,jb,abn->ijn", B.matrix64, B.matrix64, acts)
    torch.testing.assert_close(neuron_fourier_coeffs(acts), C)
    want = torch.zeros(5, p // 2 + 1, dtype=torch.float64)
    f = B.freqs.tolist()
    for n in range(5):
        var = C[..., n].pow(2).sum() - C[0, 0, n] ** 2
        for i in range(p):
            for j in range(p):
                if (i, j) == (0, 0):
                    continue
                if f[i] == 0 or f[j] == 0 or f[i] == f[j]:
                    want[n, max(f[i], f[j])] += C[i, j, n] ** 2 / var
    torch.testing.assert_close(neuron_fve(acts), want)


def test_fve_on_stack_equals_per_checkpoint():
    acts, _ = _planted()
    stack = torch.stack([acts, acts.flip(0), 3 * acts])
    fve = neuron_fve(stack)
    assert fve.shape == (3, 7, P // 2 + 1)
    for i in range(3):
        torch.testing.assert_close(fve[i], neuron_fve(stack[i]))
    torch.testing.assert_close(fve[2], fve[0])  # scale invariant


def test_activations_match_model_hook():
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24, init_seed=1)
    model = HookedGrokTransformer(cfg)
    with torch.no_grad():
        _, cache = model.run_with_cache(grid_tokens(7))
    want = cache["blocks.0.mlp.hook_post"][:, -1].reshape(7, 7, 24)
    acts = neuron_activations(model)
    torch.testing.assert_close(acts, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neuron_activations(model, neurons=[5, 2]), want[..., [2, 5]], atol=1e-5, rtol=1e-5)
    params = {k: torch.stack([v.detach()] * 2) for k, v in model.named_parameters()}
    stacked = neuron_activations(params, cfg)
    assert stacked.shape == (2, 7, 7, 24)
    assert neuron_fve(stacked).shape == (2, 24, 4)


def test_neuron_key_frequencies_from_planted_and_model():
    acts, _ = _planted()
    kf = neuron_key_frequencies(acts)
    assert kf.method == "neurons"
    assert set(kf.freqs) >= {3, 5}
    assert kf.scores[3] >= kf.scores[6]
    assert neuron_key_frequencies(acts, min_fraction=0.5).freqs == ()  # no cluster holds half
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24)
    out = key_frequencies(HookedGrokTransformer(cfg), method="neurons")  # lazy import in fourier
    assert out.method == "neurons" and len(out.scores) == 4


def test_trained_neurons_become_single_frequency(tiny_run):
    init = neuron_fourier(tiny_run.model(0))
    final = neuron_fourier(tiny_run)
    assert float(final.dominant_fve.mean()) > float(init.dominant_fve.mean()) + 0.1
    assert final.explained_fraction >= init.explained_fraction
    kf = neuron_key_frequencies(tiny_run, threshold=0.5)
    assert 1 <= len(kf) <= tiny_run.p // 2
    assert set(neuron_fourier(tiny_run, threshold=0.5).clusters) >= set(kf.freqs)


def test_errors():
    with pytest.raises(AnalysisError, match="neuron index 24 is out of range"):
        check_neurons([3, 24], 24)
    with pytest.raises(AnalysisError, match="neuron index -1"):
        check_neurons(-1, 24)
    with pytest.raises(AnalysisError, match="'a'"):
        check_neurons(["a"], 24)
    with pytest.raises(AnalysisError, match="empty"):
        check_neurons([], 24)
    assert check_neurons(np.array([4, 1, 4]), 24).tolist() == [1, 4]
    assert check_neurons([], 24, allow_empty=True).tolist() == []
    cfg = ModelConfig(p=7, d_model=16, n_heads=2, d_mlp=24)
    with pytest.raises(AnalysisError, match="neuron index 99"):
        neuron_activations(HookedGrokTransformer(cfg), neurons=[99])
    with pytest.raises(AnalysisError, match="size p"):
        neuron_fve(torch.zeros(7, 8, 3))
    with pytest.raises(AnalysisError, match="expected a tensor"):
        neuron_fve(torch.zeros(7, 7))
    with pytest.raises(AnalysisError, match="neuron_fve for a stack"):
        neuron_fourier(torch.zeros(2, 7, 7, 3))
    with pytest.raises(AnalysisError, match="threshold"):
        neuron_fourier(torch.zeros(7, 7, 3), threshold=1.5)
    with pytest.raises(AnalysisError, match="min_fraction"):
        neuron_key_frequencies(torch.zeros(7, 7, 3), min_fraction=0)
    nf = neuron_fourier(_planted()[0])
    with pytest.raises(AnalysisError, match="frequency 7"):
        nf.cluster(7)
    with pytest.raises(AnalysisError, match="neuron index 7"):
        nf.table([7])
