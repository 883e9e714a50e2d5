"""Training speed: the trainer's fast path vs a plain full-forward step, and checkpoint overhead.

Measures, in one process, at p = 113 with 30 % of the pairs as one full batch (paper setup):

(a) the trainer itself (fast final-position path, AdamW, the train loss it records every epoch and
    the test evaluation every ``eval_every`` epochs), ms per epoch;
(b) a plain training step of the same hooked model: the full forward at every position, loss on
    the last position, backward, AdamW — ms per epoch;
(c) the trainer again with one checkpoint every 10 epochs written to disk.

Prints medians over repeats and the ratios (b)/(a) and (c)/(a).

On CUDA two more, the GPU targets of issue 14:

(d) the baseline the trainer must match: the plain hooked model's training step (full forward,
    final-position float64 loss, backward, capturable AdamW) compiled with ``torch.compile`` and
    captured as one CUDA graph, replayed — ms per epoch, and (a)/(d);
(e) checkpoint flushes that do not block training: the stacked trainer on one run, its flushes
    written in a background thread, with a checkpoint every 10 epochs vs none — overhead
    (target ≤ 3 %).

    python benchmarks/train_speed.py                 # CPU (default)
    python benchmarks/train_speed.py --device cuda   # GPU, when there is one
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from grokinterp import make_config
from grokinterp.model import HookedGrokTransformer
from grokinterp.tasks import make_dataset, split_indices, split_pairs
from grokinterp.training.loop import TrainLoop, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_ms_per_epoch(cfg, device: torch.device, epochs: int, every: int, root: Path, tag: str) -> float:
    """Wall time of the real training loop (metrics, evals, checkpoints, flushes) per epoch."""
    cfg = cfg.replace(epochs=epochs, every=every, log_early=0, flush_every=50, device=str(device))
    out = root / tag
    out.mkdir()
    trainer = TrainLoop(cfg, out, device, *split_pairs(cfg.task))
    _sync(device)
    t0 = time.perf_counter()
    trainer.run(stop=lambda: False)
    _sync(device)
    return (time.perf_counter() - t0) / epochs * 1e3


def plain_ms_per_epoch(cfg, device: torch.device, steps: int) -> list[float]:
    """A straightforward step: full hooked forward at all positions, final-position loss."""
    ds = make_dataset(cfg.task.p, cfg.task.operation)
    trn, _ = split_indices(len(ds), cfg.task.frac_train, cfg.task.split_seed)
    x = torch.from_numpy(ds.tokens[trn]).to(device)
    y = torch.from_numpy(ds.labels[trn]).to(device)
    model = HookedGrokTransformer(cfg.model).to(device)
    tc = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    times = []
    for i in range(steps + 3):
        _sync(device)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x)[:, -1].double(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        _sync(device)
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def compiled_graph_ms_per_epoch(cfg, device: torch.device, steps: int) -> list[float]:
    """(d): the plain step, ``torch.compile``d, captured as a CUDA graph and replayed (CUDA only)."""
    trn, _ = split_pairs(cfg.task)
    x, y = (torch.from_numpy(a).to(device) for a in cfg.task.task().dataset().select(trn))
    model = HookedGrokTransformer(cfg.model).to(device)
    tc = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(tc.lr, device=device), betas=(tc.beta1, tc.beta2),
                            weight_decay=tc.weight_decay, capturable=True, foreach=True)
    loss_of = torch.compile(lambda: F.cross_entropy(model(x)[:, -1].double(), y))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of()
        loss.backward()
        opt.step()
        return loss

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(5):  # compile, autotune and warm up outside the capture
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    times = []
    for _ in range(5):
        graph.replay()
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(10):
            graph.replay()
        _sync(device)
        times.append((time.perf_counter() - t0) / 10 * 1e3)
    return times


def stacked_flush_overhead(cfg, device: torch.device, epochs: int, root: Path) -> tuple[float, float]:
    """(e): ms per epoch of the stacked trainer on one run with async flushes, checkpoints every 10 / never."""
    from grokinterp.training.stacked import train_stacked

    out = []
    for tag, every in (("none", epochs), ("every10", 10)):
        c = cfg.replace(epochs=epochs, every=every, log_early=0, windows=(), flush_every=50, device=str(device))
        _sync(device)
        t0 = time.perf_counter()
        train_stacked([c], [root / f"flush_{tag}"], progress=False, async_flush=True)
        _sync(device)
        out.append((time.perf_counter() - t0) / epochs * 1e3)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=300, help="epochs per trainer repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--plain-steps", type=int, default=30)
    args = ap.parse_args()
    device = resolve_device(args.device)
    cfg = make_config("paper")
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; p = {cfg.task.p}, "
          f"frac_train {cfg.task.frac_train} (full batch)")
    fast, ckpt = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trainer_ms_per_epoch(cfg, device, 20, 10_000, root, "warmup")
        for r in range(args.repeats):  # interleave so drifts in machine load hit both alike
            fast.append(trainer_ms_per_epoch(cfg, device, args.epochs, 10_000, root, f"fast{r}"))
            ckpt.append(trainer_ms_per_epoch(cfg, device, args.epochs, 10, root, f"ckpt{r}"))
    plain = plain_ms_per_epoch(cfg, device, args.plain_steps)
    m_fast, m_ckpt, m_plain = (statistics.median(v) for v in (fast, ckpt, plain))
    print(f"(a) trainer, fast path, metrics recorded:      median {m_fast:8.2f} ms/epoch  "
          f"(runs: {', '.join(f'{v:.2f}' for v in fast)})")
    print(f"(b) plain full-forward step (hooked model):    median {m_plain:8.2f} ms/epoch  "
          f"(min {min(plain):.2f}, max {max(plain):.2f})")
    print(f"(c) trainer + checkpoint every 10 epochs:      median {m_ckpt:8.2f} ms/epoch")
    print(f"speed-up of the fast path, (b)/(a):            {m_plain / m_fast:6.2f}x   (target ≥ 5x)")
    print(f"checkpoint overhead, (c)/(a) - 1:              {100 * (m_ckpt / m_fast - 1):+6.1f} %  (target ≤ 10 %)")
    print(f"fast path per epoch:                           {m_fast:6.2f} ms  (target ≤ 25 ms on 2 CPU cores)")
    if device.type != "cuda":
        return
    try:
        graphed = compiled_graph_ms_per_epoch(cfg, device, args.plain_steps)
        m_g = statistics.median(graphed)
        print(f"(d) plain step, torch.compile + CUDA graph:    median {m_g:8.2f} ms/epoch  "
              f"(min {min(graphed):.2f}, max {max(graphed):.2f})")
        print(f"trainer vs compiled+graphed baseline, (d)/(a): {m_g / m_fast:6.2f}x   (target ≥ 1: the trainer at least as "
              f"fast)")
    except Exception as e:  # noqa: BLE001 - a benchmark reports what failed and goes on
        print(f"(d) torch.compile + CUDA graph baseline failed: {type(e).__name__}: {str(e)[:300]}")
    with tempfile.TemporaryDirectory() as tmp:
        base, every10 = stacked_flush_overhead(cfg, device, max(args.epochs, 1000), Path(tmp))
    print(f"(e) stacked trainer, one run, async flushes:   {base:8.2f} ms/epoch without checkpoints, {every10:.2f} with one "
          f"every 10 epochs: {100 * (every10 / base - 1):+6.1f} %  (target ≤ 3 %)")


if __name__ == "__main__":
    main()
