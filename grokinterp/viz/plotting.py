"""Plotly figures for grokking analyses. Every function returns a ``plotly.graph_objects.Figure``.

Plotting only draws: inputs are analysis results (tensors, DataFrames, dataclasses from
:mod:`grokinterp.fourier`, :mod:`~grokinterp.neurons`, :mod:`~grokinterp.progress`,
:mod:`~grokinterp.phases`, :mod:`~grokinterp.ablations`). Nothing here calls ``.show()`` or sets
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
]

PHASE_COLORS = {"memorization": "rgba(99,110,250,0.10)", "circuit_formation": "rgba(239,85,59,0.10)",
                "cleanup": "rgba(0,204,150,0.12)"}
PHASE_NAMES = {"memorization": "memorization", "circuit_formation": "circuit formation", "cleanup": "cleanup"}
_TEMPLATE = "plotly_white"


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _phase_bands(fig: go.Figure, phases, rows: Sequence[int] | None = None) -> None:
    """Shade each phase found in ``phases`` (a :class:`~grokinterp.phases.Phases`)."""
    if phases is None:
        return
    for name, start, end in phases.intervals():
        kw = dict(x0=start, x1=end, fillcolor=PHASE_COLORS.get(name, "rgba(0,0,0,0.05)"), line_width=0,
                  layer="below")
        if rows is None:
            fig.add_vrect(**kw, annotation_text=PHASE_NAMES.get(name, name), annotation_position="top left",
                          annotation_font_size=10)
        else:
            for i, r in enumerate(rows):
                fig.add_vrect(**kw, row=r, col=1,
                              **(dict(annotation_text=PHASE_NAMES.get(name, name), annotation_position="top left",
                                      annotation_font_size=10) if i == 0 else {}))


def loss_curves(metrics: pd.DataFrame, phases=None, *, title: str = "Train and test loss",
                log_x: bool = False, accuracy: bool = True) -> go.Figure:
    """Train/test loss on a log axis (and accuracy on a second axis), with phase bands.

    Args:
        metrics: ``run.metrics`` (train loss every epoch, test loss where recorded) or a
            progress-measures table (one row per checkpoint).
        phases: optional :class:`~grokinterp.phases.Phases` to shade.
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
    fig.update_yaxes(type="log", title_text="loss", secondary_y=False, exponentformat="power")
    fig.update_xaxes(title_text="epoch", type="log" if log_x else "linear")
    _phase_bands(fig, phases)
    fig.update_layout(title=title, template=_TEMPLATE, hovermode="x unified", legend=dict(orientation="h", y=-0.2))
    return fig


def fourier_norms_bars(norms: dict[str, object], labels: Sequence[str], *, key_freqs: Sequence[int] = (),
                       component_freqs: Sequence[int] | None = None,
                       title: str = "Fourier norms") -> go.Figure:
    """Bar charts of Fourier norms, one row per named matrix (e.g. ``{"W_E": ..., "W_L": ...}``).

    Args:
        norms: name → ``[n]`` norms per component (or per frequency) in the order of ``labels``.
        labels: the component names (``FourierBasis.labels``) or frequency labels.
        key_freqs: frequencies to highlight.
        component_freqs: frequency of each bar (``FourierBasis.freqs``) for the highlighting;
            default: bar index = frequency.
    """
    if not norms:
        raise AnalysisError("norms: nothing to plot")
    fig = make_subplots(rows=len(norms), cols=1, subplot_titles=list(norms), vertical_spacing=0.12)
    freqs = np.arange(len(labels)) if component_freqs is None else _np(component_freqs)
    colors = np.where(np.isin(freqs, list(key_freqs)), "#ef553b", "#636efa")
    for i, (name, v) in enumerate(norms.items(), start=1):
        v = _np(v)
        if len(v) != len(labels):
            raise AnalysisError(f"norms[{name!r}] has {len(v)} values for {len(labels)} labels")
        fig.add_trace(go.Bar(x=list(labels), y=v, name=name, marker_color=colors, showlegend=False,
                             hovertemplate="%{x}: %{y:.3g}<extra>" + name + "</extra>"), row=i, col=1)
        fig.update_yaxes(title_text="norm", row=i, col=1)
    fig.update_xaxes(tickangle=-90, tickfont=dict(size=8))
    sub = f" — key frequencies {', '.join(map(str, sorted(key_freqs)))} in red" if len(key_freqs) else ""
    fig.update_layout(title=title + sub, template=_TEMPLATE, height=320 * len(norms), bargap=0.1)
    return fig


def fourier_norms_heatmap(norms, epochs, *, key_freqs: Sequence[int] = (), phases=None,
                          title: str = "Fourier norms of W_E over training", normalize: bool = True) -> go.Figure:
    """Heatmap epoch × frequency (e.g. of :func:`~grokinterp.fourier.embed_fourier_norms` of a stack).

    Args:
        norms: ``[ckpt, n_freq + 1]`` (index k = frequency k; the constant column is dropped).
        epochs: ``[ckpt]`` checkpoint epochs.
        key_freqs: marked on the frequency axis.
        phases: draw the phase boundaries as horizontal lines.
        normalize: divide each checkpoint's row by its total, to show where the norm sits.
    """
    v = _np(norms).astype(np.float64)[:, 1:]
    ep = _np(epochs)
    if v.shape[0] != len(ep):
        raise AnalysisError(f"norms has {v.shape[0]} rows for {len(ep)} epochs")
    if normalize:
        v = v / np.maximum(v.sum(1, keepdims=True), 1e-30)
    freqs = np.arange(1, v.shape[1] + 1)
    fig = go.Figure(go.Heatmap(z=v, x=freqs, y=ep, colorscale="Viridis",
                               colorbar=dict(title="share" if normalize else "norm"),
                               hovertemplate="epoch %{y}<br>freq %{x}<br>%{z:.3g}<extra></extra>"))
    for k in key_freqs:
        fig.add_vline(x=k, line=dict(color="white", width=1, dash="dot"))
    if phases is not None:
        for name, _, end in phases.intervals():
            fig.add_hline(y=end, line=dict(color="white", width=1), annotation_text=f"end of {PHASE_NAMES.get(name, name)}",
                          annotation_font_color="white", annotation_font_size=9)
    fig.update_layout(title=title, xaxis_title="frequency", yaxis_title="epoch", template=_TEMPLATE, height=520)
    return fig


def neuron_activations(acts, neurons: Sequence[int], *, titles: Sequence[str] | None = None,
                       title: str = "Neuron activations over (a, b)") -> go.Figure:
    """Heatmaps of chosen neurons' final-position activations over the input grid.

    Args:
        acts: ``[a, b, d_mlp]`` (from :func:`grokinterp.neurons.neuron_activations`).
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
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04, vertical_spacing=0.08)
    for i, n in enumerate(neurons):
        fig.add_trace(go.Heatmap(z=a[:, :, n], colorscale="RdBu", zmid=0, showscale=False,
                                 hovertemplate="a %{y}, b %{x}: %{z:.3g}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed", title_text="a", col=1)
    fig.update_xaxes(title_text="b", row=rows)
    fig.update_layout(title=title, template=_TEMPLATE, height=260 * rows + 80, width=max(900, 230 * cols))
    return fig


def neuron_fve_heatmap(nf, *, title: str | None = None, max_freq: int | None = None) -> go.Figure:
    """Fraction of each neuron's variance explained by each frequency (frequency × neuron).

    Neurons are ordered by dominant frequency, then by how well it explains them.

    Args:
        nf: a :class:`~grokinterp.neurons.NeuronFourier`.
        max_freq: drop frequencies above this (default: all).
    """
    fve = _np(nf.fve)[:, 1:]
    dom, dfve = _np(nf.dominant_freq), _np(nf.dominant_fve)
    order = np.lexsort((-dfve, dom))
    if max_freq is not None:
        fve = fve[:, :max_freq]
    z = fve[order].T
    freqs = np.arange(1, z.shape[0] + 1)
    fig = go.Figure(go.Heatmap(z=z, y=freqs, x=np.arange(len(order)), colorscale="Blues", zmin=0, zmax=1,
                               customdata=np.broadcast_to(order, z.shape),
                               hovertemplate="neuron %{customdata}<br>freq %{y}<br>FVE %{z:.2f}<extra></extra>",
                               colorbar=dict(title="FVE")))
    title = title or (f"Neuron FVE by frequency — {nf.explained_fraction:.1%} of neurons have one frequency "
                      f"with FVE > {nf.threshold}")
    fig.update_layout(title=title, xaxis_title="neuron (sorted by dominant frequency)", yaxis_title="frequency",
                      template=_TEMPLATE, height=480)
    return fig


def cluster_sizes(nf, *, title: str = "Neuron clusters by frequency") -> go.Figure:
    """Bar chart of the number of neurons in each frequency cluster (FVE above the threshold)."""
    sizes = nf.cluster_sizes
    fig = go.Figure(go.Bar(x=[str(f) for f in sizes["freq"]], y=sizes["n_neurons"], marker_color="#636efa",
                           text=sizes["n_neurons"], textposition="outside",
                           hovertemplate="freq %{x}: %{y} neurons<extra></extra>"))
    unexplained = nf.d_mlp - int(sizes["n_neurons"].sum())
    fig.update_layout(title=f"{title} ({unexplained} of {nf.d_mlp} neurons in no cluster)",
                      xaxis_title="frequency", yaxis_title="neurons", template=_TEMPLATE, xaxis_type="category")
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
    fig = make_subplots(rows=1, cols=H, subplot_titles=[f"head {h}" for h in range(H)], horizontal_spacing=0.03)
    for h in range(H):
        fig.add_trace(go.Heatmap(z=pat[:, :, h, key_pos], zmin=0, zmax=1, colorscale="Viridis", showscale=h == H - 1,
                                 hovertemplate="a %{y}, b %{x}: %{z:.2f}<extra></extra>"), row=1, col=h + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="a", col=1)
    fig.update_xaxes(title_text="b")
    fig.update_layout(title=title or f"Attention from '=' to '{names.get(key_pos, key_pos)}' per head",
                      template=_TEMPLATE, height=340, width=max(900, 260 * H))
    return fig


def logit_fourier_norms(norms, labels: Sequence[str], *, title: str = "2-D Fourier norms of the logits over (a, b)",
                        log: bool = True) -> go.Figure:
    """Heatmap of the logits' 2-D Fourier norms (component in a × component in b).

    Args:
        norms: ``[p, p]`` (:func:`grokinterp.logits.logit_fourier_norms_2d` with ``per="component"``).
        labels: the basis component names (``FourierBasis.labels``).
        log: colour by log10 of the norm (the spectrum is sparse).
    """
    z = _np(norms).astype(np.float64)
    if z.ndim != 2 or z.shape[0] != len(labels):
        raise AnalysisError(f"norms: expected [{len(labels)}, {len(labels)}], got shape {list(z.shape)}")
    shown = np.log10(np.maximum(z, z.max() * 1e-6 + 1e-30)) if log else z
    fig = go.Figure(go.Heatmap(z=shown, x=list(labels), y=list(labels), colorscale="Viridis", customdata=z,
                               hovertemplate="a: %{y}<br>b: %{x}<br>norm %{customdata:.3g}<extra></extra>",
                               colorbar=dict(title="log10 norm" if log else "norm")))
    fig.update_yaxes(autorange="reversed", title_text="component in a", tickfont=dict(size=7))
    fig.update_xaxes(title_text="component in b", tickfont=dict(size=7))
    fig.update_layout(title=title, template=_TEMPLATE, height=640, width=700)
    return fig


def progress_figure(measures: pd.DataFrame, phases=None, circuit=None, *,
                    title: str = "Progress measures") -> go.Figure:
    """The progress-measure panels of the paper, with phase bands and the circuit-formation line.

    Panels: (1) train, test, restricted and excluded loss (log); (2) Gini of the W_E and W_L
    Fourier norms; (3) total sum of squared weights; (4, when the table has ``restricted_acc``)
    test accuracy against the accuracy of the key-frequency components alone.

    Args:
        measures: :func:`grokinterp.progress.progress_measures` output.
        phases: :class:`~grokinterp.phases.Phases` (shaded bands).
        circuit: :class:`~grokinterp.phases.CircuitFormation` (vertical lines at the circuit's
            formation and at test accuracy ≥ 99 %).
    """
    need = ["epoch", "train_loss", "test_loss", "restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L",
            "sum_sq_weights"]
    missing = [c for c in need if c not in measures.columns]
    if missing:
        raise AnalysisError(f"measures: missing column(s) {missing}")
    m = measures
    acc_panel = "restricted_acc" in m.columns
    rows = 4 if acc_panel else 3
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=["losses", "Gini coefficient of Fourier norms", "total sum of squared weights"]
                        + (["accuracy: full model vs key frequencies alone"] if acc_panel else []))
    for col, name, color, dash in [("train_loss", "train loss", "#636efa", None), ("test_loss", "test loss", "#ef553b", None),
                                   ("restricted_loss", "restricted loss", "#00cc96", "dash"),
                                   ("excluded_loss", "excluded loss", "#ab63fa", "dash")]:
        fig.add_trace(go.Scatter(x=m["epoch"], y=m[col], name=name, line=dict(color=color, dash=dash)), row=1, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["gini_W_E"], name="Gini W_E", line=dict(color="#ffa15a")), row=2, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["gini_W_L"], name="Gini W_L", line=dict(color="#19d3f3")), row=2, col=1)
    fig.add_trace(go.Scatter(x=m["epoch"], y=m["sum_sq_weights"], name="Σ w²", line=dict(color="#7f7f7f")), row=3, col=1)
    if acc_panel:
        for col, name, color, dash in [("test_acc", "test accuracy", "#ef553b", None),
                                       ("restricted_acc", "restricted accuracy", "#00cc96", "dash")]:
            fig.add_trace(go.Scatter(x=m["epoch"], y=m[col], name=name, line=dict(color=color, dash=dash)),
                          row=4, col=1)
        fig.update_yaxes(range=[0, 1.02], row=4, col=1)
    fig.update_yaxes(type="log", exponentformat="power", row=1, col=1)
    fig.update_yaxes(range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="epoch", row=rows, col=1)
    _phase_bands(fig, phases, rows=list(range(1, rows + 1)))
    if circuit is not None:
        for x, label, color in [(circuit.epoch, "circuit formed", "#00cc96"),
                                (circuit.test_acc_99_epoch, "test acc ≥ 99%", "#ef553b")]:
            if x is not None:
                fig.add_vline(x=x, line=dict(color=color, width=1.5, dash="dot"), annotation_text=label,
                              annotation_font_size=10, annotation_font_color=color)
    fig.update_layout(title=title, template=_TEMPLATE, height=260 * rows + 40, hovermode="x unified",
                      legend=dict(orientation="h", y=-0.08))
    return fig


def ablation_bars(table: pd.DataFrame, *, metric: str = "loss", splits: Sequence[str] = ("train", "test"),
                  title: str | None = None, log: bool | None = None) -> go.Figure:
    """Grouped bars of an ablation table (:mod:`grokinterp.ablations` tidy layout).

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
        fig.add_trace(go.Bar(x=order, y=rows[metric], name=s, marker_color=colors.get(s),
                             hovertemplate="%{x}<br>" + s + f" {metric}: " + "%{y:.3g}<extra></extra>"))
    log = (metric == "loss") if log is None else log
    fig.update_yaxes(type="log" if log else "linear", title_text=metric, exponentformat="power")
    fig.update_xaxes(tickangle=-30)
    fig.update_layout(title=title or f"Circuit ablations: {metric}", barmode="group", template=_TEMPLATE, height=480)
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
    frequency ``k`` puts ``t`` at angle ``2πkt/p``.
    """
    circles = list(circles)
    if not circles:
        raise AnalysisError("circles: nothing to draw (no key frequencies)")
    n = len(circles)
    fig = make_subplots(rows=1, cols=n, subplot_titles=[
        f"freq {c.freq}: circularity {c.circularity:.2f}, {c.share:.0%} of W_E" for c in circles],
        horizontal_spacing=0.06)
    for j, c in enumerate(circles, start=1):
        xy = _np(c.coords)
        t = np.arange(len(xy))
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[str(i) for i in t],
                                 textposition="top center", textfont=dict(size=8),
                                 marker=dict(color=t, colorscale="HSV", size=7, showscale=False),
                                 hovertemplate="token %{text}<extra></extra>", showlegend=False), row=1, col=j)
        fig.update_xaxes(scaleanchor=f"y{'' if j == 1 else j}", showticklabels=False, row=1, col=j)
        fig.update_yaxes(showticklabels=False, row=1, col=j)
    head = title or "Embedding circles of the key frequencies"
    if label:
        head += f" — {label}"
    fig.update_layout(title=head, template=_TEMPLATE, height=360, width=max(360 * n, 500))
    return fig
