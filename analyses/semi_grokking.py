"""Semi-grokking and hysteresis (Varma et al. 2023; issue 21, item 3): from scratch near D_crit against ungrokking.

Reads what the other circuit-efficiency studies wrote and trains nothing:

* **from scratch**: true-label runs of ``analyses/circuit_efficiency.py`` (a + b mod 59, the ``tiny`` width,
  AdamW lr 1e-2, weight decay 1, full batch) at several budgets — its ``runs.csv`` files, one per budget
  (``--scratch DIR`` repeated: 1,500 epochs in ``results/circuit_efficiency``, 6,000 in
  ``results/semi_grokking``, 40,000 in ``results/semi_grokking_long``);
* **ungrokking**: the children of ``analyses/ungrokking.py`` — grokked parents (D = 2,800) continued on D′ of
  their own pairs at weight decays 0.3, 1 and 3 (``--ungrok DIR``).

Per training-set size, the final test accuracy (median and range over seeds) from scratch at each budget and
after ungrokking at each weight decay, on one figure: where the two curves disagree (the grokked network
keeps generalizing at a D from which training from scratch does not find the circuit within the budget) is
the hysteresis Varma et al. describe; middling final accuracy near the threshold is semi-grokking. A run whose
test accuracy is in 5–95 % at the end of its budget is counted as *middling*; the summary lists them with
their final train accuracy (Adam's late spikes also leave middling values, and they show in train accuracy).

With ``--runs-dir DIR`` (the long study's runs) each from-scratch run's best test accuracy over training and
the epoch it first passed 50 % and 95 % are added (the runs' metrics, when the runs are on this machine).

Writes into ``--out``: ``hysteresis.csv`` (one row per D × condition: median, min, max, n), ``middling.csv``,
``summary.json`` and ``hysteresis.html``.

Example:
    python analyses/semi_grokking.py --scratch analyses/results/circuit_efficiency:1500 \\
        --scratch analyses/results/semi_grokking:6000 --scratch analyses/results/semi_grokking_long:40000 \\
        --ungrok analyses/results/ungrokking --runs-dir checkpoints/semi_grokking_long \\
        --out analyses/results/semi_grokking_long
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import _study as S

MIDDLE = (0.05, 0.95)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scratch", action="append", default=[], metavar="DIR:EPOCHS",
                    help="a circuit_efficiency results folder (its runs.csv) and the budget its runs trained")
    ap.add_argument("--ungrok", type=Path, default=Path("analyses/results/ungrokking"),
                    help="the ungrokking results folder (its runs.csv)")
    ap.add_argument("--runs-dir", type=Path, default=None, help="the long study's runs (best accuracy, crossings)")
    ap.add_argument("--out", type=Path, default=Path("analyses/results/semi_grokking_long"))
    return ap.parse_args(argv)


def _scratch_frames(specs: list[str]):
    import pandas as pd

    frames = []
    for spec in specs:
        folder, sep, epochs = spec.rpartition(":")
        if not sep or not epochs.isdigit():
            S.fail(f"--scratch: expected DIR:EPOCHS, got {spec!r}")
        path = Path(folder) / "runs.csv"
        if not path.is_file():
            S.fail(f"--scratch: {path} not found")
        df = pd.read_csv(path)
        missing = {"D", "kind", "seed", "test_acc", "train_acc"} - set(df.columns)
        if missing:
            S.fail(f"--scratch: {path} lacks the column(s) {sorted(missing)}")
        df = df[df["kind"] == "generalizing"].copy()
        df["condition"] = f"from scratch, {int(epochs):,} epochs"
        df["budget"] = int(epochs)
        frames.append(df[["D", "seed", "test_acc", "train_acc", "condition", "budget"]])
    return frames


def _crossings(runs_dir: Path):
    """Per run of the long study: best test accuracy, its epoch, first epochs ≥ 50 % and ≥ 95 %."""
    import pandas as pd

    import grokinterp as gi

    rows = []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        try:
            run = gi.load_run(d)
        except gi.GrokinterpError as e:
            print(f"  {d}: skipped ({e})", file=sys.stderr)
            continue
        ev = run.evals
        if not len(ev):
            continue
        best = int(ev["test_acc"].idxmax())
        rows.append({"D": run.config.task.n_train, "seed": run.config.model.init_seed,
                     "best_test_acc": float(ev["test_acc"].max()), "best_epoch": int(ev["epoch"].loc[best]),
                     "epoch_test_50": S.epochs_to(ev, 0.5), "epoch_test_95": S.epochs_to(ev, 0.95),
                     "epochs_trained": int(ev["epoch"].iloc[-1])})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import plotly.graph_objects as go

    if not args.scratch:
        S.fail("--scratch: give at least one DIR:EPOCHS")
    frames = _scratch_frames(args.scratch)
    upath = args.ungrok / "runs.csv"
    if not upath.is_file():
        S.fail(f"--ungrok: {upath} not found")
    ung = pd.read_csv(upath)
    ung = ung.rename(columns={"D_prime": "D", "test_acc_parent_test": "test_acc_parent"})
    ung["condition"] = [f"ungrokking, weight decay {w:g}" for w in ung["weight_decay"]]
    ung["budget"] = None
    frames.append(ung[["D", "seed", "test_acc", "train_acc", "condition", "budget"]])
    allrows = pd.concat(frames, ignore_index=True)
    table = (allrows.groupby(["condition", "D"], sort=False)["test_acc"]
             .agg(median="median", min="min", max="max", n="count").reset_index())
    lo, hi = MIDDLE
    mid = allrows[(allrows["test_acc"] > lo) & (allrows["test_acc"] < hi)].sort_values(["condition", "D", "seed"])
    cross = _crossings(args.runs_dir) if args.runs_dir is not None else pd.DataFrame()

    def threshold(cond: str):
        """Smallest D from which every larger D has a median ≥ 95 % (None: no such D)."""
        g = table[table["condition"] == cond].sort_values("D")
        ok = None
        for D, med in zip(g["D"][::-1], g["median"][::-1]):
            if med < 0.95:
                break
            ok = int(D)
        return ok

    summary = {"settings": S.settings(args), "middle": MIDDLE,
               "thresholds_median_95": {c: threshold(c) for c in table["condition"].unique()},
               "table": table.to_dict("records"), "middling": mid.to_dict("records"),
               "long_runs": cross.to_dict("records")}
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "hysteresis.csv", index=False)
    mid.to_csv(args.out / "middling.csv", index=False)
    if len(cross):
        cross.to_csv(args.out / "long_runs.csv", index=False)
    S.write_json(args.out / "summary.json", summary)

    fig = go.Figure()
    for cond, g in table.groupby("condition", sort=False):
        g = g.sort_values("D")
        dash = "dot" if cond.startswith("ungrokking") else "solid"
        fig.add_trace(go.Scatter(x=g["D"], y=g["median"], mode="lines+markers", name=cond, line=dict(dash=dash),
                                 error_y=dict(type="data", symmetric=False, array=g["max"] - g["median"],
                                              arrayminus=g["median"] - g["min"])))
    fig.update_layout(template="plotly_white", xaxis_type="log", height=520, xaxis_title="training pairs D (or D′)",
                      yaxis_title="final test accuracy (median, min–max over seeds)",
                      title="From scratch vs ungrokking: a + b mod 59")
    sections = [("Hysteresis", "Solid: true-label runs trained from scratch on D pairs for the budget named. "
                 "Dotted: grokked parents (D = 2,800) continued on D′ of their pairs.", fig),
                ("Per condition and size", "Final test accuracy over seeds.", table),
                ("Middling runs", f"Final test accuracy in {lo:.0%}–{hi:.0%} at the end of the budget.", mid)]
    if len(cross):
        sections.append(("The long runs", "Best test accuracy over training and the first epochs at 50 % and 95 %.",
                         cross))
    S.write_report(args.out / "hysteresis.html", "Semi-grokking and hysteresis (Varma et al. 2023), a + b mod 59",
                   "<p>Reads <code>analyses/circuit_efficiency.py</code>'s and <code>analyses/ungrokking.py</code>'s "
                   "results; trains nothing.</p>", sections)
    print(table.to_string(index=False))
    print("thresholds (median ≥ 95 % from there up):", summary["thresholds_median_95"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
