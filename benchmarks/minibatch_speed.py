"""Minibatch steps: the table fast path (a FastPlan built for every batch) beside the hooked forward.

A minibatch run's batches change every step, so the fast path's index structures
(:class:`~grokinterp.model.fastpath.FastPlan`) are built per batch; the alternative is the
general hooked forward over all positions. This script times the trainer's own minibatch step
(``TrainLoop.step``: batch selection, plan, forward, float64 loss, backward, AdamW) both ways,
interleaved, in one process, one torch thread, denormals flushed as in training:

    python benchmarks/minibatch_speed.py                     # paper shapes (p = 113, 30 %), batch 512
    python benchmarks/minibatch_speed.py --preset tiny --batch-size 128

Prints the median ms per step of each (and of a full-batch fast-path step for scale), their ratio, and the median cost of building a plan.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as g
from grokinterp.model.denormals import flush_denormals
from grokinterp.model.fastpath import FastPlan
from grokinterp.training.loop import TrainLoop


def build(cfg, out: Path) -> TrainLoop:
    trn, tst = cfg.task.task().split(cfg.task.frac_train, cfg.task.split_seed, cfg.task.split_method)
    out.mkdir()
    return TrainLoop(cfg, out, torch.device("cpu"), trn, tst)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    ap.add_argument("--steps", type=int, default=20, help="steps per round and implementation")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = g.make_config(args.preset, batch_size=args.batch_size, epochs=2000, device="cpu")
    times: dict[str, list[float]] = {"fast path": [], "hooked": [], "full batch": []}
    with tempfile.TemporaryDirectory() as tmp, flush_denormals():
        loops = {"fast path": build(cfg, Path(tmp) / "f"), "hooked": build(cfg.replace(fast_path=False), Path(tmp) / "h"),
                 "full batch": build(cfg.replace(batch_size=None), Path(tmp) / "b")}
        assert loops["fast path"].data["train"].plan is not None and loops["hooked"].data["train"].plan is None
        s0 = 0
        for _ in range(args.repeats):
            for name, loop in loops.items():
                for s in range(s0, s0 + args.steps):
                    t = time.perf_counter()
                    loop.step(s // loop.per_epoch, record_acc=False, step=s)
                    times[name].append(time.perf_counter() - t)
            s0 += args.steps
        loop = loops["fast path"]
        plan_t = []
        for s in range(50):
            b = loop.batch(s)
            t = time.perf_counter()
            FastPlan.build(cfg.model, b.plan.tokens)  # the batch of the stack of one (its single-run plan)
            plan_t.append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{args.preset}: p {cfg.task.p}, d_model {cfg.model.d_model}, d_mlp {cfg.model.d_mlp}, n_train "
          f"{cfg.n_train()}, batch {args.batch_size} ({cfg.steps_per_epoch()} steps an epoch), "
          f"{args.repeats} x {args.steps} steps each, torch {torch.__version__}, 1 thread")
    for k, v in med.items():
        print(f"  {k:10s} {v:7.2f} ms/step (median)")
    print(f"  (full batch: the fast path's step over all {cfg.n_train()} examples)")
    print(f"  hooked / fast path: {med['hooked'] / med['fast path']:.2f}; FastPlan.build alone "
          f"{statistics.median(plan_t) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
