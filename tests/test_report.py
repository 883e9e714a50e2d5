"""Figures, the HTML report (rendered in headless Chromium), and the `report` command's errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import plotly.graph_objects as go
import pytest
from _helpers import chromium_dom
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
    # the bars carry the numbers they were given, key frequencies coloured
    bar = figs["bars"].data[0]
    assert list(bar.x) == list(B.labels)
    assert bar.y[B.index(f"cos {analysis.key_freqs[0]}")] == pytest.approx(
        float(analysis.embed_norms[B.index(f"cos {analysis.key_freqs[0]}")]))
    assert bar.marker.color[B.index(f"cos {analysis.key_freqs[0]}")] != bar.marker.color[0]
    # one heatmap per neuron, one per head; the heatmap rows are the checkpoints
    assert len(figs["neurons"].data) == 2 and len(figs["attn"].data) == tiny_run.config.model.n_heads
    assert figs["heat"].data[0].z.shape == (len(analysis.epochs), B.n_freq)
    # phase bands are drawn as shapes
    assert len(figs["loss"].layout.shapes) == len(analysis.phases.intervals())


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


def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    out = write_report(tiny_run, tmp_path / "r.html")
    dom, stderr = chromium_dom(out)
    if dom is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    assert "</html>" in dom, stderr[-2000:]
    errors = re.search(r'data-js-errors="(\d+)"', dom)
    assert errors and errors.group(1) == "0", "a script failed while rendering the report"
    n_divs = len(re.findall(r'class="[^"]*js-plotly-plot', dom))
    n_svg = len(re.findall(r'class="main-svg"', dom))
    assert n_divs >= 9, f"only {n_divs} plots were drawn"
    assert n_svg >= n_divs, "every plot draws SVG"
    assert "Uncaught" not in stderr


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
