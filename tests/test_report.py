"""Figures, the HTML report (rendered in headless Chromium), and the `report` command's errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys

import plotly.graph_objects as go
import pytest
from _browser import chromium, inspect_page, overlaps, text_problems, visible_text
from _helpers import cli as _cli

from grokinterp.analysis.fourier import fourier_basis
from grokinterp.analysis.summary import analyze_run, select_checkpoints
from grokinterp.errors import AnalysisError, RunError
from grokinterp.viz import plotting as P
from grokinterp.viz.report import render_report, write_report

PY = sys.executable


@pytest.fixture(scope="module")
def analysis(tiny_run):
    return analyze_run(tiny_run)


def test_analysis_headline_is_consistent(analysis, tiny_run):
    h = analysis.headline()
    json.dumps(h)  # JSON-ready
    assert h["n_key_frequencies"] == len(h["key_frequencies"]) >= 1
    # the same epoch `grokinterp info` prints (from the training metrics, not the thinned checkpoints)
    assert h["test_acc_99_epoch"] == tiny_run.summary()["test_acc_99_epoch"] is not None
    assert h["memorization_end"] is not None and h["memorization_end"] <= h["test_acc_99_epoch"]
    assert 0 < h["neurons_explained_fraction"] <= 1
    assert h["ablation_loss"]["none"]["train"] < 0.1


def test_select_checkpoints_keeps_ends_and_bounds_count():
    import numpy as np

    ep = np.arange(0, 10_000, 7)
    sel = select_checkpoints(ep, 400)
    assert len(sel) <= 400 and sel[0] == ep[0] and sel[-1] == ep[-1] and np.all(np.diff(sel) > 0)
    assert np.array_equal(select_checkpoints(ep[:10], 400), ep[:10])


def test_figures_draw_what_they_are_given(analysis, tiny_run):
    B = fourier_basis(tiny_run.p)
    figs = {
        "loss": P.loss_curves(tiny_run.metrics, analysis.phases),
        "progress": P.progress_figure(analysis.measures, analysis.phases, analysis.circuit),
        "bars": P.fourier_norms_bars({"W_E": analysis.embed_norms, "W_L": analysis.W_L_norms}, B.labels,
                                     key_freqs=analysis.key_freqs, component_freqs=B.freqs),
        "heat": P.fourier_norms_heatmap(analysis.embed_norms_over_time, analysis.epochs, key_freqs=analysis.key_freqs),
        "neurons": P.neuron_activations(analysis.acts, [0, 5]),
        "fve": P.neuron_fve_heatmap(analysis.neurons),
        "clusters": P.cluster_sizes(analysis.neurons),
        "attn": P.attention_to_a(analysis.pattern),
        "logits": P.logit_fourier_norms(analysis.logit_norms_2d, B.labels),
        "abl": P.ablation_bars(analysis.ablations),
    }
    for name, fig in figs.items():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1, name
    # the bars carry the numbers they were given on a numeric frequency axis (cos k and sin k side
    # by side at x = k, hover names the component), key frequencies coloured
    cos_bar, sin_bar = figs["bars"].data[0], figs["bars"].data[1]
    k = analysis.key_freqs[0]
    assert list(cos_bar.customdata) == [lab for lab in B.labels if not lab.startswith("sin")]
    assert list(sin_bar.x) == list(range(1, B.n_freq + 1))
    i = list(cos_bar.customdata).index(f"cos {k}")
    assert cos_bar.x[i] == k and cos_bar.y[i] == pytest.approx(float(analysis.embed_norms[B.index(f"cos {k}")]))
    assert sin_bar.y[k - 1] == pytest.approx(float(analysis.embed_norms[B.index(f"sin {k}")]))
    assert cos_bar.marker.color[i] != cos_bar.marker.color[0]
    # one heatmap per neuron, one per head; the heatmap rows are the checkpoints
    assert len([d for d in figs["neurons"].data if d.type == "heatmap"]) == 2
    assert len([d for d in figs["attn"].data if d.type == "heatmap"]) == tiny_run.config.model.n_heads
    assert figs["heat"].data[0].z.shape == (len(analysis.epochs), B.n_freq)
    # phase bands are drawn as shapes, and named (with their epochs) in the legend, not on the band
    intervals = analysis.phases.intervals()
    assert len(figs["loss"].layout.shapes) == len(intervals) and not figs["loss"].layout.annotations
    legend = [d.name for d in figs["loss"].data if d.showlegend is not False]
    for name, start, end in intervals:
        assert f"{P.PHASE_NAMES[name]} {start}–{end}" in legend
    # every panel of the progress figure has a y-axis title; excluded loss has its own linear axis
    prog = figs["progress"]
    n_panels = len([a for a in prog.layout if a.startswith("yaxis")])
    assert n_panels == 5 and all(prog.layout[f"yaxis{i if i > 1 else ''}"].title.text for i in range(1, 6))
    excl = next(d for d in prog.data if d.name == "excluded loss")
    assert excl.yaxis == "y2" and prog.layout.yaxis2.type != "log" and prog.layout.yaxis.type == "log"
    # the logit spectrum labels every component (cos and sin rows) at this small p
    heat = figs["logits"]
    assert list(heat.layout.yaxis.ticktext) == list(B.labels) == list(heat.layout.xaxis.ticktext)


def test_large_p_spectrum_ticks_stay_legible():
    """At p = 113 the logit spectrum gets one tick per frequency, centred on its cos and sin rows,
    key frequencies always (bold); the Fourier bars use a numeric axis."""
    import numpy as np

    B = fourier_basis(113)
    fig = P.logit_fourier_norms(np.random.default_rng(0).random((113, 113)), B.labels, key_freqs=[14, 35, 41, 42, 52])
    vals, text = fig.layout.yaxis.tickvals, fig.layout.yaxis.ticktext
    for k in (14, 35, 52):
        j = text.index(f"<b>{k}</b>")
        assert vals[j] == (B.index(f"cos {k}") + B.index(f"sin {k}")) / 2
    # neighbouring key frequencies share one tick rather than overprint
    j = text.index("<b>41/42</b>")
    assert vals[j] == (B.index("cos 41") + B.index("sin 42")) / 2
    assert min(np.diff(vals)) * 560 / 113 >= 14 and len(text) < 60 and list(vals) == sorted(vals)
    bars = P.fourier_norms_bars({"W_E": np.ones(113)}, B.labels, key_freqs=[14])
    assert bars.layout.xaxis.type in (None, "linear") and max(bars.data[0].x) == 56


def test_figures_reject_bad_input(analysis):
    with pytest.raises(AnalysisError, match="out of range"):
        P.neuron_activations(analysis.acts, [10_000])
    with pytest.raises(AnalysisError, match="empty"):
        P.neuron_activations(analysis.acts, [])
    with pytest.raises(AnalysisError, match="missing"):
        P.progress_figure(analysis.measures.drop(columns=["restricted_loss"]))
    with pytest.raises(AnalysisError, match="labels"):
        P.fourier_norms_bars({"W_E": analysis.embed_norms[:-1]}, fourier_basis(31).labels)


def test_report_is_self_contained(analysis, tmp_path):
    text = render_report(analysis)
    assert not re.search(r"<script[^>]+src=", text), "no external scripts"
    assert not re.search(r"<link[^>]+href=[\"']?https?:", text), "no external stylesheets"
    assert text.count("plotly-graph-div") >= 9 or text.count("class=\"plotly-graph-div\"") >= 9
    h = analysis.headline()
    assert ", ".join(map(str, h["key_frequencies"])) in text
    assert f"<b>{h['test_acc_99_epoch']}</b>" in text


def _browser() -> str:
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    return browser


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    """What a reader meets: every figure drawn, nothing logged to the console (plotly's warnings
    included), no label overprinting another, nothing wider than the 1,180 px column, and no raw
    JSON, escapes, null / None or 'frequencys' in the text."""
    browser = _browser()
    out = write_report(tiny_run, tmp_path / "r.html")
    page = inspect_page(browser, out, tmp_path)
    dom = page.process.stdout
    assert "</html>" in dom, page.process.stderr[-2000:]
    assert page.js_errors == 0, "a script failed while rendering the report"
    n_divs = len(re.findall(r'class="[^"]*js-plotly-plot', dom))
    n_svg = len(re.findall(r'class="main-svg"', dom))
    assert n_divs >= 9, f"only {n_divs} plots were drawn"
    assert n_svg >= n_divs, "every plot draws SVG"
    assert "Uncaught" not in page.process.stderr
    assert page.n_plots == n_divs and page.problems() == [], page.problems()
    # the rows that used to show JSON or null say it in words
    assert "algorithm (clock / pizza)" in page.text  # the rule, under Rules
    assert re.search(r"interventions none \(the paper's recipe", page.text)
    assert re.search(r"early warning none: the run recorded no live measures", page.text)


def test_page_check_is_not_vacuous(tmp_path):
    """The browser check catches what it looks for: console warnings, a figure wider than the column,
    raw values in the text."""
    browser = _browser()
    wide = go.Figure(go.Bar(x=[1, 2], y=[1, 2], marker=dict(color=["red", "blue"], pattern=dict(shape="/"))))
    wide.update_layout(width=1500)
    div = wide.to_html(full_html=False, include_plotlyjs=False, div_id="f0")
    page = inspect_page(browser, f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{_plotlyjs()}</script>"
                                 f"</head><body><main style='max-width:1180px'><p>key frequencys: null \\u2265</p>"
                                 f"{div}</main></body></html>", tmp_path)
    found = "\n".join(page.problems())
    for what in ("console: WARN: Invalid color specifier", "too wide: f0", "px wide in a 1280 px window",
                 "a literal escape", "a missing value shown raw", "a bad plural"):
        assert what in found, (what, found)


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def test_wide_figures_fit_the_column(tiny_run, tmp_path):
    """Figures with many panels (the embedding circles of five key frequencies, a sweep's six seed
    distributions, eight attention heads, a three-facet phase diagram) wrap into rows and take the
    column's width: the page is never wider than the window, at 1,280 px or at 900 px."""
    import numpy as np
    import pandas as pd

    from grokinterp.analysis.algorithms import embedding_circles
    from grokinterp.viz import sweep_plots as SP
    from grokinterp.viz.report import figures_html, html_page

    browser = _browser()
    rng = np.random.default_rng(0)
    circles = embedding_circles(tiny_run.params(-1)["embed.W_E"], [1, 2, 7, 11, 13], tiny_run.p)
    cols = ["test_acc_99_epoch", "circuit_formed_epoch", "lead_time_epochs", "neurons_explained_fraction",
            "logit_fve_key_freqs", "n_key_frequencies"]
    table = pd.DataFrame({c: rng.random(8) for c in cols} | {"name": [f"r{i}" for i in range(8)]})
    summary = pd.DataFrame([{"frac_train": f, "weight_decay": w, "operation": o, "m": 100.0 * (1 + f + w)}
                            for f in (0.3, 0.6) for w in (0.0, 1.0) for o in ("add", "sub", "mul")])
    figs = [("circles", "", P.embedding_circles(circles, label="clock")),
            ("seeds", "", SP.seed_distributions(table, cols)),
            ("heads", "", P.attention_to_a(rng.random((7, 7, 8, 3)))),
            ("phases", "", SP.phase_diagram(summary, facet="operation", value="m"))]
    for fig in (f for _, _, f in figs):
        assert fig.layout.width is None or fig.layout.width <= P.COLUMN_WIDTH
    page = html_page("wide figures", "test", figures_html(figs))
    for width in (1280, 900):
        check = inspect_page(browser, page, tmp_path, width=width)
        assert check.n_plots == 4 and check.problems() == [], (width, check.problems())


def test_embedding_circle_labels_do_not_pile_up(tiny_run):
    """Residue labels are thinned so that no two sit closer than the gap; every residue keeps its hover;
    every panel has axis titles."""
    import numpy as np

    from grokinterp.analysis.algorithms import embedding_circles

    circles = embedding_circles(tiny_run.params(-1)["embed.W_E"], [1, 7, 11], tiny_run.p)
    fig = P.embedding_circles(circles)
    for c, trace in zip(circles, fig.data):
        xy = np.asarray(c.coords)
        shown = np.array([bool(t) for t in trace.text])
        assert shown[0] and list(trace.customdata) == list(range(tiny_run.p))
        scale = np.median(np.linalg.norm(xy - xy.mean(0), axis=1))
        pts = xy[shown]
        gaps = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(len(pts)) * 1e9
        assert gaps.min() >= 0.28 * scale
    for j in range(1, len(circles) + 1):
        suffix = "" if j == 1 else str(j)
        assert fig.layout[f"xaxis{suffix}"].title.text and fig.layout[f"yaxis{suffix}"].title.text


def test_non_key_neuron_clusters_are_marked_and_explained(tiny_run, analysis):
    """A neuron cluster at a frequency the key rule did not choose is grey, named 'not a key frequency'
    in the legend, and the caption says why."""
    from grokinterp.viz.report import report_figures

    key, other = analysis.key_freqs[0], analysis.key_freqs[1]
    fixed = analyze_run(tiny_run, key_freqs=[key], max_checkpoints=10)
    assert int(other) in {int(f) for f in fixed.neurons.cluster_sizes["freq"]}
    figs = {title: (caption, fig) for title, caption, fig in report_figures(fixed)}
    caption, fig = figs["Cluster sizes"]
    names = {t.name: list(t.x) for t in fig.data}
    assert names["key frequency"] == [str(key)] and str(other) in names["not a key frequency"]
    assert "grey" in caption and "did not choose" in caption
    caption, fig = figs["Neuron activations"]
    assert any(f"freq {other}, not key" in a.text for a in fig.layout.annotations)
    assert "did not choose" in caption


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Short tiny runs of a · b mod 31 and of S4: no clock-vs-pizza, no live measures."""
    import grokinterp as g

    root = tmp_path_factory.mktemp("small_runs")
    return {op: g.train(g.make_config("tiny", operation=op, epochs=150, every=50), root / op, progress=False)
            for op in ("mul", "S4")}


@pytest.mark.parametrize("op", ["mul", "S4"])
def test_report_says_why_a_value_is_missing(small_runs, op):
    """mul and S4 reports: no null, no raw JSON, no escapes, no 'frequencys'; the algorithm row says
    why clock vs pizza does not apply."""
    analysis = analyze_run(small_runs[op], max_checkpoints=10)
    text = visible_text(render_report(analysis))
    assert text_problems(text) == [], text_problems(text)
    assert re.search(r"algorithm not applicable: clock vs pizza \(Zhong et al. 2023\) is a question about a \+ b "
                     r"mod p; this task is ", text)
    assert "interventions none (the paper's recipe" in text


@pytest.mark.slow
@pytest.mark.parametrize("op", ["mul", "S4"])
def test_group_and_mul_reports_render_cleanly(small_runs, op, tmp_path):
    browser = _browser()
    out = write_report(small_runs[op], tmp_path / "r.html", max_checkpoints=10)
    page = inspect_page(browser, out, tmp_path)
    assert page.n_plots >= 8 and page.problems() == [], page.problems()


def _page(figs) -> str:
    from plotly.offline import get_plotlyjs

    divs = "".join(f.to_html(full_html=False, include_plotlyjs=False, div_id=f"f{i}") for i, f in enumerate(figs))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script></head>"
            f"<body>{divs}</body></html>")


def test_overlap_check_catches_overprinted_labels(tmp_path):
    """The check is not vacuous: two annotations at one spot, and the old in-band phase labels."""
    browser = _browser()
    fig = go.Figure(go.Scatter(x=[0, 10], y=[0, 1]))
    fig.add_annotation(x=5, y=0.5, text="memorization", showarrow=False)
    fig.add_annotation(x=5.2, y=0.5, text="circuit formation", showarrow=False)
    old_style = go.Figure(go.Scatter(x=[0, 3000], y=[0, 1]))
    for x0, x1, name in [(0, 100, "memorization"), (100, 125, "circuit formation"), (125, 2000, "cleanup")]:
        old_style.add_vrect(x0=x0, x1=x1, annotation_text=name, annotation_position="top left")
    n, found, _ = overlaps(browser, _page([fig, old_style]), tmp_path)
    assert n == 2 and any("f0" in f for f in found) and any("f1" in f for f in found), found


def test_labels_stay_readable_at_any_band_width(analysis, tiny_run, tmp_path):
    """Phases one epoch wide, markers one epoch apart, p = 113 spectra with neighbouring key
    frequencies: nothing overprints."""
    import numpy as np

    browser = _browser()
    ph, e0 = analysis.phases, analysis.phases.first_epoch
    narrow = dataclasses.replace(
        ph, **{f: dataclasses.replace(getattr(ph, f), end=e0 + i, reason=None)
               for f, i in [("memorization", 1), ("circuit_formation", 2), ("cleanup", 3),
                            ("memorization_paper", 1), ("circuit_formation_paper", 2), ("cleanup_paper", 3)]})
    circuit = dataclasses.replace(analysis.circuit, epoch=e0 + 2, test_acc_99_epoch=e0 + 3)
    B = fourier_basis(113)
    rng = np.random.default_rng(0)
    keys = [14, 35, 41, 42, 52]
    figs = [P.loss_curves(tiny_run.metrics, narrow), P.progress_figure(analysis.measures, narrow, circuit),
            P.fourier_norms_heatmap(analysis.embed_norms_over_time, analysis.epochs, key_freqs=analysis.key_freqs,
                                    phases=narrow),
            P.logit_fourier_norms(rng.random((113, 113)), B.labels, key_freqs=keys),
            P.fourier_norms_bars({"W_E": rng.random(113), "W_L": rng.random(113)}, B.labels, key_freqs=keys)]
    n, found, _ = overlaps(browser, _page(figs), tmp_path)
    assert n == len(figs) and found == [], found


def test_report_cli_bad_inputs(tmp_path, tiny_run):
    res = _cli("report", str(tmp_path / "missing"))
    assert res.returncode == 2 and "no such run directory" in res.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    res = _cli("report", str(plain))
    assert res.returncode == 2 and "not a grokinterp run" in res.stderr
    # a run with no checkpoints
    empty = tmp_path / "empty"
    shutil.copytree(tiny_run.path, empty)
    shutil.rmtree(empty / "shards")
    res = _cli("report", str(empty), "--out", str(tmp_path / "e.html"))
    assert res.returncode == 2 and "no readable checkpoints" in res.stderr
    assert not (tmp_path / "e.html").exists()
    # an output directory that does not exist / is not writable: nothing left behind
    res = _cli("report", str(tiny_run.path), "--out", str(tmp_path / "nodir" / "r.html"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert not (tmp_path / "nodir").exists()
    # key frequencies that are not integers, or not frequencies of this p
    res = _cli("report", str(tiny_run.path), "--key-freqs", "1,x", "--out", str(tmp_path / "k.html"))
    assert res.returncode == 2 and "comma-separated integers" in res.stderr and "'1,x'" in res.stderr
    res = _cli("report", str(tiny_run.path), "--key-freqs", "99", "--out", str(tmp_path / "k.html"))
    assert res.returncode == 2 and "frequency 99" in res.stderr
    assert not (tmp_path / "k.html").exists()


def test_report_write_failure_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    from grokinterp.store import layout as _io

    def boom(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_io, "write_atomic", boom)
    with pytest.raises(RunError, match="cannot write the report"):
        write_report(tiny_run, tmp_path / "r.html", max_checkpoints=10)
    assert os.listdir(tmp_path) == []


def test_report_beside_the_run_keeps_it_verifiable(tiny_run, tmp_path):
    from grokinterp.store.integrity import verify

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    path = write_report(run_dir, max_checkpoints=10)
    assert path == run_dir / "report.html" and path.stat().st_size > 0
    report = verify(run_dir)
    assert report.ok, report
