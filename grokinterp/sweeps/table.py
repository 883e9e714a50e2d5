"""A sweep as a table: one row per run, and medians and spreads over seeds.

:func:`sweep_table` gives one row per point: the varied values, every config field, what the
training metrics say (epochs to 99 % train / test accuracy, grokked or not, the regime, the curve
pattern of :func:`grokinterp.analysis.curves.curve_pattern`, final losses) and —
for finished runs, with ``analyse=True`` — the numbers of the run study
(:func:`grokinterp.analysis.summary.analyze_run`): key frequencies, phase ends, when the circuit
formed and its lead over test accuracy, the fraction of neurons explained by one frequency, the
logit fit. Analyses are cached per run in ``SWEEP/analysis/<name>.json``, keyed by the run's
manifest, so a table is cheap to rebuild.

:func:`seed_summary` groups the rows by everything that varies except the seeds and gives, per
group, the median, quartiles, min and max of each number, how many runs generalised, and the
median epochs to generalise with runs that did not counted as censored (never within budget).

Example:
    >>> sw = load_sweep("checkpoints/wd")                                  # doctest: +SKIP
    >>> table = sweep_table(sw)                                             # doctest: +SKIP
    >>> seed_summary(table)[["weight_decay", "test_acc_99_epoch_median", "grokked_fraction"]]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..analysis.curves import GROK_DELAY_RATIO, PATTERNS, curve_pattern
from ..analysis.summary import analyze_run
from ..config import SECTIONS, RunConfig
from ..errors import GrokinterpError, RunError
from ..store import layout
from ..store.run import load_run
from .spec import SEED_AXIS

__all__ = ["sweep_table", "seed_summary", "run_row", "ANALYSIS_COLUMNS", "METRIC_COLUMNS", "censored_median",
           "varying_columns", "regime", "REGIMES", "GROK_DELAY_RATIO", "PATTERNS"]

#: Columns from the training metrics (every run).
METRIC_COLUMNS = ("finished", "stopped", "stopped_epoch", "stopped_step", "epochs_trained", "train_acc_99_epoch",
                  "test_acc_99_epoch", "grokked", "regime", "curve_pattern",
                  "final_train_loss", "final_test_loss", "final_train_acc", "final_test_acc")
# GROK_DELAY_RATIO (how much later than the training set test accuracy must reach 99 % for a run to
# count as grokking) is defined once, in analysis.curves, and shared by ``regime`` and ``curve_pattern``.
#: The regimes of Liu et al. 2022's phase diagrams, by rules on the training metrics.
REGIMES = {
    "confusion": "train accuracy never reached 99 %",
    "memorization": "train accuracy reached 99 %, test accuracy did not (within the budget)",
    "grokking": f"test accuracy reached 99 % more than {GROK_DELAY_RATIO:g}x later than train accuracy",
    "comprehension": f"test accuracy reached 99 % at most {GROK_DELAY_RATIO:g}x later than train accuracy",
}
#: Columns from the run study (finished runs, ``analyse=True``).
ANALYSIS_COLUMNS = ("key_frequencies", "n_key_frequencies", "key_frequency_epoch", "key_set_final", "memorization_end", "circuit_formation_end",
                    "cleanup_end", "circuit_formed_epoch", "excluded_loss_rise_epoch", "lead_time_epochs",
                    "neurons_explained_fraction", "logit_fve_key_freqs")
_SEED_FIELDS = ("split_seed", "init_seed", SEED_AXIS)
_ANALYSIS_VERSION = 4  # bump when the cached rows' meaning changes (3: key set chosen at test accuracy 99 %;
#                        4: curve_pattern)
#: Where a sweep keeps its per-run analysis rows (derived files; safe to delete).
ANALYSIS_DIR = "analysis"


def _config_columns(config: RunConfig) -> dict[str, Any]:
    """Every config field under its bare name (``p`` once), lists as tuples."""
    out: dict[str, Any] = {}
    d = config.to_dict()
    for sec in SECTIONS:
        for k, v in d[sec].items():
            if k in out and out[k] != v:
                k = f"{sec}.{k}"
            out[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
    return out


def _cache_key(run_dir) -> str | None:
    try:
        return hashlib.sha256((run_dir / layout.MANIFEST_JSON).read_bytes()).hexdigest()
    except OSError:
        return None


def regime(train_acc_99_epoch: int | None, test_acc_99_epoch: int | None) -> str:
    """The run's regime (:data:`REGIMES`) from when train and test accuracy first reached 99 %."""
    if train_acc_99_epoch is None:
        return "confusion"
    if test_acc_99_epoch is None:
        return "memorization"
    return "grokking" if test_acc_99_epoch > GROK_DELAY_RATIO * max(train_acc_99_epoch, 1) else "comprehension"


def run_row(run, *, analyse: bool = True, max_checkpoints: int | None = 100) -> dict[str, Any]:
    """The numbers of one run: metrics columns, and (finished runs, ``analyse``) the run study's.

    Args:
        run: a :class:`~grokinterp.store.run.Run`.
        analyse: run :func:`~grokinterp.analysis.summary.analyze_run` on finished runs.
        max_checkpoints: checkpoints the study uses (evenly spread).
    """
    s = run.summary()
    stopped = s.get("stopped")  # the sweep's stop rule ended it: done, analysed as a finished run is
    done = bool(s.get("finished")) or stopped is not None
    row: dict[str, Any] = {
        "finished": bool(s.get("finished")),
        "stopped": stopped is not None,
        "stopped_epoch": stopped.get("epoch") if stopped else None,
        "stopped_step": stopped.get("step") if stopped else None,
        "epochs_trained": s.get("final_epoch") if s.get("finished") else s.get("epoch_reached"),
        "train_acc_99_epoch": s.get("train_acc_99_epoch"),
        "test_acc_99_epoch": s.get("test_acc_99_epoch"),
        "grokked": s.get("test_acc_99_epoch") is not None,
        "regime": regime(s.get("train_acc_99_epoch"), s.get("test_acc_99_epoch")) if done else None,
        "curve_pattern": curve_pattern(run.evals).pattern if done else None,
        **{k: s.get(k) for k in ("final_train_loss", "final_test_loss", "final_train_acc", "final_test_acc")},
    }
    if analyse and done:
        h = analyze_run(run, max_checkpoints=max_checkpoints).headline()
        row.update({k: h.get(k) for k in ANALYSIS_COLUMNS})
        row["key_frequencies"] = ",".join(map(str, h.get("key_frequencies") or []))
    return row


def sweep_table(sweep, *, analyse: bool = True, max_checkpoints: int | None = 100, progress: bool = False,
                cache: bool = True) -> pd.DataFrame:
    """One row per point of a sweep (see the module notes).

    Args:
        sweep: a :class:`~grokinterp.sweeps.driver.Sweep` (:func:`~grokinterp.sweeps.driver.load_sweep`).
        analyse: add the run-study columns (:data:`ANALYSIS_COLUMNS`) for finished runs.
        max_checkpoints: checkpoints each study uses.
        progress: a progress bar over the runs analysed.
        cache: read and write the per-run analysis cache in ``SWEEP/analysis/``.

    Returns:
        DataFrame: ``name``, the varied axes, every config field, :data:`METRIC_COLUMNS`,
        :data:`ANALYSIS_COLUMNS`, ``run`` (its directory); a point without a run yet has only its
        name, values and config, ``finished`` False.
    """
    if not (hasattr(sweep, "points") and hasattr(sweep, "path")):
        raise RunError(f"sweep: expected a Sweep (grokinterp.load_sweep(directory)), got {type(sweep).__name__}")
    cache_dir = sweep.path / ANALYSIS_DIR
    rows = []
    it = sweep.points
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="analysing runs", unit="run")
    for p in it:
        d = sweep.path / p["run"]
        config = RunConfig.from_dict(p["config"])
        row: dict[str, Any] = {"name": p["name"], **p.get("values", {}), **_config_columns(config)}
        if SEED_AXIS in row:
            row[SEED_AXIS] = int(row[SEED_AXIS])
        if not (d / layout.RUN_JSON).exists():
            rows.append({**row, "finished": False, "epochs_trained": 0, "grokked": False, "run": str(d)})
            continue
        key = _cache_key(d)
        cached = None
        if cache and key is not None and analyse:
            try:
                doc = layout.read_json(cache_dir / f"{p['name']}.json", "analysis cache")
                if (isinstance(doc, dict) and doc.get("manifest_sha256") == key
                        and doc.get("version") == _ANALYSIS_VERSION and doc.get("max_checkpoints") == max_checkpoints):
                    cached = doc["row"]
            except RunError:
                cached = None
        if cached is None:
            try:
                cached = run_row(load_run(d), analyse=analyse, max_checkpoints=max_checkpoints)
            except GrokinterpError as e:
                cached = {"finished": False, "error": str(e)}
            if cache and analyse and key is not None and (cached.get("finished") or cached.get("stopped")):
                try:
                    cache_dir.mkdir(exist_ok=True)
                    layout.write_json_atomic(cache_dir / f"{p['name']}.json",
                                             {"version": _ANALYSIS_VERSION, "manifest_sha256": key,
                                              "max_checkpoints": max_checkpoints, "row": cached})
                except OSError:
                    pass
        rows.append({**row, "stopped": False, **cached, "run": str(d)})  # rows cached before `stopped` existed
    df = pd.DataFrame(rows)
    for c in METRIC_COLUMNS + (ANALYSIS_COLUMNS if analyse else ()):
        if c not in df.columns:
            df[c] = None
    return df


def censored_median(values: Sequence[float | None]) -> float:
    """The median of epochs where ``None`` / NaN means "not within the budget" (larger than any
    value): NaN when half or more of the runs did not get there, else the ordinary median."""
    v = np.array([math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x) for x in values])
    if len(v) == 0:
        return math.nan
    m = float(np.median(v))
    return math.nan if math.isinf(m) else m


def varying_columns(table: pd.DataFrame, exclude: Sequence[str] = _SEED_FIELDS) -> list[str]:
    """Config and axis columns whose values differ between rows (the seeds excluded)."""
    skip = set(METRIC_COLUMNS) | set(ANALYSIS_COLUMNS) | {"name", "run", "error"} | set(exclude)
    out = []
    for c in table.columns:
        if c in skip:
            continue
        vals = table[c].map(lambda x: repr(x))
        if vals.nunique() > 1:
            out.append(c)
    return out


def seed_summary(table: pd.DataFrame, by: Sequence[str] | None = None,
                 columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Medians and spreads over seeds: one row per group of runs that differ only in their seeds.

    Args:
        table: :func:`sweep_table` output.
        by: the grouping columns (default: :func:`varying_columns`, i.e. every varied field but the seeds).
        columns: the numeric columns to summarise (default: the metric and analysis numbers present).

    Returns:
        DataFrame: the ``by`` columns, ``n_runs``, ``n_grokked``, ``grokked_fraction``, ``regime`` (the
        most common; ties go to the earlier of :data:`REGIMES`), ``curve_pattern`` (the most common;
        ties go to the earlier of :data:`PATTERNS`),
        ``test_acc_99_epoch_censored_median`` (:func:`censored_median`), and for each column
        ``<col>_median``, ``_q25``, ``_q75``, ``_min``, ``_max``, ``_n`` over the runs where it is defined.
    """
    by = list(varying_columns(table) if by is None else by)
    if columns is None:
        numeric = [c for c in (*METRIC_COLUMNS, *ANALYSIS_COLUMNS) if c in table.columns and c not in
                   ("finished", "grokked", "regime", "curve_pattern", "key_frequencies", "stopped", "stopped_epoch",
                    "stopped_step")]
        columns = [c for c in numeric if pd.to_numeric(table[c], errors="coerce").notna().any()]
    groups = table.groupby(by, dropna=False, sort=True) if by else [((), table)]
    rows = []
    for key, df in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(by, key))
        grokked = df["grokked"].fillna(False).astype(bool) if "grokked" in df else pd.Series(False, index=df.index)
        row.update(n_runs=len(df), n_grokked=int(grokked.sum()), grokked_fraction=float(grokked.mean()))
        if "regime" in df and df["regime"].notna().any():
            counts = df["regime"].value_counts()
            row["regime"] = min(counts.index[counts == counts.max()], key=list(REGIMES).index)
        if "curve_pattern" in df and df["curve_pattern"].notna().any():
            counts = df["curve_pattern"].value_counts()
            row["curve_pattern"] = min(counts.index[counts == counts.max()], key=list(PATTERNS).index)
        if "test_acc_99_epoch" in df:
            row["test_acc_99_epoch_censored_median"] = censored_median(
                [None if not g else e for g, e in zip(grokked, df["test_acc_99_epoch"])])
        for c in columns:
            v = pd.to_numeric(df[c], errors="coerce").dropna().to_numpy(dtype=np.float64)
            stats = (np.median(v), *np.percentile(v, [25, 75]), v.min(), v.max()) if len(v) else (math.nan,) * 5
            row.update({f"{c}_{s}": float(x) for s, x in zip(("median", "q25", "q75", "min", "max"), stats)})
            row[f"{c}_n"] = int(len(v))
        rows.append(row)
    return pd.DataFrame(rows)
