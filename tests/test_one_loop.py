"""One optimizer registry and one gradient-transform registry for one run or many (issue 19).

A single run is a stack of one: its parameters are views of one flat row ``[1, n_params]`` that the
registry's optimizer (written once over stacks, per-run hyper-parameters) updates, and its gradient
transforms are the stacked ones. Nothing about a single run's bits may change: the trajectories of
``tests/fixtures/trajectories`` were written by the tree before (two optimizer registries, torch's
optimizers for single runs) and are reproduced bit for bit on a machine with the same float features;
the optimizers are torch's, bit for bit, over many steps, alone and in a stack of three.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _helpers import StopAt
from _machine import recorded_features, same_float_machine
from _torch_optim import step_singles, torch_optimizer, torch_state_tensors

import grokinterp as g
from grokinterp.training import transforms as T
from grokinterp.training.loop import TrainingInterrupted, TrainLoop
from grokinterp.training.optim import OPTIMIZERS, STACKED_OPTIMIZERS, ParamLayout, StackedOptimizer
from grokinterp.training.transforms import STACKED_TRANSFORMS, TRANSFORMS

TRAJ = Path(__file__).parent / "fixtures" / "trajectories"
sys.path.insert(0, str(TRAJ))
import make_trajectories as mt  # noqa: E402

REFERENCE = json.loads((TRAJ / "reference.json").read_text())
SAME_MACHINE = same_float_machine(recorded_features(TRAJ))


# -- a single run's trajectory is the one of the tree before one loop, bit for bit ----------------------------------
@pytest.mark.parametrize("case", sorted(mt.CASES))
def test_single_runs_reproduce_the_trajectories_of_the_tree_before_one_loop_bit_for_bit(case, tmp_path):
    """Every optimizer, every gradient transform, the weight-norm constraint, StableMax and MSE,
    schedules, minibatches, the hooked forward (no fast path), two LayerNorm layers, the MLP family:
    each checkpoint, each metric column and the final optimizer / transform state, to the last bit."""
    if not SAME_MACHINE:
        pytest.skip("the fixture's float features differ from this machine's (tests/_machine.py)")
    run = g.train(mt.config(case), tmp_path / case, progress=False)
    got, ref = mt.fingerprint(run), REFERENCE[case]
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if got[k] != ref[k]] == []


@pytest.mark.parametrize("case", ["adamw", "ortho_adamw", "ema_wn_stablemax", "orthograd_mse", "no_fast_path", "mlp",
                                  "minibatch"])
def test_a_single_run_equals_a_stack_of_one_with_the_single_run_executor_bit_for_bit(case, tmp_path):
    """The stacked trainer over a stack of one with the ``single`` executor (the single-run forward and
    mean loss, gradients where autograd writes them) trains the single run's trajectory to the last
    bit, on any machine: checkpoints, metrics, optimizer and transform state."""
    cfg = mt.config(case)
    single = mt.fingerprint(g.train(cfg, tmp_path / "single", progress=False))
    stack = mt.fingerprint(g.train_stacked([cfg], [tmp_path / "stack"], progress=False, impl="single")[0])
    assert sorted(single) == sorted(stack)
    assert [k for k in single if single[k] != stack[k]] == []


@pytest.mark.parametrize("case", sorted(mt.CASES))
def test_a_stack_of_one_reproduces_the_trajectories_of_the_tree_before_one_loop(case, tmp_path):
    if not SAME_MACHINE:
        pytest.skip("the fixture's float features differ from this machine's (tests/_machine.py)")
    run = g.train_stacked([mt.config(case)], [tmp_path / case], progress=False, impl="single")[0]
    got, ref = mt.fingerprint(run), REFERENCE[case]
    assert [k for k in ref if got.get(k) != ref[k]] == []


def test_a_stack_of_one_with_the_single_run_executor_resumes_bit_for_bit(tmp_path):
    from grokinterp.training.stacked import StackInterrupted, resume_stacked

    cfg = mt.config("ema_wn_stablemax")
    with pytest.raises(StackInterrupted):
        g.train_stacked([cfg], [tmp_path / "cut"], progress=False, impl="single", callbacks=[StopAt(6)])
    assert g.load_run(tmp_path / "cut").info["stack"]["impl"] == "single"
    resumed = mt.fingerprint(resume_stacked([tmp_path / "cut"], progress=False)[0])
    whole = mt.fingerprint(g.train(cfg, tmp_path / "whole", progress=False))
    assert [k for k in whole if whole[k] != resumed[k]] == []


def test_the_single_run_executor_takes_one_run(tmp_path):
    cfg = mt.config("adamw")
    with pytest.raises(g.ConfigError, match="impl"):
        g.train_stacked([cfg, cfg.replace(init_seed=1)], [tmp_path / "a", tmp_path / "b"], progress=False,
                        impl="single")
    assert not (tmp_path / "a").exists()


def test_the_fixture_detects_a_one_ulp_change(tmp_path):
    """The comparison above can fail: one float32 ulp in one weight changes its fingerprint."""
    run = g.train(mt.config("adamw"), tmp_path / "r", progress=False)
    w = torch.as_tensor(run.stack("embed.W_E")).clone()
    bumped = w.clone()
    bumped.view(-1)[7] = torch.nextafter(bumped.view(-1)[7], torch.tensor(10.0))
    assert mt.digest(w) == mt.digest(torch.as_tensor(run.stack("embed.W_E")))
    assert mt.digest(w) != mt.digest(bumped)


# -- one registry each -----------------------------------------------------------------------------------------------
def test_there_is_one_optimizer_registry_and_one_transform_registry():
    assert OPTIMIZERS is STACKED_OPTIMIZERS and TRANSFORMS is STACKED_TRANSFORMS
    assert set(OPTIMIZERS) >= {"adamw", "adam", "sgd", "ortho_adamw"}
    assert all(isinstance(e, type) and issubclass(e, StackedOptimizer) for k, e in OPTIMIZERS.items()
               if k in ("adamw", "adam", "sgd", "ortho_adamw"))
    assert {"grokfast_ema", "grokfast_ma", "orthograd"} <= set(TRANSFORMS)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "ortho_adamw"])
def test_a_single_run_steps_with_the_registry_entry_over_a_stack_of_one(tmp_path, optimizer):
    cfg = g.make_config("tiny", **mt.BASE, optimizer=optimizer, momentum=0.9, grad_transforms=("grokfast_ema",))
    loop = TrainLoop(cfg, tmp_path, torch.device("cpu"), *cfg.task.task().split(0.3, 0))
    assert type(loop.optimizer) is OPTIMIZERS[optimizer] and loop.optimizer.flat.shape == (1, loop.layout.total)
    assert isinstance(loop.transforms[0], T.StackedGrokfastEMA)
    for k, p in loop.params.items():  # the model's parameters are views of the optimizer's row
        assert p.untyped_storage().data_ptr() == loop.flat.untyped_storage().data_ptr(), k
    before = loop.flat.detach().clone()
    loop.step(0, record_acc=False)
    assert not torch.equal(before, loop.flat.detach())
    for k, p in loop.params.items():  # .grad: what the transforms and the optimizer saw
        assert torch.equal(p.grad, loop.layout.views(loop.flat.grad)[k][0]), k
        assert torch.equal(p.detach(), loop.layout.views(loop.flat.detach())[k][0]), k


# -- the optimizers are torch's, bit for bit --------------------------------------------------------------------------
SHAPES = {"W": (8, 16), "b": (5,), "U": (3, 64), "c": (16,), "V": (7, 9)}
TCS = [dict(lr=1e-2, weight_decay=1.0, warmup_epochs=0, momentum=0.9),
       dict(lr=3e-3, weight_decay=0.1, beta1=0.8, beta2=0.95, momentum=0.0, warmup_epochs=5, warmup_style="paper",
            weight_decay_on="matrices"),
       dict(lr=5e-3, weight_decay=0.3, warmup_epochs=3, lr_schedule="cosine", momentum=0.5,
            weight_decay_on="matrices")]
STEPS = 60


def _compare_with_torch(name: str, settings: list[dict], fused: bool) -> float:
    """Step the registry's ``name`` over a stack with ``settings`` per run and torch's optimizer per run
    on the same gradients; bit for bit on the ``fused`` path (the CPU one), else to float32 rounding.
    Returns the largest difference seen."""
    lay = ParamLayout(SHAPES)
    tcs = [g.TrainConfig(optimizer=name, epochs=STEPS, **kw) for kw in settings]
    gen = torch.Generator().manual_seed(4)
    flat = torch.nn.Parameter(torch.randn(len(tcs), lay.total, generator=gen))
    opt = OPTIMIZERS[name](flat, lay, tcs)
    if not fused:
        opt.device = torch.device("cuda")  # a label only: the tensors stay on the CPU, the step takes the device path
    singles = []
    for r, tc in enumerate(tcs):
        ps = {k: torch.nn.Parameter(v.detach().clone()) for k, v in lay.views(flat[r]).items()}
        singles.append((ps, torch_optimizer(ps, tc, fused=fused)))
    epoch, worst = torch.zeros(()), 0.0
    for e in range(STEPS):
        grad = torch.randn(flat.shape, generator=gen) * torch.logspace(-4, 1, lay.total)  # small gradients too
        flat.grad = grad.clone()
        opt.set_lr(epoch, e if fused else None)
        opt.step()
        epoch += 1
        step_singles(singles, tcs, lay, grad, e)
        for r, (ps, _) in enumerate(singles):
            for k, v in lay.views(flat[r].detach()).items():
                worst = max(worst, (v - ps[k].detach()).abs().max().item())
                assert (torch.equal(v, ps[k].detach()) if fused else
                        torch.allclose(v, ps[k].detach(), rtol=1e-5, atol=1e-6)), (name, len(tcs), r, e, k)
    for r, (ps, o) in enumerate(singles):
        mine, theirs = opt.run_state(r), torch_state_tensors(o, ps)
        assert sorted(mine) == sorted(theirs)
        for k, v in theirs.items():
            assert torch.equal(mine[k], v) if fused else torch.allclose(mine[k], v, rtol=1e-4, atol=1e-7), k
    return worst


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("runs", [1, 3])
def test_the_registrys_optimizers_are_torchs_fused_ones_bit_for_bit(name, runs):
    """On CPU (torch's fused kernels, as the trainer has always used them): a stack of one is torch's
    optimizer over many steps, and each run of a stack of three, with its own schedule, decay groups,
    betas and momentum, is its own torch optimizer — parameters and saved state, to the last bit."""
    assert _compare_with_torch(name, TCS[:runs] if runs == 1 else TCS, fused=True) == 0.0


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "ortho_adamw"])
def test_the_device_path_follows_torchs_single_tensor_optimizers(name):
    """The broadcast path over the whole stack (what a CUDA graph replays; run here on CPU tensors)
    takes the operations of torch's ``_single_tensor_adam`` / ``sgd`` in their order, with each run's
    scalars rounded once from float64. It agrees with torch's single-tensor optimizer to float32
    rounding, not to the bit: a CPU kernel rounds its vectorised body (fused multiply-adds, in
    ``lerp`` and ``add(alpha=)``) and its scalar tail differently, and the tails of a ``[run, n]`` row
    are not those of the parameters one by one (the fused path above splits rows so that they are)."""
    assert _compare_with_torch(name, TCS, fused=False) < 1e-5


def test_ortho_adamw_over_a_stack_of_one_is_torchs_adamw_on_projected_gradients_bit_for_bit():
    """⊥AdamW as the single-run step runs it: the projection on the gradients where autograd wrote
    them (``prepare_grads``), then the fused AdamW: torch's AdamW after ``orthogonalize_``, to the bit."""
    lay = ParamLayout(SHAPES)
    tc = g.TrainConfig(optimizer="ortho_adamw", epochs=STEPS, lr=1e-2, weight_decay=0.5, warmup_epochs=0)
    gen = torch.Generator().manual_seed(5)
    flat = torch.nn.Parameter(torch.randn(1, lay.total, generator=gen))
    opt = OPTIMIZERS["ortho_adamw"](flat, lay, [tc])
    ps = {k: torch.nn.Parameter(v.detach().clone()) for k, v in lay.views(flat[0]).items()}
    ref = torch_optimizer(ps, tc)
    for e in range(STEPS):
        grads = {k: torch.randn(s, generator=gen) for k, s in SHAPES.items()}
        mine = {k: v.clone()[None] for k, v in grads.items()}
        opt.prepare_grads(mine)
        flat.grad = lay.flatten(mine)
        opt.set_lr(torch.tensor(float(e)), e)
        opt.step()
        for k, v in grads.items():
            ps[k].grad = v.clone()
        ref.step()
        for k, v in lay.views(flat.detach()[0]).items():
            assert torch.equal(v, ps[k].detach()), (e, k)


# -- the extension API of earlier releases keeps working ---------------------------------------------------------------
def test_a_torch_optimizer_builder_and_a_single_run_transform_still_register_and_train_alone(tmp_path):
    from grokinterp.training.optim import register_optimizer
    from grokinterp.training.stacked import stack_key

    class Halve:
        def __init__(self, params, tc):
            self.n = torch.zeros((), dtype=torch.int64)

        def __call__(self, grads):
            for gr in grads.values():
                gr.mul_(0.5)
            self.n += 1

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n.copy_(state["n"])

    register_optimizer("test_plain_sgd", lambda ps, tc, o: torch.optim.SGD(ps.values(), lr=o.lr))
    T.register_gradient_transform("test_halve", Halve)
    try:
        cfg = g.make_config("tiny", **mt.BASE, optimizer="test_plain_sgd", grad_transforms=("test_halve",), lr=0.1,
                            warmup_epochs=0)
        assert stack_key(cfg) is None  # neither has a stacked version: such runs train alone
        run = g.train(cfg, tmp_path / "r", progress=False)
        ref = g.train(cfg.replace(optimizer="sgd", momentum=0.0, weight_decay=0.0, grad_transforms=()),
                      tmp_path / "plain", progress=False)
        assert run.finished and g.verify(run.path).ok
        assert not torch.equal(torch.as_tensor(run.stack("embed.W_E")[-1]), torch.as_tensor(ref.stack("embed.W_E")[-1]))
    finally:
        OPTIMIZERS.pop("test_plain_sgd", None)
        TRANSFORMS.pop("test_halve", None)
        g.config.OPTIMIZER_NAMES.pop("test_plain_sgd", None)


# -- train() / resume() build the one trainer: a stack of one seen as a single run ----------------------------------
#: run.json's keys as the tree before one trainer wrote them for a single run (main at bc6b4d7): no ``stack``.
RUN_JSON_KEYS = ["config", "created", "device", "format_version", "kind", "n_test", "n_train", "seeds", "versions"]


class _Contract(g.Callback):
    """Records what a single run's callback sees, writes its own columns, stops at ``stop``."""

    metric_columns = ("mine",)
    text_columns = ("note",)

    def __init__(self, stop: int | None = None):
        self.stop, self.seen, self.evals = stop, None, {}

    def on_epoch(self, loop, epoch):
        loop.metrics["mine"][epoch] = 2.0 * epoch  # a 1-D row: a view, the write goes through
        loop.text_metrics["note"][epoch] = f"e{epoch}"
        if epoch % loop.eval_every == 0:  # the model at epoch, as the loop recorded it before its step
            self.evals[epoch] = tuple(t.item() for t in loop.evaluate(loop.data["test"]))

    def on_step(self, loop, epoch):
        loop.postfix["seen"] = str(epoch)
        if epoch == 1:
            flat_grad = loop.layout.views(loop.flat.grad)
            self.seen = {
                "type": type(loop),
                "leaves": all(p.is_leaf and p.requires_grad for p in loop.params.values()),
                "grad": all(torch.equal(p.grad, flat_grad[k][0]) for k, p in loop.params.items()),
                "alias": all(p.untyped_storage().data_ptr() == loop.flat.untyped_storage().data_ptr()
                             for p in loop.params.values()),
                "model": {k: id(p) for k, p in loop.model.named_parameters()} == {k: id(p) for k, p in loop.params.items()},
                "rows": {k: tuple(v.shape) for k, v in loop.metrics.items()},
                "data": (tuple(loop.data["train"].tokens.shape), tuple(loop.data["test"].labels.shape)),
            }
        if epoch == self.stop:
            loop.request_stop()


def test_train_builds_the_one_trainer_and_a_callback_sees_a_single_run(tmp_path):
    from grokinterp.training.stacked import StackedLoop

    cfg = g.make_config("tiny", **mt.BASE)
    cb = _Contract()
    run = g.train(cfg, tmp_path / "r", progress=False, callbacks=[cb])
    s, E = cb.seen, cfg.train.epochs
    assert issubclass(s["type"], StackedLoop) and s["type"] is TrainLoop  # the one trainer, seen as one run
    assert s["leaves"] and s["grad"] and s["alias"] and s["model"]
    assert all(shape == (E + 1,) for shape in s["rows"].values()) and "mine" in s["rows"]
    assert s["data"] == ((cfg.n_train(), 3), (len(run.split_pairs()[1]),))
    m = run.metrics
    assert list(m["mine"]) == [2.0 * e for e in range(E + 1)] and list(m["note"]) == [f"e{e}" for e in range(E + 1)]
    for e, (loss, acc) in cb.evals.items():  # evaluate() is the loop's own test metric, to the bit
        assert (loss, acc) == (m["test_loss"][e], m["test_acc"][e]), e
    info = json.loads((run.path / "run.json").read_text())
    assert sorted(info) == RUN_JSON_KEYS and "stack" not in info


def test_a_single_run_stopped_by_a_callback_raises_training_interrupted_and_resumes_bit_for_bit(tmp_path):
    from grokinterp.training.stacked import StackInterrupted

    cfg = g.make_config("tiny", **mt.BASE, grad_transforms=("grokfast_ema",))
    ref = mt.fingerprint(g.train(cfg, tmp_path / "ref", progress=False, callbacks=[_Contract()]))
    with pytest.raises(TrainingInterrupted) as e:
        g.train(cfg, tmp_path / "r", progress=False, callbacks=[_Contract(stop=5)])
    assert not isinstance(e.value, StackInterrupted) and e.value.run_dir == tmp_path / "r" and e.value.epoch == 6
    assert "stack" not in json.loads((tmp_path / "r" / "run.json").read_text())
    run = g.resume(tmp_path / "r", progress=False, callbacks=[_Contract()])
    assert run.session["action"] == "resumed" and mt.fingerprint(run) == ref
    assert list(run.metrics["note"]) == [f"e{e}" for e in range(cfg.train.epochs + 1)]


def test_one_state_loader_for_a_single_run_and_a_stack(tmp_path):
    """The stack's loader is the single run's: the same checks, the same messages."""
    from safetensors.torch import load_file

    from grokinterp.errors import RunError
    from grokinterp.training.stacked import StackedLoop

    cfg = g.make_config("tiny", **mt.BASE)
    cfgs = [cfg, cfg.replace(init_seed=1)]
    runs = g.train_stacked(cfgs, [tmp_path / "s0", tmp_path / "s1"], progress=False)
    tensors = load_file(runs[0].path / "state.safetensors")
    bad = {"resume_epoch": "99", "flushed_upto": "12"}
    for d in ("a", "b0", "b1"):
        (tmp_path / d).mkdir()
    single = TrainLoop(cfg, tmp_path / "a", torch.device("cpu"), *runs[0].split_pairs())
    stack = StackedLoop(cfgs, [tmp_path / "b0", tmp_path / "b1"], torch.device("cpu"), [r.split_pairs() for r in runs])
    for load in (lambda src: single.load_state(src, tmp_path / "x.safetensors"),
                 lambda src: stack.load_states([src, src], [tmp_path / "x.safetensors"] * 2)):
        with pytest.raises(RunError, match=r"x.safetensors: resume epoch 99 or flushed checkpoint 12 lies outside"):
            load((bad, tensors))
        no_rng = {k: v for k, v in tensors.items() if k != "rng/torch_cpu"}
        with pytest.raises(RunError, match="the CPU random-number state is missing or malformed"):
            load(({"resume_epoch": "12", "flushed_upto": "12"}, no_rng))
    # a stack's run loads alone, and the other way round: the same parameters and metrics
    single.load_state(runs[0])
    assert torch.equal(single.flat.detach()[0], torch.cat([t.reshape(-1) for t in
                                                           (tensors[f"param/{k}"] for k in single.layout.names)]))
    assert single.start_epoch == 12 and torch.equal(single.metrics["train_loss"], tensors["metrics/train_loss"])
