"""The trainer's seams: the optimizer registry, gradient transforms, step executors and callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.errors import ConfigError, RunError
from grokinterp.training import optim, transforms
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainingInterrupted


def _same_checkpoints(a, b) -> None:
    assert np.array_equal(a.epochs, b.epochs)
    for name, stack in a.stacks().items():
        assert torch.equal(stack, b.stack(name)), name
    assert np.array_equal(a.metrics.to_numpy(), b.metrics.to_numpy(), equal_nan=True)


class StopAt(Callback):
    """Stops training after the step of ``epoch`` (as Ctrl-C would): flush, then TrainingInterrupted."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_step(self, loop, epoch):
        if epoch == self.epoch:
            loop.request_stop()


def _interrupted_then_resumed(cfg, out, at: int = 37):
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, out, progress=False, callbacks=[StopAt(at)])
    partial = g.load_run(out)
    assert not partial.finished and partial.progress["epoch"] == at + 1
    return g.resume(out, progress=False)


CFG = g.make_config("tiny", epochs=80, every=10, flush_every=3, eval_every=10)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_every_registered_optimizer_resumes_bit_identically(tmp_path, name):
    cfg = CFG.replace(optimizer=name, lr=0.1 if name == "sgd" else CFG.train.lr)
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    assert ref.config.train.optimizer == name and ref.info["config"]["train"]["optimizer"] == name
    _same_checkpoints(_interrupted_then_resumed(cfg, tmp_path / "cut"), ref)


def test_optimizers_differ_and_follow_their_definition(tmp_path):
    """Each name builds what it says: one SGD step is p − lr·(g + wd·p) (momentum buffer = g at step 1)."""
    runs = {n: g.train(CFG.replace(optimizer=n, epochs=3, every=1), tmp_path / n, progress=False)
            for n in ("adamw", "adam", "sgd")}
    W = {n: r.stack("embed.W_E") for n, r in runs.items()}
    assert not torch.equal(W["adamw"][1], W["adam"][1]) and not torch.equal(W["adam"][1], W["sgd"][1])
    # SGD, plainly: the hooked model's gradient at epoch 0 with lr at warm-up step 0
    run = runs["sgd"]
    model = run.model(0)
    x, y = run.train_data()
    loss = torch.nn.functional.cross_entropy(model(x)[:, -1].double(), y)
    loss.backward()
    tc = run.config.train
    lr = tc.lr_at(0)
    expect = model.embed.W_E.detach() - lr * (model.embed.W_E.grad + tc.weight_decay * model.embed.W_E.detach())
    assert torch.allclose(W["sgd"][1], expect, rtol=1e-5, atol=1e-6)


def test_optimizer_state_is_checked_against_the_optimizer(tmp_path):
    run = g.train(CFG.replace(optimizer="sgd", epochs=5, every=5), tmp_path / "sgd", progress=False)
    from safetensors.torch import load_file, save_file

    state = run.path / "state.safetensors"
    tensors = load_file(state)
    assert any(k.endswith("/momentum_buffer") for k in tensors)
    # an Adam slot in an SGD run's state is refused, naming the key
    from grokinterp.training.loop import TrainLoop

    trn, tst = run.split_pairs()
    tensors["opt/embed.W_E/exp_avg"] = torch.zeros_like(tensors["param/embed.W_E"])
    loop = TrainLoop(run.config, run.path, torch.device("cpu"), trn, tst)
    with pytest.raises(RunError, match="exp_avg"):
        loop.load_state(({"resume_epoch": "5", "flushed_upto": "5"}, tensors), tmp_path / "bad.safetensors")
    # written over the run's own state, the same file is refused before it is parsed: it is not the
    # state the manifest records
    save_file(tensors, str(state), metadata={"resume_epoch": "5", "flushed_upto": "5"})
    with pytest.raises(RunError, match="state.safetensors: training state is damaged or was replaced"):
        loop.load_state(g.load_run(run.path))


def test_unknown_optimizer_or_transform_is_refused_before_anything_is_written(tmp_path):
    for over, field in ((dict(optimizer="lion"), "train.optimizer"), (dict(grad_transforms=("nope",)),
                                                                       "train.grad_transforms")):
        with pytest.raises(ConfigError, match=field):
            g.train(CFG.replace(**over), tmp_path / "x", progress=False)
        assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="train.optimizer"):
        g.make_config("tiny", optimizer="not an identifier")


# -- gradient transforms ---------------------------------------------------------------------------
class Halve:
    """Multiplies every gradient by 1/2 (stateless)."""

    def __init__(self, params, tc):
        pass

    def __call__(self, grads):
        for gr in grads.values():
            gr.mul_(0.5)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        assert state == {}


class Ema:
    """A stateful transform: g ← g + 2·ema, ema ← 0.9·ema + 0.1·g (tensor ops only)."""

    def __init__(self, params, tc):
        self.ema = {k: torch.zeros_like(p) for k, p in params.items()}
        self.steps = torch.zeros((), dtype=torch.int64)

    def __call__(self, grads):
        for k, gr in grads.items():
            self.ema[k].mul_(0.9).add_(gr, alpha=0.1)
            gr.add_(self.ema[k], alpha=2.0)
        self.steps += 1

    def state_dict(self):
        return {**{f"ema/{k}": v for k, v in self.ema.items()}, "steps": self.steps}

    def load_state_dict(self, state):
        for k in self.ema:
            self.ema[k].copy_(state[f"ema/{k}"])
        self.steps.copy_(state["steps"])


@pytest.fixture
def registered():
    transforms.register_gradient_transform("test_halve", Halve)
    transforms.register_gradient_transform("test_ema", Ema)
    yield
    transforms.TRANSFORMS.pop("test_halve", None)
    transforms.TRANSFORMS.pop("test_ema", None)


def test_a_transform_runs_between_backward_and_step(tmp_path, registered):
    """SGD without momentum or decay: halving the gradients is the same as halving the learning rate
    — bit for bit (a power-of-two scaling commutes with rounding)."""
    base = CFG.replace(optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.2, epochs=30)
    halved = g.train(base.replace(grad_transforms=("test_halve",)), tmp_path / "t", progress=False)
    half_lr = g.train(base.replace(lr=0.1), tmp_path / "lr", progress=False)
    plain = g.train(base, tmp_path / "plain", progress=False)
    for name, stack in halved.stacks().items():
        assert torch.equal(stack, half_lr.stack(name)), name
    assert not torch.equal(halved.stack("embed.W_E")[-1], plain.stack("embed.W_E")[-1])
    assert halved.config.train.grad_transforms == ("test_halve",)


def test_transform_state_is_saved_and_resumed_bit_identically(tmp_path, registered):
    cfg = CFG.replace(grad_transforms=("test_ema", "test_halve"))
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    _same_checkpoints(_interrupted_then_resumed(cfg, tmp_path / "cut"), ref)
    from safetensors.torch import load_file

    state = load_file(ref.path / "state.safetensors")
    assert int(state["transform/0.test_ema/steps"]) == cfg.train.epochs  # one call per step
    assert not any(k.startswith("transform/1.") for k in state)  # the stateless one saves nothing


# -- callbacks --------------------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_start(self, loop, epoch):
        self.calls.append(("start", epoch))

    def on_step(self, loop, epoch):
        self.calls.append(("step", epoch))

    def on_eval(self, loop, epoch):
        assert torch.isfinite(loop.metrics["test_loss"][epoch]) and torch.isfinite(loop.metrics["train_loss"][epoch])
        self.calls.append(("eval", epoch))

    def on_checkpoint(self, loop, epoch):
        self.calls.append(("ckpt", epoch))

    def on_flush(self, loop, epoch, finished):
        assert (loop.run_dir / "progress.json").exists()
        self.calls.append(("flush", epoch, finished))

    def on_end(self, loop):
        self.calls.append(("end",))


def test_callbacks_see_every_event_in_order(tmp_path):
    rec = Recorder()
    cfg = CFG.replace(epochs=40)
    run = g.train(cfg, tmp_path / "r", progress=False, callbacks=[rec])
    kinds = [c[0] for c in rec.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and rec.calls[0] == ("start", 0)
    assert [c[1] for c in rec.calls if c[0] == "step"] == list(range(41))
    assert [c[1] for c in rec.calls if c[0] == "ckpt"] == run.epochs.tolist()
    assert [c[1] for c in rec.calls if c[0] == "eval"] == [0, 10, 20, 30, 40]
    flushes = [c for c in rec.calls if c[0] == "flush"]
    assert flushes[-1] == ("flush", 40, True) and all(not f[2] for f in flushes[:-1])
    with pytest.raises(ConfigError, match="callbacks"):
        g.train(cfg, tmp_path / "bad", progress=False, callbacks=[object()])


def test_optimizer_registry_accepts_a_new_entry(tmp_path):
    def rmsprop(params, tc, options):
        return torch.optim.RMSprop(params.values(), lr=options.lr, weight_decay=tc.weight_decay)

    optim.register_optimizer("test_rmsprop", rmsprop)
    try:
        cfg = CFG.replace(optimizer="test_rmsprop", epochs=40)
        ref = g.train(cfg, tmp_path / "ref", progress=False)
        assert optim.expected_slots(cfg.train) == {"step": False, "square_avg": True}
        _same_checkpoints(_interrupted_then_resumed(cfg, tmp_path / "cut", at=17), ref)
    finally:
        optim.OPTIMIZERS.pop("test_rmsprop", None)
