"""The LLC of the paper's one-layer transformer over training, 3 seeds (issue 20, items 3 and 5).

Preset ``paper`` (Nanda et al. 2023: a + b mod 113, 30 % of the pairs, d_model 128, 4 heads, d_mlp 512,
full-batch AdamW, weight decay 1) at lr 3e-3 instead of the paper's 1e-3 (``LR`` below says why), three seeds
trained as **one stack**, checkpoints dense enough for 34 estimates per seed across memorization, circuit
formation and cleanup. Then **one** LLC
computation over every chosen checkpoint of the three seeds (checkpoints × chains stacked, in chunks
written to disk as they finish, so a partial result is usable), timed: that is the CPU benchmark of
item 5 (100 checkpoints × 4 chains × 500 draws).

Stages (``--stage``): ``train`` (the stack), ``calibrate`` (a small ε × nβ grid at two checkpoints),
``llc`` (the estimates, chunk by chunk into ``llc_chunks/``), ``report`` (progress measures, dates,
summary, figure). ``all`` runs them in order.

    OMP_NUM_THREADS=1 nice -n 5 python analyses/llc_paper.py --stage train &
    OMP_NUM_THREADS=1 nice -n 5 python analyses/llc_paper.py --stage llc --wait   # beside the training
    python analyses/llc_paper.py --stage calibrate --calibrate-epochs 150          # before choosing SAMPLER
    python analyses/llc_paper.py --stage report

The committed results were made so (training 45 min, the LLC 56 min wall beside it, on the shared 2-core CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import _study as S

SEEDS = (0, 1, 2)
# The paper's lr 1e-3 needs ~8-14k epochs (our seed 0: circuit formed at 5.8k, test accuracy 99 % at 7.8k): at the
# ~140 epochs/min a 3-run stack got on the shared 2-core CPU that is ~90 min, and the LLC needs the CPU after it.
# The closest faithful speed-up: lr 3e-3 (everything else the paper's), which shortens the phases about 3-fold
# (the decay per step, lr x wd, sets their clock), 4,500 epochs, a checkpoint every 150 (34 per seed).
LR = 3e-3
EPOCHS = 4_500
TRAIN = dict(lr=LR, epochs=EPOCHS, every=150, log_early=3, flush_every=5, eval_every=25, live_every=0)


def configs(seeds=SEEDS):
    import grokinterp as gi

    return [gi.make_config("paper", init_seed=s, split_seed=s, device="cpu", **TRAIN) for s in seeds]


def outs(args, seeds=SEEDS):
    return [args.runs_dir / f"paper-s{s}" for s in seeds]


#: devinterp's grokking sampler values (their notebook: ε 3e-3, γ 5, nβ 2) diverge on this model (calibration grids
#: at seed 0's epochs 150 and 4,500: with γ = 5 every chain at ε = 3e-3 went non-finite); γ = 100 keeps the chains
#: local up to ε = 3e-3 at nβ ≤ 10. The study takes ε 1e-3, γ 100, nβ 10 (R̂ ≤ 1.01 at both checkpoints), the values
#: of llc_study.py's tiny / quick parts, so the three transformer studies compare.
DEVINTERP = dict(epsilon=3e-3, gamma=5.0, nbeta=2.0)
SAMPLER = dict(epsilon=1e-3, gamma=100.0, nbeta=10.0, chains=4, draws=500, batch_size=128, seed=0)
CAL_EPS, CAL_NBETA, CAL_GAMMA = (3e-4, 1e-3, 3e-3), (2.0, 10.0, 30.0), (5.0, 100.0)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all", choices=["train", "calibrate", "llc", "report", "all"])
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/llc_paper"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/llc_paper"))
    ap.add_argument("--calibrate-epochs", type=S.ints, default=None,
                    help="seed 0's checkpoints the calibration grid samples (default: 150 and the last); the grid goes to "
                         "calibration.csv (the committed calibration_epoch{150,4500}.csv are two such calls)")
    ap.add_argument("--sampler", default="", help="overrides of SAMPLER, e.g. 'epsilon=1e-3,gamma=100,nbeta=10'")
    ap.add_argument("--chunk", type=int, default=15, help="checkpoints per stacked computation (llc stage)")
    ap.add_argument("--wait", action="store_true",
                    help="llc stage: sample checkpoints as training flushes them, until every run has finished")
    return ap.parse_args(argv)


def sampler(args):
    vals = dict(SAMPLER)
    for item in filter(None, args.sampler.split(",")):
        k, sep, v = item.partition("=")
        k = k.strip()
        if not sep or k not in SAMPLER:
            S.fail(f"--sampler {item!r}: expected NAME=VALUE with NAME one of {', '.join(SAMPLER)}")
        try:
            vals[k] = type(SAMPLER[k])(float(v))
        except ValueError:
            S.fail(f"--sampler {k}: {v!r} is not a number")
    return vals


def calibrate_stage(args):
    import dataclasses

    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.llc import SGLDConfig, calibrate

    run = gi.load_run(outs(args)[0])
    eps = args.calibrate_epochs or [150, int(run.epochs[-1])]
    base = SGLDConfig(**{**SAMPLER, "chains": 2, "draws": 150})
    grids, traces = [], []
    for e in eps:
        for gamma in CAL_GAMMA:
            t0 = time.time()
            g, tr = calibrate(run, CAL_EPS, CAL_NBETA, dataclasses.replace(base, gamma=gamma), epoch=e)
            g.insert(0, "gamma", gamma)
            tr.insert(0, "gamma", gamma)
            tr.insert(0, "epoch", e)
            grids.append(g)
            traces.append(tr)
            print(f"calibration at epoch {e}, γ {gamma:g}: {time.time() - t0:.0f} s", flush=True)
            print(g[["epsilon", "nbeta", "llc_mean", "llc_std", "llc_rhat", "llc_accept", "llc_flags"]].to_string(),
                  flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            tmp = args.out / "calibration.csv.tmp"
            pd.concat(grids).to_csv(tmp, index=False)
            tmp.replace(args.out / "calibration.csv")  # never a half-written table
    return pd.concat(grids), pd.concat(traces)


def llc_stage(args):
    """One LLC computation over every checkpoint of the three seeds, chunk by chunk into ``llc_chunks/``."""
    import os

    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.llc import LLCWarning, SGLDConfig, llc_over_runs

    cfg = SGLDConfig(**sampler(args))
    chunk_dir = args.out / "llc_chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    done = set()
    for f in sorted(chunk_dir.glob("chunk_*.csv")):
        d = pd.read_csv(f)
        done |= {(int(s), int(e)) for s, e in zip(d["seed"], d["epoch"])}
    i = len(list(chunk_dir.glob("chunk_*.csv")))
    while True:
        runs = [gi.load_run(o) for o in outs(args)]
        finished = all(r.finished for r in runs)
        todo = sorted(((j, int(e)) for j, r in enumerate(runs) for e in r.epochs if (SEEDS[j], int(e)) not in done),
                      key=lambda x: (x[1], x[0]))
        if not todo and (finished or not args.wait):
            break
        if not finished and args.wait and len(todo) < min(args.chunk, 6):
            time.sleep(30)
            continue
        part = todo[: args.chunk]
        load0 = os.getloadavg()[0]
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LLCWarning)
            df = llc_over_runs(runs, cfg, order=part, chunk=len(part))
        sec = time.time() - t0
        df.insert(0, "seed", [SEEDS[j] for j in df.pop("run")])
        df["chunk"], df["chunk_seconds"], df["chunk_size"] = i, sec, len(part)
        df["load_start"], df["load_end"] = load0, os.getloadavg()[0]
        tmp = chunk_dir / f".chunk_{i:03d}.csv.tmp"
        df.to_csv(tmp, index=False)
        os.replace(tmp, chunk_dir / f"chunk_{i:03d}.csv")
        done |= {(SEEDS[j], e) for j, e in part}
        print(f"chunk {i}: {len(part)} checkpoints × {cfg.chains} chains × {cfg.draws} draws in {sec:.0f} s "
              f"({sec / len(part):.1f} s per checkpoint), load {load0:.1f} → {os.getloadavg()[0]:.1f}", flush=True)
        i += 1


def benchmark(df, cfg) -> dict:
    """The timed LLC computation (item 5's CPU benchmark): seconds summed over the chunks actually sampled."""
    import platform
    import subprocess

    import numpy as np

    ch = df.drop_duplicates("chunk")
    sec = float(ch["chunk_seconds"].sum())
    n = len(df)
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    per = (ch["chunk_seconds"] / ch["chunk_size"]).to_numpy()
    return {"cpu": cpu, "threads": 1, "checkpoints": n, "chains": cfg["chains"], "draws": cfg["draws"],
            "batch_size": cfg["batch_size"], "chunks": len(ch), "seconds_sampling": round(sec, 1),
            "seconds_per_checkpoint_median": round(float(np.median(per)), 2),
            "seconds_per_checkpoint_range": [round(float(per.min()), 2), round(float(per.max()), 2)],
            "seconds_per_sgld_step_per_run_median": round(float(np.median(per)) / cfg["chains"] / cfg["draws"], 5),
            "load_average_range": [round(float(min(ch["load_start"].min(), ch["load_end"].min())), 1),
                                   round(float(max(ch["load_start"].max(), ch["load_end"].max())), 1)],
            "minutes_for_100x4x500": round(float(np.median(per)) * 100 * (4 / cfg["chains"]) * (500 / cfg["draws"])
                                           / 60, 1),
            "measured_whole": bool(n >= 100 and cfg["chains"] >= 4 and cfg["draws"] >= 500)}


def report_stage(args):
    import json

    import pandas as pd
    from llc_study import figures, first, llc_dates

    import grokinterp as gi
    from grokinterp.analysis.phases import circuit_formation_epoch

    chunks = sorted((args.out / "llc_chunks").glob("chunk_*.csv"))
    if not chunks:
        print(f"{args.out}/llc_chunks: no LLC chunks yet (run --stage llc)", file=sys.stderr)
        return 2
    llc = pd.concat([pd.read_csv(f) for f in chunks], ignore_index=True).sort_values(["seed", "epoch"])
    cfg = sampler(args)
    frames, rows = [], []
    for seed, out in zip(SEEDS, outs(args)):
        d = llc[llc["seed"] == seed]
        if d.empty:
            continue
        run = gi.load_run(out)
        meas = gi.progress_measures(run, epochs=d["epoch"].tolist())
        df = d.merge(meas, on="epoch")
        frames.append(df)
        gen = S.epochs_to(run)  # test accuracy ≥ 99 %, at the evaluations (every 25 epochs)
        row = {"seed": seed, "run": str(run.path), "memorized": first(df, "train_acc"),
               "generalized": gen, "restricted_99": first(df, "restricted_acc"),
               "n_checkpoints": len(df), "n_unreliable": int((~df["llc_reliable"].astype(bool)).sum()),
               "llc_start": float(df["llc_mean"].iloc[0]), **llc_dates(df)}
        try:
            cf = circuit_formation_epoch(meas, test_acc_99_epoch=gen)
            row.update(circuit_formed=cf.epoch, excluded_loss_above_chance=cf.excluded_loss_epoch)
        except gi.GrokinterpError as e:
            row.update(circuit_formed=None, circuit_note=str(e))
        for key in ("llc_peak_epoch", "llc_half_fall_epoch"):
            for ref in ("circuit_formed", "generalized"):
                if row.get(key) is not None and row.get(ref) is not None:
                    row[f"{key}_minus_{ref}"] = row[key] - row[ref]
        rows.append(row)
    table = pd.concat(frames, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    keep = ["seed", "epoch", "llc_mean", "llc_std", "llc_chain_0", "llc_chain_1", "llc_chain_2", "llc_chain_3",
            "llc_init_loss", "llc_loss_mean", "llc_rhat", "llc_accept", "llc_reliable", "llc_flags", "train_loss",
            "train_acc", "test_loss", "test_acc", "restricted_loss", "restricted_acc", "excluded_loss",
            "excluded_acc", "sum_sq_weights", "gini_W_E", "chunk"]
    table[[c for c in keep if c in table.columns]].to_csv(args.out / "llc_paper.csv", index=False)
    keys = ["memorized", "circuit_formed", "excluded_loss_above_chance", "generalized", "llc_peak_epoch",
            "llc_half_fall_epoch", "llc_start", "llc_peak", "llc_final", "llc_peak_epoch_minus_circuit_formed",
            "llc_half_fall_epoch_minus_circuit_formed", "llc_peak_epoch_minus_generalized",
            "llc_half_fall_epoch_minus_generalized"]
    summary = {"settings": {**S.settings(args), "train": TRAIN, "preset": "paper", "seeds": list(SEEDS)},
               "sampler": {**cfg, "nbeta_used": cfg["nbeta"]},
               "reference": {"devinterp_mlp_curve": "≈ 21 at the start, peak ≈ 50 at memorization, ≈ 22–24 after "
                                                    "generalization (their MLP, p = 53)",
                             "devinterp_sampler": DEVINTERP,
                             "paper_phases_lr_1e-3": "memorization 0–1.4k, circuit formation 1.4k–9.4k, cleanup "
                                                     "9.4k–14k epochs"},
               "runs": rows, **{k: S.seed_spread([r.get(k) for r in rows]) for k in keys},
               "benchmark": benchmark(llc, cfg)}
    if (args.out / "train.json").exists():
        summary["training"] = json.loads((args.out / "train.json").read_text())
    S.write_json(args.out / "summary.json", summary)
    S.write_report(args.out / "llc_paper.html", "The LLC of the paper's one-layer transformer, 3 seeds",
                   "<p>SGLD estimates of the local learning coefficient (grokinterp.analysis.llc.llc_over_runs: the "
                   "three seeds' checkpoints in one stacked computation) beside the restricted, excluded and test "
                   "loss. Preset <code>paper</code> with lr 3e-3 (see analyses/README.md).</p>",
                   figures({"paper": summary}, {"paper": table}))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "settings")}, indent=1, default=str))
    return 0


def train(args):
    cfgs = configs()
    sec = S.train_or_resume_stack(cfgs, outs(args))
    print(f"trained {len(cfgs)} seeds as one stack in {sec:.0f} s", flush=True)
    S.write_json(args.out / "train.json", {"seconds": round(sec), "runs": len(cfgs), "epochs": EPOCHS, "threads": 1})


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage in ("train", "all"):
        train(args)
    if args.stage in ("calibrate", "all"):
        calibrate_stage(args)
    if args.stage in ("llc", "all"):
        llc_stage(args)
    if args.stage in ("report", "all"):
        return report_stage(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
