"""Cost of the live progress measures: training with them at the default interval vs without.

Trains the same config (default: the ``quick`` preset, p = 97, 40 % of pairs, its live interval of 25
epochs) for ``--epochs`` epochs through ``grokinterp.train`` twice per repeat — once with
``live_every`` = the interval, once with 0 — interleaved, in one process, into temporary directories, and
prints the medians (ms per epoch, checkpoints and evaluations included in both) and the overhead ratio.
Also times one live measurement against one training step.

    python benchmarks/live_cost.py                       # quick preset, CPU
    python benchmarks/live_cost.py --preset paper --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as gi
from grokinterp.analysis.early import live_arrays, live_measures
from grokinterp.training.loop import TrainLoop, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_ms(cfg, root: Path, tag: str) -> float:
    t0 = time.perf_counter()
    gi.train(cfg, root / tag, progress=False)
    return (time.perf_counter() - t0) / cfg.train.epochs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--every", type=int, default=None, help="live interval (default: the preset's)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    base = gi.make_config(args.preset, epochs=args.epochs, device=args.device)
    every = args.every or base.train.live_every or 25
    device = resolve_device(args.device)
    with_live, without = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(args.repeats):
            without.append(train_ms(base.replace(live_every=0), root, f"off{i}"))
            with_live.append(train_ms(base.replace(live_every=every), root, f"on{i}"))
        # one live measurement vs one training step, same model
        cfg = base.replace(live_every=0)
        tp, sp = cfg.task.task().split(cfg.task.frac_train, cfg.task.split_seed)
        (root / "parts").mkdir()
        loop = TrainLoop(cfg, root / "parts", device, tp, sp)
        arrays = live_arrays(cfg, tp, sp, device)
        steps, lives = [], []
        for e in range(8):
            _sync(device)
            t0 = time.perf_counter()
            loop.step(e, record_acc=False)
            _sync(device)
            steps.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            live_measures(loop.params, cfg.model, arrays)
            _sync(device)
            lives.append(time.perf_counter() - t0)
    off, on = statistics.median(without), statistics.median(with_live)
    step, live = statistics.median(steps[2:]) * 1e3, statistics.median(lives[2:]) * 1e3
    print(f"{args.preset} (p = {base.task.p}), {args.epochs} epochs, device {device}, live every {every} epochs")
    print(f"  training without live measures: {off:.2f} ms/epoch (median of {args.repeats})")
    print(f"  training with live measures:    {on:.2f} ms/epoch")
    print(f"  overhead: {on / off - 1:+.1%}  (ratio {on / off:.3f})")
    print(f"  one live measurement {live:.1f} ms vs one training step {step:.1f} ms "
          f"(ratio {live / step:.2f}; expected overhead ≈ ratio / interval = {live / step / every:.1%})")


if __name__ == "__main__":
    main()
