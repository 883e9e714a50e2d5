"""Grokfast's headline in Lee et al.'s own algorithmic setting: optimizer steps to 95 % test accuracy
with and without the EMA gradient filter, our ratio beside their 43.8×.

Their setting (``ironjr/grokfast`` ``main.py``; presets ``grokfast-lee`` and ``grokfast-lee-ema``):
x · y mod 97 over x in 0..96, y in 1..96 (9,312 equations; operation ``mul_b_nonzero``), tokens
``[x, op, y, =]`` (``input_layout = a_op_b_eq``), a 2-layer causal decoder of width 128 with 4 heads,
a GELU MLP of width 512, LayerNorm in their block (``ln_style = in_place``), biases everywhere but the
unembedding; half the equations for training; torch's Adam (L2 weight decay), lr 1e-3, betas 0.9 / 0.98,
warm-up over the first 10 updates, batches of 512 (10 optimizer steps an epoch). Their README: the
baseline (weight decay 0, no filter) reaches 95 % validation accuracy at 39,890 steps, the EMA filter
(``--alpha 0.98 --lamb 2.0 --weight_decay 0.005``) at 910: 43.8×. That headline changes the filter and
the weight decay together, so this study runs three arms:

- ``baseline``: weight decay 0, no filter (their baseline);
- ``ema_wd``: EMA α 0.98, λ 2, weight decay 0.005 (their headline Grokfast run);
- ``ema``: EMA α 0.98, λ 2, weight decay 0 (the filter alone).

Runs of one arm share a stack (seeds differ); a stack stops once every run in it has held test
accuracy ≥ 99 % for ``--margin`` epochs, at ``--steps`` optimizer steps, or at ``--max-minutes`` of wall
time (interrupted runs stay resumable: run the study again with a larger budget and they continue).
Test accuracy is measured over the whole test half every ``eval_every`` epochs (1 epoch = 10 steps
for the filtered arms, as theirs; the baseline's evaluation interval is ``--baseline-eval-every``).

Writes into ``--out``: ``runs.csv`` (one row per run), ``summary.json`` (settings, rows, medians and
ranges per arm, the ratios) and ``grokfast_lee.html`` (test accuracy against optimizer steps).

Example:
    python analyses/grokfast_lee.py --arms ema_wd,ema --seeds 0,1,2 --steps 5000
    python analyses/grokfast_lee.py --arms baseline --seeds 0 --steps 100000 --max-minutes 30
    python analyses/grokfast_lee.py --report-only   # summary of whatever runs are on disk
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import _study as S

THEIRS = {"baseline_steps_95": 39_890, "ema_steps_95": 910, "ratio": 43.8}
ARMS = {
    "baseline": ("grokfast-lee", {}),
    "ema_wd": ("grokfast-lee-ema", {}),
    "ema": ("grokfast-lee-ema", {"weight_decay": 0.0}),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="baseline,ema_wd,ema", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2], help="init, split and sampler seed of each run")
    ap.add_argument("--baseline-seeds", type=S.ints, default=None, help="seeds of the baseline (default --seeds)")
    ap.add_argument("--steps", type=int, default=5_000, help="optimizer-step budget of the filtered arms")
    ap.add_argument("--baseline-steps", type=int, default=100_000, help="optimizer-step budget of the baseline")
    ap.add_argument("--margin", type=int, default=10, help="epochs a stack holds ≥ 99 %% test accuracy before it stops")
    ap.add_argument("--baseline-eval-every", type=int, default=5, help="epochs between the baseline's evaluations")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop each stack after this much wall time")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (the device is part of a run's config: give "
                    "runs on another device their own --runs-dir, since a run found there with another config is "
                    "trained anew)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; summarise the runs on disk")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_grokfast_lee"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/grokfast_lee"))
    return ap.parse_args(argv)


def configs(args, arm: str):
    import grokinterp as gi

    preset, extra = ARMS[arm]
    base = gi.make_config(preset)
    steps = args.baseline_steps if arm == "baseline" else args.steps
    epochs = math.ceil(steps / base.steps_per_epoch())
    seeds = (args.baseline_seeds or args.seeds) if arm == "baseline" else args.seeds
    more = {"eval_every": args.baseline_eval_every} if arm == "baseline" else {}
    for seed in seeds:
        cfg = gi.make_config(preset, epochs=epochs, init_seed=seed, split_seed=seed, device=args.device, **extra,
                             **more)
        yield seed, cfg, args.runs_dir / f"{arm}-s{seed}"


def train_arm(items, args) -> None:
    """The arm's runs as one stack: skipped where all are there (finished or stopped), resumed where interrupted."""
    cfgs, outs = [c for _, c, _ in items], [o for _, _, o in items]
    S.train_or_resume_stack(cfgs, outs, [S.StopStack(args.margin, max_minutes=args.max_minutes)])


def first_step(ev, level: float, column: str = "test_acc") -> int | None:
    hit = ev[ev[column] >= level]
    return int(hit["step"].iloc[0]) if len(hit) else None


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi

    arms = [a for a in args.arms.split(",") if a]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"--arms: unknown {bad}; known: {', '.join(ARMS)}")
    rows, curves = [], {}
    for arm in ARMS if args.report_only else arms:
        items = list(configs(args, arm))
        if not args.report_only:
            t0 = time.time()
            train_arm(items, args)
            print(f"{arm}: {len(items)} runs in {time.time() - t0:.0f} s", flush=True)
        for seed, _cfg, out in items:
            try:
                run = gi.load_run(out)
                ev = run.metrics
            except gi.GrokinterpError:  # not there, or still training (nothing flushed yet)
                continue
            ev = ev[ev["test_acc"].notna()]
            if not len(ev):
                continue
            curves[(arm, seed)] = ev
            tc = run.config.train
            rows.append({"arm": arm, "seed": seed, "weight_decay": tc.weight_decay,
                         "filter": "ema" if "grokfast_ema" in tc.grad_transforms else "none",
                         "step_test_95": first_step(ev, 0.95), "step_test_99": first_step(ev, 0.99),
                         "step_train_99": first_step(ev, 0.99, "train_acc"),
                         "steps_trained": int(ev["step"].iloc[-1]), "budget_steps": run.config.total_steps(),
                         "eval_every_steps": tc.eval_every * run.config.steps_per_epoch(),
                         "final_test_acc": float(ev["test_acc"].iloc[-1]), "finished": bool(run.finished),
                         "run": str(out)})
    df = pd.DataFrame(rows)
    per_arm = {}
    for arm, g in df.groupby("arm", sort=False) if len(df) else []:
        trained = int(g["steps_trained"].max())
        per_arm[arm] = {"n": len(g), "seeds": g["seed"].tolist(),
                        "step_test_95": S.seed_spread(g["step_test_95"].tolist(), trained),
                        "step_test_99": S.seed_spread(g["step_test_99"].tolist(), trained),
                        "steps_trained": g["steps_trained"].tolist()}

    def exact(spread) -> bool:
        # runs that did not reach the level count at the steps trained (≥ every reached value), so the
        # median is a reached value, exact, when more than half of the runs reached it
        return spread["n_reached"] >= spread["n"] // 2 + 1

    def ratio(num: str, den: str, level: str = "step_test_95"):
        if num not in per_arm or den not in per_arm:
            return None
        a, b = per_arm[num][level], per_arm[den][level]
        if not a["median"] or not b["median"] or not exact(b):
            return {"ratio": None, "lower_bound": False,
                    "note": "undefined: fewer than half of the filtered runs reached the level"}
        return {"ratio": a["median"] / b["median"], "lower_bound": not exact(a),
                "note": "ratio of medians" if exact(a) else
                f"lower bound: the median of {num} is at least {a['median']:.0f} steps (runs that did not "
                f"reach the level count at the steps trained)"}

    summary = {
        "settings": S.settings(args), "theirs": THEIRS, "arms": per_arm, "runs": rows,
        "ratio_baseline_over_ema_wd_95": ratio("baseline", "ema_wd"),
        "ratio_baseline_over_ema_95": ratio("baseline", "ema"),
        "ratio_baseline_over_ema_wd_99": ratio("baseline", "ema_wd", "step_test_99"),
        "ratio_ema_over_ema_wd_95": ratio("ema", "ema_wd"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if len(df):
        df.to_csv(args.out / "runs.csv", index=False)
    S.write_json(args.out / "summary.json", summary)
    fig = go.Figure()
    for (arm, seed), ev in curves.items():
        fig.add_trace(go.Scatter(x=ev["step"], y=ev["test_acc"], mode="lines", name=f"{arm} s{seed}"))
    fig.add_hline(y=0.95, line=dict(color="grey", dash="dash"))
    for x in (THEIRS["ema_steps_95"], THEIRS["baseline_steps_95"]):
        fig.add_vline(x=x, line=dict(color="grey", dash="dot"))
    fig.update_layout(template="plotly_white", xaxis_type="log", height=520, xaxis_title="optimizer step",
                      yaxis_title="test accuracy", title="Lee et al.'s setting: test accuracy against optimizer steps")
    S.write_report(args.out / "grokfast_lee.html", "Grokfast in Lee et al.'s algorithmic setting (x·y mod 97)",
                   "<p>Presets <code>grokfast-lee</code> (baseline) and <code>grokfast-lee-ema</code>; dotted lines: "
                   "their 910 and 39,890 steps to 95 % validation accuracy.</p>",
                   [("Test accuracy", "Over the whole test half at each evaluation.", fig),
                    ("Per run", "Optimizer steps at which test accuracy first reached 95 % and 99 %.",
                     df.drop(columns="run") if len(df) else pd.DataFrame())])
    if len(df):
        print(df.drop(columns="run").to_string(index=False))
    for k in ("ratio_baseline_over_ema_wd_95", "ratio_baseline_over_ema_95", "ratio_ema_over_ema_wd_95"):
        print(k, summary[k])
    return 0


if __name__ == "__main__":
    sys.exit(main())
