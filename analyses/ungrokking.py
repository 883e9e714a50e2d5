"""Ungrokking at reduced size (Varma et al. 2023; issue 21, item 3): grokked runs continue on fewer pairs.

Parents: the generalizing (true-label) runs of `analyses/circuit_efficiency.py` at its largest D that
grokked (final test accuracy ≥ 99 %), one per seed. Each parent's last checkpoint is continued
(`grokinterp.child_config`, i.e. `grokinterp train --from PARENT --n-train D′`) on D′ of its own
training pairs (the same subset seed, so the children's pairs lie inside the parent's) at several
weight decays, with a fresh AdamW; every child of one D′ trains in one stack (weight decays and
seeds are per-run values). Varma et al.'s prediction: below D_crit the grokked network *ungroks*
(test accuracy falls), above it it stays; the transition does not depend on weight decay.

Test accuracy is reported two ways: on the child's test set (every pair it does not train on: the
parent's test pairs and the pairs dropped from the parent's training set) and on the parent's test
pairs alone (never trained on by either).

Writes into `--out`: `runs.csv` (one row per child), `summary.json` (median and range over seeds per
D′ and weight decay, settings, CPU, wall time per stack) and `ungrokking.html` (test accuracy vs D′,
one line per weight decay). Rewritten after each stack.

Example:
    python analyses/ungrokking.py --parents-dir checkpoints/circuit_efficiency --parent-size 2800 \\
        --sizes 150,250,400,600,900,1300 --weight-decays 0.3,1,3 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parents-dir", type=Path, default=Path("checkpoints/circuit_efficiency"))
    ap.add_argument("--parent-size", type=int, default=2800, help="D of the parents (circuit_efficiency runs)")
    ap.add_argument("--sizes", type=_ints, default=[150, 250, 400, 600, 900, 1300], metavar="D1,D2,...")
    ap.add_argument("--weight-decays", type=_floats, default=[0.3, 1.0, 3.0], metavar="W1,W2,...")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], metavar="S1,S2,...")
    ap.add_argument("--epochs", type=int, default=1500, help="the children's own epochs")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/ungrokking"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/ungrokking"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    import grokinterp as gi

    args.out.mkdir(parents=True, exist_ok=True)
    parents = {}
    for s in args.seeds:
        p = gi.load_run(args.parents_dir / f"D{args.parent_size}_generalizing_seed{s}")
        acc = float(p.evals.test_acc.iloc[-1])
        if acc < 0.99:
            print(f"seed {s}: the parent {p.path} did not grok (test accuracy {acc:.3f}); skipped", flush=True)
            continue
        parents[s] = p
    rows, wall = [], {}
    for D in args.sizes:
        cfgs, outs, meta = [], [], []
        for s, parent in parents.items():
            for wd in args.weight_decays:
                cfgs.append(gi.child_config(parent.path, n_train=D, subset_seed=parent.config.task.subset_seed,
                                            epochs=args.epochs, weight_decay=wd, every=args.every, eval_every=100,
                                            log_early=0, windows=()))
                outs.append(args.runs_dir / f"D{D}_wd{wd:g}_seed{s}")
                meta.append((s, wd))
        if not cfgs:
            break
        t0 = time.time()
        runs = gi.train_stacked(cfgs, outs, progress=False)
        wall[str(D)] = round(time.time() - t0, 1)
        for run, (s, wd) in zip(runs, meta):
            parent = parents[s]
            ptest = parent.split_pairs()[1]
            tok, lab = parent.task.dataset().select(ptest, run.config.model.input_layout)
            model = run.model(-1)
            with torch.no_grad():
                logits = model(torch.from_numpy(tok))[:, -1, : run.p]
            acc_parent_test = float((logits.argmax(-1).numpy() == lab).mean())
            ev = run.evals
            rows.append({"D_prime": D, "weight_decay": wd, "seed": s, "parent_D": args.parent_size,
                         "parent_epoch": run.lineage["epoch"], "test_acc_start": float(ev.test_acc.iloc[0]),
                         "test_acc": float(ev.test_acc.iloc[-1]), "test_acc_parent_test": acc_parent_test,
                         "min_test_acc": float(ev.test_acc.min()), "train_acc": float(ev.train_acc.iloc[-1]),
                         "train_loss": float(ev.train_loss.iloc[-1])})
        df = pd.DataFrame(rows)
        df.to_csv(args.out / "runs.csv", index=False)
        agg = (df.groupby(["D_prime", "weight_decay"]).test_acc_parent_test
               .agg(["median", "min", "max", "count"]).reset_index())
        cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                             text=True).stdout.strip()
        summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "parents": {str(s): str(p.path) for s, p in parents.items()},
                   "optimizer": "fresh AdamW per child (lr and betas of the parent's config, warm-up 10)",
                   "test_acc_parent_test_by_D_prime_and_wd": agg.to_dict("records"),
                   "wall_s_per_stack": wall, "cpu": cpu}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        _figure(args, df)
        print(f"D' = {D}: {wall[str(D)]} s; median test acc (parent's test pairs) by wd: "
              f"{dict(zip(agg[agg.D_prime == D].weight_decay, np.round(agg[agg.D_prime == D]['median'], 3)))}",
              flush=True)
    return 0


def _figure(args, df) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for wd, g in df.groupby("weight_decay"):
        m = g.groupby("D_prime").test_acc_parent_test.agg(["median", "min", "max"]).reset_index()
        fig.add_trace(go.Scatter(x=m.D_prime, y=m["median"], mode="lines+markers", name=f"weight decay {wd:g}",
                                 error_y=dict(type="data", symmetric=False, array=m["max"] - m["median"],
                                              arrayminus=m["median"] - m["min"])))
    fig.update_xaxes(type="log", title="D′ (training pairs of the child)")
    fig.update_yaxes(title="final test accuracy on the parent's test pairs", range=[0, 1.02])
    fig.update_layout(title=f"Ungrokking: grokked parents (D = {args.parent_size}) continued on D′ pairs; median and "
                            f"range over seeds", height=450, width=800)
    fig.write_html(args.out / "ungrokking.html", include_plotlyjs="cdn")


if __name__ == "__main__":
    sys.exit(main())
