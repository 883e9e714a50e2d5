"""Many models at once: the stacked forward equals each model's own, a stacked step equals a single-run
step, each run writes an ordinary run directory, and a stack resumes bit-identically (CPU)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import StopAt, close
from _torch_optim import step_singles

import grokinterp as g
import grokinterp.model.stacked as stacked_model
from grokinterp.errors import ConfigError, RunError
from grokinterp.model.hooked import HookedGrokTransformer
from grokinterp.model.stacked import StackPlan, stack_params, stacked_final_logits, stacked_losses
from grokinterp.store.integrity import verify
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainLoop
from grokinterp.training.stacked import (
    STACKED_OPTIMIZERS,
    ParamLayout,
    StackedLoop,
    max_stack_size,
    register_stacked_transform,
    resume_stacked,
    stack_key,
    stack_mismatch,
    train_stacked,
)
from grokinterp.training.transforms import TRANSFORMS, register_gradient_transform

SMALL = dict(d_model=32, n_heads=2, d_mlp=48, p=23)


def _cfgs(n=3, epochs=30, **kw):
    base = g.make_config("tiny", epochs=epochs, every=10, log_early=0, **{**SMALL, **kw})
    lrs, wds, fracs = [1e-2, 3e-3, 5e-3, 2e-3], [2.0, 1.0, 0.5, 0.0], [0.7, 0.5, 0.6, 0.8]
    return [base.replace(init_seed=s, split_seed=s + 10, lr=lrs[s % 4], weight_decay=wds[s % 4],
                         frac_train=fracs[s % 4]) for s in range(n)]


def _same(a, b) -> bool:
    return (np.array_equal(a.epochs, b.epochs) and all(torch.equal(a.stack(k), b.stack(k)) for k in a.stacks())
            and np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True))


# -- the stacked forward ---------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["tables", "dense"])
def test_stacked_logits_and_gradients_equal_each_models_own(impl):
    cfg = g.make_config("tiny", **SMALL)
    mc = cfg.model
    R = 3
    gen = torch.Generator().manual_seed(0)
    P = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).requires_grad_()  # non-zero biases too
         for k, v in stack_params([dataclasses.replace(mc, init_seed=s) for s in range(R)]).items()}
    ds = cfg.task.task().dataset()
    toks = torch.stack([torch.from_numpy(ds.tokens[torch.randperm(len(ds), generator=gen)[:150].numpy()])
                        for _ in range(R)])  # each run its own examples
    out = stacked_final_logits(P, StackPlan.build(mc, toks, impl=impl), impl)
    weights = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * weights).sum(), list(P.values()))
    for r in range(R):
        model = HookedGrokTransformer(mc, init=False).load_params({k: v[r].detach() for k, v in P.items()})
        ref = model(toks[r])[:, -1]
        assert close(out[r], ref)
        ref_grads = torch.autograd.grad((ref * weights[r]).sum(), list(model.parameters()))
        for (name, _), gr, gs in zip(model.named_parameters(), ref_grads, grads):
            assert close(gs[r], gr), (impl, r, name)


@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_fused_stacked_losses_equal_the_loss_of_the_stacked_logits(act_fn, monkeypatch):
    # stacked_losses computes the loss and its gradients chunk by chunk (and the unembedding padded):
    # against the plain float64 cross-entropy of stacked_final_logits, with autograd's gradients,
    # each run's loss scaled differently (so the backward's scaling is checked too)
    cfg = g.make_config("tiny", act_fn=act_fn, **SMALL)
    mc = cfg.model
    R, n = 5, 120
    gen = torch.Generator().manual_seed(3)
    P = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).requires_grad_()
         for k, v in stack_params([dataclasses.replace(mc, init_seed=s) for s in range(R)]).items()}
    ds = cfg.task.task().dataset()
    idx = [torch.randperm(len(ds), generator=gen)[:n].numpy() for _ in range(R)]
    toks = torch.stack([torch.from_numpy(ds.tokens[i]) for i in idx])
    labels = torch.stack([torch.from_numpy(ds.labels[i]) for i in idx]).long()
    weights = torch.rand(R, n, generator=gen, dtype=torch.float64)
    weights[1, 60:] = 0  # padding
    monkeypatch.setattr(stacked_model, "CHUNK_ELEMENTS", 2 * n * (mc.d_mlp + 24))  # two runs a chunk
    plan = StackPlan.build(mc, toks)
    assert [(c.r0, c.r1) for c in plan.chunks] == [(0, 2), (2, 4), (4, 5)]
    scale = torch.arange(1.0, R + 1, dtype=torch.float64)
    loss, logits = stacked_losses(P, plan, labels, weights)
    grads = torch.autograd.grad((loss * scale).sum(), list(P.values()))
    ref_logits = stacked_final_logits(P, plan)
    nll = torch.nn.functional.cross_entropy(ref_logits.double().reshape(R * n, -1), labels.reshape(-1),
                                            reduction="none").view(R, n)
    ref = (nll * weights).sum(1)
    ref_grads = torch.autograd.grad((ref * scale).sum(), list(P.values()))
    assert close(logits, ref_logits.detach()) and not logits.requires_grad
    assert torch.allclose(loss, ref, rtol=1e-6, atol=0)
    for name, gs, gr in zip(P, grads, ref_grads):
        assert close(gs, gr), (act_fn, name)


def test_stack_plan_refuses_bad_tokens():
    mc = g.make_config("tiny", **SMALL).model
    with pytest.raises(ValueError, match="last token must be the same"):
        StackPlan.build(mc, torch.tensor([[[0, 1, 23], [1, 2, 0]]]))
    with pytest.raises(ValueError, match=r"tokens must be \[run, batch"):
        StackPlan.build(mc, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="n_layers = 1"):
        StackPlan.build(dataclasses.replace(mc, n_layers=2), torch.zeros(1, 2, 3, dtype=torch.long))


# -- stacked optimizers equal torch's ------------------------------------------------------------------------
@pytest.mark.parametrize("name, torch_opt", [
    ("adamw", lambda ps, tc: torch.optim.AdamW(ps, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)),
    ("adam", lambda ps, tc: torch.optim.Adam(ps, lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)),
    ("sgd", lambda ps, tc: torch.optim.SGD(ps, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)),
])
def test_stacked_optimizers_step_like_torchs_with_per_run_hyperparameters(name, torch_opt):
    shapes = {"a": (3, 4), "b": (5,)}
    layout = ParamLayout(shapes)
    tcs = [g.TrainConfig(optimizer=name, lr=lr, weight_decay=wd, beta1=b1, beta2=b2, momentum=m, warmup_epochs=w)
           for lr, wd, b1, b2, m, w in ((1e-2, 1.0, 0.9, 0.98, 0.9, 0), (3e-3, 0.1, 0.8, 0.95, 0.0, 3))]
    gen = torch.Generator().manual_seed(1)
    flat = torch.nn.Parameter(torch.randn(2, layout.total, generator=gen))
    opt = STACKED_OPTIMIZERS[name](flat, layout, tcs)
    singles = []
    for r, tc in enumerate(tcs):
        ps = {k: torch.nn.Parameter(v.detach().clone()) for k, v in layout.views(flat[r]).items()}
        singles.append((ps, torch_opt(list(ps.values()), tc)))
    epoch = torch.zeros(())
    for e in range(4):
        grad = torch.randn(flat.shape, generator=gen)
        grad[:, :3] *= 1e-3  # small gradients too
        flat.grad = grad.clone()
        opt.set_lr(epoch)
        opt.step()
        epoch += 1
        step_singles(singles, tcs, layout, grad, e)
        for r, (ps, _) in enumerate(singles):
            for k, v in layout.views(flat[r].detach()).items():
                assert torch.allclose(v, ps[k].detach(), rtol=1e-6, atol=1e-7), (name, r, e, k)
    # each run's saved optimizer state has a single run's keys and values
    for r, (ps, o) in enumerate(singles):
        state = opt.run_state(r)
        sd = o.state_dict()["state"]
        for i, k in enumerate(ps):
            for slot, v in sd.get(i, {}).items():
                if v is None:
                    continue
                got = state[f"opt/{k}/{slot}"]
                assert torch.allclose(got.float(), torch.as_tensor(v).float(), rtol=1e-6, atol=1e-7), (k, slot)
        assert set(state) == {f"opt/{k}/{s}" for i, k in enumerate(ps) for s, v in sd.get(i, {}).items()
                              if v is not None}


# -- a stacked step is a single-run step -----------------------------------------------------------------------
def test_one_stacked_step_equals_one_single_run_step(tmp_path):
    cfgs = _cfgs(3, optimizer="sgd", momentum=0.9)  # SGD: the update is linear in the gradient
    splits = [c.task.task().split(c.task.frac_train, c.task.split_seed) for c in cfgs]
    dirs = [tmp_path / f"s{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    stack = StackedLoop(cfgs, dirs, torch.device("cpu"), splits)
    logits, loss = stack._step()
    for r, c in enumerate(cfgs):
        (tmp_path / f"r{r}").mkdir()
        single = TrainLoop(c, tmp_path / f"r{r}", torch.device("cpu"), *splits[r])
        with torch.no_grad():
            s_logits = single.logits(single.data["train"])
        single.step(0, record_acc=False)  # the warm-up learning rate of epoch 0, as the stack's
        s_loss = single.metrics["train_loss"][0]
        n = len(splits[r][0])
        assert close(logits[r, :n], s_logits) and abs(loss[r].item() - s_loss.item()) <= 1e-6 * s_loss.item()
        for k, v in stack.params.items():
            assert close(v[r].detach(), single.params[k].detach()), (r, k)


def test_losses_of_stacked_runs_follow_their_single_runs(tmp_path):
    cfgs = _cfgs(3, epochs=25)
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False)
    for r, c in enumerate(cfgs):
        ref = g.train(c, tmp_path / f"r{r}", progress=False)
        a, b = runs[r].metrics, ref.metrics
        early = slice(0, 10)
        assert np.allclose(a["train_loss"][early], b["train_loss"][early], rtol=1e-5)
        assert np.allclose(a["lr"], b["lr"], rtol=0, atol=0, equal_nan=True)
        assert np.allclose(a["test_loss"][:1], b["test_loss"][:1], rtol=1e-6)
        assert list(a.columns) == list(b.columns) and len(a) == len(b)


def test_mask_mode_computes_what_gather_mode_does(tmp_path):
    cfgs = _cfgs(2, epochs=12)
    gat = train_stacked(cfgs, [tmp_path / f"g{i}" for i in range(2)], progress=False, mode="gather")
    msk = train_stacked(cfgs, [tmp_path / f"m{i}" for i in range(2)], progress=False, mode="mask")
    for a, b in zip(gat, msk):
        for col in ("train_loss", "test_loss", "test_acc", "train_acc"):
            assert np.allclose(a.metrics[col], b.metrics[col], rtol=1e-5, equal_nan=True), col


# -- run directories ----------------------------------------------------------------------------------------
def test_each_run_of_a_stack_writes_an_ordinary_run_directory(tmp_path):
    cfgs = _cfgs(3)
    outs = [tmp_path / f"s{i}" for i in range(3)]
    runs = train_stacked(cfgs, outs, progress=False, preset="tiny")
    ref = g.train(cfgs[1], tmp_path / "ref", progress=False)
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    for r, (run, c) in enumerate(zip(runs, cfgs)):
        assert run.finished and run.config == c and verify(run.path).ok
        assert files(run.path) == files(ref.path)
        assert np.array_equal(run.epochs, c.checkpoint_epochs())
        st = run.info["stack"]
        assert st["index"] == r and st["size"] == 3 and st["impl"] == "tables" and st["mode"] == "gather"
        assert [(run.path / m).resolve() for m in st["members"]] == [o.resolve() for o in outs]
        assert run.info["n_train"] == len(run.split_pairs()[0]) and run.info["preset"] == "tiny"
        m = run.metrics
        assert m["train_loss"].notna().all() and (m["test_acc"].notna() == ref.metrics["test_acc"].notna()).all()
        model = run.model(-1)  # the loader rebuilds every model
        assert model(run.test_data()[0][:4]).shape == (4, 3, c.task.p)
    # the optimizer state reads like a single run's: a single-run resume of a stacked run loads it
    from safetensors.torch import load_file

    a = load_file(str(runs[1].path / "state.safetensors"))
    b = load_file(str(ref.path / "state.safetensors"))
    assert set(a) == set(b) and all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)


def test_configs_that_cannot_share_a_stack_are_refused_naming_the_field(tmp_path):
    a, b = _cfgs(2)
    for other, needle in ((b.replace(epochs=40), "train.epochs differs"), (b.replace(d_mlp=64), "model.d_mlp differs"),
                          (b.replace(every=5), "checkpoints.every differs"),
                          (b.replace(optimizer="sgd"), "train.optimizer differs")):
        with pytest.raises(ConfigError, match=needle):
            train_stacked([a, other], [tmp_path / "x", tmp_path / "y"], progress=False)
        assert not (tmp_path / "x").exists()
    assert stack_key(a) == stack_key(b) and stack_mismatch(a, b) is None
    assert stack_key(a.replace(operation="sub")) == stack_key(a)  # the operation may differ too
    deeper = a.replace(n_layers=2, layer_norm=True)  # trains in stacks through the generic forward
    assert stack_key(deeper) is not None and stack_key(deeper) != stack_key(a)
    assert stack_key(a.replace(input_layout="a_b")) not in (None, stack_key(a))
    assert stack_key(a.replace(bias="all")) not in (None, stack_key(a))
    with pytest.raises(ConfigError, match="own directory"):
        train_stacked([a, b], [tmp_path / "x", tmp_path / "x"], progress=False)
    with pytest.raises(ConfigError, match="mode"):
        train_stacked([a, b], [tmp_path / "x", tmp_path / "y"], progress=False, mode="scatter")
    train_stacked([a], [tmp_path / "x"], progress=False)
    with pytest.raises(RunError, match="already holds its run while other runs of this stack are new"):
        train_stacked([a, b], [tmp_path / "x", tmp_path / "y"], progress=False)


def test_operations_and_split_methods_mix_in_one_stack(tmp_path):
    a, b = _cfgs(2, epochs=10)
    b = b.replace(operation="div")  # other labels, fewer valid pairs (b ≠ 0)
    runs = train_stacked([a, b], [tmp_path / "a", tmp_path / "b"], progress=False)
    ref = g.train(b, tmp_path / "ref", progress=False)
    assert np.allclose(runs[1].metrics["train_loss"][:5], ref.metrics["train_loss"][:5], rtol=1e-5)
    assert runs[1].info["n_train"] == ref.info["n_train"]


# -- resume ---------------------------------------------------------------------------------------------
def test_an_interrupted_stack_resumes_bit_identically(tmp_path):
    cfgs = _cfgs(3, epochs=40)
    ref = train_stacked(cfgs, [tmp_path / f"ref{i}" for i in range(3)], progress=False)
    outs = [tmp_path / f"s{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt, match="stack of 3 runs interrupted"):
        train_stacked(cfgs, outs, progress=False, callbacks=[StopAt(17)])
    assert all(verify(o).ok and not g.load_run(o).finished for o in outs)
    with pytest.warns(UserWarning, match="resuming the 3 members found together"):
        g.resume(outs[1], progress=False)  # the facade finds the stack
    assert all(_same(g.load_run(o), r) for o, r in zip(outs, ref))
    # members one flush apart (a kill between the runs' flushes) resume in groups, still bit-identical
    outs = [tmp_path / f"t{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfgs, outs, progress=False, callbacks=[StopAt(23)])
    resume_stacked([outs[2]], progress=False)  # alone, in the recorded stack shape with stand-ins
    assert _same(g.load_run(outs[2]), ref[2]) and not g.load_run(outs[0]).finished
    runs = resume_stacked(outs, progress=False)
    assert all(_same(a, b) for a, b in zip(runs, ref)) and all(verify(o).ok for o in outs)
    # a finished stack is returned as it is
    before = [(o / "manifest.json").stat().st_mtime_ns for o in outs]
    resume_stacked(outs, progress=False)
    assert before == [(o / "manifest.json").stat().st_mtime_ns for o in outs]


def test_async_flushes_write_the_same_files(tmp_path):
    cfgs = _cfgs(2, epochs=30, flush_every=2)
    a = train_stacked(cfgs, [tmp_path / f"a{i}" for i in range(2)], progress=False, async_flush=False)
    flushes = []

    class Count(Callback):
        def on_flush(self, loop, epoch, finished):
            flushes.append((epoch, finished))

    b = train_stacked(cfgs, [tmp_path / f"b{i}" for i in range(2)], progress=False, async_flush=True,
                      callbacks=[Count()])
    assert all(_same(x, y) for x, y in zip(a, b)) and all(verify(r.path).ok for r in b)
    assert flushes[-1] == (30, True) and len(flushes) >= 2


_KILL_CHILD = textwrap.dedent("""
    import sys, grokinterp as g
    from grokinterp.training.stacked import train_stacked
    cfgs = [g.RunConfig.from_dict(c) for c in __import__("json").loads(sys.argv[1])]
    train_stacked(cfgs, sys.argv[2:], progress=False)
""")


def test_a_stack_killed_with_sigkill_resumes_bit_identically(tmp_path):
    cfgs = _cfgs(2, epochs=60, flush_every=2)
    ref = train_stacked(cfgs, [tmp_path / f"ref{i}" for i in range(2)], progress=False)
    outs = [str(tmp_path / f"s{i}") for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, json.dumps([c.to_dict() for c in cfgs]), *outs], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for a first flush, then kill mid-training
        prog = Path(outs[0]) / "progress.json"
        if prog.exists() and 10 <= json.loads(prog.read_text())["epoch"]:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    runs = resume_stacked(outs, progress=False)
    assert all(_same(a, b) for a, b in zip(runs, ref)) and all(verify(o).ok for o in outs)


# -- gradient transforms ---------------------------------------------------------------------------------
class _Ema:
    """A toy stateful transform: g ← g + λ · EMA(g) (a Grokfast-like filter), for one run or a stack."""

    def __init__(self, params, tc=None):
        self.ema = None

    def __call__(self, grads):
        if self.ema is None:
            self.ema = {k: torch.zeros_like(v) for k, v in grads.items()}
        for k, v in grads.items():
            self.ema[k].mul_(0.9).add_(v, alpha=0.1)
            v.add_(self.ema[k], alpha=2.0)

    def state_dict(self):
        return dict(self.ema or {})

    def load_state_dict(self, state):
        self.ema = {k: v.clone() for k, v in state.items()} if state else None


def test_a_stacked_gradient_transform_matches_the_single_run_one_and_resumes(tmp_path):
    register_gradient_transform("toy_ema", lambda params, tc: _Ema(params))
    try:
        cfgs = [c.replace(grad_transforms=("toy_ema",)) for c in _cfgs(2, epochs=24)]
        assert stack_key(cfgs[0]) is None  # no stacked version yet: such runs train alone
        register_stacked_transform("toy_ema", lambda params, tcs: _Ema(params))
        assert stack_key(cfgs[0]) is not None
        runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(2)], progress=False)
        ref = g.train(cfgs[0], tmp_path / "ref", progress=False)
        assert np.allclose(runs[0].metrics["train_loss"][:8], ref.metrics["train_loss"][:8], rtol=1e-5)
        outs = [tmp_path / f"t{i}" for i in range(2)]
        with pytest.raises(KeyboardInterrupt):
            train_stacked(cfgs, outs, progress=False, callbacks=[StopAt(13)])
        assert all(_same(a, b) for a, b in zip(resume_stacked(outs, progress=False), runs))
    finally:
        TRANSFORMS.pop("toy_ema", None)
        from grokinterp.training.stacked import STACKED_TRANSFORMS

        STACKED_TRANSFORMS.pop("toy_ema", None)


def test_max_stack_size_follows_memory():
    tiny, paper = g.make_config("tiny"), g.make_config("paper")
    a = max_stack_size(tiny, "cpu")
    b = max_stack_size(paper, "cpu", cap=10 ** 6)
    assert 1 <= a <= 64 and 1 <= b < max_stack_size(tiny, "cpu", cap=10 ** 6)


@pytest.mark.slow
def test_stacked_tiny_runs_grok_like_single_ones(tmp_path):
    """Training is chaotic (a rounding difference grows to another trajectory), so the claim is about the
    family: as many stacked runs as single ones generalise, after memorizing, in a similar number of epochs."""
    seeds = range(6)
    cfgs = [g.make_config("tiny", init_seed=s, split_seed=s) for s in seeds]
    stacked = train_stacked(cfgs, [tmp_path / f"s{i}" for i in seeds], progress=False)
    singles = [g.train(c, tmp_path / f"r{i}", progress=False) for i, c in zip(seeds, cfgs)]
    t99 = {}
    for kind, runs in (("stacked", stacked), ("single", singles)):
        sums = [r.summary() for r in runs]
        hit = [s["test_acc_99_epoch"] for s in sums if s["test_acc_99_epoch"] is not None]
        assert len(hit) >= 4, (kind, hit)  # most seeds grok within the 1000 epochs
        assert all(s["train_acc_99_epoch"] < s["test_acc_99_epoch"] for s in sums if s["test_acc_99_epoch"])
        t99[kind] = float(np.median(hit))
    assert 0.5 <= t99["stacked"] / t99["single"] <= 2, t99
