"""Many models at once: a stack of runs vs the same runs trained one after another.

Measures, in one process and interleaved (so drifts in machine load hit both alike), wall time
through the public API — every run writes its run directory with all its checkpoints:

(a) ``N`` runs one after another with the single-run trainer (``grokinterp.train``);
(b) the same ``N`` runs as one stack (``train_stacked``) in each mode / implementation asked for:
    ``gather`` / ``mask`` (how splits enter the step) × ``tables`` / ``dense`` (the forward);
(c) with ``--workers W``: the same runs through ``grokinterp.sweep`` with ``W`` local worker
    processes (the sweep cuts them into ``W`` stacks, trained side by side, one thread each), and,
    so that the share of stacking and of processes shows, (d) the ``N`` single runs through the
    same sweep without stacking, ``W`` at a time.

Prints medians of ms per model-epoch and the throughput ratio (a)/(b).

CPU target (issue 14): 16 ``tiny``-preset runs stacked at ≥ 3× the throughput of the same 16 runs
one after another::

    python benchmarks/stacked_speed.py                              # 16 tiny runs, CPU
    python benchmarks/stacked_speed.py --threads 2 --workers 2      # both cores: threads, or processes

GPU target: ≥ 256 paper-size models at ≤ 0.15 ms per model-epoch (≥ 12× the single-run trainer),
over ≥ 1,000 epochs with a checkpoint every 100; models per hour for the paper recipe
(40k epochs) extrapolated from that::

    python benchmarks/stacked_speed.py --device cuda --preset paper --runs 256 --epochs 1000 --every 100 \\
        --sequential 1 --variants gather:dense,gather:tables

``--sequential K`` times only ``K`` of the runs one after another (the paper recipe takes ~86 s
per run on an H100) and scales to ``N``.

``--set FIELD=VALUE`` (repeatable) changes any config field of every run; models the one-layer kernels
cannot compute stack through ``generic`` (issue 19: 16 two-layer LayerNorm runs, minibatch where the
trainer has it, stacked ≥ 2× one after another)::

    python benchmarks/stacked_speed.py --set n_layers=2 --set layer_norm=true --variants gather:generic
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as gi
from grokinterp.training.loop import resolve_device
from grokinterp.training.stacked import max_stack_size, train_stacked


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _value(text: str):
    """A ``--set`` value: true/false, an integer, a number, or the text itself."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def configs(args) -> list:
    over = {"device": args.device}
    for item in args.set:
        name, _, value = item.partition("=")
        over[name] = _value(value)
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.every is not None:
        over.update(every=args.every, log_early=0, windows=())
    base = gi.make_config(args.preset, **over)
    return [base.replace(init_seed=s, split_seed=s) for s in range(args.runs)]


def time_sequential(cfgs, root: Path, device, threads: int | None = None) -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for i, c in enumerate(cfgs):
        gi.train(c, root / f"seq{i}", progress=False, threads=threads)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def time_stacked(cfgs, root: Path, device, mode: str, impl: str, threads: int | None = None) -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    train_stacked(cfgs, [root / f"st{i}" for i in range(len(cfgs))], progress=False, mode=mode, impl=impl,
                  threads=threads)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def sweep_spec(args, stack: bool) -> dict:
    fixed = {"device": args.device}
    if args.epochs is not None:
        fixed["epochs"] = args.epochs
    if args.every is not None:
        fixed.update(every=args.every, log_early=0, windows=[])
    return {"preset": args.preset, "fixed": fixed, "seeds": list(range(args.runs)),
            "options": {"stack": stack, "workers": args.workers}}


def time_sweep(args, out: Path, stack: bool) -> tuple[float, float]:
    """(wall, CPU of this process and its finished workers) seconds."""
    t0 = time.perf_counter()
    c0 = time.process_time() + _children_cpu()
    gi.sweep(sweep_spec(args, stack), out, progress=False)
    return time.perf_counter() - t0, time.process_time() + _children_cpu() - c0


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--runs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the preset's)")
    ap.add_argument("--every", type=int, default=None, help="a checkpoint every N epochs (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=None, help="time only K runs one after another, scaled to N")
    ap.add_argument("--variants", default="gather:tables,mask:tables,gather:dense", help="MODE:IMPL,...")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field of every run (repeatable)")
    ap.add_argument("--workers", type=int, default=None,
                    help="also time the sweep with this many local worker processes (stacked, and single runs)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of both the single runs and the stacks (default: the trainers' default, 1)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    cfgs = configs(args)
    E = cfgs[0].train.epochs
    variants = [tuple(v.split(":")) for v in args.variants.split(",") if v]
    k = args.sequential or len(cfgs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, training with {args.threads or 1} torch thread(s); "
          f"{len(cfgs)} '{args.preset}' runs of {E} epochs, {len(cfgs[0].checkpoint_epochs())} checkpoints each; "
          f"max stack size from memory: {max_stack_size(cfgs[0], device)}")
    seq, stacked = [], {v: [] for v in variants}
    if args.workers:
        stacked[("sweep", f"{args.workers}w")] = []
        stacked[("singles", f"{args.workers}w")] = []
    root = Path(tempfile.mkdtemp(prefix="stacked_speed_"))
    try:
        warm = [c.replace(epochs=min(E, 20)) for c in cfgs[:2]]  # imports, kernels, allocator
        gi.train(warm[0], root / "warm", progress=False)
        for mode, impl in variants:
            train_stacked(warm, [root / f"warm_{mode}_{impl}{i}" for i in range(2)], progress=False, mode=mode,
                          impl=impl)
        for r in range(args.repeats):
            d = root / f"rep{r}"
            d.mkdir()
            wall, cpu = time_sequential(cfgs[:k], d, device, args.threads)
            seq.append((wall * len(cfgs) / k, cpu * len(cfgs) / k))
            for mode, impl in variants:
                stacked[(mode, impl)].append(time_stacked(cfgs, d / f"{mode}_{impl}", device, mode, impl, args.threads))
            if args.workers:
                stacked[("sweep", f"{args.workers}w")].append(time_sweep(args, d / "sweep", True))
                stacked[("singles", f"{args.workers}w")].append(time_sweep(args, d / "singles", False))
            shutil.rmtree(d)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    me = len(cfgs) * E  # model-epochs
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs; wall times suffer from other processes, process CPU times less)")
    m_seq, c_seq = (statistics.median(v[i] for v in seq) for i in (0, 1))
    print(f"(a) {len(cfgs)} runs one after another{f' ({k} timed, scaled)' if k < len(cfgs) else ''}: "
          f"median {m_seq:8.2f} s wall = {1e3 * m_seq / me:7.3f} ms per model-epoch; CPU {c_seq:.2f} s "
          f"(runs: {', '.join(f'{w:.1f}/{c:.1f}' for w, c in seq)})")
    best = None
    for (mode, impl), ts in stacked.items():
        m, c = (statistics.median(v[i] for v in ts) for i in (0, 1))
        if mode == "sweep":
            what = f"(c) grokinterp.sweep, {impl[:-1]} worker processes, {impl[:-1]} stacks"
        elif mode == "singles":
            what = f"(d) grokinterp.sweep, {impl[:-1]} worker processes, single runs (no stacks)"
        else:
            what = f"(b) stack of {len(cfgs)}, {mode:6s} {impl:6s}"
        print(f"{what}: median {m:8.2f} s wall = {1e3 * m / me:7.3f} ms per "
              f"model-epoch, throughput {m_seq / m:5.2f}x; CPU {c:.2f} s, {c_seq / c:5.2f}x "
              f"(runs: {', '.join(f'{w:.1f}/{c:.1f}' for w, c in ts)})")
        if mode != "singles" and (best is None or m < best[1]):
            best = ((mode, impl), m)
    (mode, impl), m = best
    per = 1e3 * m / me
    print(f"fastest stacked variant: {mode}/{impl}, {per:.3f} ms per model-epoch, {m_seq / m:.2f}x "
          f"(CPU target ≥ 3x for 16 tiny runs; GPU target ≤ 0.15 ms per model-epoch and ≥ 12x)")
    if args.preset == "paper":
        print(f"paper recipe (40k epochs): {3600e3 / (per * 40_000):.0f} models per hour at {per:.3f} ms per "
              f"model-epoch (extrapolated)")


if __name__ == "__main__":
    main()
