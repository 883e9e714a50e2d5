"""Denormal floats: training and analysis flush them to zero (late epochs are otherwise several times
slower on some CPUs), restore the caller's setting afterwards, and train the same bits as without."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import grokinterp as g
from grokinterp.analysis.measures import MEASURES, Measure, register_measure
from grokinterp.model.denormals import denormals_flushed, flush_denormals
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainingInterrupted
from grokinterp.training.stacked import train_stacked
from grokinterp.training.step import cross_entropy64

SUPPORTED = torch.set_flush_denormal(False)  # probes the platform; off is the process default
needs_ftz = pytest.mark.skipif(not SUPPORTED, reason="this platform cannot flush denormals")
TINY = dict(epochs=6, every=3, log_early=0, eval_every=3, flush_every=2)


@pytest.fixture(autouse=True)
def _off():
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


def test_the_probe_reads_the_setting():
    assert not denormals_flushed()
    if SUPPORTED:
        torch.set_flush_denormal(True)
        assert denormals_flushed()


@needs_ftz
def test_the_block_flushes_and_restores_the_callers_setting(monkeypatch):
    with flush_denormals() as on:
        assert on and denormals_flushed()
        with flush_denormals():
            assert denormals_flushed()
        assert denormals_flushed()  # an inner block does not switch it off under the outer one
    assert not denormals_flushed()
    torch.set_flush_denormal(True)  # the caller's own choice is kept
    with flush_denormals():
        pass
    assert denormals_flushed()
    torch.set_flush_denormal(False)
    with pytest.raises(KeyError), flush_denormals():
        raise KeyError("restored on the way out of an error too")
    assert not denormals_flushed()
    monkeypatch.setenv("GROKINTERP_FLUSH_DENORMALS", "0")
    with flush_denormals() as on:
        assert not on and not denormals_flushed()


class _Seen(Callback):
    def __init__(self):
        self.seen = []

    def on_step(self, loop, epoch):
        self.seen.append(denormals_flushed())


class _StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch(self, loop, epoch):
        if epoch == self.epoch:
            loop.request_stop()


class _SeenMeasure(Measure):
    name, columns = "toy_ftz", ("toy_ftz",)
    definitions = {"toy_ftz": "1 where denormals were flushed while this chunk was measured"}

    def compute(self, ctx):
        return {"toy_ftz": torch.full((ctx.n,), float(denormals_flushed()), dtype=torch.float64)}


@needs_ftz
def test_training_and_analysis_run_flushed_and_leave_the_session_as_it_was(tmp_path):
    seen = _Seen()
    with pytest.raises(TrainingInterrupted):
        g.train(g.make_config("tiny", **TINY), tmp_path / "one", progress=False, callbacks=[seen, _StopAt(3)])
    assert seen.seen and all(seen.seen) and not denormals_flushed()
    seen = _Seen()
    run = g.resume(tmp_path / "one", progress=False, callbacks=[seen])
    assert run.epochs[-1] == 6 and seen.seen and all(seen.seen) and not denormals_flushed()
    cfgs = [g.make_config("tiny", **TINY, init_seed=s, split_seed=s) for s in (0, 1)]
    seen = _Seen()
    train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False, callbacks=[seen])
    assert seen.seen and all(seen.seen) and not denormals_flushed()
    register_measure(_SeenMeasure())
    try:
        df = g.progress_measures(run, key_freqs=[1, 2], measures=["toy_ftz"])
        assert (df["toy_ftz"] == 1.0).all() and not denormals_flushed()
        g.analyze_run(run, key_freqs=[1, 2])
        assert not denormals_flushed()
    finally:
        MEASURES.pop("toy_ftz", None)


def _denormal_logit_grads(run, epoch: int) -> int:
    """Denormal entries of the float32 gradient of the training loss at the logits (what the backward
    pass multiplies), computed without flushing."""
    x, y = run.train_data()
    with flush_denormals(False):
        logits = run.model(epoch)(x)[:, -1].detach().requires_grad_()
        cross_entropy64(logits, y).backward()
    gr = logits.grad
    return int(((gr != 0) & (gr.abs() < torch.finfo(torch.float32).tiny)).sum())


@needs_ftz
@pytest.mark.slow
def test_a_run_through_denormals_trains_the_same_bits_with_and_without_flushing(tmp_path, monkeypatch):
    """``tiny`` to epoch 500: from about epoch 400 the gradient of the logits holds denormals. Flushed
    or not, every checkpoint and the metrics are bit-identical on this machine. The resume state
    differs exactly where the unflushed run keeps a denormal: there the flushed one holds 0 (AdamW's
    second moment of gradients ~1e-20 is ~1e-40; next to its eps of 1e-8 it changes no update)."""
    cfg = g.make_config("tiny", epochs=500, every=50, log_early=0, eval_every=10)
    flushed = g.train(cfg, tmp_path / "ftz", progress=False)
    monkeypatch.setenv("GROKINTERP_FLUSH_DENORMALS", "0")
    plain = g.train(cfg, tmp_path / "plain", progress=False)
    assert _denormal_logit_grads(plain, 500) > 0  # the run did go through denormals
    assert np.array_equal(plain.epochs, flushed.epochs)
    for e in plain.epochs:
        a, b = plain.params(int(e)), flushed.params(int(e))
        assert all(torch.equal(a[k], b[k]) for k in a), int(e)
    m1, m2 = plain.metrics, flushed.metrics
    assert m1.columns.tolist() == m2.columns.tolist()
    for c in m1.columns:
        assert np.array_equal(m1[c].to_numpy(), m2[c].to_numpy(), equal_nan=True), c
    s1, s2 = load_file(plain.path / "state.safetensors"), load_file(flushed.path / "state.safetensors")
    assert s1.keys() == s2.keys()
    differ = {}
    for k in s1:
        x, y = s1[k], s2[k]
        if not torch.equal(x, y):
            d = (x != y) & ~(x.isnan() & y.isnan()) if x.is_floating_point() else x != y
            if not d.any():  # NaN where nothing was recorded, in both
                continue
            assert x.is_floating_point() and bool((y[d] == 0).all()), k
            assert bool((x[d].abs() < torch.finfo(x.dtype).tiny).all()), (k, x[d][:5])
            differ[k] = int(d.sum())
    assert all(k.startswith("opt/") for k in differ), differ
