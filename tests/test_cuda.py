"""The GPU path: fast path, training, checkpoint buffer, resume and analyses on CUDA.

Skipped where no CUDA device is present (CI machines have none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import pytest
import torch
from _helpers import close as _close
from _helpers import perturbed
from oracles import progress_measures_reference

import grokinterp as g
from grokinterp.config import ModelConfig, make_config
from grokinterp.model.fastpath import FastPlan, final_logits
from grokinterp.model.grid import grid_forward
from grokinterp.store.integrity import verify
from grokinterp.tasks import make_dataset, split_pairs
from grokinterp.training import loop as trainer_mod
from grokinterp.training.loop import TrainingInterrupted
from grokinterp.training.loop import TrainLoop as _Trainer
from grokinterp.training.step import CudaGraphStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

CUDA = torch.device("cuda")
TINY = make_config("tiny", device="cuda")


@pytest.mark.parametrize("cfg", [make_config("paper").model,
                                 ModelConfig(p=13, d_model=24, n_heads=3, d_mlp=40, act_fn="gelu")])
def test_fast_path_on_cuda_equals_hooked_forward_and_gradients_on_cpu(cfg):
    model = perturbed(cfg, scale=1.0)
    ds = make_dataset(cfg.p)
    tokens, labels = torch.from_numpy(ds.tokens[::3].copy()), torch.from_numpy(ds.labels[::3].copy())

    def grads(m, fn, y):
        m.zero_grad()
        torch.nn.functional.cross_entropy(fn().double(), y).backward()
        return {k: v.grad.detach().cpu() for k, v in m.named_parameters()}

    ref_logits = model(tokens)[:, -1].detach()
    g_ref = grads(model, lambda: model(tokens)[:, -1], labels)
    gpu = perturbed(cfg, scale=1.0).to(CUDA)
    plan = FastPlan.build(cfg, tokens.to(CUDA))
    assert plan.bag_idx.is_cuda and plan.pattern.is_cuda and plan.vary_idx.is_cuda
    fast = final_logits(dict(gpu.named_parameters()), plan)
    assert fast.is_cuda and _close(fast.detach(), ref_logits)
    g_fast = grads(gpu, lambda: final_logits(dict(gpu.named_parameters()), plan), labels.to(CUDA))
    for k in g_ref:
        assert _close(g_fast[k], g_ref[k]), k


def _trainer(cfg, tmp_path) -> _Trainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return _Trainer(cfg, tmp_path, CUDA, *split_pairs(cfg.task))


def test_training_step_and_snapshot_never_wait_for_the_gpu(tmp_path):
    """Snapshots go to a device-side buffer and a step records its metrics on the device: with
    CUDA's sync debug mode set to 'error', any host sync in a step or a snapshot raises."""
    tr = _trainer(TINY, tmp_path)
    assert tr.buffer.is_cuda  # the stack's snapshot buffer [flush_every, 1, n_params]
    assert all(v.is_cuda for c, v in tr.metrics.items() if c != "lr")  # lr: a host value, kept on the host
    assert all(p.is_cuda for p in tr.params.values())
    assert isinstance(tr.step_fn, CudaGraphStep) and tr.step_fn.graph is None
    for epoch in range(4):  # eager warm-up steps, then the capture (and its first replay)
        tr.step(epoch, record_acc=True)
    assert tr.step_fn.graph is not None
    torch.cuda.synchronize()
    before = {k: v.detach().clone() for k, v in tr.params.items()}
    torch.cuda.set_sync_debug_mode("error")
    try:
        for epoch in range(4, 9):
            tr._snapshot(epoch)
            tr.step(epoch, record_acc=epoch % 2 == 0)
            tr.metrics["test_loss"][epoch], tr.metrics["test_acc"][epoch] = tr.evaluate(tr.data["test"])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert tr.buffered == [4, 5, 6, 7, 8]
    buf = tr.layout.views(tr.buffer[:5, 0])["embed.W_E"]
    assert torch.equal(buf[0], before["embed.W_E"])  # epoch 4's snapshot: the model after step 3
    assert not torch.equal(buf[0], buf[1])  # each snapshot is a copy, not a view of the parameters
    loss = tr.metrics["train_loss"][:9].cpu().numpy()
    assert np.isfinite(loss).all() and loss[8] < loss[0]


def test_graph_replayed_steps_equal_eager_steps(tmp_path, monkeypatch):
    """The CUDA-graph step (default on CUDA) follows the eager step's trajectory."""
    graph = _trainer(TINY, tmp_path / "graph")
    monkeypatch.setenv("GROKINTERP_CUDA_GRAPHS", "0")
    eager = _trainer(TINY, tmp_path / "eager")
    assert isinstance(graph.step_fn, CudaGraphStep) and not isinstance(eager.step_fn, CudaGraphStep)
    n = 40  # through the lr warm-up (10 epochs) and well past the capture
    for tr in (graph, eager):
        for epoch in range(n):
            tr.step(epoch, record_acc=True)
    assert graph.step_fn.graph is not None
    lg, le = (tr.metrics["train_loss"][:n].cpu().numpy() for tr in (graph, eager))
    assert np.allclose(lg, le, rtol=1e-5, atol=0), np.abs(lg / le - 1).max()
    assert lg[-1] < 0.5 * lg[0]
    for k, v in eager.params.items():
        assert torch.allclose(graph.params[k], v, rtol=1e-4, atol=1e-5), (k, (graph.params[k] - v).abs().max())


def test_training_on_cuda_groks_and_loads_on_cpu(tmp_path):
    run = g.train(TINY, tmp_path / "gpu", progress=False)
    assert run.info["device"]["type"] == "cuda"
    cpu = g.train(TINY.replace(device="cpu"), tmp_path / "cpu", progress=False)
    assert np.array_equal(run.epochs, cpu.epochs)
    # same seeded initialisation on both devices
    for name in ("embed.W_E", "blocks.0.mlp.W_in", "unembed.W_U"):
        assert torch.equal(run.stack(name, [0])[0], cpu.stack(name, [0])[0]), name
    # the same model at epoch 0 gives the same loss on both devices (up to float32 rounding);
    # later epochs drift apart (Adam's first steps are ~lr·sign(g), so rounding-level differences
    # in near-zero gradients become lr-sized ones), but both runs grok
    m, mc = run.metrics.set_index("epoch"), cpu.metrics.set_index("epoch")
    assert abs(m.loc[0, "train_loss"] - mc.loc[0, "train_loss"]) <= 1e-6 * mc.loc[0, "train_loss"]
    assert abs(m.loc[0, "test_loss"] - mc.loc[0, "test_loss"]) <= 1e-6 * mc.loc[0, "test_loss"]
    assert m["test_acc"].dropna().iloc[-1] >= 0.99 and mc["test_acc"].dropna().iloc[-1] >= 0.99
    assert run.model(-1).embed.W_E.device.type == "cpu"
    assert verify(run.path).ok


def test_interrupted_cuda_run_resumes(tmp_path, monkeypatch):
    calls = itertools.count()

    @contextlib.contextmanager
    def stop_after_300():
        def stop() -> bool:
            return next(calls) >= 300

        yield stop

    monkeypatch.setattr(trainer_mod, "_sigint_flag", stop_after_300)
    with pytest.raises(TrainingInterrupted):
        g.train(TINY, tmp_path / "run", progress=False)
    monkeypatch.undo()
    partial = g.load_run(tmp_path / "run")
    assert 0 < partial.epochs[-1] <= 300
    run = g.resume(tmp_path / "run", progress=False)
    assert np.array_equal(run.epochs, TINY.checkpoint_epochs())
    assert run.metrics["test_acc"].dropna().iloc[-1] >= 0.99
    assert verify(run.path).ok


def test_analyses_on_cuda_equal_cpu(tiny_run):
    eps = tiny_run.epochs[::5]
    cpu = g.progress_measures(tiny_run, epochs=eps)
    gpu = g.progress_measures(tiny_run, epochs=eps, device="cuda")
    ref = progress_measures_reference(tiny_run, epochs=eps[:3], device="cuda")
    cols = [c for c in cpu.columns if c != "epoch"]
    assert np.allclose(gpu[cols].to_numpy(), cpu[cols].to_numpy(), rtol=1e-4, atol=1e-6, equal_nan=True)
    assert np.allclose(ref[cols].to_numpy(), cpu[cols].to_numpy()[:3], rtol=1e-4, atol=1e-6, equal_nan=True)
    params = {k: v.to(CUDA) for k, v in tiny_run.stacks(epochs=eps[:2]).items()}
    out = grid_forward(params, tiny_run.config.model, return_post=True)
    ref_out = grid_forward(tiny_run.stacks(epochs=eps[:2]), tiny_run.config.model, return_post=True)
    assert out.logits.is_cuda and _close(out.logits, ref_out.logits) and _close(out.post, ref_out.post)


# -- issue 13: interventions inside the CUDA graph, live measures on the device ----------------------------
ALL_ON = dict(grad_transforms=("grokfast_ema", "grokfast_ma", "orthograd"), grokfast_window=5, optimizer="ortho_adamw",
              loss="stablemax", init_scale=1.5, weight_norm=True, attn_coeff=0.5, lr_schedule="cosine",
              weight_decay_on="matrices", weight_decay=0.1, epochs=200)


def test_every_intervention_runs_inside_the_graph_without_host_syncs_and_follows_the_eager_steps(tmp_path, monkeypatch):
    cfg = TINY.replace(**ALL_ON)
    graph = _trainer(cfg, tmp_path / "graph")
    assert isinstance(graph.step_fn, CudaGraphStep)
    for epoch in range(4):
        graph.step(epoch, record_acc=True)
    assert graph.step_fn.graph is not None and not graph.step_fn.eager  # captured, no fallback
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for epoch in range(4, 30):
            graph.step(epoch, record_acc=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    monkeypatch.setenv("GROKINTERP_CUDA_GRAPHS", "0")
    eager = _trainer(cfg, tmp_path / "eager")
    for epoch in range(30):
        eager.step(epoch, record_acc=True)
    lg, le = (tr.metrics["train_loss"][:30].cpu().numpy() for tr in (graph, eager))
    assert np.allclose(lg, le, rtol=1e-4, atol=0), np.abs(lg / le - 1).max()
    norm = graph.constraints[0]
    assert abs(float(norm.norm()) / norm.target - 1) < 1e-5


def test_live_measures_on_cuda_equal_cpu_and_training_records_them(tmp_path):
    from grokinterp.analysis.early import live_arrays, live_measures, live_table

    run = g.train(TINY.replace(live_every=50), tmp_path / "live", progress=False)
    table = live_table(run.metrics)
    assert list(table["epoch"]) == list(range(0, TINY.train.epochs + 1, 50))
    params = run.params(-1)
    arrays_cpu = live_arrays(run.config, *run.split_pairs())
    arrays_gpu = live_arrays(run.config, *run.split_pairs(), device="cuda")
    cpu = live_measures(params, run.config.model, arrays_cpu)
    gpu = live_measures({k: v.cuda() for k, v in params.items()}, run.config.model, arrays_gpu)
    assert cpu.key_freqs == gpu.key_freqs == tuple(table["key_freqs"].iloc[-1])
    for k, v in cpu.values.items():
        assert torch.allclose(gpu.values[k].cpu(), v, rtol=1e-4, atol=1e-6), k
