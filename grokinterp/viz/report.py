"""A self-contained HTML report of a run: config, headline numbers and every figure.

One file, plotly.js embedded once, no network access needed to open it. The numbers come from
:func:`grokinterp.analysis.summary.analyze_run`, the figures from :mod:`grokinterp.viz.plotting`.

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

import plotly.graph_objects as go

from ..analysis.algorithms import embedding_circles, identify_algorithm
from ..analysis.early import RESTRICTED_THRESHOLD, TEST_BELOW, first_warning, live_table
from ..analysis.embeddings import embedding_map
from ..analysis.fourier import fourier_basis
from ..analysis.summary import analyze_run, register_run_analysis, verdict
from ..config import interventions
from ..errors import AnalysisError, RunError
from ..store import layout as _io
from ..store.run import Run, describe_lineage, load_run
from ..tasks import CyclicSum
from . import plotting as P

__all__ = ["write_report", "render_report", "report_figures", "REPORT_NAME", "html_page", "figures_html", "table_html"]

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


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _table(rows: list[tuple[str, Any]]) -> str:
    out = ["<table>"]
    for k, v in rows:
        cls = ' class="num"' if isinstance(v, (int, float)) else ""
        out.append(f"<tr><th>{html.escape(str(k))}</th><td{cls}>{html.escape(_fmt(v))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _config_value(v: Any) -> Any:
    """A config value as the configuration table shows it (``None`` → ``none``, lists without JSON)."""
    if v is None:
        return "none"
    if isinstance(v, (int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return ", ".join(":".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x) for x in v) or "none"
    return json.dumps(v, ensure_ascii=False)


def report_figures(analysis) -> list[tuple[str, str, Any]]:
    """The report's figures as ``(title, caption, go.Figure)``, in order, for a :class:`RunAnalysis`.

    For a task with a group structure other than ``a + b`` the spectra are over the group's irreps in its
    coordinates (frequencies of ``Z_{p−1}`` for ``a·b`` mod p); without a structure, over the tokens.
    A dataset task (vectors) gets its own figures (:func:`_vector_figures`)."""
    if analysis.vector is not None:
        return _vector_figures(analysis)
    run = analysis.run
    keys = analysis.key_freqs
    nf = analysis.neurons
    irreps = analysis.noun == "irrep"
    labels = analysis.component_labels or fourier_basis(run.p).labels
    comp_keys = analysis.component_keys if analysis.component_keys is not None else fourier_basis(run.p).freqs
    ts = analysis.structure
    where = "" if ts is None else f" ({ts.structure.coordinates})" if ts.structure.coordinates else ""
    kind = "irrep" if irreps else "frequency"
    kinds = P.plural(kind)
    names = analysis.key_names_all if irreps else None
    key_shown = analysis.key_names if irreps else None
    what = "group Fourier" if ts is not None and (irreps or not ts.full_block or ts.structure.word != "a + b") \
        else "Fourier"
    figs = [
        ("Training curves", "Train and test loss (log axis) and accuracy, with the detected phases shaded.",
         P.loss_curves(run.metrics, analysis.phases)),
    ]
    if ts is not None:
        figs.append(("Progress measures", f"Restricted loss and accuracy (only the key {kind} components of the "
                     "logits) reach their final level before the test loss and accuracy do; excluded loss (those "
                     "components removed, on training pairs; its own linear axis, chance ln p dotted) rises while the "
                     "circuit forms. Shaded: the phases by our rules; dashed: the boundaries by the paper's "
                     "definitions.",
                     P.progress_figure(analysis.measures, analysis.phases, analysis.circuit)))
    spectra = {k: v for k, v in (("W_E", analysis.embed_norms), ("W_L", analysis.W_L_norms)) if v is not None}
    family = getattr(run.config.model, "family", "transformer")
    W_L_words = "W_L = W_U (an MLP's last hidden layer feeds the logits)" if family == "mlp" else "W_L = W_out W_U"
    if spectra:  # a family without an embedding / a neuron-to-logit map: the notes say which is undefined
        figs.append((f"{what.capitalize()} norms of {' and '.join(spectra)}", f"Norm of each {what} component of "
                     + " and of ".join(("the embedding (W_E)" if k == "W_E" else f"the neuron-to-logit map {W_L_words}")
                                       for k in spectra) + f"{where}, final checkpoint; key {kinds} in red.",
                     P.fourier_norms_bars(spectra, labels, key_freqs=keys, component_freqs=comp_keys,
                                          key_names=key_shown, noun="irreps" if irreps else "frequencies",
                                          title=f"{what.capitalize()} norms")))
    if analysis.embed_norms_over_time is not None:
        figs.append((f"W_E {what} norms over training", f"Share of W_E's {what} norm in each {kind} at each "
                     f"checkpoint: the key {kinds} appear.",
                     P.fourier_norms_heatmap(analysis.embed_norms_over_time, analysis.epochs, key_freqs=keys,
                                             phases=analysis.phases, names=names, noun=kind,
                                             title=f"{what.capitalize()} norms of W_E over training")))
    # One neuron from each of the largest clusters (key ones first), else the first neurons.
    key_set = {int(k) for k in keys}
    sizes = nf.cluster_sizes.assign(key=[int(f) in key_set for f in nf.cluster_sizes["freq"]]) \
        .sort_values(["key", "n_neurons"], ascending=False)
    chosen = [int(nf.clusters[int(f)][0]) for f in sizes["freq"][:4]] or list(range(min(4, nf.d_mlp)))

    def tag(n: int) -> str:
        d = int(nf.dominant_freq[n])
        name = nf.names[d] if nf.names else f"freq {d}"
        return name if d in key_set else f"{name}, not key"

    non_key = [tag(n) for n in chosen if int(nf.dominant_freq[n]) not in key_set]
    why_non_key = (f" A {kind} marked 'not key' is one the key-{kind} rule (under Headline numbers) did not choose: "
                   f"these neurons are periodic in it, but by that rule it is not part of the circuit.")
    pattern = "periodic in a + b" if ts is not None and ts.structure.word == "a + b" else \
        "over the tokens in their natural order"
    held = analysis.acts_neurons
    if held is not None:  # a large grid: only some neurons' activations were kept
        chosen = [n for n in chosen if n in held] or list(held)
    figs += [
        ("Neuron activations", f"Final-position activations of neurons from the largest {kind} clusters (key "
         f"{kinds} first) over all inputs (a, b), {pattern}." + (why_non_key if non_key else ""),
         P.neuron_activations(analysis.acts, chosen if held is None else [held.index(n) for n in chosen],
                              titles=[f"neuron {n} ({tag(n)})" for n in chosen])),
        (f"Neuron {kind} clusters", f"Fraction of each neuron's variance explained by each {kind}"
         + (" (maps over the group structure's block in its coordinates)." if nf.names else "."),
         P.neuron_fve_heatmap(nf)),
        ("Cluster sizes", f"Neurons whose dominant {kind} explains more than the threshold of their variance; "
         f"clusters at key {kinds} in red, at other {kinds} in grey. A grey cluster is at a {kind} the key-{kind} "
         f"rule (under Headline numbers) did not choose: its neurons are periodic in it, but by that rule it is "
         f"not part of the circuit.",
         P.cluster_sizes(nf, key_freqs=keys)),
    ]
    if analysis.pattern is not None:  # None: no attention (an MLP), or a transformer the one-layer fold does not compute
        mc = run.config.model
        reader = "the '=' position" if getattr(mc, "input_layout", "a_b_eq") == "a_b_eq" else "the readout position (b)"
        block = f" in the last block ({mc.n_layers - 1})" if mc.n_layers > 1 else ""
        figs.append(("Attention", f"Attention paid by {reader}{block} to the token a, per head, over all inputs.",
                     P.attention_to_a(analysis.pattern, key_pos=0)))
    if analysis.logit_norms_2d is not None:
        figs.append((f"Logits in the {what} basis", f"2-D {what} norms over (a, b) of the centred logits"
                     + (f"{where}: the spectrum is concentrated on the key {kinds}." if ts is not None else
                        " over the tokens (the task declares no group structure)."),
                     P.logit_fourier_norms(analysis.logit_norms_2d, labels, key_freqs=() if irreps else keys)))
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
def _clock_or_pizza_applies(analysis) -> bool:
    """Clock vs pizza is a question about a + b mod p (Zhong et al.): asked of that task only."""
    ts = analysis.structure
    return bool(analysis.key_freqs) and ts is not None and isinstance(ts.structure, CyclicSum)


def _algorithm(analysis) -> dict[str, Any] | None:
    if not _clock_or_pizza_applies(analysis):
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


def _algorithm_text(value, analysis) -> str:
    if value is None:
        if not analysis.key_freqs:
            return "not applicable: the run has no key frequencies whose embedding circles could be measured"
        return ("not applicable: clock vs pizza (Zhong et al. 2023) is a question about a + b mod p; this task is "
                f"{analysis.run.task.describe()}")
    label, reason = value.get("label"), value.get("reason")
    return f"{label}: {reason}" if reason else str(label)


def _interventions_text(value, analysis) -> str:
    if not value:
        return "none (the paper's recipe: AdamW, softmax cross-entropy, standard attention and initialisation)"
    return "; ".join(map(str, value))


def _early_warning_text(value, analysis) -> str:
    if value:
        return str(value)
    try:
        live = len(live_table(analysis.run.metrics)) > 0
    except (AnalysisError, RunError):
        live = False
    if not live:
        return "none: the run recorded no live measures (train.live_every = 0)"
    return (f"none: the key-frequency circuit alone never classified {RESTRICTED_THRESHOLD:.0%} of the pairs while "
            f"test accuracy was below {TEST_BELOW:.0%}")


def _plain_value(value: Any) -> Any:
    """A value for the headline table as a reader reads it: no JSON, no escapes, never null."""
    if value is None:
        return "none"
    if isinstance(value, (int, float, str)):
        return value
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {_fmt(_plain_value(v))}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(_plain_value(v)) for v in value) or "none"
    return str(value)


#: How the headline table shows a registered run analysis: ``name -> fn(value, analysis) -> str``
#: (default :func:`_plain_value`). Say why a value is missing rather than show nothing.
EXTRA_TEXT: dict[str, Callable[[Any, Any], str]] = {
    "interventions": _interventions_text, "early_warning": _early_warning_text, "algorithm": _algorithm_text}


def _circles_figure(analysis):
    if not _clock_or_pizza_applies(analysis):
        return None
    W_E = analysis.run.params(-1)["embed.W_E"]
    algo = analysis.extras.get("algorithm") or {}
    return P.embedding_circles(embedding_circles(W_E, analysis.key_freqs, analysis.run.p), label=algo.get("label"))


#: The title of a dataset run's probes figure.
VECTOR_PROBES_TITLE = "Probes of numerical stability"

#: What the report of a dataset run leaves out, and why: ``(section of an algebraic run's report, reason)``. Shown
#: as the "Undefined for this task" table — words, never a number.
VECTOR_UNDEFINED_SECTIONS = (
    ("Key frequencies and the key-frequency rule", "no group structure over the inputs (images, not a ∘ b)"),
    ("Fourier norms of W_E and W_L, over training", "no Fourier basis over the inputs, and no token embedding"),
    ("Restricted and excluded loss (the progress measures)", "they keep or remove key-frequency components of the logits"),
    ("Circuit formation and the paper's phases", "dated from the restricted and excluded loss"),
    ("Neuron frequency clusters, logits in the Fourier basis",
     "periodicity in a + b (here: neuron statistics per hidden layer, above)"),
    ("Attention and head ablations", "the MLP over vectors has no attention heads"),
    ("Clock or pizza, embedding circles", "a question about a + b mod p"),
    ("Representation quality index", "parallelograms a + b = c + d of token embeddings"),
)

#: Points of the hidden-layer embedding maps in reports (t-SNE is quadratic in them).
REPORT_MAP_POINTS = 600


def _maps(run, what: str) -> list:
    """PCA and (when scikit-learn is installed) t-SNE maps of ``what`` for the report."""
    maps = [embedding_map(run, what=what, method="pca", max_points=REPORT_MAP_POINTS)]
    try:
        maps.append(embedding_map(run, what=what, method="tsne", seed=0, max_points=REPORT_MAP_POINTS))
    except AnalysisError:  # no scikit-learn: PCA alone
        pass
    return maps


def _embedding_figure(analysis):
    """The token embeddings (or, without them, the hidden layer) of an algebraic run, coloured by the task's label."""
    if analysis.vector is not None:
        return None
    run = analysis.run
    what = "embed" if "embed.W_E" in run.params(-1) else "hidden"
    return P.embedding_scatter(_maps(run, what))


def _vector_figures(analysis) -> list[tuple[str, str, Any]]:
    run, v = analysis.run, analysis.vector
    unit = "optimizer step" if v["checkpoint_unit"] == "step" else "epoch"
    figs = [
        ("Training curves", "Train and test loss (log axis) and accuracy at each evaluation (x: epochs). Grokking "
         "on this task: test accuracy rising long after training accuracy reached 100 %.",
         P.loss_curves(run.metrics, None)),
        ("Weight norm", f"‖θ‖ (every parameter) at each checkpoint (x: {unit}); Omnigrok: a large initialisation "
         "(α) starts it high and weight decay brings it down to where the network generalizes.",
         P.weight_norm_curve(analysis.measures, unit=unit)),
        ("Hidden layer, embedded", f"The last hidden layer's activations on every image (at most "
         f"{REPORT_MAP_POINTS}, a seeded draw), final checkpoint, as PCA and t-SNE maps coloured by the digit.",
         P.embedding_scatter(_maps(run, "hidden"))),
    ]
    probes = P.probes_figure(analysis.measures)
    if probes is not None:
        figs.append((VECTOR_PROBES_TITLE, "Softmax collapse: share of examples whose float32 cross-entropy is exactly 0 "
                     "(Prieto et al. 2025), on the training and test examples; logit margin (label minus best other "
                     "logit, training examples) and std (all examples); cos(Δθ, θ) between consecutive checkpoints (+1: "
                     "weights scaled up along themselves, −1: a weight-decay step). From the family's forward on the "
                     "run's own input vectors (grokinterp.analysis.probes.vectors). The representation quality index "
                     "needs token embeddings and is undefined for this task.", probes))
    llc = _llc_table(analysis)
    if llc is not None:
        from .llc_plots import llc_figure

        figs.append(("Local learning coefficient", "SGLD estimate of the local learning coefficient of the run's own "
                     f"training loss ({run.config.train.loss}) at each checkpoint (± the spread over chains; crosses: an "
                     "estimate a diagnostic marked unreliable), from RUN/llc.csv as `grokinterp llc RUN` wrote it, beside "
                     "the test loss (right axis). The report draws the cached table only: it never runs the sampler.",
                     llc_figure(llc, analysis.measures, x="epoch")))
    for title, caption, fn in REPORT_FIGURES:
        fig = fn(analysis)
        if fig is not None:
            figs.append((title, caption, fig))
    return figs


def _render_vector(analysis, figures) -> str:
    run = analysis.run
    h = analysis.headline()
    g = h
    numbers = [
        ("task", h["task"]),
        ("training examples", h["train_size"]),
        ("key frequencies", "undefined for this task (no group structure)"),
        ("training accuracy first 100 %", "never" if g["train_acc_100_epoch"] is None else
         f"epoch {g['train_acc_100_epoch']} (step {g['train_acc_100_step']})"),
        ("test accuracy there / at the end", f"{_pct(g['test_acc_at_train_100'])} / {_pct(g['test_acc_final'])}"),
        ("rise (grokking: ≥ 20 %)", "—" if g["test_acc_rise"] is None else f"{g['test_acc_rise']:+.1%}"),
        ("90 % of the rise by", "—" if g["generalized_epoch"] is None else
         f"epoch {g['generalized_epoch']} (step {g['generalized_step']})"),
        ("weight norm ‖θ‖: first / last / lowest checkpoint",
         f"{_fmt(h['weight_norm_first'])} / {_fmt(h['weight_norm_last'])} / {_fmt(h['weight_norm_min'])}"),
        ("final train / test loss", f"{_fmt(h['final_train_loss'])} / {_fmt(h['final_test_loss'])}"),
    ]
    for lay in h["neuron_layers"]:
        numbers.append((f"hidden layer {lay['layer']}: dead neurons, mean share active, median class FVE",
                        f"{lay['dead']} of {lay['neurons']}, {_pct(lay['mean_frac_active'])}, "
                        f"{_fmt(lay['median_class_fve'])}"))
    numbers += [("note", note) for note in h["notes"]]
    cfg_rows = []
    for sec, fields in run.config.to_dict().items():
        cfg_rows += [(f"{sec}.{k}", _config_value(v)) for k, v in fields.items()]
    parts = [f"<p class='headline'>{html.escape(h['verdict'])}</p>", "<h2>Headline numbers</h2>", _table(numbers)]
    parts += figures_html(report_figures(analysis) if figures is None else figures)
    parts += ["<h2>Undefined for this task</h2>",
              f"<p>{html.escape(run.task.describe())} classifies vectors: these parts of an algebraic run's report have no "
              "meaning here and are not computed.</p>",
              _table([(name, f"undefined for this task: {why}") for name, why in VECTOR_UNDEFINED_SECTIONS])]
    parts += ["<h2>Configuration</h2>", _table(cfg_rows)]
    return html_page(f"grokinterp report — {run.task.describe()} ({run.path.name})", str(run.path), parts)


register_run_analysis("interventions", lambda analysis: interventions(analysis.run.config) or None)
register_run_analysis("early_warning", _early_warning)
register_run_analysis("lineage", lambda analysis: describe_lineage(analysis.run.lineage) if analysis.run.lineage else None)
register_run_analysis("algorithm", _algorithm)


def _llc_table(analysis):
    """The LLC table ``grokinterp llc`` cached in the run directory (``None``: none, or unreadable)."""
    path = analysis.run.path / _io.LLC_TABLE
    if not path.is_file():
        return None
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError):
        return None
    if not {"epoch", "llc_mean"} <= set(table.columns):
        return None
    return table


def _llc_figure(analysis):
    """The LLC table ``grokinterp llc`` cached in the run directory, if any (the report never samples); a dataset
    run draws it among its own figures (:func:`_vector_figures`)."""
    table = None if analysis.vector is not None else _llc_table(analysis)
    if table is None:
        return None
    from .llc_plots import llc_figure

    return llc_figure(table, analysis.measures, x="epoch")


register_figure("Local learning coefficient",
                "SGLD estimate of the local learning coefficient at each checkpoint (± the spread over chains; crosses: "
                "an estimate a diagnostic marked unreliable), from RUN/llc.csv as `grokinterp llc RUN` wrote it, beside "
                "the restricted, excluded and test loss (right axis). The report draws the cached table only: it never "
                "runs the sampler.", _llc_figure)
register_figure("Embedding circles (clock or pizza)",
                "The residues' embeddings in each key frequency's plane (the Fourier cos/sin components of W_E); "
                "the label comes from gradient symmetricity and distance irrelevance (Zhong et al. 2023), see the "
                "'algorithm' row above.", _circles_figure)
register_figure("Probes of numerical stability and representation",
                "Softmax collapse: share of pairs whose float32 cross-entropy is exactly 0 (Prieto et al. 2025); logit "
                "margin (label minus best other logit, train pairs) and std; cos(Δθ, θ) between consecutive checkpoints "
                "(+1: weights scaled up along themselves, −1: a weight-decay step); RQI: share of parallelograms "
                "a + b = c + d whose embeddings close (Liu et al. 2022), and rqi_circle, the modular ones closing as rotations in "
                "the best frequency plane (both defined only for a + b mod p with an embedding). "
                "Definitions: grokinterp.analysis.probes; the NTK alignment: grokinterp probes RUN --probes all.",
                lambda analysis: None if analysis.vector is not None else P.probes_figure(analysis.measures))
register_figure("Embedding map (PCA and t-SNE)",
                "The token embeddings W_E (or, for a model without them, the hidden layer on the task's inputs), "
                "final checkpoint, as PCA and t-SNE maps (seed 0), coloured by the task's label: a residue for "
                "arithmetic mod p, the conjugacy class for a group.", _embedding_figure)


def render_report(analysis, figures: list[tuple[str, str, Any]] | None = None) -> str:
    """The report of a :class:`~grokinterp.analysis.summary.RunAnalysis` as one HTML string.

    ``figures``: the output of :func:`report_figures` when the caller has built it already."""
    if analysis.vector is not None:
        return _render_vector(analysis, figures)
    run = analysis.run
    h = analysis.headline()
    c = run.config
    title = f"grokinterp report — {run.task.describe()} ({run.path.name})"
    lead = h["lead_time_epochs"]
    headline = verdict(h, html=True)
    keys = h["key_irreps"] if h["key_kind"] == "irrep" else h["key_frequencies"]
    noun = "irreps" if h["key_kind"] == "irrep" else "frequencies"
    fit_terms = h["logit_fit_terms"]
    numbers = [
        ("task", h["task"]),
        ("structure", h["structure"] or "none declared"),
    ]
    if h["generator"] is not None:
        numbers.append(("generator of the nonzero residues (discrete logarithms)", h["generator"]))
    numbers += [
        (f"key {noun}", ", ".join(map(str, keys)) or "none"),
        ("key-frequency rule" if noun == "frequencies" else "key-irrep rule", h["key_frequency_rule"]),
        ("circuit formed (progress measures)", (f"{h['circuit_formed_epoch']} (key {noun} "
                                                f"{', '.join(map(str, keys)) or 'none'}"
                                                + (f", chosen at epoch {h['key_frequency_epoch']}"
                                                   if h["key_frequency_epoch"] is not None else ", given")
                                                + (": provisional, before test accuracy reached 99 %"
                                                   if h["key_set_final"] is False else "") + ")")
         if h["circuit_formed_epoch"] is not None else (h["circuit_reason"] or "—")),
        ("excluded loss back above chance", h["excluded_loss_rise_epoch"]),
        ("test accuracy ≥ 99 %", (f"by {h['test_acc_99_epoch']} (its first evaluation: an upper bound)"
                                 if h["test_acc_99_upper_bound"] else h["test_acc_99_epoch"])
         if h["test_acc_99_epoch"] is not None else "never"),
        ("lead time (epochs)", lead),
        (f"neurons explained by one {h['key_kind']}", f"{h['neurons_explained_by_one_freq']} of {h['neurons_total']} "
                                                      f"({h['neurons_explained_fraction']:.1%})"),
        (f"logit variance explained by {fit_terms or 'key terms'}, key {noun}",
         f"{h['logit_fve_key_freqs']:.1%}" if h["logit_fve_key_freqs"] is not None else
         ("— (undefined: no group structure)" if h["structure"] is None else "—")),
        ("logit variance that depends on (a, b) only through the label coordinate s",
         f"{h['logit_fve_label_coordinate']:.1%}" if h["logit_fve_label_coordinate"] is not None else "—"),
        ("final train / test loss", f"{_fmt(h['final_train_loss'])} / {_fmt(h['final_test_loss'])}"),
        ("final test accuracy", f"{h['final_test_acc']:.2%}" if h["final_test_acc"] is not None else "—"),
    ]
    ob = h["outside_block"]
    if ob is not None:
        numbers.append(("pairs outside the group structure (a = 0 or b = 0): train / test accuracy",
                        f"{_pct(ob['train']['acc'])} / {_pct(ob['test']['acc'])} "
                        f"({ob['train']['n']} / {ob['test']['n']} pairs; loss {_fmt(ob['all']['loss'])})"))
    if h["neurons_fve_key"] is not None:
        numbers.append((f"neuron variance explained by the key {noun} (mean over neurons)",
                        f"{h['neurons_fve_key']:.1%}"))
    numbers += [("note", note) for note in h["notes"]]
    numbers += [(name.replace("_", " "), EXTRA_TEXT[name](v, analysis) if name in EXTRA_TEXT else _plain_value(v))
                for name, v in analysis.extras.items() if name in h["extras"] or name in EXTRA_TEXT]
    phase_rows = "".join(
        f"<tr><th>{html.escape(b['phase'].replace('_', ' '))} ends</th>"
        f"<td>{'ours' if b['definition'] == 'ours' else 'paper (§5.2)'}</td>"
        f"<td><code>{html.escape(b['name'])}</code></td><td class='num'>{html.escape(_fmt(b['end']))}</td>"
        f"<td class='rule'>{html.escape(b['rule'] if b['end'] is not None else 'not found: ' + b['reason'])}</td></tr>"
        for b in sorted(h["phases"], key=lambda b: (["memorization", "circuit_formation", "cleanup"].index(b["phase"]),
                                                    b["definition"] != "ours")))
    phases_table = ("<table><tr><th>boundary</th><th>definition</th><th>name</th><th>epoch</th><th>rule</th></tr>"
                    + phase_rows + "</table>")
    rules = [("circuit formed", h["circuit_rule"]), ("excluded loss back above chance", h["excluded_loss_rule"])]
    algo = analysis.extras.get("algorithm")
    if isinstance(algo, dict) and algo.get("rule"):
        rules.append(("algorithm (clock / pizza)", algo["rule"]))
    cfg_rows = []
    for sec, fields in c.to_dict().items():
        cfg_rows += [(f"{sec}.{k}", _config_value(v)) for k, v in fields.items()]
    info = run.info
    cfg_rows += [("device", f"{info['device'].get('type')} ({info['device'].get('name')})"),
                 ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())),
                 ("checkpoints", f"{h['n_checkpoints']} ({h['n_checkpoints_analysed']} analysed)")]

    parts = [f"<p class='headline'>{headline}</p>",
             "<h2>Headline numbers</h2>", _table(numbers),
             "<h2>Phases</h2>",
             "<p>Each boundary is dated twice: by our rules and by the paper's §5.2 descriptions (operationalised). "
             "Within a definition the dates are ordered; the two definitions date different events and are not "
             "ordered with respect to each other.</p>", phases_table,
             "<h2>Rules</h2>", "<div class='rule'>", _table(rules), "</div>"]
    parts += figures_html(report_figures(analysis) if figures is None else figures)
    parts += ["<h2>Configuration</h2>", _table(cfg_rows)]
    return html_page(title, str(run.path), parts)


def figures_html(figures: list[tuple[str, str, Any]]) -> list[str]:
    """``(title, caption, go.Figure)`` triples as page sections (plotly.js is on the page once)."""
    parts: list[str] = []
    for i, (name, caption, fig) in enumerate(figures):
        if fig.layout.width is not None and fig.layout.width > P.COLUMN_WIDTH:
            fig = go.Figure(fig)  # wider than the column (a figure registered elsewhere): fit it, not the page
            fig.layout.width = None
        parts += [f"<h2>{html.escape(name)}</h2>", f"<p>{html.escape(caption)}</p>",
                  "<div class='figure'>",
                  fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}",
                              config={"displaylogo": False, "responsive": True}),
                  "</div>"]
    return parts


def html_page(title: str, source: str, body: list[str]) -> str:
    """A self-contained page: the report scaffolding (style, plotly.js embedded once, script-error
    counter, title and provenance line) around ``body`` (HTML fragments), shared by every report."""
    import plotly
    from plotly.offline import get_plotlyjs

    from .. import __version__

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style>",
             f"<script type='text/javascript'>/* plotly.js {plotly.__version__} */{get_plotlyjs()}</script>",
             "</head><body data-js-errors='0'>", _ERROR_HOOK, "<main>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p class='sub'>{html.escape(source)} · generated {time.strftime('%Y-%m-%d %H:%M')} by grokinterp "
             f"{__version__}</p>", *body, "</main></body></html>"]
    return "\n".join(parts)


def table_html(rows: list[tuple[str, Any]]) -> str:
    """Two-column ``(name, value)`` rows as the reports' HTML table."""
    return _table(rows)


def write_report(run_or_path, out: str | os.PathLike | None = None, *, max_checkpoints: int | None = 400,
                 key_freqs=None, return_headline: bool = False):
    """Analyse a run and write its report atomically; returns the path written.

    Args:
        run_or_path: a :class:`~grokinterp.store.run.Run` or its directory.
        out: the HTML file (default ``RUN/report.html``).
        max_checkpoints: analyse at most this many checkpoints (evenly spread).
        key_freqs: fix the key frequencies (key irreps: irrep indices; default: chosen at the first checkpoint at or
            after test accuracy reached 99 %, else the last: :func:`~grokinterp.analysis.keyfreqs.key_checkpoint`).
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
