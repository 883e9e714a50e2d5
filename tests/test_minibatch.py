"""Minibatch training (issue 19, item 3): both trainers take one optimizer step per batch of
grokinterp.training.data, count schedules in steps, checkpoint by step, record epoch and step in
the metrics, and resume mid-epoch bit for bit on CPU; the MSE loss trains in both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import StopAt
from _torch_optim import torch_optimizer

import grokinterp as g
from grokinterp.model.hooked import HookedGrokTransformer
from grokinterp.store.integrity import verify
from grokinterp.training.callbacks import Callback
from grokinterp.training.data import batch_indices, epoch_of, sampler_seed, steps_per_epoch
from grokinterp.training.step import loss_function

SMALL = dict(p=11, d_model=16, n_heads=2, d_mlp=32, frac_train=0.5)


def _cfg(epochs=6, batch_size=13, **kw):
    kw = {**dict(every=4, eval_every=2, log_early=0, warmup_epochs=5), **kw}
    return g.make_config("tiny", epochs=epochs, batch_size=batch_size, **{**SMALL, **kw})


def _same(a, b) -> bool:
    return (np.array_equal(a.epochs, b.epochs) and all(torch.equal(a.stack(k), b.stack(k)) for k in a.stacks())
            and np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True))


class StopAtStep(Callback):
    """Asks the loop to stop after the step from checkpoint ``step`` (a step schedule: mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_checkpoint(self, loop, epoch: int) -> None:
        if epoch == self.step:
            loop.request_stop()


def _reference(cfg, run, steps: int) -> dict[int, dict[str, torch.Tensor]]:
    """A plain minibatch loop: the hooked model from the run's initial weights, the run's optimizer,
    step s = batch s mod k of epoch s // k, learning rate lr_at(s, total_steps). Returns the
    parameters after every step ``0 .. steps``."""
    tc = cfg.train
    model = HookedGrokTransformer(cfg.model, init=False).load_params(run.params(0))
    params = dict(model.named_parameters())
    opt = torch_optimizer(params, tc)  # torch's, as the trainer built it before one loop
    x, y = (torch.from_numpy(a) for a in cfg.task.task().dataset().select(run.split_pairs()[0]))
    k, loss_fn = steps_per_epoch(len(x), tc.batch_size), loss_function(tc.loss)
    out = {0: {n: p.detach().clone() for n, p in params.items()}}
    for s in range(steps):
        e, b = epoch_of(s, k)
        i = batch_indices(sampler_seed(cfg), e, len(x), tc.batch_size)[b]
        for grp in opt.param_groups:
            grp["lr"] = tc.lr_at(s, total=cfg.total_steps())
        loss = loss_fn(model(x[i])[:, -1], y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out[s + 1] = {n: p.detach().clone() for n, p in params.items()}
    return out


@pytest.mark.parametrize("fast_path", [False, True])
def test_a_minibatch_run_equals_the_reference_loop_step_by_step(tmp_path, fast_path):
    cfg = _cfg(epochs=5, fast_path=fast_path, every=3, lr_schedule="cosine")
    k = cfg.steps_per_epoch()
    assert cfg.n_train() == 60 and k == 5 and cfg.total_steps() == 25  # 4 batches of 13 and one of 8
    run = g.train(cfg, tmp_path / "r", progress=False)
    assert run.epochs.tolist() == cfg.checkpoint_epochs().tolist() == [0, 3, 6, 9, 12, 15, 18, 21, 24, 25]
    ref = _reference(cfg, run, cfg.total_steps())
    for s in run.epochs.tolist():  # checkpoint labels are optimizer steps
        got = run.params(int(s))
        for name, want in ref[int(s)].items():
            if fast_path:  # the table fast path rounds differently from the hooked forward
                assert torch.allclose(got[name], want, rtol=1e-4, atol=1e-6), (s, name)
            else:
                assert torch.equal(got[name], want), (s, name)


def test_minibatch_metrics_record_epoch_step_and_full_set_evaluations(tmp_path):
    cfg = _cfg(epochs=6, warmup_epochs=7, lr_schedule="cosine", every=5)
    run = g.train(cfg, tmp_path / "r", progress=False)
    m, k = run.metrics, cfg.steps_per_epoch()
    assert list(m.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "step"]
    assert m["epoch"].tolist() == list(range(7)) and m["step"].tolist() == [e * k for e in range(7)]
    assert m["step"].dtype == np.int64
    # lr of each epoch's first step, warm-up and cosine in optimizer steps
    for e in range(6):
        assert m["lr"][e] == pytest.approx(cfg.train.lr_at(e * k, total=cfg.total_steps()), rel=1e-12)
    assert m["lr"][1] == pytest.approx(cfg.train.lr * 6 / 7)  # step 5 of a 7-step warm-up
    evaluated = [0, 2, 4, 6]
    assert m["train_loss"].notna().tolist() == [e in evaluated for e in range(7)]
    assert m["test_loss"].notna().tolist() == m["train_acc"].notna().tolist() == m["train_loss"].notna().tolist()
    x, y = run.train_data()
    loss_fn = loss_function(cfg.train.loss)
    for e in evaluated:  # train metrics: the whole training set, the model at e (checkpoint label e · k)
        with torch.no_grad():
            logits = run.model(e * k)(x)[:, -1]
        assert m["train_loss"][e] == pytest.approx(loss_fn(logits, y).item(), rel=1e-5)
        assert m["train_acc"][e] == pytest.approx((logits.argmax(-1) == y).double().mean().item())
    assert set(run.evals.columns) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert verify(run.path).ok


def test_a_minibatch_run_resumed_mid_epoch_is_bit_identical(tmp_path):
    cfg = _cfg(epochs=6, every=2, flush_every=3)
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    for stop in (8, 14, 16):  # the stop comes before step stop + 1: mid-epoch (k = 5: 9, 17) or at a boundary (15)
        out = tmp_path / f"s{stop}"
        with pytest.raises(KeyboardInterrupt, match=rf"at epoch {(stop + 1) // 5} \(optimizer step {stop + 1}\)"):
            g.train(cfg, out, progress=False, callbacks=[StopAtStep(stop)])
        assert verify(out).ok and not g.load_run(out).finished
        torch.manual_seed(1234)  # whatever the global generator does meanwhile
        run = g.resume(out, progress=False)
        assert run.session["action"] == "resumed"
        assert _same(run, ref), stop
        assert (out / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    # an epoch-boundary stop (StopAt: after the last step of epoch 2)
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        g.train(cfg, out, progress=False, callbacks=[StopAt(2)])
    assert _same(g.resume(out, progress=False), ref)


def test_a_checkpoint_schedule_in_epochs_snapshots_at_epoch_boundaries(tmp_path):
    cfg = _cfg(epochs=6, every=2, unit="epoch")
    k = cfg.steps_per_epoch()
    run = g.train(cfg, tmp_path / "r", progress=False)
    assert run.epochs.tolist() == [0, 2, 4, 6] == cfg.checkpoint_epochs().tolist()
    by_step = g.train(cfg.replace(unit="step", every=2 * k), tmp_path / "s", progress=False)
    assert by_step.epochs.tolist() == [0, 2 * k, 4 * k, 6 * k]
    for e in (0, 2, 4, 6):
        for name, t in run.params(e).items():
            assert torch.equal(t, by_step.params(e * k)[name])


def test_the_sampler_seed_changes_the_order_and_defaults_to_the_init_seed(tmp_path):
    a = g.train(_cfg(epochs=2), tmp_path / "a", progress=False)
    b = g.train(_cfg(epochs=2, sampler_seed=0), tmp_path / "b", progress=False)  # init_seed 0 of the preset
    c = g.train(_cfg(epochs=2, sampler_seed=5), tmp_path / "c", progress=False)
    assert a.config.model.init_seed == 0
    assert torch.equal(a.params()["unembed.W_U"], b.params()["unembed.W_U"])
    assert not torch.equal(a.params()["unembed.W_U"], c.params()["unembed.W_U"])


def test_a_full_batch_size_equals_full_batch_training_up_to_the_order_of_the_sum(tmp_path):
    cfg = _cfg(epochs=4, batch_size=None, every=1)
    full = g.train(cfg, tmp_path / "f", progress=False)
    one = g.train(cfg.replace(batch_size=cfg.n_train()), tmp_path / "b", progress=False)
    assert one.epochs.tolist() == full.epochs.tolist() == [0, 1, 2, 3, 4]
    for e in full.epochs.tolist():  # one batch of every example, permuted: the same step up to rounding
        for name, t in full.params(e).items():
            assert torch.allclose(one.params(e)[name], t, rtol=1e-4, atol=1e-6), (e, name)


@pytest.mark.parametrize("batch_size", [None, 16])
def test_mse_trains_in_the_single_run_loop(tmp_path, batch_size):
    cfg = g.make_config("tiny", **{**SMALL, "frac_train": 0.6}, epochs=60, every=20, eval_every=10, log_early=0,
                        loss="mse", lr=3e-3, weight_decay=0.1, batch_size=batch_size)
    run = g.train(cfg, tmp_path / "r", progress=False)
    ev = run.evals
    assert ev["train_loss"].iloc[-1] < 0.5 * ev["train_loss"].iloc[0]
    assert ev["train_acc"].iloc[-1] > ev["train_acc"].iloc[0]


# -- stacks ----------------------------------------------------------------------------------------------
def _stack_cfgs(**kw):
    base = _cfg(**kw)
    return [base.replace(init_seed=0, sampler_seed=3, lr=1e-2),
            base.replace(init_seed=1, split_seed=5, lr=3e-3, frac_train=0.52),  # 63 examples: a last batch of 11
            base.replace(init_seed=2)]  # the sampler seed defaults to the init seed


def _close_runs(a, b, rtol=1e-5) -> None:
    """Same checkpoints and metrics up to float32 rounding: each parameter within ``rtol`` of the
    largest entry of its tensor, the metrics to 1e-6 (stacked and single forwards sum in other orders)."""
    assert np.array_equal(a.epochs, b.epochs)
    for k in b.stacks():
        want = b.stack(k)
        assert (a.stack(k) - want).abs().max() <= rtol * want.abs().max(), k
    assert list(a.metrics.columns) == list(b.metrics.columns)
    ma, mb = a.metrics.to_numpy(), b.metrics.to_numpy()
    assert np.array_equal(np.isnan(ma), np.isnan(mb)) and np.allclose(ma, mb, rtol=1e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("impl", ["tables", "dense"])
def test_stacked_minibatch_runs_equal_the_same_runs_trained_alone(tmp_path, impl):
    from grokinterp.training.stacked import stack_key, train_stacked

    cfgs = _stack_cfgs(epochs=6, lr_schedule="constant")
    assert [c.steps_per_epoch() for c in cfgs] == [5, 5, 5] and len({stack_key(c) for c in cfgs}) == 1
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False, impl=impl)
    for i, c in enumerate(cfgs):
        alone = g.train(c, tmp_path / f"a{i}", progress=False)
        _close_runs(runs[i], alone)
        assert runs[i].metrics["step"].tolist() == alone.metrics["step"].tolist()
        assert verify(runs[i].path).ok


def test_stacks_key_on_batch_size_and_steps_per_epoch():
    from grokinterp.training.stacked import stack_key, stack_mismatch

    a = _cfg()
    assert stack_key(a) != stack_key(a.replace(batch_size=12)) != stack_key(a.replace(batch_size=None))
    assert stack_key(a) == stack_key(a.replace(sampler_seed=9))
    b = a.replace(frac_train=0.7)  # 85 examples in batches of 13: 7 steps, not 5
    assert stack_key(a) != stack_key(b)
    assert "steps per epoch" in stack_mismatch(a, b)


def test_an_interrupted_minibatch_stack_resumes_mid_epoch_bit_identically(tmp_path):
    from grokinterp.training.stacked import resume_stacked, train_stacked

    cfgs = _stack_cfgs(epochs=5, every=2, flush_every=2)
    ref = train_stacked(cfgs, [tmp_path / f"r{i}" for i in range(3)], progress=False)
    outs = [tmp_path / f"s{i}" for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfgs, outs, progress=False, callbacks=[StopAtStep(12)])  # stops before step 13 (k = 5)
    assert all(verify(o).ok and not g.load_run(o).finished for o in outs)
    torch.manual_seed(99)
    runs = resume_stacked(outs, progress=False)
    assert all(_same(a, b) for a, b in zip(runs, ref))


def test_a_minibatch_stack_refuses_mask_mode_before_anything_is_written(tmp_path):
    from grokinterp.errors import ConfigError
    from grokinterp.training.stacked import train_stacked

    with pytest.raises(ConfigError, match="^mode: minibatch"):
        train_stacked(_stack_cfgs(epochs=2), [tmp_path / f"s{i}" for i in range(3)], progress=False, mode="mask")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("batch_size", [None, 16])
def test_mse_trains_in_stacks_as_alone(tmp_path, batch_size):
    from grokinterp.training.stacked import stack_key, train_stacked

    base = g.make_config("tiny", **{**SMALL, "frac_train": 0.6}, epochs=30, every=10, eval_every=10, log_early=0,
                         loss="mse", lr=3e-3, weight_decay=0.1, batch_size=batch_size)
    cfgs = [base.replace(init_seed=s) for s in range(2)]
    assert stack_key(cfgs[0]) is not None
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(2)], progress=False)
    alone = g.train(cfgs[1], tmp_path / "a", progress=False)
    _close_runs(runs[1], alone)
    ev = runs[0].evals
    assert ev["train_loss"].iloc[-1] < 0.7 * ev["train_loss"].iloc[0]


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_the_fast_path_handles_tiny_batches_where_a_position_is_constant(tmp_path, batch_size):
    """A batch of one example, or whose examples share a or b, makes that position constant for the
    batch's plan (FastPlan folds constant positions); the run still equals the hooked forward's."""
    cfg = g.make_config("tiny", p=5, d_model=8, n_heads=2, d_mlp=16, frac_train=0.6, epochs=3, every=1,
                        log_early=0, eval_every=1, batch_size=batch_size, unit="epoch")
    fast = g.train(cfg, tmp_path / "f", progress=False)
    hooked = g.train(cfg.replace(fast_path=False), tmp_path / "h", progress=False)
    for e in fast.epochs.tolist():
        for name, t in hooked.params(e).items():
            assert torch.allclose(fast.params(e)[name], t, rtol=1e-4, atol=1e-6), (e, name)


@pytest.mark.parametrize("schedule", [dict(lr_schedule="cosine"), dict(warmup_style="paper")])
def test_stacked_minibatch_schedules_count_steps_as_alone(tmp_path, schedule):
    """Per-run lr schedules in stacks (where the stacked optimizers implement them) count optimizer
    steps as a single minibatch run's do: the same checkpoints to float32 rounding."""
    from grokinterp.training.stacked import stack_key, train_stacked

    cfgs = [c.replace(**schedule) for c in _stack_cfgs(epochs=6, warmup_epochs=7)]
    if stack_key(cfgs[0]) is None:
        pytest.skip(f"{schedule} does not train in stacks in this tree")
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False)
    for i in (0, 1):
        _close_runs(runs[i], g.train(cfgs[i], tmp_path / f"a{i}", progress=False))


def test_stacked_minibatch_two_layer_layernorm_runs_equal_alone(tmp_path):
    """Where stacks train deeper LayerNorm transformers (the generic stacked forward), minibatch
    stacks of them equal the runs trained alone to float32 rounding."""
    from grokinterp.errors import ConfigError
    from grokinterp.training.stacked import stack_key, train_stacked

    try:
        base = _cfg(epochs=4, n_layers=2, layer_norm=True)
    except ConfigError:
        pytest.skip("this tree has no model.layer_norm")
    cfgs = [base.replace(init_seed=s, sampler_seed=s + 3) for s in range(3)]
    if stack_key(cfgs[0]) is None:
        pytest.skip("two-layer runs do not train in stacks in this tree")
    runs = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False)
    for i in (0, 2):
        _close_runs(runs[i], g.train(cfgs[i], tmp_path / f"a{i}", progress=False))


class CrashAfterFirstFlush(Callback):
    def on_flush(self, loop, epoch: int, finished: bool) -> None:
        raise RuntimeError("simulated crash after a flush")


def test_a_run_that_dies_after_a_mid_epoch_flush_resumes_from_that_step(tmp_path):
    """A full checkpoint buffer flushes inside an epoch (step schedule); the state it writes is a
    resume point like a requested stop's."""
    cfg = _cfg(epochs=5, every=2, flush_every=3)  # the first flush holds steps 0, 2, 4: inside epoch 0 (k = 5)
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="simulated crash"):
        g.train(cfg, out, progress=False, callbacks=[CrashAfterFirstFlush()])
    from safetensors import safe_open

    with safe_open(str(out / "state.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["resume_step"] == "4" and meta["resume_epoch"] == "0" and meta["flushed_upto"] == "4"
    assert g.load_run(out).epochs.tolist() == [0, 2, 4]
    assert _same(g.resume(out, progress=False), ref)


class _PeekSingle(Callback):
    """At the first step's end: the single executor's batch 2 and its forward over another row."""

    def on_step(self, loop, epoch):
        if epoch != 0:
            return
        b = loop.batch(2)
        self.fast, self.tokens, self.labels = b.plan.fast, b.plan.tokens, b.labels[0]
        with torch.no_grad():
            zeros = {k: torch.zeros_like(p) for k, p in loop.params.items()}
            self.zero_logits = loop.logits(loop.train, zeros)  # another row: not the leaves
            self.own = loop.logits(loop.train)[0]  # the default row: the leaves the optimizer updates
            self.plain = loop.model(loop.train.plan.tokens)[:, -1]
        self.held = {k: id(p) for k, p in loop.model.named_parameters()} == {k: id(p) for k, p in loop.params.items()}


@pytest.mark.parametrize("fast_path", [False, True])
def test_the_single_executors_batch_builds_a_fast_plan_only_where_its_step_uses_one(tmp_path, fast_path):
    cfg = _cfg(epochs=2, fast_path=fast_path)
    peek = _PeekSingle()
    run = g.train(cfg, tmp_path / "r", progress=False, callbacks=[peek])
    x, y = (torch.from_numpy(a) for a in cfg.task.task().dataset().select(run.split_pairs()[0]))
    i = batch_indices(sampler_seed(cfg), 0, len(x), cfg.train.batch_size)[2]
    assert torch.equal(peek.tokens, x[i]) and torch.equal(peek.labels, y[i])  # batch 2 of epoch 0
    assert (peek.fast is not None) == fast_path
    if fast_path:  # a plan of the batch's tokens
        from grokinterp.model.fastpath import FastPlan

        want = FastPlan.build(cfg.model, x[i])
        assert torch.equal(peek.fast.bag_idx, want.bag_idx)
    else:  # a row other than the leaves goes through functional_call; the module keeps the leaves
        assert peek.zero_logits.shape == (1, len(x), cfg.task.p) and not peek.zero_logits.any()
        assert torch.equal(peek.own, peek.plain) and peek.held
