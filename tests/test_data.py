"""Minibatches (grokinterp.training.data), the MSE loss and the batch_size / sampler_seed fields."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.config import RunConfig, TrainConfig
from grokinterp.errors import ConfigError
from grokinterp.training.data import (
    batch_indices,
    epoch_of,
    permutation,
    sampler_seed,
    stack_key,
    stacked_batch,
    stacked_epoch,
    step_of,
    steps_per_epoch,
)
from grokinterp.training.step import LOSS_FUNCTIONS, loss_function, mse_one_hot, per_example_loss

ROOT = Path(__file__).resolve().parents[1]


# -- the sampler --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, B", [(1, 1), (10, 1), (10, 3), (10, 5), (10, 10), (1124, 128), (7, 6)])
def test_each_epoch_covers_every_example_exactly_once_in_ceil_n_over_b_batches(n, B):
    for epoch in (0, 1, 17):
        batches = batch_indices(seed=5, epoch=epoch, n=n, batch_size=B)
        assert len(batches) == steps_per_epoch(n, B) == math.ceil(n / B)
        sizes = [len(b) for b in batches]
        assert sizes[:-1] == [B] * (len(batches) - 1)  # all full but the last
        assert sizes[-1] == n - (len(batches) - 1) * B >= 1  # the ragged remainder, kept
        assert all(b.dtype == torch.int64 for b in batches)
        assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_full_batch_is_one_step_over_the_stored_order():
    assert steps_per_epoch(9, None) == 1
    [b] = batch_indices(seed=1, epoch=3, n=9, batch_size=None)
    assert b.tolist() == list(range(9))


def test_the_order_is_a_function_of_seed_and_epoch_alone():
    a = permutation(11, 4, 200)
    torch.manual_seed(123)  # torch's and numpy's global generators play no part
    np.random.seed(9)
    torch.rand(5)
    b = permutation(11, 4, 200)
    assert torch.equal(a, b)
    state = torch.get_rng_state()
    permutation(11, 5, 200)
    assert torch.equal(state, torch.get_rng_state())  # and the sampler does not advance torch's
    assert not torch.equal(a, permutation(11, 5, 200))  # another epoch, another order
    assert not torch.equal(a, permutation(12, 4, 200))  # another seed, another order
    # an epoch's order does not depend on the epochs drawn before it (a resume recomputes it)
    assert torch.equal(torch.cat(batch_indices(11, 4, 200, 64)), a)


def test_the_order_is_the_same_in_a_fresh_interpreter():
    code = ("from grokinterp.training.data import permutation; "
            "print(permutation(2**64 - 1, 39_999, 50).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}).stdout
    assert json.loads(out) == permutation(2 ** 64 - 1, 39_999, 50).tolist()


def test_the_order_is_argsort_of_raw_pcg64_output_pinned():
    """The definition, and a pinned value: NumPy fixes PCG64's and SeedSequence's streams on every
    platform, so this list must never change (if it does, resumed minibatch runs would diverge)."""
    keys = np.random.PCG64(np.random.SeedSequence([3, 2])).random_raw(12)
    assert permutation(3, 2, 12).tolist() == np.argsort(keys, kind="stable").tolist()
    assert permutation(0, 0, 8).tolist() == PINNED


PINNED = [3, 2, 1, 6, 0, 7, 4, 5]


def test_the_permutation_is_roughly_uniform():
    """Each of the 6 orders of 3 items about equally often over 6,000 epochs (chi-square, 5 d.o.f.)."""
    counts: dict[tuple[int, ...], int] = {}
    for e in range(6000):
        t = tuple(permutation(7, e, 3).tolist())
        counts[t] = counts.get(t, 0) + 1
    assert len(counts) == 6
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < 20.5  # p ≈ 0.001


def test_steps_and_epochs_convert_both_ways():
    k = steps_per_epoch(1124, 128)
    assert k == 9
    for s in range(0, 100):
        e, b = epoch_of(s, k)
        assert step_of(e, b, k) == s and 0 <= b < k
    assert step_of(3, 0, k) == 27  # "epoch 3" in a schedule = after 27 steps
    with pytest.raises(ValueError):
        step_of(0, 9, k)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="train.batch_size"):
        steps_per_epoch(10, 11)
    with pytest.raises(ValueError, match="train.batch_size"):
        batch_indices(0, 0, 10, 0)
    with pytest.raises(ValueError, match="n:"):
        steps_per_epoch(0, None)


# -- stacks -------------------------------------------------------------------------------------------
def test_stacked_epoch_is_each_runs_own_batches_padded_with_zero_weight():
    seeds, ns, B = [4, 4, 9], [10, 11, 12], 4
    assert len({stack_key(n, B) for n in ns}) == 1  # 3 steps each
    index, weight = stacked_epoch(seeds, ns, B, epoch=6)
    assert index.shape == weight.shape == (3, 3, B) and index.dtype == torch.int64 and weight.dtype == torch.float64
    for r, (seed, n) in enumerate(zip(seeds, ns)):
        own = batch_indices(seed, 6, n, B)
        for s, batch in enumerate(own):
            b = len(batch)
            assert index[s, r, :b].tolist() == batch.tolist()
            assert torch.all(weight[s, r, :b] == 1.0 / b) and torch.all(weight[s, r, b:] == 0)
            assert torch.all(index[s, r] < n)  # the padding points at a real example of the run
        idx, w = stacked_batch(seeds, ns, B, 6, batch=2)
        assert torch.equal(idx, index[2]) and torch.equal(w, weight[2])
    assert torch.allclose(weight.sum(-1), torch.ones(3, 3, dtype=torch.float64))
    # same seed, different n: different orders (not one order truncated)
    assert index[:, 0].flatten().tolist() != index[:, 1].flatten()[:12].tolist()


def test_a_weighted_stacked_loss_is_each_runs_own_batch_mean():
    torch.manual_seed(0)
    seeds, ns, B, V = [1, 2], [8, 7], 3, 6
    logits = [torch.randn(n, V) for n in ns]
    labels = [torch.randint(0, V, (n,)) for n in ns]
    pad_logits = torch.zeros(2, max(ns), V)
    pad_labels = torch.zeros(2, max(ns), dtype=torch.long)
    for r, n in enumerate(ns):
        pad_logits[r, :n], pad_labels[r, :n] = logits[r], labels[r]
    index, weight = stacked_epoch(seeds, ns, B, epoch=0)
    for name in LOSS_FUNCTIONS:
        each = per_example_loss(name)
        for s in range(index.shape[0]):
            i = index[s]
            lg = pad_logits.gather(1, i[..., None].expand(-1, -1, V))
            lb = pad_labels.gather(1, i)
            got = (each(lg, lb) * weight[s]).sum(1)
            for r, n in enumerate(ns):
                batch = batch_indices(seeds[r], 0, n, B)[s]
                want = loss_function(name)(logits[r][batch], labels[r][batch])
                assert torch.allclose(got[r], want, rtol=1e-12, atol=0), (name, s, r)


def test_runs_with_different_steps_per_epoch_do_not_stack():
    assert stack_key(10, 4) != stack_key(13, 4)
    assert stack_key(10, None) == stack_key(500, None) == (None, 1)
    with pytest.raises(ValueError, match="same steps per epoch"):
        stacked_epoch([0, 0], [10, 13], 4, 0)


# -- the MSE loss -------------------------------------------------------------------------------------
def test_mse_is_the_mean_over_examples_and_classes_of_the_squared_error_to_one_hot():
    torch.manual_seed(1)
    n, V = 9, 5
    logits = torch.randn(n, V, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(0, V, (n,))
    loss = mse_one_hot(logits, labels)
    assert loss.dtype == torch.float64
    x = logits.detach().double().numpy()
    t = np.zeros((n, V))
    t[np.arange(n), labels.numpy()] = 1.0
    assert loss.item() == pytest.approx(((x - t) ** 2).sum() / (n * V), rel=1e-14)
    assert loss.item() == pytest.approx(torch.nn.MSELoss()(logits.double(), torch.tensor(t)).item(), rel=1e-14)
    loss.backward()  # d/dL (1/nV) Σ (L − T)² = 2 (L − T) / (n V)
    assert np.allclose(logits.grad.numpy(), 2 * (x - t) / (n * V), rtol=1e-6, atol=1e-9)
    assert LOSS_FUNCTIONS["mse"] is mse_one_hot and "mse" in g.config.LOSSES


def test_each_per_example_loss_averages_to_its_loss():
    torch.manual_seed(2)
    logits, labels = torch.randn(2, 6, 4), torch.randint(0, 4, (2, 6))
    for name in LOSS_FUNCTIONS:
        each = per_example_loss(name)(logits, labels)
        assert each.shape == (2, 6) and each.dtype == torch.float64
        for r in range(2):
            assert torch.allclose(each[r].mean(), loss_function(name)(logits[r], labels[r]), rtol=1e-14)


def test_an_mse_run_records_the_mse_loss_and_argmax_accuracy(tmp_path):
    cfg = g.make_config("tiny", p=7, d_model=8, n_heads=2, d_mlp=16, epochs=3, every=1, eval_every=1, loss="mse")
    run = g.train(cfg, tmp_path / "m", progress=False)
    m = run.metrics.set_index("epoch")
    tokens, labels = run.train_data()
    test_tokens, test_labels = run.test_data()
    for e in (0, 3):  # row e: the model after e steps
        with torch.no_grad():
            model = run.model(e)
            logits = model(tokens)[:, -1].double()
            test_logits = model(test_tokens)[:, -1].double()
        assert m.loc[e, "train_loss"] == pytest.approx(mse_one_hot(logits, labels).item(), rel=1e-4)
        assert m.loc[e, "test_loss"] == pytest.approx(mse_one_hot(test_logits, test_labels).item(), rel=1e-4)
        assert m.loc[e, "test_acc"] == pytest.approx((test_logits.argmax(-1) == test_labels).double().mean().item())


# -- the config fields --------------------------------------------------------------------------------
def test_batch_size_and_sampler_seed_are_validated_naming_the_field():
    assert TrainConfig().batch_size is None and TrainConfig().sampler_seed is None
    for bad in (0, -3, 2.5, "8", True):
        with pytest.raises(ConfigError, match=r"^train\.batch_size: "):
            TrainConfig(batch_size=bad)
    for bad in (-1, 2 ** 64, 1.0):
        with pytest.raises(ConfigError, match=r"^train\.sampler_seed: "):
            TrainConfig(sampler_seed=bad)
    assert TrainConfig(batch_size=1, sampler_seed=2 ** 64 - 1).batch_size == 1


def test_a_batch_larger_than_the_training_set_is_refused_naming_the_field():
    cfg = g.make_config("tiny", p=7, frac_train=0.5)  # round(0.5 · 49) = 24 training pairs
    n = cfg.n_train()
    assert n == 24 == len(cfg.task.task().split(0.5, cfg.task.split_seed)[0])
    assert cfg.replace(batch_size=n).train.batch_size == n  # the whole set is allowed
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 25 is larger than the 24 training examples"):
        cfg.replace(batch_size=25)
    paper = g.make_config("tiny", p=7, frac_train=0.5, split_method="paper")  # int(0.5 · 49) = 24
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        paper.replace(batch_size=paper.n_train() + 1)


def test_the_new_fields_round_trip_and_old_configs_load_without_them():
    cfg = g.make_config("tiny", p=7, batch_size=5, sampler_seed=3)
    d = cfg.to_dict()
    assert RunConfig.from_dict(json.loads(json.dumps(d))) == cfg
    for name in ("batch_size", "sampler_seed"):
        del d["train"][name]
    old = RunConfig.from_dict(d)
    assert old.train.batch_size is None and old.train.sampler_seed is None
    assert sampler_seed(cfg) == 3 and sampler_seed(old) == old.model.init_seed
    assert sampler_seed(g.make_config("tiny", init_seed=41)) == 41


def test_the_cli_offers_batch_size_and_refuses_one_too_large(tmp_path):
    from grokinterp.cli import _overrides, build_parser

    args = build_parser("tiny").parse_args(["train", "--preset", "tiny", "--batch-size", "64", "--sampler-seed", "2",
                                            "--loss", "mse"])
    over = _overrides(args)
    assert over["batch_size"] == 64 and over["sampler_seed"] == 2 and over["loss"] == "mse"
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-m", "grokinterp", "train", "--preset", "tiny", "--p", "7",
                           "--batch-size", "1000", "--out", str(out)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "train.batch_size" in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_minibatch_run_trains_one_step_per_batch(tmp_path):
    """The trainer reads grokinterp.training.data (tests/test_minibatch.py has the details)."""
    cfg = g.make_config("tiny", p=7, d_model=8, n_heads=2, d_mlp=16, epochs=3, batch_size=4, every=1, log_early=0)
    run = g.train(cfg, tmp_path / "r", progress=False)
    k = cfg.steps_per_epoch()
    assert run.epochs.tolist() == list(range(3 * k + 1)) and run.metrics["step"].tolist() == [0, k, 2 * k, 3 * k]


def test_a_minibatch_schedule_counts_optimizer_steps_unless_told_epochs():
    cfg = g.make_config("tiny", p=7, frac_train=0.5, epochs=10, every=3, log_early=0, batch_size=5)
    k = steps_per_epoch(cfg.n_train(), 5)  # 24 examples in batches of 5: 5 steps
    assert cfg.steps_per_epoch() == k == 5 and cfg.total_steps() == 50
    assert cfg.checkpoint_unit() == "step"
    assert cfg.checkpoint_epochs().tolist() == sorted(set(range(0, 51, 3)) | {50})
    by_epoch = cfg.replace(unit="epoch")
    assert by_epoch.checkpoint_unit() == "epoch" and by_epoch.checkpoint_epochs().tolist() == [0, 3, 6, 9, 10]
    full = g.make_config("tiny", p=7, epochs=10, every=3, log_early=0)
    assert full.checkpoint_unit() == "epoch" and full.total_steps() == 10
    assert full.replace(unit="step").checkpoint_epochs().tolist() == full.checkpoint_epochs().tolist()
    assert len(cfg.checkpoint_epochs()) <= cfg.checkpoint_count_bound()
    with pytest.raises(ConfigError, match=r"^checkpoints\.unit: "):
        full.replace(unit="steps")
    with pytest.raises(ConfigError, match=r"^train\.epochs: .* optimizer steps, more than the limit"):
        g.make_config("tiny", p=7, frac_train=0.5, epochs=10 ** 8, every=10 ** 8, batch_size=1)


def test_grid_flags_read_batch_size_and_sampler_seed_as_integers():
    from grokinterp.sweeps.spec import parse_grid_flag

    assert parse_grid_flag("batch_size=64,128") == ("batch_size", [64, 128])
    assert parse_grid_flag("train.sampler_seed=0,7") == ("train.sampler_seed", [0, 7])
    with pytest.raises(ConfigError, match="grid.batch_size: cannot read"):
        parse_grid_flag("batch_size=64,x")


def test_info_says_full_batch_and_what_the_schedule_counts(tmp_path, capsys):
    from grokinterp.cli import main

    cfg = g.make_config("tiny", p=7, d_model=8, n_heads=2, d_mlp=16, epochs=3, every=1, log_early=0)
    run = g.train(cfg, tmp_path / "r", progress=False)
    assert main(["info", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "3 epochs, full batch," in out and "checkpoints: 4 (epochs 0..3)" in out


def _reference_minibatch_training(x, y, seed, B, steps, start=None):
    """How a loop uses the sampler: step s is batch b of epoch e (epoch_of), the epoch's batches are
    recomputed from (seed, e) alone, so a resume needs only the step count and the model/optimizer state."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(x.shape[1], 5))
    opt = torch.optim.AdamW([w], lr=1e-2)
    first = 0
    if start is not None:  # resume: (step, weights, optimizer state) as a checkpoint holds them
        first, state, opt_state = start
        with torch.no_grad():
            w.copy_(state)
        opt.load_state_dict(opt_state)
    k = steps_per_epoch(len(x), B)
    cache: dict[int, list[torch.Tensor]] = {}
    for s in range(first, steps):
        e, b = epoch_of(s, k)
        batch = cache.setdefault(e, batch_indices(seed, e, len(x), B))[b]
        loss = mse_one_hot(x[batch] @ w, y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().clone(), opt.state_dict()


def test_a_minibatch_run_resumed_mid_epoch_is_bit_identical_on_cpu():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(23, 4, generator=gen), torch.randint(0, 5, (23,), generator=gen)
    straight, _ = _reference_minibatch_training(x, y, seed=9, B=5, steps=17)  # 5 steps an epoch
    half, opt_state = _reference_minibatch_training(x, y, seed=9, B=5, steps=7)  # stops mid-epoch 1
    torch.manual_seed(1234)  # whatever the global generator did meanwhile
    resumed, _ = _reference_minibatch_training(x, y, seed=9, B=5, steps=17, start=(7, half, opt_state))
    assert torch.equal(straight, resumed)
    other, _ = _reference_minibatch_training(x, y, seed=10, B=5, steps=17)
    assert not torch.equal(straight, other)  # the sampler seed matters
