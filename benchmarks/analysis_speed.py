"""Analysis speed: all progress measures of a p = 113 run, vectorised vs per-checkpoint reference.

Builds a synthetic run directory (paper architecture: p = 113, d_model 128, 4 heads, d_mlp 512,
30 % training pairs) with N checkpoints of randomly perturbed initial weights, written with the
package's own :class:`~grokinterp.store.writer.CheckpointWriter` — no trained run is needed, and
the cost of the measures does not depend on what the weights are. Then, in one process:

(a) :func:`grokinterp.analysis.measures.progress_measures` on all N checkpoints (median over repeats);
(b) :func:`oracles.progress_measures_reference`: a Python loop of full hooked
    forwards on the ``p²`` grid tokens with brute-force projections. Its cost per checkpoint is
    constant, so by default it is timed on the first 50 checkpoints and scaled to N (marked as
    such in the output; ``--ref-checkpoints 0`` times all N).

The repeats of (a) and (b) alternate, so on a shared machine both see the same load; medians are
quoted. It prints both times, the ratio (b)/(a), the largest relative difference between the two
tables, and the peak resident memory (``VmHWM``) of each path, each measured in a fresh
subprocess so the figures are separate. Key frequencies are fixed to the paper's
(14, 35, 41, 42, 52).

Targets on a 2-core CPU: (a) ≤ 60 s for 400 checkpoints, ≥ 10× faster than (b), peak ≤ 3 GiB.

    python benchmarks/analysis_speed.py                      # 400 checkpoints
    python benchmarks/analysis_speed.py --checkpoints 100    # when the CPU is busy
    python benchmarks/analysis_speed.py --quick              # smoke run (16 checkpoints)
    python benchmarks/analysis_speed.py --device cuda        # both paths on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# the per-checkpoint reference is the tests' oracle (tests/oracles.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PAPER_KEY_FREQS = (14, 35, 41, 42, 52)


def make_synthetic_run(path: Path, n_checkpoints: int, every: int = 25, seed: int = 0, **overrides):
    """A run directory with ``n_checkpoints`` checkpoints of the paper architecture (random weights).

    Written through the public write API: :func:`~grokinterp.store.writer.start_run` (``run.json``
    with ``epochs = every · (n − 1)``, the split, the manifest), then the checkpoints with
    :class:`~grokinterp.store.writer.CheckpointWriter`; it verifies and loads strictly.
    ``overrides`` change the paper config (e.g. ``operation="S5", frac_train=0.4``).
    """
    from grokinterp.config import make_config
    from grokinterp.model import init_params, param_shapes
    from grokinterp.store.run import load_run
    from grokinterp.store.writer import METRIC_COLUMNS, CheckpointWriter, run_metadata, start_run

    last = every * (n_checkpoints - 1)
    cfg = make_config("paper", epochs=last, every=every, flush_every=50, device="cpu", **overrides)
    if path.exists():
        shutil.rmtree(path)
    trn, tst = cfg.task.task().split(cfg.task.frac_train, cfg.task.split_seed, cfg.task.split_method)
    start_run(path, run_metadata(cfg, torch.device("cpu"), "paper", len(trn), len(tst)), trn, tst)
    shapes = param_shapes(cfg.model)
    base = init_params(cfg.model)
    gen = torch.Generator().manual_seed(seed)
    writer = CheckpointWriter(path, shapes, cfg.checkpoints.flush_every, torch.device("cpu"))
    metrics = {c: np.full(last + 1, np.nan) for c in METRIC_COLUMNS[1:]}
    for i, epoch in enumerate(range(0, last + 1, every)):
        decay = 1.0 - 0.5 * i / max(n_checkpoints - 1, 1)
        params = {k: decay * v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        writer.snapshot(epoch, params)
        if writer.full or epoch == last:
            done = epoch == last
            writer.flush(resume_epoch=epoch, finished=done, metrics=metrics, state=params,
                         state_meta={"flushed_upto": str(epoch)},
                         progress={"epoch": epoch, "epochs_total": last, "finished": done,
                                   "checkpoints_written": i + 1})
    return load_run(path, strict=True)


def _status_kib(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), -1 when unavailable.

    ``VmHWM`` is the peak resident set of the current address space; unlike ``ru_maxrss`` it is
    not inherited from the parent across ``fork``/``exec``, so a subprocess reports its own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def worker(mode: str, run_dir: str, n: int, chunk: int | None, device: str = "cpu") -> None:
    """Run one path once in this (fresh) process and print its peak memory as JSON."""
    from oracles import progress_measures_reference

    from grokinterp.analysis.measures import progress_measures
    from grokinterp.store.run import load_run

    run = load_run(run_dir)
    eps = run.epochs[:n]
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if mode == "fast":
        progress_measures(run, PAPER_KEY_FREQS, chunk=chunk, epochs=eps, device=device)
    else:
        progress_measures_reference(run, PAPER_KEY_FREQS, epochs=eps, device=device)
    dt = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    if peak < 0:  # not Linux: fall back on ru_maxrss (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    print(json.dumps({"mode": mode, "n": int(len(eps)), "seconds": dt, "base_rss_kib": base, "peak_rss_kib": peak}))


def measure_memory(mode: str, run_dir: Path, n: int, chunk: int | None, device: str = "cpu") -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--run-dir", str(run_dir), "--checkpoints", str(n),
           "--device", device]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gib(kib: int) -> str:
    return f"{kib / 2 ** 20:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=400, help="checkpoints in the synthetic run (default 400)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 checkpoints, one repeat, reference on 4")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the vectorised path (median)")
    ap.add_argument("--ref-checkpoints", type=int, default=50,
                    help="time the reference on the first K checkpoints and scale to N (default 50; 0 = all N)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="repeats of the reference (median)")
    ap.add_argument("--chunk", type=int, default=None, help="checkpoints per vectorised chunk (default: auto)")
    ap.add_argument("--run-dir", default=None, help="where to write the synthetic run (default: a temp dir)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--device", default="cpu", help="where both paths compute (default cpu; e.g. cuda)")
    ap.add_argument("--worker", choices=("fast", "ref"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args.worker, args.run_dir, args.checkpoints, args.chunk, args.device)
        return

    from oracles import progress_measures_reference

    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.measures.driver import auto_chunk as _auto_chunk

    n = 16 if args.quick else args.checkpoints
    if n < 1:
        ap.error(f"--checkpoints must be positive, got {n}")
    repeats = 1 if args.quick else max(args.repeats, 1)
    if args.quick:
        args.ref_checkpoints = 4
    n_ref = min(args.ref_checkpoints or n, n)
    ref_repeats = min(max(args.ref_repeats, 1), repeats)
    tmp = None
    if args.run_dir is None:
        tmp = tempfile.mkdtemp(prefix="grokinterp_bench_")
        run_dir = Path(tmp) / "run"
    else:
        run_dir = Path(args.run_dir)
    try:
        t0 = time.perf_counter()
        run = make_synthetic_run(run_dir, n)
        cfg = run.config.model
        chunk = args.chunk or _auto_chunk(cfg, args.device)
        print(f"synthetic run: p = {cfg.p}, d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, "
              f"{len(run.epochs)} checkpoints (written in {time.perf_counter() - t0:.1f} s)")
        gpu = f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
              f"device {args.device}{gpu}; vectorised chunk = {chunk} checkpoints")

        # Interleave the two paths so that both see the same load on a shared machine.
        eps_ref = run.epochs[:n_ref]
        fast_times, ref_times = [], []
        dev = args.device
        if torch.device(dev).type == "cuda":  # warm up kernels and the allocator on both paths
            progress_measures(run, PAPER_KEY_FREQS, chunk=chunk, epochs=run.epochs[:chunk], device=dev)
            progress_measures_reference(run, PAPER_KEY_FREQS, epochs=run.epochs[:2], device=dev)
        for i in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            df = progress_measures(run, PAPER_KEY_FREQS, chunk=chunk, device=dev)
            _sync(dev)
            fast_times.append(time.perf_counter() - t0)
            if i < ref_repeats:
                t0 = time.perf_counter()
                ref = progress_measures_reference(run, PAPER_KEY_FREQS, epochs=eps_ref, device=dev)
                _sync(dev)
                ref_times.append(time.perf_counter() - t0)
        t_fast = statistics.median(fast_times)
        t_ref_part = statistics.median(ref_times)
        t_ref = t_ref_part * n / n_ref

        cols = [c for c in df.columns if c != "epoch"]
        a, b = df[cols].to_numpy()[:n_ref], ref[cols].to_numpy()
        rel = float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))

        print(f"\n(a) vectorised progress_measures, {n} checkpoints: {t_fast:.2f} s "
              f"(median of {repeats}: {', '.join(f'{t:.2f}' for t in fast_times)}), "
              f"{t_fast / n * 1e3:.1f} ms/checkpoint")
        scaled = "" if n_ref == n else (f" (scaled ×{n / n_ref:.1f} from {t_ref_part:.2f} s on the first {n_ref} "
                                        f"checkpoints; its cost per checkpoint is constant)")
        print(f"(b) per-checkpoint reference, {n} checkpoints: {t_ref:.2f} s{scaled}, "
              f"{t_ref / n * 1e3:.1f} ms/checkpoint (median of {len(ref_times)}: "
              f"{', '.join(f'{t:.2f}' for t in ref_times)})")
        best = min(ref_times) * n / n_ref / min(fast_times)
        print(f"ratio (b)/(a): {t_ref / t_fast:.1f}× (medians; best against best: {best:.1f}×)")
        print(f"max relative difference between the tables ({n_ref} checkpoints): {rel:.2e}")

        if not args.no_memory:
            m_fast = measure_memory("fast", run_dir, n, chunk, args.device)
            n_mem_ref = min(n, 20)
            m_ref = measure_memory("ref", run_dir, n_mem_ref, None, args.device)
            print("\npeak resident memory (fresh subprocess each; 'after load' = process with torch and the run "
                  "opened, before the analysis):")
            print(f"  vectorised, {m_fast['n']} checkpoints: peak {_gib(m_fast['peak_rss_kib'])} "
                  f"(after load {_gib(m_fast['base_rss_kib'])})")
            print(f"  reference, {m_ref['n']} checkpoints: peak {_gib(m_ref['peak_rss_kib'])} "
                  f"(after load {_gib(m_ref['base_rss_kib'])}; a loop, so independent of N)")
            peak = m_fast["peak_rss_kib"]
        else:
            peak = None

        ok_time = t_fast <= 60 * n / 400
        print(f"\ntargets: ≤ 60 s per 400 checkpoints: {'met' if ok_time else 'MISSED'} "
              f"({t_fast * 400 / n:.1f} s per 400); ≥ 10× the reference: "
              f"{'met' if t_ref / t_fast >= 10 else 'MISSED'}; peak ≤ 3 GiB: "
              f"{'n/a' if peak is None else ('met' if peak <= 3 * 2 ** 20 else 'MISSED')}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
