"""The live early warning over seeds: when it fired, when test accuracy passed 99 %, the estimate's error.

Trains the ``quick`` recipe (a+b mod 97, 40 % of pairs, AdamW lr 2e-3, weight decay 1; live measures
every 25 epochs) for each seed, and reads from each run's metrics table the early warning
(:func:`grokinterp.analysis.early.first_warning`: restricted accuracy ≥ 99 % while test accuracy < 90 %,
with the time-shift estimate of the epoch test accuracy will pass 99 %). The warning is recomputed from
the recorded live columns, so it reflects the current rule even for runs trained earlier. Writes into
``--out``: ``runs.csv`` (per seed: warning epoch, test accuracy then, estimate, actual 99 % epoch, lead,
error), ``summary.json`` (with spreads) and ``early_warning.html`` (restricted and test accuracy of every
run with the warning and the estimate marked, and the table).

Runs stop ``--margin`` epochs after test accuracy reached 99 % and are reused when the script runs again.

Example:
    python analyses/early_warning.py --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _study as S


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--p", type=int, default=None, help="modulus (default: the preset's)")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2, 3, 4])
    ap.add_argument("--live-every", type=int, default=25)
    ap.add_argument("--margin", type=int, default=300)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_early_warning"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/early_warning"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi
    from grokinterp.analysis.early import estimate_test99_epoch, first_warning, live_table

    rows, tables = [], {}
    for seed in args.seeds:
        kw = dict(split_seed=seed, init_seed=seed, live_every=args.live_every, device="cpu")
        if args.p is not None:
            kw["p"] = args.p
        cfg = gi.make_config(args.preset, **kw)
        out = args.runs_dir / f"{args.preset}-p{cfg.task.p}-s{seed}"
        run = S.train_until(cfg, out, margin=args.margin)
        w = first_warning(run.metrics)
        t99 = S.epochs_to(run)
        tables[seed] = live_table(run.metrics)
        row = {"seed": seed, "warning_epoch": w.epoch if w else None, "test_acc_at_warning": w.test_acc if w else None,
               "estimate": w.estimate if w else None, "test_acc_99_epoch": t99,
               "lead": (t99 - w.epoch) if (w and t99 is not None) else None,
               "estimate_error": (w.estimate - t99) if (w and w.estimate is not None and t99 is not None) else None,
               "run": str(out)}
        row["relative_error"] = (row["estimate_error"] / row["lead"]) if row["estimate_error"] is not None and row["lead"] \
            else None
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows)
    fired = df[df["warning_epoch"].notna()]
    summary = {
        "settings": S.settings(args),
        "rule": "restricted accuracy ≥ 99 % while test accuracy < 90 % (first live epoch)",
        "method": estimate_test99_epoch(pd.DataFrame())[1],  # the estimate's method, in words
        "runs": rows,
        "n_fired": int(len(fired)), "n_runs": int(len(df)),
        "n_fired_before_test_99": int(((fired["warning_epoch"] < fired["test_acc_99_epoch"])).sum()),
        "lead": S.seed_spread(fired["lead"].dropna().tolist()),
        "estimate_error": S.seed_spread(fired["estimate_error"].dropna().tolist()),
        "abs_estimate_error_median": float(np.median(np.abs(fired["estimate_error"].dropna()))) if len(fired) else None,
        "relative_error": S.seed_spread(fired["relative_error"].dropna().tolist()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    S.write_json(args.out / "summary.json", summary)
    fig = go.Figure()
    for i, (seed, t) in enumerate(tables.items()):
        color = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692"][i % 7]
        fig.add_trace(go.Scatter(x=t["epoch"], y=t["restricted_acc"], mode="lines", line=dict(color=color, dash="dot"),
                                 name=f"s{seed} restricted acc", legendgroup=str(seed)))
        fig.add_trace(go.Scatter(x=t["epoch"], y=t["test_acc"], mode="lines", line=dict(color=color),
                                 name=f"s{seed} test acc", legendgroup=str(seed)))
        r = df[df["seed"] == seed].iloc[0]
        if r["warning_epoch"] is not None and not pd.isna(r["warning_epoch"]):
            fig.add_vline(x=float(r["warning_epoch"]), line=dict(color=color, width=1))
            if r["estimate"] is not None and not pd.isna(r["estimate"]):
                fig.add_vline(x=float(r["estimate"]), line=dict(color=color, width=1, dash="dash"))
    fig.update_layout(template="plotly_white", height=520, title="Restricted (dotted) and test accuracy; warning "
                      "(solid line) and its estimate of 99 % test accuracy (dashed)",
                      xaxis_title="epoch", yaxis=dict(title="accuracy", range=[0, 1.02]))
    S.write_report(args.out / "early_warning.html", "Live early warning of grokking",
                   f"<p>{summary['rule']}; estimate: time-shift matching (see grokinterp.analysis.early).</p>",
                   [("Accuracy curves", "Live measures every few epochs.", fig),
                    ("Per seed", "lead = test 99 % − warning; error = estimate − test 99 %.", df.drop(columns=["run"]))])
    print(df.drop(columns=["run"]).to_string())
    print({k: summary[k] for k in ("n_fired", "n_fired_before_test_99", "lead", "estimate_error")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
