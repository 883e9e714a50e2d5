"""Figures of the local learning coefficient (issue 20): the LLC over checkpoints beside the progress
measures, and the calibration grid's estimates and loss traces. Each returns a ``go.Figure``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["llc_figure", "calibration_figure"]


def llc_figure(llc: pd.DataFrame, measures: pd.DataFrame | None = None, *, x: str = "epoch",
               title: str = "Local learning coefficient") -> go.Figure:
    """``llc_mean`` ± ``llc_std`` over checkpoints (unreliable estimates as open crosses), and on a second
    axis the restricted, excluded and test loss of ``measures`` (the progress table) where given.

    Args:
        llc: the table of :func:`~grokinterp.analysis.llc.llc_over_checkpoints` (or of ``grokinterp llc``).
        measures: the progress measures (``epoch`` and any of ``restricted_loss``, ``excluded_loss``,
            ``test_loss``), or ``None``.
        x: the column to draw along (``epoch``; a minibatch run's checkpoints count steps).
    """
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    ok = llc["llc_reliable"].astype(bool).to_numpy() if "llc_reliable" in llc else np.ones(len(llc), bool)
    err = llc["llc_std"] if "llc_std" in llc else None
    fig.add_trace(go.Scatter(x=llc[x], y=llc["llc_mean"], mode="lines+markers", name="LLC (mean over chains)",
                             line=dict(color="#2ca02c"), marker=dict(size=4),
                             error_y=None if err is None else dict(type="data", array=err, visible=True, thickness=1)),
                  secondary_y=False)
    if (~ok).any():
        bad = llc[~ok]
        fig.add_trace(go.Scatter(x=bad[x], y=bad["llc_mean"], mode="markers", name="unreliable (a diagnostic failed)",
                                 marker=dict(symbol="x-open", size=9, color="#d62728"),
                                 text=bad.get("llc_flags"), hovertemplate="%{x}: %{y:.3g} (%{text})"),
                      secondary_y=False)
    if measures is not None:
        styles = {"restricted_loss": ("restricted loss", "#1f77b4", "solid"),
                  "excluded_loss": ("excluded loss", "#ff7f0e", "solid"),
                  "test_loss": ("test loss", "#7f7f7f", "dot")}
        for col, (name, color, dash) in styles.items():
            if col in measures and measures[col].notna().any():
                fig.add_trace(go.Scatter(x=measures["epoch"], y=measures[col], mode="lines", name=name,
                                         line=dict(color=color, dash=dash, width=1.5)), secondary_y=True)
        fig.update_yaxes(title_text="loss", type="log", secondary_y=True)
    fig.update_yaxes(title_text="λ̂ (LLC)", secondary_y=False)
    fig.update_layout(template="plotly_white", title=title, xaxis_title=x, height=460,
                      legend=dict(orientation="h", y=-0.2))
    return fig


def calibration_figure(grid: pd.DataFrame, traces: pd.DataFrame | None = None) -> go.Figure:
    """The ε × nβ grid of :func:`~grokinterp.analysis.llc.calibrate`: λ̂ / nβ against ε, one line per nβ (flat
    in ε is what to look for, as devinterp's ``EpsilonBetaAnalyzer``), and the mean loss traces."""
    cols = 2 if traces is not None else 1
    fig = make_subplots(rows=1, cols=cols, subplot_titles=("λ̂ / nβ against ε", "mean loss trace")[:cols])
    for i, (nb, g) in enumerate(grid.groupby("nbeta")):
        g = g.sort_values("epsilon")
        color = f"hsl({(i * 67) % 360}, 60%, 45%)"
        fig.add_trace(go.Scatter(x=g["epsilon"], y=g["llc_mean"] / nb, mode="lines+markers", name=f"nβ = {nb:g}",
                                 line=dict(color=color), legendgroup=str(nb),
                                 marker=dict(symbol=["circle" if r else "x" for r in g["llc_reliable"]], size=8)),
                      row=1, col=1)
        if traces is not None:
            for eps, t in traces[traces["nbeta"] == nb].groupby("epsilon"):
                m = t.groupby("draw")["loss"].mean()
                fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines", line=dict(color=color, width=1),
                                         legendgroup=str(nb), showlegend=False, name=f"nβ {nb:g}, ε {eps:g}"),
                              row=1, col=2)
    fig.update_xaxes(type="log", title_text="ε", row=1, col=1)
    if traces is not None:
        fig.update_xaxes(title_text="draw", row=1, col=2)
        fig.update_yaxes(type="log", title_text="loss", row=1, col=2)
    fig.update_layout(template="plotly_white", height=440, title="SGLD calibration (crosses: a diagnostic failed)")
    return fig
