"""float64 as an option (issue 22): ``train.dtype`` = ``float32`` (default) | ``float64`` (Omnigrok trains in float64).

Parameters, optimizer state, the forward and backward and the checkpoints (safetensors ``F64``) are float64; readers
accept such runs (``Run.params()`` gives float32 by default, ``dtype=None`` the stored float64); the optimizers over
a float64 flat row are torch's float64 optimizers bit for bit; stacks of float64 runs train; float32 runs are unchanged
(``tests/test_one_loop.py``'s fixtures)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from _helpers import StopAt
from _torch_optim import step_singles, torch_optimizer, torch_state_tensors

import grokinterp as g
from grokinterp.config import interventions
from grokinterp.store import layout as _io
from grokinterp.store.integrity import verify
from grokinterp.training.loop import TrainingInterrupted
from grokinterp.training.optim import OPTIMIZERS, ParamLayout

SMALL = dict(d_hidden=16, epochs=4, every=1, eval_every=1, log_early=0, flush_every=2, train_size=300)


def _digits(**kw):
    return g.make_config("omnigrok-digits", **{**SMALL, **kw})


def _fingerprint(run) -> dict[str, str]:
    """SHA-256 of every stored checkpoint tensor (as stored), metric column and state tensor."""
    def digest(t):
        return hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()

    from safetensors.torch import load_file

    out = {f"checkpoints/{k}": digest(v) for k, v in run.stacks(dtype=None).items()}
    m = run.metrics
    out.update({f"metrics/{c}": digest(torch.from_numpy(m[c].to_numpy(dtype=np.float64, copy=True)))
                for c in m.columns if m[c].dtype.kind == "f"})
    out.update({f"state/{k}": digest(v) for k, v in load_file(str(run.path / _io.STATE_FILE)).items()
                if k.startswith(("opt/", "transform/", "param/"))})
    return out


def _shard_dtypes(run_dir) -> set[str]:
    out = set()
    for f in (run_dir / _io.SHARD_DIR).glob("*.safetensors"):
        header, _ = _io.parse_safetensors_header(f.read_bytes(), f)
        out |= {v["dtype"] for k, v in header.items() if k not in ("epochs", "__metadata__")}
    return out


# -- the config field ------------------------------------------------------------------------------------------------
def test_the_dtype_field_defaults_to_float32_and_refuses_what_cannot_work(tmp_path):
    assert g.make_config("tiny").train.dtype == "float32"
    assert g.make_config("tiny", dtype="float64").train.dtype == "float64"
    with pytest.raises(g.ConfigError, match="train.dtype"):
        g.make_config("tiny", dtype="float16")
    with pytest.raises(g.ConfigError, match="train.dtype.*init_from"):
        g.make_config("tiny", dtype="float64", init_from=str(tmp_path))
    # a run.json written before the field existed loads as float32
    d = g.make_config("tiny").to_dict()
    del d["train"]["dtype"]
    assert g.RunConfig.from_dict(d).train.dtype == "float32"
    assert "dtype: float64" in interventions(g.make_config("tiny", dtype="float64"))


def test_cli_dtype_flag(tmp_path, capsys):
    from grokinterp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "tiny", "--dtype", "float16", "--out", str(tmp_path / "bad")])
    assert e.value.code == 2 and "--dtype" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "ok"
    assert main(["train", "--preset", "omnigrok-digits", "--dtype", "float64", "--epochs", "2", "--d-hidden", "8",
                 "--train-size", "200", "--every", "1", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["train"]["dtype"] == "float64"


# -- the optimizers over a float64 row are torch's float64 optimizers, bit for bit ---------------------------------------
SHAPES = {"W": (8, 16), "b": (5,), "U": (3, 64), "c": (16,), "V": (7, 9)}
TCS = [dict(lr=1e-2, weight_decay=1.0, warmup_epochs=0, momentum=0.9),
       dict(lr=3e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, momentum=0.0, warmup_epochs=5, weight_decay_on="matrices"),
       dict(lr=5e-3, weight_decay=0.3, warmup_epochs=3, lr_schedule="cosine", momentum=0.5)]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("fused", [True, False])
def test_float64_optimizers_are_torchs_float64_optimizers(name, runs, fused):
    """CPU (torch's fused kernels, which take float64): bit for bit, parameters and saved state, alone and in a stack
    of three. The device path (broadcast kernels, run here on CPU tensors): to float64 rounding."""
    lay = ParamLayout(SHAPES)
    tcs = [g.TrainConfig(optimizer=name, epochs=40, dtype="float64", **kw) for kw in TCS[:runs]]
    gen = torch.Generator().manual_seed(4)
    flat = torch.nn.Parameter(torch.randn(len(tcs), lay.total, generator=gen, dtype=torch.float64))
    opt = OPTIMIZERS[name](flat, lay, tcs)
    if not fused:
        opt.device = torch.device("cuda")  # a label only: the step takes the device path on the CPU tensors
    singles = []
    for r, tc in enumerate(tcs):
        ps = {k: torch.nn.Parameter(v.detach().clone()) for k, v in lay.views(flat[r]).items()}
        singles.append((ps, torch_optimizer(ps, tc, fused=fused)))
    epoch = torch.zeros(())
    for e in range(40):
        grad = torch.randn(flat.shape, generator=gen, dtype=torch.float64) * torch.logspace(-4, 1, lay.total,
                                                                                           dtype=torch.float64)
        flat.grad = grad.clone()
        opt.set_lr(epoch, e if fused else None)
        opt.step()
        epoch += 1
        step_singles(singles, tcs, lay, grad, e)
        for r, (ps, _) in enumerate(singles):
            for k, v in lay.views(flat[r].detach()).items():
                assert v.dtype == torch.float64
                assert (torch.equal(v, ps[k].detach()) if fused else
                        torch.allclose(v, ps[k].detach(), rtol=1e-12, atol=1e-14)), (name, r, e, k)
    for r, (ps, o) in enumerate(singles):
        mine, theirs = opt.run_state(r), torch_state_tensors(o, ps)
        assert sorted(mine) == sorted(theirs)
        for k, v in theirs.items():
            assert torch.equal(mine[k], v) if fused else torch.allclose(mine[k], v, rtol=1e-10, atol=1e-15), k


# -- runs -----------------------------------------------------------------------------------------------------------
def test_a_float64_digits_run_stores_reads_verifies_and_resumes_bit_for_bit(tmp_path):
    from grokinterp.analysis.vectors import checkpoint_metrics

    cfg = _digits(dtype="float64", weight_norm=True, weight_norm_target=60.0)
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, tmp_path / "cut", progress=False, callbacks=[StopAt(1)])
    resumed = g.resume(tmp_path / "cut", progress=False)
    whole = g.train(cfg, tmp_path / "whole", progress=False)
    a, b = _fingerprint(whole), _fingerprint(resumed)
    assert [k for k in a if a[k] != b[k]] == []
    assert json.loads((whole.path / "run.json").read_text())["config"]["train"]["dtype"] == "float64"
    assert _shard_dtypes(whole.path) == {"F64"}
    state = whole.training_state()[1]
    assert {v.dtype for k, v in state.items() if k.startswith("param/") or k.endswith(("exp_avg", "exp_avg_sq"))} \
        == {torch.float64}
    assert verify(whole.path).ok
    p64, p32 = whole.params(dtype=None), whole.params()
    assert {v.dtype for v in p64.values()} == {torch.float64} and {v.dtype for v in p32.values()} == {torch.float32}
    assert any(not torch.equal(v.double(), v.float().double()) for v in p64.values())  # really float64 values
    for k in p64:
        torch.testing.assert_close(p32[k], p64[k].float(), rtol=0, atol=0)
    # the weight-norm constraint holds the float64 norm at its target to float64 rounding
    norm = torch.sqrt(sum(v.pow(2).sum() for v in p64.values())).item()
    assert norm == pytest.approx(60.0, rel=1e-13)
    # the analyses evaluate in float64: the checkpoint metrics are the trainer's own evaluations, to float64 rounding
    m = checkpoint_metrics(whole)
    ev = whole.evals.set_index("epoch")
    k = whole.config.steps_per_epoch()
    for _, row in m.iterrows():
        e, rem = divmod(int(row["epoch"]), k)
        if rem == 0 and e in ev.index:
            assert row["train_loss"] == pytest.approx(ev.loc[e, "train_loss"], rel=1e-12)
            assert row["test_acc"] == ev.loc[e, "test_acc"]


def test_float32_runs_still_store_f32_and_float64_differs_from_float32(tmp_path):
    r32 = g.train(_digits(), tmp_path / "f32", progress=False)
    r64 = g.train(_digits(dtype="float64"), tmp_path / "f64", progress=False)
    assert _shard_dtypes(r32.path) == {"F32"} and r32.config.train.dtype == "float32"
    # the same seeded initialisation (float32, converted exactly), then other roundings
    for k, v in r32.params(0).items():
        assert torch.equal(v.double(), r64.params(0, dtype=None)[k])
    last32, last64 = r32.metrics["train_loss"].iloc[-1], r64.metrics["train_loss"].iloc[-1]
    assert last32 != last64 and last32 == pytest.approx(last64, rel=1e-4)


def test_a_stack_of_float64_runs_equals_the_runs_trained_alone(tmp_path):
    """A stack (the generic forward over a float64 [run, n_params] row) and the runs alone (the hooked module): the same
    trajectory to float64 rounding; a float32 run cannot join a float64 stack; the float32-only kernels are refused."""
    from grokinterp.training.stacked import stack_mismatch

    cfgs = [_digits(dtype="float64", init_seed=s, split_seed=s, sampler_seed=s, weight_decay=wd)
            for s, wd in ((0, 0.01), (1, 0.1))]
    stacked = g.train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False)
    assert stacked[0].info["stack"]["impl"] == "generic"
    for cfg, run in zip(cfgs, stacked):
        alone = g.train(cfg, tmp_path / f"alone{cfg.model.init_seed}", progress=False)
        for k, v in alone.stacks(dtype=None).items():
            w = run.stack(k, dtype=None)
            assert w.dtype == torch.float64
            torch.testing.assert_close(w, v, rtol=1e-9, atol=1e-11 * float(v.abs().max()))
    assert "train.dtype" in stack_mismatch(cfgs[0], cfgs[0].replace(dtype="float32"))
    with pytest.raises(g.ConfigError, match="train.dtype"):
        g.train_stacked([g.make_config("tiny", p=7, epochs=2, dtype="float64")], [tmp_path / "t"], progress=False,
                        impl="tables")
    assert not (tmp_path / "t").exists()


def test_a_float64_transformer_falls_back_from_the_float32_fast_path(tmp_path):
    """The one-layer fast path's kernels are float32-only: a float64 transformer run trains through the hooked module
    (``fast_path`` true or false, the same bits) and reads back as any run does."""
    from grokinterp.analysis.measures import progress_measures

    kw = dict(p=7, epochs=6, every=2, log_early=0, dtype="float64")
    fast = g.train(g.make_config("tiny", **kw), tmp_path / "fast", progress=False)
    slow = g.train(g.make_config("tiny", fast_path=False, **kw), tmp_path / "slow", progress=False)
    a, b = _fingerprint(fast), _fingerprint(slow)
    assert [k for k in a if a[k] != b[k]] == []
    assert _shard_dtypes(fast.path) == {"F64"} and verify(fast.path).ok
    df = progress_measures(fast)  # the grid analyses read float32 copies
    assert len(df) == len(fast.epochs) and np.isfinite(df["train_loss"]).all()


def test_a_float64_stack_resumes_bit_for_bit(tmp_path):
    from grokinterp.training.stacked import StackInterrupted, resume_stacked

    cfgs = [_digits(dtype="float64", init_seed=s, split_seed=s, sampler_seed=s) for s in (0, 1)]
    with pytest.raises(StackInterrupted):
        g.train_stacked(cfgs, [tmp_path / "c0", tmp_path / "c1"], progress=False, callbacks=[StopAt(1)])
    resumed = resume_stacked([tmp_path / "c0", tmp_path / "c1"], progress=False)
    whole = g.train_stacked(cfgs, [tmp_path / "w0", tmp_path / "w1"], progress=False)
    for a, b in zip(whole, resumed):
        fa, fb = _fingerprint(a), _fingerprint(b)
        assert [k for k in fa if fa[k] != fb[k]] == []
        assert _shard_dtypes(b.path) == {"F64"}


class _Look(g.Callback):
    """A callback that records what the loop holds at the start and after the first step."""

    def __init__(self):
        self.seen: dict = {}

    def on_start(self, loop, epoch):
        self.seen["loop"] = loop

    def on_step(self, loop, epoch):
        if "grads" not in self.seen:
            self.seen["grads"] = {k: p.grad.dtype for k, p in loop.params.items() if p.grad is not None}
            self.seen["state"] = {k: v.dtype for k, v in loop.state_tensors().items()
                                  if k.startswith(("param/", "opt/", "transform/")) and v.is_floating_point()
                                  and not k.endswith("/step")}  # Adam's step counter: float32, as torch's


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_single_run_is_a_stack_of_one_in_the_runs_dtype(tmp_path, dtype):
    """The single run (``train()``: a stack of one with the ``single`` executor, seen through ``TrainLoop``) holds
    everything in ``train.dtype``: the flat row, its leaves and their gradients, the snapshot buffer, the hooked
    module (parameters and floating-point buffers), the input vectors (full set and minibatches), the optimizer and
    gradient-transform state; the float32 fast path is taken for float32 only."""
    from grokinterp.training.loop import TrainLoop

    want = getattr(torch, dtype)
    look = _Look()
    g.train(_digits(dtype=dtype, epochs=2, grad_transforms=["grokfast_ema"]), tmp_path / "digits", progress=False,
            callbacks=[look])
    loop = look.seen["loop"]
    assert isinstance(loop, TrainLoop) and loop.impl == "single" and loop.n_runs == 1
    assert loop.flat.dtype == want and loop.buffer.dtype == want and loop.dtype == want
    assert {p.dtype for p in loop.params.values()} == {want}
    assert {p.dtype for p in loop.model.parameters()} == {want}
    assert {b.dtype for b in loop.model.buffers() if b.is_floating_point()} <= {want}
    assert loop.data["train"].tokens.dtype == want and loop.data["test"].tokens.dtype == want
    assert loop.batch(0).plan.tokens.dtype == want  # a minibatch's input vectors
    assert set(look.seen["grads"].values()) == {want}
    assert any(k.startswith("transform/") for k in look.seen["state"]) and set(look.seen["state"].values()) == {want}
    assert _shard_dtypes(tmp_path / "digits") == {"F32" if dtype == "float32" else "F64"}

    look = _Look()
    g.train(g.make_config("tiny", p=7, epochs=2, every=1, log_early=0, dtype=dtype), tmp_path / "tiny",
            progress=False, callbacks=[look])
    loop = look.seen["loop"]
    assert loop.flat.dtype == want and {p.dtype for p in loop.model.parameters()} == {want}
    assert loop.data["train"].tokens.dtype == torch.int64  # token ids stay ids
    assert (loop.data["train"].plan is not None) == (dtype == "float32")  # the fast path: float32 kernels only
    assert loop._fast == (dtype == "float32") and (loop.data["test"].plan is not None) == (dtype == "float32")


def test_the_preflight_estimates_count_8_bytes_a_value_for_float64(tmp_path):
    """The pre-flight disk / memory estimate and the stack memory estimate size a float64 run by its 8-byte values:
    the checkpoint shards a float64 run writes fit in the estimate (with 4-byte values they did not: 158 kB written,
    107 kB estimated), and the parameter-sized parts are twice the float32 run's."""
    from grokinterp.training.preflight import estimate
    from grokinterp.training.stacked import stack_memory_bytes

    cfg64, cfg32 = _digits(dtype="float64", epochs=6), _digits(epochs=6)
    run = g.train(cfg64, tmp_path / "f64", progress=False)
    shards = sum(f.stat().st_size for f in (run.path / _io.SHARD_DIR).glob("*.safetensors"))
    est64, est32 = estimate(cfg64), estimate(cfg32)
    assert shards <= est64.disk["checkpoints"]
    assert est64.disk["training state"] - est32.disk["training state"] == 2 * 4 * cfg64.model.n_params * (1 + 2)  # adamw
    n = cfg64.model.n_params
    for part in ("parameters", "gradients", "optimizer state", "checkpoint buffer"):
        assert est64.memory[part] == 2 * est32.memory[part] >= 8 * n
    P = sum(v.numel() for v in run.params().values())
    grow = stack_memory_bytes(cfg64, 300, "generic") - stack_memory_bytes(cfg32, 300, "generic")
    assert grow >= 1.3 * 4 * P * (4 + cfg64.checkpoints.flush_every)
