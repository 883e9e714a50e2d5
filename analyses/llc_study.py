"""The local learning coefficient over training (issue 20, item 3).

Part ``mlp`` reproduces devinterp's grokking example (Timaeus, ``examples/grokking.ipynb``) in its own
setting (preset ``mlp-devinterp``) and sampler values: SGLD ε = 3e-3, γ = 5, nβ = 2, 500 draws, batches of
128 (their notebook runs one chain per checkpoint; we run ``--chains``). Their curve: λ̂ ≈ 21 at the
start, a peak ≈ 50 at memorization, ≈ 22–24 after generalization; their final estimate 27.6 is a
separate call (ε = 0.03, nβ = 2, γ = 5, 3 chains × 1,500 draws), repeated here at each run's last
checkpoint.

Parts ``tiny`` / ``quick`` measure what none of the anchors has: the LLC of the one-layer transformer
over its checkpoints beside the restricted and excluded loss, ≥ 3 seeds, and whether the LLC turns
before, with or after the circuit forms (restricted accuracy ≥ 99 %, Nanda et al.'s progress measure).
The sampler values of these parts come from a calibration grid (``calibration_<part>.csv``; the
settings below are the chosen ones).

Writes into ``--out`` (one CSV per part, rewritten after every seed so a partial study is usable):
``<part>_llc.csv`` (one row per seed × checkpoint: the LLC columns and the progress measures),
``<part>_final.csv`` (mlp: devinterp's final-estimate call), ``summary.json`` (per seed: dates of
memorization, circuit formation, generalization, the LLC's peak and half-fall; medians and ranges) and
``llc_study.html``.

    python analyses/llc_study.py --parts mlp --seeds 0,3,4
    python analyses/llc_study.py --parts tiny --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import _study as S
import numpy as np

# part -> (preset, training overrides, sampler values, checkpoint stride)
PARTS = {
    "mlp": ("mlp-devinterp", {"epochs": 3334},  # 30,006 steps: seeds 3 and 4 generalize by ~26k (devinterp_mlp)
            dict(epsilon=3e-3, gamma=5.0, nbeta=2.0, draws=500, batch_size=128), 1),
    # tiny memorizes and forms its circuit within ~40-200 epochs: checkpoints every 5 epochs, the LLC at
    # each one up to epoch 300 and every 50th epoch after (DENSE_UNTIL)
    "tiny": ("tiny", {"epochs": 1000, "every": 5},
             dict(epsilon=1e-3, gamma=100.0, nbeta=10.0, draws=300, batch_size=64), 1),
    "quick": ("quick", {"epochs": 2000, "every": 50, "live_every": 0},
              dict(epsilon=1e-3, gamma=100.0, nbeta=10.0, draws=200, batch_size=64), 2),
}
DENSE_UNTIL = {"tiny": (300, 50)}  # part -> (every checkpoint up to this epoch, then every this many epochs)
FINAL_CALL = dict(epsilon=0.03, gamma=5.0, nbeta=2.0, chains=3, draws=1500, batch_size=128)  # their 27.6
THEIR_FINAL = 27.6


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="mlp,tiny", help="comma-separated: mlp, tiny, quick")
    ap.add_argument("--seeds", type=S.ints, default=[0, 1, 2], help="seeds of the transformer parts")
    ap.add_argument("--mlp-seeds", type=S.ints, default=[0, 3, 4], help="seeds of the mlp part")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/llc_study"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/llc"))
    ap.add_argument("--calibrate", action="store_true", help="only the ε × nβ grid at the last checkpoint of the first seed")
    return ap.parse_args(argv)


def run_for(part, seed, args):
    import grokinterp as gi

    preset, over, _, _ = PARTS[part]
    cfg = gi.make_config(preset, init_seed=seed, split_seed=seed, device="cpu", **over)
    out = args.runs_dir / f"{preset}-s{seed}"
    try:
        run = gi.load_run(out)
        if run.config == cfg and run.finished:
            return run
    except gi.GrokinterpError:
        pass
    return gi.train(cfg, out, progress=False, overwrite=True)


def first(df, col, level=0.99):
    hit = df[df[col] >= level]
    return int(hit["epoch"].iloc[0]) if len(hit) else None


def llc_dates(df):
    """The LLC's peak (running median over 3 checkpoints) and the first checkpoint after it where the LLC
    has fallen half-way from the peak to its final value."""
    y = df["llc_mean"].rolling(3, center=True, min_periods=1).median().to_numpy()
    e = df["epoch"].to_numpy()
    k = int(np.nanargmax(y))
    peak, final = y[k], np.nanmean(y[-3:])
    half = None
    if peak - final > 0.1 * abs(peak):
        after = np.flatnonzero((np.arange(len(y)) > k) & (y <= final + 0.5 * (peak - final)))
        half = int(e[after[0]]) if len(after) else None
    return {"llc_peak_epoch": int(e[k]), "llc_peak": float(peak), "llc_final": float(final), "llc_half_fall_epoch": half}


def study_part(part, seeds, args, summary):
    import pandas as pd

    import grokinterp as gi
    from grokinterp.analysis.llc import LLCWarning, SGLDConfig, llc_over_checkpoints
    from grokinterp.analysis.phases import circuit_formation_epoch

    _, _, sampler, stride = PARTS[part]
    cfg = SGLDConfig(**sampler, chains=args.chains, seed=0)
    frames, rows = [], []
    for seed in seeds:
        t0 = time.time()
        run = run_for(part, seed, args)
        eps = run.epochs[::stride]
        if part in DENSE_UNTIL:
            until, step = DENSE_UNTIL[part]
            eps = np.array([e for e in run.epochs if e <= until or e % step == 0 or e == run.epochs[-1]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LLCWarning)
            llc = llc_over_checkpoints(run, cfg, epochs=eps)
        meas = gi.progress_measures(run, epochs=eps)
        df = llc.merge(meas, on="epoch")
        df.insert(0, "seed", seed)
        frames.append(df)
        row = {"seed": seed, "run": str(run.path), "unit": run.checkpoint_unit,
               "memorized": first(df, "train_acc"), "generalized": first(df, "test_acc"),
               "restricted_99": first(df, "restricted_acc"), "n_unreliable": int((~df["llc_reliable"]).sum()),
               "llc_start": float(df["llc_mean"].iloc[0]), **llc_dates(df),
               "seconds": round(time.time() - t0, 1)}
        try:
            cf = circuit_formation_epoch(meas)
            row.update(circuit_formed=cf.epoch, excluded_loss_above_chance=cf.excluded_loss_epoch)
        except gi.GrokinterpError as e:
            row.update(circuit_formed=None, circuit_note=str(e))
        if part == "mlp":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LLCWarning)
                fin = llc_over_checkpoints(run, SGLDConfig(**FINAL_CALL, seed=1), epochs=[run.epochs[-1]])
            row.update(final_call_llc=float(fin["llc_mean"].iloc[0]), final_call_std=float(fin["llc_std"].iloc[0]),
                       final_call_reliable=bool(fin["llc_reliable"].iloc[0]),
                       final_call_vs_27_6=float(fin["llc_mean"].iloc[0] / THEIR_FINAL - 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        pd.concat(frames).to_csv(args.out / f"{part}_llc.csv", index=False)
        summary[part] = {"sampler": {**sampler, "chains": args.chains, "nbeta_used": llc.attrs["llc"]["nbeta_used"]},
                         "runs": rows, **spreads(rows)}
        S.write_json(args.out / "summary.json", summary)
    return pd.concat(frames)


def spreads(rows):
    keys = ["memorized", "circuit_formed", "excluded_loss_above_chance", "generalized", "llc_peak_epoch",
            "llc_half_fall_epoch", "llc_start", "llc_peak", "llc_final", "final_call_llc"]
    out = {k: S.seed_spread([r.get(k) for r in rows]) for k in keys if any(k in r for r in rows)}
    lead = [r["circuit_formed"] - r["llc_half_fall_epoch"] for r in rows
            if r.get("circuit_formed") is not None and r.get("llc_half_fall_epoch") is not None]
    out["circuit_formed_minus_llc_half_fall"] = S.seed_spread(lead) if lead else None
    return out


def figures(summary, tables):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sections = []
    for part, df in tables.items():
        seeds = sorted(df["seed"].unique())
        fig = make_subplots(rows=len(seeds), cols=1, shared_xaxes=False, specs=[[{"secondary_y": True}]] * len(seeds),
                            subplot_titles=[f"seed {s}" for s in seeds], vertical_spacing=0.08)
        for i, s in enumerate(seeds, 1):
            d = df[df["seed"] == s]
            show = i == 1
            fig.add_trace(go.Scatter(x=d["epoch"], y=d["llc_mean"], name="LLC", line=dict(color="#2ca02c"), showlegend=show,
                                     error_y=dict(type="data", array=d["llc_std"], thickness=1)), row=i, col=1)
            bad = d[~d["llc_reliable"].astype(bool)]
            if len(bad):
                fig.add_trace(go.Scatter(x=bad["epoch"], y=bad["llc_mean"], mode="markers", name="unreliable",
                                         marker=dict(symbol="x-open", color="#d62728", size=8), showlegend=show),
                              row=i, col=1)
            for col, color, dash in (("test_loss", "#7f7f7f", "dot"), ("restricted_loss", "#1f77b4", "solid"),
                                     ("excluded_loss", "#ff7f0e", "solid")):
                if col in d and d[col].notna().any():
                    fig.add_trace(go.Scatter(x=d["epoch"], y=d[col], name=col.replace("_", " "), showlegend=show,
                                             line=dict(color=color, dash=dash, width=1.2)), row=i, col=1, secondary_y=True)
            fig.update_yaxes(type="log", secondary_y=True, row=i, col=1)
            r = next(r for r in summary[part]["runs"] if r["seed"] == s)
            for key, color in (("memorized", "black"), ("circuit_formed", "#1f77b4"), ("generalized", "#7f7f7f")):
                if r.get(key) is not None:
                    fig.add_vline(x=r[key], line=dict(color=color, dash="dash", width=1), row=i, col=1)
        fig.update_layout(template="plotly_white", height=300 * len(seeds) + 100,
                          title=f"{part}: LLC (left) and losses (right, log); dashed: memorized, circuit formed, "
                                "test accuracy 99 %")
        import pandas as pd

        sections.append((f"{part}: LLC over checkpoints", json.dumps(summary[part]["sampler"]), fig))
        sections.append((f"{part}: per seed", "Dates in the run's checkpoint unit.",
                         pd.DataFrame(summary[part]["runs"]).drop(columns=["run"], errors="ignore")))
    return sections


def calibrate_part(part, args):
    import dataclasses

    from grokinterp.analysis.llc import SGLDConfig, calibrate
    from grokinterp.viz.llc_plots import calibration_figure

    _, _, sampler, _ = PARTS[part]
    run = run_for(part, args.seeds[0] if part != "mlp" else args.mlp_seeds[-1], args)
    base = dataclasses.replace(SGLDConfig(**sampler, chains=2), draws=200)
    grid, traces = calibrate(run, [1e-4, 3e-4, 1e-3, 3e-3], [2.0, 10.0, 30.0], base)
    args.out.mkdir(parents=True, exist_ok=True)
    grid.to_csv(args.out / f"calibration_{part}.csv", index=False)
    print(grid[["epsilon", "nbeta", "llc_mean", "llc_std", "llc_rhat", "llc_accept", "llc_flags"]].to_string())
    S.write_report(args.out / f"calibration_{part}.html", f"SGLD calibration: {part}", "",
                   [("ε × nβ", "λ̂/nβ against ε, and the mean loss traces.", calibration_figure(grid, traces))])


def main(argv=None) -> int:
    args = parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"--parts: unknown part(s) {bad}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    if args.calibrate:
        for part in parts:
            calibrate_part(part, args)
        return 0
    import pandas as pd

    path = args.out / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary["settings"] = S.settings(args)
    summary["reference"] = {"devinterp_curve": "≈ 21 at the start, peak ≈ 50 at memorization, ≈ 22–24 after generalization",
                            "devinterp_final_call": THEIR_FINAL, "final_call_settings": FINAL_CALL}
    for part in parts:
        study_part(part, args.mlp_seeds if part == "mlp" else args.seeds, args, summary)
    tables = {p: pd.read_csv(args.out / f"{p}_llc.csv") for p in PARTS if (args.out / f"{p}_llc.csv").exists()}
    summary = json.loads(path.read_text())
    S.write_report(args.out / "llc_study.html", "The local learning coefficient over training",
                   "<p>SGLD estimates of the LLC (grokinterp.analysis.llc) at every analysed checkpoint, beside the "
                   "progress measures. See analyses/README.md.</p>",
                   figures(summary, {p: t for p, t in tables.items() if p in summary}))
    for part in tables:
        if part in summary:
            print(part, json.dumps({k: v for k, v in summary[part].items() if k != "runs"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
