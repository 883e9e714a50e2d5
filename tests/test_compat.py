"""Runs written by the previous release (grokinterp 0.1.0, before the house restructuring) load,
verify, reproduce and resume unchanged. The fixtures were written by that release's own code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

import grokinterp as g

OLD = Path(__file__).parent / "fixtures" / "runs" / "release-0.1.0"
CFG = g.make_config("tiny", p=7, d_model=8, n_heads=2, d_mlp=16, epochs=30, every=10, log_early=0,
                    flush_every=2, eval_every=5, frac_train=0.5)


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(OLD / name, dst)
    return dst


def test_old_runs_lack_the_new_fields_and_load_with_their_defaults(tmp_path):
    info = json.loads((OLD / "finished" / "run.json").read_text())
    assert info["versions"]["grokinterp"] == "0.1.0"
    assert "optimizer" not in info["config"]["train"] and "split_method" not in info["config"]["task"]
    run = g.load_run(_copy("finished", tmp_path))
    assert run.config == CFG  # absent fields take the defaults that reproduce the old behaviour
    assert run.problems == [] and run.finished and g.verify(run.path).ok
    assert run.epochs.tolist() == [0, 10, 20, 30]
    assert np.isfinite(g.progress_measures(run)["train_loss"]).all()


def test_this_release_reproduces_an_old_run_bit_for_bit(tmp_path):
    old = g.load_run(_copy("finished", tmp_path))
    new = g.train(CFG, tmp_path / "new", progress=False)
    assert np.array_equal(old.epochs, new.epochs)
    for name, stack in old.stacks().items():
        assert torch.equal(stack, new.stack(name)), name
    assert np.array_equal(old.split_pairs()[0], new.split_pairs()[0])
    assert np.array_equal(old.metrics.to_numpy(), new.metrics.to_numpy(), equal_nan=True)


def test_an_old_interrupted_run_resumes_to_the_old_finished_run(tmp_path):
    cut = _copy("interrupted", tmp_path)
    assert not g.load_run(cut).finished
    resumed = g.resume(cut, progress=False)
    ref = g.load_run(_copy("finished", tmp_path))
    for name, stack in ref.stacks().items():
        assert torch.equal(stack, resumed.stack(name)), name
    assert g.verify(resumed.path).ok
