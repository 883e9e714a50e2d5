"""The single executor's forward + gradient over its leaves (this tree) against the way of the merged
trainer before the fix (a fresh row of views of the flat parameter each step; off the fast path the
hooked module through ``torch.func.functional_call``), in one process, interleaved, same batch.

Prints the median CPU milliseconds per forward + gradient of each, the ratio, and whether the
gradients are equal bit for bit, for ``omnigrok-digits`` (the MLP's hooked module, batches of 200)
and ``tiny`` with ``batch_size=64`` (the table fast path). See NOTES.md, "The single run's per-step
overhead after the one-trainer refactor".

    OMP_NUM_THREADS=1 python benchmarks/single_step_overhead.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as g
from grokinterp.model.fastpath import final_logits
from grokinterp.tasks import split_pairs
from grokinterp.training.loop import TrainLoop
from grokinterp.training.step import loss_function


def measure(tag: str, cfg, rounds: int, calls: int) -> None:
    """Time the two ways over batch 0 of ``cfg``'s run and print one line."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "r").mkdir()
        loop = TrainLoop(cfg, Path(tmp) / "r", torch.device("cpu"), *split_pairs(cfg.task))
        b, lf = loop.batch(0), loss_function(cfg.train.loss)

        def forward(row):
            if b.plan.fast is not None:
                return final_logits(row, b.plan.fast)
            if row is loop._row:
                return loop.model(b.plan.tokens)[:, -1]
            return torch.func.functional_call(loop.model, row, (b.plan.tokens,))[:, -1]

        def leaves():
            row = loop._row
            return torch.autograd.grad(lf(forward(row), b.labels[0]), list(row.values()), allow_unused=True)

        def views():
            row = {k: v[0] for k, v in loop.flat_views.items()}
            return torch.autograd.grad(lf(forward(row), b.labels[0]), list(row.values()), allow_unused=True)

        same = all(torch.equal(x, y) for x, y in zip(leaves(), views()))
        res: dict[str, list[float]] = {"leaves": [], "views": []}
        for _ in range(rounds):
            for name, fn in (("leaves", leaves), ("views", views)):
                c0 = time.process_time()
                for _ in range(calls):
                    fn()
                res[name].append((time.process_time() - c0) / calls * 1e3)
        a, v = statistics.median(res["leaves"]), statistics.median(res["views"])
        print(f"{tag:8s} ({'fast path' if b.plan.fast is not None else 'hooked module'}): leaves {a:.3f}, "
              f"views {v:.3f} CPU ms per forward+gradient, leaves/views {a / v:.3f}, same gradients {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=100, help="calls per round and variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from denormal_speed import cpu_name

    print(f"CPU: {cpu_name()}")
    measure("digits", g.make_config("omnigrok-digits", epochs=10, device="cpu"), args.rounds, args.calls)
    measure("tiny_mb", g.make_config("tiny", epochs=10, batch_size=64, device="cpu"), args.rounds, args.calls)


if __name__ == "__main__":
    main()
