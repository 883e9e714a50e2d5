"""Epochs to generalization as a function of the training fraction (Power et al. 2022 style).

A sweep over the training fraction and seeds (each seed sets both the split and the init seed)
of a recipe (`quick` by default, at a smaller p so it fits on a CPU), trained stacked by
`grokinterp.sweep`; records per run the first epoch at which test accuracy reached 99 % (and
train accuracy, for the memorization time). From each run's progress measures it also dates when
the circuit formed and the phase boundaries, by our rules and by the paper's
(`grokinterp.detect_phases`: every date is named after its rule). Writes into `--out`:

* `runs.csv` — one row per (fraction, seed): epochs to 99 % train / test accuracy, circuit formed,
  the six phase boundaries, final losses;
* `summary.json` — the same plus the per-fraction medians, the phase rules and the settings;
* `train_fraction.html` — epochs to generalization vs training fraction (log axis), seeds as points.

The runs live in the sweep directory `--runs-dir` (one run directory per point, `grokinterp
sweep-report` works on it); running the script again skips finished runs and resumes interrupted
ones. The same sweep as a spec file: `analyses/specs/train_fraction_p59.toml`.

Example:
    python analyses/train_fraction.py --p 59 --fractions 0.3,0.4,0.5,0.6,0.7 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", choices=["paper", "quick", "tiny"], help="base config (default quick)")
    ap.add_argument("--p", type=int, default=59, help="modulus (default 59)")
    ap.add_argument("--operation", default="add")
    ap.add_argument("--fractions", type=_floats, default=[0.3, 0.4, 0.5, 0.6, 0.7], metavar="F1,F2,...")
    ap.add_argument("--seeds", type=_ints, default=[0, 1], metavar="S1,S2,...",
                    help="seeds; each sets both the split seed and the init seed")
    ap.add_argument("--epochs", type=int, default=5000, help="training budget per run")
    ap.add_argument("--every", type=int, default=None,
                    help="checkpoint every this many epochs (default: the preset's, dense enough to date the phases)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/train_fraction"), help="the sweep directory")
    ap.add_argument("--out", type=Path, default=Path("analyses/out/train_fraction"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd

    import grokinterp as gi
    from grokinterp.sweeps.table import sweep_table
    from grokinterp.viz.sweep_plots import data_fraction_curves

    fixed = {"p": args.p, "operation": args.operation, "epochs": args.epochs}
    if args.every is not None:
        fixed["every"] = args.every
    spec = {"name": f"epochs to generalization vs training fraction, {args.operation} mod {args.p}",
            "preset": args.preset, "seeds": args.seeds, "grid": {"frac_train": args.fractions}, "fixed": fixed}
    try:
        sweep = gi.sweep(spec, args.runs_dir)
    except gi.GrokinterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = sweep_table(sweep, analyse=False)
    df = table.rename(columns={"train_acc_99_epoch": "epochs_to_train_99", "test_acc_99_epoch": "epochs_to_test_99"})
    dates, rules, circuit_rule = [], {}, None
    for d, test99 in zip(df["run"], df["epochs_to_test_99"]):
        run = gi.load_run(d)
        measures = gi.progress_measures(run)
        phases = gi.detect_phases(measures)
        circuit = gi.circuit_formation_epoch(measures, test_acc_99_epoch=None if test99 != test99 else test99)
        rules.update({b.name: b.rule for b in phases.boundaries()})
        circuit_rule = circuit.rule
        dates.append({"n_train": run.info["n_train"], "circuit_formed": circuit.epoch, "lead_time": circuit.lead_time,
                      "key_freqs": " ".join(map(str, measures.attrs["key_freqs"])), **phases.dates()})
    # the table's n_train is the config field task.n_train (a subset size, unset here); ours is the run's count
    df = df.drop(columns=["n_train"], errors="ignore").reset_index(drop=True).join(pd.DataFrame(dates))
    cols = ["frac_train", "seed", "n_train", "epochs_to_train_99", "epochs_to_test_99", "circuit_formed", "lead_time",
            "key_freqs", *rules, "final_test_acc", "final_test_loss", "run"]
    df = df[cols]

    def median(x):
        x = x.dropna()
        return float(np.median(x)) if len(x) else None

    dated = ["epochs_to_test_99", "circuit_formed", "lead_time", *rules]
    medians = {c: {str(k): median(v) for k, v in df.groupby("frac_train")[c]} for c in dated}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    fig = data_fraction_curves(table, budget=args.epochs,
                               title=f"Epochs to generalization vs training fraction ({args.operation} mod {args.p})")
    fig.write_html(args.out / "train_fraction.html", include_plotlyjs=True)
    rows = json.loads(df.to_json(orient="records"))  # NaN -> null
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "sweep": str(sweep.path), "runs": rows, "median_epochs_to_test_99": medians["epochs_to_test_99"],
               "medians": medians, "phase_rules": rules, "circuit_rule": circuit_rule}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
    print(df.groupby("frac_train")["epochs_to_test_99"].agg(median).rename("median_epochs_to_test_99").to_string())
    print(f"wrote {args.out}/runs.csv, summary.json, train_fraction.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
