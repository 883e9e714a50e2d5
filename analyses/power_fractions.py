"""Power et al. 2022 on their own model: x+y, x−y, x·y, x/y mod 97 at a few training fractions, ≥ 3 seeds.

Their setting (preset ``power``; ``openai/grok``, see docs/anchors.md): a 2-layer post-LN causal decoder,
width 128, 4 heads, ReLU MLP 512, fixed sinusoidal positions, LayerNorm biases only; tokens ``[x, op, y, =]``;
AdamW lr 1e-3, betas 0.9 / 0.98, weight decay 1 on every parameter, warm-up over 10 updates, batches of
``min(512, ceil(n_train / 2))`` (their ``calculate_batchsize``), a budget of 10^5 updates. Operations
``add``, ``sub``, ``mul`` use all 97² pairs (theirs too); ``div`` (x / y) the pairs with y ≠ 0 (theirs:
``a / b = c`` for every ``c`` and ``b ≠ 0``, the same 9,312 equations).

Each operation × fraction is one stack of its seeds (init, split and sampler seed alike); with
``--one-stack`` every operation of a fraction trains in one stack (their steps per epoch agree at the
fractions used), so under a wall-clock limit all operations get the same number of steps. A stack stops
once every run has held test accuracy ≥ 99 % for ``--margin`` epochs, at ``--steps`` optimizer steps, at
``--max-minutes`` of wall time, or at the ``--until`` wall-clock time (UTC, ``HH:MM``): the study is sized
to the machine, and runs cut short stay resumable (run the study again with the same budget). Stacks run
from the largest fraction down, so the cheapest generalizations come first and a partial study is usable.

Measured per run: optimizer steps to 95 % and 99 % test accuracy (first evaluation at or above; test
accuracy over the whole test split every ``--eval-steps`` steps, rounded to whole epochs), steps to 99 %
train accuracy, and the steps trained. Per operation: the smallest fraction at which a majority of the
seeds reached 99 % within the steps trained.

Writes into ``--out``: ``runs.csv`` (one row per run), ``summary.json`` (settings, per cell medians and
ranges, minimum fractions, wall times) and ``power_fractions.html``. Results: analyses/README.md.

Example:
    python analyses/power_fractions.py --ops add,sub,mul,div --fracs 0.8,0.5 --seeds 0,1,2 --steps 1500
    python analyses/power_fractions.py --report-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from pathlib import Path

import _study as S
from grokfast_lee import StopStack, first_step

OPS = {"add": "x+y", "sub": "x−y", "mul": "x·y", "div": "x/y"}
THEIRS = {
    "source": "Power et al. 2022, Figure 1 and Appendix A.1 (arXiv:2201.02177); openai/grok",
    "budget_steps": 100_000,
    "claim": "steps to 99 % validation accuracy grow sharply as the training fraction falls (x/y: from about "
             "10^3 steps at large fractions to the 10^5 budget); below a minimum fraction per operation no run "
             "generalizes within 10^5 updates. Values read off their figures are approximate; the exact "
             "per-operation minima are not in our references",
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="add,sub,mul,div", help=f"comma-separated, of {', '.join(OPS)}")
    ap.add_argument("--fracs", type=S.floats, default=[0.8, 0.5], help="training fractions (largest first)")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2], help="init, split and sampler seed of each run")
    ap.add_argument("--steps", type=int, default=100_000, help="optimizer-step budget per run (theirs 10^5)")
    ap.add_argument("--eval-steps", type=int, default=75, help="steps between evaluations (rounded to epochs)")
    ap.add_argument("--margin", type=int, default=10, help="epochs a stack holds ≥ 99 %% test accuracy before it stops")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop each stack after this much wall time")
    ap.add_argument("--until", default=None, help="UTC HH:MM: start no stack after it and stop the running one there")
    ap.add_argument("--one-stack", action="store_true",
                    help="train every operation of a fraction in one stack (their steps per epoch agree), so all "
                         "operations advance together under a wall-clock limit")
    ap.add_argument("--report-only", action="store_true", help="train nothing; summarise the runs on disk")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_power_fractions"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/power_fractions"))
    return ap.parse_args(argv)


def batch_rule(n_train: int) -> int:
    """Their ``ArithmeticIterator.calculate_batchsize(n, 0)``: ``min(512, ceil(n / 2))``."""
    return min(512, math.ceil(n_train / 2.0))


def configs(args, op: str, frac: float):
    """``(seed, config, run dir)`` of one cell; the batch and epochs follow the cell's training-set size."""
    import grokinterp as gi

    probe = gi.make_config("power", operation=op, frac_train=frac)
    B = batch_rule(probe.n_train())
    spe = math.ceil(probe.n_train() / B)
    epochs = math.ceil(args.steps / spe)
    eval_every = max(1, round(args.eval_steps / spe))
    for seed in args.seeds:
        cfg = gi.make_config("power", operation=op, frac_train=frac, batch_size=B, epochs=epochs,
                             eval_every=eval_every, init_seed=seed, split_seed=seed, sampler_seed=seed, device="cpu")
        yield seed, cfg, args.runs_dir / f"{op}-f{frac:g}-s{seed}"


def _seconds_left(until: str | None) -> float | None:
    if until is None:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(x) for x in until.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return (end - now).total_seconds()


def train_cell(items, args) -> float:
    """One cell's runs as one stack: skipped where all are there and finished or stopped, resumed where
    interrupted. Returns the wall seconds spent."""
    import grokinterp as gi

    cfgs, outs = [c for _, c, _ in items], [o for _, _, o in items]
    left = _seconds_left(args.until)
    minutes = [m for m in (args.max_minutes, None if left is None else left / 60) if m is not None]
    stop = StopStack(args.margin, max_minutes=min(minutes) if minutes else None)
    existing, done = [], []
    for cfg, out in zip(cfgs, outs):
        try:
            run = gi.load_run(out)
            existing.append(run.config == cfg)
            ev = run.metrics.dropna(subset=["test_acc"])
            done.append(run.finished or (len(ev) > 0 and bool(ev["test_acc"].iloc[-1] >= 0.99)))
        except gi.GrokinterpError:
            existing.append(False)
            done.append(False)
    if all(existing) and all(done):
        return 0.0
    return S.train_or_resume_stack(cfgs, outs, [stop])


def summarise(args, wall: dict[str, float]) -> dict:
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi

    rows, curves = [], {}
    for frac in args.fracs:
        for op in args.op_list:
            for seed, _cfg, out in configs(args, op, frac):
                try:
                    run = gi.load_run(out)
                    ev = run.metrics
                except gi.GrokinterpError:  # not there, or nothing flushed yet
                    continue
                ev = ev[ev["test_acc"].notna()]
                if not len(ev):
                    continue
                curves[(op, frac, seed)] = ev
                rc = run.config
                rows.append({"op": op, "frac": frac, "seed": seed, "n_train": rc.n_train(),
                             "batch_size": rc.train.batch_size, "steps_per_epoch": rc.steps_per_epoch(),
                             "step_test_95": first_step(ev, 0.95), "step_test_99": first_step(ev, 0.99),
                             "step_train_99": first_step(ev, 0.99, "train_acc"),
                             "steps_trained": int(ev["step"].iloc[-1]), "budget_steps": rc.total_steps(),
                             "eval_every_steps": rc.train.eval_every * rc.steps_per_epoch(),
                             "final_train_acc": float(ev["train_acc"].iloc[-1]),
                             "final_test_acc": float(ev["test_acc"].iloc[-1]), "finished": bool(run.finished),
                             "run": str(out)})
    df = pd.DataFrame(rows)
    cells, minimum = [], {}
    for (op, frac), g in df.groupby(["op", "frac"], sort=False) if len(df) else []:
        trained = int(g["steps_trained"].min())
        s99 = S.seed_spread(g["step_test_99"].tolist(), int(g["steps_trained"].max()))
        s95 = S.seed_spread(g["step_test_95"].tolist(), int(g["steps_trained"].max()))
        cells.append({"op": op, "frac": frac, "n": len(g), "seeds": g["seed"].tolist(),
                      "steps_trained_min": trained, "steps_trained_max": int(g["steps_trained"].max()),
                      "step_test_99": s99, "step_test_95": s95,
                      "generalized": s99["n_reached"] >= len(g) // 2 + 1,
                      "wall_s": wall.get(f"{op}-f{frac:g}", wall.get(f"{'+'.join(args.op_list)}-f{frac:g}"))})
    for op in args.op_list:
        ok = [c["frac"] for c in cells if c["op"] == op and c["generalized"]]
        ran = [c["frac"] for c in cells if c["op"] == op]
        minimum[op] = {"min_frac_generalized": min(ok) if ok else None, "fracs_run": sorted(ran),
                       "note": "smallest fraction at which most seeds reached 99 % test accuracy within the steps "
                               "trained" if ok else "no fraction run generalized within the steps trained"}
    summary = {"settings": S.settings(args), "theirs": THEIRS, "cells": cells, "min_fraction": minimum,
               "wall_s": wall, "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    if len(df):
        tmp = args.out / ".runs.csv.tmp"
        df.drop(columns="run").to_csv(tmp, index=False)
        tmp.replace(args.out / "runs.csv")
    S.write_json(args.out / "summary.json", summary)

    steps_fig = go.Figure()
    for op in args.op_list:
        cs = sorted((c for c in cells if c["op"] == op), key=lambda c: c["frac"])
        if not cs:
            continue
        med = [c["step_test_99"]["median"] if c["step_test_99"]["n_reached"] else None for c in cs]
        lo = [(m - c["step_test_99"]["min"]) if m is not None else None for m, c in zip(med, cs)]
        hi = [(c["step_test_99"]["max"] - m) if m is not None else None for m, c in zip(med, cs)]
        steps_fig.add_trace(go.Scatter(x=[c["frac"] for c in cs], y=med, mode="lines+markers", name=OPS[op],
                                       error_y=dict(type="data", array=hi, arrayminus=lo)))
    steps_fig.update_layout(template="plotly_white", yaxis_type="log", height=460, xaxis_title="training fraction",
                            yaxis_title="optimizer steps to 99 % test accuracy (median, min–max over seeds)",
                            title="Steps to generalization against training fraction (their Figure 1, centre)")
    acc_fig = go.Figure()
    for (op, frac, seed), ev in curves.items():
        acc_fig.add_trace(go.Scatter(x=ev["step"], y=ev["test_acc"], mode="lines", name=f"{OPS[op]} f{frac:g} s{seed}"))
    acc_fig.add_hline(y=0.99, line=dict(color="grey", dash="dash"))
    acc_fig.update_layout(template="plotly_white", height=520, xaxis_title="optimizer step",
                          yaxis_title="test accuracy", title="Test accuracy against optimizer steps")
    S.write_report(args.out / "power_fractions.html", "Power et al.'s model: x+y, x−y, x·y, x/y mod 97 by training fraction",
                   "<p>Preset <code>power</code> (2-layer post-LN decoder, sinusoidal positions, AdamW lr 1e-3, "
                   "weight decay 1, batch min(512, n/2)). Their budget is 10<sup>5</sup> updates; ours is in the "
                   "table (steps trained). Runs that did not reach 99 % are left out of the medians' curve.</p>",
                   [("Steps to 99 % test accuracy", "Median over seeds, bars min–max (seeds that reached it).", steps_fig),
                    ("Test accuracy", "Over the whole test split at each evaluation.", acc_fig),
                    ("Per run", "First evaluated step at or above each level.",
                     df.drop(columns="run") if len(df) else pd.DataFrame())])
    if len(df):
        print(df.drop(columns="run").to_string(index=False))
    for op, m in minimum.items():
        print(op, m)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    args.op_list = [o for o in args.ops.split(",") if o]
    bad = [o for o in args.op_list if o not in OPS]
    if bad:
        raise SystemExit(f"--ops: unknown {bad}; known: {', '.join(OPS)}")
    wall_path = args.out / "wall.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else {}
    if not args.report_only:
        for frac in sorted(args.fracs, reverse=True):
            groups = ([("+".join(args.op_list), [it for op in args.op_list for it in configs(args, op, frac)])]
                      if args.one_stack else [(op, list(configs(args, op, frac))) for op in args.op_list])
            for name, items in groups:
                left = _seconds_left(args.until)
                if left is not None and left < 60:
                    print(f"{name} f{frac:g}: not started (--until {args.until})", flush=True)
                    continue
                spent = train_cell(items, args)
                key = f"{name}-f{frac:g}"
                wall[key] = wall.get(key, 0.0) + spent
                S.write_json(wall_path, wall)
                print(f"{name} f{frac:g}: {len(items)} runs, {spent:.0f} s", flush=True)
                summarise(args, wall)  # a partial study is a usable result
    summarise(args, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
