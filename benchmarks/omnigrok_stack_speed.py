"""Omnigrok's digits recipe in stacks: model-steps per second, one stack vs the same runs one after another.

Issue 22: "the digits recipe runs in stacks of seeds / weight decays; report model-steps per second against
one after another". ``N`` runs of the preset ``omnigrok-digits`` (MLP 64-200-200-10, batches of 200, 5 steps an
epoch) that differ in seed and weight decay, trained for ``--epochs`` epochs with their checkpoints, evaluations
and run directories, through the public API:

(a) one after another with the single-run trainer (``grokinterp.train``);
(b) as one stack (``train_stacked``).

Interleaved repeats in one process (a drift in machine load hits both alike); prints the medians, the ratio,
model-steps per second (runs × optimizer steps / wall seconds) for each, the CPU's name and the load::

    python benchmarks/omnigrok_stack_speed.py --runs 3 --repeats 3
    python benchmarks/omnigrok_stack_speed.py --runs 12 --epochs 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grokinterp as gi
from grokinterp.training.stacked import stack_key, train_stacked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denormal_speed import cpu_name  # noqa: E402


def configs(args) -> list:
    wds = [0.01, 0.1, 0.2, 0.4, 1.0]
    return [gi.make_config("omnigrok-digits", epochs=args.epochs, every=args.every, init_seed=i, split_seed=i,
                           sampler_seed=i, weight_decay=wds[i % len(wds)], device="cpu") for i in range(args.runs)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100, help="epochs per run (5 optimizer steps each)")
    ap.add_argument("--every", type=int, default=250, help="checkpoint every this many optimizer steps")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cfgs = configs(args)
    if len({stack_key(c) for c in cfgs}) != 1:
        raise SystemExit("the runs do not share a stack key")
    steps = cfgs[0].total_steps() * len(cfgs)
    root = Path(tempfile.mkdtemp(prefix="omnigrok-speed-"))
    seq, stk = [], []
    try:
        gi.train(cfgs[0], root / "warm", progress=False)  # imports, caches
        for rep in range(args.repeats):
            for kind in (("seq", "stack") if rep % 2 == 0 else ("stack", "seq")):
                d = root / f"{kind}{rep}"
                t = time.perf_counter()
                if kind == "seq":
                    for i, c in enumerate(cfgs):
                        gi.train(c, d / f"r{i}", progress=False)
                    seq.append(time.perf_counter() - t)
                else:
                    train_stacked(cfgs, [d / f"r{i}" for i in range(len(cfgs))], progress=False)
                    stk.append(time.perf_counter() - t)
                shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ms, mk = statistics.median(seq), statistics.median(stk)
    print(f"CPU: {cpu_name()}; torch threads 1; load average {os.getloadavg()[0]:.1f}")
    print(f"{len(cfgs)} omnigrok-digits runs x {cfgs[0].total_steps()} optimizer steps, {args.repeats} repeats")
    print(f"one after another: median {ms:.2f} s ({steps / ms:.0f} model-steps/s); runs {[round(x, 2) for x in seq]}")
    print(f"one stack:         median {mk:.2f} s ({steps / mk:.0f} model-steps/s); runs {[round(x, 2) for x in stk]}")
    print(f"ratio (one after another / stack): {ms / mk:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
