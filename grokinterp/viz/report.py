"""A self-contained HTML report of a run: config, headline numbers and every figure.

One file, plotly.js embedded once, no network access needed to open it. The numbers come from
:func:`grokinterp.summary.analyze_run`, the figures from :mod:`grokinterp.plotting`.

Example:
    >>> write_report("checkpoints/quick")           # doctest: +SKIP
    PosixPath('checkpoints/quick/report.html')
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..analysis.algorithms import embedding_circles, identify_algorithm
from ..analysis.early import first_warning
from ..analysis.fourier import fourier_basis
from ..analysis.summary import analyze_run, register_run_analysis
from ..config import interventions
from ..errors import AnalysisError, RunError
from ..store import layout as _io
from ..store.run import Run, load_run
from . import plotting as P

__all__ = ["write_report", "render_report", "report_figures", "REPORT_NAME"]

REPORT_NAME = "report.html"

_CSS = """
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.headline { font-size: 1.15em; background: #f2f7ff; border-left: 4px solid #636efa; padding: 10px 14px; }
.rule { color: #555; font-size: 0.85em; }
.figure { margin: 1em 0 2em; }
"""

# Counts script errors into <body data-js-errors>, so a headless browser test can read them.
_ERROR_HOOK = ("<script>window.addEventListener('error',function(){var b=document.body;"
               "b.dataset.jsErrors=String(+(b.dataset.jsErrors||0)+1);});</script>")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if x != x:
            return "—"
        return f"{x:.{digits}g}"
    return str(x)


def _table(rows: list[tuple[str, Any]]) -> str:
    out = ["<table>"]
    for k, v in rows:
        cls = ' class="num"' if isinstance(v, (int, float)) else ""
        out.append(f"<tr><th>{html.escape(str(k))}</th><td{cls}>{html.escape(_fmt(v))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def report_figures(analysis) -> list[tuple[str, str, Any]]:
    """The report's figures as ``(title, caption, go.Figure)``, in order, for a :class:`RunAnalysis`."""
    run = analysis.run
    B = fourier_basis(run.p)
    keys = analysis.key_freqs
    nf = analysis.neurons
    figs = [
        ("Training curves", "Train and test loss (log axis) and accuracy, with the detected phases shaded.",
         P.loss_curves(run.metrics, analysis.phases)),
        ("Progress measures", "Restricted loss and accuracy (only the key-frequency components of the logits) "
         "reach their final level before the test loss and accuracy do; excluded loss (those components removed, "
         "on training pairs) rises while the circuit forms.",
         P.progress_figure(analysis.measures, analysis.phases, analysis.circuit)),
        ("Fourier norms of W_E and W_L", "Norm of each Fourier component of the embedding (W_E) and of the "
         "neuron-to-logit map W_L = W_out W_U, final checkpoint; key frequencies in red.",
         P.fourier_norms_bars({"W_E": analysis.embed_norms, "W_L": analysis.W_L_norms}, B.labels,
                              key_freqs=keys, component_freqs=B.freqs)),
        ("W_E Fourier norms over training", "Share of W_E's Fourier norm in each frequency at each checkpoint: "
         "the key frequencies appear.",
         P.fourier_norms_heatmap(analysis.embed_norms_over_time, analysis.epochs, key_freqs=keys,
                                 phases=analysis.phases)),
    ]
    # One neuron from each of the largest clusters, else the first neurons.
    sizes = nf.cluster_sizes.sort_values("n_neurons", ascending=False)
    chosen = [int(nf.clusters[int(f)][0]) for f in sizes["freq"][:4]] or list(range(min(4, nf.d_mlp)))
    figs += [
        ("Neuron activations", "Final-position activations of neurons from the largest frequency clusters over "
         "all inputs (a, b): periodic in a + b.",
         P.neuron_activations(analysis.acts, chosen,
                              titles=[f"neuron {n} (freq {int(nf.dominant_freq[n])})" for n in chosen])),
        ("Neuron frequency clusters", "Fraction of each neuron's variance explained by each frequency.",
         P.neuron_fve_heatmap(nf)),
        ("Cluster sizes", "Neurons whose dominant frequency explains more than the threshold of their variance.",
         P.cluster_sizes(nf)),
        ("Attention", "Attention paid by the '=' position to the token a, per head, over all inputs.",
         P.attention_to_a(analysis.pattern, key_pos=0)),
        ("Logits in the Fourier basis", "2-D Fourier norms over (a, b) of the centred logits: the spectrum is "
         "concentrated on the key frequencies' cos(w(a+b)), sin(w(a+b)) terms.",
         P.logit_fourier_norms(analysis.logit_norms_2d, B.labels)),
    ]
    if len(analysis.ablations):
        figs.append(("Circuit ablations", "Loss after removing or keeping parts of the circuit (final checkpoint).",
                     P.ablation_bars(analysis.ablations)))
    for title, caption, fn in REPORT_FIGURES:
        fig = fn(analysis)
        if fig is not None:
            figs.append((title, caption, fig))
    return figs


#: Extra figures appended to every report: ``(title, caption, fn(analysis) -> go.Figure | None)``.
REPORT_FIGURES: list[tuple[str, str, Callable[[Any], Any]]] = []


def register_figure(title: str, caption: str, fn: Callable[[Any], Any]) -> None:
    """Add a figure to every run report; ``fn`` gets the :class:`~grokinterp.analysis.summary.RunAnalysis`
    and returns a ``plotly.graph_objects.Figure`` (or ``None`` to skip it for that run)."""
    if not callable(fn) or not isinstance(title, str) or not title:
        raise AnalysisError(f"register_figure: expected a title and a callable, got {title!r}, {fn!r}")
    REPORT_FIGURES[:] = [f for f in REPORT_FIGURES if f[0] != title] + [(title, caption, fn)]


# -- built-in extras: interventions, the live early warning, clock vs pizza (issue 13) ------------------
def _algorithm(analysis) -> dict[str, Any] | None:
    if not analysis.key_freqs:
        return None
    return identify_algorithm(analysis.run, key_freqs=analysis.key_freqs).summary()


def _early_warning(analysis) -> str | None:
    try:
        w = first_warning(analysis.run.metrics)
    except (AnalysisError, RunError):
        return None
    if w is None:
        return None
    return w.message


def _circles_figure(analysis):
    if not analysis.key_freqs:
        return None
    W_E = analysis.run.params(-1)["embed.W_E"]
    algo = analysis.extras.get("algorithm") or {}
    return P.embedding_circles(embedding_circles(W_E, analysis.key_freqs, analysis.run.p), label=algo.get("label"))


register_run_analysis("interventions", lambda analysis: interventions(analysis.run.config) or None)
register_run_analysis("early_warning", _early_warning)
register_run_analysis("algorithm", _algorithm)
register_figure("Embedding circles (clock or pizza)",
                "The residues' embeddings in each key frequency's plane (the Fourier cos/sin components of W_E); "
                "the label comes from gradient symmetricity and distance irrelevance (Zhong et al. 2023), see the "
                "'algorithm' row above.", _circles_figure)


def render_report(analysis, figures: list[tuple[str, str, Any]] | None = None) -> str:
    """The report of a :class:`~grokinterp.summary.RunAnalysis` as one HTML string.

    ``figures``: the output of :func:`report_figures` when the caller has built it already."""
    import plotly
    from plotly.offline import get_plotlyjs

    from .. import __version__

    run = analysis.run
    h = analysis.headline()
    c = run.config
    title = f"grokinterp report — {c.task.operation} mod {c.task.p} ({run.path.name})"
    lead = h["lead_time_epochs"]
    if h["circuit_formed_epoch"] is not None and h["test_acc_99_epoch"] is not None:
        headline = (f"The generalizing circuit formed at epoch <b>{h['circuit_formed_epoch']}</b> "
                    f"(the key-frequency circuit alone classifies 99 % of all pairs), test accuracy passed 99 % at epoch "
                    f"<b>{h['test_acc_99_epoch']}</b>: "
                    f"a lead of <b>{lead}</b> epochs.")
    elif h["test_acc_99_epoch"] is None:
        headline = "Test accuracy never passed 99 %: this run has not grokked (yet)."
    else:
        headline = "The progress measures did not date the circuit's formation (see the rules below)."
    numbers = [
        ("key frequencies", ", ".join(map(str, h["key_frequencies"])) or "none"),
        ("key-frequency rule", h["key_frequency_rule"]),
        ("memorization ends", h["memorization_end"]),
        ("circuit formation ends", h["circuit_formation_end"]),
        ("cleanup ends", h["cleanup_end"]),
        ("circuit formed (progress measures)", h["circuit_formed_epoch"]),
        ("excluded loss risen", h["excluded_loss_rise_epoch"]),
        ("test accuracy ≥ 99 %", h["test_acc_99_epoch"]),
        ("lead time (epochs)", lead),
        ("neurons explained by one frequency", f"{h['neurons_explained_by_one_freq']} of {h['neurons_total']} "
                                               f"({h['neurons_explained_fraction']:.1%})"),
        ("logit variance explained by cos(w(a+b−c)), key w",
         f"{h['logit_fve_key_freqs']:.1%}" if h["logit_fve_key_freqs"] is not None else "—"),
        ("final train / test loss", f"{_fmt(h['final_train_loss'])} / {_fmt(h['final_test_loss'])}"),
        ("final test accuracy", f"{h['final_test_acc']:.2%}" if h["final_test_acc"] is not None else "—"),
    ]
    numbers += [(name.replace("_", " "), v if isinstance(v, (int, float, str)) else json.dumps(v))
                for name, v in h["extras"].items()]
    rules = [(k.replace("_", " "), v) for k, v in h["phase_rules"].items()]
    rules.append(("circuit formed", h["circuit_rule"]))
    rules += [(f"{k.replace('_', ' ')} (not found)", v) for k, v in h["phase_reasons"].items()]
    cfg_rows = []
    for sec, fields in c.to_dict().items():
        cfg_rows += [(f"{sec}.{k}", v if isinstance(v, (int, float)) else json.dumps(v) if not isinstance(v, str) else v)
                     for k, v in fields.items()]
    info = run.info
    cfg_rows += [("device", f"{info['device'].get('type')} ({info['device'].get('name')})"),
                 ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
                 ("checkpoints", f"{h['n_checkpoints']} ({h['n_checkpoints_analysed']} analysed)")]

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style>",
             f"<script type='text/javascript'>/* plotly.js {plotly.__version__} */{get_plotlyjs()}</script>",
             "</head><body data-js-errors='0'>", _ERROR_HOOK, "<main>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='sub'>{html.escape(str(run.path))} · generated {time.strftime('%Y-%m-%d %H:%M')} by grokinterp "
             f"{__version__}</p>",
             f"<p class='headline'>{headline}</p>",
             "<h2>Headline numbers</h2>", _table(numbers),
             "<h2>Rules</h2>", "<div class='rule'>", _table(rules), "</div>"]
    for i, (name, caption, fig) in enumerate(report_figures(analysis) if figures is None else figures):
        parts += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(caption)}</p>",
                  "<div class='figure'>",
                  fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}",
                              config={"displaylogo": False, "responsive": True}),
                  "</div>"]
    parts += ["<h2>Configuration</h2>", _table(cfg_rows), "</main></body></html>"]
    return "\n".join(parts)


def write_report(run_or_path, out: str | os.PathLike | None = None, *, max_checkpoints: int | None = 400,
                 key_freqs=None, return_headline: bool = False):
    """Analyse a run and write its report atomically; returns the path written.

    Args:
        run_or_path: a :class:`~grokinterp.run.Run` or its directory.
        out: the HTML file (default ``RUN/report.html``).
        max_checkpoints: analyse at most this many checkpoints (evenly spread).
        key_freqs: fix the key frequencies (default: from the final checkpoint).
        return_headline: return ``(path, headline numbers)`` instead of the path.

    Raises:
        RunError: not a run, no checkpoints, or the output cannot be written (nothing is left
            behind).
    """
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    out = Path(out) if out is not None else run.path / REPORT_NAME
    if out.exists() and out.is_dir():
        raise RunError(f"{out}: is a directory; give a file name for the report")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise RunError(f"{out}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise RunError(f"{out}: the directory {parent} is not writable")
    if len(run.epochs) == 0:
        raise RunError(f"{run.path}: the run has no readable checkpoints to report on")
    analysis = analyze_run(run, key_freqs=key_freqs, max_checkpoints=max_checkpoints)
    text = render_report(analysis)
    try:
        _io.write_atomic(out, text.encode())
    except OSError as e:
        raise RunError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return (out, analysis.headline()) if return_headline else out
