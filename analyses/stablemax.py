"""StableMax and ⊥AdamW without weight decay (Prieto et al. 2025) against AdamW with weight decay.

Prieto et al. ("Grokking at the edge of numerical stability") argue that without regularization the
softmax cross-entropy pushes the logits to grow along the weights ("naïve loss minimization") until the
softmax collapses numerically; StableMax (a linear-growth softmax) and ⊥Grad (gradients orthogonal to
the weights) each let the model generalize without weight decay. Conditions, each over the seeds:

==================  ======================================================================
condition           setting
==================  ======================================================================
``adamw_wd``        AdamW, weight decay 1, softmax cross-entropy (the grokking recipe)
``adamw_nowd``      AdamW, no weight decay, softmax cross-entropy (control)
``stablemax``       AdamW, no weight decay, StableMax cross-entropy
``ortho_adamw``     ⊥AdamW, no weight decay, softmax cross-entropy
``both``            ⊥AdamW, no weight decay, StableMax cross-entropy
==================  ======================================================================

Writes into ``--out``: ``runs.csv`` (epochs to 99 % train / test accuracy, final test accuracy, final
Σθ²), ``summary.json`` (settings, rows, spreads) and ``stablemax.html`` (test accuracy curves per
condition, and the table).

Example:
    python analyses/stablemax.py --p 59 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _study as S

CONDITIONS = {
    "adamw_wd": dict(optimizer="adamw", loss="cross_entropy", weight_decay=1.0),
    "adamw_nowd": dict(optimizer="adamw", loss="cross_entropy", weight_decay=0.0),
    "stablemax": dict(optimizer="adamw", loss="stablemax", weight_decay=0.0),
    "ortho_adamw": dict(optimizer="ortho_adamw", loss="cross_entropy", weight_decay=0.0),
    "both": dict(optimizer="ortho_adamw", loss="stablemax", weight_decay=0.0),
}



def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--frac-train", type=float, default=0.5)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--margin", type=int, default=200)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_stablemax"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/stablemax"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi

    rows, curves = [], {}
    for cond in args.conditions.split(","):
        for seed in args.seeds:
            cfg = gi.make_config("quick", p=args.p, frac_train=args.frac_train, epochs=args.epochs, lr=args.lr,
                                 split_seed=seed, init_seed=seed, eval_every=10, every=50, log_early=0, flush_every=20,
                                 live_every=0, device="cpu", **CONDITIONS[cond])
            out = args.runs_dir / f"add-p{args.p}-{cond}-s{seed}"
            run = S.train_until(cfg, out, margin=args.margin)
            ev = run.evals
            curves[(cond, seed)] = ev[["epoch", "test_acc"]]
            rows.append({"condition": cond, "seed": seed, "epochs_to_train_99": S.epochs_to(run, 0.99, "train_acc"),
                         "epochs_to_test_99": S.epochs_to(run), "final_test_acc": float(ev["test_acc"].iloc[-1]),
                         "final_sum_sq_weights": float(sum(float(v.double().pow(2).sum())
                                                           for v in run.params(-1).values())),
                         "epochs_trained": int(run.progress.get("epoch", 0)), "run": str(out)})
            print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    spreads = {c: S.seed_spread(part["epochs_to_test_99"].tolist(), args.epochs)
               for c, part in df.groupby("condition", sort=False)}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    S.write_json(args.out / "summary.json", {"settings": S.settings(args),
                                             "conditions": CONDITIONS, "runs": rows, "spreads_epochs_to_test_99": spreads})
    fig = go.Figure()
    palette = dict(zip(CONDITIONS, ["#636efa", "#999999", "#ef553b", "#00cc96", "#ab63fa"]))
    for (cond, seed), c in curves.items():
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["test_acc"], mode="lines", line=dict(color=palette[cond], width=1),
                                 name=cond, legendgroup=cond, showlegend=seed == args.seeds[0]))
    fig.update_layout(template="plotly_white", title=f"Test accuracy (a+b mod {args.p}, {args.frac_train:.0%} of pairs)",
                      xaxis_title="epoch", yaxis=dict(title="test accuracy", range=[0, 1.02]))
    table = df.pivot_table(index="condition", columns="seed", values="epochs_to_test_99", sort=False).reset_index()
    S.write_report(args.out / "stablemax.html", "StableMax and ⊥AdamW without weight decay",
                   "<p>Five conditions (see the study's docstring); one line per seed.</p>",
                   [("Test accuracy", "Colour = condition.", fig),
                    ("Epochs to 99 % test accuracy per seed", "NaN = not within the budget.", table)])
    print(pd.DataFrame(spreads).T.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
