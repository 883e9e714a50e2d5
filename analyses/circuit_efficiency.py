"""Circuit efficiency of memorizing and generalizing runs against the training-set size D, and D_crit
(Varma et al. 2023, "Explaining grokking through circuit efficiency"; issue 21, item 2).

For each D and seed, two runs train together in one stack per D (`grokinterp.train_stacked`):

* **generalizing** — true labels on D training pairs (`task.n_train = D`, a seeded subset of a
  90 % split; the rest of the pairs are the test set);
* **memorizing** — the same D pairs with random labels (`task.random_labels`, the memorization-only
  baseline: nothing to generalize).

At the end of training (and at every checkpoint) `grokinterp.analysis.efficiency` measures the
parameter norm, the mean centred correct-class logit (margin) on the labels trained on, and
`efficiency_1 = margin / ‖θ‖` (see that module for the definitions). Under the same weight decay a
more efficient circuit settles at a smaller norm for the same fit (Varma et al.'s measure): the
memorizing norm grows with D, the generalizing one does not, and `D_crit` is where they cross.
Per seed: the generalizing level is the median over the D at which that seed's true-label run
generalized (final test accuracy ≥ 99 %); `D_crit` is the first crossing of the random-label
curve with that level (log-log interpolation, `efficiency.crossing`), for the norm and for
`efficiency_1`.

Writes into `--out`: `runs.csv` (one row per run, final checkpoint), `curves.csv` (every
checkpoint of every run: convergence of the norm), `summary.json` (settings, per-seed D_crit,
median and range, definitions) and `circuit_efficiency.html`. Results are rewritten after each
stack, so a partial study is usable. Runs live in `--runs-dir`; finished ones are reused.

Example:
    python analyses/circuit_efficiency.py --p 59 --sizes 150,250,400,600,900,1300,1900,2800 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--sizes", type=_ints, default=[150, 250, 400, 600, 900, 1300, 1900, 2800], metavar="D1,D2,...")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], metavar="S1,S2,...",
                    help="each sets the init seed, the subset seed and the label seed (the split seed stays 0)")
    ap.add_argument("--epochs", type=int, default=1500)
    ap.add_argument("--every", type=int, default=250, help="checkpoint every this many epochs")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--weight-decay", type=float, default=1.0)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--d-mlp", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kinds", default="generalizing,memorizing",
                    help="which runs to train at each D (default both; 'generalizing' alone: a long-budget check of "
                         "grokking / semi-grokking near D_crit)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/circuit_efficiency"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/circuit_efficiency"))
    return ap.parse_args(argv)


def config(args, D: int, seed: int, random_labels: bool):
    import grokinterp as gi

    return gi.make_config("tiny", p=args.p, frac_train=0.9, d_model=args.d_model, n_heads=args.heads,
                          d_mlp=args.d_mlp, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                          eval_every=100, every=args.every, log_early=0, windows=(), flush_every=50, device="cpu",
                          n_train=D, subset_seed=seed, init_seed=seed, random_labels=random_labels, label_seed=seed)


def analyse(args, rows: list[dict], curves: list[dict], wall: dict) -> dict:
    import numpy as np
    import pandas as pd

    from grokinterp.analysis.efficiency import DEFINITIONS, crossing

    df = pd.DataFrame(rows)
    cur = pd.DataFrame(curves)
    # Adam's late spikes move the norm of a converged run by a few per cent from one checkpoint to the
    # next: the measures are averaged over the last third of training (epochs ≥ 2E/3).
    late = (cur[cur.epoch >= cur.epoch.max() * 2 / 3].groupby(["D", "kind", "seed"])[["param_norm", "efficiency_1"]]
            .mean().rename(columns=lambda c: f"{c}_late").reset_index())
    df = df.merge(late, on=["D", "kind", "seed"]).sort_values(["kind", "seed", "D"])
    df.to_csv(args.out / "runs.csv", index=False)
    cur.to_csv(args.out / "curves.csv", index=False)
    per_seed = []
    for seed in sorted(df.seed.unique()):
        g = df[(df.kind == "generalizing") & (df.seed == seed) & (df.test_acc >= 0.99)]
        m = df[(df.kind == "memorizing") & (df.seed == seed)].sort_values("D")
        rec = {"seed": int(seed), "generalized_at": sorted(int(x) for x in g.D)}
        if len(g) and len(m) >= 2:
            rec["gen_norm"] = float(g.param_norm_late.median())
            rec["gen_efficiency_1"] = float(g.efficiency_1_late.median())
            rec["D_crit_norm"] = crossing(m.D, m.param_norm_late, rec["gen_norm"])
            eff = m.efficiency_1_late.clip(lower=1e-12)
            rec["D_crit_efficiency_1"] = crossing(m.D, eff, rec["gen_efficiency_1"])
        per_seed.append(rec)

    def spread(key):
        v = [r[key] for r in per_seed if r.get(key) is not None]
        return {"n": len(v), "median": float(np.median(v)) if v else None, "min": min(v) if v else None,
                "max": max(v) if v else None, "values": v}

    gen = df[df.kind == "generalizing"]
    first = {int(s): (int(gen[(gen.seed == s) & (gen.test_acc >= 0.99)].D.min())
                      if ((gen.seed == s) & (gen.test_acc >= 0.99)).any() else None) for s in gen.seed.unique()}
    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                         text=True).stdout.strip()
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": "one-layer transformer (grokinterp 'tiny' architecture at this d_model / heads / d_mlp), "
                 "no LayerNorm, full-batch AdamW, warm-up 10, split: 90 % of the pairs (split_seed 0), "
                 "then n_train = D of them (subset_seed = seed); the rest is the test set",
        "definitions": DEFINITIONS,
        "per_seed": per_seed,
        "measured_on": "means over the checkpoints of the last third of training (param_norm_late, "
                       "efficiency_1_late); runs.csv also holds the final checkpoint's values",
        "D_crit_norm": spread("D_crit_norm"),
        "D_crit_efficiency_1": spread("D_crit_efficiency_1"),
        "smallest_D_generalized_per_seed": first,
        "wall_s_per_stack": wall,
        "cpu": cpu or platform.processor(),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _figure(args, df, summary)
    return summary


def _figure(args, df, summary) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("parameter norm ‖θ‖ (mean of the last third)", "efficiency_1 = margin / ‖θ‖ (same)",
                                                        "final test accuracy"))
    colours = {"memorizing": "#d62728", "generalizing": "#1f77b4"}
    for kind, g in df.groupby("kind"):
        for seed, h in g.groupby("seed"):
            h = h.sort_values("D")
            for col, y in ((1, h.param_norm_late), (2, h.efficiency_1_late), (3, h.test_acc)):
                fig.add_trace(go.Scatter(x=h.D, y=y, mode="lines+markers", name=f"{kind} seed {seed}",
                                         legendgroup=kind, showlegend=col == 1, line=dict(color=colours[kind]),
                                         opacity=0.8), row=1, col=col)
    for v in summary["D_crit_norm"]["values"]:
        fig.add_vline(x=v, line=dict(dash="dot", color="grey"), row=1, col=1)
    fig.update_xaxes(type="log", title="training-set size D")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=2)
    med = summary["D_crit_norm"]["median"]
    fig.update_layout(title=f"Circuit efficiency, add mod {args.p}: memorizing (random labels) vs generalizing "
                            f"(true labels); D_crit (norm crossing) median {med if med is None else round(med)}",
                      height=450, width=1300)
    fig.write_html(args.out / "circuit_efficiency.html", include_plotlyjs="cdn")


def main(argv=None) -> int:
    args = parse_args(argv)
    import grokinterp as gi
    from grokinterp.analysis.efficiency import efficiency_table

    args.out.mkdir(parents=True, exist_ok=True)
    rows, curves, wall = [], [], {}
    for D in args.sizes:
        cfgs, outs, meta = [], [], []
        for seed in args.seeds:
            for kind, rl in (("generalizing", False), ("memorizing", True)):
                if kind not in args.kinds.split(","):
                    continue
                cfgs.append(config(args, D, seed, rl))
                outs.append(args.runs_dir / f"D{D}_{kind}_seed{seed}")
                meta.append((kind, seed))
        t0 = time.time()
        runs = gi.train_stacked(cfgs, outs, progress=False)
        wall[str(D)] = round(time.time() - t0, 1)
        for run, (kind, seed) in zip(runs, meta):
            tab = efficiency_table(run)
            last = tab.iloc[-1]
            ev = run.evals.iloc[-1]
            prev = tab.iloc[-2] if len(tab) > 1 else last
            rows.append({"D": D, "kind": kind, "seed": seed, "epoch": int(last.epoch), **{k: float(last[k]) for k in (
                "param_norm", "margin", "logit_norm", "degree", "efficiency", "efficiency_1", "train_loss",
                "train_acc")}, "test_acc": float(ev.test_acc), "test_loss": float(ev.test_loss),
                "norm_change_last_interval": float(last.param_norm / prev.param_norm - 1)})
            for _, r in tab.iterrows():
                curves.append({"D": D, "kind": kind, "seed": seed, **{k: float(r[k]) for k in (
                    "epoch", "param_norm", "margin", "efficiency_1", "train_loss", "train_acc")}})
        summary = analyse(args, rows, curves, wall)
        print(f"D = {D}: {wall[str(D)]} s; D_crit (norm) so far {summary['D_crit_norm']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
