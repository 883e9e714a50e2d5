"""Seed statistics of a recipe: how much the numbers of Nanda et al. (2023) move from seed to seed.

Trains (or resumes) the sweep of `--spec` — by default the `quick` recipe over 8 seeds, each
setting the split and the init seed, trained as one stack — analyses every finished run and
writes, into `--out`:

* `summary.json` — per quantity: the value of every seed, median, quartiles, min, max, and the
  published value (docs/paper_numbers.md) where there is one;
* `distributions.csv` — the same as a table; `table.csv` — one row per run;
* `report.html` — the sweep report (seed distributions against the published values, every run's
  curves).

The published values come from the paper's main run (p = 113, 30 % of the pairs, 40k epochs);
the `quick` recipe is p = 97, 40 %, 3k epochs, so phase epochs compare in shape, not in value.

Example:
    python analyses/seed_statistics.py                       # quick recipe, 8 seeds, resumable
    python analyses/seed_statistics.py --spec my_seeds.toml --sweep-dir checkpoints/my_seeds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Published values (docs/paper_numbers.md): main run, p = 113, 30 % data, wd 1, 40k epochs.
PAPER = {
    "n_key_frequencies": (5, "5 on the main seed (14, 35, 41, 42, 52); 3–4 on other seeds"),
    "memorization_end": (1400, "0–1.4k"),
    "circuit_formation_end": (9400, "1.4k–9.4k"),
    "cleanup_end": (14000, "9.4k–14k"),
    "neurons_explained_fraction": (0.846, "433 / 512 (84.6 %)"),
    "logit_fve_key_freqs": (0.95, "≈ 95 %"),
}
QUANTITIES = ("n_key_frequencies", "memorization_end", "circuit_formation_end", "cleanup_end",
              "circuit_formed_epoch", "excluded_loss_rise_epoch", "test_acc_99_epoch", "lead_time_epochs",
              "neurons_explained_fraction", "logit_fve_key_freqs", "final_test_loss")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, default=HERE / "specs" / "seed_statistics_quick.toml")
    ap.add_argument("--sweep-dir", type=Path, default=Path("checkpoints/seed_statistics_quick"))
    ap.add_argument("--out", type=Path, default=Path("analyses/out/seed_statistics"))
    ap.add_argument("--max-checkpoints", type=int, default=200, help="checkpoints each run study uses")
    ap.add_argument("--no-train", action="store_true", help="analyse what the sweep holds, train nothing")
    return ap.parse_args(argv)


def distributions(table) -> list[dict]:
    import numpy as np
    import pandas as pd

    done = table[table["finished"].fillna(False).astype(bool)]
    rows = []
    for q in QUANTITIES:
        v = pd.to_numeric(done.get(q), errors="coerce")
        vals = v.dropna().to_numpy(dtype=float)
        ref = PAPER.get(q)
        rows.append({
            "quantity": q, "n": int(len(vals)), "n_runs": int(len(done)),
            "per_seed": {str(s): (None if pd.isna(x) else float(x)) for s, x in zip(done["seed"], v)},
            **({"median": float(np.median(vals)), "q25": float(np.percentile(vals, 25)),
                "q75": float(np.percentile(vals, 75)), "min": float(vals.min()), "max": float(vals.max())}
               if len(vals) else {}),
            "paper": ref[1] if ref else None,
        })
    rows.append({"quantity": "key_frequencies", "n_runs": int(len(done)),
                 "per_seed": {str(s): k for s, k in zip(done["seed"], done["key_frequencies"])},
                 "paper": PAPER["n_key_frequencies"][1]})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd

    import grokinterp as gi
    from grokinterp.viz.sweep_report import write_sweep_report

    try:
        if args.no_train:
            sweep = gi.load_sweep(args.sweep_dir)
        else:
            sweep = gi.sweep(args.spec, args.sweep_dir)
    except gi.GrokinterpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    _, table, _ = write_sweep_report(sweep, args.out / "report.html", max_checkpoints=args.max_checkpoints,
                                     csv=args.out / "table.csv", progress=True, return_table=True)
    rows = distributions(table)
    flat = pd.DataFrame([{k: v for k, v in r.items() if k != "per_seed"} for r in rows])
    flat.to_csv(args.out / "distributions.csv", index=False)
    summary = {"spec": sweep.spec.to_dict(), "sweep": str(sweep.path), "runs_finished": int(table["finished"].sum()),
               "runs": len(table), "distributions": rows}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(flat.to_string(index=False))
    print(f"wrote {args.out}/summary.json, distributions.csv, table.csv, report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
