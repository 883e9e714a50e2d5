"""Model-wise and epoch-wise double descent, and Huang et al. 2024's grid (issue 21, item 4).

Huang, Hu, Han, Liu & Sun 2024, "Unified view of grokking, double descent and emergent abilities: a
perspective from circuits competition": a + b mod 113, a 1-layer transformer with 4 heads, the model
size varied through its hidden size d_h, the training set through its number of examples. Their
numbers (Takeaway-1, Figure 3; Section 4.2, Figure 6; means of 11 seeds):

* hidden 64 reaches near-perfect validation accuracy with 3,000 training examples;
* hidden 32 needs 4,000;
* the critical dataset size D_crit falls as the hidden size grows (Assumption 3.1);
* at 2,600 examples the final validation accuracy against the hidden size dips to zero for hidden
  24–40 (model-wise double descent: progression, ungrokking, then semi-grokking);
* near D_crit the models semi-grok (middling final accuracy).

Here (the recipe and how it differs from theirs: docs/anchors.md) every cell of hidden size ×
training examples × seed is one run of the sweep spec `analyses/specs/double_descent.toml`
(`d_model` = d_h, `d_mlp` = 4 d_h; its narrow half, hidden 32-16, is `double_descent_narrow.toml`, a
second sweep run beside the first to fit the CPU budget), trained by `grokinterp.sweep` in stacks, one
group per width (two workers: two stacks per width, trained side by side). Runs that did not finish within the
budget are analysed as far as they got (`epochs_reached`) and named in the summary.

What is computed, per run (`runs.csv`): final train/test accuracy and loss (last evaluation), the
test loss and accuracy at fixed budgets (`--budgets`, epochs), `curve_pattern` of
`grokinterp.analysis.curves` (grokking / double_descent / not_generalized / neither; the epoch-wise
double descent's epochs), the epochs at which train and test accuracy first reached 99 %.
Per cell (`cells.csv`): median, min and max over seeds, generalized seeds (final test accuracy ≥ 99 %),
the most common pattern and the counts of each. Per width: D_crit = the fewest training examples at
which most seeds generalized. Model-wise double descent of the test loss against the width at a budget
uses the same rule as the epoch-wise one (`curves.double_descent`, without smoothing: a fall ≥ 10 %,
a rise ≥ 20 % and ≥ 0.05 nats, a new low). `summary.json` holds the settings, CPU, wall time, cells,
D_crit, and one reproduce-or-contradict statement per claim with its seeds' spread;
`double_descent.html` the figures (their heat map, model-wise curves, epoch-wise curves), and
`sweep_report.html` + `table.csv` the sweep's own report (`grokinterp sweep-report`).

Examples:
    python analyses/double_descent.py                       # train both sweeps (resumes) and analyse
    python analyses/double_descent.py --analyse-only        # analyse what is on disk (while it trains)
    python analyses/double_descent.py --analyse-only --budgets 750,1500   # compare every cell at epoch 1500
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _study  # noqa: E402

#: Huang et al.'s claims, checked by :func:`claims` (their wording, shortened).
PAPER = {
    "hidden 64 generalizes at 3,000": "d_h = 64 reaches near-perfect validation accuracy with 3,000 examples "
                                      "(Takeaway-1, Figure 3)",
    "hidden 32 needs 4,000": "d_h = 32 needs 4,000 examples for near-perfect validation accuracy (Takeaway-1)",
    "D_crit falls with width": "the critical dataset size decreases as the hidden size grows (Assumption 3.1)",
    "dip at 2,600 for hidden 24-40": "at 2,600 examples validation accuracy against hidden size dips to zero "
                                     "for d_h 24-40 (ungrokking; model-wise double descent, Figure 6a)",
    "semi-grokking near D_crit": "near D_crit final validation accuracy is middling (semi-grokking, Figure 3)",
}
GENERALIZED = 0.99
#: The hidden sizes of their Figure 3 (critical dataset size against width): the D_crit trend is judged there.
FIG3_WIDTHS = (32, 64)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    specs = Path(__file__).resolve().parent / "specs"
    ap.add_argument("--spec", type=Path, nargs="+", default=[specs / "double_descent.toml",
                                                             specs / "double_descent_narrow.toml"],
                    help="sweep spec(s) to train, one per --sweep-dir")
    ap.add_argument("--sweep-dir", type=Path, nargs="+",
                    default=[Path("checkpoints/double_descent"), Path("checkpoints/double_descent_narrow")],
                    help="sweep directories (read together; a cell found in two is taken from the one that got "
                         "further)")
    ap.add_argument("--out", type=Path, default=Path("analyses/results/double_descent"))
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: the spec's)")
    ap.add_argument("--budgets", type=_study.ints, default=None, metavar="E1,E2",
                    help="epochs at which the model-wise curves are read; the last is the analysis budget at which "
                         "every cell is compared (default: half the runs' epochs and their epochs)")
    ap.add_argument("--analyse-only", action="store_true", help="do not train; analyse the runs on disk")
    ap.add_argument("--no-sweep-report", action="store_true", help="skip the sweep's own HTML report")
    return ap.parse_args(argv)


# -- per run ---------------------------------------------------------------------------------------------

def run_row(values: dict, evals, epochs: int, budgets: list[int]) -> dict:
    """The numbers of one run from its evaluations (``epoch, train_acc, test_acc, train_loss, test_loss``).

    The last of ``budgets`` is the analysis budget: the ``final_*`` numbers, the curve pattern and
    ``generalized`` are read from the evaluations up to that epoch (a run trained further is cut there), so
    that every cell is compared at the same epoch; ``finished`` says the run reached it."""
    from grokinterp.analysis.curves import curve_pattern

    full = evals.sort_values("epoch")
    reached = int(full["epoch"].iloc[-1])
    ev = full[full["epoch"] <= budgets[-1]]
    last = ev.iloc[-1]
    cp = curve_pattern(ev)
    row = {**values, "epochs": epochs, "budget": budgets[-1], "epochs_reached": reached,
           "finished": reached >= budgets[-1],
           "final_train_acc": float(last["train_acc"]), "final_test_acc": float(last["test_acc"]),
           "final_train_loss": float(last["train_loss"]), "final_test_loss": float(last["test_loss"]),
           "min_test_loss": float(ev["test_loss"].min()), "max_test_acc": float(ev["test_acc"].max()),
           "curve_pattern": cp.pattern, "epochwise_double_descent": cp.double_descent,
           "dd_first_min_epoch": cp.first_min_epoch, "dd_peak_epoch": cp.peak_epoch,
           "dd_second_min_epoch": cp.second_min_epoch, "dd_rise": cp.rise,
           "train_acc_99_epoch": cp.train_acc_99_epoch, "test_acc_99_epoch": cp.test_acc_99_epoch,
           "generalized": float(last["test_acc"]) >= GENERALIZED}
    for b in budgets:  # the last evaluation at or before b (NaN when the run has not reached b)
        at = full[full["epoch"] <= b]
        ok = reached >= b and len(at)
        row[f"test_loss_at_{b}"] = float(at["test_loss"].iloc[-1]) if ok else math.nan
        row[f"test_acc_at_{b}"] = float(at["test_acc"].iloc[-1]) if ok else math.nan
    return row


# -- per cell --------------------------------------------------------------------------------------------

def cells(df, budgets: list[int]):
    """One row per (width, examples): medians and ranges over seeds, generalized seeds, pattern counts."""
    import pandas as pd

    from grokinterp.analysis.curves import PATTERNS

    out = []
    for (w, n), g in df.groupby(["hidden", "n_train"]):
        row = {"hidden": int(w), "n_train": int(n), "n_seeds": len(g), "n_finished": int(g["finished"].sum()),
               "min_epochs_reached": int(g["epochs_reached"].min()), "n_generalized": int(g["generalized"].sum())}
        cols = ["final_test_acc", "final_test_loss", "final_train_acc"]
        cols += [f"test_loss_at_{b}" for b in budgets] + [f"test_acc_at_{b}" for b in budgets]
        for c in cols:
            v = pd.to_numeric(g[c], errors="coerce").dropna()
            row[f"{c}_median"] = float(v.median()) if len(v) else math.nan
            row[f"{c}_min"] = float(v.min()) if len(v) else math.nan
            row[f"{c}_max"] = float(v.max()) if len(v) else math.nan
        counts = g["curve_pattern"].value_counts()
        row["curve_pattern"] = min(counts.index[counts == counts.max()], key=list(PATTERNS).index)
        row["curve_patterns"] = ", ".join(f"{k} {int(v)}" for k, v in counts.items())
        out.append(row)
    return pd.DataFrame(out).sort_values(["hidden", "n_train"]).reset_index(drop=True)


def d_crit(cell_df) -> dict[int, int | None]:
    """Per width: the fewest training examples at which most seeds generalized (``None``: at none of the grid's)."""
    out = {}
    for w, g in cell_df.groupby("hidden"):
        ok = g[g["n_generalized"] * 2 > g["n_seeds"]]
        out[int(w)] = int(ok["n_train"].min()) if len(ok) else None
    return out


def modelwise_double_descent(cell_df, n_train: int, column: str) -> dict:
    """Model-wise double descent of ``column`` (a loss: medians over seeds) against the width at ``n_train``,
    by the epoch-wise rule of :func:`grokinterp.analysis.curves.double_descent` without smoothing."""
    from grokinterp.analysis.curves import double_descent

    g = cell_df[cell_df["n_train"] == n_train].sort_values("hidden")
    g = g[g[column].notna()]
    widths, loss = g["hidden"].tolist(), g[column].to_numpy(dtype=float)
    if len(loss) < 3:
        return {"n_train": n_train, "column": column, "double_descent": None, "widths": widths}
    dd = double_descent(loss, smooth=1)
    res = {"n_train": n_train, "column": column, "widths": widths, "loss": [float(x) for x in loss],
           "double_descent": dd is not None}
    if dd is not None:
        i1, i2, i3, rise = dd
        res.update(first_min_width=widths[i1], peak_width=widths[i2], second_min_width=widths[i3], rise=float(rise))
    return res


def accuracy_dip(cell_df, n_train: int, lo: int, hi: int, column: str = "final_test_acc_median",
                 margin: float = 0.1) -> dict:
    """Whether the accuracy at ``n_train`` for widths in ``[lo, hi]`` falls below both a narrower and a wider
    width's by at least ``margin`` (Huang et al.'s model-wise dip: progression, ungrokking, semi-grokking)."""
    g = cell_df[cell_df["n_train"] == n_train].sort_values("hidden")
    g = g[g[column].notna()]
    inside = g[(g["hidden"] >= lo) & (g["hidden"] <= hi)]
    below, above = g[g["hidden"] < lo], g[g["hidden"] > hi]
    res = {"n_train": n_train, "widths": [lo, hi], "by_width": dict(zip(g["hidden"].astype(int), g[column]))}
    if inside.empty or below.empty or above.empty:
        return {**res, "dip": None, "why": "the grid lacks widths inside, below or above the range"}
    low = float(inside[column].min())
    res.update(dip_min=low, dip_width=int(inside.loc[inside[column].idxmin(), "hidden"]),
               narrower_max=float(below[column].max()), wider_max=float(above[column].max()))
    res["dip"] = bool(low <= res["narrower_max"] - margin and low <= res["wider_max"] - margin)
    return res


def _cell(cell_df, w: int, n: int):
    g = cell_df[(cell_df["hidden"] == w) & (cell_df["n_train"] == n)]
    return None if g.empty else g.iloc[0]


def _acc_text(c) -> str:
    return (f"{int(c['n_generalized'])}/{int(c['n_seeds'])} seeds generalized, final test accuracy median "
            f"{c['final_test_acc_median']:.3f} [{c['final_test_acc_min']:.3f}, {c['final_test_acc_max']:.3f}]"
            + ("" if c["n_finished"] == c["n_seeds"] else f" (only {int(c['n_finished'])} finished; "
               f"the others reached epoch {int(c['min_epochs_reached'])})"))


def claims(cell_df, budget: int, earlier: int | None = None) -> list[dict]:
    """One reproduce-or-contradict statement per claim of :data:`PAPER`, with the seeds' spread (``budget``: the
    analysis budget; ``earlier``: an earlier budget, to tell a settled middling accuracy from a rising one)."""
    out = []
    dc = d_crit(cell_df)

    def add(key, verdict, ours):
        out.append({"claim": key, "paper": PAPER[key], "ours": ours, "verdict": verdict})

    c = _cell(cell_df, 64, 3000)
    if c is None:
        add("hidden 64 generalizes at 3,000", "not run", "the grid lacks (64, 3000)")
    else:
        ok = c["n_generalized"] * 2 > c["n_seeds"]
        add("hidden 64 generalizes at 3,000", "reproduced" if ok else f"contradicted at {budget} epochs",
            f"hidden 64, 3,000 examples: {_acc_text(c)}; D_crit(64) = {dc.get(64)}")
    c4, w32 = _cell(cell_df, 32, 4000), cell_df[cell_df["hidden"] == 32]
    if c4 is None:
        add("hidden 32 needs 4,000", "not run", "the grid lacks (32, 4000)")
    else:
        d32 = dc.get(32)
        if d32 == 4000:
            verdict = "reproduced"
        elif d32 is None:
            verdict = f"contradicted at {budget} epochs: hidden 32 did not generalize even at 4,000"
        else:
            verdict = f"contradicted: hidden 32 already generalizes at {d32:,} examples (D_crit(32) < 4,000)"
        smaller = "; ".join(f"{int(r.n_train)}: {int(r.n_generalized)}/{int(r.n_seeds)} generalized, median "
                            f"{r.final_test_acc_median:.3f}" for r in w32.itertuples())
        add("hidden 32 needs 4,000", verdict, f"hidden 32 by examples — {smaller}")
    # the trend is their Figure 3's, over its widths (32-64, models that memorize first); narrower ones are listed
    known = {w: d for w, d in dc.items() if d is not None}
    all_ws = sorted(dc)
    ws = [w for w in all_ws if FIG3_WIDTHS[0] <= w <= FIG3_WIDTHS[1]]
    if len(ws) < 3:
        add("D_crit falls with width", "not decidable", f"only {len(ws)} width(s) trained so far")
        ws = []
    # D_crit as a number per width (censored at 'more than the grid' when no cell generalized)
    big = max(cell_df["n_train"]) + 1
    seq = [dc[w] if dc[w] is not None else big for w in ws]
    if ws:
        mono = all(a >= b for a, b in zip(seq, seq[1:]))
        strict = seq[0] > seq[-1]
        verdict = ("reproduced" if mono and strict else
                   "partly: D_crit is smaller for wider models overall but not at every step" if strict else
                   "contradicted: D_crit does not fall with width")
        add("D_crit falls with width", verdict,
            f"over hidden {FIG3_WIDTHS[0]}-{FIG3_WIDTHS[1]} (their Figure 3's range); D_crit by hidden size (fewest "
            "examples at which most seeds generalized; '>N' = at none of the grid's), every width: "
            + ", ".join(f"{w}: {dc[w] if dc[w] is not None else '>' + str(big - 1)}" for w in all_ws)
            + f" ({len(known)} of {len(all_ws)} widths generalized somewhere)")
    dip = accuracy_dip(cell_df, 2600, 24, 40)
    if dip["dip"] is None:
        add("dip at 2,600 for hidden 24-40", "not decidable", dip["why"])
    else:
        by = ", ".join(f"{w}: {a:.3f}" for w, a in dip["by_width"].items())
        mw = modelwise_double_descent(cell_df, 2600, f"test_loss_at_{budget}_median")
        add("dip at 2,600 for hidden 24-40",
            "reproduced" if dip["dip"] else "contradicted: no dip of ≥ 0.1 in final test accuracy inside 24-40",
            f"final test accuracy (median of seeds) by hidden size at 2,600 examples: {by}; lowest inside 24-40 "
            f"{dip['dip_min']:.3f} at {dip['dip_width']}, best narrower {dip['narrower_max']:.3f}, best wider "
            f"{dip['wider_max']:.3f}; model-wise double descent of the test loss at {budget} epochs: "
            f"{mw['double_descent']}")
    # semi-grokking: a middling final accuracy that has settled (moved < 0.1 since the earlier budget), not a
    # transition still under way at the budget
    semi = cell_df[(cell_df["final_test_acc_median"] > 0.1) & (cell_df["final_test_acc_median"] < 0.9)]
    early = f"test_acc_at_{earlier}_median" if earlier is not None else None
    near, settled = [], 0
    for r in semi.itertuples():
        d = dc.get(int(r.hidden))
        before = getattr(r, early) if early and early in cell_df else math.nan
        still = not (before == before) or abs(r.final_test_acc_median - before) >= 0.1
        settled += not still
        near.append(f"({r.hidden}, {r.n_train}): {r.final_test_acc_median:.2f}"
                    + (f" (epoch {earlier}: {before:.2f}, {'still moving' if still else 'settled'})"
                       if before == before else "")
                    + (f", D_crit {d}" if d is not None else ", D_crit > grid"))
    add("semi-grokking near D_crit",
        "reproduced" if settled else ("not seen" if not len(semi) else
                                      "not decidable: no earlier budget to tell settled from rising" if early is None
                                      else "not separable from slow grokking at this budget: every middling cell "
                                           "was still moving"),
        f"{len(semi)} cells with a middling median final test accuracy (0.1-0.9), {settled} settled: "
        + ("; ".join(near) or "none"))
    unfinished = cell_df[cell_df["n_finished"] < cell_df["n_seeds"]]
    if len(unfinished):
        for c in out:
            c["verdict"] = f"provisional ({len(unfinished)} cells unfinished): {c['verdict']}"
    return out


def claims_by_budget(df, inputs: dict, budgets: list[int]) -> dict:
    """The verdicts read at each budget in turn (the previous one as the earlier reading): how they move with
    the training budget. Only budgets every started run reached."""
    import pandas as pd

    keep = df[df["epochs_reached"] >= 0]
    out = {}
    for i, b in enumerate(budgets):
        if (keep["epochs_reached"] < b).any():
            continue
        bs = [budgets[i - 1], b] if i else [b]
        rows = [run_row(*inputs[n][:1], inputs[n][1], inputs[n][2], bs) for n in keep["name"]]
        c = cells(pd.DataFrame(rows), bs)
        out[str(b)] = {x["claim"]: x["verdict"] for x in claims(c, b, bs[0] if i else None)}
        out[str(b)]["D_crit"] = {str(k): v for k, v in d_crit(c).items()}
    return out


# -- figures ---------------------------------------------------------------------------------------------

def figures(df, cell_df, curves: dict, budgets: list[int]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ws = sorted(cell_df["hidden"].unique())
    ns = sorted(cell_df["n_train"].unique())
    out = []
    for col, title, scale in (("final_test_acc_median", "final test accuracy (median of seeds)", "Viridis"),
                              ("final_test_loss_median", "final test loss (median of seeds, nats)", "Magma")):
        z = [[_val(cell_df, w, n, col) for n in ns] for w in ws]
        text = [[_hover(cell_df, w, n) for n in ns] for w in ws]
        fig = go.Figure(go.Heatmap(z=z, x=[str(n) for n in ns], y=[str(w) for w in ws], colorscale=scale,
                                   text=text, hovertemplate="hidden %{y}, %{x} examples<br>%{text}<extra></extra>",
                                   texttemplate="%{z:.2f}"))
        fig.update_layout(title=title, xaxis_title="training examples", yaxis_title="hidden size d_h (d_model)",
                          height=420)
        out.append((f"Huang et al.'s grid: {title}", "Each cell: median over seeds at the last evaluation "
                    "(hover: seeds generalized, range, curve patterns).", fig))
    for b in budgets:
        fig = make_subplots(rows=1, cols=2, subplot_titles=(f"test loss at epoch {b}", f"test accuracy at epoch {b}"))
        for n in ns:
            g = cell_df[cell_df["n_train"] == n].sort_values("hidden")
            for j, what in enumerate(("test_loss", "test_acc")):
                med, lo, hi = (g[f"{what}_at_{b}_{s}"] for s in ("median", "min", "max"))
                fig.add_trace(go.Scatter(x=g["hidden"], y=med, mode="lines+markers", name=f"{n} examples",
                                         legendgroup=str(n), showlegend=j == 0,
                                         error_y=dict(type="data", symmetric=False, array=hi - med,
                                                      arrayminus=med - lo)), row=1, col=j + 1)
        fig.update_xaxes(title_text="hidden size d_h")
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_layout(height=430)
        out.append((f"Model-wise curves at epoch {b}", "Median over seeds, bars: min–max. Model-wise double descent "
                    "= the test loss falls, rises and falls again with the width (the epoch-wise rule, unsmoothed).",
                    fig))
    fig = make_subplots(rows=len(ns), cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=[f"{n} training examples" for n in ns])
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, n in enumerate(ns):
        for k, w in enumerate(ws):
            sel = df[(df["hidden"] == w) & (df["n_train"] == n)].sort_values("seed")
            for j, r in enumerate(sel.itertuples()):
                ev = curves.get(r.name)
                if ev is None:
                    continue
                fig.add_trace(go.Scatter(x=ev["epoch"], y=ev["test_loss"], mode="lines", line=dict(
                    color=colors[k % len(colors)], width=1, dash=["solid", "dot", "dash"][j % 3]),
                    name=f"hidden {w}", legendgroup=f"w{w}", showlegend=(i == 0 and j == 0),
                    hovertemplate=f"hidden {w}, seed {r.seed}: {r.curve_pattern}<br>epoch %{{x}}, loss %{{y:.3g}}"
                                  "<extra></extra>"), row=i + 1, col=1)
        fig.update_yaxes(type="log", row=i + 1, col=1)
    fig.add_vline(x=budgets[-1], line_dash="dot", line_color="gray", row="all", col=1)
    fig.update_xaxes(title_text="epoch", row=len(ns), col=1)
    fig.update_layout(height=260 * len(ns))
    out.append(("Epoch-wise test-loss curves", "Every run (colour: hidden size; solid, dotted, dashed: seeds 0, 1, 2); "
                "hover shows its curve_pattern (read up to the analysis budget, the dotted vertical line).", fig))
    return out


def _val(cell_df, w, n, col):
    c = _cell(cell_df, w, n)
    return None if c is None else c[col]


def _hover(cell_df, w, n):
    c = _cell(cell_df, w, n)
    return "" if c is None else (f"{int(c['n_generalized'])}/{int(c['n_seeds'])} generalized; acc "
                                 f"[{c['final_test_acc_min']:.2f}, {c['final_test_acc_max']:.2f}]; "
                                 f"{c['curve_patterns']}")


# -- driver ----------------------------------------------------------------------------------------------

def analyse(args) -> dict:
    import pandas as pd

    import grokinterp as gi

    sweeps = [gi.load_sweep(d) for d in args.sweep_dir]
    points = [(sw, p, gi.RunConfig.from_dict(p["config"])) for sw in sweeps for p in sw.points]
    epochs = max(c.train.epochs for _, _, c in points)
    budgets = args.budgets or [epochs // 2, epochs]
    rows, curves, inputs = [], {}, {}
    for sw, p, cfg in points:
        values = {"name": p["name"], "sweep": sw.path.name, "hidden": cfg.model.d_model, "d_mlp": cfg.model.d_mlp,
                  "n_train": cfg.n_train(), "seed": cfg.model.init_seed}
        try:
            ev = gi.load_run(sw.path / p["run"]).evals
        except gi.GrokinterpError:
            ev = None
        if ev is None or ev.empty:
            rows.append({**values, "epochs": cfg.train.epochs, "epochs_reached": -1, "finished": False})
            continue
        rows.append(run_row(values, ev, cfg.train.epochs, budgets))
        curves[p["name"]] = ev[["epoch", "test_loss", "test_acc", "train_acc"]]
        inputs[p["name"]] = (values, ev, cfg.train.epochs)
    df = pd.DataFrame(rows)
    # a cell trained in two sweeps: the run that got further
    df = (df.sort_values("epochs_reached", ascending=False).drop_duplicates(["hidden", "d_mlp", "n_train", "seed"])
          .sort_values(["hidden", "n_train", "seed"]).reset_index(drop=True))
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    started = df[df["epochs_reached"] >= 0]
    summary: dict = {"settings": _study.settings(args), "cpu": _cpu(), "epochs": epochs, "budgets": budgets,
                     "runs": len(df), "runs_started": len(started), "runs_finished": int(df["finished"].sum()),
                     "unfinished": df.loc[~df["finished"].astype(bool), ["name", "epochs_reached"]].to_dict("records"),
                     "generalized_threshold": GENERALIZED}
    if len(started):
        cell_df = cells(started, budgets)
        cell_df.to_csv(args.out / "cells.csv", index=False)
        summary["d_crit"] = {str(k): v for k, v in d_crit(cell_df).items()}
        summary["claims"] = claims(cell_df, budgets[-1], budgets[0] if len(budgets) > 1 else None)
        summary["modelwise_double_descent"] = [modelwise_double_descent(cell_df, int(n), f"test_loss_at_{b}_median")
                                               for b in budgets for n in sorted(cell_df["n_train"].unique())]
        summary["epochwise_patterns"] = started["curve_pattern"].value_counts().to_dict()
        summary["cells"] = cell_df.to_dict("records")
        summary["claims_by_budget"] = claims_by_budget(df, inputs, budgets)
        intro = ("<p>Huang et al. 2024's grid (a + b mod 113, hidden size × training examples) trained by "
                 f"<code>grokinterp.sweep</code> in stacks (one group per width); {summary['runs_finished']} of "
                 f"{len(df)} runs reached the analysis budget of {budgets[-1]} epochs (of {epochs} planned), at "
                 f"which every cell is compared. CPU: {html_escape(summary['cpu'])}.</p>"
                 + _claims_html(summary["claims"]) + _by_budget_html(summary["claims_by_budget"]))
        _study.write_report(args.out / "double_descent.html", "Double descent and Huang et al.'s grid", intro,
                            figures(started, cell_df, curves, budgets))
    _study.write_json(args.out / "summary.json", summary)
    if not args.no_sweep_report:
        from grokinterp.viz.sweep_report import write_sweep_report

        for sw in sweeps:
            tag = "" if len(sweeps) == 1 else f"_{sw.path.name}"
            path = write_sweep_report(sw, args.out / f"sweep_report{tag}.html", analyse=False,
                                      csv=args.out / f"table{tag}.csv")
            _plotly_from_cdn(Path(path))
            if tag:  # the per-setting summary is written as summary.csv beside the table: keep each sweep's
                (args.out / "summary.csv").replace(args.out / f"summary{tag}.csv")
    return summary


def _plotly_from_cdn(path: Path) -> None:
    """Swap the sweep report's embedded plotly.js (≈ 4 MB) for its CDN script tag, to keep the committed page
    small (as `_study.write_report` does)."""
    from plotly.offline import get_plotlyjs_version

    text = path.read_text()
    start = text.find("<script type='text/javascript'>/* plotly.js")
    end = text.find("</script>", start)
    if start < 0 or end < 0:
        return
    text = (text[:start] + f"<script src='https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js'></script>"
            + text[end + len("</script>"):])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def html_escape(s: str) -> str:
    import html

    return html.escape(str(s))


def _claims_html(cl: list[dict]) -> str:
    rows = "".join(f"<tr><td style='text-align:left'>{html_escape(c['paper'])}</td><td style='text-align:left'>"
                   f"{html_escape(c['ours'])}</td><td style='text-align:left'><b>{html_escape(c['verdict'])}</b></td></tr>"
                   for c in cl)
    return ("<h2>Claims</h2><table><tr><th>Huang et al. 2024</th><th>ours</th><th>verdict</th></tr>"
            f"{rows}</table>")


def _by_budget_html(by: dict) -> str:
    if not by:
        return ""
    keys = [k for k in PAPER]
    head = "".join(f"<th>epoch {html_escape(b)}</th>" for b in by)
    rows = "".join(f"<tr><td style='text-align:left'>{html_escape(k)}</td>"
                   + "".join(f"<td style='text-align:left'>{html_escape(by[b][k])}</td>" for b in by) + "</tr>"
                   for k in keys)
    return f"<h2>Verdicts by budget</h2><table><tr><th>claim</th>{head}</tr>{rows}</table>"


def _cpu() -> str:
    import platform

    try:
        out = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or platform.processor() or "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    import grokinterp as gi

    if not args.analyse_only:
        if len(args.spec) != len(args.sweep_dir):
            print(f"--spec: {len(args.spec)} spec(s) for {len(args.sweep_dir)} --sweep-dir(s); give one each",
                  file=sys.stderr)
            return 2
        opts = {} if args.workers is None else {"workers": args.workers}
        for spec, d in zip(args.spec, args.sweep_dir):
            t0 = time.time()
            try:
                gi.sweep(spec, d, progress=False, **opts)
            except gi.GrokinterpError as e:
                print(f"sweep {spec}: {e}", file=sys.stderr)
                return 2
            print(f"{d}: trained in {time.time() - t0:.0f} s", flush=True)
    try:
        s = analyse(args)
    except gi.GrokinterpError as e:
        print(f"analysis: {e}", file=sys.stderr)
        return 2
    print(f"{s['runs_finished']} of {s['runs']} runs finished; D_crit {s.get('d_crit')}")
    for c in s.get("claims", []):
        print(f"- {c['claim']}: {c['verdict']}\n    {c['ours']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
