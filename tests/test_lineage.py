"""Continuing a run on changed data (issue 21): subsets, random labels, ``train --from`` and its refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import StopAt, cli_here

import grokinterp as gi
from grokinterp.config import RunConfig
from grokinterp.errors import ConfigError, RunError
from grokinterp.store import layout
from grokinterp.store.lock import acquire
from grokinterp.tasks import random_label_grid, split_pairs, subset_pairs, training_labels
from grokinterp.training.lineage import child_config, parse_from
from grokinterp.training.stacked import train_stacked

SMALL = dict(p=23, frac_train=0.6, d_model=32, n_heads=2, d_mlp=64, epochs=30, eval_every=5, every=10, log_early=2,
             flush_every=2, device="cpu")


def _cfg(**kw) -> RunConfig:
    return gi.make_config("tiny", **{**SMALL, **kw})


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lineage") / "parent"
    gi.train(_cfg(), out, progress=False)
    return out


def _same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _all_checkpoints_equal(r1, r2) -> bool:
    return list(r1.epochs) == list(r2.epochs) and all(_same_params(r1.params(int(e)), r2.params(int(e)))
                                                      for e in r1.epochs)


# -- the data: subsets and random labels (tasks/subsets.py) -------------------------------------------
def test_subset_is_a_deterministic_nested_subset():
    trn, _ = split_pairs(_cfg().task)
    a = subset_pairs(trn, 50, seed=3)
    assert len(a) == 50 and set(a) <= set(trn) and np.all(np.diff(a) > 0)
    assert np.array_equal(a, subset_pairs(trn, 50, seed=3))  # deterministic
    assert not np.array_equal(a, subset_pairs(trn, 50, seed=4))  # the seed matters
    assert set(subset_pairs(trn, 20, seed=3)) <= set(a)  # nested in n for one seed
    with pytest.raises(ConfigError, match="task.n_train"):
        subset_pairs(trn, len(trn) + 1, seed=0)


def test_config_subset_moves_the_rest_to_test():
    full_trn, full_tst = split_pairs(_cfg().task)
    trn, tst = split_pairs(_cfg(n_train=40, subset_seed=1).task)
    assert len(trn) == 40 and set(trn) <= set(full_trn)
    assert np.array_equal(np.sort(np.concatenate([trn, tst])), np.sort(np.concatenate([full_trn, full_tst])))
    assert set(full_tst) <= set(tst)
    assert _cfg(n_train=40).n_train() == 40
    with pytest.raises(ConfigError, match="task.n_train: must be at most"):
        _cfg(n_train=len(full_trn) + 1)


def test_random_labels_are_seeded_independent_draws():
    p = 23
    g0, g0b, g1 = random_label_grid(p, p, 0), random_label_grid(p, p, 0), random_label_grid(p, p, 1)
    assert np.array_equal(g0, g0b) and not np.array_equal(g0, g1)
    assert g0.min() >= 0 and g0.max() < p
    true = _cfg().task.task().label_grid()
    # not a permutation of the true labels: the class counts are those of independent draws (a permutation
    # keeps every class at exactly p pairs); roughly uniform all the same
    counts = np.bincount(g0, minlength=p)
    assert not np.array_equal(np.sort(counts), np.sort(np.bincount(true, minlength=p)))
    chi2 = ((counts - p) ** 2 / p).sum()
    assert chi2 < 3 * p  # df = p − 1: far above only for a broken draw
    # a pair keeps its label whatever subset it is in, and only random_labels changes anything
    cfg = _cfg(random_labels=True, label_seed=0)
    trn, _ = split_pairs(cfg.task)
    y = training_labels(cfg.task, trn, true[trn])
    assert np.array_equal(y, g0[trn])
    assert np.array_equal(training_labels(cfg.task, trn[::3], true[trn[::3]]), y[::3])
    assert training_labels(_cfg().task, trn, true[trn]) is not None
    assert np.array_equal(training_labels(_cfg().task, trn, true[trn]), true[trn])


def test_old_run_json_without_the_new_fields_loads():
    d = _cfg().to_dict()
    for k in ("n_train", "subset_seed", "random_labels", "label_seed"):
        d["task"].pop(k)
    for k in ("init_from", "init_epoch"):
        d["train"].pop(k)
    cfg = RunConfig.from_dict(d)
    assert cfg == _cfg()


def test_random_label_run_trains_on_its_labels(tmp_path):
    cfg = _cfg(random_labels=True, label_seed=2, epochs=10)
    run = gi.train(cfg, tmp_path / "rl", progress=False)
    tokens, labels = run.train_data()
    trn = run.split_pairs()[0]
    assert np.array_equal(labels.numpy(), random_label_grid(23, 23, 2)[trn])
    assert np.array_equal(run.test_data()[1].numpy(), cfg.task.task().label_grid()[run.split_pairs()[1]])
    # the recorded training loss is the loss on those labels (not on the true ones)
    model = run.model(10)
    with torch.no_grad():
        logits = model(tokens)[:, -1].double()
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(loss - run.metrics.train_loss.iloc[-1]) < 1e-5
    assert run.lineage is not None and run.lineage["random_labels"] == {"label_seed": 2}


# -- children ----------------------------------------------------------------------------------------------
def test_parse_from():
    assert parse_from("a/b@20") == ("a/b", 20)
    assert parse_from("a/b") == ("a/b", None)
    with pytest.raises(ConfigError, match="--from"):
        parse_from("a/b@x")


def test_child_starts_from_the_parent_checkpoint_bits(parent, tmp_path):
    prun = gi.load_run(parent)
    cfg = child_config(parent, 20, n_train=60, subset_seed=1, epochs=12)
    child = gi.train(cfg, tmp_path / "child", progress=False)
    assert _same_params(child.params(0), prun.params(20))
    assert set(child.split_pairs()[0]) <= set(prun.split_pairs()[0]) and len(child.split_pairs()[0]) == 60
    lin = child.lineage
    assert lin["parent"] == str(parent.absolute()) and lin["epoch"] == 20 and lin["n_train"] == 60
    assert lin["subset"]["subset_seed"] == 1 and lin["parent_n_train"] == len(prun.split_pairs()[0])
    manifest = json.loads((parent / layout.MANIFEST_JSON).read_text())["files"]
    for rel, digest in lin["parent_files_sha256"].items():
        assert manifest[rel]["sha256"] == digest
    assert any(rel.startswith("shards/") for rel in lin["parent_files_sha256"])
    assert child.config.train.epochs == 12 and child.epochs[-1] == 12  # its own epochs
    # the last checkpoint when no epoch is named; gi.train(from_=...) is the same thing
    c2 = gi.train(prun.config.replace(n_train=60, subset_seed=1, epochs=12), tmp_path / "c2", progress=False,
                  from_=str(parent))
    assert c2.lineage["epoch"] == 30 and _same_params(c2.params(0), prun.params(30))


def test_child_in_a_stack_equals_the_child_alone(parent, tmp_path):
    prun = gi.load_run(parent)
    cfgs = [child_config(parent, 20, n_train=60, epochs=12), _cfg(epochs=12, random_labels=True)]
    stacked = train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False)
    assert _same_params(stacked[0].params(0), prun.params(20))
    assert stacked[0].lineage["epoch"] == 20 and stacked[1].lineage["random_labels"] == {"label_seed": 0}
    alone = gi.train(cfgs[0], tmp_path / "alone", progress=False)
    a, b = alone.metrics.train_loss.to_numpy(), stacked[0].metrics.train_loss.to_numpy()
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_child_resume_is_bit_identical(parent, tmp_path):
    cfg = child_config(parent, 10, n_train=50, random_labels=True, epochs=14)
    full = gi.train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        gi.train(cfg, tmp_path / "cut", progress=False, callbacks=[StopAt(7)])
    resumed = gi.resume(tmp_path / "cut", progress=False)
    assert resumed.session["action"] == "resumed"
    assert _all_checkpoints_equal(full, resumed)
    assert full.metrics.equals(resumed.metrics)


def test_child_of_a_child_keeps_the_chain(parent, tmp_path):
    c1 = gi.train(child_config(parent, 30, n_train=80, epochs=6), tmp_path / "c1", progress=False)
    c2 = gi.train(child_config(c1.path, n_train=40, epochs=6), tmp_path / "c2", progress=False)
    assert set(c2.split_pairs()[0]) <= set(c1.split_pairs()[0])
    assert c2.lineage["parent_lineage"]["parent"] == str(parent.absolute())


# -- refusals: nothing written, exit 2 ---------------------------------------------------------------------
def _refused(tmp_path, *args) -> str:
    out = tmp_path / "refused"
    code, _, err = cli_here("train", *args, "--epochs", "5", "--out", str(out), "--no-progress")
    assert code == 2, err
    assert not out.exists()
    return err


def test_refusals(parent, tmp_path):
    n_parent = len(gi.load_run(parent).split_pairs()[0])
    assert "no checkpoint at epoch 7" in _refused(tmp_path, "--from", f"{parent}@7")
    assert "task.n_train" in _refused(tmp_path, "--from", str(parent), "--n-train", str(n_parent + 1))
    assert "task.p" in _refused(tmp_path, "--from", str(parent), "--p", "29")
    assert "model.d_mlp" in _refused(tmp_path, "--from", str(parent), "--d-mlp", "32")
    c1 = gi.train(child_config(parent, n_train=60, epochs=4), tmp_path / "c1", progress=False)
    assert "not a subset" in _refused(tmp_path, "--from", str(c1.path), "--n-train", "61")
    assert "not a subset" in _refused(tmp_path, "--from", str(c1.path), "--n-train", "30", "--subset-seed", "5")
    assert "no such run directory" in _refused(tmp_path, "--from", str(tmp_path / "nowhere"))


def test_refuses_a_damaged_parent(parent, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(parent, bad)
    shard = sorted((bad / layout.SHARD_DIR).iterdir())[0]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert "damaged" in _refused(tmp_path, "--from", str(bad))
    with pytest.raises(RunError, match="damaged"):
        gi.train(child_config(parent, epochs=4), tmp_path / "x", progress=False, from_=str(bad))
    assert not (tmp_path / "x").exists()


def test_refuses_a_parent_being_trained(parent, tmp_path):
    lock = acquire(parent, "train")
    try:
        with pytest.raises(RunError, match="being trained"):
            gi.train(child_config(parent, epochs=4), tmp_path / "x", progress=False)
    finally:
        lock.release()
    assert not (tmp_path / "x").exists()


def test_cli_from_and_info(parent, tmp_path):
    out = tmp_path / "cli_child"
    code, stdout, err = cli_here("train", "--from", f"{parent}@20", "--frac-train", "0.2", "--random-labels",
                                 "--epochs", "4", "--out", str(out), "--no-progress")
    assert code == 0, err
    run = gi.load_run(out)
    assert run.config.task.n_train == round(0.2 * 23 * 23) and run.config.task.frac_train == 0.6  # the split stays
    assert run.config.task.random_labels and run.lineage["epoch"] == 20
    code, stdout, _ = cli_here("info", str(out))
    assert code == 0 and "lineage: started from" in stdout and "random labels" in stdout
    code, stdout, _ = cli_here("info", "--json", str(out))
    assert json.loads(stdout)["lineage"]["epoch"] == 20


def test_sweep_of_children(parent, tmp_path):
    # a spec names the parent and varies the children's data; the children of one sweep train as one stack
    spec = {"preset": "tiny", "fixed": {**SMALL, "init_from": str(parent),
                                        "init_epoch": 20, "epochs": 6},
            "grid": {"n_train": [40, 60], "random_labels": [False, True]}}
    sw = gi.sweep(spec, tmp_path / "sweep", progress=False)
    prun = gi.load_run(parent)
    runs = [gi.load_run(d) for d in sorted((tmp_path / "sweep" / "runs").iterdir())]
    assert len(runs) == 4 and sw is not None
    for run in runs:
        assert _same_params(run.params(0), prun.params(20))
        assert run.lineage["epoch"] == 20 and run.info["stack"]["size"] == 4
        assert set(run.split_pairs()[0]) <= set(prun.split_pairs()[0])


@pytest.mark.slow
def test_report_shows_the_lineage(parent, tmp_path):
    child = gi.train(child_config(parent, 20, n_train=60, epochs=6), tmp_path / "child", progress=False)
    code, _, err = cli_here("report", str(child.path), "--out", str(tmp_path / "r.html"))
    assert code == 0, err
    text = (tmp_path / "r.html").read_text()
    assert "lineage</th><td>started from" in text and "trains on 60 of the parent" in text


def test_child_resumes_without_its_parent_once_flushed(parent, tmp_path):
    p2 = tmp_path / "p2"
    shutil.copytree(parent, p2)
    cfg = child_config(p2, 10, n_train=50, epochs=14)
    full = gi.train(cfg, tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        gi.train(cfg, tmp_path / "cut", progress=False, callbacks=[StopAt(7)])
    shutil.rmtree(p2)  # the parent is gone: the child's own state is enough
    resumed = gi.resume(tmp_path / "cut", progress=False)
    assert _all_checkpoints_equal(full, resumed)


def test_stacked_children_resume_bit_identical(parent, tmp_path):
    from grokinterp.training.stacked import resume_stacked

    cfgs = [child_config(parent, 20, n_train=60, epochs=12), child_config(parent, 30, n_train=40, random_labels=True,
                                                                          epochs=12)]
    full = train_stacked(cfgs, [tmp_path / "f0", tmp_path / "f1"], progress=False)
    cut = [tmp_path / "c0", tmp_path / "c1"]
    with pytest.raises(KeyboardInterrupt):
        train_stacked(cfgs, cut, progress=False, callbacks=[StopAt(5)])
    resumed = resume_stacked(cut, progress=False)
    for a, b in zip(full, resumed):
        assert _all_checkpoints_equal(a, b) and a.metrics.equals(b.metrics)
