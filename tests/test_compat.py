"""Runs written by the previous release (grokinterp 0.1.0, before the house restructuring) load,
verify, reproduce and resume unchanged. The fixtures were written by that release's own code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _machine import assert_reproduces, machine_features, recorded_features, same_float_machine
from safetensors.torch import load_file, save_file

import grokinterp as g

OLD = Path(__file__).parent / "fixtures" / "runs" / "release-0.1.0"
#: The float features of the machine that trained the fixture (``tests/_machine.py``).
MACHINE = recorded_features(OLD)
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
    """Bit for bit on a machine whose float features match the fixture's (``machine.json``), to the
    tolerances of ``tests/_machine.py`` elsewhere (float32 kernels round differently per CPU)."""
    old = g.load_run(_copy("finished", tmp_path))
    new = g.train(CFG, tmp_path / "new", progress=False)
    assert np.array_equal(old.split_pairs()[0], new.split_pairs()[0])  # the split is exact everywhere
    assert_reproduces(old, new, MACHINE)


def test_an_old_interrupted_run_resumes_to_the_old_finished_run(tmp_path):
    cut = _copy("interrupted", tmp_path)
    assert not g.load_run(cut).finished
    resumed = g.resume(cut, progress=False)
    ref = g.load_run(_copy("finished", tmp_path))
    assert_reproduces(ref, resumed, MACHINE)
    assert g.verify(resumed.path).ok


def test_fixture_comparisons_are_bit_for_bit_only_on_the_fixtures_machine(tmp_path):
    """On another CPU (AVX-512 instead of AVX2) a 1.6e-7 difference in the weights is accepted, a real
    change is not; on the fixture's machine not even the last bit may differ."""
    assert set(MACHINE) >= {"cpu_vendor", "cpu_model", "cpu_capability", "float_flags", "torch"}
    old = g.load_run(_copy("finished", tmp_path))
    close = _copy("finished", tmp_path / "close")
    far = _copy("finished", tmp_path / "far")
    for path, delta in ((close, 1.6e-7), (far, 1e-3)):  # rewrite the last shard's W_E, and the manifest
        shard = sorted((path / "shards").glob("*.safetensors"))[-1]
        t = load_file(shard)
        t["embed.W_E"] = t["embed.W_E"] + delta
        save_file(t, shard)
    other = {**MACHINE, "cpu_vendor": "GenuineIntel", "cpu_capability": "AVX512",
             "float_flags": sorted(MACHINE["float_flags"] + ["avx512f"])}
    assert same_float_machine(MACHINE, MACHINE) and not same_float_machine(MACHINE, other)
    assert same_float_machine(MACHINE, machine_features()) == all(
        MACHINE[k] == machine_features()[k] for k in ("machine", "cpu_vendor", "cpu_capability", "float_flags", "torch"))
    near, distant = g.load_run(close, check=False), g.load_run(far, check=False)
    assert assert_reproduces(old, near, MACHINE, other) is False  # within tolerance elsewhere
    with pytest.raises(AssertionError):
        assert_reproduces(old, near, MACHINE, MACHINE)  # not bit for bit: refused on the fixture's machine
    with pytest.raises(AssertionError):
        assert_reproduces(old, distant, MACHINE, other)
