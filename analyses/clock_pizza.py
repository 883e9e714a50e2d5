"""Clock vs pizza (Zhong et al. 2023): attention coefficient 1 vs 0 on a + b mod 59, in their setting.

Their setting (``code/train-main.py``, ``result/1l_fixedwidth.csv``): p = 59, 80 % of the pairs, one layer,
d_model 128, 4 heads, d_mlp 512, ReLU, AdamW lr 1e-3, weight decay 2, betas (0.9, 0.98), full batch, 20,000
epochs; attention weights ``α·softmax + (1 − α)`` (all ones, not 1/n); no ``=`` token by default,
bidirectional attention. Ours: the same numbers, with the ``=`` token and causal attention (the final
position sees ``a``, ``b`` and ``=`` either way) and ``--epochs`` (default 4000, for the CPU).

Coefficient 0 is not identifiable in our layout (see :data:`NOTE`): the readout at ``=`` forces gradient
symmetricity to 1, and those runs are labelled "not identifiable". ``--layout a_b`` redoes the study in
Zhong et al.'s layout (tokens ``[a, b]``, no ``=``, both positions attend to both, read out at ``b``;
:data:`NOTE_A_B`) with their 20,000 epochs as the default, every run (coefficients × seeds) trained in
one stack, and as controls the untrained models of the same configs (each run's epoch-0 checkpoint,
measured the same way); it writes also ``table.md`` (per coefficient, median and min–max over seeds,
beside their released table; then per run) into ``analyses/results/clock_pizza_zhong``.

For each coefficient and seed this trains a run and identifies the algorithm at the last checkpoint
(:func:`grokinterp.analysis.algorithms.identify_algorithm`: gradient symmetricity over 1000 random triples,
distance irrelevance, circularity, the rule) and, every ``--track`` checkpoints, along training. Writes
into ``--out``: ``runs.csv`` (per run: the signatures, label, accuracy, key frequencies), ``summary.json``
(spreads, and Zhong et al.'s values recomputed from their released table for comparison) and
``clock_pizza.html`` (signatures of every run against theirs, the embedding circles of one run per
coefficient, the table).

Examples:
    python analyses/clock_pizza.py --seeds 0,1,2
    python analyses/clock_pizza.py --layout a_b --epochs 2000   # Zhong et al.'s layout (theirs: 20,000 epochs)
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import _study as S

#: Per layout: default epochs, checkpoints tracked, where the runs and the results go.
LAYOUTS = {
    "a_b_eq": {"epochs": 4000, "track": 5, "runs_dir": "checkpoints/study_clock_pizza",
               "out": "analyses/results/clock_pizza"},
    "a_b": {"epochs": 20000, "track": 0, "runs_dir": "checkpoints/study_clock_pizza_zhong",
            "out": "analyses/results/clock_pizza_zhong"},
}

#: Zhong et al.'s released table (``result/1l_fixedwidth.csv`` of github.com/fjzzq2002/pizza), runs of
#: a + b mod 59 with circularity > 0.8 and validation accuracy > 0.99, by attention coefficient;
#: percentiles (10 %, median, 90 %) recomputed by us. ``eq_token``: their appendix runs with an ``=``
#: token, the closer match to our model.
ZHONG = {
    "no_eq_token": {
        0.0: {"n": 384, "gradient_symmetricity": (0.947, 0.993, 0.997), "distance_irrelevance": (0.173, 0.543, 0.964)},
        1.0: {"n": 370, "gradient_symmetricity": (0.256, 0.484, 0.751), "distance_irrelevance": (0.699, 0.854, 0.967)},
    },
    "eq_token": {
        0.0: {"n": 76, "gradient_symmetricity": (0.967, 0.992, 0.997), "distance_irrelevance": (0.143, 0.552, 0.928)},
        1.0: {"n": 66, "gradient_symmetricity": (0.608, 0.948, 0.971), "distance_irrelevance": (0.692, 0.862, 0.965)},
    },
    "selection": "coefficient < 0.1 (listed under 0.0) or ≥ 0.9 (under 1.0); their notebook's model A (coefficient 0): "
                 "gradient symmetricity 0.994, distance irrelevance 0.172",
}



#: Why the coefficient-0 runs carry no label (issue 18), written into the summary and the page.
NOTE = ("Attention coefficient 0 is not identifiable in this layout. Our model reads out at '=', which with constant "
        "attention sees a and b only through (E_a + E_b)·W_V, so gradient symmetricity is 1 for any such model, "
        "trained or untrained (an untrained one gives 1.000000): the 'GS 1.00' of these runs is forced by the "
        "architecture, not evidence of a pizza, and identify_algorithm labels them 'not identifiable' (their "
        "distance irrelevance and circularity are still measured). Coefficient 1 is identifiable (untrained models "
        "give 0.9995 and are labelled neither; trained ones 0.28–0.46). The study will be redone in Zhong et al.'s "
        "layout (tokens [a, b], no '=', read out at b) once the trainer supports it (a separate issue).")


#: The note of the study in Zhong et al.'s layout.
NOTE_A_B = ("Zhong et al.'s layout: tokens [a, b] (no '='), both positions attend to both, read out at b. Nothing is "
            "forced there: with constant attention the readout still adds its own E_b to the attention's sum, so "
            "untrained models sit below the pizza threshold at every coefficient (the controls: each run's own "
            "initialisation, its epoch-0 checkpoint, measured the same way), and a pizza label is evidence. Their "
            "settings otherwise (p 59, 80 %, d_model 128, 4 heads, d_mlp 512, ReLU, AdamW lr 1e-3, weight decay 2, "
            "betas 0.9/0.98, full batch); the runs not yet trained train as one stack (the attention coefficient is a "
            "per-run value).")

#: The values the issue quotes for their released table (median): pizza, clock.
ISSUE_QUOTED = {"pizza": {"gradient_symmetricity": 0.993, "distance_irrelevance": 0.55},
                "clock": {"gradient_symmetricity": 0.52, "distance_irrelevance": 0.855}}

#: Signatures measured per run and per control.
MEASURES = ("gradient_symmetricity", "distance_irrelevance", "circularity_zhong")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=tuple(LAYOUTS), default="a_b_eq",
                    help="a_b_eq: ours ([a, b, =], causal, read out at '='; one run after another); a_b: Zhong et "
                         "al.'s ([a, b], both positions attend to both, read out at b; every run in one stack)")
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--coeffs", type=S.floats, default=[1.0, 0.0])
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="default: 4,000 (a_b_eq, for the CPU); 20,000 (a_b, theirs)")
    ap.add_argument("--track", type=int, default=None,
                    help="checkpoints along training to identify (0 = none; default 5, a_b: 0)")
    ap.add_argument("--controls", type=int, default=None,
                    help="a_b: untrained controls per coefficient: the epoch-0 checkpoints of the first this many seeds' "
                         "runs (default: every seed; 0 = none)")
    ap.add_argument("--threads", type=int, default=None, help="a_b: torch threads of the stack (default 1)")
    ap.add_argument("--runs-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    d = LAYOUTS[args.layout]
    args.epochs = d["epochs"] if args.epochs is None else args.epochs
    args.track = d["track"] if args.track is None else args.track
    args.runs_dir = Path(d["runs_dir"]) if args.runs_dir is None else args.runs_dir
    args.out = Path(d["out"]) if args.out is None else args.out
    args.controls = len(args.seeds) if args.controls is None else args.controls
    return args


def config(args, coeff: float, seed: int):
    import grokinterp as gi

    extra = {"input_layout": "a_b"} if args.layout == "a_b" else {}
    return gi.make_config("paper", p=args.p, frac_train=0.8, weight_decay=2.0, lr=1e-3, attn_coeff=coeff,
                          epochs=args.epochs, split_seed=seed, init_seed=seed, eval_every=50, every=100,
                          flush_every=10, live_every=0, device="cpu", **extra)


def run_dir(args, coeff: float, seed: int) -> Path:
    return args.runs_dir / f"add-p{args.p}-coeff{coeff:g}-s{seed}"


def train_stack(args, items):
    """``a_b``: the runs of ``items`` (``(coeff, seed)``), reused where finished, resumed where interrupted, the
    rest trained as one stack (coefficients × seeds: the attention coefficient is a per-run value)."""
    import grokinterp as gi
    from grokinterp.training.stacked import StackInterrupted, resume_stacked

    cfgs = [config(args, c, s) for c, s in items]
    outs = [run_dir(args, c, s) for c, s in items]
    todo = []
    for cfg, out in zip(cfgs, outs):
        try:
            run = gi.load_run(out)
            if run.config == cfg and run.finished:
                continue
        except gi.GrokinterpError:
            pass
        todo.append((cfg, out))
    partial = [o for c, o in todo if (o / "run.json").exists()]
    try:
        if partial and len(partial) == len(todo):
            resume_stacked(partial, progress=False, threads=args.threads)
        elif todo:
            print(f"training {len(todo)} runs as one stack, {args.epochs} epochs", flush=True)
            gi.train_stacked([c for c, _ in todo], [o for _, o in todo], progress=False, overwrite=True,
                             threads=args.threads)
    except StackInterrupted:
        print("stack interrupted: the runs are resumable; analysing their last checkpoints", flush=True)
    return [gi.load_run(o) for o in outs]


def _spreads(df) -> dict:
    """Per attention coefficient: median, min and max of each signature over seeds, and the labels."""
    return {f"{c:g}": {m: S.seed_spread(part[m].tolist()) for m in MEASURES}
            | {"labels": part["label"].value_counts().to_dict()}
            for c, part in df.groupby("attn_coeff", sort=False)}


def _fmt(sp: dict) -> str:
    return "—" if sp["median"] is None else f"{sp['median']:.3f} ({sp['min']:.3f}–{sp['max']:.3f})"


def _epoch(v) -> str:
    return "—" if v is None or v != v else str(int(v))


def table_md(args, df, ctl, spreads) -> str:
    """The study's tables (Markdown): per coefficient beside Zhong et al.'s, then per run."""
    lines = [f"Clock vs pizza in Zhong et al.'s layout: a + b mod {args.p}, {len(args.seeds)} seeds per coefficient, "
             f"{args.epochs} epochs (theirs: 20,000); the runs still untrained at each invocation train as one stack. "
             f"Median (min–max) over seeds.", "",
             "| attention coefficient | labels | gradient symmetricity | distance irrelevance | untrained: GS | "
             "untrained: DI | Zhong et al. released table, median (10–90 %) | issue's quote |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c, sp in spreads.items():
        z = ZHONG["no_eq_token"].get(float(c))
        zs = (f"GS {z['gradient_symmetricity'][1]} ({z['gradient_symmetricity'][0]}–{z['gradient_symmetricity'][2]}), "
              f"DI {z['distance_irrelevance'][1]} ({z['distance_irrelevance'][0]}–{z['distance_irrelevance'][2]}), "
              f"n = {z['n']}") if z else "—"
        q = ISSUE_QUOTED.get({"0": "pizza", "1": "clock"}.get(c, ""))
        qs = f"GS {q['gradient_symmetricity']}, DI {q['distance_irrelevance']}" if q else "—"
        cs = (ctl[ctl["attn_coeff"] == float(c)] if len(ctl) else ctl)
        cgs = _fmt(S.seed_spread(cs["gradient_symmetricity"].tolist())) if len(cs) else "—"
        cdi = _fmt(S.seed_spread(cs["distance_irrelevance"].tolist())) if len(cs) else "—"
        labels = ", ".join(f"{k} ×{v}" for k, v in sp["labels"].items())
        lines.append(f"| {c} | {labels} | {_fmt(sp['gradient_symmetricity'])} | {_fmt(sp['distance_irrelevance'])} | "
                     f"{cgs} | {cdi} | {zs} | {qs} |")
    lines += ["", "| attention coefficient | seed | label | gradient symmetricity | distance irrelevance | circularity "
              "(theirs) | accuracy, all pairs | final test accuracy | test ≥ 99 % at epoch | key frequencies |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in df.itertuples():
        lines.append(f"| {r.attn_coeff:g} | {r.seed} | {r.label} | {r.gradient_symmetricity:.4f} | "
                     f"{r.distance_irrelevance:.4f} | {r.circularity_zhong:.3f} | {r.accuracy_all_pairs:.4f} | "
                     f"{r.final_test_acc:.4f} | {_epoch(r.test_acc_99_epoch)} | "
                     f"{', '.join(map(str, r.key_freqs))} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    from grokinterp.analysis.algorithms import RULE, algorithm_over_training, identify_algorithm
    from grokinterp.viz.plotting import embedding_circles

    rows, controls, tracks, figs = [], [], [], []
    items = [(c, s) for c in args.coeffs for s in args.seeds]
    stacked = dict(zip(items, train_stack(args, items))) if args.layout == "a_b" else {}
    for coeff in args.coeffs:
        for seed in args.seeds:
            out = run_dir(args, coeff, seed)
            run = stacked.get((coeff, seed)) or S.train_until(config(args, coeff, seed), out)
            r = identify_algorithm(run)
            rows.append({"attn_coeff": coeff, "seed": seed, "label": r.label,
                         "gradient_symmetricity": r.gradient_symmetricity, "distance_irrelevance": r.distance_irrelevance,
                         "circularity_zhong": r.circularity_zhong,
                         "circularity_key_mean": float(np.mean(list(r.circularity.values()))) if r.circularity else None,
                         "accuracy_all_pairs": r.accuracy, "key_freqs": list(r.key_freqs),
                         "test_acc_99_epoch": S.epochs_to(run), "reason": r.reason, "run": str(out)})
            print({k: v for k, v in rows[-1].items() if k not in ("reason", "run")}, flush=True)
            if seed == args.seeds[0] and r.circles:
                figs.append((f"Embedding circles, attention coefficient {coeff:g} (seed {seed})",
                             f"{r.label}: {r.reason}", embedding_circles(r.circles, label=r.label)))
            rows[-1]["final_test_acc"] = float(run.evals["test_acc"].iloc[-1])
            rows[-1]["epochs_trained"] = int(run.evals["epoch"].iloc[-1])
            if args.layout == "a_b" and seed in args.seeds[:args.controls]:
                c0 = identify_algorithm(run, epoch=0)
                controls.append({"attn_coeff": coeff, "seed": seed, "label": c0.label,
                                 "gradient_symmetricity": c0.gradient_symmetricity,
                                 "distance_irrelevance": c0.distance_irrelevance,
                                 "circularity_zhong": c0.circularity_zhong, "accuracy_all_pairs": c0.accuracy})
                print("  untrained:", controls[-1], flush=True)
            if args.track:
                t = algorithm_over_training(run, max_checkpoints=args.track, n_samples=300)
                t.insert(0, "seed", seed)
                t.insert(0, "attn_coeff", coeff)
                tracks.append(t)
    df = pd.DataFrame(rows)
    spreads = _spreads(df)
    ctl = pd.DataFrame(controls)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    extra = {}
    if args.layout == "a_b":
        extra = {"zhong_epochs": 20000, "controls": controls, "control_spreads": _spreads(ctl) if len(ctl) else {},
                 "issue_quoted": ISSUE_QUOTED}
        (args.out / "table.md").write_text(table_md(args, df, ctl, spreads))
        print((args.out / "table.md").read_text())
    track = pd.concat(tracks) if tracks else pd.DataFrame()
    if len(track):
        track.to_csv(args.out / "over_training.csv", index=False)
    S.write_json(args.out / "summary.json", {
        "settings": S.settings(args),
        "rule": RULE, "note": NOTE_A_B if args.layout == "a_b" else NOTE, "runs": rows, "spreads": spreads, **extra,
        "zhong_released_table": {k: ({str(c): v for c, v in d.items()} if isinstance(d, dict) else d)
                                 for k, d in ZHONG.items()}})
    fig = go.Figure()
    for key, sym in (("no_eq_token", "square-open"), ("eq_token", "diamond-open")):
        for c, v in ZHONG[key].items():
            gs, di = v["gradient_symmetricity"], v["distance_irrelevance"]
            fig.add_trace(go.Scatter(x=[di[1]], y=[gs[1]], mode="markers", marker=dict(symbol=sym, size=14),
                                     error_x=dict(type="data", symmetric=False, array=[di[2] - di[1]], arrayminus=[di[1] - di[0]]),
                                     error_y=dict(type="data", symmetric=False, array=[gs[2] - gs[1]], arrayminus=[gs[1] - gs[0]]),
                                     name=f"Zhong et al. {key.replace('_', ' ')}, coefficient {c:g} (median, 10–90 %)"))
    for c, part in df.groupby("attn_coeff", sort=False):
        fig.add_trace(go.Scatter(x=part["distance_irrelevance"], y=part["gradient_symmetricity"], mode="markers",
                                 marker=dict(size=10), text=[f"seed {s}: {lab}" for s, lab in zip(part["seed"], part["label"])],
                                 name=f"ours, coefficient {c:g}"))
    fig.update_layout(template="plotly_white", height=520, title=f"Gradient symmetricity vs distance irrelevance (a+b mod {args.p})",
                      xaxis=dict(title="distance irrelevance", range=[0, 1.05]),
                      yaxis=dict(title="gradient symmetricity", range=[-0.1, 1.05]))
    sections = [("Signatures", "Pizza: top left (symmetric gradients, distance-dependent logits); clock: lower right.", fig)]
    sections += figs
    sections.append(("Per run", RULE, df.drop(columns=["run", "reason"])))
    if len(track):
        sections.append(("Along training", "identify_algorithm at checkpoints (300 triples each).", track))
    if len(ctl):
        sections.append(("Untrained controls", "Each run's initialisation (epoch 0), measured the same way.", ctl))
    S.write_report(args.out / "clock_pizza.html", "Clock or pizza: attention coefficient 1 vs 0"
                   + (" (Zhong et al.'s layout)" if args.layout == "a_b" else ""),
                   f"<p><b>{html.escape(NOTE_A_B if args.layout == 'a_b' else NOTE)}</b></p><p>{html.escape(RULE)}</p>",
                   sections)
    print(df.drop(columns=["run", "reason"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
