"""The ``mlp`` model family (issue 19): its config, initialisation, hooked forward, training, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _helpers import StopAt, cli_here

import grokinterp as g
from grokinterp.config import (
    MODEL_CONFIGS,
    ModelConfig,
    RunConfig,
    interventions,
    make_config,
    model_config_class,
)
from grokinterp.errors import ConfigError
from grokinterp.model import init_params, param_shapes
from grokinterp.model.families import get_family
from grokinterp.model.families.mlp import MLPConfig, hidden_hook
from grokinterp.training.loop import TrainingInterrupted

SMALL = dict(family="mlp", d_embed=16, d_hidden=64, epochs=60, lr=1e-2, weight_decay=0.1, eval_every=5, every=10,
             flush_every=3)
SETTINGS = [
    dict(),
    dict(combine="concat", act_fn="quadratic", hidden_bias=False, unembed_bias=True),
    dict(d_embed=0, n_hidden_layers=3, act_fn="gelu", unembed_bias=True),
    dict(combine="concat", d_embed=0, n_hidden_layers=2, hidden_bias=False),
]


def _cfg(**kw) -> MLPConfig:
    return make_config("tiny", p=11, **{"family": "mlp", "d_embed": 4, "d_hidden": 16, **kw}).model


def _by_hand(P: dict, cfg: MLPConfig, tokens: torch.Tensor) -> torch.Tensor:
    """The MLP written out: embeddings (or one-hot), the first layer per ``combine``, the other layers, logits."""
    a, b = tokens[:, 0], tokens[:, 1]
    e_a, e_b = ((P["embed.W_E"][a], P["embed.W_E"][b]) if cfg.d_embed else
                (F.one_hot(a, cfg.p).float(), F.one_hot(b, cfg.p).float()))
    act = {"relu": torch.relu, "gelu": F.gelu, "quadratic": lambda x: x * x}[cfg.act_fn]
    if cfg.combine == "sum":
        h = e_a @ P["hidden.0.W_a"] + e_b @ P["hidden.0.W_b"]
        if cfg.hidden_bias:
            h = h + P["hidden.0.b_a"] + P["hidden.0.b_b"]
    else:
        h = torch.cat([e_a, e_b], dim=1) @ P["hidden.0.W_in"]
        if cfg.hidden_bias:
            h = h + P["hidden.0.b_in"]
    h = act(h)
    for L in range(1, cfg.n_hidden_layers):
        h = h @ P[f"hidden.{L}.W_in"] + (P[f"hidden.{L}.b_in"] if cfg.hidden_bias else 0)
        h = act(h)
    return h @ P["unembed.W_U"] + (P["unembed.b_U"] if cfg.unembed_bias else 0)


@pytest.mark.parametrize("kw", SETTINGS)
def test_hooked_forward_equals_the_computation_written_out(kw):
    cfg = _cfg(init_seed=3, **kw)
    model = get_family("mlp").hooked(cfg)
    P = init_params(cfg)
    assert {k: tuple(v.shape) for k, v in model.named_parameters()} == param_shapes(cfg)
    assert sum(math.prod(s) for s in param_shapes(cfg).values()) == cfg.n_params
    tokens = torch.tensor([[a, b, cfg.p] for a in range(cfg.p) for b in range(cfg.p)])
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape == (len(tokens), 1, cfg.d_vocab_out)
    torch.testing.assert_close(logits[:, -1], _by_hand(P, cfg, tokens), rtol=1e-5, atol=1e-5)
    # the hooks: embeddings a then b, each layer's pre/post, the logits; the neurons are the last post
    L = cfg.n_hidden_layers - 1
    assert cache["hook_embed"].shape == (len(tokens), 2, cfg.d_embed or cfg.p)
    assert cache[hidden_hook(cfg)].shape == (len(tokens), cfg.d_hidden) and hidden_hook(cfg) == f"hidden.{L}.hook_post"
    torch.testing.assert_close(cache[f"hidden.{L}.hook_post"], model.act(cache[f"hidden.{L}.hook_pre"]))
    torch.testing.assert_close(cache["hook_logits"], logits[:, -1])
    # a hook edits the forward (TransformerLens' run_with_hooks): zeroing the neurons leaves the bias alone
    zeroed = model.run_with_hooks(tokens, fwd_hooks=[(hidden_hook(cfg), lambda x, hook: torch.zeros_like(x))])
    bias = P["unembed.b_U"] if cfg.unembed_bias else torch.zeros(cfg.d_vocab_out)
    torch.testing.assert_close(zeroed[:, -1], bias.expand(len(tokens), -1))


def test_the_equals_token_is_not_read_and_bad_tokens_are_refused():
    model = get_family("mlp").hooked(_cfg())
    x = torch.tensor([[1, 2, 11], [1, 2, 0]])
    assert torch.equal(model(x)[0], model(x)[1]) and torch.equal(model(x[:, :2]), model(x)[:1].expand(2, -1, -1)[:2])
    with pytest.raises(ConfigError, match="tokens"):
        model(torch.tensor([[1]]))


def test_initialisation_is_seeded_reproducible_and_torchs_own():
    cfg = _cfg(init_seed=7, n_hidden_layers=2)
    a, b = init_params(cfg), init_params(cfg)
    assert list(a) == list(param_shapes(cfg))
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    model = get_family("mlp").hooked(cfg)
    assert all(torch.equal(p, a[k]) for k, p in model.named_parameters())
    c = init_params(_cfg(init_seed=8, n_hidden_layers=2))
    assert not torch.equal(a["hidden.0.W_a"], c["hidden.0.W_a"])
    # torch's nn.Linear bounds: |W|, |b| ≤ 1/sqrt(fan_in); the embedding is N(0, 1); init_scale multiplies all
    assert a["hidden.0.W_a"].abs().max() <= 1 / math.sqrt(4) and a["hidden.1.b_in"].abs().max() <= 1 / math.sqrt(16)
    assert a["unembed.W_U"].abs().max() <= 1 / math.sqrt(16)
    big = init_params(_cfg(init_seed=7, n_hidden_layers=2, init_scale=3.0))
    assert all(torch.allclose(big[k], 3.0 * a[k]) for k in a)


def test_config_round_trips_through_json_and_is_strict():
    for kw in SETTINGS:
        cfg = make_config("tiny", p=13, **{**SMALL, **kw}, init_seed=2 ** 64 - 1)
        d = json.loads(json.dumps(cfg.to_dict()))
        assert d["model"]["family"] == "mlp" and RunConfig.from_dict(d) == cfg
        assert type(RunConfig.from_dict(d).model) is MLPConfig
    d = cfg.to_dict()
    d["model"]["d_model"] = 64
    with pytest.raises(ConfigError, match=r"model\.d_model.*newer grokinterp"):
        RunConfig.from_dict(d)
    d = cfg.to_dict()
    del d["model"]["d_hidden"]
    with pytest.raises(ConfigError, match=r"missing field\(s\) model\.d_hidden"):
        RunConfig.from_dict(d)
    d["model"]["family"] = "lstm"
    with pytest.raises(ConfigError, match=r"model\.family: unknown family 'lstm'"):
        RunConfig.from_dict(d)


def test_an_old_run_json_without_family_is_a_transformer():
    d = make_config("tiny").to_dict()
    del d["model"]["family"]
    cfg = RunConfig.from_dict(d)
    assert type(cfg.model) is ModelConfig and cfg.model.family == "transformer" and cfg == make_config("tiny")
    assert model_config_class("transformer") is ModelConfig and MODEL_CONFIGS["mlp"] is MLPConfig


@pytest.mark.parametrize("kw,field", [
    (dict(d_hidden=0), "model.d_hidden"), (dict(n_hidden_layers=0), "model.n_hidden_layers"),
    (dict(act_fn="tanh"), "model.act_fn"), (dict(combine="product"), "model.combine"),
    (dict(d_embed=-1), "model.d_embed"), (dict(unembed_bias=1), "model.unembed_bias"),
    (dict(init_scale=0.0), "model.init_scale"), (dict(n_heads=4), "model.n_heads"),
    (dict(attn_coeff=0.5), "model.attn_coeff"), (dict(d_hidden=10 ** 6, d_embed=10 ** 5), "model:"),
])
def test_bad_mlp_fields_are_refused_naming_them(kw, field):
    with pytest.raises(ConfigError, match="^" + field.replace(".", r"\.")):
        make_config("tiny", family="mlp", **kw)


def test_switching_family_keeps_the_common_fields_and_drops_the_others():
    cfg = make_config("tiny", init_seed=5, init_scale=2.0, family="mlp")
    assert (cfg.model.p, cfg.model.init_seed, cfg.model.init_scale) == (31, 5, 2.0)
    assert not hasattr(cfg.model, "d_model") and cfg.model.d_hidden == MLPConfig.d_hidden
    assert cfg.model.input_layout == "a_b_eq"  # the task's tokens [a, b, =], as a transformer's default
    back = cfg.replace(family="transformer")
    assert type(back.model) is ModelConfig and back.model.init_seed == 5
    assert interventions(cfg) == ["init_scale: 2.0"]  # no transformer field is read


def test_the_devinterp_preset_is_their_model_and_recipe():
    c = make_config("mlp-devinterp")
    m, t = c.model, c.train
    assert (m.family, m.p, m.d_embed, m.d_hidden, m.n_hidden_layers, m.act_fn, m.combine) == \
        ("mlp", 53, 12, 48, 1, "gelu", "sum")
    assert m.hidden_bias and not m.unembed_bias and m.d_vocab_out == 53
    assert param_shapes(m) == {"embed.W_E": (53, 12), "hidden.0.W_a": (12, 48), "hidden.0.b_a": (48,),
                               "hidden.0.W_b": (12, 48), "hidden.0.b_b": (48,), "unembed.W_U": (48, 53)}
    assert (c.task.frac_train, t.optimizer, t.lr, t.weight_decay, t.batch_size, t.warmup_epochs) == \
        (0.4, "adam", 5e-3, 2e-4, 128, 0)
    assert (t.beta1, t.beta2) == (0.9, 0.999)  # torch's Adam defaults
    assert c.steps_per_epoch() == 9 and abs(c.total_steps() - 25_000) < c.steps_per_epoch()


def test_the_fast_path_refuses_other_families_and_stacks_take_the_generic_forward():
    from grokinterp.model.fastpath import fast_path_unsupported
    from grokinterp.model.stacked import stack_unsupported
    from grokinterp.training.stacked import default_impl, stack_key, stack_unsupported_reason

    cfg = make_config("tiny", **SMALL)
    assert "transformer family" in fast_path_unsupported(cfg.model, torch.tensor([[1, 2, 31]]))
    assert "transformer family" in stack_unsupported(cfg.model)  # the one-layer kernels
    assert default_impl(torch.device("cpu"), cfg) == "generic"  # the family's forward
    assert stack_unsupported_reason(cfg) is None and stack_key(cfg) == stack_key(cfg.replace(init_seed=4))
    assert stack_key(cfg) != stack_key(make_config("tiny", **{**SMALL, "d_hidden": 32}))
    # init_scale is a per-run value in stacks (issue 19, the interventions branch), as for a transformer
    assert stack_unsupported_reason(cfg.replace(init_scale=2.0)) is None
    assert stack_key(cfg.replace(init_scale=2.0)) == stack_key(cfg)
    with pytest.raises(ConfigError, match="impl: 'tables' cannot compute this model .*transformer family"):
        g.train_stacked([cfg], ["/nonexistent/a"], progress=False, impl="tables")


@pytest.mark.parametrize("kw", SETTINGS)
def test_the_functional_forward_equals_the_hooked_module_per_run(kw):
    cfgs = [_cfg(init_seed=s, **kw) for s in range(3)]
    params = {n: torch.stack([init_params(c)[n] for c in cfgs]).requires_grad_() for n in param_shapes(cfgs[0])}
    tokens = torch.stack([torch.randint(0, 11, (20, 3), generator=torch.Generator().manual_seed(s)) for s in range(3)])
    logits = get_family("mlp").forward(params, tokens, cfgs[0])
    assert logits.shape == (3, 20, cfgs[0].d_vocab_out)
    logits.square().sum().backward()
    for r, c in enumerate(cfgs):
        model = get_family("mlp").hooked(c)
        alone = model(tokens[r])[:, -1]
        torch.testing.assert_close(logits[r], alone, rtol=1e-5, atol=1e-5)
        alone.square().sum().backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(params[n].grad[r], p.grad, rtol=1e-4, atol=1e-5)
    shared = get_family("mlp").forward(params, tokens[0], cfgs[0])  # [batch, pos]: the same tokens for every run
    torch.testing.assert_close(shared[0], logits[0])


def test_a_stack_of_mlp_runs_equals_the_runs_trained_alone_and_resumes(tmp_path):
    cfgs = [make_config("tiny", **{**SMALL, "epochs": 30}, init_seed=s, split_seed=s) for s in range(3)]
    with pytest.raises(TrainingInterrupted):
        g.train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False, callbacks=[StopAt(11)])
    with pytest.warns(UserWarning, match="trained in a stack of 3; resuming the 3 members"):
        g.resume(tmp_path / "s0", progress=False)
    stacked = [g.load_run(tmp_path / f"s{i}") for i in range(3)]
    for r, c in enumerate(cfgs):
        alone = g.train(c, tmp_path / f"a{r}", progress=False)
        assert stacked[r].info["stack"]["impl"] == "generic" and np.array_equal(stacked[r].epochs, alone.epochs)
        for name, w in alone.stacks().items():
            torch.testing.assert_close(stacked[r].stack(name), w, rtol=1e-4, atol=1e-4)
        assert np.allclose(stacked[r].metrics["train_loss"], alone.metrics["train_loss"], rtol=1e-4)


def test_an_mlp_run_trains_loads_and_resumes_bit_identically(tmp_path):
    cfg = make_config("tiny", **SMALL)
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    assert ref.config == cfg and ref.epochs[-1] == 60
    m = ref.metrics
    assert m["train_loss"].iloc[-1] < m["train_loss"].iloc[0] and m["train_acc"].iloc[-1] > 0.5  # it learns
    model = ref.model(-1)
    assert type(model).__name__ == "HookedMLP"
    P = ref.params(-1)
    assert list(P) == list(param_shapes(cfg.model))
    # the loaded model reproduces the recorded final test accuracy
    ds = cfg.task.task().dataset()
    x, y = (torch.from_numpy(v) for v in ds.select(ref.split_pairs()[1]))
    with torch.no_grad():
        acc = (model(x)[:, -1].argmax(-1) == y).double().mean().item()
    assert acc == pytest.approx(m["test_acc"].iloc[-1], abs=1e-12)
    # interrupted and resumed: the same checkpoints and metrics, bit for bit
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, tmp_path / "cut", progress=False, callbacks=[StopAt(23)])
    cut = g.resume(tmp_path / "cut", progress=False)
    assert np.array_equal(ref.epochs, cut.epochs)
    for name, stack in ref.stacks().items():
        assert torch.equal(stack, cut.stack(name)), name
    pd.testing.assert_frame_equal(ref.metrics, cut.metrics)


def test_cli_trains_an_mlp_and_info_shows_it(tmp_path):
    out = tmp_path / "r"
    code, stdout, err = cli_here("train", "--preset", "tiny", "--family", "mlp", "--d-embed", "8", "--d-hidden", "32",
                                 "--epochs", "20", "--out", str(out), "--no-progress")
    assert code == 0, err
    code, stdout, err = cli_here("info", str(out))
    assert code == 0, err
    assert "model:  mlp: d_embed 8, d_hidden 32, n_hidden_layers 1, act_fn 'relu', combine 'sum'" in stdout
    assert "unused: preset tiny's model fields that the mlp family does not have: d_model 64, n_heads 4" in stdout
    code, stdout, err = cli_here("info", str(out), "--json")
    info = json.loads(stdout)
    assert info["config"]["model"]["family"] == "mlp" and info["unused_preset_fields"]["d_model"] == 64


@pytest.mark.parametrize("flags,field", [
    (["--n-heads", "4"], "model.n_heads"), (["--d-model", "32"], "model.d_model"),
    (["--attn-coeff", "0.5"], "model.attn_coeff"), (["--init-method", "paper"], "model.init_method"),
    (["--fast-path", "true"], "train.fast_path"),
    (["--act-fn", "tanh"], "model.act_fn"), (["--combine", "mean"], "model.combine"),
])
def test_cli_refuses_a_flag_the_family_does_not_have_before_writing(tmp_path, flags, field):
    out = tmp_path / "r"
    code, _, err = cli_here("train", "--preset", "tiny", "--family", "mlp", *flags, "--out", str(out), "--no-progress")
    assert code == 2 and field in err, err
    assert not out.exists()


def test_cli_refuses_an_mlp_flag_on_a_transformer(tmp_path):
    code, _, err = cli_here("train", "--preset", "tiny", "--d-hidden", "32", "--out", str(tmp_path / "r"))
    assert code == 2 and "model.d_hidden: not a field of the transformer family" in err
    assert not (tmp_path / "r").exists()


def test_tools_not_yet_defined_for_an_mlp_run_say_so_and_analyses_run(tmp_path):
    cfg = make_config("tiny", **{**SMALL, "epochs": 10})
    run = g.train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match=r"^model\.family: 'mlp'"):
        run.to_transformer_lens()
    assert g.progress_measures(run)["restricted_loss"].notna().all()  # analyses follow the family (issue 19)
    events = list(g.watch(run.path, interval=0.01, timeout=0))  # live measures from the checkpoints
    assert [e.kind for e in events][-1] == "finished" and "live" in [e.kind for e in events]
    live = g.train(cfg.replace(live_every=5), tmp_path / "live", progress=False)  # live measures: every family
    assert live.metrics["live_restricted_loss"].notna().any()


def test_minibatch_mlp_runs_alone_and_stacked_agree_and_resume(tmp_path):
    """The devinterp recipe's minibatches (shortened): a run alone, interrupted and resumed,
    equals the uninterrupted run bit for bit; a stack of two equals the runs alone to float32 rounding."""
    base = make_config("mlp-devinterp", p=23, d_embed=8, d_hidden=32, epochs=6, batch_size=64, every=5, flush_every=4,
                       eval_every=2)
    assert base.steps_per_epoch() == 4 and base.checkpoint_unit() == "step"
    ref = g.train(base, tmp_path / "ref", progress=False)
    with pytest.raises(TrainingInterrupted):
        g.train(base, tmp_path / "cut", progress=False, callbacks=[StopAt(2)])
    cut = g.resume(tmp_path / "cut", progress=False)
    for name, w in ref.stacks().items():
        assert torch.equal(w, cut.stack(name)), name
    pd.testing.assert_frame_equal(ref.metrics, cut.metrics)
    cfgs = [base, base.replace(init_seed=1, split_seed=1)]
    stacked = g.train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False)
    alone = [ref, g.train(cfgs[1], tmp_path / "a1", progress=False)]
    for s, a in zip(stacked, alone):
        assert s.info["stack"]["impl"] == "generic" and np.array_equal(s.epochs, a.epochs)
        for name, w in a.stacks().items():
            torch.testing.assert_close(s.stack(name), w, rtol=1e-4, atol=1e-4)
