"""Configs validate every field by name; tasks compute the right labels; the split is seeded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from grokinterp.config import _ADDED_FIELDS, CheckpointSchedule, RunConfig, make_config
from grokinterp.errors import ConfigError, GrokinterpError
from grokinterp.tasks import OPERATIONS, is_prime, make_dataset, register_operation, split_indices


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(p=2), "task.p"),
        (dict(frac_train=0.0), "task.frac_train"),
        (dict(frac_train=1.0), "task.frac_train"),
        (dict(frac_train=-0.5), "task.frac_train"),
        (dict(d_model=30, n_heads=4), "model.d_model"),
        (dict(operation="pow"), "task.operation"),
        (dict(operation="div", p=25), "task.p"),
        (dict(epochs=-1), "train.epochs"),
        (dict(lr=0.0), "train.lr"),
        (dict(beta2=1.0), "train.beta2"),
        (dict(eval_every=0), "train.eval_every"),
        (dict(device="tpu"), "train.device"),
        (dict(every=0), "checkpoints.every"),
        (dict(windows=((10, 5, 1),)), "checkpoints.windows"),
        (dict(act_fn="tanh"), "model.act_fn"),
        (dict(d_mlp="big"), "model.d_mlp"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        make_config("tiny", **overrides)
    assert str(err.value).startswith(field), str(err.value)
    assert isinstance(err.value, GrokinterpError)


def test_unknown_field_and_preset():
    with pytest.raises(ConfigError, match="no such config field"):
        make_config("tiny", learning_rate=1e-3)
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config("huge")


def test_p_override_keeps_vocabulary_in_step():
    cfg = make_config("paper", p=97)
    assert cfg.task.p == cfg.model.p == 97
    assert (cfg.model.d_vocab, cfg.model.d_vocab_out, cfg.model.d_head) == (98, 97, 32)
    cfg2 = make_config("paper", **{"task.p": 59})
    assert cfg2.model.p == 59


def test_paper_defaults():
    c = make_config("paper")
    assert (c.task.p, c.task.frac_train, c.task.operation) == (113, 0.3, "add")
    assert (c.model.d_model, c.model.n_heads, c.model.d_head, c.model.d_mlp, c.model.n_layers) == (128, 4, 32, 512, 1)
    assert (c.train.lr, c.train.weight_decay, c.train.beta1, c.train.beta2) == (1e-3, 1.0, 0.9, 0.98)


def test_roundtrip_and_strict_from_dict():
    cfg = make_config("quick", windows=((100, 200, 10),))
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    d = cfg.to_dict()
    d["train"]["nesterov_momentum"] = 0.9
    with pytest.raises(ConfigError, match="train.nesterov_momentum.*newer grokinterp"):
        RunConfig.from_dict(d)
    d = cfg.to_dict()
    del d["model"]["d_mlp"]
    with pytest.raises(ConfigError, match="model.d_mlp"):
        RunConfig.from_dict(d)


def test_fields_added_later_default_to_the_old_behaviour():
    """A run.json written before a field existed lacks it; the default reproduces the old run."""
    cfg = make_config("quick", live_every=0)  # the preset turns the (newer) live measures on
    d = cfg.to_dict()
    added = {"task": ["split_method", "eq_logit", "n_train", "subset_seed", "random_labels", "label_seed",
                      "train_size", "data"],
             "model": ["family", "eq_logit", "init_method", "init_scale", "attn_coeff", "layer_norm", "bias",
                       "input_layout", "ln_style", "pos_embed"],
             "train": ["optimizer", "momentum", "grad_transforms", "warmup_style", "lr_schedule", "weight_decay_on",
                       "loss", "grokfast_alpha", "grokfast_lamb", "grokfast_window", "weight_norm",
                       "weight_norm_target", "live_every", "batch_size", "sampler_seed", "init_from", "init_epoch",
                       "dtype"],
             "checkpoints": ["unit"]}
    assert added == {sec: sorted(names, key=added[sec].index) for sec, names in _ADDED_FIELDS.items()}
    for sec, names in added.items():
        for name in names:
            del d[sec][name]
    old = RunConfig.from_dict(d)
    assert old == cfg
    assert (old.task.split_method, old.train.optimizer, old.train.grad_transforms) == ("random", "adamw", ())
    assert (old.task.eq_logit, old.model.init_method, old.train.warmup_style) == (False, "default", "default")
    assert (old.model.init_scale, old.model.attn_coeff, old.train.loss, old.train.lr_schedule,
            old.train.weight_decay_on, old.train.weight_norm, old.train.live_every) == \
        (1.0, 1.0, "cross_entropy", "constant", "all", False, 0)
    assert (old.train.batch_size, old.train.sampler_seed) == (None, None)  # full batch
    assert old.train.weight_norm_target is None  # the initial norm, as before the field existed
    assert old.checkpoints.unit is None and old.checkpoint_unit() == "epoch"
    assert old.model.d_vocab_out == old.task.p and old.model.family == "transformer"
    assert old.model.pos_embed == "learned"
    assert old.train.dtype == "float32"  # float32, as every run before the field


def test_frozen():
    cfg = make_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.task.p = 5  # type: ignore[misc]


def test_schedule_epochs():
    s = CheckpointSchedule(every=100, windows=((150, 300, 25),), log_early=3)
    e = s.epochs(1000).tolist()
    assert e[0] == 0 and e[-1] == 1000
    assert {150, 175, 200, 225, 250, 275, 300} <= set(e)
    assert all(x in e for x in range(0, 1001, 100))
    assert sorted(set(e)) == e
    early = [x for x in e if 0 < x < 100]
    assert len(early) == 3 and early[0] == 1
    assert CheckpointSchedule(every=7).epochs(10).tolist() == [0, 7, 10]


@pytest.mark.parametrize("op, fn", [
    ("add", lambda a, b, p: (a + b) % p),
    ("sub", lambda a, b, p: (a - b) % p),
    ("mul", lambda a, b, p: (a * b) % p),
    ("x2_xy_y2", lambda a, b, p: (a * a + a * b + b * b) % p),
])
def test_operations_match_python(op, fn):
    p = 13
    ds = make_dataset(p, op)
    assert len(ds) == p * p
    for (a, b, eq), c in zip(ds.tokens.tolist(), ds.labels.tolist()):
        assert eq == p and c == fn(a, b, p)


def test_division_is_inverse_of_multiplication():
    p = 11
    ds = make_dataset(p, "div")
    assert len(ds) == p * (p - 1)
    a, b = ds.tokens[:, 0], ds.tokens[:, 1]
    assert (b != 0).all()
    assert np.array_equal((ds.labels * b) % p, a)
    with pytest.raises(ConfigError, match="prime"):
        make_dataset(12, "div")


def test_registry_plugs_in_new_operations():
    register_operation("toy_x3_xy", lambda a, b, p: a ** 3 + a * b, formula="a³+ab")
    try:
        ds = make_dataset(7, "toy_x3_xy")
        assert ds.labels[3 * 7 + 2] == (27 + 6) % 7
        assert make_config("tiny", operation="toy_x3_xy").task.operation == "toy_x3_xy"
    finally:
        OPERATIONS.pop("toy_x3_xy")


def test_split_is_seeded_disjoint_and_sized():
    tr, te = split_indices(1000, 0.3, seed=5)
    tr2, te2 = split_indices(1000, 0.3, seed=5)
    tr3, _ = split_indices(1000, 0.3, seed=6)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not np.array_equal(tr, tr3)
    assert len(tr) == 300 and len(te) == 700
    assert len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 1000


def test_is_prime():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
