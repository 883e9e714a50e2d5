"""A/B speed of two source trees of grokinterp (e.g. before and after a refactor), interleaved.

Each repeat runs, for tree A and tree B in alternating order, a fresh subprocess with that tree
first on ``sys.path`` which measures through the public API only (the same code in both trees):

* ``train``: ``grokinterp.train`` of the paper config for ``--epochs`` epochs, no intermediate
  checkpoints (ms per epoch, set-up included: plan, first and last flush);
* ``train_ckpt``: the same with a checkpoint every 10 epochs;
* ``quick``: ``grokinterp.train`` of the ``quick`` preset for ``--epochs`` epochs with its own
  checkpoint schedule (ms per epoch) — issue 19's single-run target; ``quick_cpu`` (and
  ``stack16_cpu``) the process's CPU time for the same call, which a machine shared with other
  jobs disturbs far less than wall time;
* ``stack16``: ``grokinterp.train_stacked`` of 16 ``tiny`` runs (seeds 0..15) for ``--epochs`` epochs
  (ms per model-epoch) — issue 19's stacked target;
* ``minibatch`` (issue 19's minibatch single-run target): ``grokinterp.train`` of the
  ``omnigrok-digits`` preset (MLP, batches of 200, 5 steps an epoch) for ``--epochs`` epochs in float32
  (``digits``) and float64 (``digits64``, where both trees have ``train.dtype``), and of ``tiny`` with ``batch_size=64`` (the transformer's
  fast path, 11 steps an epoch; ``tiny_mb``), in ms per optimizer step, wall and CPU (``*_cpu``). Each
  is preceded in its process by a 2-epoch run of the same config, so imports (transformer_lens for
  the MLP's hooked module) and one-time allocations stay out of the figure; ``*_step_cpu``: the CPU time
  of ``TrainLoop.step`` alone (no evaluations, checkpoints or flushes; the median of 20 chunks of 50
  steps after 100 warm-up steps);
* ``analysis``: ``grokinterp.progress_measures`` on a synthetic 400-checkpoint p = 113 run (the one
  of ``benchmarks/analysis_speed.py``, built once by tree A — the older tree, whose run format
  both read), key frequencies fixed.

It prints every measurement, the median per tree and the ratio B/A.

    git worktree add /tmp/old HEAD~1
    python benchmarks/ab_trees.py /tmp/old . --repeats 5
    python benchmarks/ab_trees.py /tmp/old . --what issue19 --epochs 300 --repeats 5
    python benchmarks/ab_trees.py /tmp/old . --what minibatch --epochs 300 --repeats 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPET = r"""
import json, sys, tempfile, time
from pathlib import Path
import grokinterp as g
what, epochs, run_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
if what in ("train", "all"):
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: one-time costs (kernels, allocator) stay out
        g.train(g.make_config("paper", epochs=20, device="cpu"), Path(tmp) / "w", progress=False)
    for tag, every in (("train", 100000), ("train_ckpt", 10)):
        cfg = g.make_config("paper", epochs=epochs, every=every, log_early=0, flush_every=50, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            g.train(cfg, Path(tmp) / "r", progress=False)
            out[tag] = (time.perf_counter() - t0) / epochs * 1e3
if what in ("quick", "issue19"):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = g.make_config("quick", epochs=epochs, device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        g.train(cfg, Path(tmp) / "q", progress=False)
        out["quick"] = (time.perf_counter() - t0) / epochs * 1e3
        out["quick_cpu"] = (time.process_time() - c0) / epochs * 1e3
if what in ("stack16", "issue19"):
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [g.make_config("tiny", epochs=epochs, init_seed=s, split_seed=s, device="cpu") for s in range(16)]
        t0, c0 = time.perf_counter(), time.process_time()
        g.train_stacked(cfgs, [Path(tmp) / f"s{s}" for s in range(16)], progress=False)
        out["stack16"] = (time.perf_counter() - t0) / (16 * epochs) * 1e3
        out["stack16_cpu"] = (time.process_time() - c0) / (16 * epochs) * 1e3
if what == "minibatch":
    import dataclasses
    cfgs = {"digits": g.make_config("omnigrok-digits", epochs=epochs, device="cpu"),
            "tiny_mb": g.make_config("tiny", epochs=epochs, batch_size=64, device="cpu")}
    if "dtype" in {f.name for f in dataclasses.fields(g.TrainConfig)}:  # trees before float64 (issue 22) skip it
        cfgs["digits64"] = g.make_config("omnigrok-digits", epochs=epochs, device="cpu", dtype="float64")
    for tag, cfg in cfgs.items():
        with tempfile.TemporaryDirectory() as tmp:
            g.train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2)), Path(tmp) / "w",
                    progress=False)
            t0, c0 = time.perf_counter(), time.process_time()
            g.train(cfg, Path(tmp) / "m", progress=False)
            out[tag] = (time.perf_counter() - t0) / cfg.total_steps() * 1e3
            out[tag + "_cpu"] = (time.process_time() - c0) / cfg.total_steps() * 1e3
        # the step alone (TrainLoop.step: the same constructor and signature in trees before and after the
        # one-trainer refactor), CPU time: the median of 20 chunks of 50 steps after 100 warm-up steps
        import statistics, torch
        from grokinterp.tasks import split_pairs
        from grokinterp.training.loop import TrainLoop
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "s").mkdir()
            k, chunks = cfg.steps_per_epoch(), []
            scfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1100 // k + 1))
            loop = TrainLoop(scfg, Path(tmp) / "s", torch.device("cpu"), *split_pairs(cfg.task))
            for s in range(1100):
                if s >= 100 and s % 50 == 0:
                    c0 = time.process_time()
                loop.step(s // k, record_acc=False, step=s)
                if s >= 100 and s % 50 == 49:
                    chunks.append((time.process_time() - c0) / 50 * 1e3)
            out[tag + "_step_cpu"] = statistics.median(chunks)
if what in ("analysis", "all"):
    run = g.load_run(run_dir)
    t0 = time.perf_counter()
    g.progress_measures(run, key_freqs=[14, 35, 41, 42, 52])
    out["analysis"] = time.perf_counter() - t0
out["file"] = g.__file__
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree_a", type=Path)
    ap.add_argument("tree_b", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--what", choices=("all", "train", "analysis", "quick", "stack16", "issue19", "minibatch"), default="all")
    args = ap.parse_args()
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    results: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "synthetic"
        if args.what in ("all", "analysis"):  # built by tree A (the older format, which both trees read)
            build = ("import sys; sys.path.insert(0, 'benchmarks'); from analysis_speed import make_synthetic_run; "
                     f"make_synthetic_run(__import__('pathlib').Path({str(run_dir)!r}), {args.checkpoints})")
            subprocess.run([sys.executable, "-c", build], cwd=trees["A"], check=True,
                           env={**os.environ, "PYTHONPATH": str(trees["A"])})
        for r in range(args.repeats):
            for name in (("A", "B") if r % 2 == 0 else ("B", "A")):
                env = {**os.environ, "PYTHONPATH": str(trees[name])}
                out = subprocess.run([sys.executable, "-c", SNIPPET, args.what, str(args.epochs), str(run_dir)],
                                     cwd=trees[name], env=env, check=True, capture_output=True, text=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(res)
                print(f"repeat {r} tree {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items() if k != "file")
                      + f" (load average {os.getloadavg()[0]:.2f})", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from denormal_speed import cpu_name

    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores")
    print(f"A = {trees['A']} ({results['A'][0]['file']})\nB = {trees['B']} ({results['B'][0]['file']})")
    for key, unit in (("train", "ms/epoch"), ("train_ckpt", "ms/epoch"), ("quick", "ms/epoch"),
                      ("quick_cpu", "CPU ms/epoch"), ("stack16", "ms/model-epoch"),
                      ("stack16_cpu", "CPU ms/model-epoch"), ("digits", "ms/step"), ("digits_cpu", "CPU ms/step"),
                      ("digits64", "ms/step"), ("digits64_cpu", "CPU ms/step"), ("tiny_mb", "ms/step"),
                      ("tiny_mb_cpu", "CPU ms/step"), ("digits_step_cpu", "CPU ms/step"),
                      ("digits64_step_cpu", "CPU ms/step"), ("tiny_mb_step_cpu", "CPU ms/step"), ("analysis", "s")):
        if key not in results["A"][0] or key not in results["B"][0]:
            continue
        a, b = (statistics.median(x[key] for x in results[t]) for t in ("A", "B"))
        lo_a, hi_a, lo_b, hi_b = (f(x[key] for x in results[t]) for t in ("A", "B") for f in (min, max))
        print(f"{key:12s} median A {a:9.3f} {unit}, B {b:9.3f} {unit}, B/A {b / a:.3f} "
              f"(A {lo_a:.3f}-{hi_a:.3f}, B {lo_b:.3f}-{hi_b:.3f})")


if __name__ == "__main__":
    main()
