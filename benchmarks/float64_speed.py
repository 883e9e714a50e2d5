"""The cost of float64 (``train.dtype``, issue 22): Omnigrok's digits recipe as one stack in float32 and in float64.

``N`` runs of the preset ``omnigrok-digits`` (MLP 64-200-200-10, batches of 200, 5 steps an epoch) that differ in
seed and weight decay, trained as one stack (``train_stacked``: the ``generic`` forward for this family, in either
dtype) for ``--epochs`` epochs with their checkpoints and evaluations, once with ``dtype="float32"`` and once with
``dtype="float64"``. Interleaved repeats in one process; prints the medians, model-steps per second, the ratio, the
CPU's name and the load::

    python benchmarks/float64_speed.py --runs 3 --epochs 100 --repeats 3
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
from grokinterp.training.stacked import train_stacked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denormal_speed import cpu_name  # noqa: E402


def configs(args, dtype: str) -> list:
    wds = [0.01, 0.1, 0.2, 0.4, 1.0]
    return [gi.make_config("omnigrok-digits", epochs=args.epochs, every=args.every, init_seed=i, split_seed=i,
                           sampler_seed=i, weight_decay=wds[i % len(wds)], device="cpu", dtype=dtype)
            for i in range(args.runs)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=100, help="epochs per run (5 optimizer steps each)")
    ap.add_argument("--every", type=int, default=250, help="checkpoint every this many optimizer steps")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cfgs = {d: configs(args, d) for d in ("float32", "float64")}
    steps = cfgs["float32"][0].total_steps() * args.runs
    root = Path(tempfile.mkdtemp(prefix="float64-speed-"))
    times: dict[str, list[float]] = {"float32": [], "float64": []}
    try:
        for d, cs in cfgs.items():  # warm-up: imports, caches
            train_stacked([c.replace(epochs=2) for c in cs], [root / f"warm-{d}{i}" for i in range(len(cs))],
                          progress=False)
        for rep in range(args.repeats):
            for d in (("float32", "float64") if rep % 2 == 0 else ("float64", "float32")):
                out = root / f"{d}{rep}"
                t = time.perf_counter()
                train_stacked(cfgs[d], [out / f"r{i}" for i in range(args.runs)], progress=False)
                times[d].append(time.perf_counter() - t)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    m32, m64 = statistics.median(times["float32"]), statistics.median(times["float64"])
    print(f"CPU: {cpu_name()}; torch threads 1; load average {os.getloadavg()[0]:.1f}")
    print(f"one stack of {args.runs} omnigrok-digits runs x {cfgs['float32'][0].total_steps()} optimizer steps, "
          f"{args.repeats} repeats")
    print(f"float32: median {m32:.2f} s ({steps / m32:.0f} model-steps/s); runs {[round(x, 2) for x in times['float32']]}")
    print(f"float64: median {m64:.2f} s ({steps / m64:.0f} model-steps/s); runs {[round(x, 2) for x in times['float64']]}")
    print(f"ratio (float64 / float32 wall time): {m64 / m32:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
