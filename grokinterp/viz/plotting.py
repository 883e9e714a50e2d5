"""Plotly figures for grokking analyses. Every function returns a ``plotly.graph_objects.Figure``.

Plotting only draws: inputs are analysis results (tensors, DataFrames, dataclasses from
:mod:`grokinterp.analysis.fourier`, :mod:`~grokinterp.analysis.neurons`, :mod:`~grokinterp.analysis.measures`,
:mod:`~grokinterp.analysis.phases`, :mod:`~grokinterp.analysis.ablations`). Nothing here calls ``.show()`` or sets
a renderer; in Jupyter a returned figure displays itself.

Example:
    >>> measures = progress_measures(run); phases = detect_phases(measures)    # doctest: +SKIP
    >>> progress_figure(measures, phases)                                         # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..errors import AnalysisError

__all__ = [
    "probes_figure",
    "loss_curves",
    "fourier_norms_bars",
    "fourier_norms_heatmap",
    "neuron_activations",
    "neuron_fve_heatmap",
    "cluster_sizes",
    "attention_to_a",
    "logit_fourier_norms",
    "progress_figure",
    "ablation_bars",
    "embedding_circles",
    "spaced_labels",
    "plural",
]

PHASE_COLORS = {"memorization": "rgba(99,110,250,0.10)", "circuit_formation": "rgba(239,85,59,0.10)",
                "cleanup": "rgba(0,204,150,0.12)"}
# The same hues, opaque enough to read as legend swatches.
_PHASE_SWATCH = {"memorization": "rgba(99,110,250,0.45)", "circuit_formation": "rgba(239,85,59,0.45)",
                 "cleanup": "rgba(0,204,150,0.5)"}
PHASE_NAMES = {"memorization": "memorization", "circuit_formation": "circuit formation", "cleanup": "cleanup"}
_PAPER_DASH = {"memorization": "dot", "circuit_formation": "dash", "cleanup": "longdash"}
_TEMPLATE = "plotly_white"
# Legend below the plot area, horizontal: phase and marker labels live here, so they never overprint
# the curves or each other whatever the width of a band.
_LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.12, xanchor="left", x=0)
#: The width (px) of the reports' content column: no figure is drawn wider; multi-panel figures wrap
#: into rows and otherwise take the width of their container (plotly's autosize).
COLUMN_WIDTH = 1110


def plural(noun: str) -> str:
    """The English plural of the nouns the figures use: ``frequency`` → ``frequencies``, ``irrep`` → ``irreps``."""
    if noun.endswith("y") and noun[-2:-1] not in ("a", "e", "i", "o", "u"):
        return noun[:-1] + "ies"
    return noun + "s"


def _panel_grid(n: int, max_cols: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels, at most ``max_cols`` side by side."""
    cols = max(1, min(n, max_cols))
    return -(-n // cols), cols


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _legend_entry(fig: go.Figure, name: str, *, group: str, title: str | None = None, color: str = "#444",
                  symbol: str | None = "square", dash: str | None = None, row: int | None = None) -> None:
    """A legend-only entry (an invisible point) naming a band or a line drawn as a shape."""
    marker = dict(symbol=symbol, size=13, color=color) if symbol else None
    kw = dict(row=row, col=1) if row is not None else {}
    fig.add_trace(go.Scatter(x=[None], y=[None], name=name, mode="markers" if symbol else "lines",
                             marker=marker, line=dict(color=color, dash=dash, width=2) if not symbol else None,
                             legendgroup=group, legendgrouptitle_text=title, hoverinfo="skip", showlegend=True),
                  **kw)


def _phase_bands(fig: go.Figure, phases, rows: Sequence[int] | None = None, *, paper_lines: bool = False) -> None:
    """Shade each phase found in ``phases`` (a :class:`~grokinterp.analysis.phases.Phases`, our rules).

    The phase names (with their epochs) go into the legend rather than onto the bands, so they stay
    readable however narrow a band is. With ``paper_lines``, the boundaries dated by the paper's
    definitions are drawn as dashed vertical lines, each with its own legend entry.
    """
    if phases is None:
        return
    targets = [None] if rows is None else list(rows)
    title = "phases (our rules)"
    for name, start, end in phases.intervals():
        for r in targets:
            kw = {} if r is None else dict(row=r, col=1)
            fig.add_vrect(x0=start, x1=end, fillcolor=PHASE_COLORS.get(name, "rgba(0,0,0,0.05)"), line_width=0,
                          layer="below", **kw)
        _legend_entry(fig, f"{PHASE_NAMES.get(name, name)} {start}–{end}", group="phases", title=title,
                      color=_PHASE_SWATCH.get(name, "#999"), row=targets[0])
        title = None
    if not paper_lines or not hasattr(phases, "boundaries"):
        return
    title = "paper's boundaries (§5.2)"
    for b in phases.boundaries("paper"):
        if b.end is None:
            continue
        for r in targets:
            kw = {} if r is None else dict(row=r, col=1)
            fig.add_vline(x=b.end, line=dict(color="#555", width=1, dash=_PAPER_DASH.get(b.phase)), **kw)
        _legend_entry(fig, f"{PHASE_NAMES.get(b.phase, b.phase)} ends {b.end}", group="paper", title=title,
                      color="#555", symbol=None, dash=_PAPER_DASH.get(b.phase), row=targets[0])
        title = None


def loss_curves(metrics: pd.DataFrame, phases=None, *, title: str = "Train and test loss",
                log_x: bool = False, accuracy: bool = True) -> go.Figure:
    """Train/test loss on a log axis (and accuracy on a second axis), with phase bands.

    Args:
        metrics: ``run.metrics`` (train loss every epoch, test loss where recorded) or a
            progress-measures table (one row per checkpoint).
        phases: optional :class:`~grokinterp.analysis.phases.Phases` to shade.
        log_x: log-scale epochs (epoch 0 is dropped then).
        accuracy: also draw train/test accuracy on a right-hand axis.
    """
    for c in ("epoch", "train_loss", "test_loss"):
        if c not in metrics.columns:
            raise AnalysisError(f"metrics: column {c!r} is missing")
    m = metrics[metrics["epoch"] > 0] if log_x else metrics
    fig = make_subplots(specs=[[{"secondary_y": accuracy}]])
    tr = m[m["train_loss"].notna()]
    te = m[m["test_loss"].notna()]
    fig.add_trace(go.Scatter(x=tr["epoch"], y=tr["train_loss"], name="train loss", line=dict(color="#636efa")))
    fig.add_trace(go.Scatter(x=te["epoch"], y=te["test_loss"], name="test loss", line=dict(color="#ef553b")))
    if accuracy and "test_acc" in m.columns:
        acc = m[m["test_acc"].notna()]
        fig.add_trace(go.Scatter(x=acc["epoch"], y=acc["test_acc"], name="test accuracy",
                                 line=dict(color="#ef553b", dash="dot", width=1)), secondary_y=True)
        if "train_acc" in m.columns:
            fig.add_trace(go.Scatter(x=acc["epoch"], y=acc["train_acc"], name="train accuracy",
                                     line=dict(color="#636efa", dash="dot", width=1)), secondary_y=True)
        fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickvals=[0, 0.25, 0.5, 0.75, 1.0],
                         showgrid=False, secondary_y=True)
    fig.update_yaxes(type="log", title_text="loss (nats, log)", secondary_y=False, exponentformat="power")
    fig.update_xaxes(title_text="epoch", type="log" if log_x else "linear")
    _phase_bands(fig, phases)
    fig.update_layout(title=title, template=_TEMPLATE, hovermode="x unified", height=520,
                      legend=dict(_LEGEND_BELOW, y=-0.22), margin=dict(b=150))
    return fig


def _split_components(labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """For basis labels (``const``, ``cos k``, ``sin k``): the frequency and kind (0 const/cos, 1 sin)
    of each component; ``None`` for other labels."""
    freq, kind = [], []
    for lab in labels:
        parts = str(lab).split()
        if parts == ["const"]:
            freq.append(0), kind.append(0)
        elif len(parts) == 2 and parts[0] in ("cos", "sin") and parts[1].isdigit():
            freq.append(int(parts[1])), kind.append(0 if parts[0] == "cos" else 1)
        else:
            return None
    return np.array(freq), np.array(kind)


def fourier_norms_bars(norms: dict[str, object], labels: Sequence[str], *, key_freqs: Sequence[int] = (),
                       component_freqs: Sequence[int] | None = None,
                       title: str = "Fourier norms", key_names: Sequence[str] | None = None,
                       noun: str = "frequencies") -> go.Figure:
    """Bar charts of Fourier (or group Fourier) norms on a numeric axis, one row per named matrix.

    With Fourier basis labels (``const``, ``cos k``, ``sin k``) each frequency ``k`` gets two bars side
    by side — ``cos k`` (solid) and ``sin k`` (hatched) — and the constant sits at ``k = 0``; the axis
    is numeric, so its ticks stay legible at any p, and hovering a bar names its component. For a group
    basis (``noun="irreps"``) the axis is the component index, in basis order (grouped by irrep), and
    the hover names the irrep and matrix element.

    Args:
        norms: name → ``[n]`` norms per component (or per frequency) in the order of ``labels``
            (e.g. ``{"W_E": ..., "W_L": ...}``).
        labels: the component names (``FourierBasis.labels`` / ``GroupBasis`` labels) or frequency labels.
        key_freqs: frequencies (or irrep indices) to highlight (red).
        component_freqs: frequency of each bar (``FourierBasis.freqs``) or irrep of each component
            (``GroupBasis.irrep_of_row``); default: from basis labels, else bar index = frequency.
        key_names, noun: how the title names the highlighted keys (default: the numbers, "frequencies").
    """
    if not norms:
        raise AnalysisError("norms: nothing to plot")
    irreps = noun != "frequencies"
    split = None if irreps else _split_components(labels)
    if irreps:
        if component_freqs is None:
            raise AnalysisError("component_freqs: the irrep of each component is needed to plot irrep norms")
        groups = _np(component_freqs).astype(np.int64)
        freqs, kinds = np.arange(len(labels)), np.zeros(len(labels), dtype=np.int64)
        key = np.isin(groups, list(key_freqs))
    else:
        if component_freqs is not None:
            freqs = _np(component_freqs).astype(np.int64)
            if len(freqs) != len(labels):
                raise AnalysisError(f"component_freqs has {len(freqs)} values for {len(labels)} labels")
            kinds = split[1] if split is not None else np.zeros(len(labels), dtype=np.int64)
        elif split is not None:
            freqs, kinds = split
        else:
            freqs, kinds = np.arange(len(labels)), np.zeros(len(labels), dtype=np.int64)
        key = np.isin(freqs, list(key_freqs))
    two_kinds = bool((kinds == 1).any())
    fig = make_subplots(rows=len(norms), cols=1, subplot_titles=list(norms), vertical_spacing=0.16)
    for i, (name, v) in enumerate(norms.items(), start=1):
        v = _np(v)
        if len(v) != len(labels):
            raise AnalysisError(f"norms[{name!r}] has {len(v)} values for {len(labels)} labels")
        for kind, kind_name, pattern in ((0, "cos k (and const)" if two_kinds else "norm", ""), (1, "sin k", "/")):
            sel = kinds == kind
            if not sel.any():
                continue
            colors = np.where(key[sel], "#ef553b", "#636efa").tolist()
            # sin bars: the same hue, hatched on a light ground. Per-bar colours go to the pattern's own
            # fgcolor / bgcolor ("replace" fill): a per-bar marker colour under a pattern makes plotly.js
            # log "Invalid color specifier" once per bar trace and draw the hatching black.
            light = np.where(key[sel], "#fbd3cb", "#dcdefe").tolist()
            fig.add_trace(go.Bar(
                x=freqs[sel], y=v[sel], name=kind_name, offsetgroup=str(kind), legendgroup=kind_name,
                showlegend=i == 1 and two_kinds,
                marker=dict(color=colors,
                            pattern=dict(shape=pattern, fgcolor=colors, bgcolor=light, size=5, solidity=0.4,
                                         fillmode="replace") if pattern else None),
                customdata=np.array(labels, dtype=object)[sel],
                hovertemplate="%{customdata}: %{y:.3g}<extra>" + name + "</extra>"), row=i, col=1)
        fig.update_yaxes(title_text=f"norm of {name}", row=i, col=1)
        x_title = ("component (basis order, grouped by irrep; hover for its name)" if irreps else
                   "frequency k" + (" (bars: cos k, then sin k hatched)" if two_kinds else ""))
        fig.update_xaxes(title_text=x_title, row=i, col=1)
    if len(key_freqs):
        _legend_entry(fig, "key irrep" if irreps else "key frequency", group="key", color="#ef553b")
    fig.update_xaxes(range=[-0.75, float(freqs.max()) + 0.75], dtick=5 if freqs.max() > 20 else 1)
    shown = list(key_names) if key_names is not None else [str(k) for k in sorted(key_freqs)]
    sub = f" — key {noun} {', '.join(shown)} in red" if len(key_freqs) else ""
    fig.update_layout(title=title + sub, template=_TEMPLATE, height=330 * len(norms) + 60, bargap=0.15,
                      barmode="group", legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig


def fourier_norms_heatmap(norms, epochs, *, key_freqs: Sequence[int] = (), phases=None,
                          title: str = "Fourier norms of W_E over training", normalize: bool = True,
                          names: Sequence[str] | None = None, noun: str = "frequency") -> go.Figure:
    """Heatmap epoch × frequency (e.g. of :func:`~grokinterp.analysis.fourier.embed_fourier_norms` of a stack).

    Args:
        norms: ``[ckpt, n_freq + 1]`` (index k = frequency k; the constant column is dropped).
        epochs: ``[ckpt]`` checkpoint epochs.
        key_freqs: marked on the frequency axis (dotted white lines).
        phases: draw the ends of the phases (our rules) as horizontal lines, named in the legend.
        normalize: divide each checkpoint's row by its total, to show where the norm sits.
        names, noun: for per-irrep norms (index k = irrep k), the irreps' names (index 0 = trivial) and
            "irrep": the axis then shows the names.
    """
    v = _np(norms).astype(np.float64)[:, 1:]
    ep = _np(epochs)
    if v.shape[0] != len(ep):
        raise AnalysisError(f"norms has {v.shape[0]} rows for {len(ep)} epochs")
    if normalize:
        v = v / np.maximum(v.sum(1, keepdims=True), 1e-30)
    freqs = np.arange(1, v.shape[1] + 1)
    x = freqs if names is None else [str(n) for n in list(names)[1:]]
    fig = go.Figure(go.Heatmap(z=v, x=x, y=ep, colorscale="Viridis", showlegend=False,
                               colorbar=dict(title="share" if normalize else "norm"),
                               hovertemplate="epoch %{y}<br>" + noun + " %{x}<br>%{z:.3g}<extra></extra>"))
    for k in key_freqs:
        fig.add_vline(x=k if names is None else k - 1, line=dict(color="white", width=1, dash="dot"))
    if len(key_freqs):
        shown = ", ".join(str(names[k]) if names is not None else str(k) for k in sorted(key_freqs))
        _legend_entry(fig, f"key {plural(noun) if len(key_freqs) > 1 else noun} ({shown})", group="key",
                      color="#888", symbol=None, dash="dot")
    if phases is not None:
        dashes = {"memorization": "dot", "circuit_formation": "dash", "cleanup": "solid"}
        title_ = "phase ends (our rules)"
        for name, _, end in phases.intervals():
            fig.add_hline(y=end, line=dict(color="white", width=1.5, dash=dashes.get(name)))
            _legend_entry(fig, f"{PHASE_NAMES.get(name, name)} ends {end}", group="phases", title=title_,
                          color="#888", symbol=None, dash=dashes.get(name))
            title_ = None
    fig.update_layout(title=title, xaxis_title="frequency k" if names is None else noun, yaxis_title="epoch",
                      template=_TEMPLATE, height=560, legend=_LEGEND_BELOW, margin=dict(b=130), plot_bgcolor="white")
    if names is None:
        fig.update_xaxes(range=[0.5, freqs[-1] + 0.5], showgrid=False)
    else:
        fig.update_xaxes(type="category", showgrid=False)
    fig.update_yaxes(showgrid=False)
    return fig


def neuron_activations(acts, neurons: Sequence[int], *, titles: Sequence[str] | None = None,
                       title: str = "Neuron activations over (a, b)") -> go.Figure:
    """Heatmaps of chosen neurons' final-position activations over the input grid.

    Args:
        acts: ``[a, b, d_mlp]`` (from :func:`grokinterp.analysis.neurons.neuron_activations`).
        neurons: neuron indices to draw.
        titles: one subplot title per neuron (default ``neuron N``).
    """
    a = _np(acts)
    if a.ndim != 3:
        raise AnalysisError(f"acts: expected [a, b, d_mlp], got shape {list(a.shape)}")
    neurons = [int(n) for n in neurons]
    if not neurons:
        raise AnalysisError("neurons: the list is empty")
    bad = [n for n in neurons if not 0 <= n < a.shape[-1]]
    if bad:
        raise AnalysisError(f"neuron index {bad[0]} is out of range 0..{a.shape[-1] - 1}")
    cols = min(len(neurons), 4)
    rows = -(-len(neurons) // cols)
    titles = list(titles) if titles is not None else [f"neuron {n}" for n in neurons]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.06, vertical_spacing=0.12)
    for i, n in enumerate(neurons):
        fig.add_trace(go.Heatmap(z=a[:, :, n], colorscale="RdBu", zmid=0, showscale=False,
                                 hovertemplate="a %{y}, b %{x}: %{z:.3g}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed", title_text="a", title_standoff=2)
    fig.update_xaxes(title_text="b", title_standoff=2)
    fig.update_layout(title=title, template=_TEMPLATE, height=280 * rows + 80)  # width: the container's
    return fig


def neuron_fve_heatmap(nf, *, title: str | None = None, max_freq: int | None = None) -> go.Figure:
    """Fraction of each neuron's variance explained by each frequency (frequency × neuron).

    Neurons are ordered by dominant frequency, then by how well it explains them.

    Args:
        nf: a :class:`~grokinterp.analysis.neurons.NeuronFourier`.
        max_freq: drop frequencies above this (default: all).
    """
    fve = _np(nf.fve)[:, 1:]
    dom, dfve = _np(nf.dominant_freq), _np(nf.dominant_fve)
    order = np.lexsort((-dfve, dom))
    if max_freq is not None:
        fve = fve[:, :max_freq]
    z = fve[order].T
    names = getattr(nf, "names", ())
    noun = "irrep" if names else "frequency"
    freqs = np.arange(1, z.shape[0] + 1) if not names else [str(n) for n in names[1:z.shape[0] + 1]]
    fig = go.Figure(go.Heatmap(z=z, y=freqs, x=np.arange(len(order)), colorscale="Blues", zmin=0, zmax=1,
                               customdata=np.broadcast_to(order, z.shape),
                               hovertemplate="neuron %{customdata}<br>" + noun + " %{y}<br>FVE %{z:.2f}<extra></extra>",
                               colorbar=dict(title="FVE")))
    title = title or (f"Neuron FVE by {noun} — {nf.explained_fraction:.1%} of neurons have one {noun} "
                      f"with FVE > {nf.threshold}")
    fig.update_layout(title=title, xaxis_title=f"neuron (sorted by dominant {noun})", yaxis_title=noun,
                      template=_TEMPLATE, height=480)
    if names:
        fig.update_yaxes(type="category")
    return fig


def cluster_sizes(nf, *, title: str | None = None, key_freqs: Sequence[int] | None = None) -> go.Figure:
    """Bar chart of the number of neurons in each frequency (irrep) cluster (FVE above the threshold).

    With ``key_freqs`` (frequencies, or irrep indices), clusters at a key frequency are red and the others
    grey, named so in the legend: neurons can be periodic in a frequency the key rule did not choose.
    """
    sizes = nf.cluster_sizes
    names = getattr(nf, "names", ())
    noun = "irrep" if names else "frequency"
    x = [str(f) if not names else str(names[int(f)]) for f in sizes["freq"]]
    hover = noun + " %{x}: %{y} neurons<extra></extra>"
    fig = go.Figure()
    if key_freqs is None:
        fig.add_trace(go.Bar(x=x, y=sizes["n_neurons"], marker_color="#636efa", text=sizes["n_neurons"],
                             textposition="outside", hovertemplate=hover, showlegend=False))
    else:
        is_key = np.isin(sizes["freq"].to_numpy(), list(key_freqs))
        for sel, name, color in ((is_key, f"key {noun}", "#ef553b"), (~is_key, f"not a key {noun}", "#b0b0b0")):
            if sel.any():
                fig.add_trace(go.Bar(x=[v for v, s in zip(x, sel) if s], y=sizes["n_neurons"][sel], name=name,
                                     marker_color=color, text=sizes["n_neurons"][sel], textposition="outside",
                                     hovertemplate=hover))
        fig.update_layout(legend=_LEGEND_BELOW | dict(y=-0.2))
        fig.update_xaxes(categoryorder="array", categoryarray=x)
    unexplained = nf.d_mlp - int(sizes["n_neurons"].sum())
    title = title or f"Neuron clusters by {noun}"
    fig.update_layout(title=f"{title} ({unexplained} of {nf.d_mlp} neurons in no cluster)",
                      xaxis_title=noun, yaxis_title="neurons", template=_TEMPLATE, xaxis_type="category")
    return fig


def attention_to_a(pattern, *, key_pos: int = 0, title: str | None = None) -> go.Figure:
    """Attention from the ``=`` position to position ``key_pos`` (0 = ``a``) per head over (a, b).

    Args:
        pattern: ``[a, b, h, key_pos]`` (``grid_forward(..., return_pattern=True).pattern``).
    """
    pat = _np(pattern)
    if pat.ndim != 4:
        raise AnalysisError(f"pattern: expected [a, b, h, key_pos], got shape {list(pat.shape)}")
    H = pat.shape[2]
    names = {0: "a", 1: "b", 2: "="}
    rows, cols = _panel_grid(H, 4)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"head {h}" for h in range(H)], horizontal_spacing=0.05,
                        vertical_spacing=0.15)
    for h in range(H):
        fig.add_trace(go.Heatmap(z=pat[:, :, h, key_pos], zmin=0, zmax=1, colorscale="Viridis", showscale=h == H - 1,
                                 hovertemplate="a %{y}, b %{x}: %{z:.2f}<extra></extra>"),
                      row=h // cols + 1, col=h % cols + 1)
    fig.update_yaxes(autorange="reversed", title_text="a", title_standoff=2)
    fig.update_xaxes(title_text="b", title_standoff=2)
    fig.update_layout(title=title or f"Attention from '=' to '{names.get(key_pos, key_pos)}' per head",
                      template=_TEMPLATE, height=300 * rows + 40)  # width: the container's
    return fig


def _component_ticks(labels: Sequence[str], key_freqs: Sequence[int], pixels: float) -> dict:
    """Tick positions and texts for an axis of basis components.

    Every component is labelled when each gets at least 9 px; otherwise one tick per frequency
    ``k`` sits between its ``cos k`` and ``sin k`` rows, thinned so no two labels touch (widths
    estimated at 7 px per character of 10 px text, plus a 4 px gap), key frequencies always shown
    in bold (neighbouring ones share a tick, ``41/42``) and plain ticks dropped where they would crowd.
    """
    n = len(labels)
    split = _split_components(labels)
    if split is None or pixels / n >= 9:
        return dict(tickvals=list(range(n)), ticktext=list(labels), tickfont=dict(size=8))
    freq, _ = split
    n_freq = int(freq.max())
    px = pixels / n  # per component

    def width(text: str) -> float:
        return 7.0 * len(text.replace("<b>", "").replace("</b>", "")) + 4.0

    def clear(v1, t1, v2, t2) -> bool:
        return abs(v1 - v2) * px >= (width(t1) + width(t2)) / 2

    centre = {k: float(np.flatnonzero(freq == k).mean()) for k in range(1, n_freq + 1)}
    keys = sorted(int(k) for k in key_freqs if 1 <= int(k) <= n_freq)
    bold: list[tuple[float, str]] = []
    for k in keys:  # neighbouring key frequencies share one tick
        t = f"<b>{k}</b>"
        if bold and not clear(bold[-1][0], bold[-1][1], centre[k], t):
            v0, t0 = bold.pop()
            ks = t0[3:-4] + "/" + str(k)
            bold.append(((v0 * (len(ks.split("/")) - 1) + centre[k]) / len(ks.split("/")), f"<b>{ks}</b>"))
        else:
            bold.append((centre[k], t))
    digits = len(str(n_freq))
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if 2 * s * px >= width("9" * digits))
    kept = [(0.0, "const")] + bold
    for k in range(step, n_freq + 1, step):
        if k not in keys and all(clear(centre[k], str(k), v, t) for v, t in kept):
            kept.append((centre[k], str(k)))
    kept.sort()
    return dict(tickvals=[v for v, _ in kept], ticktext=[t for _, t in kept], tickfont=dict(size=10))


def logit_fourier_norms(norms, labels: Sequence[str], *, title: str = "2-D Fourier norms of the logits over (a, b)",
                        log: bool = True, key_freqs: Sequence[int] = ()) -> go.Figure:
    """Heatmap of the logits' 2-D Fourier norms (component in a × component in b).

    Both axes hold every basis component (``const``, then ``cos k``, ``sin k`` for each k). At small p
    every row and column is labelled; otherwise one tick per frequency ``k`` sits between its cos and
    sin rows (key frequencies always, in bold), and hovering names the exact components.

    Args:
        norms: ``[p, p]`` (:func:`grokinterp.analysis.logits.logit_fourier_norms_2d` with ``per="component"``).
        labels: the basis component names (``FourierBasis.labels``).
        log: colour by log10 of the norm (the spectrum is sparse).
        key_freqs: frequencies whose ticks are always shown (bold).
    """
    z = _np(norms).astype(np.float64)
    if z.ndim != 2 or z.shape[0] != len(labels) or z.shape[1] != len(labels):
        raise AnalysisError(f"norms: expected [{len(labels)}, {len(labels)}], got shape {list(z.shape)}")
    n = len(labels)
    shown = np.log10(np.maximum(z, z.max() * 1e-6 + 1e-30)) if log else z
    lab = np.array(labels, dtype=object)
    names = np.stack([np.broadcast_to(lab[:, None], (n, n)), np.broadcast_to(lab[None, :], (n, n))], axis=-1)
    fig = go.Figure(go.Heatmap(z=shown, x=np.arange(n), y=np.arange(n), colorscale="Viridis",
                               customdata=np.concatenate([names, z[..., None].astype(object)], axis=-1),
                               hovertemplate="a: %{customdata[0]}<br>b: %{customdata[1]}<br>norm %{customdata[2]:.3g}"
                                             "<extra></extra>",
                               colorbar=dict(title="log10 norm" if log else "norm")))
    side = 560
    ticks = _component_ticks(labels, key_freqs, side)
    axis_title = "component" if ticks["tickfont"]["size"] == 8 else "frequency k (rows cos k, sin k)"
    fig.update_yaxes(autorange="reversed", title_text=f"{axis_title} in a", showgrid=False, **ticks)
    fig.update_xaxes(title_text=f"{axis_title} in b", showgrid=False, tickangle=0 if ticks["tickfont"]["size"] > 8
                     else -90, **ticks)
    fig.update_layout(title=title, template=_TEMPLATE, height=side + 140, width=side + 200)
    return fig


def progress_figure(measures: pd.DataFrame, phases=None, circuit=None, *,
                    title: str = "Progress measures") -> go.Figure:
    """The progress-measure panels of the paper, with phase bands and the circuit-formation line.

    Panels: (1) train, test and restricted loss (log); (2) excluded loss on its own linear axis,
    with chance (``ln p``) marked, so its rise during circuit formation is visible; (3) Gini of
    the W_E and W_L Fourier norms; (4) total sum of squared weights; (5, when the table has
    ``restricted_acc``) test accuracy against the accuracy of the key-frequency components alone.
    Phase names, the paper's boundaries and the vertical markers are named in the legend.

    Args:
        measures: :func:`grokinterp.analysis.measures.progress_measures` output.
        phases: :class:`~grokinterp.analysis.phases.Phases` (shaded bands for our rules, dashed
            lines for the paper's).
        circuit: :class:`~grokinterp.analysis.phases.CircuitFormation` (vertical lines at the
            circuit's formation and at test accuracy ≥ 99 %).
    """
    need = ["epoch", "train_loss", "test_loss", "restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L",
            "sum_sq_weights"]
    missing = [c for c in need if c not in measures.columns]
    if missing:
        raise AnalysisError(f"measures: missing column(s) {missing}")
    m = measures
    acc_panel = "restricted_acc" in m.columns
    p = m.attrs.get("p")
    titles = ["train, test and restricted loss", "excluded loss (training pairs, key frequencies removed)",
              "Gini coefficient of the Fourier norms", "total sum of squared weights"]
    if acc_panel:
        titles.append("accuracy: full model vs key frequencies alone")
    rows = len(titles)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.045, subplot_titles=titles)
    for col, name, color, dash in [("train_loss", "train loss", "#636efa", None),
                                   ("test_loss", "test loss", "#ef553b", None),
                                   ("restricted_loss", "restricted loss", "#00cc96", "dash")]:
        fig.add_trace(go.Scatter(x=m["epoch"], y=m[col], name=name, line=dict(color=color, dash=dash),
                                 legendgroup="measures", legendgrouptitle_text="measures" if col == "train_loss"
                                 else None), row=1, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["excluded_loss"], name="excluded loss", legendgroup="measures",
                             line=dict(color="#ab63fa")), row=2, col=1)
    if p is not None:
        fig.add_hline(y=float(np.log(p)), line=dict(color="#ab63fa", width=1, dash="dot"), row=2, col=1)
        _legend_entry(fig, f"chance, ln p = {np.log(p):.2f}", group="measures", color="#ab63fa", symbol=None,
                      dash="dot", row=2)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["gini_W_E"], name="Gini W_E", legendgroup="measures",
                             line=dict(color="#ffa15a")), row=3, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["gini_W_L"], name="Gini W_L", legendgroup="measures",
                             line=dict(color="#19d3f3")), row=3, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["sum_sq_weights"], name="Σ w²", legendgroup="measures",
                             line=dict(color="#7f7f7f")), row=4, col=1)
    if acc_panel:
        for col, name, color, dash in [("test_acc", "test accuracy", "#ef553b", "dot"),
                                       ("restricted_acc", "restricted accuracy", "#00cc96", "dash")]:
            fig.add_trace(go.Scatter(x=m["epoch"], y=m[col], name=name, legendgroup="measures",
                                     line=dict(color=color, dash=dash)), row=5, col=1)
        fig.update_yaxes(range=[0, 1.04], title_text="accuracy", row=5, col=1)
    fig.update_yaxes(type="log", exponentformat="power", title_text="loss (nats, log)", row=1, col=1)
    fig.update_yaxes(title_text="nats", rangemode="tozero", row=2, col=1)
    fig.update_yaxes(range=[0, 1], title_text="Gini", row=3, col=1)
    fig.update_yaxes(title_text="Σ w²", row=4, col=1)
    fig.update_xaxes(title_text="epoch", row=rows, col=1)
    _phase_bands(fig, phases, rows=list(range(1, rows + 1)), paper_lines=True)
    if circuit is not None:
        title_ = "markers"
        for x, label, color in [(circuit.epoch, "circuit formed", "#00cc96"),
                                (circuit.test_acc_99_epoch, "test accuracy ≥ 99 %", "#ef553b")]:
            if x is None:
                continue
            for r in range(1, rows + 1):
                fig.add_vline(x=x, line=dict(color=color, width=1.5, dash="dot"), row=r, col=1)
            _legend_entry(fig, f"{label} ({x})", group="markers", title=title_, color=color, symbol=None, dash="dot")
            title_ = None
    fig.update_layout(title=title, template=_TEMPLATE, height=230 * rows + 200, hovermode="x unified",
                      legend=dict(orientation="h", yanchor="top", y=-0.06, xanchor="left", x=0, groupclick="toggleitem"),
                      margin=dict(b=60))
    return fig


def ablation_bars(table: pd.DataFrame, *, metric: str = "loss", splits: Sequence[str] = ("train", "test"),
                  title: str | None = None, log: bool | None = None) -> go.Figure:
    """Grouped horizontal bars of an ablation table (:mod:`grokinterp.analysis.ablations` tidy layout).

    One row per ablation, its name written horizontally on the left (long names stay legible), in
    the table's order from the top.

    Args:
        table: rows ``ablation, component, split, loss, acc, n``.
        metric: ``loss`` (log axis by default) or ``acc``.
        splits: which splits to draw.
    """
    for c in ("ablation", "split", metric):
        if c not in table.columns:
            raise AnalysisError(f"table: column {c!r} is missing")
    order = list(dict.fromkeys(table["ablation"]))
    fig = go.Figure()
    colors = {"train": "#636efa", "test": "#ef553b", "all": "#00cc96"}
    for s in splits:
        rows = table[table["split"] == s].set_index("ablation").reindex(order)
        fig.add_trace(go.Bar(y=order, x=rows[metric], name=s, orientation="h", marker_color=colors.get(s),
                             hovertemplate="%{y}<br>" + s + f" {metric}: " + "%{x:.3g}<extra></extra>"))
    log = (metric == "loss") if log is None else log
    fig.update_xaxes(type="log" if log else "linear", title_text=metric + (" (nats, log)" if metric == "loss" else ""),
                     exponentformat="power")
    fig.update_yaxes(autorange="reversed", automargin=True, title_text="ablation", tickfont=dict(size=11))
    fig.update_layout(title=title or f"Circuit ablations: {metric}", barmode="group", template=_TEMPLATE,
                      height=max(360, 34 * len(order) + 160), legend=dict(orientation="h", yanchor="bottom", y=1.01,
                                                                         xanchor="right", x=1))
    return fig


def embedding_circles(circles, *, title: str | None = None, label: str | None = None) -> go.Figure:
    """The embedding of the residues in each key frequency's plane: one panel per frequency.

    Args:
        circles: :class:`~grokinterp.analysis.algorithms.EmbeddingCircle` objects (from
            :func:`~grokinterp.analysis.algorithms.embedding_circles` or an ``AlgorithmReport``'s
            ``circles``), each with ``freq``, ``coords [p, 2]``, ``circularity`` and ``share``.
        title: figure title.
        label: the algorithm label to show in the title (``clock`` / ``pizza`` / ``neither``).

    Each point is a residue ``t`` (hover: its value), coloured by ``t``; a circular embedding of
    frequency ``k`` puts ``t`` at angle ``2πkt/p``. The axes are the two directions of the frequency's
    plane (right singular vectors of its Fourier components of ``W_E``); residues are labelled where
    the labels do not pile up (:func:`spaced_labels`). At most three panels side by side, then rows.
    """
    circles = list(circles)
    if not circles:
        raise AnalysisError("circles: nothing to draw (no key frequencies)")
    rows, cols = _panel_grid(len(circles), 3)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[
        f"freq {c.freq}: circularity {c.circularity:.2f}, {c.share:.0%} of W_E" for c in circles],
        horizontal_spacing=0.09, vertical_spacing=0.14 if rows > 1 else 0.1)
    for j, c in enumerate(circles):
        row, col = j // cols + 1, j % cols + 1
        xy = _np(c.coords)
        t = np.arange(len(xy))
        shown = spaced_labels(xy)
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text",
                                 text=[str(i) if s else "" for i, s in zip(t, shown)], customdata=t,
                                 textposition="top center", textfont=dict(size=9),
                                 marker=dict(color=t, colorscale="HSV", size=7, showscale=False),
                                 hovertemplate="residue %{customdata}<extra></extra>", showlegend=False),
                      row=row, col=col)
        fig.update_xaxes(scaleanchor=f"y{'' if j == 0 else j + 1}", showticklabels=False, zeroline=False,
                         title_text=f"direction 1 of freq {c.freq}", title_standoff=4, row=row, col=col)
        fig.update_yaxes(showticklabels=False, zeroline=False, title_text="direction 2", title_standoff=4,
                         row=row, col=col)
    fig.update_annotations(font_size=12)  # the panel titles
    head = title or "Embedding circles of the key frequencies"
    if label:
        head += f" — {label}"
    fig.update_layout(title=head, template=_TEMPLATE, height=330 * rows + 90)  # width: the container's
    return fig


def spaced_labels(xy, min_gap: float = 0.28) -> np.ndarray:
    """Which points of a 2-D scatter to label so that no two labels pile up: residues in order
    (0, 1, 2, ...), each kept when it lies at least ``min_gap`` × the median distance from the centre
    away from every label kept before it. Every point keeps its hover text."""
    xy = _np(xy).astype(np.float64)
    if len(xy) == 0:
        return np.zeros(0, dtype=bool)
    centre = xy.mean(0)
    scale = float(np.median(np.linalg.norm(xy - centre, axis=1))) or 1.0
    kept: list[int] = []
    out = np.zeros(len(xy), dtype=bool)
    for i in range(len(xy)):
        if all(np.linalg.norm(xy[i] - xy[k]) >= min_gap * scale for k in kept):
            kept.append(i)
            out[i] = True
    return out


def probes_figure(measures: pd.DataFrame, *, title: str = "Probes of numerical stability and representation"):
    """Panels of the probe columns the table has (``None`` when it has none): softmax-collapse fraction
    (train / test), logit margin and std, the update–weight cosine, the representation quality index and the
    NTK–label alignment (:mod:`grokinterp.analysis.probes`)."""
    panels = [(("sc_train", "sc_test"), "softmax collapse"), (("logit_margin", "logit_std"), "logit scale"),
              (("update_weight_cos",), "cos(Δθ, θ)"), (("rqi", "rqi_circle"), "RQI"), (("ntk_alignment",), "NTK alignment")]
    panels = [(cols, name) for cols, name in panels
              if any(c in measures.columns and measures[c].notna().any() for c in cols)]
    if not panels or "epoch" not in measures.columns:
        return None
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[name for _, name in panels])
    colors = ["#636efa", "#ef553b"]
    for i, (cols, _) in enumerate(panels, 1):
        for j, c in enumerate(cols):
            if c in measures.columns and measures[c].notna().any():
                m = measures[["epoch", c]].dropna()
                fig.add_trace(go.Scatter(x=m["epoch"], y=m[c], mode="lines", name=c, line=dict(color=colors[j])),
                              row=i, col=1)
    fig.update_layout(template="plotly_white", title=title, height=max(300, 200 * len(panels)))
    fig.update_xaxes(title_text="epoch", row=len(panels), col=1)
    return fig


# -- embedding pictures and dataset tasks (issue 22) ---------------------------------------------------------
def embedding_scatter(maps, *, title: str | None = None) -> go.Figure:
    """Side-by-side 2-D maps (:class:`~grokinterp.analysis.embeddings.EmbeddingMap`), points coloured by
    their task-defined label (one legend entry per label, shared by the panels)."""
    maps = list(maps)
    if not maps:
        raise AnalysisError("embedding_scatter: no maps")
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=[m.title + (
        f" (PC1 {m.explained[0]:.0%}, PC2 {m.explained[1]:.0%})" if m.explained else "") for m in maps])
    labels = sorted({int(x) for m in maps for x in m.points["label"]})
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff",
               "#fecb52"]
    for j, m in enumerate(maps):
        pts = m.points
        for i, lab in enumerate(labels):
            sel = pts[pts["label"] == lab]
            if not len(sel):
                continue
            name = str(sel["label_name"].iloc[0])
            fig.add_trace(go.Scatter(x=sel["x"], y=sel["y"], mode="markers", name=name, legendgroup=name,
                                     showlegend=j == 0, marker=dict(size=5, color=palette[i % len(palette)]),
                                     text=[f"{name} (#{k})" for k in sel["index"]], hoverinfo="text"),
                          row=1, col=j + 1)
    fig.update_layout(title=title, height=460, legend_title_text="label")
    return fig


def weight_norm_curve(measures: pd.DataFrame, *, unit: str = "epoch", title: str = "Weight norm ‖θ‖") -> go.Figure:
    """The weight norm (``weight_norm`` column, one row per checkpoint) against the checkpoint label."""
    if "weight_norm" not in measures.columns or "epoch" not in measures.columns:
        raise AnalysisError("measures: need columns 'epoch' and 'weight_norm'")
    fig = go.Figure(go.Scatter(x=measures["epoch"], y=measures["weight_norm"], name="‖θ‖", mode="lines+markers",
                               marker=dict(size=3)))
    fig.update_layout(title=title, height=360, xaxis_title=unit, yaxis_title="‖θ‖ (all parameters)")
    return fig
