"""Speed of the issue-21 studies through stacks: model-epochs per second stacked vs one after another.

Issue 21 item 6. For each study, a small representative subset of its runs — the runs of one of its
stacks, at the study's own recipe and shapes, with fewer epochs — trains both ways in this process,
interleaved (stacked first on even repeats, one-after-another first on odd ones, so that drifts in the
machine's load hit both alike), through the public API (every run writes its directory):

* ``efficiency`` — `analyses/circuit_efficiency.py`'s stack at one D: a + b mod 59, d_model 64, 4 heads,
  d_mlp 128, lr 1e-2, weight decay 1, true and random labels × 3 seeds on the same D pairs (6 runs);
* ``ungrokking`` — `analyses/ungrokking.py`'s stack at one D′: children of grokked-shape parents (3 seeds,
  trained here first, untimed) continued on D′ of their pairs at weight decays 0.3, 1, 3 (9 runs);
* ``double_descent`` — one of `analyses/double_descent.py`'s sweep stacks: a + b mod 113, hidden 32
  (d_model 32, d_mlp 128), lr 1e-2, the smallest training sets of the width's 15 runs as the sweep with
  two workers cuts them (n_train 2000, 2600, 3000 × 3 seeds, the first 8), padded to the largest.

(a) one after another: ``grokinterp.train`` per run; (b) stacked: ``grokinterp.train_stacked`` once.
Prints, per study, medians over ``--repeats`` of wall time and process CPU time, model-epochs per second
(runs × epochs / wall), the ratio (a)/(b), the CPU's name, torch's version and the load average::

    OMP_NUM_THREADS=1 python benchmarks/study_stacks_speed.py --repeats 3
    python benchmarks/study_stacks_speed.py --studies double_descent --epochs 50 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import grokinterp as gi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denormal_speed import cpu_name  # noqa: E402

STUDIES = ("efficiency", "ungrokking", "double_descent")


def efficiency_configs(epochs: int, D: int = 900) -> list:
    # analyses/circuit_efficiency.py's config() at one D
    return [gi.make_config("tiny", p=59, frac_train=0.9, d_model=64, n_heads=4, d_mlp=128, epochs=epochs, lr=1e-2,
                           weight_decay=1.0, eval_every=100, every=250, log_early=0, windows=(), flush_every=50,
                           device="cpu", n_train=D, subset_seed=s, init_seed=s, random_labels=rl, label_seed=s)
            for rl in (False, True) for s in (0, 1, 2)]


def ungrokking_configs(epochs: int, parents_dir: Path, D_parent: int = 2800, D: int = 600) -> list:
    # analyses/ungrokking.py's children of one D′ (parents: circuit_efficiency's recipe at D_parent, short)
    parents = efficiency_configs(100, D_parent)[:3]
    outs = [parents_dir / f"parent{s}" for s in range(3)]
    if not all((o / "run.json").exists() for o in outs):
        gi.train_stacked(parents, outs, progress=False, overwrite=True)
    return [gi.child_config(o, n_train=D, subset_seed=s, epochs=epochs, weight_decay=wd, every=250, eval_every=100,
                            log_early=0, windows=())
            for s, o in enumerate(outs) for wd in (0.3, 1.0, 3.0)]


def double_descent_configs(epochs: int, hidden: int = 32) -> list:
    # analyses/specs/double_descent.toml at one width; the sweep (two workers) cuts the width's 15 runs sorted
    # by n_train into stacks of 8 and 7: the first holds n_train 2000, 2600 (× 3 seeds) and 3000 (× 2)
    runs = [(n, s) for n in (2000, 2600, 3000, 3500, 4000) for s in (0, 1, 2)][:8]
    return [gi.make_config("paper", p=113, frac_train=0.9, n_heads=4, d_model=hidden, d_mlp=4 * hidden, lr=1e-2,
                           weight_decay=1.0, epochs=epochs, eval_every=20, every=100, log_early=0, windows=(),
                           flush_every=5, n_train=n, split_seed=s, init_seed=s)
            for n, s in runs]


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", default=",".join(STUDIES))
    ap.add_argument("--epochs", type=int, default=None,
                    help="epochs per run (default: efficiency and ungrokking 300, double_descent 100)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the medians here")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    studies = [s for s in args.studies.split(",") if s]
    bad = [s for s in studies if s not in STUDIES]
    if bad:
        ap.error(f"--studies: unknown {bad}; choose from {', '.join(STUDIES)}")
    root = Path(tempfile.mkdtemp(prefix="study-stacks-"))
    try:
        cfgs = {}
        for s in studies:
            e = args.epochs or (100 if s == "double_descent" else 300)
            cfgs[s] = (efficiency_configs(e) if s == "efficiency" else
                       ungrokking_configs(e, root / "parents") if s == "ungrokking" else double_descent_configs(e))
        times = {s: {"sequential": [], "stacked": []} for s in studies}
        # warm-up, not counted: the first run of a process pays for imports, allocator and kernel set-up
        w = cfgs[studies[0]][:2]
        w = [c.replace(epochs=2) for c in w]
        gi.train(w[0], root / "warm-seq", progress=False)
        gi.train_stacked(w, [root / "warm-stk0", root / "warm-stk1"], progress=False)
        for rep in range(args.repeats):
            for s in studies:
                cs = cfgs[s]
                d = root / f"{s}-{rep}"

                def seq(cs=cs, d=d):
                    for i, c in enumerate(cs):
                        gi.train(c, d / f"seq{i}", progress=False)

                def stk(cs=cs, d=d):
                    gi.train_stacked(cs, [d / f"stk{i}" for i in range(len(cs))], progress=False)

                order = [("stacked", stk), ("sequential", seq)]
                for name, fn in (order if rep % 2 == 0 else order[::-1]):
                    times[s][name].append(timed(fn))
                shutil.rmtree(d, ignore_errors=True)
                print(f"  repeat {rep} {s}: sequential {times[s]['sequential'][-1][0]:.1f} s, stacked "
                      f"{times[s]['stacked'][-1][0]:.1f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    result = {"cpu": cpu_name(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "repeats": args.repeats, "studies": {}}
    for s in studies:
        cs = cfgs[s]
        me = len(cs) * cs[0].train.epochs
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times[s].items()}
        (sw, sc), (kw, kc) = med["sequential"], med["stacked"]
        result["studies"][s] = {"runs": len(cs), "epochs": cs[0].train.epochs, "model_epochs": me,
                                "sequential_wall_s": sw, "stacked_wall_s": kw, "sequential_cpu_s": sc,
                                "stacked_cpu_s": kc, "sequential_model_epochs_per_s": me / sw,
                                "stacked_model_epochs_per_s": me / kw, "ratio_wall": sw / kw, "ratio_cpu": sc / kc,
                                "all_wall_s": {k: [round(w, 2) for w, _ in v] for k, v in times[s].items()}}
        print(f"{s}: {len(cs)} runs × {cs[0].train.epochs} epochs; one after another median {sw:.1f} s wall "
              f"({sc:.1f} s CPU) = {me / sw:.0f} model-epochs/s; stacked {kw:.1f} s ({kc:.1f} s CPU) = "
              f"{me / kw:.0f} model-epochs/s; ratio {sw / kw:.2f}× wall, {sc / kc:.2f}× CPU")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
