"""Probes of lazy→rich and numerical stability over training (issue 20, item 4).

Trains a + b mod p (the ``quick`` recipe at p = 59, 50 % of pairs, lr 1e-3, as ``stablemax.py``) under four
conditions, three seeds each (each condition one stacked run of its seeds), then computes the probes of
:mod:`grokinterp.analysis.probes` at the checkpoints and compares them with the published claims:

==================  ======================================================================
condition           setting
==================  ======================================================================
``adamw_wd``        AdamW, weight decay 1, softmax cross-entropy (groks)
``adamw_nowd``      AdamW, no weight decay, softmax cross-entropy (Prieto et al.: softmax collapse)
``stablemax``       AdamW, no weight decay, StableMax cross-entropy (Prieto et al.: no collapse)
``ortho_adamw``     ⊥AdamW (gradient orthogonal to θ), no weight decay, softmax cross-entropy
==================  ======================================================================

Claims checked (each over the seeds; the controls are the untrained checkpoint, epoch 0, and the final
checkpoint with its labels / token order / update shuffled):

* Prieto et al. 2025: without weight decay the softmax-collapse fraction rises while test accuracy stalls;
  StableMax prevents it; updates align with the weights (naïve loss minimisation) without decay.
* Kumar et al. 2023: NTK–label alignment rises as the network leaves the lazy regime (dips then recovers
  around grokking in some of their settings).
* Liu et al. 2022: the representation quality index rises with generalisation.

Writes into ``--out`` incrementally: ``probes.csv`` (one row per run and checkpoint), ``controls.csv``,
``summary.json`` (settings, per-condition statistics with spreads over seeds) and ``probes.html``.

Example:
    OMP_NUM_THREADS=1 nice -n 5 python analyses/probes_study.py --stage train
    OMP_NUM_THREADS=1 nice -n 5 python analyses/probes_study.py --stage probes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _study as S

CONDITIONS = {
    "adamw_wd": dict(optimizer="adamw", loss="cross_entropy", weight_decay=1.0),
    "adamw_nowd": dict(optimizer="adamw", loss="cross_entropy", weight_decay=0.0),
    "stablemax": dict(optimizer="adamw", loss="stablemax", weight_decay=0.0),
    "ortho_adamw": dict(optimizer="ortho_adamw", loss="cross_entropy", weight_decay=0.0),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("train", "probes", "all"), default="all")
    ap.add_argument("--p", type=int, default=59)
    ap.add_argument("--frac-train", type=float, default=0.5)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3000)
    ap.add_argument("--every", type=int, default=50, help="checkpoint every N epochs")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ntk-every", type=int, default=4, help="NTK alignment at every k-th checkpoint")
    ap.add_argument("--ntk-inputs", type=int, default=32)
    ap.add_argument("--ntk-classes", type=int, default=4)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_probes"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/probes"))
    return ap.parse_args(argv)


def config(args, cond: str, seed: int):
    import grokinterp as gi

    return gi.make_config("quick", p=args.p, frac_train=args.frac_train, epochs=args.epochs, lr=args.lr,
                          split_seed=seed, init_seed=seed, eval_every=10, every=args.every, log_early=0,
                          flush_every=20, live_every=0, device="cpu", **CONDITIONS[cond])


def run_dir(args, cond: str, seed: int) -> Path:
    return args.runs_dir / f"add-p{args.p}-{cond}-s{seed}"


def train(args) -> None:
    import grokinterp as gi
    from grokinterp.training.stacked import train_stacked

    for cond in args.conditions.split(","):
        outs = [run_dir(args, cond, s) for s in args.seeds]
        done = all((o / "run.json").exists() and gi.load_run(o).finished for o in outs)
        if done:
            continue
        t = time.time()
        train_stacked([config(args, cond, s) for s in args.seeds], outs, progress=False, overwrite=True)
        print(f"trained {cond} ({len(outs)} seeds stacked) in {time.time() - t:.0f} s", flush=True)


CHEAP = ["losses", "softmax_collapse", "update_cos", "logit_scale", "rqi"]


def controls(run, args) -> dict:
    """The probes at the final checkpoint with the labels / token order / update shuffled (seeded)."""
    import torch

    import grokinterp.analysis.probes as P
    from grokinterp.analysis.inputs import residue_outputs, run_task_arrays
    from grokinterp.analysis.keyfreqs import resolve_key_frequencies
    from grokinterp.analysis.probes.rqi import circle_quality
    from grokinterp.model.grid import grid_outputs, grid_tokens

    g = torch.Generator().manual_seed(0)
    labels, train, _test, _valid = run_task_arrays(run)
    full = {k: v[None] for k, v in run.params(-1).items()}
    params, cfg = residue_outputs(full, run.config.model)
    p = run.p
    with torch.no_grad():
        L = grid_outputs(params, cfg).logits.reshape(1, p * p, -1)[:, train]
    y = labels[train]
    y_shuf = y[torch.randperm(len(y), generator=g)]
    idx = P.ntk_subset(train, labels, n_inputs=args.ntk_inputs, n_classes=args.ntk_classes)
    K = P.ntk_gram(params, cfg, grid_tokens(p)[idx])
    yk = labels[idx]
    W_E = params["embed.W_E"][0, :p]
    keys = [int(k) for k in resolve_key_frequencies(run, None, None).freqs]
    prev = {k: v[None] for k, v in run.params(run.epochs[-2]).items()}
    flat_d = torch.cat([(full[k] - prev[k]).reshape(-1) for k in full])
    flat_d = flat_d[torch.randperm(len(flat_d), generator=g)]
    shuf, o = {}, 0
    for k in full:
        n = full[k].numel()
        shuf[k] = prev[k] + flat_d[o:o + n].reshape(prev[k].shape)
        o += n
    return {
        "sc_train": float(P.softmax_collapse(L, y[None])), "sc_train_shuffled": float(P.softmax_collapse(L, y_shuf[None])),
        "logit_margin": float(P.logit_margin(L, y[None])),
        "logit_margin_shuffled": float(P.logit_margin(L, y_shuf[None])),
        "ntk_alignment": float(P.kernel_alignment(K, P.label_kernel(yk))),
        "ntk_alignment_shuffled": float(P.kernel_alignment(K, P.label_kernel(yk[torch.randperm(len(yk), generator=g)]))),
        "rqi": float(P.representation_quality(W_E, p)),
        "rqi_shuffled": float(P.representation_quality(W_E[torch.randperm(p, generator=g)], p)),
        "rqi_circle": float(circle_quality(W_E, p)),
        "rqi_circle_shuffled": float(circle_quality(W_E[torch.randperm(p, generator=g)], p)),
        "rqi_circle_key": float(circle_quality(W_E, p, freqs=keys)),
        "rqi_circle_key_shuffled": float(circle_quality(W_E[torch.randperm(p, generator=g)], p, freqs=keys)),
        "update_weight_cos": float(P.update_weight_cosine(prev, full)),
        "update_weight_cos_shuffled": float(P.update_weight_cosine(prev, shuf)),
    }


def measure(args) -> None:
    """Probes of every finished run, appended to probes.csv / controls.csv (runs already there are skipped)."""
    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.probes.measures import NTKAlignment

    args.out.mkdir(parents=True, exist_ok=True)
    table, ctl = args.out / "probes.csv", args.out / "controls.csv"
    done = set(pd.read_csv(table)["run"]) if table.exists() else set()
    for cond in args.conditions.split(","):
        for seed in args.seeds:
            out = run_dir(args, cond, seed)
            name = out.name
            if name in done or not (out / "run.json").exists():
                continue
            run = gi.load_run(out)
            if not run.finished:
                continue
            t = time.time()
            df = progress_measures(run, measures=CHEAP)
            t_cheap = time.time() - t
            ntk_eps = run.epochs[::args.ntk_every]
            if run.epochs[-1] not in ntk_eps:
                ntk_eps = list(ntk_eps) + [run.epochs[-1]]
            t = time.time()
            ntk = progress_measures(run, epochs=ntk_eps, measures=[NTKAlignment(args.ntk_inputs, args.ntk_classes)])
            t_ntk = time.time() - t
            df = df.merge(ntk, on="epoch", how="left")
            df.insert(0, "seed", seed)
            df.insert(0, "condition", cond)
            df.insert(0, "run", name)
            c = {"run": name, "condition": cond, "seed": seed, **controls(run, args),
                 "untrained_" + "ntk_alignment": float(ntk["ntk_alignment"].iloc[0]),
                 "untrained_sc_train": float(df["sc_train"].iloc[0]), "untrained_rqi": float(df["rqi"].iloc[0]),
                 "untrained_logit_margin": float(df["logit_margin"].iloc[0]),
                 "seconds_cheap_probes": t_cheap, "seconds_ntk": t_ntk, "n_ntk_checkpoints": len(ntk_eps),
                 "n_checkpoints": len(df)}
            for path, new in ((table, df), (ctl, pd.DataFrame([c]))):  # rewritten whole: columns may have grown
                both = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.exists() else new
                both.to_csv(path.with_suffix(".tmp"), index=False)
                path.with_suffix(".tmp").replace(path)
            print(f"probed {name}: cheap {t_cheap:.1f} s for {len(df)} checkpoints, NTK {t_ntk:.1f} s for "
                  f"{len(ntk_eps)}", flush=True)


def backfill(args) -> None:
    """Columns added to the probes after some runs were measured (``rqi_circle``): computed for those runs."""
    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.measures import progress_measures

    table = args.out / "probes.csv"
    if not table.exists():
        return
    df = pd.read_csv(table)
    if "rqi_circle" in df.columns and df["rqi_circle"].notna().all() and "rqi_circle_rule" in df.columns:
        return
    parts = []
    for name, d in df.groupby("run", sort=False):
        if "rqi_circle_rule" not in d.columns or d["rqi_circle_rule"].isna().any():
            r = progress_measures(gi.load_run(args.runs_dir / name), measures=["rqi"])
            d = d.drop(columns=[c for c in ("rqi", "rqi_circle", "rqi_circle_rule") if c in d.columns]) \
                .merge(r, on="epoch", how="left")
            d["rqi_circle_rule"] = "key frequencies " + ",".join(map(str, r.attrs["key_freqs"]))
        parts.append(d)
    out = pd.concat(parts, ignore_index=True)
    tmp = table.with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(table)
    ctl = args.out / "controls.csv"
    cdf = pd.read_csv(ctl)
    if "rqi_circle_key" not in cdf.columns:
        cdf = cdf.set_index("run")
        for name in cdf.index:
            c = controls(gi.load_run(args.runs_dir / name), args)
            for k in ("rqi_circle", "rqi_circle_shuffled", "rqi_circle_key", "rqi_circle_key_shuffled"):
                cdf.loc[name, k] = c[k]
        cdf.reset_index().to_csv(ctl.with_suffix(".tmp"), index=False)
        ctl.with_suffix(".tmp").replace(ctl)
    print(f"backfilled rqi_circle for {df['run'].nunique()} runs", flush=True)


def summarize(args) -> None:
    """Per-condition statistics over the seeds, beside the published claims; summary.json and probes.html."""
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table, ctl = args.out / "probes.csv", args.out / "controls.csv"
    if not table.exists():
        print("no probes yet")
        return
    df, cdf = pd.read_csv(table), pd.read_csv(ctl)
    rows = []
    for (cond, seed), d in df.groupby(["condition", "seed"], sort=False):
        d = d.sort_values("epoch")
        hit = d[d["test_acc"] >= 0.99]
        t99 = int(hit["epoch"].iloc[0]) if len(hit) else None
        mem = d[d["train_acc"] >= 0.99]
        t_mem = int(mem["epoch"].iloc[0]) if len(mem) else None
        n = d.dropna(subset=["ntk_alignment"])
        i_min = int(n["ntk_alignment"].idxmin())
        late = d[d["epoch"] >= (t_mem or 0) + 200]
        sc_half = d[d["sc_train"] >= 0.5]
        rows.append({
            "condition": cond, "seed": int(seed), "epoch_train_99": t_mem, "epoch_test_99": t99,
            "final_test_acc": float(d["test_acc"].iloc[-1]),
            "final_sc_train": float(d["sc_train"].iloc[-1]), "max_sc_train": float(d["sc_train"].max()),
            "epoch_sc_train_50": int(sc_half["epoch"].iloc[0]) if len(sc_half) else None,
            "final_logit_margin": float(d["logit_margin"].iloc[-1]),
            "median_update_cos_after_memorization": float(late["update_weight_cos"].median()) if len(late) else None,
            "ntk_alignment_init": float(n["ntk_alignment"].iloc[0]), "ntk_alignment_min": float(n["ntk_alignment"].min()),
            "epoch_ntk_alignment_min": int(n.loc[i_min, "epoch"]), "ntk_alignment_final": float(n["ntk_alignment"].iloc[-1]),
            "rqi_init": float(d["rqi"].iloc[0]), "rqi_max": float(d["rqi"].max()), "rqi_final": float(d["rqi"].iloc[-1]),
            "spearman_rqi_test_acc": float(d["rqi"].rank().corr(d["test_acc"].rank())),
            "rqi_circle_init": float(d["rqi_circle"].iloc[0]), "rqi_circle_final": float(d["rqi_circle"].iloc[-1]),
            "spearman_rqi_circle_test_acc": float(d["rqi_circle"].rank().corr(d["test_acc"].rank())),
            "spearman_ntk_test_acc": float(n["ntk_alignment"].rank().corr(n["test_acc"].rank())),
        })
    per_run = pd.DataFrame(rows)
    per_run.to_csv(args.out / "runs.csv", index=False)
    stats = {}
    for cond, d in per_run.groupby("condition", sort=False):
        stats[cond] = {c: {"median": float(np.nanmedian(d[c].astype(float))), "min": float(np.nanmin(d[c].astype(float))),
                           "max": float(np.nanmax(d[c].astype(float))), "n": int(d[c].notna().sum())}
                       for c in per_run.columns if c not in ("condition", "seed") and d[c].notna().any()}
    ctl_stats = {cond: {c: {"median": float(d[c].median()), "min": float(d[c].min()), "max": float(d[c].max())}
                        for c in cdf.columns if c not in ("run", "condition", "seed")}
                 for cond, d in cdf.groupby("condition", sort=False)}
    S.write_json(args.out / "summary.json", {"settings": S.settings(args), "conditions": CONDITIONS,
                                             "per_condition": stats, "controls": ctl_stats, "runs": rows})
    cols = [("test_acc", "test accuracy"), ("sc_train", "softmax collapse (train)"),
            ("logit_margin", "logit margin (train)"), ("update_weight_cos", "cos(Δθ, θ)"),
            ("ntk_alignment", "NTK–label alignment"), ("rqi", "RQI (integer parallelograms)"),
            ("rqi_circle", "RQI of circles (modular parallelograms as rotations)")]
    fig = make_subplots(rows=len(cols), cols=1, shared_xaxes=True, subplot_titles=[t for _, t in cols],
                        vertical_spacing=0.03)
    palette = dict(zip(CONDITIONS, ["#636efa", "#999999", "#ef553b", "#00cc96"]))
    for (cond, seed), d in df.groupby(["condition", "seed"], sort=False):
        for i, (c, _) in enumerate(cols, 1):
            dd = d.dropna(subset=[c])
            fig.add_trace(go.Scatter(x=dd["epoch"], y=dd[c], mode="lines", line=dict(color=palette.get(cond), width=1),
                                     name=cond, legendgroup=cond, showlegend=i == 1 and int(seed) == args.seeds[0]),
                          row=i, col=1)
    fig.update_layout(template="plotly_white", height=260 * len(cols),
                      title=f"Probes over training (a + b mod {args.p}, {args.frac_train:.0%} of pairs)")
    fig.update_xaxes(title_text="epoch", row=len(cols), col=1)
    S.write_report(args.out / "probes.html", "Probes of lazy→rich and numerical stability",
                   "<p>Four conditions × seeds (see the study's docstring); one line per seed. Controls: "
                   "controls.csv (untrained = epoch 0; shuffled labels / token order / update at the final "
                   "checkpoint).</p>",
                   [("Probes over training", "Colour = condition.", fig),
                    ("Per run", "Epochs are checkpoint epochs (every --every).", per_run),
                    ("Controls", "Final checkpoint: as measured and with the labels (collapse, margin, NTK), token "
                                 "order (RQI) or update entries (cosine) shuffled.", cdf)])
    print(per_run.to_string())


def probes(args) -> None:
    measure(args)
    backfill(args)
    summarize(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage in ("train", "all"):
        train(args)
    if args.stage in ("probes", "all"):
        probes(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
