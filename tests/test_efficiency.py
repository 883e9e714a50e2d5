"""Circuit efficiency (grokinterp.analysis.efficiency) against known truths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import grokinterp as gi
from grokinterp.analysis.efficiency import (
    crossing,
    efficiency,
    efficiency_table,
    homogeneity_degree,
    logit_margin,
    logit_norm,
    parameter_norm,
)
from grokinterp.errors import AnalysisError
from grokinterp.model.families import family_of


def _mlp(d_embed: int, seed: int = 0):
    """A bias-free ReLU MLP of the ``mlp`` family: homogeneous of degree 2 (one-hot input: hidden and
    unembedding) or 3 (with an embedding)."""
    cfg = gi.make_config("tiny", p=11, family="mlp", d_embed=d_embed, d_hidden=24, hidden_bias=False,
                         unembed_bias=False, init_seed=seed).model
    fam = family_of(cfg)
    params = {k: v.detach().double() for k, v in fam.hooked(cfg).named_parameters()}
    a, b = np.divmod(np.arange(11 * 11), 11)
    tokens = torch.from_numpy(np.stack([a, b, np.full_like(a, 11)], 1))
    labels = torch.from_numpy((a + b) % 11)

    def fn(ps):
        return fam.forward({k: v.unsqueeze(0) for k, v in ps.items()}, tokens, cfg)[0]
    return params, fn, labels


@pytest.mark.parametrize("d_embed, L", [(0, 2), (8, 3)])
def test_homogeneous_network_oracle(d_embed, L):
    params, fn, labels = _mlp(d_embed)
    assert not any(k.startswith(("hidden.0.b", "unembed.b")) for k in params)  # bias-free
    assert homogeneity_degree(fn, params) == pytest.approx(L, abs=1e-6)
    z = fn(params)
    for c in (0.5, 3.0):
        sp = {k: v * c for k, v in params.items()}
        zc = fn(sp)
        assert torch.allclose(zc, c ** L * z, rtol=1e-9, atol=1e-12)  # logits scale by c^L
        assert parameter_norm(sp) == pytest.approx(c * parameter_norm(params), rel=1e-12)
        assert logit_margin(zc, labels) == pytest.approx(c ** L * logit_margin(z, labels), rel=1e-9)
        # the degree-L efficiency is scale-free; the plain ratio scales by c^(L−1)
        assert efficiency(zc, labels, sp, L) == pytest.approx(efficiency(z, labels, params, L), rel=1e-9)
        assert efficiency(zc, labels, sp, 1) == pytest.approx(c ** (L - 1) * efficiency(z, labels, params, 1),
                                                              rel=1e-9)


def test_degree_with_biases():
    # a first-layer bias sits on a path of two parameters as its weights do (still degree 2); an unembedding
    # bias is a path of one: the network is no longer homogeneous
    for hidden_bias, unembed_bias, homogeneous in ((True, False, True), (False, True, False)):
        _check_degree(hidden_bias, unembed_bias, homogeneous)


def _check_degree(hidden_bias, unembed_bias, homogeneous):
    cfg = gi.make_config("tiny", p=11, family="mlp", d_embed=0, d_hidden=24, hidden_bias=hidden_bias,
                         unembed_bias=unembed_bias).model
    fam = family_of(cfg)
    params = {k: v.detach().double() + 0.3 for k, v in fam.hooked(cfg).named_parameters()}
    tokens = torch.tensor([[1, 2, 11], [3, 4, 11], [5, 9, 11]])

    def fn(ps):
        return fam.forward({k: v.unsqueeze(0) for k, v in ps.items()}, tokens, cfg)[0]
    assert (abs(homogeneity_degree(fn, params) - 2) < 1e-9) == homogeneous


def test_margin_and_norm_by_hand():
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    # centred: row 0 → [2, −1, −1], row 1 → [−1, 0, 1]
    assert logit_margin(z, y) == pytest.approx((2 + 1) / 2)
    assert logit_norm(z) == pytest.approx(math.sqrt((6 + 2) / 2))
    assert parameter_norm({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}) == pytest.approx(5.0)
    with pytest.raises(AnalysisError, match="labels"):
        logit_margin(z, torch.tensor([0, 3]))


def test_crossing_recovers_a_planted_point():
    D = np.array([100, 200, 400, 800, 1600])
    y = 10 * (D / 100) ** 0.5  # power law: crosses 20 at D = 400 · ... exactly where 10 √(D/100) = 20 → D = 400
    assert crossing(D, y, 20.0) == pytest.approx(400.0)
    assert crossing(D, y, 25.0) == pytest.approx(625.0, rel=1e-9)  # log-log interpolation of a power law is exact
    assert crossing(D, y, 100.0) is None
    assert crossing(D, y, 10 * np.sqrt(D / 100) * 0 + 30.0) == pytest.approx(900.0, rel=1e-9)
    with pytest.raises(AnalysisError, match="increasing"):
        crossing(D[::-1], y, 20.0)


def test_table_matches_what_training_recorded(tmp_path):
    # the table's loss and accuracy on the labels trained on equal the trainer's own records (random labels too)
    for rl in (False, True):
        cfg = gi.make_config("tiny", p=17, frac_train=0.6, d_model=32, n_heads=2, d_mlp=64, epochs=20, every=10,
                             log_early=0, eval_every=10, device="cpu", random_labels=rl)
        run = gi.train(cfg, tmp_path / f"r{rl}", progress=False)
        tab = efficiency_table(run)
        ev = run.evals.set_index("epoch")
        for _, row in tab.iterrows():
            e = int(row.epoch)
            assert row.train_loss == pytest.approx(ev.train_loss[e], rel=1e-4, abs=1e-6)
            assert row.train_acc == pytest.approx(ev.train_acc[e], abs=1e-9)
            params = run.params(e)
            assert row.param_norm == pytest.approx(math.sqrt(sum(float(v.double().pow(2).sum())
                                                                 for v in params.values())), rel=1e-9)
            assert row.efficiency_1 == pytest.approx(row.margin / row.param_norm)
