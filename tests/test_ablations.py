"""Circuit ablations: identities, agreement with hook-based ablations, trained-run sanity, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from grokinterp.analysis.ablations import (
    COLUMNS,
    SPLITS,
    ablate_embed_freqs,
    ablate_heads,
    ablate_logit_freqs,
    ablate_neuron_clusters,
    ablate_neurons,
    ablation_table,
    ablation_target,
    approximate_neurons,
    baseline,
    evaluate_logits,
    neuron_approximation,
    project_embedding,
)
from grokinterp.analysis.fourier import fourier_basis
from grokinterp.analysis.keyfreqs import key_frequencies
from grokinterp.config import ModelConfig
from grokinterp.errors import AnalysisError
from grokinterp.model import HookedGrokTransformer
from grokinterp.model.grid import grid_tokens

P = 11


@pytest.fixture(scope="module")
def small():
    """A random model (p = 11) and a fixed 50 % split of the grid."""
    cfg = ModelConfig(p=P, d_model=16, n_heads=2, d_mlp=24, init_seed=4)
    model = HookedGrokTransformer(cfg)
    train = np.sort(np.random.default_rng(0).permutation(P * P)[: P * P // 2]).astype(np.int64)
    return model, train, ablation_target(model, train)


def _ce(logits: torch.Tensor, target, split: str) -> tuple[float, float]:
    idx = target.splits[split]
    y = target.labels[idx]
    lg = logits.reshape(P * P, -1)[idx].double()
    return float(F.cross_entropy(lg, y)), float((lg.argmax(-1) == y).double().mean())


def _hooked_logits(model, hooks) -> torch.Tensor:
    with torch.no_grad():
        out = model.run_with_hooks(grid_tokens(P), fwd_hooks=hooks)
    return out[:, -1]


def _row(df, ablation=None, split="train"):
    sub = df[(df["split"] == split) & ((df["ablation"] != "none") if ablation is None else (df["ablation"] == ablation))]
    assert len(sub) == 1
    return sub.iloc[0]


def test_layout_and_baseline(small):
    model, train, t = small
    df = baseline(t)
    assert tuple(df.columns) == COLUMNS
    assert tuple(df["split"]) == SPLITS and set(df["ablation"]) == {"none"}
    assert list(df["n"]) == [len(train), P * P - len(train), P * P]
    logits = _hooked_logits(model, [])
    for split in SPLITS:
        loss, acc = _ce(logits, t, split)
        r = _row(df, "none", split)
        assert r["loss"] == pytest.approx(loss, rel=1e-5) and r["acc"] == pytest.approx(acc)
    # the same table from a (model, train_pairs) tuple
    assert baseline((model, train)).equals(df)


def test_removing_nothing_and_keeping_everything_change_nothing(small):
    _, _, t = small
    base = baseline(t)
    all_freqs = range(1, P // 2 + 1)
    for df in (ablate_logit_freqs(t, [], "remove"),
               ablate_embed_freqs(t, [], "remove"),
               ablate_embed_freqs(t, all_freqs, "keep")):
        assert tuple(df.columns) == COLUMNS and len(df) == 6
        for split in SPLITS:
            assert _row(df, None, split)["loss"] == pytest.approx(_row(base, "none", split)["loss"], rel=1e-5)
    W_E = t.params["embed.W_E"]
    torch.testing.assert_close(project_embedding(W_E, all_freqs, "keep"), W_E, atol=1e-5, rtol=0)
    torch.testing.assert_close(project_embedding(W_E, [], "remove"), W_E, atol=1e-5, rtol=0)


def test_project_embedding_splits_components():
    g = torch.Generator().manual_seed(0)
    W_E = torch.randn(P + 1, 6, generator=g)
    keep = project_embedding(W_E, [2, 5], "keep")
    drop = project_embedding(W_E, [2, 5], "remove")
    B = fourier_basis(P)
    const = B.matrix[0][:, None] * (B.matrix[0] @ W_E[:P])  # the constant component, kept by both
    torch.testing.assert_close(keep[:P] + drop[:P], W_E[:P] + const, atol=1e-5, rtol=0)
    torch.testing.assert_close(keep[P], W_E[P])  # '=' row untouched
    coeffs = B.to_fourier(keep[:P], dim=0)
    other = ~B.component_mask([2, 5], include_const=True)
    assert float(coeffs[other].abs().max()) < 1e-5


def test_keep_logit_freqs_matches_restriction(small):
    _, _, t = small
    from grokinterp.analysis.logits import grid_logits
    from grokinterp.analysis.projections import restrict_logits

    L = restrict_logits(grid_logits(t.params, t.cfg), [1, 4])
    df = ablate_logit_freqs(t, [1, 4], "keep")
    assert _row(df)["loss"] == pytest.approx(_ce(L, t, "train")[0], rel=1e-9)
    assert df["component"].tolist() == ["none"] * 3 + ["logits"] * 3


def test_zero_ablating_all_heads_equals_manual(small):
    model, _, t = small
    p = {k: v.detach().double() for k, v in model.named_parameters()}
    x = p["embed.W_E"][P] + p["pos_embed.W_pos"][2]  # the residual of '=' without attention
    post = torch.relu(x @ p["blocks.0.mlp.W_in"] + p["blocks.0.mlp.b_in"])
    const = (x + post @ p["blocks.0.mlp.W_out"] + p["blocks.0.mlp.b_out"]) @ p["unembed.W_U"]
    logits = const.expand(P * P, P)
    df = ablate_heads(t, [0, 1], "zero")
    for split in SPLITS:
        loss, acc = _ce(logits, t, split)
        assert _row(df, None, split)["loss"] == pytest.approx(loss, rel=1e-5)
        assert _row(df, None, split)["acc"] == pytest.approx(acc)


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_head_ablation_matches_hook(small, method):
    model, _, t = small

    def hook(z, hook):  # z [batch, pos, h, d_head]; ablate head 1 at the final position
        z = z.clone()
        z[:, -1, 1] = 0.0 if method == "zero" else z[:, -1, 1].mean(0)
        return z

    logits = _hooked_logits(model, [("blocks.0.attn.hook_z", hook)])
    df = ablate_heads(t, 1, method)
    for split in SPLITS:
        assert _row(df, None, split)["loss"] == pytest.approx(_ce(logits, t, split)[0], rel=1e-4)


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_neuron_ablation_matches_hook(small, method):
    model, _, t = small
    ids = [0, 3, 17]

    def hook(post, hook):  # [batch, pos, d_mlp]
        post = post.clone()
        post[:, -1, ids] = 0.0 if method == "zero" else post[:, -1, ids].mean(0)
        return post

    logits = _hooked_logits(model, [("blocks.0.mlp.hook_post", hook)])
    df = ablate_neurons(t, ids, method)
    for split in SPLITS:
        assert _row(df, None, split)["loss"] == pytest.approx(_ce(logits, t, split)[0], rel=1e-4)


@pytest.mark.parametrize("p", [7, 8])
def test_neuron_approximation_equals_least_squares(p):
    g = torch.Generator().manual_seed(p)
    acts = torch.randn(p, p, 3, generator=g, dtype=torch.float64)
    freqs = [1, 3] if p == 7 else [2, 4]
    th = 2 * np.pi * np.arange(p) / p
    fa = [np.ones(p)]
    for w in freqs:
        fa += [np.cos(w * th)] + ([np.sin(w * th)] if (2 * w) % p else [])
    cols = [np.outer(u, np.ones(p)) for u in fa[1:]] + [np.outer(np.ones(p), u) for u in fa[1:]]
    cols.append(np.ones((p, p)))
    for w in freqs:  # same-frequency products only
        us = [np.cos(w * th)] + ([np.sin(w * th)] if (2 * w) % p else [])
        cols += [np.outer(u, v) for u in us for v in us]
    A = np.stack([c.reshape(-1) for c in cols], 1)
    coef, *_ = np.linalg.lstsq(A, acts.numpy().reshape(p * p, 3), rcond=None)
    want = (A @ coef).reshape(p, p, 3)
    np.testing.assert_allclose(neuron_approximation(acts, freqs).numpy(), want, atol=1e-10)


def test_approximating_neurons_with_all_their_terms_is_exact(small):
    _, _, t = small
    from grokinterp.analysis.neurons import neuron_activations

    acts = neuron_activations(t.params, t.cfg).double()
    approx_all = neuron_approximation(acts, range(1, P // 2 + 1))
    # only products of two different frequencies are missing
    B = fourier_basis(P)
    C = B.to_fourier_2d(acts - approx_all, (0, 1))
    f = B.freqs
    same = (f[:, None] == f[None, :]) | (f[:, None] == 0) | (f[None, :] == 0)
    assert float(C[same].abs().max()) < 1e-9
    df = approximate_neurons(t, [2], neurons=[1, 2])
    assert _row(df)["ablation"].startswith("2 neurons")


def test_evaluate_logits_checks_shape(small):
    _, _, t = small
    with pytest.raises(AnalysisError, match=r"expected shape \[11, 11, 11\]"):
        evaluate_logits(torch.zeros(7, 7, 7), t)
    df = evaluate_logits(torch.zeros(P, P, P), t)
    assert df["loss"].tolist() == pytest.approx([math.log(P)] * 3)


def test_trained_run_key_frequency_ablations(tiny_run):
    key = key_frequencies(tiny_run.model(-1)).freqs
    df = ablation_table(tiny_run, key)
    assert tuple(df.columns) == COLUMNS
    assert df["ablation"].iloc[0] == "none" and len(df) % 3 == 0
    base = _row(df, "none", "train")["loss"]
    rows = {a: _row(df, a, "train") for a in df["ablation"].unique()}
    remove_key = next(r for a, r in rows.items() if a.startswith("logits: remove key"))
    control = next(r for a, r in rows.items() if a.startswith("logits: remove") and "non-key" in a)
    keep_key = next(r for a, r in rows.items() if a.startswith("logits: keep key"))
    # removing the key frequencies destroys the model; removing as many others barely matters
    assert remove_key["loss"] > 1.0 and remove_key["acc"] < 0.5
    assert remove_key["loss"] - base > 20 * max(control["loss"] - base, 1e-6)
    assert keep_key["loss"] < remove_key["loss"] / 10
    emb_drop = next(r for a, r in rows.items() if a.startswith("W_E: remove key"))
    assert emb_drop["loss"] > base + 1.0
    assert rows["heads: mean-ablate all"]["loss"] > base + 1.0

    # cluster ablation: ablating the neurons whose dominant frequency is key hurts
    t = ablation_target(tiny_run)
    cl = ablate_neuron_clusters(t, key, "mean", threshold=0.0)
    assert _row(cl, None, "train")["loss"] > base + 1.0


def test_errors(small, tiny_run):
    model, train, t = small
    with pytest.raises(AnalysisError, match="frequency 6"):
        ablate_logit_freqs(t, [6])
    with pytest.raises(AnalysisError, match="frequency 0"):
        ablate_embed_freqs(t, [0, 1])
    with pytest.raises(AnalysisError, match="mode"):
        ablate_logit_freqs(t, [1], mode="drop")
    with pytest.raises(AnalysisError, match="neuron index 24 is out of range"):
        ablate_neurons(t, [1, 24])
    with pytest.raises(AnalysisError, match="empty"):
        ablate_neurons(t, [])
    with pytest.raises(AnalysisError, match="method"):
        ablate_neurons(t, [1], method="resample")
    with pytest.raises(AnalysisError, match="head index 2 is out of range"):
        ablate_heads(t, [2])
    with pytest.raises(AnalysisError, match="empty"):
        ablate_heads(t, [])
    with pytest.raises(AnalysisError, match="empty"):
        approximate_neurons(t, [])
    with pytest.raises(AnalysisError, match="index 121 is outside the grid"):
        ablation_target(model, [0, 121])
    with pytest.raises(AnalysisError, match="non-empty"):
        ablation_target(model, [])
    with pytest.raises(AnalysisError, match="train_pairs: needed"):
        ablation_target(model)
    with pytest.raises(AnalysisError, match="brings its own split"):
        ablation_target(tiny_run, train)
    stacked = {k: torch.stack([v.detach()] * 2) for k, v in model.named_parameters()}
    with pytest.raises(AnalysisError, match="one checkpoint"):
        ablation_target(stacked, train, cfg=model.cfg)
    with pytest.raises(AnalysisError, match="no neuron has FVE"):
        ablate_neuron_clusters(t, [1], threshold=0.999)
