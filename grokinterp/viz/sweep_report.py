"""A self-contained HTML report of a sweep: the spec, medians and spreads over seeds, and figures.

Built on the run report's page (:func:`grokinterp.viz.report.html_page`); the numbers come from
:func:`grokinterp.sweeps.table.sweep_table` / :func:`~grokinterp.sweeps.table.seed_summary`, the
figures from :mod:`grokinterp.viz.sweep_plots`. Which figures appear depends on what the sweep
varies: a phase diagram when it varies the training fraction and the weight decay, data-fraction
curves when it varies the training fraction, seed distributions (against the published values)
when it has several seeds per setting, and every run's test accuracy.

Example:
    >>> write_sweep_report("checkpoints/pd")        # doctest: +SKIP
    PosixPath('checkpoints/pd/report.html')
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import RunError
from ..store import layout
from ..store.run import load_run
from ..sweeps.driver import load_sweep
from ..sweeps.table import REGIMES, seed_summary, sweep_table, varying_columns
from . import sweep_plots as SP
from .report import figures_html, html_page, table_html

__all__ = ["write_sweep_report", "render_sweep_report", "sweep_figures", "PUBLISHED", "SWEEP_REPORT_NAME"]

SWEEP_REPORT_NAME = "report.html"

#: Published values the seed distributions are drawn against (``docs/paper_numbers.md``:
#: Nanda et al. 2023, a + b mod 113, 30 % of the pairs, 40k epochs).
PUBLISHED = {
    "n_key_frequencies": (5.0, "Nanda et al.: 5 (main seed; 3–4 on others)"),
    "neurons_explained_fraction": (0.846, "Nanda et al.: 84.6 %"),
    "logit_fve_key_freqs": (0.95, "Nanda et al.: ≈ 95 %"),
}
_LABELS = {
    "test_acc_99_epoch": "epochs to 99 % test accuracy", "circuit_formed_epoch": "circuit formed (epoch)",
    "lead_time_epochs": "lead over test accuracy (epochs)", "n_key_frequencies": "key frequencies",
    "neurons_explained_fraction": "neurons explained by one frequency", "logit_fve_key_freqs": "logit fit (FVE)",
    "memorization_end": "memorization ends", "circuit_formation_end": "circuit formation ends",
    "cleanup_end": "cleanup ends",
}


def _numeric(table: pd.DataFrame, c: str) -> bool:
    return c in table and pd.to_numeric(table[c], errors="coerce").notna().any()


def sweep_figures(table: pd.DataFrame, summary: pd.DataFrame, *, curves: dict[str, pd.DataFrame] | None = None,
                  budget: float | None = None) -> list[tuple[str, str, Any]]:
    """The sweep report's figures as ``(title, caption, go.Figure)``, chosen by what the sweep varies."""
    figs: list[tuple[str, str, Any]] = []
    vary = varying_columns(table)
    seeds = len(table) > len(summary)
    if "frac_train" in vary and "weight_decay" in vary:
        rest = [c for c in vary if c not in ("frac_train", "weight_decay")]
        facet = rest[0] if len(rest) == 1 else None
        if len(rest) <= 1:
            figs.append(("Phase diagram", "Median epochs to 99 % test accuracy over seeds for each training fraction "
                         "and weight decay (runs that never got there count as censored; grey × cells: half or more "
                         "never did within the budget; k/n: seeds that did). In italics, the most common regime of "
                         "the cell — " + "; ".join(f"{k}: {v}" for k, v in REGIMES.items()) + ".",
                         SP.phase_diagram(summary, "frac_train", "weight_decay", facet=facet, budget=budget,
                                          regime=summary if "regime" in summary else None)))
    if "frac_train" in vary:
        others = [c for c in vary if c != "frac_train"]
        figs.append(("Epochs to generalise vs training fraction",
                     "Every run a point, the median over seeds a line; triangles: runs that did not reach 99 % test "
                     "accuracy within the budget (Power et al. 2022, Fig. 1).",
                     SP.data_fraction_curves(table, "frac_train", color=others[0] if others else None, budget=budget)))
    if seeds:
        cols = [c for c in ("test_acc_99_epoch", "circuit_formed_epoch", "lead_time_epochs", "n_key_frequencies",
                            "neurons_explained_fraction", "logit_fve_key_freqs") if _numeric(table, c)]
        if cols:
            figs.append(("Distributions over seeds", "Each point a run; boxes: median and quartiles; dashed lines: the "
                         "published values (a + b mod 113, 30 % of the pairs, 40k epochs — other settings than most "
                         "sweeps, so read them as a scale, not a target).",
                         SP.seed_distributions(table, cols, references=PUBLISHED, labels=_LABELS)))
        phase_cols = [c for c in ("memorization_end", "circuit_formation_end", "cleanup_end") if _numeric(table, c)]
        if phase_cols:
            figs.append(("Phase ends over seeds", "When memorization, circuit formation and cleanup end, per run "
                         "(detected by the rules of grokinterp.analysis.phases).",
                         SP.seed_distributions(table, phase_cols, labels=_LABELS, title="Phase ends (epochs)")))
    if curves:
        figs.append(("Test accuracy of every run", "Test accuracy over training, one line per run.",
                     SP.run_curves(curves, "test_acc")))
        figs.append(("Test loss of every run", "Test loss over training (log axis), one line per run.",
                     SP.run_curves(curves, "test_loss", log_y=True)))
    return figs


def _frame_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return "—" if x != x else f"{x:.4g}"
        return "—" if x is None else str(x)

    df = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<div style='overflow-x:auto'><table><tr>{head}</tr>{body}</table></div>"


def render_sweep_report(sweep, table: pd.DataFrame, summary: pd.DataFrame,
                        figures: list[tuple[str, str, Any]] | None = None) -> str:
    """The report of a sweep as one HTML string (``figures``: :func:`sweep_figures` output, if built already)."""
    spec = sweep.spec
    vary = varying_columns(table)
    n, fin = len(table), int(table["finished"].fillna(False).astype(bool).sum())
    grok = int(table["grokked"].fillna(False).astype(bool).sum())
    title = f"grokinterp sweep — {spec.name or sweep.path.name}"
    headline = (f"<b>{n}</b> runs over {html.escape(' × '.join(sweep.axes) or 'no axes')}; <b>{fin}</b> finished; "
                f"<b>{grok}</b> reached 99 % test accuracy within their budget.")
    spec_rows = [("preset", spec.preset)]
    spec_rows += [(f"fixed {k}", json.dumps(v)) for k, v in spec.fixed.items()]
    spec_rows += [(f"grid {k}", json.dumps(v)) for k, v in spec.grid.items()]
    spec_rows += [(f"zip {k}", json.dumps(v)) for k, v in spec.zip.items()]
    if spec.seeds is not None:
        spec_rows.append(("seeds", json.dumps(list(spec.seeds))))
    spec_rows.append(("checkpoints", str(sweep.info.get("checkpoints", {}).get("note", ""))))
    keep = [c for c in vary if c in summary] + [c for c in (
        "n_runs", "n_grokked", "regime", "curve_pattern", "test_acc_99_epoch_censored_median", "test_acc_99_epoch_q25",
        "test_acc_99_epoch_q75", "circuit_formed_epoch_median", "lead_time_epochs_median", "n_key_frequencies_median",
        "neurons_explained_fraction_median", "logit_fve_key_freqs_median", "final_test_acc_median") if c in summary]
    runs_cols = ["name", *[c for c in vary if c in table], *[c for c in (
        "seed", "train_acc_99_epoch", "test_acc_99_epoch", "regime", "curve_pattern", "key_frequencies", "circuit_formed_epoch",
        "lead_time_epochs", "neurons_explained_fraction", "logit_fve_key_freqs", "final_test_acc") if c in table]]
    parts = [f"<p class='headline'>{headline}</p>", "<h2>Spec</h2>", table_html(spec_rows),
             "<h2>Medians and spreads over seeds</h2>",
             "<p>One row per setting (runs that differ only in their seeds); q25/q75: quartiles. Epochs to 99 % test "
             "accuracy: the median counting runs that never got there as censored (— when half or more never did).</p>",
             _frame_html(summary[keep])]
    parts += figures_html(sweep_figures(table, summary) if figures is None else figures)
    parts += ["<h2>Runs</h2>", _frame_html(table[[c for c in runs_cols if c in table]], max_rows=1000),
              "<h2>Regimes</h2>", "<div class='rule'>", table_html(list(REGIMES.items())), "</div>"]
    return html_page(title, str(sweep.path), parts)


def write_sweep_report(sweep_or_path, out: str | os.PathLike | None = None, *, analyse: bool = True,
                       max_checkpoints: int | None = 100, progress: bool = False, csv: str | os.PathLike | None = None,
                       return_table: bool = False):
    """Tabulate a sweep (analysing finished runs, cached) and write its report atomically.

    Args:
        sweep_or_path: a :class:`~grokinterp.sweeps.driver.Sweep` or its directory.
        out: the HTML file (default ``SWEEP/report.html``).
        analyse: include the run-study numbers (key frequencies, circuit date, neurons, logit fit).
        max_checkpoints: checkpoints each run study uses.
        progress: a progress bar over the runs analysed.
        csv: also write the per-run table there (default ``SWEEP/table.csv``; ``""`` for none) and the
            per-setting summary beside it (``summary.csv``).
        return_table: return ``(path, table, summary)``.

    Raises:
        RunError: not a sweep, or the output cannot be written (nothing is left behind).
    """
    sweep = sweep_or_path if hasattr(sweep_or_path, "points") else load_sweep(sweep_or_path)
    out = Path(out) if out is not None else sweep.path / SWEEP_REPORT_NAME
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise RunError(f"{out}: cannot write the report there (a directory, or its directory is missing or "
                       f"not writable)")
    table = sweep_table(sweep, analyse=analyse, max_checkpoints=max_checkpoints, progress=progress)
    summary = seed_summary(table)
    curves = {}
    for name, d, fin in zip(table["name"], table["run"], table["finished"]):
        if fin:
            try:
                curves[name] = load_run(d).evals
            except RunError:
                pass
    budget = float(pd.to_numeric(table["epochs"], errors="coerce").max()) if "epochs" in table else None
    text = render_sweep_report(sweep, table, summary, sweep_figures(table, summary, curves=curves, budget=budget))
    try:
        layout.write_atomic(out, text.encode())
        csv_path = sweep.path / "table.csv" if csv is None else (Path(csv) if csv else None)
        if csv_path is not None:
            layout.write_atomic(csv_path, table.to_csv(index=False).encode())
            layout.write_atomic(csv_path.with_name("summary.csv"), summary.to_csv(index=False).encode())
    except OSError as e:
        raise RunError(f"{out}: cannot write the report ({e.strerror or e})") from None
    return (out, table, summary) if return_table else out
