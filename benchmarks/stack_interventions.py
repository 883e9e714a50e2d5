"""An intervention study as one stack: runs that differ only in intervention values, stacked vs one after another.

Issue 19: "16 runs that differ only in intervention values train as one stack ≥ 2× faster than one
after another". Before it, every run with an intervention trained alone; now each run of a stack has
its own optimizer hyper-parameters, schedule, gradient-transform settings, weight-norm constraint,
initialisation scale and attention coefficient.

Measures, in one process and interleaved (so drifts in machine load hit both alike), wall time
through the public API — every run writes its run directory with all its checkpoints:

(a) ``N`` runs one after another with the single-run trainer (``grokinterp.train``);
(b) the same ``N`` runs as one stack (``train_stacked``).

Studies (``--study``), ``N`` values spread over a range:

* ``grokfast_ema`` (default): Grokfast-EMA with ``grokfast_alpha`` from 0.5 to 0.98 and
  ``grokfast_lamb`` 2 or 5;
* ``weight_decay``: AdamW with weight decay from 0 to 2;
* ``all``: ⊥AdamW with a cosine schedule, Grokfast-EMA (per-run α), ⊥Grad, StableMax, the weight
  norm constraint and per-run initialisation scale and attention coefficient.

Prints the medians of both, their ratio, the CPU's name, torch's version and the load average::

    python benchmarks/stack_interventions.py                       # 16 tiny runs, 200 epochs, 3 repeats
    python benchmarks/stack_interventions.py --study all --repeats 5
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

import numpy as np
import torch

import grokinterp as gi
from grokinterp.training.loop import resolve_device
from grokinterp.training.stacked import stack_key, train_stacked

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denormal_speed import cpu_name  # noqa: E402


def configs(args) -> list:
    base = gi.make_config(args.preset, epochs=args.epochs, every=args.every, log_early=0, windows=(),
                          device=args.device)
    n = args.runs
    spread = np.linspace(0.0, 1.0, n)
    out = []
    for i, x in enumerate(spread):
        if args.study == "grokfast_ema":
            kw = dict(grad_transforms=("grokfast_ema",), grokfast_alpha=round(0.5 + 0.48 * x, 4),
                      grokfast_lamb=2.0 if i % 2 == 0 else 5.0)
        elif args.study == "weight_decay":
            kw = dict(weight_decay=round(2.0 * x, 4))
        else:
            kw = dict(optimizer="ortho_adamw", lr_schedule="cosine", grad_transforms=("grokfast_ema", "orthograd"),
                      grokfast_alpha=round(0.5 + 0.48 * x, 4), loss="stablemax", weight_norm=True,
                      init_scale=round(0.5 + 1.5 * x, 4), attn_coeff=round(1.0 - 0.5 * x, 4))
        out.append(base.replace(**kw))  # same seeds: the runs differ only in the intervention's values
    return out


def time_sequential(cfgs, root: Path, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for i, c in enumerate(cfgs):
        gi.train(c, root / f"seq{i}", progress=False)
    _sync(device)
    return time.perf_counter() - t0


def time_stacked(cfgs, root: Path, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    train_stacked(cfgs, [root / f"st{i}" for i in range(len(cfgs))], progress=False)
    _sync(device)
    return time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--study", default="grokfast_ema", choices=("grokfast_ema", "weight_decay", "all"))
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--every", type=int, default=20, help="a checkpoint every N epochs")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    cfgs = configs(args)
    keys = {stack_key(c) for c in cfgs}
    if None in keys or len(keys) != 1:
        raise SystemExit("these runs cannot share one stack")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"device {device} ({name}), torch {torch.__version__}, 1 torch thread (the trainers' default); "
          f"study {args.study!r}: {len(cfgs)} '{args.preset}' runs of {args.epochs} epochs differing only in "
          f"intervention values, {len(cfgs[0].checkpoint_epochs())} checkpoints each; {args.repeats} interleaved repeats")
    seq, stacked = [], []
    root = Path(tempfile.mkdtemp(prefix="stack_interventions_"))
    try:
        warm = [c.replace(epochs=min(args.epochs, 20)) for c in cfgs[:2]]  # imports, kernels, allocator
        gi.train(warm[0], root / "warm", progress=False)
        train_stacked(warm, [root / f"warm{i}" for i in range(2)], progress=False)
        for r in range(args.repeats):
            d = root / f"rep{r}"
            d.mkdir()
            first, second = (time_sequential, time_stacked) if r % 2 == 0 else (time_stacked, time_sequential)
            a = first(cfgs, d / "a", device)
            b = second(cfgs, d / "b", device)
            s, t = (a, b) if first is time_sequential else (b, a)
            seq.append(s)
            stacked.append(t)
            print(f"  repeat {r}: one after another {s:7.2f} s, one stack {t:6.2f} s ({s / t:.2f}x)", flush=True)
            shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    me = len(cfgs) * args.epochs
    m_seq, m_st = statistics.median(seq), statistics.median(stacked)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(f"(a) {len(cfgs)} runs one after another: median {m_seq:7.2f} s = {1e3 * m_seq / me:.3f} ms per model-epoch")
    print(f"(b) one stack of {len(cfgs)}:             median {m_st:7.2f} s = {1e3 * m_st / me:.3f} ms per model-epoch")
    print(f"ratio (a)/(b): {m_seq / m_st:.2f}x (target ≥ 2x)")


if __name__ == "__main__":
    main()
