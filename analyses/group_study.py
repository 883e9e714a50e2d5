"""Group families through the whole study (Chughtai et al. 2023, "A toy model of universality").

Trains one run per family — the cyclic group ``C_p``, a dihedral group ``D_n``, ``S5``, and
multiplication mod a prime (the nonzero residues, a cyclic group of order p − 1 in discrete-log
coordinates) — plus further seeds of ``S5``, analyses each with :func:`grokinterp.analyze_run`, and
records per run: the key irreps (frequencies for cyclic structures) and the rule that chose them, the
logit variance explained by their characters ``χ_ρ(s(a,b)·c⁻¹)``, when the circuit formed (restricted
accuracy ≥ 99 %), when test accuracy passed 99 %, the lead time, neuron clusters by irrep, and the
phases. For ``S5`` it counts, over seeds, how often each irrep is key.

Sizes are chosen to run on a 2-core CPU (the ``tiny`` architecture: d_model 64, 4 heads, d_mlp 128;
AdamW lr 1e-2, weight decay 2); ``--preset quick`` uses the paper architecture instead. Runs already in
``--runs-dir`` with the same config are reused, so an interrupted study continues. Writes into ``--out``:

* ``runs.csv`` — one row per run;
* ``summary.json`` — the rows, the S5 irrep counts and the settings;
* ``<run>.html`` — each run's report (``--reports``).

Examples:
    python analyses/group_study.py                              # every family, S5 seeds 0,1,2
    python analyses/group_study.py --only S5 --seeds 0,1,2,3    # more S5 seeds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

#: One run per family: (operation, overrides of the preset). ``p`` only for operations mod p.
FAMILIES = {
    "C59": dict(operation="C59", frac_train=0.4, epochs=4000),
    "D30": dict(operation="D30", frac_train=0.7, epochs=4000),
    "mul59": dict(operation="mul", p=59, frac_train=0.4, epochs=4000),
    "S5": dict(operation="S5", frac_train=0.5, epochs=5000),
}


#: How often each S5 irrep was key in Chughtai et al.'s own runs, read from the ``key_reps.txt`` files of
#: their repository (github.com/bilal-chughtai/rep-theory-mech-interp, ``rep_theory/batch_experiments``;
#: their rule: cosine similarity > 0.005 between the centred logits and ``tr ρ(x)ρ(y)ρ(z⁻¹)``). Their
#: ``s5_5d_b`` is the [3,2] Specht module (so noted in their code), ``s5_5d_a`` the other 5-dim one, [2,2,1].
CHUGHTAI_S5 = {
    "one-layer MLP (embed 256, hidden 128), 40 % of pairs, 250k epochs, 50 seeds": {
        "[4,1] standard": 49, "[3,2]": 10, "[3,1,1]": 0, "[2,2,1]": 18, "[2,1,1,1] standard⊗sign": 17,
        "[1,1,1,1,1] sign": 49, "n_seeds": 50},
    "one-layer transformer (d_model 256), 60 % of pairs, 50k epochs, 4 seeds": {
        "[4,1] standard": 2, "[3,2]": 0, "[3,1,1]": 0, "[2,2,1]": 0, "[2,1,1,1] standard⊗sign": 2,
        "[1,1,1,1,1] sign": 4, "n_seeds": 4},
}


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["paper", "quick", "tiny"], help="base config (default tiny)")
    ap.add_argument("--only", default=",".join(FAMILIES), help=f"families to run (default all: {', '.join(FAMILIES)})")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], metavar="S1,S2,...",
                    help="S5 seeds (each sets the split seed and the init seed); other families use seed 0")
    ap.add_argument("--every", type=int, default=25, help="checkpoint spacing in epochs (default 25)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/group_study"))
    ap.add_argument("--out", type=Path, default=Path("analyses/out/group_study"))
    ap.add_argument("--reports", action="store_true", help="also write each run's HTML report")
    return ap.parse_args(argv)


def _config(gi, preset: str, spec: dict, seed: int, every: int):
    return gi.make_config(preset, **spec, split_seed=seed, init_seed=seed, every=every, eval_every=every,
                          log_early=0, flush_every=40, device="cpu")


def _train(gi, cfg, path: Path):
    from grokinterp.errors import RunError

    try:
        run = gi.load_run(path)
        if run.config == cfg and run.finished:
            return run, 0.0
    except RunError:
        pass
    t = time.perf_counter()
    run = gi.train(cfg, path, overwrite=True, progress=False)
    return run, time.perf_counter() - t


def study_row(name: str, seed: int, run, analysis, seconds: float) -> dict:
    h = analysis.headline()
    keys = h["key_irreps"] if h["key_kind"] == "irrep" else h["key_frequencies"]
    return {
        "run": name, "seed": seed, "task": h["task"], "group": h["group"], "structure": h["structure"],
        "frac_train": h["frac_train"], "epochs": h["epochs_trained"],
        "train_seconds": round(seconds, 1) if seconds else None,  # None: the run was reused
        "key_kind": h["key_kind"], "keys": keys, "key_indices": h["key_frequencies"], "key_rule": h["key_frequency_rule"],
        "logit_fve_key": h["logit_fve_key_freqs"], "logit_fit_terms": h["logit_fit_terms"],
        "logit_fve_label_coordinate": h["logit_fve_label_coordinate"],
        "circuit_formed_epoch": h["circuit_formed_epoch"], "test_acc_99_epoch": h["test_acc_99_epoch"],
        "lead_time_epochs": h["lead_time_epochs"], "excluded_loss_rise_epoch": h["excluded_loss_rise_epoch"],
        "memorization_end": h["memorization_end"], "circuit_formation_end": h["circuit_formation_end"],
        "cleanup_end": h["cleanup_end"], "neurons_explained_fraction": h["neurons_explained_fraction"],
        "neurons_fve_key": h["neurons_fve_key"], "final_test_acc": h["final_test_acc"],
        "final_test_loss": h["final_test_loss"], "generator": h["generator"], "outside_block": h["outside_block"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.groups import group_basis

    args.out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        print(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {unknown}; known: {list(FAMILIES)}", file=sys.stderr)
        return 2
    rows = []
    for name in names:
        for seed in (args.seeds if name == "S5" else [0]):
            cfg = _config(gi, args.preset, FAMILIES[name], seed, args.every)
            label = f"{name}_seed{seed}"
            run, seconds = _train(gi, cfg, args.runs_dir / label)
            t = time.perf_counter()
            analysis = gi.analyze_run(run, max_checkpoints=200)
            row = study_row(name, seed, run, analysis, seconds)
            row["analysis_seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(f"{label}: keys {row['keys']}, logit fit {row['logit_fve_key']}, circuit {row['circuit_formed_epoch']}, "
                  f"test 99 % {row['test_acc_99_epoch']}, lead {row['lead_time_epochs']}", flush=True)
            if args.reports:
                gi.write_report(run, args.out / f"{label}.html", max_checkpoints=200)
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "runs.csv", index=False)
    s5 = [r for r in rows if r["run"] == "S5"]
    counts = Counter(k for r in s5 for k in r["keys"])
    irreps = {name: counts.get(name, 0) for name in group_basis("S5").names[1:]}
    summary = {
        "settings": {"preset": args.preset, "families": {n: FAMILIES[n] for n in names}, "s5_seeds": args.seeds,
                     "checkpoint_every": args.every},
        "runs": rows,
        "s5_irreps_key_in_n_seeds": irreps,
        "s5_seeds_grokked": sum(1 for r in s5 if r["test_acc_99_epoch"] is not None),
        "s5_chughtai_et_al": CHUGHTAI_S5,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"S5: irreps key over {len(s5)} seed(s): {irreps}")
    print(f"wrote {args.out / 'runs.csv'} and {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
