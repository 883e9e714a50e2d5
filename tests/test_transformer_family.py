"""The transformer family's settings (issue 19): LayerNorm, biases, input layout, any number of layers.

The hooked module is the reference; the functional forward over stacked parameters equals it run by
run (values and gradients); the default model is today's, bit for bit; the one-layer kernels are
never used where they do not apply; deeper LayerNorm models train single and stacked, alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import StopAt, cli_here, close

import grokinterp as g
from grokinterp.config import ModelConfig, RunConfig, make_config
from grokinterp.errors import AnalysisError, ConfigError
from grokinterp.model.families import get_family
from grokinterp.model.families.transformer import fast_kernels_apply, forward
from grokinterp.model.fastpath import fast_path_unsupported
from grokinterp.model.grid import grid_forward
from grokinterp.model.hooked import HookedGrokTransformer
from grokinterp.model.params import init_params, param_shapes
from grokinterp.model.stacked import StackPlan
from grokinterp.store.run import load_run
from grokinterp.training.optim import param_groups
from grokinterp.training.stacked import (
    StackInterrupted,
    default_impl,
    resume_stacked,
    stack_key,
    stack_unsupported_reason,
    train_stacked,
)

SMALL = dict(p=7, d_model=8, n_heads=2, d_mlp=16)
OLD = Path(__file__).parent / "fixtures" / "runs" / "release-0.1.0"


def _model_cfg(**kw) -> ModelConfig:
    return make_config("tiny", **{**SMALL, **kw}).model


def _noisy(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Initial parameters moved by seeded noise (LayerNorm weights and biases away from 1 and 0)."""
    gen = torch.Generator().manual_seed(100 + seed)
    return {k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in init_params(cfg).items()}


# -- the functional forward is the hooked module, run by run ----------------------------------------------------
@pytest.mark.parametrize("n_layers, layer_norm, bias, layout",
                         [*itertools.product([1, 2], [False, True], ["mlp", "all", "none"], ["a_b_eq", "a_b"]),
                          (2, "in_place", "all", "a_b_eq"), (1, "in_place", "none", "a_b"),
                          (2, "in_place", "all", "a_op_b_eq"), (1, False, "mlp", "a_op_b_eq")])
def test_functional_forward_equals_the_hooked_module_values_and_gradients(n_layers, layer_norm, bias, layout):
    style = dict(layer_norm=True, ln_style="in_place") if layer_norm == "in_place" else dict(layer_norm=layer_norm)
    cfg = _model_cfg(n_layers=n_layers, bias=bias, input_layout=layout, **style)
    R = 3
    per_run = [_noisy(dataclasses.replace(cfg, init_seed=r), r) for r in range(R)]
    stacked = {k: torch.stack([p[k] for p in per_run]).requires_grad_(True) for k in per_run[0]}
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, cfg.p, (R, 6, 3), generator=gen)
    tokens[..., 2] = cfg.p  # the task's [a, b, =]; the a_b layout drops '='
    coeff = torch.tensor([1.0, 0.5, 0.0])  # Zhong et al.'s attention coefficient, per run
    out = forward(stacked, tokens, cfg, attn_coeff=coeff)
    assert out.shape == (R, 6, cfg.d_vocab_out)
    weights = torch.randn(out.shape, generator=gen)
    (out * weights).sum().backward()
    for r in range(R):
        model = HookedGrokTransformer(dataclasses.replace(cfg, attn_coeff=float(coeff[r])), init=False)
        model.load_params(per_run[r])
        ref = model(tokens[r])[:, -1]
        (ref * weights[r]).sum().backward()
        assert close(out[r].detach(), ref.detach()), (r, "logits")
        # float32 rounding of two orders of summation: with these noisy weights and no LayerNorm the
        # second block's W_Q gradients part by up to 1.7e-4 of their scale on a 2-core AMD EPYC (< 1e-4 on
        # an Intel Xeon); a wrong term would be off by O(1)
        for name, p in model.named_parameters():
            assert close(stacked[name].grad[r], p.grad, rel=1e-3), (r, name)


def test_the_layouts_tokens_and_attention():
    cfg = _model_cfg(input_layout="a_b")
    assert cfg.n_ctx == 2 and make_config("tiny", input_layout="a_b").replace(input_layout="a_b_eq").model.n_ctx == 3
    ds = g.make_config("tiny", p=7).task.task().dataset()
    x, y = ds.select(np.array([0, 8, 48]), "a_b")
    assert x.tolist() == [[0, 0], [1, 1], [6, 6]] and y.tolist() == [0, 2, 5]
    assert ds.select(np.array([8]))[0].tolist() == [[1, 1, 7]]
    model = HookedGrokTransformer(cfg)
    _, cache = model.run_with_cache(torch.tensor(x))
    pattern = cache["blocks.0.attn.hook_pattern"]  # both positions see both: no causal mask
    assert pattern.shape == (3, 2, 2, 2) and bool((pattern[:, :, 0, 1] > 0).all())
    assert torch.equal(model(torch.tensor(x)), model(torch.tensor(ds.select(np.array([0, 8, 48]))[0])))
    causal = HookedGrokTransformer(_model_cfg()).run_with_cache(torch.tensor([[1, 2, 7]]))[1]
    assert causal["blocks.0.attn.hook_pattern"][0, :, 0, 1:].abs().max() == 0


def test_the_op_layout_reads_a_op_b_eq_with_a_vocabulary_of_p_plus_2():
    cfg = _model_cfg(input_layout="a_op_b_eq")
    assert (cfg.n_ctx, cfg.d_vocab, cfg.d_vocab_out) == (4, 9, 7)
    assert cfg.n_params == sum(int(np.prod(s)) for s in param_shapes(cfg).values())
    ds = g.make_config("tiny", p=7).task.task().dataset()
    x, y = ds.select(np.array([0, 8, 48]), "a_op_b_eq")
    assert x.tolist() == [[0, 8, 0, 7], [1, 8, 1, 7], [6, 8, 6, 7]] and y.tolist() == [0, 2, 5]
    assert ds.select(np.array([8]))[0].tolist() == [[1, 1, 7]]  # the task's rows unchanged
    model = HookedGrokTransformer(cfg)
    rows = torch.tensor(ds.select(np.array([0, 8, 48]))[0])
    assert torch.equal(model(torch.tensor(x)), model(rows))  # [a, b, =] rows get their op token
    _, cache = model.run_with_cache(torch.tensor(x))
    assert cache["blocks.0.attn.hook_pattern"][0, :, 1, 2:].abs().max() == 0  # causal
    with pytest.raises(ConfigError, match=r"^model\.n_ctx: "):
        ModelConfig(p=7, input_layout="a_op_b_eq", n_ctx=3)


def test_lee_et_als_task_and_presets():
    task = make_config("tiny", p=97, operation="mul_b_nonzero").task.task()
    ds = task.dataset()
    a, b = np.divmod(ds.pair_index, 97)
    assert len(ds) == 9312 and b.min() == 1 and a.min() == 0 and bool((ds.labels == a * b % 97).all())
    base, ema = make_config("grokfast-lee"), make_config("grokfast-lee-ema")
    assert base.n_train() == 4656 and base.steps_per_epoch() == 10
    m = base.model
    assert (m.input_layout, m.n_ctx, m.d_vocab, m.n_layers, m.ln_style, m.bias, m.act_fn) == (
        "a_op_b_eq", 4, 99, 2, "in_place", "all", "gelu")
    # theirs: 422,784 parameters = ours + the head's '=' and 'op' rows + a fifth positional embedding
    assert m.n_params + 2 * 128 + 128 == 422_784
    assert (base.train.optimizer, base.train.weight_decay, base.train.grad_transforms) == ("adam", 0.0, ())
    t = ema.train
    assert (t.grad_transforms, t.grokfast_alpha, t.grokfast_lamb, t.weight_decay) == (("grokfast_ema",), 0.98, 2.0,
                                                                                       0.005)
    assert [base.train.lr_at(s, base.total_steps()) for s in (0, 1, 10, 11)] == [0.0, 1e-4, 1e-3, 1e-3]


def test_op_layout_runs_train_in_one_stack(tmp_path):
    base = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, n_layers=2, layer_norm=True,
                       ln_style="in_place", bias="all", input_layout="a_op_b_eq", operation="mul_b_nonzero",
                       optimizer="adam", batch_size=32, epochs=2, eval_every=1, every=2, device="cpu",
                       grad_transforms=("grokfast_ema",), weight_decay=0.005)
    cfgs = [base.replace(init_seed=s, split_seed=s) for s in range(2)]
    runs = train_stacked(cfgs, [tmp_path / f"r{s}" for s in range(2)], progress=False)
    for cfg, run in zip(cfgs, runs):
        solo = g.train(cfg, tmp_path / f"solo{cfg.model.init_seed}", progress=False)
        assert run.finished and close(torch.tensor(run.metrics["train_loss"].to_numpy()),
                                      torch.tensor(solo.metrics["train_loss"].to_numpy()), rel=1e-4)


def test_parameters_hook_names_and_initialisation_follow_transformer_lens():
    cfg = _model_cfg(n_layers=2, layer_norm=True, bias="all")
    shapes = param_shapes(cfg)
    assert list(shapes)[:8] == ["embed.W_E", "pos_embed.W_pos", "blocks.0.ln1.w", "blocks.0.ln1.b", "blocks.0.attn.W_Q",
                                "blocks.0.attn.W_K", "blocks.0.attn.W_V", "blocks.0.attn.W_O"]
    assert shapes["blocks.1.attn.b_Q"] == (2, 4) and shapes["blocks.1.attn.b_O"] == (8,)
    assert list(shapes)[-3:] == ["ln_final.w", "ln_final.b", "unembed.W_U"]
    assert cfg.n_params == sum(int(np.prod(s)) for s in shapes.values())
    p = init_params(cfg)
    for name, t in p.items():
        last = name.rsplit(".", 1)[-1]
        if last == "w":
            assert bool((t == 1).all()), name
        elif last == "b" or last.startswith("b_"):
            assert bool((t == 0).all()), name
    # the added parameters are not drawn: every weight is that of the same model without them
    plain = init_params(_model_cfg(n_layers=2))
    assert all(torch.equal(p[k], v) for k, v in plain.items() if not k.rsplit(".", 1)[-1].startswith("b_"))
    none = param_shapes(_model_cfg(n_layers=2, layer_norm=True, bias="none"))
    assert not [k for k in none if k.rsplit(".", 1)[-1].startswith("b")] and "blocks.1.ln2.w" in none
    for kw in (dict(layer_norm=True, bias="none"), dict(bias="all", n_layers=3), dict(input_layout="a_b")):
        c = _model_cfg(**kw)
        assert c.n_params == sum(int(np.prod(s)) for s in param_shapes(c).values()), kw
    paper = init_params(_model_cfg(layer_norm=True, bias="all", init_method="paper"))
    assert list(paper) == list(param_shapes(_model_cfg(layer_norm=True, bias="all")))
    _, cache = HookedGrokTransformer(cfg).run_with_cache(torch.tensor([[1, 2, 7]]))
    for hook in ("blocks.1.ln1.hook_scale", "blocks.1.ln2.hook_normalized", "ln_final.hook_normalized",
                 "blocks.1.mlp.hook_post", "blocks.1.attn.hook_pattern"):
        assert hook in cache.cache_dict, hook
    fam = get_family("transformer")
    assert fam.hidden_hook(cfg) == "blocks.1.mlp.hook_post" and "LayerNorm" in fam.describe(cfg)


def test_the_default_model_is_todays_bit_for_bit():
    """Initial parameters of the default settings hash as those of the tree before these settings (b725008+)."""
    h = hashlib.sha256()
    for preset in ("tiny", "paper-exact"):
        for seed in (0, 7):
            for k, v in init_params(make_config(preset, init_seed=seed).model).items():
                h.update(k.encode())
                h.update(v.numpy().tobytes())
    assert h.hexdigest() == "34681da8318b5a01b81090bb714889c580b7d498fd3c29b6905c1f47c05ded7e"
    cfg = make_config("tiny")
    assert (cfg.model.layer_norm, cfg.model.bias, cfg.model.input_layout) == (False, "mlp", "a_b_eq")
    assert fast_kernels_apply(cfg.model) is None and default_impl(torch.device("cpu"), cfg) == "tables"


# -- the one-layer kernels are never used where they do not apply ---------------------------------------------------
@pytest.mark.parametrize("kw, needle", [(dict(n_layers=2), "n_layers = 1"), (dict(layer_norm=True), "LayerNorm"),
                                        (dict(bias="none"), "model.bias"), (dict(bias="all"), "model.bias"),
                                        (dict(input_layout="a_b"), "input_layout"),
                                        (dict(input_layout="a_op_b_eq"), "input_layout"),
                                        (dict(pos_embed="sinusoidal"), "model.pos_embed"),
                                        (dict(bias="norm"), "model.bias"),
                                        (dict(layer_norm=True, ln_style="post"), "LayerNorm")])
def test_fast_kernels_refuse_what_they_cannot_compute(kw, needle):
    run_cfg = make_config("tiny", **SMALL, **kw)
    cfg = run_cfg.model
    assert needle in fast_kernels_apply(cfg)
    tokens = torch.tensor([[1, 2, 7, 8], [3, 4, 7, 8]])[:, : cfg.n_ctx]
    assert needle in fast_path_unsupported(cfg, tokens)
    with pytest.raises(ValueError, match=needle):
        StackPlan.build(cfg, tokens[None])
    with pytest.raises(AnalysisError, match=needle):
        grid_forward(init_params(cfg), cfg)
    assert stack_unsupported_reason(run_cfg) is None and stack_key(run_cfg) != stack_key(make_config("tiny", **SMALL))
    assert default_impl(torch.device("cpu"), run_cfg) == "generic"
    assert default_impl(torch.device("cuda"), run_cfg) == "generic"


def test_an_impl_that_cannot_compute_the_model_is_refused(tmp_path):
    cfg = make_config("tiny", **SMALL, n_layers=2, epochs=2)
    for impl in ("tables", "dense"):
        with pytest.raises(ConfigError, match=rf"^impl: '{impl}' cannot compute this model .*n_layers = 1"):
            train_stacked([cfg], [tmp_path / "x"], progress=False, impl=impl)
    with pytest.raises(ConfigError, match="^impl: must be one of"):
        train_stacked([cfg], [tmp_path / "x"], progress=False, impl="vmap")
    assert not (tmp_path / "x").exists()


# -- training ----------------------------------------------------------------------------------------------------------
def test_a_two_layer_layernorm_stack_trains_as_its_single_runs(tmp_path):
    base = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, n_layers=2, layer_norm=True, epochs=12, every=6,
                       log_early=0, eval_every=4)
    cfgs = [base.replace(init_seed=0, split_seed=0, lr=1e-2),
            base.replace(init_seed=1, split_seed=3, lr=3e-3, weight_decay=0.5, frac_train=0.6)]
    runs = train_stacked(cfgs, [tmp_path / f"s{r}" for r in range(2)], progress=False)
    for r, c in enumerate(cfgs):
        assert runs[r].info["stack"]["impl"] == "generic" and runs[r].finished
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        a, b = runs[r].metrics, ref.metrics
        assert np.allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
        assert np.allclose(a["test_loss"], b["test_loss"], rtol=1e-5, equal_nan=True)
        assert a["train_loss"].iloc[-1] < a["train_loss"].iloc[0]  # it learns
        for k in ref.stacks():
            assert close(runs[r].stack(k), ref.stack(k), rel=1e-5), (r, k)
    # interrupted and resumed in its stack, it ends where the uninterrupted stack did (bit for bit on CPU)
    outs = [tmp_path / f"i{r}" for r in range(2)]
    with pytest.raises(StackInterrupted):
        train_stacked(cfgs, outs, progress=False, callbacks=[StopAt(5)])
    resumed = resume_stacked(outs, progress=False)
    for a, b in zip(resumed, runs):
        assert a.finished and all(torch.equal(a.stack(k), b.stack(k)) for k in b.stacks())


def test_a_b_layout_runs_train_in_one_stack(tmp_path):
    base = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, input_layout="a_b", bias="all", epochs=6,
                       every=3, log_early=0, eval_every=3)
    cfgs = [base, base.replace(init_seed=1, lr=3e-3)]
    assert stack_key(cfgs[0]) == stack_key(cfgs[1])
    runs = train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False)
    ref = g.train(cfgs[1], tmp_path / "ref", progress=False)
    assert runs[1].info["stack"]["impl"] == "generic"
    assert np.allclose(runs[1].metrics["train_loss"], ref.metrics["train_loss"], rtol=1e-5)
    tokens = runs[0].test_data()[0][:4]
    assert runs[0].model(-1)(tokens).shape == (4, 2, 11)


def test_generic_plans_compute_each_runs_model_with_its_attention_coefficient():
    from grokinterp.model.stacked import stack_impls, stacked_final_logits

    cfg = _model_cfg(n_layers=2, layer_norm=True)
    assert stack_impls(cfg) == ("generic",) and stack_impls(_model_cfg()) == ("tables", "dense", "generic")
    per_run = [_noisy(dataclasses.replace(cfg, init_seed=r), r) for r in range(2)]
    P = {k: torch.stack([p[k] for p in per_run]) for k in per_run[0]}
    tokens = torch.tensor([[[1, 2, 7], [3, 4, 7]], [[5, 6, 7], [0, 1, 7]]])
    plan = StackPlan.build(cfg, tokens, impl="generic", attn_coeff=[1.0, 0.25])
    out = stacked_final_logits(P, plan, "generic")
    for r, a in enumerate((1.0, 0.25)):
        model = HookedGrokTransformer(dataclasses.replace(cfg, attn_coeff=a), init=False).load_params(per_run[r])
        assert close(out[r], model(tokens[r])[:, -1].detach())
    with pytest.raises(ValueError, match="one value per run"):
        StackPlan.build(cfg, tokens, impl="generic", attn_coeff=[1.0])
    # the one-layer kernels and the generic forward agree where both apply
    one = _model_cfg()
    P1 = {k: torch.stack([_noisy(one, r)[k] for r in range(2)]) for k in param_shapes(one)}
    ref = stacked_final_logits(P1, StackPlan.build(one, tokens, impl="tables"), "tables")
    assert close(stacked_final_logits(P1, StackPlan.build(one, tokens, impl="generic"), "generic"), ref)


# -- config -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, field", [(dict(layer_norm="yes"), "model.layer_norm"), (dict(layer_norm=1), "model.layer_norm"),
                                       (dict(bias="some"), "model.bias"), (dict(bias=True), "model.bias"),
                                       (dict(input_layout="b_a"), "model.input_layout"),
                                       (dict(ln_style="sideways", layer_norm=True), "model.ln_style"),
                                       (dict(ln_style="in_place"), "model.ln_style"),
                                       (dict(ln_style="post"), "model.ln_style"),
                                       (dict(pos_embed="rotary"), "model.pos_embed"),
                                       (dict(pos_embed=True), "model.pos_embed"),
                                       (dict(input_layout="a_b", n_ctx=3), "model.n_ctx"),
                                       (dict(input_layout="a_op_b_eq", n_ctx=3), "model.n_ctx")])
def test_bad_settings_are_refused_naming_the_field(kw, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        ModelConfig(**kw)
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        make_config("tiny", **kw)


def test_old_run_json_loads_with_the_default_settings(tmp_path):
    d = make_config("tiny").to_dict()
    for name in ("layer_norm", "bias", "input_layout", "ln_style", "pos_embed"):
        del d["model"][name]
    assert RunConfig.from_dict(d) == make_config("tiny")
    for run_dir in sorted(p for p in OLD.iterdir() if p.is_dir()):
        raw = json.loads((run_dir / "run.json").read_text())
        assert "layer_norm" not in json.dumps(raw)
        m = load_run(run_dir).config.model
        assert (m.layer_norm, m.bias, m.input_layout) == (False, "mlp", "a_b_eq")
        assert (m.ln_style, m.pos_embed) == ("pre", "learned")


def test_weight_decay_on_matrices_spares_biases_and_layernorms():
    cfg = _model_cfg(layer_norm=True, bias="all")
    params = {k: torch.nn.Parameter(v) for k, v in init_params(cfg).items()}
    groups = param_groups(params, make_config("tiny", weight_decay_on="matrices").train)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {k for k, p in params.items() if id(p) in decayed}
    assert names == {k for k in params if k.rsplit(".", 1)[-1].startswith("W_")}
    assert groups[1]["weight_decay"] == 0.0


def test_cli_flags_and_info(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli_here("train", "--preset", "tiny", "--p", "7", "--d-model", "8", "--n-heads", "2", "--d-mlp",
                            "16", "--n-layers", "2", "--layer-norm", "--ln-style", "in_place", "--bias", "all",
                            "--input-layout", "a_b",
                            "--epochs", "2", "--out", str(out), "--no-progress")
    assert code == 0, err
    m = load_run(out).config.model
    assert (m.n_layers, m.layer_norm, m.ln_style, m.bias, m.input_layout, m.n_ctx) == (2, True, "in_place", "all", "a_b", 2)
    code, text, _ = cli_here("info", str(out))
    assert code == 0 and "LayerNorm on (in_place)" in text and "biases all" in text and "input layout a_b" in text
    code, _, err = cli_here("train", "--preset", "tiny", "--input-layout", "a_c", "--out", str(tmp_path / "x"))
    assert code == 2 and "input_layout" in err and not (tmp_path / "x").exists()


@pytest.mark.parametrize("kw", [dict(n_layers=2, layer_norm=True, bias="all"), dict(layer_norm=True, bias="none"),
                                dict(input_layout="a_b", n_layers=2)])
def test_transformer_lens_export_of_the_settings(kw):
    from grokinterp.model.tl_export import to_transformer_lens

    cfg = _model_cfg(**kw)
    params = _noisy(cfg, 0)
    model = HookedGrokTransformer(cfg, init=False).load_params(params)
    bridge = to_transformer_lens(params, cfg)
    x = torch.tensor([[a, b, cfg.p][: cfg.n_ctx] for a in range(cfg.p) for b in range(cfg.p)])
    with torch.no_grad():
        ours, ocache = model.run_with_cache(x)
        theirs, tcache = bridge.run_with_cache(x)
    assert theirs.shape == ours.shape and close(theirs, ours)
    last = f"blocks.{cfg.n_layers - 1}"
    for hook in (f"{last}.attn.hook_pattern", f"{last}.mlp.hook_post", f"{last}.hook_resid_post"):
        assert close(tcache[hook], ocache[hook]), hook


def test_clock_or_pizza_is_identifiable_in_zhong_et_als_layout():
    """Read out at b ([a, b], no '='), constant attention no longer forces gradient symmetricity 1, and an
    untrained model sits well below the pizza threshold: the control a pizza label needs holds."""
    from grokinterp.analysis import algorithms as A

    for coeff in (0.0, 1.0):
        cfg = make_config("tiny", p=11, input_layout="a_b", attn_coeff=coeff)
        assert A.forced_by_architecture(cfg) is None
        assert A.untrained_symmetricity(cfg, n_samples=200) < A.GS_PIZZA
        report = A.identify_algorithm(HookedGrokTransformer(cfg.model), cfg=cfg, n_samples=200)
        assert report.label == "neither" and "classifies only" in report.reason  # untrained: measured, not forced
    assert A.forced_by_architecture(make_config("tiny", attn_coeff=0.0)) is not None
    deep = make_config("tiny", p=11, n_layers=2, layer_norm=True)
    assert A.identify_algorithm(HookedGrokTransformer(deep.model), cfg=deep, n_samples=50).label == "neither"


def test_generic_stacks_mask_mode_and_refused_mixes(tmp_path):
    base = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, n_layers=2, bias="none", epochs=4, every=2,
                       log_early=0, eval_every=2)
    cfgs = [base, base.replace(init_seed=1, split_seed=1, lr=3e-3)]
    gat = train_stacked(cfgs, [tmp_path / "g0", tmp_path / "g1"], progress=False, mode="gather")
    msk = train_stacked(cfgs, [tmp_path / "m0", tmp_path / "m1"], progress=False, mode="mask")
    for a, b in zip(gat, msk):
        assert a.info["stack"]["impl"] == b.info["stack"]["impl"] == "generic"
        for col in ("train_loss", "test_loss", "test_acc", "train_acc"):
            assert np.allclose(a.metrics[col], b.metrics[col], rtol=1e-5, equal_nan=True), col
    for other, needle in ((base.replace(layer_norm=True), "model.layer_norm differs"),
                          (base.replace(bias="all"), "model.bias differs"),
                          (base.replace(input_layout="a_b"), r"model\.(n_ctx|input_layout) differs")):
        with pytest.raises(ConfigError, match=needle):
            train_stacked([base, other], [tmp_path / "x", tmp_path / "y"], progress=False)


def test_live_measures_run_where_the_grid_fold_does_not_apply(tmp_path):
    """The live measures read the grid through the hooked module where the fold does not apply (issue 19,
    analyses follow the family)."""
    cfg = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, n_layers=2, layer_norm=True, epochs=6, every=3,
                      log_early=0, eval_every=3, live_every=3)
    run = g.train(cfg, tmp_path / "run", progress=False)
    assert run.finished and run.metrics["live_restricted_loss"].notna().sum() >= 2


@pytest.mark.parametrize("kw", [dict(), dict(n_layers=2, layer_norm=True, bias="all"), dict(bias="none"),
                                dict(input_layout="a_b", layer_norm=True),
                                dict(input_layout="a_op_b_eq", n_layers=2, layer_norm=True, bias="all"),
                                dict(n_layers=2, layer_norm=True, ln_style="post", bias="norm")])
def test_analyses_read_the_settings_off_the_parameters(kw):
    from grokinterp.analysis.inputs import infer_config

    cfg = _model_cfg(**kw)
    assert infer_config(init_params(cfg)) == dataclasses.replace(cfg, init_seed=0)


def test_grokfasts_block_normalises_the_residual_stream_in_place():
    """Lee et al.'s block: x = ln1(x); x = x + attn(x); x = x + mlp(ln2(x)) — resid_mid is ln1's output plus
    the attention's, not the stream before ln1 plus it."""
    cfg = _model_cfg(n_layers=2, layer_norm=True, ln_style="in_place", bias="all")
    model = HookedGrokTransformer(cfg, init=False).load_params(_noisy(cfg, 0))
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 7], [3, 4, 7]]))
    for L in range(2):
        mid = cache[f"blocks.{L}.ln1.hook_normalized"] + cache[f"blocks.{L}.hook_attn_out"]
        assert close(cache[f"blocks.{L}.hook_resid_mid"], mid)
    pre = _model_cfg(n_layers=2, layer_norm=True, bias="all")
    other = HookedGrokTransformer(pre, init=False).load_params(_noisy(pre, 0))
    assert not close(other(torch.tensor([[1, 2, 7]])), model(torch.tensor([[1, 2, 7]])))
    assert "in_place" in get_family("transformer").describe(cfg)
    from grokinterp.model.tl_export import to_transformer_lens

    with pytest.raises(ConfigError, match="^model.ln_style"):
        to_transformer_lens(init_params(cfg), cfg)


def test_interventions_with_per_run_values_stack_with_the_generic_forward(tmp_path):
    """Per-run attention coefficients and weight decay on the matrices only (LayerNorm weights and biases,
    and b_Q/K/V, are not matrices) in one generic 2-layer LN stack equal the runs alone."""
    base = make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, input_layout="a_b", n_layers=2, layer_norm=True,
                       bias="all", epochs=6, every=3, log_early=0, eval_every=3)
    cfgs = [base, base.replace(init_seed=1, attn_coeff=0.3), base.replace(init_seed=2, attn_coeff=0.0,
                                                                          weight_decay_on="matrices")]
    assert len({stack_key(c) for c in cfgs}) == 1
    runs = train_stacked(cfgs, [tmp_path / f"s{r}" for r in range(3)], progress=False)
    for r, c in enumerate(cfgs):
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        assert runs[r].info["stack"]["impl"] == "generic"
        assert np.allclose(runs[r].metrics["train_loss"], ref.metrics["train_loss"], rtol=1e-5)
        for k in ref.stacks():
            if k.endswith("attn.b_K"):  # no effect on any output (softmax is shift-invariant): its gradient is
                continue  # rounding noise, which Adam scales up to lr-sized steps, differently in a stack
            assert close(runs[r].stack(k), ref.stack(k), rel=1e-5), (r, k)


@pytest.mark.parametrize("flags,needle", [
    (["--n-layers", "2"], "n_layers = 1"), (["--layer-norm"], "LayerNorm"), (["--bias", "all"], "model.bias"),
    (["--input-layout", "a_b"], "model.input_layout"),
])
def test_explicit_fast_path_on_a_model_the_kernels_cannot_compute_exits_2_before_writing(tmp_path, flags, needle):
    out = tmp_path / "r"
    code, _, err = cli_here("train", "--preset", "tiny", *flags, "--fast-path", "true", "--out", str(out), "--no-progress")
    assert code == 2 and "train.fast_path" in err and needle in err, err
    assert not out.exists()
    # without the explicit flag the same model trains (through the hooked module); the preset's own fast_path
    # default is not a request
    code, _, err = cli_here("train", "--preset", "tiny", *flags, "--epochs", "2", "--out", str(out), "--no-progress")
    assert code == 0, err


# -- Power et al.'s decoder: post-LN blocks, fixed sinusoidal positions, LayerNorm biases only ---------------------
def _power_transcription(context_len: int, d_model: int) -> torch.Tensor:
    """openai/grok grok/transformer.py ``Transformer._position_encoding``, transcribed (numpy sin/cos per entry)."""
    from numpy import cos, sin

    rows = [torch.tensor([sin(pos / (10000 ** (i / d_model))) if i % 2 == 0
                          else cos(pos / (10000 ** ((i - 1) / d_model))) for i in range(d_model)])
            for pos in range(context_len)]
    return torch.stack(rows, dim=1).T


def test_sinusoidal_positions_are_power_et_als_table():
    from grokinterp.model.params import sinusoidal_positions

    for n, d in ((4, 8), (5, 128)):
        assert torch.allclose(sinusoidal_positions(n, d), _power_transcription(n, d).float(), atol=1e-7)
    cfg = _model_cfg(pos_embed="sinusoidal", input_layout="a_op_b_eq")
    assert "pos_embed.W_pos" not in param_shapes(cfg) and cfg.n_params == sum(
        math.prod(s) for s in param_shapes(cfg).values())
    model = HookedGrokTransformer(cfg)
    assert "pos_embed.W_pos" not in dict(model.named_parameters()) and "pos_embed.W_pos" not in model.state_dict()
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 7]]))  # [a, b, =] rows get the op token: 4 positions
    assert torch.equal(cache["hook_pos_embed"][0], _power_transcription(4, cfg.d_model).float())


@pytest.mark.parametrize("kw", [
    dict(n_layers=2, layer_norm=True, ln_style="post", bias="norm", pos_embed="sinusoidal", input_layout="a_op_b_eq"),
    dict(n_layers=1, layer_norm=True, ln_style="post", bias="all", pos_embed="learned"),
    dict(n_layers=2, layer_norm=True, ln_style="post", bias="none", input_layout="a_b"),
    dict(n_layers=2, layer_norm=False, bias="mlp", pos_embed="sinusoidal"),
    dict(n_layers=1, layer_norm=True, ln_style="pre", bias="norm", pos_embed="sinusoidal", input_layout="a_b"),
])
def test_post_ln_and_sinusoidal_forward_equals_the_hooked_module(kw):
    """The functional forward over stacked parameters is the hooked module run by run, values and gradients."""
    cfg = _model_cfg(**kw)
    R = 3
    per_run = [_noisy(dataclasses.replace(cfg, init_seed=r), r) for r in range(R)]
    stacked = {k: torch.stack([p[k] for p in per_run]).requires_grad_(True) for k in per_run[0]}
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, cfg.p, (R, 6, 3), generator=gen)
    tokens[..., 2] = cfg.p
    out = forward(stacked, tokens, cfg)
    weights = torch.randn(out.shape, generator=gen)
    (out * weights).sum().backward()
    for r in range(R):
        model = HookedGrokTransformer(cfg, init=False).load_params(per_run[r])
        ref = model(tokens[r])[:, -1]
        (ref * weights[r]).sum().backward()
        assert close(out[r].detach(), ref.detach()), (r, "logits")
        names = dict(model.named_parameters())
        assert set(names) == set(stacked)
        for name, p in names.items():
            assert close(stacked[name].grad[r], p.grad, rel=1e-4), (r, name)


def test_post_ln_blocks_normalise_the_sums_and_have_no_final_layernorm():
    """Power et al.'s block: resid_mid = ln1(resid_pre + attn_out), resid_post = ln2(resid_mid + mlp_out); the
    logits read the last block's output directly (no ln_final), computed here by hand from the cache."""
    import torch.nn.functional as F

    cfg = _model_cfg(n_layers=2, layer_norm=True, ln_style="post", bias="norm")
    params = _noisy(cfg, 0)
    model = HookedGrokTransformer(cfg, init=False).load_params(params)
    assert "ln_final.w" not in param_shapes(cfg) and not hasattr(model, "ln_final")
    assert cfg.n_params == sum(math.prod(s) for s in param_shapes(cfg).values())
    logits, cache = model.run_with_cache(torch.tensor([[1, 2, 7], [3, 4, 7]]))

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], eps=1e-5) * params[f"{name}.w"] + params[f"{name}.b"]

    for L in range(2):
        mid = ln(cache[f"blocks.{L}.hook_resid_pre"] + cache[f"blocks.{L}.hook_attn_out"], f"blocks.{L}.ln1")
        assert close(cache[f"blocks.{L}.hook_resid_mid"], mid)
        post = ln(mid + cache[f"blocks.{L}.hook_mlp_out"], f"blocks.{L}.ln2")
        assert close(cache[f"blocks.{L}.hook_resid_post"], post)
    assert close(logits, cache["blocks.1.hook_resid_post"] @ params["unembed.W_U"])
    pre = dataclasses.replace(cfg, ln_style="pre")
    other = HookedGrokTransformer(pre, init=False)
    other.load_params({**params, "ln_final.w": torch.ones(cfg.d_model), "ln_final.b": torch.zeros(cfg.d_model)})
    assert not close(other(torch.tensor([[1, 2, 7]])), model(torch.tensor([[1, 2, 7]])))
    assert "post" in get_family("transformer").describe(cfg)


def test_transformer_lens_export_names_what_it_cannot_express_and_copies_the_sinusoidal_table():
    from grokinterp.model.tl_export import to_transformer_lens

    post = _model_cfg(n_layers=2, layer_norm=True, ln_style="post", bias="norm")
    with pytest.raises(ConfigError, match="^model.ln_style: 'post'"):
        to_transformer_lens(init_params(post), post)
    cfg = _model_cfg(n_layers=2, layer_norm=True, bias="norm", pos_embed="sinusoidal")
    params = _noisy(cfg, 0)
    model = HookedGrokTransformer(cfg, init=False).load_params(params)
    bridge = to_transformer_lens(params, cfg)
    x = torch.tensor([[a, b, cfg.p] for a in range(cfg.p) for b in range(cfg.p)])
    with torch.no_grad():
        assert close(bridge(x), model(x))


def test_a_power_stack_trains_as_its_single_runs(tmp_path):
    """Two minibatch runs of Power et al.'s decoder (small widths) in one generic stack equal the runs trained
    alone; the fixed positions stay fixed (no W_pos in the checkpoints)."""
    base = make_config("power", p=11, operation="div", frac_train=0.6, d_model=16, n_heads=2, d_mlp=32,
                       batch_size=16, epochs=3, every=6, log_early=0, eval_every=1, flush_every=1)
    cfgs = [base, base.replace(init_seed=1, split_seed=1, sampler_seed=1, weight_decay=0.3)]
    assert stack_key(cfgs[0]) == stack_key(cfgs[1]) and stack_unsupported_reason(base) is None
    runs = train_stacked(cfgs, [tmp_path / f"s{r}" for r in range(2)], progress=False)
    for r, c in enumerate(cfgs):
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        assert runs[r].info["stack"]["impl"] == "generic" and runs[r].finished
        assert "pos_embed.W_pos" not in ref.stacks() and "ln_final.w" not in ref.stacks()
        assert np.allclose(runs[r].metrics["train_loss"], ref.metrics["train_loss"], rtol=1e-5, equal_nan=True)
        assert ref.metrics["train_loss"].dropna().iloc[-1] < ref.metrics["train_loss"].dropna().iloc[0]
        for k in ref.stacks():
            assert close(runs[r].stack(k), ref.stack(k), rel=1e-5), (r, k)


def test_power_preset_is_their_setting():
    cfg = make_config("power")
    m, t = cfg.model, cfg.train
    assert (m.n_layers, m.d_model, m.n_heads, m.d_mlp, m.act_fn) == (2, 128, 4, 512, "relu")
    assert (m.layer_norm, m.ln_style, m.bias, m.pos_embed, m.input_layout) == (True, "post", "norm", "sinusoidal",
                                                                             "a_op_b_eq")
    assert (t.optimizer, t.lr, t.beta1, t.beta2, t.weight_decay, t.weight_decay_on) == ("adamw", 1e-3, 0.9, 0.98, 1.0,
                                                                                        "all")
    assert (t.warmup_epochs, t.warmup_style, t.batch_size) == (10, "paper", 512)
    assert m.init_method == "torch"
    assert cfg.task.operation == "div" and cfg.task.p == 97 and cfg.total_steps() == 100_000
    # about 4·10^5 non-embedding parameters, as their appendix says
    emb = (m.d_vocab + m.d_vocab_out) * m.d_model
    assert 3.9e5 < m.n_params - emb < 4.0e5
    assert [t.lr_at(s) for s in (0, 1, 10, 11)] == [0.0, 1e-4, 1e-3, 1e-3]  # their LambdaLR: step 0 at lr 0


def test_cli_power_flags_and_info(tmp_path):
    out = tmp_path / "run"
    code, _, err = cli_here("train", "--preset", "tiny", "--p", "7", "--d-model", "8", "--n-heads", "2", "--d-mlp",
                            "16", "--n-layers", "2", "--layer-norm", "--ln-style", "post", "--bias", "norm",
                            "--pos-embed", "sinusoidal", "--epochs", "2", "--out", str(out), "--no-progress")
    assert code == 0, err
    m = load_run(out).config.model
    assert (m.ln_style, m.pos_embed, m.bias) == ("post", "sinusoidal", "norm")
    code, text, _ = cli_here("info", str(out))
    assert code == 0 and "LayerNorm on (post)" in text and "sinusoidal positions" in text
    code, _, err = cli_here("train", "--preset", "tiny", "--pos-embed", "alibi", "--out", str(tmp_path / "x"))
    assert code == 2 and "pos_embed" in err and not (tmp_path / "x").exists()
    code, text, _ = cli_here("train", "--help")
    assert "--pos-embed" in text and "sinusoidal" in text and "post" in text


def test_torch_initialisation_is_pytorchs_layer_defaults():
    """init_method torch: embeddings N(0, 1) as nn.Embedding, weights as nn.Linear's Kaiming-uniform (bound
    1/sqrt(fan_in), checked against nn.Linear's own draw), LayerNorm 1 and 0; seeded and reproducible."""
    cfg = make_config("power").model
    P = init_params(cfg)
    assert torch.equal(P["blocks.1.mlp.W_out"], init_params(cfg)["blocks.1.mlp.W_out"])
    assert not torch.equal(P["embed.W_E"], init_params(dataclasses.replace(cfg, init_seed=1))["embed.W_E"])
    assert abs(float(P["embed.W_E"].std()) - 1.0) < 0.05
    lin = torch.nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)  # PyTorch's own default for W_out's layer
    ref_bound = float(lin.weight.detach().abs().max())
    fans = {"blocks.0.attn.W_Q": cfg.d_model, "blocks.0.attn.W_O": cfg.n_heads * cfg.d_head,
            "blocks.0.mlp.W_in": cfg.d_model, "blocks.0.mlp.W_out": cfg.d_mlp, "unembed.W_U": cfg.d_model}
    for name, fan in fans.items():
        w, bound = P[name], 1.0 / math.sqrt(fan)
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.98 * bound, name
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound, name
    assert abs(ref_bound - 1.0 / math.sqrt(cfg.d_mlp)) < 0.02 / math.sqrt(cfg.d_mlp)
    assert torch.equal(P["blocks.0.ln1.w"], torch.ones(cfg.d_model)) and not P["blocks.0.ln1.b"].any()
    assert make_config("tiny").model.init_method == "default"  # nothing else changes
