"""Epochs to generalization as a function of the training fraction (Power et al. 2022 style).

For each training fraction and seed, trains the model (paper architecture and recipe by default,
at a smaller p so the sweep fits on a CPU) and records the first epoch at which test accuracy
reached 99 % (and train accuracy, for the memorization time). From each run's progress measures it
also dates when the circuit formed and the phase boundaries, by our rules and by the paper's
(`grokinterp.detect_phases`: every date is named after its rule). Writes into `--out`:

* `runs.csv` — one row per (fraction, seed): epochs to 99 % train / test accuracy, circuit formed,
  the six phase boundaries, final losses;
* `summary.json` — the same plus the per-fraction medians, the phase rules and the settings;
* `train_fraction.html` — epochs to generalization vs training fraction (log axis), seeds as points.

Runs already present in `--runs-dir` with the same config are reused, so an interrupted sweep
continues where it stopped.

Example:
    python analyses/train_fraction.py --p 59 --fractions 0.3,0.4,0.5,0.6,0.7 --seeds 0,1,2
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
    ap.add_argument("--epochs", type=int, default=4000, help="training budget per run")
    ap.add_argument("--every", type=int, default=None,
                    help="checkpoint every this many epochs (default: the preset's, dense enough to date the phases)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/train_fraction"))
    ap.add_argument("--out", type=Path, default=Path("analyses/out/train_fraction"))
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, frac: float, seed: int):
    """The config of one run of the sweep (the preset with p, operation, fraction, seeds and budget set)."""
    import grokinterp as gi

    every = {} if args.every is None else {"every": args.every}
    return gi.make_config(args.preset, p=args.p, operation=args.operation, frac_train=frac, split_seed=seed,
                          init_seed=seed, epochs=args.epochs, **every)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi

    rows = []
    try:
        for frac in args.fractions:
            for seed in args.seeds:
                cfg = run_config(args, frac, seed)
                out = args.runs_dir / f"{args.operation}-p{args.p}-f{frac:g}-s{seed}"
                run = gi.train(cfg, out, progress=False, overwrite=False)
                s = run.summary()
                measures = gi.progress_measures(run)
                phases = gi.detect_phases(measures)
                circuit = gi.circuit_formation_epoch(measures, test_acc_99_epoch=s.get("test_acc_99_epoch"))
                rules = {b.name: b.rule for b in phases.boundaries()}
                rows.append({"frac_train": frac, "seed": seed, "n_train": run.info["n_train"],
                             "epochs_to_train_99": s.get("train_acc_99_epoch"),
                             "epochs_to_test_99": s.get("test_acc_99_epoch"),
                             "circuit_formed": circuit.epoch, "lead_time": circuit.lead_time,
                             "key_freqs": " ".join(map(str, measures.attrs["key_freqs"])),
                             **phases.dates(),
                             "final_test_acc": s.get("final_test_acc"), "final_test_loss": s.get("final_test_loss"),
                             "run": str(out)})
                print(f"frac {frac:.2f} seed {seed}: test acc ≥ 99% at epoch {rows[-1]['epochs_to_test_99']}", flush=True)
    except gi.GrokinterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)

    def median(x):
        return float(np.median(x.dropna())) if x.notna().any() else None

    med = df.groupby("frac_train")["epochs_to_test_99"].agg(median).rename("median_epochs_to_test_99")
    dated = ["epochs_to_test_99", "circuit_formed", "lead_time", *rules]
    medians = {c: {str(k): (None if v is None or v != v else float(v))
                   for k, v in df.groupby("frac_train")[c].agg(median).items()} for c in dated}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    fig = go.Figure()
    hit = df[df["epochs_to_test_99"].notna()]
    fig.add_trace(go.Scatter(x=hit["frac_train"], y=hit["epochs_to_test_99"], mode="markers",
                             name="test accuracy ≥ 99 % (each seed)",
                             marker=dict(size=9, opacity=0.7)))
    fig.add_trace(go.Scatter(x=med.index, y=med.values, mode="lines+markers", name="test accuracy ≥ 99 % (median)"))
    formed = df[df["circuit_formed"].notna()]
    fig.add_trace(go.Scatter(x=formed["frac_train"], y=formed["circuit_formed"], mode="markers",
                             marker=dict(symbol="diamond-open", size=9), name="circuit formed (restricted accuracy ≥ 99 %)"))
    miss = df[df["epochs_to_test_99"].isna()]
    if len(miss):
        fig.add_trace(go.Scatter(x=miss["frac_train"], y=[args.epochs] * len(miss), mode="markers",
                                 marker=dict(symbol="triangle-up", size=10, color="grey"),
                                 name=f"not generalized within {args.epochs} epochs"))
    fig.update_layout(title=f"Epochs to generalization vs training fraction ({args.operation} mod {args.p})",
                      xaxis_title="fraction of pairs used for training", yaxis_title="epochs (log)",
                      yaxis_type="log", template="plotly_white", legend=dict(orientation="h", y=-0.2))
    fig.write_html(args.out / "train_fraction.html", include_plotlyjs=True)
    summary = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": rows, "median_epochs_to_test_99": medians["epochs_to_test_99"],
               "medians": medians, "phase_rules": rules, "circuit_rule": circuit.rule}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
    print(med.to_string())
    print(f"wrote {args.out}/runs.csv, summary.json, train_fraction.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
