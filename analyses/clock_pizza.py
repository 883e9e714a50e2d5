"""Clock vs pizza (Zhong et al. 2023): attention coefficient 1 vs 0 on a + b mod 59, in their setting.

Their setting (``code/train-main.py``, ``result/1l_fixedwidth.csv``): p = 59, 80 % of the pairs, one layer,
d_model 128, 4 heads, d_mlp 512, ReLU, AdamW lr 1e-3, weight decay 2, betas (0.9, 0.98), full batch, 20,000
epochs; attention weights ``α·softmax + (1 − α)`` (all ones, not 1/n); no ``=`` token by default,
bidirectional attention. Ours: the same numbers, with the ``=`` token and causal attention (the final
position sees ``a``, ``b`` and ``=`` either way) and ``--epochs`` (default 4000, for the CPU).

Coefficient 0 is not identifiable in our layout (see :data:`NOTE`): the readout at ``=`` forces gradient
symmetricity to 1, and those runs are labelled "not identifiable"; the study is to be redone in Zhong et
al.'s layout (tokens ``[a, b]``, read out at ``b``) once the trainer has it.

For each coefficient and seed this trains a run and identifies the algorithm at the last checkpoint
(:func:`grokinterp.analysis.algorithms.identify_algorithm`: gradient symmetricity over 1000 random triples,
distance irrelevance, circularity, the rule) and, every ``--track`` checkpoints, along training. Writes
into ``--out``: ``runs.csv`` (per run: the signatures, label, accuracy, key frequencies), ``summary.json``
(spreads, and Zhong et al.'s values recomputed from their released table for comparison) and
``clock_pizza.html`` (signatures of every run against theirs, the embedding circles of one run per
coefficient, the table).

Example:
    python analyses/clock_pizza.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

import _study as S

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


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--coeffs", type=S.floats, default=[1.0, 0.0])
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=4000)
    ap.add_argument("--track", type=int, default=5, help="checkpoints along training to identify (0 = none)")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_clock_pizza"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/clock_pizza"))
    return ap.parse_args(argv)


def config(args, coeff: float, seed: int):
    import grokinterp as gi

    return gi.make_config("paper", p=args.p, frac_train=0.8, weight_decay=2.0, lr=1e-3, attn_coeff=coeff,
                          epochs=args.epochs, split_seed=seed, init_seed=seed, eval_every=50, every=100,
                          flush_every=10, live_every=0, device="cpu")


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go

    from grokinterp.analysis.algorithms import RULE, algorithm_over_training, identify_algorithm
    from grokinterp.viz.plotting import embedding_circles

    rows, tracks, figs = [], [], []
    for coeff in args.coeffs:
        for seed in args.seeds:
            out = args.runs_dir / f"add-p{args.p}-coeff{coeff:g}-s{seed}"
            run = S.train_until(config(args, coeff, seed), out)
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
            if args.track:
                t = algorithm_over_training(run, max_checkpoints=args.track, n_samples=300)
                t.insert(0, "seed", seed)
                t.insert(0, "attn_coeff", coeff)
                tracks.append(t)
    df = pd.DataFrame(rows)
    spreads = {f"{c:g}": {m: S.seed_spread(part[m].tolist()) for m in ("gradient_symmetricity", "distance_irrelevance",
                                                                      "circularity_zhong")}
               | {"labels": part["label"].value_counts().to_dict()}
               for c, part in df.groupby("attn_coeff", sort=False)}
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    track = pd.concat(tracks) if tracks else pd.DataFrame()
    if len(track):
        track.to_csv(args.out / "over_training.csv", index=False)
    S.write_json(args.out / "summary.json", {
        "settings": S.settings(args),
        "rule": RULE, "note": NOTE, "runs": rows, "spreads": spreads,
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
    S.write_report(args.out / "clock_pizza.html", "Clock or pizza: attention coefficient 1 vs 0",
                   f"<p><b>{html.escape(NOTE)}</b></p><p>{html.escape(RULE)}</p>", sections)
    print(df.drop(columns=["run", "reason"]).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
