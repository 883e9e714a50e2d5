"""Model width as a sweep axis: one stack per width, against the cost of masking inside the largest width.

Issue 21 item 4 asks whether runs of different widths should train as one stack of the largest
width with the smaller runs' extra units masked, or as one stack per width (what the sweep does:
a stack holds models of one shape, so ``stack_key`` differs between widths). Masking is not
implemented; its cost is bounded from below here by what it would compute: every run at the
largest width. Measured in one process, interleaved (drifts in machine load hit both alike),
wall time through the public API (every run writes its directory):

(a) one stack per width (``train_stacked`` once per width, the sweep's plan);
(b) all runs as one stack at the largest width (masking's arithmetic, without the mask's own cost).

Prints medians of both, their ratio, the CPU's name, torch's version and the load average::

    python benchmarks/width_stacks.py                                  # d_mlp 32, 64, 128; 8 runs each
    python benchmarks/width_stacks.py --axis d_model --widths 32,64,128 --repeats 5
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

import torch

import grokinterp as gi
from grokinterp.training.stacked import stack_key, train_stacked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denormal_speed import cpu_name  # noqa: E402


def configs(args, width: int) -> list:
    out = []
    for i in range(args.runs):
        out.append(gi.make_config(args.preset, epochs=args.epochs, every=args.every, log_early=0, windows=(),
                                  weight_decay=round(0.25 * (1 + i % 4), 2), init_seed=i // 4, split_seed=i // 4,
                                  **{args.axis: width}))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--axis", default="d_mlp", choices=("d_mlp", "d_model"))
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--runs", type=int, default=8, help="runs per width")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    widths = [int(w) for w in args.widths.split(",")]
    per_width = {w: configs(args, w) for w in widths}
    for w, cfgs in per_width.items():
        assert len({stack_key(c) for c in cfgs}) == 1, w
    wmax = max(widths)
    masked = [c for _ in widths for c in configs(args, wmax)]  # every run at the largest width
    n = len(masked)
    times = {"per_width": [], "largest": []}
    for rep in range(args.repeats + 1):  # the first round warms up and is not counted
        root = Path(tempfile.mkdtemp(prefix="width-stacks-"))
        try:
            t0 = time.perf_counter()
            for w, cfgs in per_width.items():
                train_stacked(cfgs, [root / f"w{w}_{i}" for i in range(len(cfgs))], progress=False)
            t1 = time.perf_counter()
            train_stacked(masked, [root / f"m{i}" for i in range(n)], progress=False)
            t2 = time.perf_counter()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if rep:
            times["per_width"].append(t1 - t0)
            times["largest"].append(t2 - t1)
    a, b = statistics.median(times["per_width"]), statistics.median(times["largest"])
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{n} {args.preset} runs ({args.runs} per {args.axis} in {widths}), {args.epochs} epochs, "
          f"{args.repeats} repeats")
    print(f"(a) one stack per width:            median {a:.2f} s  (all: {', '.join(f'{x:.2f}' for x in times['per_width'])})")
    print(f"(b) one stack at {args.axis}={wmax} (masking's arithmetic): median {b:.2f} s  "
          f"(all: {', '.join(f'{x:.2f}' for x in times['largest'])})")
    print(f"ratio (b)/(a): {b / a:.2f}  (> 1: one stack per width is faster than masking could be)")


if __name__ == "__main__":
    main()
