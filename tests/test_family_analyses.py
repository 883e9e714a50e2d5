"""Analyses follow the model family (issue 19, item 4): progress measures, key frequencies, neuron and logit
fits, phases, ablations and the run report on an MLP and on a two-layer transformer, with controls.

* the generic grid forward (the family's hooked module) equals the hooked module on the grid's tokens, and
  the one-layer transformer's table fold;
* restricted / excluded loss (every progress measure) computed generically equal the fold's on a 1-layer run;
* a planted MLP — weights built so that its logits are ``α Σ_k cos(w_k(a + b − c))`` exactly (quadratic
  neurons, Gromov 2023) — gives back its frequencies from W_E, W_L and the neurons, restricted accuracy 1,
  excluded loss high; an untrained MLP gives no key frequency and no circuit date;
* measures that are not defined (clock vs pizza and head ablations without attention, W_E of an MLP on
  one-hot inputs) say so instead of giving a number.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import grokinterp as g
import grokinterp.analysis.ablations as ablations_mod
import grokinterp.analysis.measures.driver as driver
import grokinterp.model.grid as grid_mod
from grokinterp.analysis.ablations import ablate_heads, ablation_table, heads_undefined
from grokinterp.analysis.algorithms import UNDEFINED, identify_algorithm
from grokinterp.analysis.early import live_arrays, live_measures
from grokinterp.analysis.keyfreqs import key_frequencies, neuron_key_frequencies
from grokinterp.analysis.logits import grid_logits, logit_cos_fit
from grokinterp.analysis.measures import progress_measures
from grokinterp.analysis.neurons import neuron_activations, neuron_fourier
from grokinterp.analysis.phases import circuit_formation_epoch
from grokinterp.analysis.summary import analyze_run
from grokinterp.config import ModelConfig, make_config
from grokinterp.errors import AnalysisError
from grokinterp.model.families import family_of
from grokinterp.model.grid import (
    generic_grid_forward,
    grid_forward,
    grid_outputs,
    model_tokens,
    neuron_logit_map,
)

P = 31
PLANTED = (3, 7)
MLP = dict(family="mlp", d_embed=8, d_hidden=48, lr=1e-2, weight_decay=0.1, eval_every=5, every=5, flush_every=4)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def planted_mlp(freqs=PLANTED, p: int = P, alpha: float = 4.0, d_extra: int = 0):
    """An MLP (embedding cos/sin(w a), quadratic neurons, no biases) whose logits are exactly
    ``alpha Σ_w cos(w (a + b − c))``: ``(x + y)² − (x − y)² = 4xy`` gives ``cos wa cos wb``, ``sin wa sin wb``,
    ``sin wa cos wb`` and ``cos wa sin wb``; ``W_U`` reads them out against ``cos wc`` and ``sin wc``."""
    K = len(freqs)
    cfg = make_config("tiny", p=p, family="mlp", d_embed=2 * K, d_hidden=8 * K + d_extra, act_fn="quadratic",
                      combine="sum", hidden_bias=False, unembed_bias=False).model
    x = torch.arange(p, dtype=torch.float64)
    W_E = torch.zeros(p, 2 * K, dtype=torch.float64)
    W_a = torch.zeros(2 * K, cfg.d_hidden, dtype=torch.float64)
    W_b = torch.zeros_like(W_a)
    W_U = torch.zeros(cfg.d_hidden, p, dtype=torch.float64)
    for k, w in enumerate(freqs):
        c, s = 2 * k, 2 * k + 1  # embedding columns cos(w t), sin(w t)
        W_E[:, c], W_E[:, s] = torch.cos(2 * math.pi * w * x / p), torch.sin(2 * math.pi * w * x / p)
        cos_c, sin_c = torch.cos(2 * math.pi * w * x / p), torch.sin(2 * math.pi * w * x / p)
        # neuron (u·e_a + σ v·e_b)², sign in the read-out: cos(w(a+b)) = cc − ss, sin(w(a+b)) = sc + cs
        table = [(c, c, +1, +1, cos_c), (c, c, -1, -1, cos_c), (s, s, +1, -1, cos_c), (s, s, -1, +1, cos_c),
                 (s, c, +1, +1, sin_c), (s, c, -1, -1, sin_c), (c, s, +1, +1, sin_c), (c, s, -1, -1, sin_c)]
        for j, (ia, ib, sign_b, sign_out, read) in enumerate(table):
            n = 8 * k + j
            W_a[ia, n] = 1.0
            W_b[ib, n] = sign_b
            W_U[n] = alpha * sign_out * read / 4
    model = family_of(cfg).hooked(cfg)
    params = _params(model)
    params.update({"embed.W_E": W_E.float(), "hidden.0.W_a": W_a.float(), "hidden.0.W_b": W_b.float(),
                   "unembed.W_U": W_U.float()})
    return model.load_params(params), cfg


def expected_planted_logits(freqs=PLANTED, p: int = P, alpha: float = 4.0) -> torch.Tensor:
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None, None] + a[None, :, None] - a[None, None, :])
    return sum(alpha * torch.cos(2 * math.pi * w * s / p) for w in freqs)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    cfg = make_config("tiny", p=P, epochs=30, **MLP)
    return g.train(cfg, tmp_path_factory.mktemp("mlp") / "run", progress=False)


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    cfg = make_config("tiny", p=P, n_layers=2, d_model=32, d_mlp=64, epochs=30, eval_every=5, every=5,
                      flush_every=4)
    return g.train(cfg, tmp_path_factory.mktemp("deep") / "run", progress=False)


def _needs_transformer_options():
    if "layer_norm" not in {f.name for f in dataclasses.fields(ModelConfig)}:
        pytest.skip("the transformer's layer_norm / input_layout options are not merged yet (branch i19-tfam)")


@pytest.fixture(scope="module")
def ln_run(tmp_path_factory):
    """Two layers with pre-LayerNorm (Power et al.'s decoder, shrunk)."""
    _needs_transformer_options()
    cfg = make_config("tiny", p=P, n_layers=2, layer_norm=True, d_model=32, d_mlp=64, epochs=30, eval_every=5,
                      every=5, flush_every=4)
    return g.train(cfg, tmp_path_factory.mktemp("ln") / "run", progress=False)


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory):
    """Zhong et al.'s [a, b] layout (no '=' token, read out at b)."""
    _needs_transformer_options()
    cfg = make_config("tiny", p=P, input_layout="a_b", d_model=32, d_mlp=64, epochs=30, eval_every=5, every=5,
                      flush_every=4)
    return g.train(cfg, tmp_path_factory.mktemp("ab") / "run", progress=False)


@pytest.fixture(scope="module")
def one_layer_run(tmp_path_factory):
    cfg = make_config("tiny", p=P, epochs=40, eval_every=5, every=5, flush_every=4)
    return g.train(cfg, tmp_path_factory.mktemp("one") / "run", progress=False)


# -- the generic grid forward -------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["mlp_run", "deep_run", "ln_run", "ab_run"])
def test_generic_grid_logits_and_neurons_equal_the_hooked_module(which, request):
    run = request.getfixturevalue(which)
    cfg = run.config.model
    model = run.model(-1)
    with torch.no_grad():
        logits, cache = model.run_with_cache(model_tokens(cfg))
    hook = family_of(cfg).hidden_hook(cfg)
    post = cache[hook]
    post = post[:, -1] if post.ndim == 3 else post
    out = grid_outputs(_params(model), cfg, return_post=True)
    torch.testing.assert_close(out.logits, logits[:, -1].reshape(P, P, -1), rtol=0, atol=0)
    torch.testing.assert_close(out.post, post.reshape(P, P, -1), rtol=0, atol=0)
    stacked = run.stacks()
    both = generic_grid_forward({k: v[-2:] for k, v in stacked.items()}, cfg)
    assert both.logits.shape == (2, P, P, cfg.d_vocab_out)
    torch.testing.assert_close(both.logits[1], out.logits)


def test_generic_grid_equals_the_table_fold_on_a_one_layer_transformer(one_layer_run):
    cfg = one_layer_run.config.model
    stacked = {k: v[-3:] for k, v in one_layer_run.stacks().items()}
    fold = grid_forward(stacked, cfg, return_post=True, return_pattern=True)
    gen = generic_grid_forward(stacked, cfg, return_post=True, return_pattern=True)
    torch.testing.assert_close(gen.logits, fold.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gen.post, fold.post, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gen.pattern, fold.pattern, rtol=1e-5, atol=1e-6)

    def mean_ablate(post):
        return post * 0 + post.mean((1, 2), keepdim=True)

    torch.testing.assert_close(generic_grid_forward(stacked, cfg, post_fn=mean_ablate).logits,
                               grid_forward(stacked, cfg, post_fn=mean_ablate).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["mean", "zero"])
def test_head_ablation_through_hook_z_equals_the_fold(one_layer_run, method, monkeypatch):
    from grokinterp.analysis.ablations import ablation_target

    t = ablation_target(one_layer_run)
    fold = ablate_heads(t, [0, 2], method)
    monkeypatch.setattr(ablations_mod, "fold_unsupported", lambda cfg: "forced generic (test)")
    gen = ablate_heads(t, [0, 2], method)
    np.testing.assert_allclose(gen["loss"].to_numpy(), fold["loss"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gen["acc"].to_numpy(), fold["acc"].to_numpy())
    with pytest.raises(AnalysisError, match="layer"):
        ablate_heads(t, [0], method, layer=1)


def test_progress_measures_computed_generically_equal_the_fold(one_layer_run, monkeypatch):
    keys = [1, 2]
    fold = progress_measures(one_layer_run, keys)
    assert fold.attrs["implementation"].startswith("vectorised (grid_forward")
    monkeypatch.setattr(grid_mod, "fold_unsupported", lambda cfg: "forced generic (test)")
    monkeypatch.setattr(driver, "fold_unsupported", grid_mod.fold_unsupported)
    gen = progress_measures(one_layer_run, keys)
    assert "generic_grid_forward" in gen.attrs["implementation"]
    cols = ["train_loss", "test_loss", "restricted_loss", "restricted_acc", "excluded_loss", "gini_W_E", "gini_W_L"]
    np.testing.assert_allclose(gen[cols].to_numpy(), fold[cols].to_numpy(), rtol=1e-5, atol=1e-6)


# -- a planted MLP and controls ---------------------------------------------------------------------------
def test_planted_mlp_logits_are_the_planted_function():
    model, cfg = planted_mlp()
    L = grid_logits(model)
    torch.testing.assert_close(L.double(), expected_planted_logits(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["W_L", "W_E", "neurons"])
def test_planted_mlp_key_frequencies_are_recovered(method):
    model, cfg = planted_mlp()
    if method == "neurons":  # (cos wa ± cos wb)² holds 4/5 of its variance at w, 1/5 at 2w (the squares)
        kf = neuron_key_frequencies(model, threshold=0.75)
        assert key_frequencies(model, method=method).freqs == ()  # the paper's 0.85 is above 4/5
    else:
        kf = key_frequencies(model, method=method)
    assert kf.freqs == PLANTED, kf
    fit = logit_cos_fit(grid_logits(model), PLANTED)
    assert fit.fve_key > 0.999


def test_planted_mlp_neurons_are_read_from_the_hidden_layer():
    model, cfg = planted_mlp()
    acts = neuron_activations(model)
    assert acts.shape == (P, P, cfg.d_hidden)
    a = torch.arange(P, dtype=torch.float64)
    cw = torch.cos(2 * math.pi * PLANTED[0] * a / P)
    torch.testing.assert_close(acts[..., 0].double(), (cw[:, None] + cw[None, :]) ** 2, rtol=0, atol=1e-4)
    nf = neuron_fourier(model, threshold=0.75)  # 4/5 of each neuron's variance at its w, 1/5 at 2w
    assert nf.explained.all()
    np.testing.assert_allclose(nf.dominant_fve.numpy(), 0.8, atol=1e-6)
    assert nf.dominant_freq.tolist() == [w for w in PLANTED for _ in range(8)]
    W_L, what = neuron_logit_map(_params(model), cfg)
    assert "unembed.W_U" in what and torch.equal(W_L, model.unembed.W_U.detach())


def test_planted_mlp_restricted_and_excluded_loss():
    """The planted logits are all key terms: restricted accuracy 1 (loss as the original's), and with the key
    terms removed nothing is left (excluded loss ln p); an untrained MLP's restricted logits are near chance."""
    model, cfg = planted_mlp(alpha=8.0)
    rc = make_config("tiny", p=P, family="mlp", d_embed=cfg.d_embed, d_hidden=cfg.d_hidden, act_fn="quadratic",
                     hidden_bias=False, unembed_bias=False)
    rng = np.random.default_rng(0)
    order = rng.permutation(P * P)
    arrays = live_arrays(rc, np.sort(order[: P * P // 3]), np.sort(order[P * P // 3:]))
    res = live_measures(_params(model), cfg, arrays, key_freqs=list(PLANTED))
    v = {k: float(t) for k, t in res.values.items()}
    L = expected_planted_logits(alpha=8.0).reshape(P * P, P)
    labels = (torch.arange(P)[:, None] + torch.arange(P)[None, :]).reshape(-1) % P
    original = float(torch.nn.functional.cross_entropy(L, labels))  # the planted logits are all key terms
    assert v["restricted_acc"] == 1.0 and abs(v["restricted_loss"] - original) < 1e-4
    assert abs(v["excluded_loss"] - math.log(P)) < 1e-4
    chosen = live_measures(_params(model), cfg, arrays)  # the W_L rule picks the planted ones
    assert chosen.key_freqs == PLANTED
    untrained = family_of(rc.model).hooked(rc.model)
    u = live_measures(_params(untrained), rc.model, arrays, key_freqs=list(PLANTED))
    assert float(u.values["restricted_acc"]) < 0.2
    assert live_measures(_params(untrained), rc.model, arrays).key_freqs == ()


def test_untrained_mlp_has_no_key_frequency_and_no_circuit(mlp_run):
    cfg = make_config("tiny", p=P, **MLP).model
    for seed in range(3):
        model = family_of(cfg).hooked(cfg.__class__(**{**cfg.__dict__, "init_seed": seed}))
        assert key_frequencies(model, method="W_L").freqs == ()
        assert key_frequencies(model, method="W_E").freqs == ()
    m = progress_measures(mlp_run)  # 30 epochs: not grokked
    assert m.attrs["key_freqs"] == [] or circuit_formation_epoch(m).epoch is None
    assert circuit_formation_epoch(m).epoch is None


# -- undefined measures say so --------------------------------------------------------------------------
def test_undefined_measures_say_so_on_an_mlp(mlp_run):
    cfg = mlp_run.config.model
    assert "no attention heads" in heads_undefined(cfg)
    with pytest.raises(AnalysisError, match="no attention heads"):
        ablate_heads(mlp_run, [0])
    with pytest.raises(AnalysisError, match="no attention"):
        grid_outputs(mlp_run.params(-1), cfg, return_pattern=True)
    r = identify_algorithm(mlp_run, key_freqs=[1])
    assert r.label == UNDEFINED and "no attention" in r.reason and math.isnan(r.gradient_symmetricity)
    assert r.summary()["gradient_symmetricity"] is None
    table = ablation_table(mlp_run, [1, 2])
    assert not table["component"].eq("heads").any() and table["component"].eq("W_E").any()
    # an MLP on one-hot inputs has no W_E: its Gini is NaN, its W_E rows are left out
    one_hot = g.train(make_config("tiny", p=P, epochs=10, **{**MLP, "d_embed": 0}),
                      mlp_run.path.parent / "onehot", progress=False)
    m = progress_measures(one_hot, [1])
    assert m["gini_W_E"].isna().all() and m["gini_W_L"].notna().all() and m["restricted_loss"].notna().all()
    assert not ablation_table(one_hot, [1])["component"].eq("W_E").any()
    with pytest.raises(AnalysisError, match="embed.W_E"):
        key_frequencies(one_hot.model(-1), method="W_E")


# -- analyze_run and the report -----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["mlp_run", "deep_run", "ln_run", "ab_run"])
def test_analyze_run_and_report_work(which, request, tmp_path):
    run = request.getfixturevalue(which)
    a = analyze_run(run)
    h = a.headline()
    assert h["neurons_total"] == (run.config.model.d_hidden if which == "mlp_run" else run.config.model.d_mlp)
    assert a.measures["restricted_loss"].notna().all() and a.measures["excluded_loss"].notna().all()
    if which == "mlp_run":
        assert a.pattern is None and any("no attention" in n for n in h["notes"])
        assert any("head ablations: undefined" in n for n in h["notes"])
    else:  # transformers the one-layer fold does not compute: the last block's pattern; heads through hook_z
        cfg = run.config.model
        assert a.pattern.shape == (P, P, cfg.n_heads, cfg.n_ctx) and any("last block" in n for n in h["notes"])
        torch.testing.assert_close(a.pattern.sum(-1), torch.ones(P, P, cfg.n_heads))
        if len(a.ablations):
            assert a.ablations["component"].eq("heads").any()
    from grokinterp.viz.report import write_report

    path = write_report(run, tmp_path / "report.html")
    assert path.exists() and path.stat().st_size > 10_000


def test_cli_report_of_an_mlp_run_with_given_keys(mlp_run, tmp_path):
    """``grokinterp report RUN`` on an MLP run: exit 0, the HTML, the headline JSON with the undefined parts named."""
    import json

    from _helpers import cli_here

    out, js = tmp_path / "r.html", tmp_path / "h.json"
    code, stdout, err = cli_here("report", str(mlp_run.path), "--out", str(out), "--key-freqs", "1,2",
                                 "--summary-json", str(js))
    assert code == 0, err
    h = json.loads(js.read_text())
    assert h["key_frequencies"] == [1, 2] and h["neurons_total"] == mlp_run.config.model.d_hidden
    assert any("head ablations: undefined for the mlp family" in n for n in h["notes"])
    assert h["extras"]["algorithm"]["label"] == "undefined"
    assert out.stat().st_size > 10_000


def test_an_mlp_with_an_equals_logit_and_an_unembedding_bias_is_analysed_on_its_residues(tmp_path):
    """eq_logit: W_U and b_U have a column for '='; analyses drop both (the residue logits), as a transformer's."""
    cfg = make_config("tiny", p=P, epochs=10, eq_logit=True, **{**MLP, "unembed_bias": True})
    run = g.train(cfg, tmp_path / "r", progress=False)
    model = run.model(-1)
    with torch.no_grad():
        full = model(model_tokens(cfg.model))[:, -1]
    L = grid_logits(run)
    assert full.shape[-1] == P + 1 and L.shape == (P, P, P)
    torch.testing.assert_close(L.reshape(P * P, P), full[:, :P])
    m = progress_measures(run, [1])
    assert m["restricted_loss"].notna().all() and m["gini_W_L"].notna().all()


@pytest.mark.parametrize("op", ["S4", "mul"])
def test_an_mlp_on_a_group_task_gets_key_irreps_fits_and_ablations(op, tmp_path):
    kw = dict(operation=op) if op == "S4" else dict(operation=op, p=P)
    run = g.train(make_config("tiny", epochs=10, **{**MLP, **kw}), tmp_path / "r", progress=False)
    a = analyze_run(run, key_freqs=[1, 2])
    h = a.headline()
    assert h["key_frequencies"] == [1, 2] and len(h["key_irreps"]) == 2 and a.logit_fit is not None
    assert {"logits", "W_E", "neurons"} <= set(a.ablations["component"]) and "heads" not in set(a.ablations["component"])
    assert a.measures["restricted_loss"].notna().all()
