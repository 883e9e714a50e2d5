"""Omnigrok's MNIST grokking recipe on scikit-learn's 8×8 digits (issue 22): does test accuracy rise long after
training accuracy reached 100 %, does the time to generalize follow 1/γ (γ the weight decay), and how much does
Grokfast's EMA filter shorten it?

The recipe (preset ``omnigrok-digits``; Liu, Michaud & Tegmark 2022, their MNIST code): 1,000 training images,
an MLP 64 → 200 → 200 → 10 with biases and ReLU, every initial parameter × α = 8, MSE on one-hot targets, AdamW
lr 1e-3 (betas 0.9 / 0.999), weight decay 0.01, batches of 200. The 797 other digits are the test set. Digits,
not MNIST: nothing downloads; pass ``--mnist DIR`` (IDX files) to run the recipe arm on MNIST instead.

Arms (each one stack: its runs train together):

* ``recipe``: weight decay 0.01 (theirs), ``--seeds``; budget ``--recipe-steps`` optimizer steps;
* ``gamma``: weight decay γ ∈ ``--gammas`` × ``--seeds``; each stack stops once every run has held test accuracy
  ≥ ``--level`` for ``--margin`` epochs (or at ``--gamma-steps``);
* ``grokfast``: the recipe with Grokfast's EMA filter (α 0.98, λ 2, Lee et al.'s values), ``--seeds``, stopped as
  ``gamma``;
* ``recipe64``: the recipe in float64 (``train.dtype``; Omnigrok trains in float64, the other arms in float32),
  ``--seeds``, budget ``--recipe64-steps``; the same seeded initialisation (float32, converted exactly), split and
  batch order as the ``recipe`` arm's run of that seed, so ``summary.json["float64"]`` compares them seed by seed
  (the step training accuracy first reached 100 %, test accuracy there, the steps to 70/80/90 % test accuracy);
* ``fixed_norm``: Omnigrok's "training at a fixed weight norm removes grokking": the recipe with the total parameter
  norm held at each of ``--fixed-norms`` (49: the recipe's grokked norm; ``train.weight_norm_target``, the
  parameters rescaled to it after every step; 0 means the initial norm, ≈ 94, plain ``train.weight_norm``) beside
  the recipe itself, ``--seeds`` each, all in one stack, budget ``--fixed-steps`` steps (rows ``fixed_norm_49``,
  ``fixed_norm_init``, ..., and ``fixed_norm_recipe``).

Measures, per run, from the evaluations (every 10 epochs = 50 steps): the step training accuracy first reached
100 % and test accuracy there; final test accuracy; the rise (grokking: ≥ 0.2, the issue's bar); ``t_gen``, the
first step with test accuracy ≥ ``--level``. The 1/γ law: the least-squares slope of log t_gen against log γ
over every run that reached the level, with a 95 % interval (t distribution; Omnigrok: −1). Grokfast: the
ratio of the median t_gen without and with the filter (a lower bound when the recipe's runs did not reach the
level in their budget), beside Lee et al.'s 22× on MNIST (44,022 → 2,001 steps).

Writes ``runs.csv``, ``summary.json`` and ``omnigrok_digits.html`` into ``--out`` after every arm.

Example:
    python analyses/omnigrok_digits.py --arms gamma,grokfast,recipe --seeds 0,1,2
    python analyses/omnigrok_digits.py --report-only
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
from pathlib import Path

import _study as S

THEIRS = {"omnigrok_mnist": {"train_acc_100_step": 2_000, "test_acc_at_1e4": 0.2, "test_acc_at_1e5": 0.88,
                             "weight_norm_start": 92, "weight_norm_end": 52, "gamma_law_slope": -1.0},
          "grokfast_mnist": {"baseline_steps": 44_022, "ema_steps": 2_001, "ratio": 22.0}}
#: Further test-accuracy levels whose first step each run reports (the ratio and the law at each).
LEVELS = (0.7, 0.8, 0.9)
GROKFAST = {"grad_transforms": ("grokfast_ema",), "grokfast_alpha": 0.98, "grokfast_lamb": 2.0}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", default="gamma,grokfast,recipe", help="comma-separated, of recipe, gamma, grokfast")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2], help="init, split and sampler seed of each run")
    ap.add_argument("--gammas", type=S.floats, default=[0.1, 0.2, 0.4, 1.0], help="weight decays of the 1/γ law")
    ap.add_argument("--level", type=float, default=0.9, help="test accuracy that dates t_gen")
    ap.add_argument("--margin", type=int, default=100, help="epochs every run of a stack holds the level before it stops")
    ap.add_argument("--recipe-steps", type=int, default=40_000, help="optimizer-step budget of the recipe arm")
    ap.add_argument("--gamma-steps", type=int, default=20_000, help="optimizer-step budget of a gamma / grokfast stack")
    ap.add_argument("--recipe64-steps", type=int, default=48_000, help="optimizer-step budget of the recipe64 arm")
    ap.add_argument("--float32-csv", type=Path, default=Path("analyses/results/omnigrok_digits/runs.csv"),
                    help="runs.csv whose recipe rows the float64 arm is compared with when the recipe's runs are not in "
                         "--runs-dir")
    ap.add_argument("--fixed-norms", type=S.floats, default=[49.0],
                    help="total parameter norms of the fixed_norm arm (0: the initial norm)")
    ap.add_argument("--fixed-steps", type=int, default=10_000, help="optimizer-step budget of the fixed_norm arm")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop each stack after this much wall time")
    ap.add_argument("--mnist", type=Path, default=None, help="run the recipe on MNIST IDX files in this directory")
    ap.add_argument("--report-only", action="store_true", help="train nothing; summarise the runs on disk")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_omnigrok_digits"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/omnigrok_digits"))
    return ap.parse_args(argv)


def arm_items(args, arm: str):
    """``[(group, seed, config, run dir)]`` of an arm; runs of one group share a stack."""
    import grokinterp as gi

    task = dict(operation="mnist", data=str(args.mnist)) if args.mnist and arm == "recipe" else {}
    per_epoch = gi.make_config("omnigrok-digits", **task).steps_per_epoch()

    def seeded(s: int, steps: int, **kw):  # the recipe for seed s, trained for at least `steps` optimizer steps
        return gi.make_config("omnigrok-digits", epochs=math.ceil(steps / per_epoch), init_seed=s, split_seed=s,
                              sampler_seed=s, device="cpu", **task, **kw)

    out = []
    if arm == "recipe":
        for s in args.seeds:
            out.append(("recipe", s, seeded(s, args.recipe_steps), args.runs_dir / f"recipe-s{s}"))
    elif arm == "gamma":
        for g in args.gammas:
            for s in args.seeds:
                out.append(("gamma", s, seeded(s, args.gamma_steps, weight_decay=g), args.runs_dir / f"gamma{g:g}-s{s}"))
    elif arm == "grokfast":
        for s in args.seeds:
            out.append(("grokfast", s, seeded(s, args.gamma_steps, **GROKFAST), args.runs_dir / f"grokfast-s{s}"))
    elif arm == "recipe64":
        for s in args.seeds:
            out.append(("recipe64", s, seeded(s, args.recipe64_steps, dtype="float64"), args.runs_dir / f"recipe64-s{s}"))
    elif arm == "fixed_norm":
        for norm in (None, *args.fixed_norms):
            for s in args.seeds:
                kw = {} if norm is None else dict(weight_norm=True, weight_norm_target=norm or None)
                label = "recipe" if norm is None else f"{norm:g}" if norm else "init"
                out.append((f"fixed_norm_{label}", s, seeded(s, args.fixed_steps, **kw),
                            args.runs_dir / f"fixednorm-{label}-s{s}"))
    else:
        raise SystemExit(f"--arms: unknown arm {arm!r}")
    return out


def train_stack(items, args, stop: bool) -> float:
    """Train (or resume) one arm's runs as one stack; returns the wall seconds."""
    cfgs, outs = [c for *_, c, _ in items], [o for *_, o in items]
    stopper = S.StopStack(args.margin if stop else None, args.level, max_minutes=args.max_minutes)
    return S.train_or_resume_stack(cfgs, outs, [stopper])


def first_step(ev, level: float, column: str = "test_acc") -> int | None:
    hit = ev[ev[column] >= level]
    return int(hit["step"].iloc[0]) if len(hit) else None


def slope_interval(x, y) -> dict:
    """Least-squares slope of ``y`` on ``x`` with a 95 % interval (t distribution, n − 2 degrees of freedom)."""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return {"slope": None, "ci95": None, "n": n}
    A = np.stack([x, np.ones(n)], 1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    se = math.sqrt(float(resid @ resid) / (n - 2) / float(((x - x.mean()) ** 2).sum()))
    try:
        from scipy.stats import t as student

        q = float(student.ppf(0.975, n - 2))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        q = 1.96
    return {"slope": float(coef[0]), "intercept": float(coef[1]), "ci95": [float(coef[0] - q * se),
                                                                            float(coef[0] + q * se)], "n": n}


def _num(v):
    """A table value as JSON: ``None`` for NaN."""
    v = float("nan") if v is None else float(v)
    return None if math.isnan(v) else v


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        return platform.processor() or "unknown"


def summarise(args, walls: dict) -> dict:
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    import grokinterp as gi
    from grokinterp.analysis.vectors import grokking_dates

    rows, curves = [], {}
    for arm_ in ("recipe", "recipe64", "gamma", "grokfast", "fixed_norm"):
        for arm, seed, _cfg, out in arm_items(args, arm_):
            try:
                run = gi.load_run(out)
                ev = run.metrics
            except gi.GrokinterpError:
                continue
            ev = ev[ev["test_acc"].notna()]
            if not len(ev):
                continue
            tc = run.config.train
            d = grokking_dates(ev, run.config.steps_per_epoch())
            curves[out.name] = ev
            wn = None
            try:
                from grokinterp.analysis.vectors import weight_norms

                w = weight_norms(run, run.epochs[[0, -1]])
                wn = (float(w["weight_norm"].iloc[0]), float(w["weight_norm"].iloc[-1]))
            except gi.GrokinterpError:
                pass
            rows.append({"arm": arm, "seed": seed, "task": run.config.task.operation, "dtype": tc.dtype,
                         "weight_decay": tc.weight_decay,
                         "grokfast": "grokfast_ema" in tc.grad_transforms,
                         "weight_norm_target": tc.weight_norm_target if tc.weight_norm else None,
                         "train_100_step": d.train_100_step,
                         "test_at_train_100": d.test_at_train_100, "test_final": d.test_final, "rise": d.rise,
                         "grokked": d.grokked, "generalized_step": d.generalized_step,
                         "t_gen": first_step(ev, args.level),
                         **{f"t_test_{lv:g}": first_step(ev, lv) for lv in LEVELS},
                         "steps_trained": int(ev["step"].iloc[-1]),
                         "budget_steps": run.config.total_steps(), "finished": bool(run.finished),
                         "weight_norm_start": wn[0] if wn else None, "weight_norm_end": wn[1] if wn else None,
                         "run": str(out)})
    df = pd.DataFrame(rows)
    try:  # wall times of arms trained by earlier invocations
        import json

        walls = {**json.loads((args.out / "summary.json").read_text()).get("walls_s", {}), **walls}
    except (OSError, ValueError):
        pass
    out = {"settings": S.settings(args), "theirs": THEIRS, "cpu": cpu_name(), "walls_s": walls, "runs": rows}
    if len(df):
        per = {}
        for (arm, wd), g in df.groupby(["arm", "weight_decay"], sort=False):
            trained = int(g["steps_trained"].max())
            per[f"{arm} wd={wd:g}"] = {
                "n": len(g), "grokked": int(g["grokked"].sum()),
                "train_100_step": S.seed_spread(g["train_100_step"].tolist()),
                "test_at_train_100": S.seed_spread(g["test_at_train_100"].tolist()),
                "test_final": S.seed_spread(g["test_final"].tolist()),
                "rise": S.seed_spread(g["rise"].tolist()),
                "t_gen": S.seed_spread(g["t_gen"].tolist(), trained)}
        out["groups"] = per
        for lv in LEVELS:
            col = f"t_test_{lv:g}"
            g_ = df[df["arm"] == "gamma"].dropna(subset=[col])
            if len(g_):
                out[f"gamma_law_{lv:g}"] = slope_interval(np.log(g_["weight_decay"]), np.log(g_[col].astype(float)))
            rec_, gf_ = df[df["arm"] == "recipe"], df[df["arm"] == "grokfast"]
            if len(rec_) and len(gf_):
                a_ = S.seed_spread(rec_[col].tolist(), int(rec_["steps_trained"].max()))
                b_ = S.seed_spread(gf_[col].tolist(), int(gf_["steps_trained"].max()))
                ok = b_["n_reached"] >= b_["n"] // 2 + 1
                out[f"grokfast_ratio_{lv:g}"] = {
                    "ratio": a_["median"] / b_["median"] if a_["median"] and b_["median"] and ok else None,
                    "lower_bound": a_["n_reached"] < a_["n"] // 2 + 1, "recipe": a_, "grokfast": b_}
        fx = {a: df[df["arm"] == a] for a in sorted(set(df["arm"])) if a.startswith("fixed_norm_")}
        if len(fx) > 1:  # Omnigrok: a fixed norm removes grokking
            out["fixed_norm"] = {a: {"norm": None if a == "fixed_norm_recipe" else float(v["weight_norm_end"].median()),
                                     "train_100_step": S.seed_spread(v["train_100_step"].tolist()),
                                     "test_at_train_100": S.seed_spread(v["test_at_train_100"].tolist()),
                                     "test_at_budget": S.seed_spread(v["test_final"].tolist()),
                                     **{f"t_test_{lv:g}": S.seed_spread(v[f"t_test_{lv:g}"].tolist(),
                                                                        int(v["steps_trained"].max())) for lv in LEVELS},
                                     "weight_norm_end": S.seed_spread(v["weight_norm_end"].tolist()),
                                     "budget_steps": int(v["steps_trained"].max())} for a, v in fx.items()}
        f32, f64 = df[df["arm"] == "recipe"].set_index("seed"), df[df["arm"] == "recipe64"].set_index("seed")
        if len(f64) and not len(f32) and args.float32_csv.is_file():  # the float32 arm as committed
            old = pd.read_csv(args.float32_csv)
            f32 = old[old["arm"] == "recipe"].set_index("seed")
        if len(f64):  # the recipe in float64 beside float32, seed by seed (same init, split and batches)
            cols = ["train_100_step", "test_at_train_100", *[f"t_test_{lv:g}" for lv in LEVELS]]
            paired = []
            for seed in f64.index:
                row = {"seed": int(seed), **{f"{c}_float64": _num(f64.loc[seed, c]) for c in cols}}
                if seed in f32.index:
                    row.update({f"{c}_float32": _num(f32.loc[seed, c]) for c in cols})
                paired.append(row)
            out["float64"] = {
                "budget_steps": int(f64["steps_trained"].max()),
                "float32_from": "--runs-dir" if (df["arm"] == "recipe").any() else str(args.float32_csv),
                "per_seed": paired,
                **{c: {"float64": S.seed_spread(f64[c].tolist(), int(f64["steps_trained"].max())),
                       "float32": S.seed_spread(f32[c].tolist(), int(f32["steps_trained"].max())) if len(f32) else None}
                   for c in cols}}
        both = df[df["arm"].isin(["gamma", "recipe"])].dropna(subset=["t_gen"])
        if len(both) and (both["arm"] == "recipe").any():  # the law over γ ∈ {0.01} ∪ --gammas
            out["gamma_law_with_recipe"] = slope_interval(np.log(both["weight_decay"]), np.log(both["t_gen"].astype(float)))
        gam = df[df["arm"] == "gamma"].dropna(subset=["t_gen"])
        if len(gam):
            out["gamma_law"] = {**slope_interval(np.log(gam["weight_decay"]), np.log(gam["t_gen"].astype(float))),
                                "x": "log weight decay", "y": "log t_gen (steps to test acc ≥ level)",
                                "runs_not_reached": int((df[df["arm"] == "gamma"]["t_gen"].isna()).sum())}
        rec, gf = df[df["arm"] == "recipe"], df[df["arm"] == "grokfast"]
        if len(rec) and len(gf):
            a = S.seed_spread(rec["t_gen"].tolist(), int(rec["steps_trained"].max()))
            b = S.seed_spread(gf["t_gen"].tolist(), int(gf["steps_trained"].max()))
            exact = lambda s: s["n_reached"] >= s["n"] // 2 + 1  # noqa: E731
            out["grokfast_ratio"] = (
                {"ratio": a["median"] / b["median"] if a["median"] and b["median"] and exact(b) else None,
                 "lower_bound": not exact(a), "recipe_t_gen": a, "grokfast_t_gen": b, "theirs": 22.0})
    S.write_json(args.out / "summary.json", out)
    if len(df):
        df.to_csv(args.out / "runs.csv", index=False)
        fig = go.Figure()
        for name, ev in curves.items():
            ev = ev.iloc[:: max(1, len(ev) // 150)]  # at most ~150 points a curve: the page stays small
            fig.add_scatter(x=ev["step"], y=ev["test_acc"], name=f"{name} test", mode="lines")
            fig.add_scatter(x=ev["step"], y=ev["train_acc"], name=f"{name} train", mode="lines",
                            line={"dash": "dot"}, visible="legendonly")
        fig.update_layout(xaxis={"type": "log", "title": "optimizer step"}, yaxis={"title": "accuracy"},
                          height=520, title="Test accuracy (train: dotted, in the legend)")
        table = df.drop(columns=["run"]).to_html(index=False, float_format=lambda v: f"{v:.3g}")
        S.write_report(args.out / "omnigrok_digits.html", "Omnigrok's recipe on 8×8 digits",
                       f"<p>CPU: {cpu_name()}. See analyses/README.md.</p>",
                       [("Curves", "Accuracy against optimizer steps (log axis).", fig), ("Runs", "", table)])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    walls = {}
    if not args.report_only:
        for arm in [a for a in args.arms.split(",") if a]:
            items = arm_items(args, arm)
            wall = train_stack(items, args, stop=arm not in ("recipe", "recipe64", "fixed_norm"))
            steps = 0
            import grokinterp as gi

            for *_, out in items:
                try:
                    steps += int(gi.load_run(out).metrics["step"].dropna().iloc[-1])
                except (gi.GrokinterpError, IndexError):
                    pass
            walls[arm] = {"runs": len(items), "wall_s": wall, "model_steps": steps,
                          "model_steps_per_s": steps / wall if wall > 0 else None}
            print(f"{arm}: {len(items)} runs, {wall:.0f} s, {steps} model-steps", flush=True)
            summarise(args, walls)
    s = summarise(args, walls)
    print({k: v for k, v in s.items() if k.startswith(("gamma_law", "grokfast_ratio"))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
