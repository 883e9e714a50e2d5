"""Torch CPU threads for training: time per epoch with 1, 2, ... threads, on this machine, as it is loaded now.

The trainer's step (fast path, AdamW) is timed for a preset with ``torch.set_num_threads(n)`` for each
``n`` in turn, interleaved over repeats so that a change in the machine's load hits every thread count
alike. Prints the median ms per epoch for each count and the ratio to 1 thread (below 1: faster), and the
1-minute load average before and after (other processes competing for the cores).

The default of ``grokinterp train`` (:func:`grokinterp.training.threads.default_threads`) was chosen from
these figures; rerun this where you train to see whether more threads pay off there.

    python benchmarks/threads.py                       # quick and paper presets, 1..cpu_count threads
    python benchmarks/threads.py --preset quick --threads 1 2 4 --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grokinterp import make_config
from grokinterp.tasks import split_pairs
from grokinterp.training.loop import TrainLoop


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def ms_per_epoch(loop: TrainLoop, threads: int, steps: int, start: int) -> float:
    torch.set_num_threads(threads)
    loop.step(start, record_acc=False)  # warm-up at this thread count
    t0 = time.perf_counter()
    for e in range(start + 1, start + 1 + steps):
        loop.step(e, record_acc=False)
    loop.metrics["train_loss"][start + steps].item()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", nargs="*", default=["quick", "paper"])
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="thread counts (default 1..cpu_count)")
    ap.add_argument("--steps", type=int, default=30, help="steps per timing")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    counts = args.threads or list(range(1, _cpus() + 1))
    print(f"torch {torch.__version__}, {_cpus()} CPUs available, torch default threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for preset in args.preset:
        cfg = make_config(preset, device="cpu", epochs=10_000)
        with tempfile.TemporaryDirectory() as tmp:
            loop = TrainLoop(cfg, Path(tmp), torch.device("cpu"), *split_pairs(cfg.task))
            times: dict[int, list[float]] = {n: [] for n in counts}
            e = 0
            for _ in range(args.repeats):
                for n in counts:
                    times[n].append(ms_per_epoch(loop, n, args.steps, e))
                    e += args.steps + 1
        base = statistics.median(times[1]) if 1 in times else None
        print(f"{preset}: p = {cfg.task.p}, {len(split_pairs(cfg.task)[0])} training pairs")
        for n in counts:
            med = statistics.median(times[n])
            ratio = f", {med / base:.2f}× the 1-thread time" if base else ""
            print(f"  {n} thread(s): median {med:.1f} ms/epoch (min {min(times[n]):.1f}, max {max(times[n]):.1f})"
                  f"{ratio}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
