"""Training interventions: Grokfast filters, ⊥Grad / ⊥AdamW, StableMax, initialisation scale, weight-norm
constraint, schedules, weight-decay groups and the attention coefficient — each against a plain reference
written here, each resumable bit for bit, all combinable, bad values refused before anything is written."""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import cli, close, perturbed

import grokinterp as g
from grokinterp.config import RunConfig, interventions, make_config
from grokinterp.model import HookedGrokTransformer
from grokinterp.model.fastpath import FastPlan, final_logits
from grokinterp.model.grid import grid_forward, grid_tokens
from grokinterp.training import transforms as T
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainingInterrupted, TrainLoop
from grokinterp.training.optim import ParamLayout, StackedOrthoAdamW, param_groups
from grokinterp.training.step import log_stablemax, stablemax, stablemax_cross_entropy

TINY = make_config("tiny", epochs=60, every=10, flush_every=3, eval_every=10)


def _toy_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.nn.Parameter(torch.randn(3, 4, generator=gen)), "b": torch.nn.Parameter(torch.randn(5, generator=gen))}


def _toy_grads(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)} for _ in range(n)]


# -- Grokfast filters against Lee et al.'s code, written plainly -------------------------------------------
def test_grokfast_ema_equals_the_reference_filter_on_a_gradient_sequence():
    cfg = make_config("tiny", grokfast_alpha=0.9, grokfast_lamb=2.5).train
    f = T.GrokfastEMA(_toy_params(), cfg)
    ema = None
    for grads in _toy_grads(12):
        # reference (gradfilter_ema): the state starts at the first gradient, then α·ema + (1 − α)·g
        ref = {}
        if ema is None:
            ema = {k: v.clone() for k, v in grads.items()}
        for k, gk in grads.items():
            ema[k] = ema[k] * 0.9 + gk * (1 - 0.9)
            ref[k] = gk + ema[k] * 2.5
        got = {k: v.clone() for k, v in grads.items()}
        f(got)
        for k in grads:
            assert torch.equal(got[k], ref[k]), k  # the same float operations in the same order


@pytest.mark.parametrize("window", [1, 4])
def test_grokfast_ma_equals_the_reference_filter_on_a_gradient_sequence(window):
    cfg = make_config("tiny", grokfast_window=window, grokfast_lamb=5.0).train
    f = T.GrokfastMA(_toy_params(), cfg)
    hist = {k: deque(maxlen=window) for k in ("w", "b")}
    for t, grads in enumerate(_toy_grads(11)):
        ref = {}
        for k, gk in grads.items():  # gradfilter_ma(filter_type="mean", warmup=True)
            hist[k].append(gk.clone())
            ref[k] = gk + (sum(hist[k]) / len(hist[k])) * 5.0 if len(hist[k]) == window else gk.clone()
        got = {k: v.clone() for k, v in grads.items()}
        f(got)
        for k in grads:
            if t + 1 < window:
                assert torch.equal(got[k], grads[k])  # warm-up: unchanged
            assert torch.allclose(got[k], ref[k], rtol=1e-6, atol=1e-6), (t, k)


def test_filter_state_round_trips_and_rejects_a_wrong_shape():
    tc = make_config("tiny", grokfast_window=3).train
    for cls in (T.GrokfastEMA, T.GrokfastMA):
        a, b = cls(_toy_params(), tc), cls(_toy_params(), tc)
        seq = _toy_grads(5)
        for grads in seq[:3]:
            a({k: v.clone() for k, v in grads.items()})
        b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
        for grads in seq[3:]:
            ga, gb = ({k: v.clone() for k, v in grads.items()} for _ in range(2))
            a(ga), b(gb)
            assert all(torch.equal(ga[k], gb[k]) for k in ga)
        bad = dict(a.state_dict())
        key = next(k for k in bad if k != "steps")
        bad[key] = bad[key][..., :1]
        with pytest.raises(ValueError):
            b.load_state_dict(bad)


# -- ⊥Grad and ⊥AdamW ------------------------------------------------------------------------------------
def test_orthograd_removes_the_component_along_the_weights_and_keeps_the_norm():
    params = _toy_params(3)
    f = T.OrthoGrad(params, TINY.train)
    grads = _toy_grads(1, seed=4)[0]
    got = {k: v.clone() for k, v in grads.items()}
    f(got)
    for k, w in params.items():
        w64, g64 = w.detach().double().reshape(-1), grads[k].double().reshape(-1)
        perp = g64 - (w64 @ g64) / (w64 @ w64) * w64
        expect = perp * (g64.norm() / perp.norm())
        assert torch.allclose(got[k].double().reshape(-1), expect, rtol=1e-5, atol=1e-6)
        assert abs(float(got[k].double().reshape(-1) @ w64)) < 1e-4 * float(g64.norm() * w64.norm())
    zero = {"z": torch.nn.Parameter(torch.zeros(4))}  # a zero parameter (a bias at init) keeps its gradient
    gz = {"z": torch.tensor([1.0, -2.0, 0.5, 3.0])}
    T.OrthoGrad(zero, TINY.train)(gz)
    assert torch.allclose(gz["z"], torch.tensor([1.0, -2.0, 0.5, 3.0]))


def test_ortho_adamw_is_adamw_on_orthogonalised_gradients():
    """The registry's ⊥AdamW over a stack of one is torch's AdamW on gradients made orthogonal first."""
    p1, p2 = _toy_params(5), _toy_params(5)
    tc = g.TrainConfig(optimizer="ortho_adamw", lr=0.01, beta1=0.9, beta2=0.98, weight_decay=0.1, warmup_epochs=0)
    lay = ParamLayout({k: tuple(v.shape) for k, v in p1.items()})
    flat = torch.nn.Parameter(lay.flatten({k: v.detach()[None] for k, v in p1.items()}))
    o1 = StackedOrthoAdamW(flat, lay, [tc])
    o2 = torch.optim.AdamW(p2.values(), lr=0.01, betas=(0.9, 0.98), weight_decay=0.1)
    for e, grads in enumerate(_toy_grads(4, seed=6)):
        flat.grad = lay.flatten({k: grads[k].clone()[None] for k in p1})
        o1.set_lr(torch.tensor(float(e)), e)
        o1.step()
        for k in p1:
            g2 = grads[k].clone()
            T.orthogonalize_(p2[k], g2)
            p2[k].grad = g2
        o2.step()
        for k, v in lay.views(flat.detach()[0]).items():
            assert torch.allclose(v, p2[k], rtol=1e-6, atol=1e-7)


# -- StableMax --------------------------------------------------------------------------------------------
def test_stablemax_equals_its_definition_on_known_inputs():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.equal(stablemax(x), torch.tensor([0.25, 0.5, 1 / 1.5, 1.0, 1.5, 3.0], dtype=torch.float64))
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]])
    # s = [1, 2, 0.5] → p = [1, 2, 0.5] / 3.5; s = [3, 3, 3] → p = 1/3 each
    assert torch.allclose(log_stablemax(logits.double()), torch.log(torch.tensor(
        [[1 / 3.5, 2 / 3.5, 0.5 / 3.5], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)))
    loss = stablemax_cross_entropy(logits, torch.tensor([1, 0]))
    assert loss.dtype == torch.float64
    assert math.isclose(loss.item(), -(math.log(2 / 3.5) + math.log(1 / 3)) / 2, rel_tol=1e-12)
    # not shift-invariant (unlike the softmax), and gradients finite where 1/(1 − x) has its pole
    assert not torch.allclose(log_stablemax(logits.double()), log_stablemax(logits.double() + 1))
    z = torch.tensor([[1.0, 0.0, 5.0]], requires_grad=True)
    stablemax_cross_entropy(z, torch.tensor([0])).backward()
    assert torch.isfinite(z.grad).all()


def test_stablemax_run_records_the_stablemax_loss(tmp_path):
    run = g.train(TINY.replace(loss="stablemax", epochs=3, every=1), tmp_path / "s", progress=False)
    model = run.model(0)
    x, y = run.train_data()
    with torch.no_grad():
        expect = stablemax_cross_entropy(model(x)[:, -1], y).item()
    assert math.isclose(run.metrics["train_loss"][0], expect, rel_tol=1e-5)


# -- initialisation scale and the weight-norm constraint -----------------------------------------------------
def test_init_scale_multiplies_every_initial_weight(tmp_path):
    a = HookedGrokTransformer(make_config("tiny").model)
    b = HookedGrokTransformer(make_config("tiny", init_scale=3.0).model)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pb, 3.0 * pa, rtol=1e-6, atol=0), name
        if name.split(".")[-1].startswith("b_"):
            assert not pb.any()
    run = g.train(TINY.replace(init_scale=3.0, epochs=2, every=1), tmp_path / "r", progress=False)
    assert torch.equal(run.params(0)["embed.W_E"], b.embed.W_E.detach())


def test_weight_norm_constraint_holds_the_initial_norm(tmp_path):
    cfg = TINY.replace(init_scale=2.0, weight_norm=True, weight_decay=0.0, epochs=40)
    run = g.train(cfg, tmp_path / "wn", progress=False)
    sq = {e: sum(float(v.double().pow(2).sum()) for v in run.params(int(e)).values()) for e in run.epochs}
    init = HookedGrokTransformer(cfg.model)
    r0 = sum(float(p.detach().double().pow(2).sum()) for p in init.parameters())
    assert all(abs(v / r0 - 1) < 1e-5 for v in sq.values()), sq
    free = g.train(cfg.replace(weight_norm=False), tmp_path / "free", progress=False)
    assert abs(sum(float(v.double().pow(2).sum()) for v in free.params(-1).values()) / r0 - 1) > 1e-2


def test_weight_norm_target_holds_the_given_norm_after_every_step(tmp_path):
    # checkpoints every epoch: the norm after each step is the target, not the initial norm
    cfg = TINY.replace(init_scale=2.0, weight_norm=True, weight_norm_target=7.5, weight_decay=0.0, epochs=12,
                       every=1)
    run = g.train(cfg, tmp_path / "wt", progress=False)
    norms = {int(e): math.sqrt(sum(float(v.double().pow(2).sum()) for v in run.params(int(e)).values()))
             for e in run.epochs}
    init = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in HookedGrokTransformer(cfg.model).parameters()))
    assert abs(norms[0] - init) < 1e-4 * init and abs(init - 7.5) > 1.0  # epoch 0: the untouched initialisation
    assert all(abs(v - 7.5) < 1e-5 * 7.5 for e, v in norms.items() if e > 0), norms
    assert any("held at 7.5" in line for line in interventions(cfg))


@pytest.mark.parametrize("kw,msg", [(dict(weight_norm=True, weight_norm_target=0.0), "positive"),
                                    (dict(weight_norm=True, weight_norm_target=-1.0), "positive"),
                                    (dict(weight_norm=True, weight_norm_target=float("nan")), "positive"),
                                    (dict(weight_norm=True, weight_norm_target="49"), "positive"),
                                    (dict(weight_norm=False, weight_norm_target=49.0), "train.weight_norm true")])
def test_bad_weight_norm_target_is_a_config_error_naming_the_field(kw, msg):
    with pytest.raises(g.ConfigError, match="train.weight_norm_target") as e:
        TINY.replace(**kw)
    assert msg in str(e.value)


def test_weight_norm_target_flag_reaches_the_config(tmp_path):
    out = tmp_path / "never"
    res = cli("train", "--preset", "tiny", "--out", str(out), "--weight-norm-target", "5")
    assert res.returncode == 2 and "train.weight_norm_target" in res.stderr and not out.exists(), res.stderr


# -- schedules and weight-decay groups ---------------------------------------------------------------------
def test_cosine_schedule_is_recorded_as_defined(tmp_path):
    cfg = TINY.replace(lr_schedule="cosine", warmup_epochs=5, epochs=30)
    run = g.train(cfg, tmp_path / "c", progress=False)
    lr = run.metrics["lr"].to_numpy()
    tc = cfg.train
    for e in range(30):
        expect = tc.lr * min((e + 1) / 5, 1) if e < 5 else tc.lr * 0.5 * (1 + math.cos(math.pi * (e - 5) / 25))
        assert math.isclose(lr[e], expect, rel_tol=1e-12), e
    assert lr[29] < 0.01 * tc.lr


def test_weight_decay_on_matrices_leaves_the_biases_undecayed(tmp_path):
    cfg = TINY.replace(weight_decay_on="matrices", optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.5)
    loop = TrainLoop(cfg, tmp_path, torch.device("cpu"), *cfg.task.task().split(0.7, 0))
    groups = param_groups(loop.params, cfg.train)
    names = {id(p): k for k, p in loop.params.items()}
    assert [g_["weight_decay"] for g_ in groups] == [0.5, 0.0]
    assert all(loop.params[names[id(p)]].ndim >= 2 for p in groups[0]["params"])
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["blocks.0.mlp.b_in", "blocks.0.mlp.b_out"]
    wd = loop.layout.views(loop.optimizer.weight_decay.expand(1, loop.layout.total))  # the optimizer's decay
    assert all(bool((wd[k] == (0.0 if k.endswith(("b_in", "b_out")) else 0.5)).all()) for k in loop.params)
    # one plain SGD step: matrices lose lr·wd·θ, biases only their gradient
    before = {k: p.detach().clone() for k, p in loop.params.items()}
    loop.step(20, record_acc=False)  # past the warm-up: lr = 0.1
    for k, p in loop.params.items():
        grad = p.grad
        decay = 0.5 if p.ndim >= 2 else 0.0
        assert torch.allclose(p.detach(), before[k] - 0.1 * (grad + decay * before[k]), rtol=1e-5, atol=1e-7), k


# -- the attention coefficient ------------------------------------------------------------------------------
@pytest.mark.parametrize("coeff", [0.0, 0.37, 1.0])
def test_attention_coefficient_hooked_fast_path_and_grid_agree(coeff):
    cfg = make_config("tiny", p=11, attn_coeff=coeff).model
    model = perturbed(cfg, scale=1.0, seed=2)
    x = grid_tokens(11)
    logits, cache = model.run_with_cache(x)
    ref = logits[:, -1]
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, q, k]
    mask = torch.tril(torch.ones(3, 3))
    assert torch.allclose(pattern.sum(-1), (coeff + (1 - coeff) * mask.sum(-1)).expand_as(pattern.sum(-1)), atol=1e-6)
    if coeff == 0.0:
        assert torch.equal(pattern, mask.expand_as(pattern))
    params = dict(model.named_parameters())
    fast = final_logits(params, FastPlan.build(cfg, x))
    grid = grid_forward({k: v.detach() for k, v in params.items()}, cfg, return_pattern=True)
    assert close(fast, ref) and close(grid.logits.reshape(-1, 11), ref)
    assert torch.allclose(grid.pattern.reshape(-1, 4, 3), pattern[:, :, -1].reshape(-1, 4, 3), atol=1e-6)
    # gradients of the fast path equal the hooked model's
    y = torch.arange(121) % 11
    gf = torch.autograd.grad(torch.nn.functional.cross_entropy(fast, y), list(params.values()))
    gh = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x)[:, -1], y), list(params.values()))
    assert all(close(a, b, rel=1e-4) for a, b in zip(gf, gh))


def test_constant_attention_makes_the_model_symmetric_in_a_and_b():
    cfg = make_config("tiny", p=11, attn_coeff=0.0).model
    L = grid_forward({k: v.detach() for k, v in perturbed(cfg, seed=5).named_parameters()}, cfg).logits
    assert close(L, L.transpose(0, 1))
    cfg1 = dataclasses.replace(cfg, attn_coeff=1.0)
    L1 = grid_forward({k: v.detach() for k, v in perturbed(cfg1, seed=5).named_parameters()}, cfg1).logits
    assert not close(L1, L1.transpose(0, 1), rel=1e-2)


# -- everything together: combinable, resumable bit for bit, recorded, shown -----------------------------
ALL_ON = dict(grad_transforms=("grokfast_ema", "grokfast_ma", "orthograd"), grokfast_window=5, optimizer="ortho_adamw",
              loss="stablemax", init_scale=1.5, weight_norm=True, attn_coeff=0.5, lr_schedule="cosine",
              weight_decay_on="matrices", weight_decay=0.1, live_every=10)


class _StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_step(self, loop, epoch):
        if epoch == self.epoch:
            loop.request_stop()


def test_every_intervention_at_once_resumes_bit_identically(tmp_path):
    cfg = TINY.replace(**ALL_ON)
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, tmp_path / "cut", progress=False, callbacks=[_StopAt(27)])
    cut = g.resume(tmp_path / "cut", progress=False)
    assert np.array_equal(ref.epochs, cut.epochs)
    for name, stack in ref.stacks().items():
        assert torch.equal(stack, cut.stack(name)), name
    pd.testing.assert_frame_equal(ref.metrics, cut.metrics)
    assert "live_key_freqs" in ref.metrics.columns and ref.metrics["live_restricted_acc"].notna().sum() == 7
    # recorded in run.json and listed by `info`
    stored = RunConfig.from_dict(ref.info["config"])
    assert stored == cfg and stored.train.grad_transforms == ALL_ON["grad_transforms"]
    lines = interventions(cfg)
    assert len(lines) == 8 and any("grokfast_window 5" in x for x in lines)


def test_info_shows_the_interventions(tmp_path):
    g.train(TINY.replace(epochs=5, init_scale=2.0, attn_coeff=0.0, grad_transforms=("grokfast_ema",)),
            tmp_path / "r", progress=False)
    out = cli("info", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    assert "intervention: init_scale: 2.0" in out.stdout and "intervention: attn_coeff: 0.0" in out.stdout
    assert "grokfast_ema (grokfast_alpha 0.98, grokfast_lamb 2.0)" in out.stdout


def test_report_shows_the_interventions(tmp_path):
    run = g.train(TINY.replace(init_scale=2.0, attn_coeff=0.5, lr_schedule="cosine"), tmp_path / "r", progress=False)
    path, head = g.write_report(run, tmp_path / "r.html", max_checkpoints=8, return_headline=True)
    assert head["extras"]["interventions"] == ["lr_schedule: cosine", "init_scale: 2.0", "attn_coeff: 0.5"]
    text = path.read_text()
    assert all(line in text for line in head["extras"]["interventions"])
    plain = g.write_report(g.train(TINY.replace(epochs=20), tmp_path / "p", progress=False), tmp_path / "p.html",
                           max_checkpoints=8, return_headline=True)[1]
    assert plain["extras"]["interventions"] is None  # the paper's recipe: nothing to list


@pytest.mark.parametrize("flags,field", [
    (["--grokfast-alpha", "0.9"], "train.grokfast_alpha"),
    (["--grokfast-lamb", "5"], "train.grokfast_lamb"),
    (["--grokfast-window", "50", "--grad-transforms", "grokfast_ema"], "train.grokfast_window"),
    (["--grokfast-alpha", "0.9", "--grad-transforms", "grokfast_ma"], "train.grokfast_alpha"),
])
def test_a_grokfast_flag_without_its_filter_exits_2_before_anything_is_written(tmp_path, flags, field):
    out = tmp_path / "never"
    res = cli("train", "--preset", "tiny", "--out", str(out), *flags)
    assert res.returncode == 2, res.stderr
    assert field in res.stderr and "grad_transforms" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("flag,value,field", [
    ("--init-scale", "0", "model.init_scale"), ("--init-scale", "-1", "model.init_scale"),
    ("--grokfast-window", "0", "train.grokfast_window"), ("--grokfast-alpha", "1", "train.grokfast_alpha"),
    ("--grokfast-alpha", "-0.1", "train.grokfast_alpha"), ("--grokfast-lamb", "-1", "train.grokfast_lamb"),
    ("--attn-coeff", "1.5", "model.attn_coeff"), ("--attn-coeff", "-0.1", "model.attn_coeff"),
    ("--optimizer", "lion", "train.optimizer"), ("--lr-schedule", "step", "train.lr_schedule"),
    ("--loss", "hinge", "train.loss"), ("--weight-decay-on", "biases", "train.weight_decay_on"),
    ("--grad-transforms", "grokfast_ema,nope", "train.grad_transforms"), ("--live-every", "-1", "train.live_every"),
])
def test_bad_intervention_values_exit_2_naming_the_field_before_anything_is_written(tmp_path, flag, value, field):
    out = tmp_path / "never"
    res = cli("train", "--preset", "tiny", "--out", str(out), flag, value)
    assert res.returncode == 2, res.stderr
    assert field in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_old_run_json_without_the_new_fields_loads_with_the_old_behaviour():
    cfg = make_config("quick", live_every=0)
    d = cfg.to_dict()
    for sec, names in {"model": ["init_scale", "attn_coeff"],
                       "train": ["lr_schedule", "weight_decay_on", "loss", "grokfast_alpha", "grokfast_lamb",
                                 "grokfast_window", "weight_norm", "live_every"]}.items():
        for name in names:
            del d[sec][name]
    old = RunConfig.from_dict(d)
    assert old == cfg and interventions(old) == []
