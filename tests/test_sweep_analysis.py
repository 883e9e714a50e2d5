"""Sweep analysis: one row per run, medians and spreads over seeds, figures, the sweep report."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from _browser import chromium, inspect_page
from _helpers import cli

import grokinterp as g
from grokinterp.analysis.curves import curve_pattern
from grokinterp.sweeps import table as T
from grokinterp.viz import sweep_plots as SP
from grokinterp.viz.sweep_report import write_sweep_report


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """8 stacked tiny runs at p = 23: training fraction × weight decay × 2 seeds."""
    doc = {"preset": "tiny", "fixed": {"p": 23, "epochs": 300, "every": 20, "log_early": 0},
           "grid": {"frac_train": [0.4, 0.8], "weight_decay": [0.0, 2.0]}, "seeds": [0, 1]}
    return g.sweep(doc, tmp_path_factory.mktemp("sweeps") / "small", progress=False)


def test_table_has_one_row_per_run_with_its_numbers(small_sweep):
    table = T.sweep_table(small_sweep, max_checkpoints=20)
    assert list(table["name"]) == [p["name"] for p in small_sweep.points]
    runs = small_sweep.runs()
    for _, row in table.iterrows():
        run = runs[row["name"]]
        s = run.summary()
        assert row["frac_train"] == run.config.task.frac_train and row["seed"] == run.config.model.init_seed
        assert row["test_acc_99_epoch"] == s["test_acc_99_epoch"] or (pd.isna(row["test_acc_99_epoch"])
                                                                      and s["test_acc_99_epoch"] is None)
        assert row["grokked"] == (s["test_acc_99_epoch"] is not None)
        assert row["regime"] == T.regime(s["train_acc_99_epoch"], s["test_acc_99_epoch"])
        # the curve pattern is the rule applied to the run's evaluations; its grokking is the regime's
        assert row["curve_pattern"] == curve_pattern(run.evals).pattern
        assert (row["curve_pattern"] == "grokking") == (row["regime"] == "grokking")
        assert (row["curve_pattern"] == "not_generalized") <= (not row["grokked"])
        assert math.isclose(row["final_test_loss"], s["final_test_loss"])
        h = g.analyze_run(run, max_checkpoints=20).headline()
        assert row["n_key_frequencies"] == h["n_key_frequencies"]
        assert row["key_frequencies"] == ",".join(map(str, h["key_frequencies"]))
        assert row["circuit_formed_epoch"] == h["circuit_formed_epoch"] or (
            pd.isna(row["circuit_formed_epoch"]) and h["circuit_formed_epoch"] is None)
        assert math.isclose(row["neurons_explained_fraction"], h["neurons_explained_fraction"])
        # the key set's epoch and whether it is final (test accuracy reached 99 %) stand beside its dates
        assert row["key_frequency_epoch"] == h["key_frequency_epoch"] and row["key_set_final"] == h["key_set_final"]
        assert row["key_set_final"] == row["grokked"]
    assert table["grokked"].any()  # weight decay 2 at 80 % of the pairs generalises within 300 epochs


def test_analyses_are_cached_per_run_until_the_run_changes(small_sweep, monkeypatch):
    T.sweep_table(small_sweep, max_checkpoints=20)
    calls = []
    real = T.analyze_run
    monkeypatch.setattr(T, "analyze_run", lambda *a, **k: calls.append(1) or real(*a, **k))
    T.sweep_table(small_sweep, max_checkpoints=20)
    assert calls == []
    T.sweep_table(small_sweep, max_checkpoints=10)  # other settings: analysed again
    assert len(calls) == len(small_sweep.points)
    calls.clear()
    name = small_sweep.points[0]["name"]
    doc = (small_sweep.path / "analysis" / f"{name}.json")
    doc.write_text(doc.read_text().replace('"manifest_sha256": "', '"manifest_sha256": "0'))  # stale
    T.sweep_table(small_sweep, max_checkpoints=10)
    assert len(calls) == 1
    calls.clear()
    doc.write_text(doc.read_text().replace(f'"version": {T._ANALYSIS_VERSION}', '"version": 2'))  # an older rule's row
    T.sweep_table(small_sweep, max_checkpoints=10)
    assert len(calls) == 1


def test_regimes_and_censored_medians_follow_their_rules():
    assert T.regime(None, None) == "confusion" and T.regime(50, None) == "memorization"
    assert T.regime(50, 100) == "comprehension" and T.regime(50, 101) == "grokking"
    assert T.censored_median([100, 200, None]) == 200
    assert math.isnan(T.censored_median([100, None])) and math.isnan(T.censored_median([None, None, 5]))
    assert T.censored_median([float("nan"), 3, 4]) == 4 and math.isnan(T.censored_median([]))


def test_seed_summary_medians_and_spreads_equal_numpy_per_group():
    rng = np.random.default_rng(0)
    rows = []
    for wd in (0.1, 1.0):
        for f in (0.3, 0.6):
            for s in range(5):
                ep = None if (wd == 0.1 and s < 3) else float(rng.integers(100, 1000))
                rows.append({"name": f"{wd}-{f}-{s}", "weight_decay": wd, "frac_train": f, "seed": s,
                             "split_seed": s, "init_seed": s, "p": 31, "test_acc_99_epoch": ep,
                             "train_acc_99_epoch": 50, "grokked": ep is not None,
                             "regime": T.regime(50, ep), "neurons_explained_fraction": rng.random(),
                             "curve_pattern": ("double_descent", "grokking")[s % 2] if wd == 1.0 else
                             ("not_generalized" if ep is None else "neither")})
    table = pd.DataFrame(rows)
    assert T.varying_columns(table) == ["weight_decay", "frac_train"]
    summ = T.seed_summary(table)
    assert len(summ) == 4 and set(summ.columns) >= {"weight_decay", "frac_train", "n_runs", "grokked_fraction"}
    for _, r in summ.iterrows():
        grp = table[(table.weight_decay == r.weight_decay) & (table.frac_train == r.frac_train)]
        v = grp["neurons_explained_fraction"].to_numpy()
        assert math.isclose(r["neurons_explained_fraction_median"], np.median(v))
        assert math.isclose(r["neurons_explained_fraction_q25"], np.percentile(v, 25))
        assert r["n_runs"] == 5 and r["n_grokked"] == grp["grokked"].sum()
        eps = grp["test_acc_99_epoch"].dropna().to_numpy()
        if r.weight_decay == 0.1:  # 3 of 5 never generalised: the censored median is undefined
            assert math.isnan(r["test_acc_99_epoch_censored_median"]) and r["regime"] == "memorization"
            assert r["curve_pattern"] == "not_generalized"  # 3 of 5
            assert math.isclose(r["test_acc_99_epoch_median"], np.median(eps))
        else:
            assert math.isclose(r["test_acc_99_epoch_censored_median"], np.median(eps))
            assert r["curve_pattern"] == "double_descent"  # seeds 0, 2, 4 of 5


def test_phase_diagram_colours_medians_and_greys_cells_that_did_not_generalise():
    summary = pd.DataFrame([
        {"operation": op, "frac_train": f, "weight_decay": wd, "n_runs": 2, "n_grokked": 0 if f == 0.2 else 2,
         "test_acc_99_epoch_censored_median": (np.nan if f == 0.2 else 1000 * wd * f), "regime": "grokking"}
        for op in ("add", "div") for f in (0.2, 0.5) for wd in (1.0, 3.0)])
    fig = SP.phase_diagram(summary, facet="operation", budget=4000, regime=summary)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 4  # per panel: the colour scale and the grey cells
    z = np.array(heat[0].z, dtype=float)  # rows weight decay (1, 3), columns fraction (0.2, 0.5)
    assert np.isnan(z[:, 0]).all() and np.allclose(z[:, 1], np.log10([500, 1500]))
    assert np.isfinite(np.array(heat[1].z, dtype=float)[:, 0]).all()
    texts = [t for t in fig.data if t.type == "scatter"][0].text
    assert any("×" in s for s in texts) and any("<b>500</b>" in s for s in texts) and any("grok" in s for s in texts)


def test_other_sweep_figures():
    table = pd.DataFrame({"name": list("abcdef"), "frac_train": [0.3, 0.3, 0.5, 0.5, 0.7, 0.7],
                          "test_acc_99_epoch": [None, 900, 400, 600, 200, 300], "epochs": 1000,
                          "n_key_frequencies": [3, 4, 4, 5, 3, 4]})
    fig = SP.data_fraction_curves(table)
    med = [t for t in fig.data if t.mode == "lines+markers"][0]
    assert list(med.x) == [0.5, 0.7] and list(med.y) == [500, 250]  # 0.3: one of two never got there
    tri = [t for t in fig.data if t.marker.symbol == "triangle-up"][0]
    assert list(tri.y) == [1000]
    fig = SP.seed_distributions(table, ["n_key_frequencies"], references={"n_key_frequencies": (5, "paper")})
    assert list(fig.data[0].y) == [3, 4, 4, 5, 3, 4] and fig.layout.shapes[0].y0 == 5
    m = pd.DataFrame({"epoch": [0, 10, 20], "test_acc": [0.0, 0.5, 1.0]})
    assert len(SP.run_curves({"a": m, "b": m}).data) == 2


def test_sweep_report_renders_and_writes_tables(small_sweep, tmp_path):
    out, table, summary = write_sweep_report(small_sweep, tmp_path / "r.html", max_checkpoints=20,
                                             csv=tmp_path / "t.csv", return_table=True)
    text = out.read_text()
    assert "Phase diagram" in text and "Medians and spreads over seeds" in text and "Epochs to generalise vs" in text
    assert len(pd.read_csv(tmp_path / "t.csv")) == 8 and len(pd.read_csv(tmp_path / "summary.csv")) == 4
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine")
    page = inspect_page(browser, out, tmp_path)
    assert page.js_errors == 0, page.process.stderr[-2000:]
    assert len(re.findall(r'class="[^"]*js-plotly-plot', page.process.stdout)) >= 5
    # nothing in the console, nothing overprinted or wider than the column, no raw values in the text
    assert page.problems() == [], page.problems()


def test_sweep_report_cli(small_sweep, tmp_path):
    r = cli("sweep-report", str(small_sweep.path), "--no-progress", "--max-checkpoints", "20")
    assert r.returncode == 0, r.stderr
    assert "8 runs, 8 finished" in r.stdout and (small_sweep.path / "report.html").exists()
    r = cli("sweep-report", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such sweep directory" in r.stderr
    r = cli("sweep-report", str(small_sweep.path), "--max-checkpoints", "1")
    assert r.returncode == 2 and "--max-checkpoints" in r.stderr
