"""Every training intervention trains inside stacks, with values that differ per run: each stacked
optimizer / transform / constraint equals its single-run version on the same gradients, a stack of runs
with differing values follows each run trained alone, a stack resumes bit-identically, and the state
files are a single run's (a run trained in a stack resumes alone, and a single run's state loads into a
stack)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from _helpers import StopAt, close
from _torch_optim import step_singles, torch_optimizer, torch_state_tensors

import grokinterp as g
from grokinterp.model.hooked import HookedGrokTransformer
from grokinterp.model.stacked import StackPlan, stack_params, stacked_final_logits, stacked_losses
from grokinterp.store import layout as store_layout
from grokinterp.training import transforms as T
from grokinterp.training.constraints import StackedWeightNorm, WeightNormConstraint
from grokinterp.training.loop import TrainingInterrupted, TrainLoop
from grokinterp.training.loop import resume as resume_single
from grokinterp.training.optim import STACKED_OPTIMIZERS, ParamLayout
from grokinterp.training.stacked import StackedLoop, resume_stacked, stack_key, stack_mismatch, train_stacked
from grokinterp.training.transforms import STACKED_TRANSFORMS, TRANSFORMS, stacked_orthogonalize_

SMALL = dict(d_model=32, n_heads=2, d_mlp=48, p=23)
BASE = g.make_config("tiny", epochs=12, every=4, log_early=0, **SMALL)

#: Per intervention, the per-run values of one stack (every run also gets its own seeds).
CASES = {
    "adamw": [dict(lr=1e-2, weight_decay=1.0),
              dict(lr=3e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, warmup_style="paper", warmup_epochs=3),
              dict(lr=5e-3, lr_schedule="cosine", weight_decay_on="matrices", warmup_epochs=2)],
    "adam": [dict(optimizer="adam", lr=1e-2, weight_decay=1e-2),
             dict(optimizer="adam", lr=3e-3, weight_decay=0.0, lr_schedule="cosine", weight_decay_on="matrices")],
    "sgd": [dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
            dict(optimizer="sgd", lr=0.3, momentum=0.0, weight_decay=1e-2, weight_decay_on="matrices",
                 lr_schedule="cosine")],
    "ortho_adamw": [dict(optimizer="ortho_adamw", lr=1e-2),
                    dict(optimizer="ortho_adamw", lr=3e-3, weight_decay=0.3, weight_decay_on="matrices")],
    "grokfast_ema": [dict(grad_transforms=("grokfast_ema",), grokfast_alpha=a, grokfast_lamb=lamb)
                     for a, lamb in ((0.98, 2.0), (0.8, 5.0), (0.5, 0.0))],
    "grokfast_ma": [dict(grad_transforms=("grokfast_ma",), grokfast_window=3, grokfast_lamb=lamb) for lamb in (2.0, 5.0)],
    "orthograd": [dict(grad_transforms=("orthograd",), optimizer="sgd", lr=0.1),
                  dict(grad_transforms=("orthograd",), optimizer="sgd", lr=0.3, momentum=0.5)],
    "stablemax": [dict(loss="stablemax", lr=1e-2), dict(loss="stablemax", lr=3e-3, weight_decay=0.1)],
    "mse": [dict(loss="mse", lr=1e-2), dict(loss="mse", lr=3e-3)],
    "weight_norm": [dict(weight_norm=True, init_scale=2.0), dict(weight_norm=False, init_scale=0.5),
                    dict(weight_norm=True, init_scale=1.0)],
    "weight_norm_target": [dict(weight_norm=True, weight_norm_target=9.0), dict(weight_norm=True, init_scale=2.0),
                           dict(weight_norm=True, weight_norm_target=20.0, init_scale=0.5)],
    "attn_coeff": [dict(attn_coeff=0.0), dict(attn_coeff=0.5, init_scale=2.0),
                   dict(attn_coeff=1.0, init_method="paper")],
}
#: Adam-family updates divide by √v: on the first steps a gradient element near 0 moves its weight by
#: about ±lr whatever its size, so a float32 rounding difference in such a gradient (the stacked and the
#: single-run forwards sum in different orders) shows up as up to ~4e-5 of the weights' scale. Linear
#: updates (SGD) agree to 1e-7; the train losses of every case agree to 1e-5.
# A target norm far from the initial one rescales every weight at each step, which carries such an
# Adam rounding difference through the whole run (measured: 1.9e-5 at 12 epochs for a target of 9).
PARAM_REL = {"adamw": 1e-4, "grokfast_ema": 1e-4, "grokfast_ma": 1e-4, "weight_norm_target": 1e-4}
ALL_ON = dict(optimizer="ortho_adamw", grad_transforms=("grokfast_ema", "orthograd", "grokfast_ma"), grokfast_window=3,
              loss="stablemax", weight_norm=True, lr_schedule="cosine", weight_decay_on="matrices",
              warmup_style="paper")


def _cfgs(case: str, base=BASE):
    return [base.replace(init_seed=i, split_seed=i + 5, **kw) for i, kw in enumerate(CASES[case])]


def _same(a, b) -> bool:
    return (np.array_equal(a.epochs, b.epochs) and all(torch.equal(a.stack(k), b.stack(k)) for k in a.stacks())
            and np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True))


# -- which runs share a stack --------------------------------------------------------------------------------------
def test_intervention_values_are_per_run_and_only_shapes_split_stacks():
    for case in CASES:
        cfgs = _cfgs(case)
        assert stack_key(cfgs[0]) is not None, case
        assert all(stack_mismatch(cfgs[0], c) is None for c in cfgs), case
    ema = _cfgs("grokfast_ema")[0]
    assert "grad_transforms" in (stack_mismatch(ema, ema.replace(grad_transforms=("orthograd",))) or "")
    assert "grokfast_window" in (stack_mismatch(ema, ema.replace(grokfast_window=7)) or "")
    assert "optimizer" in (stack_mismatch(ema, ema.replace(optimizer="sgd")) or "")
    assert "loss" in (stack_mismatch(ema, ema.replace(loss="stablemax")) or "")
    assert stack_key(BASE.replace(**ALL_ON)) is not None


# -- the pieces equal their single-run versions on the same gradients ----------------------------------------------
@pytest.mark.parametrize("shapes", [{"W": (3, 4), "b": (5,), "U": (2, 3)},
                                    {"W": (4, 32), "V": (64,), "b": (5,), "U": (2, 64), "c": (3,)}])
@pytest.mark.parametrize("path", ["fused", "tensor"])
@pytest.mark.parametrize("name", sorted(STACKED_OPTIMIZERS))
def test_stacked_optimizers_equal_the_single_run_ones_with_per_run_schedules_and_decay_groups(name, shapes, path):
    """On CPU (``fused``), bit for bit: the fused kernels get each run's parameters in pieces whose
    vectorised bodies and scalar tails are the single run's (``StackedOptimizer._spans``). The
    ``tensor`` path (a few broadcast kernels for the whole stack, with the learning rate computed on the
    device: what a CUDA graph replays) runs here on CPU tensors and agrees to float32 rounding."""
    lay = ParamLayout(shapes)
    tcs = [g.TrainConfig(optimizer=name, epochs=6, lr=1e-2, weight_decay=1.0, warmup_epochs=0),
           g.TrainConfig(optimizer=name, epochs=6, lr=3e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, momentum=0.0,
                         warmup_epochs=3, warmup_style="paper", weight_decay_on="matrices"),
           g.TrainConfig(optimizer=name, epochs=6, lr=5e-3, weight_decay=0.3, warmup_epochs=2, lr_schedule="cosine",
                         weight_decay_on="matrices")]
    gen = torch.Generator().manual_seed(1)
    flat = torch.nn.Parameter(torch.randn(len(tcs), lay.total, generator=gen))
    opt = STACKED_OPTIMIZERS[name](flat, lay, tcs)
    if path == "tensor":
        opt.device = torch.device("cuda")  # a label only: the tensors stay on the CPU, the step takes the device path
    singles = []
    for r, tc in enumerate(tcs):
        ps = {k: torch.nn.Parameter(v.detach().clone()) for k, v in lay.views(flat[r]).items()}
        o = torch_optimizer(ps, tc)
        singles.append((ps, o, ps))
    epoch = torch.zeros(())
    for e in range(6):
        grad = torch.randn(flat.shape, generator=gen)
        grad[:, :3] *= 1e-3
        flat.grad = grad.clone()
        opt.set_lr(epoch, e if path == "fused" else None)
        assert torch.allclose(opt.lr[:, 0].double(), torch.tensor([tc.lr_at(e) for tc in tcs], dtype=torch.float64),
                              rtol=1e-6, atol=0)
        opt.step()
        epoch += 1
        step_singles(singles, tcs, lay, grad, e)
        for r, (ps, _, _) in enumerate(singles):
            for k, v in lay.views(flat[r].detach()).items():
                if name == "ortho_adamw" or path == "tensor":  # other summation orders, float32 lr
                    assert torch.allclose(v, ps[k].detach(), rtol=1e-6, atol=1e-7), (name, r, e, k)
                else:  # the same fused kernel with the same float64 learning rate: bit for bit
                    assert torch.equal(v, ps[k].detach()), (name, r, e, k)
    for r, (_, o, names) in enumerate(singles):  # each run's state has a single run's keys, shapes and values
        mine, theirs = opt.run_state(r), torch_state_tensors(o, names)
        assert set(mine) == set(theirs)
        tol = 1e-6 if path == "fused" else 1e-5
        for k, v in theirs.items():
            assert mine[k].shape == v.shape and torch.allclose(mine[k].float(), v.float(), rtol=tol, atol=tol / 10), k


def _grad_sequence(shapes, R, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(R, *s, generator=gen) for k, s in shapes.items()} for _ in range(steps)]


@pytest.mark.parametrize("name", ["grokfast_ema", "grokfast_ma", "orthograd"])
def test_stacked_transforms_equal_the_single_run_ones_with_per_run_settings(name):
    """Per-run settings in a stack of three equal each run's own transform. (The single-run Grokfast
    filters are their stacked versions over a stack of one; test_interventions checks them against a
    plain transcription of the reference code, bit for bit.)"""
    shapes = {"W": (4, 3), "b": (6,)}
    tcs = [g.TrainConfig(grad_transforms=(name,), grokfast_alpha=a, grokfast_lamb=lamb, grokfast_window=3)
           for a, lamb in ((0.98, 2.0), (0.7, 5.0), (0.0, 0.5))]
    R = len(tcs)
    gen = torch.Generator().manual_seed(3)
    params = {k: torch.randn(R, *s, generator=gen) for k, s in shapes.items()}
    stacked = STACKED_TRANSFORMS[name](params, tcs)
    single = {"grokfast_ema": T.GrokfastEMA, "grokfast_ma": T.GrokfastMA, "orthograd": T.OrthoGrad}[name]
    singles = [single({k: torch.nn.Parameter(v[r].clone()) for k, v in params.items()}, tc)
               for r, tc in enumerate(tcs)]
    for grads in _grad_sequence(shapes, R, 7):
        mine = {k: v.clone() for k, v in grads.items()}
        stacked(mine)
        for r, t in enumerate(singles):
            theirs = {k: v[r].clone() for k, v in grads.items()}
            t(theirs)
            for k in shapes:
                if name == "orthograd":
                    assert torch.allclose(mine[k][r], theirs[k], rtol=1e-5, atol=1e-6), (r, k)
                else:  # the same float operations in the same order
                    assert torch.equal(mine[k][r], theirs[k]), (name, r, k)
    state = stacked.state_dict()
    for r, t in enumerate(singles):
        own = t.state_dict()
        assert set(own) == set(state)
        for k, v in own.items():
            assert state[k][r].shape == v.shape and state[k][r].dtype == v.dtype, k
            assert torch.allclose(state[k][r].double(), v.double(), rtol=1e-12, atol=0), k


def test_orthogonalize_over_a_stack_removes_each_runs_component_along_its_weights():
    gen = torch.Generator().manual_seed(0)
    w, gr = torch.randn(4, 5, 6, generator=gen), torch.randn(4, 5, 6, generator=gen)
    w[3] = 0  # a zero parameter leaves its gradient as it is
    before = gr.clone()
    stacked_orthogonalize_({"w": w}, {"w": gr})
    for r in range(3):
        assert abs(float((w[r] * gr[r]).sum())) < 1e-4
        assert torch.allclose(gr[r].norm(), before[r].norm(), rtol=1e-5)
    assert torch.allclose(gr[3], before[3])


def test_stacked_weight_norm_holds_each_enabled_runs_own_initial_norm():
    gen = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 7, generator=gen)}
    params["a"][1] *= 3
    c = StackedWeightNorm(params, [True, True, False])
    singles = [WeightNormConstraint({k: v[r].clone() for k, v in params.items()}) for r in range(2)]
    target = c.norm()
    with torch.no_grad():
        for v in params.values():
            v.mul_(1.7).add_(0.1)
    moved = {k: v.clone() for k, v in params.items()}
    c()
    after = c.norm()
    assert torch.allclose(after[:2], target[:2], rtol=1e-6)
    assert all(torch.equal(params[k][2], moved[k][2]) for k in params)  # not enabled: untouched
    for r, s in enumerate(singles):
        assert abs(s.target - float(target[r])) <= 1e-12 * s.target


def test_stacked_weight_norm_holds_each_runs_target_and_matches_the_single_constraint():
    gen = torch.Generator().manual_seed(1)
    params = {"a": torch.randn(3, 4, 5, generator=gen), "b": torch.randn(3, 7, generator=gen)}
    singles = {k: v.clone() for k, v in params.items()}
    init = StackedWeightNorm({k: v.clone() for k, v in params.items()}, [True] * 3).norm()
    c = StackedWeightNorm(params, [True, True, False], [2.5, None, 4.0])
    alone = [WeightNormConstraint({k: v[r] for k, v in singles.items()}, t) for r, t in enumerate([2.5, None])]
    with torch.no_grad():
        for v in [*params.values(), *singles.values()]:
            v.mul_(1.7).add_(0.1)
    moved = {k: v.clone() for k, v in params.items()}
    c()
    for s in alone:
        s()
    after = c.norm()
    assert abs(float(after[0]) - 2.5) < 1e-6 and abs(float(after[1]) - float(init[1])) < 1e-5 * float(init[1])
    assert all(torch.equal(params[k][2], moved[k][2]) for k in params)  # not enabled: its target is not read
    for r in range(2):  # the stack's run r is the single constraint's bits
        assert all(torch.equal(params[k][r], singles[k][r]) for k in params)


@pytest.mark.parametrize("impl", ["tables", "dense"])
def test_per_run_attention_coefficients_in_the_stacked_forward(impl):
    cfg = g.make_config("tiny", **SMALL)
    coeffs = [0.0, 0.3, 1.0]
    mcs = [dataclasses.replace(cfg.model, init_seed=i, attn_coeff=a) for i, a in enumerate(coeffs)]
    params = {k: v.requires_grad_() for k, v in stack_params(mcs).items()}
    x, y = cfg.task.task().dataset().select(np.arange(40))
    tokens = torch.from_numpy(x)[None].repeat(len(mcs), 1, 1)
    plan = StackPlan.build(cfg.model, tokens, impl=impl, attn_coeff=coeffs)
    logits = stacked_final_logits(params, plan, impl)
    for r, mc in enumerate(mcs):
        model = HookedGrokTransformer(mc)
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(params[k][r])
        ref = model(tokens[r])[:, -1]
        assert close(logits[r], ref), (impl, r)
    if impl == "tables":  # the fused loss and its gradient, against autograd through the logits
        labels = torch.from_numpy(y)[None].repeat(len(mcs), 1)
        w = torch.full(labels.shape, 1 / labels.shape[1], dtype=torch.float64)
        loss, _ = stacked_losses(params, plan, labels, w)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        lp = torch.log_softmax(stacked_final_logits(params, plan, impl).double(), -1)
        ref_loss = -(lp.gather(-1, labels[..., None])[..., 0] * w).sum(1)
        ref_grads = torch.autograd.grad(ref_loss.sum(), list(params.values()))
        assert torch.allclose(loss, ref_loss, rtol=1e-6)
        for a, b in zip(grads, ref_grads):
            assert close(a, b, 1e-4)


# -- a stack follows each run trained alone -----------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stack_of_differing_intervention_values_follows_each_run_trained_alone(tmp_path, case):
    cfgs = _cfgs(case)
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(len(cfgs))], progress=False)
    rel = PARAM_REL.get(case, 1e-5)
    for r, c in enumerate(cfgs):
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        assert runs[r].config == c and runs[r].info["stack"]["size"] == len(cfgs)
        np.testing.assert_array_equal(runs[r].metrics["lr"], ref.metrics["lr"])
        np.testing.assert_allclose(runs[r].metrics["train_loss"][:-1], ref.metrics["train_loss"][:-1], rtol=1e-5)
        for k in ref.stacks():
            assert np.array_equal(runs[r].epochs, ref.epochs)
            assert close(runs[r].stack(k)[-1], ref.stack(k)[-1], rel), (case, r, k)


# -- resume ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["tables", "dense"])
def test_a_stack_with_every_intervention_resumes_bit_identically(tmp_path, impl):
    cfgs = [BASE.replace(init_seed=i, split_seed=i, lr=lr, grokfast_alpha=a, grokfast_lamb=lamb, init_scale=s,
                         attn_coeff=ac, **ALL_ON)
            for i, (lr, a, lamb, s, ac) in enumerate(((1e-2, 0.9, 2.0, 1.0, 1.0), (3e-3, 0.5, 5.0, 2.0, 0.5)))]
    full = train_stacked(cfgs, [tmp_path / f"f{i}" for i in range(2)], progress=False, impl=impl)
    outs = [tmp_path / f"c{i}" for i in range(2)]
    with pytest.raises(TrainingInterrupted):
        train_stacked(cfgs, outs, progress=False, impl=impl, callbacks=[StopAt(5)])
    cut = resume_stacked(outs, progress=False)
    assert all(_same(a, b) for a, b in zip(full, cut))


@pytest.mark.parametrize("loss", ["stablemax", "mse"])
def test_mask_mode_computes_what_gather_mode_does_with_interventions(tmp_path, loss):
    cfgs = [BASE.replace(init_seed=i, split_seed=i, frac_train=f, loss=loss, attn_coeff=a, grokfast_alpha=al,
                         grad_transforms=("grokfast_ema",), weight_norm=True, init_scale=s)
            for i, (f, a, al, s) in enumerate(((0.5, 1.0, 0.9, 1.0), (0.7, 0.3, 0.6, 2.0)))]
    gat = train_stacked(cfgs, [tmp_path / f"g{i}" for i in range(2)], progress=False, mode="gather")
    msk = train_stacked(cfgs, [tmp_path / f"m{i}" for i in range(2)], progress=False, mode="mask")
    for a, b in zip(gat, msk):
        for col in ("train_loss", "test_loss", "test_acc", "train_acc"):
            assert np.allclose(a.metrics[col], b.metrics[col], rtol=1e-5, equal_nan=True), col


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(path / store_layout.STATE_FILE))


def test_state_files_of_stacked_runs_are_single_runs_and_resume_either_way(tmp_path):
    cfg = BASE.replace(epochs=10, **ALL_ON)
    cfgs = [cfg.replace(init_seed=i, split_seed=i, grokfast_alpha=a) for i, a in enumerate((0.9, 0.6))]
    # the same keys, shapes and dtypes as a single run's state at the same epoch
    outs = [tmp_path / f"s{i}" for i in range(2)]
    with pytest.raises(TrainingInterrupted):
        train_stacked(cfgs, outs, progress=False, callbacks=[StopAt(4)])
    with pytest.raises(TrainingInterrupted):
        g.train(cfgs[0], tmp_path / "single", progress=False, callbacks=[StopAt(4)])
    mine, theirs = _state(outs[0]), _state(tmp_path / "single")
    assert set(mine) == set(theirs)
    for k, v in theirs.items():
        assert mine[k].shape == v.shape and mine[k].dtype == v.dtype, k
        if not k.startswith("rng/"):
            assert torch.allclose(mine[k].double(), v.double(), rtol=1e-4, atol=1e-6, equal_nan=True), k
    # a run trained in a stack resumes alone (the single-run trainer reads its state) ...
    ref = g.train(cfgs[0], tmp_path / "ref", progress=False)
    alone = resume_single(outs[0], progress=False)
    assert alone.finished and np.array_equal(alone.epochs, ref.epochs)
    for k in ref.stacks():
        assert close(alone.stack(k)[-1], ref.stack(k)[-1], 1e-4), k
    # ... and a single run's state loads into a stack, bit for bit, and trains on from there
    stack = StackedLoop([cfgs[0]], [tmp_path / "single"], torch.device("cpu"),
                        [g.load_run(tmp_path / "single").split_pairs()])
    stack.load_states([tmp_path / "single" / store_layout.STATE_FILE])
    state = stack.run_state(0)
    for k, v in theirs.items():
        if not k.startswith("rng/"):
            assert torch.equal(state[k].nan_to_num(-1.0), v.nan_to_num(-1.0)), k
    assert stack.start_epoch == 5
    for _ in range(stack.start_epoch, cfg.train.epochs):
        stack._step()
    for k, v in stack.params.items():
        assert close(v[0].detach(), ref.stack(k)[-1], 1e-4), k


def test_a_single_step_of_a_stack_with_interventions_is_each_runs_step(tmp_path):
    cfgs = [BASE.replace(init_seed=i, split_seed=i, lr=lr, grokfast_alpha=a, attn_coeff=ac, init_scale=s,
                         optimizer="sgd", grad_transforms=("grokfast_ema",), loss="stablemax", weight_norm=True)
            for i, (lr, a, ac, s) in enumerate(((0.1, 0.9, 1.0, 1.0), (0.3, 0.5, 0.4, 2.0)))]
    splits = [c.task.task().split(c.task.frac_train, c.task.split_seed) for c in cfgs]
    for i in range(2):
        (tmp_path / f"s{i}").mkdir()
    stack = StackedLoop(cfgs, [tmp_path / f"s{i}" for i in range(2)], torch.device("cpu"), splits)
    logits, loss = stack._step()
    for r, c in enumerate(cfgs):
        (tmp_path / f"r{r}").mkdir()
        single = TrainLoop(c, tmp_path / f"r{r}", torch.device("cpu"), *splits[r])
        single.step(0, record_acc=False)
        assert abs(loss[r].item() - single.metrics["train_loss"][0].item()) <= 1e-6 * single.metrics["train_loss"][0].item()
        for k, v in stack.params.items():
            assert close(v[r].detach(), single.params[k].detach()), (r, k)


# -- sweeps group intervention studies into stacks -----------------------------------------------------------------
def test_a_sweep_over_intervention_values_trains_one_stack(tmp_path):
    from grokinterp.sweeps.driver import plan_sweep

    spec = {"preset": "tiny", "fixed": {"epochs": 6, "every": 3, "log_early": 0, "grad_transforms": ["grokfast_ema"]},
            "grid": {"grokfast_alpha": [0.8, 0.9, 0.98], "weight_decay": [0.5, 1.0]}, "seeds": [0, 1],
            "options": {"max_stack": 64}}
    plan = plan_sweep(spec, tmp_path / "sw")
    assert [(j.stacked, len(j.run_dirs)) for j in plan.jobs] == [(True, 12)]
    sw = g.sweep(spec, tmp_path / "sw", progress=False)
    runs = sw.runs()
    assert len(runs) == 12 and all(r.finished and r.info["stack"]["size"] == 12 for r in runs.values())
    assert sorted({r.config.train.grokfast_alpha for r in runs.values()}) == [0.8, 0.9, 0.98]


def test_one_registration_gives_an_optimizer_or_transform_its_stacked_version():
    from grokinterp.training.optim import OPTIMIZERS, StackedSGD, register_optimizer
    from grokinterp.training.transforms import StackedOrthoGrad, register_gradient_transform

    cfg = BASE.replace(optimizer="my_sgd", grad_transforms=("my_ortho",))
    try:
        register_optimizer("my_sgd", OPTIMIZERS["sgd"], stacked=StackedSGD)
        register_gradient_transform("my_ortho", T.OrthoGrad)  # a single-run factory
        assert stack_key(cfg) is None  # the transform has no stacked version: such runs train alone
        register_gradient_transform("my_ortho", T.OrthoGrad, stacked=StackedOrthoGrad)
        assert stack_key(cfg) is not None
    finally:
        from grokinterp.config import OPTIMIZER_NAMES

        for reg, key in ((OPTIMIZERS, "my_sgd"), (STACKED_OPTIMIZERS, "my_sgd"), (OPTIMIZER_NAMES, "my_sgd"),
                         (TRANSFORMS, "my_ortho"), (STACKED_TRANSFORMS, "my_ortho")):
            reg.pop(key, None)


@pytest.mark.parametrize("loss", ["cross_entropy", "stablemax", "mse"])
def test_fused_stacked_losses_equal_the_per_example_losses_of_the_stacked_logits(loss):
    from grokinterp.training.step import per_example_loss

    cfg = g.make_config("tiny", **SMALL)
    mcs = [dataclasses.replace(cfg.model, init_seed=i, init_scale=s) for i, s in enumerate((1.0, 3.0))]
    params = {k: v.requires_grad_() for k, v in stack_params(mcs).items()}
    x, y = cfg.task.task().dataset().select(np.arange(50))
    tokens = torch.from_numpy(x)[None].repeat(len(mcs), 1, 1)
    labels = torch.from_numpy(y)[None].repeat(len(mcs), 1)
    plan = StackPlan.build(cfg.model, tokens, impl="tables", attn_coeff=[1.0, 0.4])
    w = torch.rand(labels.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got, _ = stacked_losses(params, plan, labels, w, loss)
    grads = torch.autograd.grad(got.sum(), list(params.values()))
    ref = (per_example_loss(loss)(stacked_final_logits(params, plan, "tables"), labels) * w).sum(1)
    ref_grads = torch.autograd.grad(ref.sum(), list(params.values()))
    assert torch.allclose(got, ref, rtol=1e-6)
    for a, b in zip(grads, ref_grads):
        assert close(a, b, 1e-5)


def test_minibatch_stacks_with_interventions_follow_each_run_alone(tmp_path):
    """Minibatches (train.batch_size) and per-run intervention values together: each run of the stack
    takes its own batches with its own filters, constraint, attention coefficient and schedule."""
    base = BASE.replace(epochs=3, batch_size=32, every=2, unit="step", loss="stablemax",
                        grad_transforms=("grokfast_ema",), lr_schedule="cosine", warmup_epochs=2, optimizer="sgd",
                        lr=0.1)
    cfgs = [base.replace(init_seed=i, sampler_seed=i + 3, grokfast_alpha=a, attn_coeff=c, weight_norm=wn, init_scale=s)
            for i, (a, c, wn, s) in enumerate(((0.9, 1.0, True, 1.0), (0.5, 0.4, False, 2.0)))]
    assert stack_key(cfgs[0]) is not None and stack_mismatch(cfgs[0], cfgs[1]) is None
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(2)], progress=False)
    for r, c in enumerate(cfgs):
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        assert np.array_equal(runs[r].epochs, ref.epochs)
        np.testing.assert_array_equal(runs[r].metrics["lr"], ref.metrics["lr"])
        # 36 SGD steps at lr 0.1 amplify float32 rounding: on a 2-core AMD EPYC the stacked and the
        # single run's W_U part by 1.6e-5 (×1.1 its scale), growing smoothly from 5e-7; on an Intel Xeon < 1e-5
        for k in ref.stacks():
            assert close(runs[r].stack(k)[-1], ref.stack(k)[-1], 1e-4), (r, k)


def test_grokfast_ema_over_a_flat_stack_runs_in_row_chunks_with_the_same_bits(monkeypatch):
    """Over views of one ``[run, n_params]`` tensor (the stacked trainer's) the EMA runs over whole rows a
    few runs at a time: the same elementwise operations as parameter by parameter, so the same bits."""
    import grokinterp.training.transforms as T

    shapes = {"W": (4, 3), "b": (6,), "U": (2, 5)}
    lay = ParamLayout(shapes)
    tcs = [g.TrainConfig(grad_transforms=("grokfast_ema",), grokfast_alpha=a, grokfast_lamb=lamb)
           for a, lamb in ((0.98, 2.0), (0.7, 5.0), (0.0, 0.5), (0.9, 1.0), (0.5, 3.0))]
    R = len(tcs)
    flat = torch.nn.Parameter(torch.randn(R, lay.total, generator=torch.Generator().manual_seed(0)))
    monkeypatch.setattr(T, "CHUNK_ELEMENTS", 2 * lay.total)  # two runs a chunk
    chunked = T.StackedGrokfastEMA(lay.views(flat), tcs)
    assert chunked.flat_ema is not None
    plain = T.StackedGrokfastEMA({k: v.detach().clone() for k, v in lay.views(flat).items()}, tcs)
    assert plain.flat_ema is None
    for grads in _grad_sequence(shapes, R, 5, seed=2):
        gflat = lay.flatten(grads)
        chunked(lay.views(gflat))
        mine = {k: v.clone() for k, v in grads.items()}
        plain(mine)
        for k, v in lay.views(gflat).items():
            assert torch.equal(v, mine[k]), k
    a, b = chunked.state_dict(), plain.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    chunked.load_state_dict({k: v + 1 for k, v in b.items()})  # loads into the flat state's views
    assert torch.equal(chunked.flat_ema, lay.flatten({k: b[f"ema/{k}"] + 1 for k in shapes}))
