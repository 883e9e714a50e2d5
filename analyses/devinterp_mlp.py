"""devinterp's grokking MLP (Timaeus, ``examples/grokking``): does it grok here, and when?

Their setting (preset ``mlp-devinterp``): a + b mod 53, 40 % of the pairs for training; an MLP with one
embedding of width 12 shared by both operands, two biased 12 → 48 maps (one per operand) summed, GELU, an
unembedding 48 → 53 without bias; torch's Adam (weight decay 2e-4 as an L2 term, lr 5e-3), batches of
128, 25k optimizer steps. Their notebook's run reaches 100 % validation accuracy within those 25k steps
(its comment warns that not every seed does). The LLC study measures on this model, so we note, for
several seeds trained as one stack, the optimizer step of memorization (train accuracy ≥ 99 %) and of
generalization (test accuracy ≥ 99 %), with the budget extended past 25k steps so that late seeds are
dated too, and how many seeds generalized within their 25k.

Writes into ``--out``: ``runs.csv`` (one row per seed), ``summary.json`` (settings, rows, medians and
ranges over seeds) and ``devinterp_mlp.html`` (train and test accuracy against optimizer steps).

Example:
    python analyses/devinterp_mlp.py --seeds 0,1,2,3,4 --steps 75000
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import _study as S

REFERENCE_STEPS = 25_000  # their budget


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2, 3, 4], help="init, split and sampler seed of each run")
    ap.add_argument("--steps", type=int, default=75_000, help="optimizer steps per run (theirs: 25,000)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_devinterp_mlp"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/devinterp_mlp"))
    return ap.parse_args(argv)


def configs(args):
    import grokinterp as gi

    base = gi.make_config("mlp-devinterp")
    epochs = math.ceil(args.steps / base.steps_per_epoch())
    for seed in args.seeds:
        cfg = gi.make_config("mlp-devinterp", epochs=epochs, init_seed=seed, split_seed=seed, device="cpu")
        yield seed, cfg, args.runs_dir / f"mlp-devinterp-s{seed}"


def train_all(cfgs, outs):
    """The runs: reused where finished, resumed where interrupted, the rest trained as one stack."""
    import grokinterp as gi
    from grokinterp.training.stacked import resume_stacked

    runs: dict[Path, object] = {}
    todo = []
    for cfg, out in zip(cfgs, outs):
        try:
            run = gi.load_run(out)
            if run.config == cfg and run.finished:
                runs[out] = run
                continue
        except gi.GrokinterpError:
            pass
        todo.append((cfg, out))
    partial = [o for c, o in todo if (o / "run.json").exists()]
    if partial and len(partial) == len(todo):
        resume_stacked(partial, progress=True)
    elif todo:
        gi.train_stacked([c for c, _ in todo], [o for _, o in todo], progress=True, overwrite=True)
    return [runs.get(o) or gi.load_run(o) for o in outs]


def first_step(evals, column: str, level: float = 0.99) -> int | None:
    hit = evals[evals[column] >= level]
    return int(hit["step"].iloc[0]) if len(hit) else None


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import plotly.graph_objects as go

    items = list(configs(args))
    runs = train_all([c for _, c, _ in items], [o for _, _, o in items])
    rows, curves = [], {}
    for (seed, _cfg, out), run in zip(items, runs):
        ev = run.metrics
        ev = ev[ev["test_acc"].notna()]
        curves[seed] = ev
        mem, gen = first_step(ev, "train_acc"), first_step(ev, "test_acc")
        rows.append({"seed": seed, "step_train_99": mem, "step_test_99": gen,
                     "grokked_within_25k": gen is not None and gen <= REFERENCE_STEPS,
                     "final_test_acc": float(ev["test_acc"].iloc[-1]), "final_train_loss": float(ev["train_loss"].iloc[-1]),
                     "steps_trained": int(ev["step"].iloc[-1]), "run": str(out)})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    summary = {
        "settings": S.settings(args),
        "runs": rows,
        "step_train_99": S.seed_spread(df["step_train_99"].tolist(), args.steps),
        "step_test_99": S.seed_spread(df["step_test_99"].tolist(), args.steps),
        "grokked_within_25k": int(df["grokked_within_25k"].sum()),
        "reference": "devinterp's notebook: validation accuracy 1.0 within 25k steps (one seed; its comment: not every "
                     "seed groks within its 100 checkpoints)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    S.write_json(args.out / "summary.json", summary)
    fig = go.Figure()
    for seed, ev in curves.items():
        fig.add_trace(go.Scatter(x=ev["step"], y=ev["test_acc"], mode="lines", name=f"test s{seed}"))
        fig.add_trace(go.Scatter(x=ev["step"], y=ev["train_acc"], mode="lines", line=dict(dash="dot", width=1),
                                 name=f"train s{seed}"))
    fig.add_vline(x=REFERENCE_STEPS, line=dict(color="grey", dash="dash"))
    fig.update_layout(template="plotly_white", title="devinterp's grokking MLP: accuracy against optimizer steps",
                      xaxis_title="optimizer step", yaxis_title="accuracy", height=520)
    S.write_report(args.out / "devinterp_mlp.html", "devinterp's grokking MLP (a + b mod 53)",
                   "<p>Preset <code>mlp-devinterp</code>; the dashed line is their 25k-step budget.</p>",
                   [("Accuracy", "Train (dotted) and test (solid) accuracy over the full sets, every 10 epochs.", fig),
                    ("Per seed", "Steps at which train and test accuracy first reached 99 %.", df.drop(columns="run"))])
    print(df.drop(columns="run").to_string(index=False))
    print({k: summary[k] for k in ("step_train_99", "step_test_99", "grokked_within_25k")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
