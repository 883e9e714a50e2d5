"""Plotly figures of families of runs: phase diagrams, data-fraction curves, seed distributions, curves.

Inputs are tables (:func:`grokinterp.sweeps.table.sweep_table` rows and
:func:`~grokinterp.sweeps.table.seed_summary` groups) or runs' metrics; every function returns a
``plotly.graph_objects.Figure`` and draws only.

Example:
    >>> table = sweep_table(load_sweep("checkpoints/pd"))                               # doctest: +SKIP
    >>> phase_diagram(seed_summary(table), x="frac_train", y="weight_decay", facet="operation")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import AnalysisError

__all__ = ["phase_diagram", "data_fraction_curves", "seed_distributions", "run_curves"]

_TEMPLATE = "plotly_white"
_REGIME_SHORT = {"comprehension": "comp", "grokking": "grok", "memorization": "mem", "confusion": "conf"}


def _short(n: float) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "—"
    return f"{n / 1000:.3g}k" if n >= 1000 else f"{n:.0f}"


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise AnalysisError(f"{what}: the table has no column(s) {missing}; columns: {list(df.columns)[:12]} ...")


def phase_diagram(summary: pd.DataFrame, x: str = "frac_train", y: str = "weight_decay", *, facet: str | None = None,
                  value: str = "test_acc_99_epoch_censored_median", budget: float | None = None,
                  regime: pd.DataFrame | None = None, title: str | None = None) -> go.Figure:
    """Epochs to generalise over two swept fields (a heatmap per ``facet`` value), as in Liu et al. 2022.

    Args:
        summary: :func:`~grokinterp.sweeps.table.seed_summary` output, one row per cell (and facet).
        x, y: the two fields.
        facet: a third field drawn as side-by-side panels (e.g. ``operation``).
        value: the column coloured (default: the median epochs to 99 % test accuracy over seeds,
            runs that never got there counted as censored — NaN when half or more did not).
        budget: the training budget, shown in the caption of cells that did not generalise.
        regime: optional ``[x, y, (facet,) regime]`` rows (the most common regime of each cell), written
            in the cells.
        title: figure title.

    Cells where the median run did not generalise are grey and marked ``×``; each cell's text gives
    the median epochs, ``k/n`` when only some seeds generalised, and the regime (``comp``rehension,
    ``grok``king, ``mem``orization, ``conf``usion).
    """
    _need(summary, [x, y, value] + ([facet] if facet else []), "phase_diagram")
    facets = sorted(summary[facet].unique(), key=str) if facet else [None]
    fig = make_subplots(rows=1, cols=len(facets), subplot_titles=[f"{facet} = {f}" for f in facets] if facet else None,
                        horizontal_spacing=0.08, shared_yaxes=True)
    xs = sorted(summary[x].unique())
    ys = sorted(summary[y].unique())
    finite = np.log10(pd.to_numeric(summary[value], errors="coerce").dropna().clip(lower=1).to_numpy())
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    ticks = [v for v in (10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 100_000) if lo - 0.2 <= math.log10(v) <= hi + 0.2]
    for col, f in enumerate(facets, start=1):
        df = summary if f is None else summary[summary[facet] == f]
        z = np.full((len(ys), len(xs)), np.nan)
        z_miss = np.full((len(ys), len(xs)), np.nan)
        rg = None
        if regime is not None:
            rg = regime if f is None else regime[regime[facet] == f]
            rg = {(r[x], r[y]): r["regime"] for _, r in rg.iterrows() if isinstance(r.get("regime"), str)}
        tx, ty, tt, tc = [], [], [], []
        for _, row in df.iterrows():
            i, j = ys.index(row[y]), xs.index(row[x])
            v = pd.to_numeric(pd.Series([row[value]]), errors="coerce").iloc[0]
            n, k = int(row.get("n_runs", 0) or 0), int(row.get("n_grokked", 0) or 0)
            extra = (f"<br>{k}/{n}" if n and k != n else "")
            if rg is not None and (row[x], row[y]) in rg:
                extra += f"<br><i>{_REGIME_SHORT.get(rg[(row[x], row[y])], rg[(row[x], row[y])])}</i>"
            if pd.notna(v):
                z[i, j] = math.log10(max(float(v), 1.0))
                label, dark = f"<b>{_short(float(v))}</b>", (z[i, j] - lo) / (hi - lo) > 0.55  # dark end of the scale
            else:  # grey: the median run never generalised within the budget
                z_miss[i, j] = 0.0
                label, dark = "×", False
            tx.append(str(row[x])), ty.append(str(row[y])), tt.append(label + extra)
            tc.append("white" if dark else "#222")
        hover = f"{x} = %{{x}}<br>{y} = %{{y}}<extra></extra>"
        fig.add_trace(go.Heatmap(
            x=[str(v) for v in xs], y=[str(v) for v in ys], z=z, zmin=lo, zmax=hi, colorscale="Viridis",
            reversescale=True, showscale=col == 1, hoverongaps=False, hovertemplate=hover,
            colorbar=dict(title="epochs to<br>99 % test acc", tickvals=[math.log10(t) for t in ticks],
                          ticktext=[_short(t) for t in ticks])), row=1, col=col)
        if np.isfinite(z_miss).any():
            fig.add_trace(go.Heatmap(x=[str(v) for v in xs], y=[str(v) for v in ys], z=z_miss, showscale=False,
                                     colorscale=[[0, "#d0d0d0"], [1, "#d0d0d0"]], hoverongaps=False,
                                     hovertemplate=hover), row=1, col=col)
        fig.add_trace(go.Scatter(x=tx, y=ty, text=tt, mode="text", textfont=dict(size=10, color=tc),
                                 showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text=x, type="category", row=1, col=col)
    fig.update_yaxes(title_text=y, type="category", row=1, col=1)
    fig.update_layout(title=title or f"Epochs to generalise: {x} × {y}", template=_TEMPLATE,
                      height=460, width=max(560, 480 * len(facets)) if len(facets) <= 2 else None,  # else the container's
                      plot_bgcolor="white")
    return fig


def data_fraction_curves(table: pd.DataFrame, x: str = "frac_train", y: str = "test_acc_99_epoch", *,
                         color: str | None = None, budget: float | None = None, log_y: bool = True,
                         title: str | None = None) -> go.Figure:
    """Epochs to generalise against a swept field (Power et al. 2022's data-fraction curves): every
    run a point, the median over seeds a line, runs that did not generalise a triangle at the budget.

    Args:
        table: :func:`~grokinterp.sweeps.table.sweep_table` rows.
        x, y: the swept field and the epochs column (``None`` / NaN: did not generalise).
        color: a field giving one curve per value (e.g. ``operation`` or ``weight_decay``).
        budget: where non-generalising runs are drawn (default: the largest ``epochs``).
    """
    _need(table, [x, y] + ([color] if color else []), "data_fraction_curves")
    budget = budget if budget is not None else float(pd.to_numeric(table.get("epochs"), errors="coerce").max())
    fig = go.Figure()
    groups = table.groupby(color, sort=True) if color else [(None, table)]
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    for i, (key, df) in enumerate(groups):
        c = palette[i % len(palette)]
        name = f"{color} = {key}" if color else "runs"
        v = pd.to_numeric(df[y], errors="coerce")
        hit = df[v.notna()]
        fig.add_trace(go.Scatter(x=hit[x], y=v[v.notna()], mode="markers", name=name, legendgroup=name,
                                 marker=dict(size=8, opacity=0.6, color=c)))
        med = df.assign(_v=v).groupby(x)["_v"].apply(
            lambda s: float(np.median(np.where(s.isna(), np.inf, s))) if len(s) else np.nan)
        med = med[np.isfinite(med)]
        fig.add_trace(go.Scatter(x=med.index, y=med.values, mode="lines+markers", name=f"median ({name})",
                                 legendgroup=name, line=dict(color=c), showlegend=False))
        miss = df[v.isna()]
        if len(miss):
            fig.add_trace(go.Scatter(x=miss[x], y=[budget] * len(miss), mode="markers", legendgroup=name,
                                     marker=dict(symbol="triangle-up", size=10, color=c, line=dict(width=1, color="#333")),
                                     name=f"not within {_short(budget)} epochs", showlegend=i == 0))
    fig.update_layout(title=title or f"Epochs to generalise vs {x}", template=_TEMPLATE, xaxis_title=x,
                      yaxis_title="epochs to 99 % test accuracy", yaxis_type="log" if log_y else "linear")
    return fig


def seed_distributions(table: pd.DataFrame, columns: Sequence[str], *,
                       references: Mapping[str, tuple[float, str]] | None = None, labels: Mapping[str, str] | None = None,
                       title: str = "Distributions over seeds") -> go.Figure:
    """One panel per quantity: every run a point over a box (median, quartiles), published values as lines.

    Args:
        table: one row per run.
        columns: the quantities.
        references: ``{column: (value, label)}`` drawn as a dashed line (e.g. the paper's 84.6 %).
        labels: axis titles per column.
    """
    _need(table, list(columns), "seed_distributions")
    references, labels = references or {}, labels or {}
    n_rows, n_cols = -(-len(columns) // min(len(columns), 3)), min(len(columns), 3)  # at most 3 side by side
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=[labels.get(c, c) for c in columns],
                        horizontal_spacing=0.07, vertical_spacing=0.18)
    for i, c in enumerate(columns, start=1):
        row, col = (i - 1) // n_cols + 1, (i - 1) % n_cols + 1
        v = pd.to_numeric(table[c], errors="coerce").dropna()
        fig.add_trace(go.Box(y=v, boxpoints="all", jitter=0.4, pointpos=0, name=c, marker=dict(size=7),
                             showlegend=False, hovertext=table.loc[v.index, "name"] if "name" in table else None),
                      row=row, col=col)
        if c in references:
            ref, label = references[c]
            fig.add_hline(y=ref, line_dash="dash", line_color="#ef553b", row=row, col=col,
                          annotation_text=label, annotation_position="top right", annotation_font_size=10)
        fig.update_xaxes(showticklabels=False, row=row, col=col)
    # width: the container's (a report's column, a notebook's cell)
    fig.update_annotations(font_size=13)  # the panel titles (the reference lines' labels set their own size)
    fig.update_layout(title=title, template=_TEMPLATE, height=340 * n_rows + 40)
    return fig


def run_curves(curves: Mapping[str, pd.DataFrame], column: str = "test_acc", *, log_x: bool = False,
               log_y: bool = False, title: str | None = None, max_runs: int = 60) -> go.Figure:
    """Several runs' training curves on one figure.

    Args:
        curves: ``{label: metrics}`` (``run.metrics`` or ``run.evals``: an ``epoch`` column
            and ``column``).
        column: the metric drawn (``test_acc``, ``test_loss``, ``train_loss``, ...).
        log_x, log_y: log axes (losses read best with ``log_y``).
        max_runs: the most curves drawn (the first ones).
    """
    fig = go.Figure()
    for label, m in list(curves.items())[:max_runs]:
        _need(m, ["epoch", column], "run_curves")
        d = m[m[column].notna()]
        fig.add_trace(go.Scatter(x=d["epoch"], y=d[column], mode="lines", name=str(label), line=dict(width=1.3),
                                 opacity=0.8))
    fig.update_layout(title=title or f"{column} of {min(len(curves), max_runs)} runs", template=_TEMPLATE,
                      xaxis_title="epoch", yaxis_title=column, xaxis_type="log" if log_x else "linear",
                      yaxis_type="log" if log_y else "linear")
    return fig
