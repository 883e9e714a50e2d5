"""Initialisation scale (Liu et al. 2022, Omnigrok): epochs to generalization against the scale α.

Every initial weight is multiplied by α (``init_scale``). Omnigrok's picture: the weight norm at
initialisation decides the delay — a large initial norm memorizes first and generalizes only after weight
decay has shrunk the weights towards the "Goldilocks zone", so the delay grows with α (and may exceed the
budget); with the total norm *constrained* (``weight_norm``: projected back to α‖w₀‖ after every step,
no weight decay) the norm cannot shrink, so a large α should not generalize at all and a small one
quickly. For each α and seed this trains the free run (AdamW, weight decay 1) and, for the α in
``--constrained``, the constrained one. Writes into ``--out``:

* ``runs.csv`` — one row per (α, constraint, seed): epochs to 99 % train / test accuracy, initial and
  final Σθ²;
* ``summary.json`` — settings, rows, spreads over seeds;
* ``init_scale.html`` — epochs to 99 % test accuracy against α (seeds as points), and the weight-norm
  curves Σθ²(epoch) of every run on one figure.

Example:
    python analyses/init_scale.py --p 59 --scales 0.5,1,2,4,8 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _study as S


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--frac-train", type=float, default=0.5)
    ap.add_argument("--scales", type=S.floats, default=[0.5, 1, 2, 4, 8])
    ap.add_argument("--constrained", type=S.floats, default=[0.5, 1, 4], help="scales also run with weight_norm")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1.0)
    ap.add_argument("--margin", type=int, default=200)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_init_scale"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/init_scale"))
    return ap.parse_args(argv)


def configs(args):
    import grokinterp as gi

    for constrained in (False, True):
        for a in (args.constrained if constrained else args.scales):
            for seed in args.seeds:
                kw = dict(p=args.p, frac_train=args.frac_train, epochs=args.epochs, lr=args.lr,
                          weight_decay=0.0 if constrained else args.weight_decay, init_scale=a, weight_norm=constrained,
                          split_seed=seed, init_seed=seed, eval_every=10, every=50, log_early=0, flush_every=20,
                          live_every=10, device="cpu")
                tag = f"{'wn' if constrained else 'free'}-a{a:g}-s{seed}"
                yield a, constrained, seed, gi.make_config("quick", **kw), args.runs_dir / f"add-p{args.p}-{tag}"


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import plotly.graph_objects as go

    rows, norms = [], {}
    for a, constrained, seed, cfg, out in configs(args):
        run = S.train_until(cfg, out, margin=args.margin)
        m = run.metrics
        live = m[m["live_sum_sq_weights"].notna()]
        norms[(a, constrained, seed)] = live[["epoch", "live_sum_sq_weights"]]
        rows.append({"init_scale": a, "weight_norm": constrained, "seed": seed,
                     "epochs_to_train_99": S.epochs_to(run, 0.99, "train_acc"), "epochs_to_test_99": S.epochs_to(run),
                     "final_test_acc": float(run.evals["test_acc"].iloc[-1]),
                     "sum_sq_weights_init": float(live["live_sum_sq_weights"].iloc[0]),
                     "sum_sq_weights_final": float(live["live_sum_sq_weights"].iloc[-1]),
                     "epochs_trained": int(run.progress.get("epoch", 0)), "run": str(out)})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    spreads = {f"{'wn' if c else 'free'}/{a:g}": S.seed_spread(part["epochs_to_test_99"].tolist(), args.epochs)
               for (c, a), part in df.groupby(["weight_norm", "init_scale"])}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    S.write_json(args.out / "summary.json", {"settings": S.settings(args),
                                             "runs": rows, "spreads_epochs_to_test_99": spreads})
    fig = go.Figure()
    for c, name in ((False, "AdamW, weight decay"), (True, "weight norm constrained, no decay")):
        part = df[df["weight_norm"] == c]
        hit = part[part["epochs_to_test_99"].notna()]
        miss = part[part["epochs_to_test_99"].isna()]
        fig.add_trace(go.Scatter(x=hit["init_scale"], y=hit["epochs_to_test_99"], mode="markers", name=name,
                                 marker=dict(size=9, symbol="circle" if not c else "diamond")))
        if len(miss):
            fig.add_trace(go.Scatter(x=miss["init_scale"], y=[args.epochs] * len(miss), mode="markers",
                                     name=f"{name}: not within {args.epochs}", marker=dict(size=10, symbol="triangle-up",
                                                                                             color="grey")))
    fig.update_layout(template="plotly_white", title=f"Epochs to 99 % test accuracy vs initialisation scale (a+b mod {args.p})",
                      xaxis=dict(title="init_scale α", type="log"), yaxis=dict(title="epochs", type="log"))
    fig2 = go.Figure()
    for (a, c, seed), d in norms.items():
        fig2.add_trace(go.Scatter(x=d["epoch"], y=d["live_sum_sq_weights"], mode="lines",
                                  line=dict(dash="dot" if c else "solid", width=1),
                                  name=f"α={a:g}{' (constrained)' if c else ''} s{seed}"))
    fig2.update_layout(template="plotly_white", title="Total squared weights Σθ² over training",
                       xaxis_title="epoch", yaxis=dict(title="Σθ²", type="log"), height=520)
    table = df.pivot_table(index=["weight_norm", "init_scale"], columns="seed", values="epochs_to_test_99").reset_index()
    S.write_report(args.out / "init_scale.html", "Initialisation scale and generalization (Omnigrok)",
                   "<p>Every initial weight × α. Free: AdamW with weight decay; constrained: the total norm held at its "
                   "initial value, no decay.</p>",
                   [("Epochs to generalization", "Seeds as points; triangles did not generalize within the budget.", fig),
                    ("Weight norm", "Σθ² of every run (live measures, every 10 epochs); dotted: constrained runs.", fig2),
                    ("Epochs to 99 % test accuracy per seed", "NaN = not within the budget.", table)])
    print(pd.DataFrame(spreads).T.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
