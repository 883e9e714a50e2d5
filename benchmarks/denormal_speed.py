"""Denormal floats: a late-epoch training step beside an early one, with and without flush-to-zero.

Late in a run the softmax gives the wrong classes probabilities below float32's smallest normal
number, so the gradient of the logits holds denormal values that every product of the backward
pass takes in; on many CPUs such operations take a slow path. grokinterp trains and analyses with
denormals flushed to zero (:mod:`grokinterp.model.denormals`). This script measures what that
buys on this machine, in one process:

* a run (``--run DIR``, or a ``tiny`` run of ``--epochs`` epochs trained into a temporary folder);
* at an early checkpoint (``--early``, default 100) and the last one: the trainer's own step
  (``TrainLoop.step_fn``: fast forward, float64 loss, backward, AdamW) on those weights, timed
  ``--repeats`` times with denormals flushed and as many without, interleaved, the weights
  restored before every step;
* prints the number of denormal entries in the gradient of the logits at each checkpoint, the
  median ms per step, and the ratios: late / early (without and with flushing) and without / with.

    python benchmarks/denormal_speed.py                     # tiny, 1000 epochs (about a minute)
    python benchmarks/denormal_speed.py --run checkpoints/quick
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as g
from grokinterp.model.denormals import flush_denormals
from grokinterp.training.loop import TrainLoop
from grokinterp.training.step import cross_entropy64


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def denormal_logit_grads(run, epoch: int) -> tuple[int, int]:
    """Denormal entries of the float32 gradient of the training loss at the logits, and their count."""
    x, y = run.train_data()
    with flush_denormals(False):
        logits = run.model(epoch)(x)[:, -1].detach().requires_grad_()
        cross_entropy64(logits, y).backward()
    gr = logits.grad
    return int(((gr != 0) & (gr.abs() < torch.finfo(torch.float32).tiny)).sum()), gr.numel()


def step_times(run, epoch: int, repeats: int, root: Path) -> dict[bool, list[float]]:
    """ms per training step at ``epoch``'s weights, flushed (``True``) and not (``False``)."""
    cfg = run.config.replace(device="cpu")
    out = root / f"bench_{epoch}"
    out.mkdir()
    loop = TrainLoop(cfg, out, torch.device("cpu"), *run.split_pairs())
    weights = run.params(epoch)

    def step() -> float:
        with torch.no_grad():
            for k, p in loop.params.items():
                p.copy_(weights[k])
        t0 = time.perf_counter()
        _, loss = loop.step_fn()
        loss.item()
        return (time.perf_counter() - t0) * 1e3

    times: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True):  # warm-up: the optimizer's state, allocations
        with flush_denormals(on):
            step()
    for _ in range(repeats):
        for on in (False, True):
            torch.set_flush_denormal(False)
            with flush_denormals(on):
                times[on].append(step())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="an existing run directory (default: train a tiny run)")
    ap.add_argument("--epochs", type=int, default=1000, help="epochs of the tiny run trained when --run is not given")
    ap.add_argument("--early", type=int, default=100, help="the early checkpoint (the nearest stored one is used)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.run is None:
            cfg = g.make_config("tiny", epochs=args.epochs, every=50, log_early=0)
            t0 = time.perf_counter()
            run = g.train(cfg, root / "run", progress=False)
            print(f"trained tiny ({args.epochs} epochs) in {time.perf_counter() - t0:.1f} s")
        else:
            run = g.load_run(args.run)
        epochs = [int(e) for e in run.epochs]
        early = min(epochs, key=lambda e: abs(e - args.early))
        late = epochs[-1]
        print(f"CPU: {cpu_name()}; torch {torch.__version__}, 1 thread; run {run.config.task.operation} "
              f"p={run.config.task.p}, checkpoints {early} (early) and {late} (late); {args.repeats} repeats")
        med = {}
        for e in (early, late):
            n, total = denormal_logit_grads(run, e)
            t = step_times(run, e, args.repeats, root)
            med[e] = {on: statistics.median(v) for on, v in t.items()}
            print(f"epoch {e:>6}: denormal logit gradients {n:>6} / {total}; ms per step (median): "
                  f"without flushing {med[e][False]:8.3f}, flushed {med[e][True]:8.3f}, "
                  f"without / flushed {med[e][False] / med[e][True]:.2f}")
        print(f"late / early: without flushing {med[late][False] / med[early][False]:.2f}, "
              f"flushed {med[late][True] / med[early][True]:.2f}")


if __name__ == "__main__":
    main()
