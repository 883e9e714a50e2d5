"""A phase diagram: epochs to generalise over training fraction × weight decay, for two operations.

Trains (or resumes) the sweep of `--spec` — by default a + b and a / b mod 31 with the `tiny`
recipe, 5 training fractions × 4 weight decays × 2 seeds, stacked — and writes into `--out`:

* `summary.csv` — one row per cell: runs, how many generalised, the regime (comprehension,
  grokking, memorization, confusion; rules in grokinterp.sweeps.table.REGIMES), median (censored)
  and quartiles of the epochs to 99 % test accuracy; `table.csv` — one row per run;
* `summary.json` — the cells, the settings, and the grid printed as text;
* `report.html` — the sweep report: the phase diagram (Liu et al. 2022), the data-fraction
  curves beside Power et al. 2022's, every run's curves.

Example:
    python analyses/phase_diagram.py                           # resumable
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=HERE / "specs" / "phase_diagram.toml")
    ap.add_argument("--sweep-dir", type=Path, default=Path("checkpoints/phase_diagram"))
    ap.add_argument("--out", type=Path, default=Path("analyses/out/phase_diagram"))
    ap.add_argument("--no-train", action="store_true", help="analyse what the sweep holds, train nothing")
    return ap.parse_args(argv)


def grid_text(summary, facet: str = "operation") -> str:
    """The cells as text: rows weight decay, columns training fraction, entries median epochs (— never)."""
    lines = []
    for f, df in summary.groupby(facet):
        xs = sorted(df["frac_train"].unique())
        lines.append(f"{facet} = {f}: median epochs to 99 % test accuracy (k/n seeds that got there)")
        lines.append("  wd \\ frac " + "".join(f"{x:>12g}" for x in xs))
        for wd, row in df.groupby("weight_decay"):
            cells = []
            for x in xs:
                c = row[row["frac_train"] == x].iloc[0]
                m = c["test_acc_99_epoch_censored_median"]
                cells.append(f"{('—' if m != m else f'{m:.0f}')} ({int(c['n_grokked'])}/{int(c['n_runs'])})".rjust(12))
            lines.append(f"  {wd:>9g} " + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import grokinterp as gi
    from grokinterp.viz.sweep_report import write_sweep_report

    try:
        sweep = gi.load_sweep(args.sweep_dir) if args.no_train else gi.sweep(args.spec, args.sweep_dir)
    except gi.GrokinterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    _, table, summary = write_sweep_report(sweep, args.out / "report.html", analyse=False, csv=args.out / "table.csv",
                                           return_table=True)
    text = grid_text(summary)
    cols = [c for c in ("operation", "weight_decay", "frac_train", "n_runs", "n_grokked", "regime",
                        "test_acc_99_epoch_censored_median", "test_acc_99_epoch_q25", "test_acc_99_epoch_q75",
                        "train_acc_99_epoch_median", "final_test_acc_median") if c in summary]
    (args.out / "summary.json").write_text(json.dumps(
        {"spec": sweep.spec.to_dict(), "sweep": str(sweep.path), "runs": len(table),
         "runs_finished": int(table["finished"].sum()), "grid": text.splitlines(),
         "cells": summary[cols].to_dict(orient="records")}, indent=2, default=str) + "\n")
    print(text)
    print(f"wrote {args.out}/summary.json, summary.csv, table.csv, report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
