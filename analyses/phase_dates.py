"""Phase dates of several runs side by side: both definitions, their spread over seeds.

For each run directory given, computes the progress measures at every checkpoint (optionally only
up to ``--until`` epochs, so runs trained for different lengths compare on the same span), dates
the phases by our rules and by the paper's (``grokinterp.detect_phases``: every date is named after
its rule), when the circuit formed and when test accuracy passed 99 %. Writes into ``--out``:

* ``runs.csv`` — one row per run: seeds, key frequencies, the six boundaries, circuit formed,
  test accuracy ≥ 99 %, lead time;
* ``summary.json`` — the same, with the median, minimum and maximum of each date over the runs
  and the rule behind each date.

Example:
    python analyses/phase_dates.py checkpoints/quick_s0_0 checkpoints/quick_s1_1 --until 3000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories")
    ap.add_argument("--until", type=int, default=None, help="use only checkpoints up to this epoch")
    ap.add_argument("--out", type=Path, default=Path("analyses/out/phase_dates"), help="output folder")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd

    import grokinterp as gi

    rows, rules = [], {}
    try:
        for path in args.runs:
            run = gi.load_run(path)
            epochs = [int(e) for e in run.epochs if args.until is None or e <= args.until]
            measures = gi.progress_measures(run, epochs=epochs)
            metrics = run.evals
            if args.until is not None:
                metrics = metrics[metrics["epoch"] <= args.until]
            hit = metrics.loc[metrics["test_acc"] >= 0.99, "epoch"]
            t99 = int(hit.iloc[0]) if len(hit) else None
            phases = gi.detect_phases(measures)
            circuit = gi.circuit_formation_epoch(measures, test_acc_99_epoch=t99)
            rules = {b.name: b.rule for b in phases.boundaries()} | {"circuit_formed": circuit.rule}
            cfg = run.config
            rows.append({"run": str(path), "init_seed": cfg.model.init_seed, "split_seed": cfg.task.split_seed,
                         "p": cfg.task.p, "frac_train": cfg.task.frac_train, "last_epoch": epochs[-1],
                         "key_freqs": " ".join(map(str, measures.attrs["key_freqs"])), **phases.dates(),
                         "circuit_formed": circuit.epoch, "test_acc_99_epoch": t99, "lead_time": circuit.lead_time,
                         "excluded_loss_above_chance": circuit.excluded_loss_epoch,
                         "reasons": "; ".join(f"{b.name}: {b.reason}" for b in phases.boundaries() if b.reason)})
            print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in phases.dates().items()), flush=True)
    except gi.GrokinterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    dated = [*rules, "test_acc_99_epoch", "lead_time", "excluded_loss_above_chance"]

    def stat(col, fn):
        x = pd.to_numeric(df[col], errors="coerce").dropna()
        return float(fn(x)) if len(x) else None

    spread = {c: {"median": stat(c, np.median), "min": stat(c, np.min), "max": stat(c, np.max),
                  "found": int(df[c].notna().sum()), "runs": len(df)} for c in dated}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    summary = {"settings": {"runs": [str(r) for r in args.runs], "until": args.until},
               "runs": rows, "spread": spread, "rules": rules}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str, allow_nan=False) + "\n")
    width = max(map(len, dated))
    for c in dated:
        s = spread[c]
        print(f"{c:{width}s}  median {s['median']}  range {s['min']}–{s['max']}  ({s['found']}/{s['runs']} found)")
    print(f"wrote {args.out}/runs.csv, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
