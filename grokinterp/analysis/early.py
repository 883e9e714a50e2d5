"""Live progress measures of one model, and the early warning that a generalizing circuit is forming.

During training (every ``TrainConfig.live_every`` epochs, on the training device) the callback of
:mod:`grokinterp.monitor` calls :func:`live_measures` on the current parameters. It measures the
model with the very code of :func:`~grokinterp.analysis.measures.progress_measures` (the same
registered measures on a one-checkpoint :class:`~grokinterp.analysis.measures.ChunkContext`), but
with *provisional* key frequencies chosen from the current ``W_L`` (the final model is not known
yet). So ``progress_measures(run, key_freqs=<the set recorded at epoch e>)`` at checkpoint ``e``
gives the same numbers (tested).

Columns recorded in ``metrics.csv`` at each live epoch (NaN / empty elsewhere):

==========================  =========================================================================
column                      definition
==========================  =========================================================================
``live_key_freqs``          the provisional key frequencies, as a JSON list (``W_L`` rule of
                            :func:`~grokinterp.analysis.keyfreqs.key_frequencies` on the current model)
``live_n_key_freqs``        how many
``live_restricted_loss``    restricted loss with those frequencies (all pairs; a, b ≠ 0 for mul / div)
``live_restricted_acc``     restricted accuracy (the same pairs)
``live_excluded_loss``      excluded loss (training pairs)
``live_gini_W_E``           Gini of the Fourier norms of ``W_E``
``live_sum_sq_weights``     ``Σ θ²`` over every parameter
``live_test99_estimate``    at the epoch the early warning fired: its estimate of the epoch test
                            accuracy will pass 99 %
==========================  =========================================================================

The early warning (:func:`check_warning`, :func:`first_warning`) fires at the first live epoch
where the restricted accuracy reaches ``restricted_threshold`` (99 %: the key-frequency circuit
alone classifies 99 % of those pairs, the bar :func:`~grokinterp.analysis.phases.circuit_formation_epoch`
uses) while the latest test accuracy is still below ``test_below``; see
:func:`estimate_test99_epoch` for how it dates the test accuracy's 99 %.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import ModelConfig, RunConfig
from ..errors import AnalysisError
from .groups import task_structure
from .inputs import residue_outputs, task_arrays
from .keyfreqs import resolve_model_keys
from .measures import ChunkContext, RunArrays, get_measures

__all__ = ["LIVE_COLUMNS", "LIVE_KEY_FREQS", "LIVE_ESTIMATE", "LIVE_MEASURES", "LiveResult", "live_arrays",
           "live_measures", "live_table", "EarlyWarning", "check_warning", "first_warning",
           "estimate_test99_epoch", "RESTRICTED_THRESHOLD", "TEST_BELOW"]

#: Numeric live columns, in ``metrics.csv`` order (each maps to a progress-measure column).
LIVE_COLUMNS = ("live_n_key_freqs", "live_restricted_loss", "live_restricted_acc", "live_excluded_loss",
                "live_gini_W_E", "live_sum_sq_weights")
#: The text column holding the provisional key frequencies (a JSON list).
LIVE_KEY_FREQS = "live_key_freqs"
#: The column holding the early warning's estimate (only at the epoch it fired).
LIVE_ESTIMATE = "live_test99_estimate"
#: The registered measures the live columns come from, and which of their columns.
LIVE_MEASURES = {"restricted": ("restricted_loss", "restricted_acc"), "excluded": ("excluded_loss",),
                 "gini": ("gini_W_E",), "weight_norm": ("sum_sq_weights",)}
#: Restricted accuracy at which the warning fires (the circuit-formation bar).
RESTRICTED_THRESHOLD = 0.99
#: ... provided the test accuracy is still below this.
TEST_BELOW = 0.9


@dataclass(frozen=True)
class LiveResult:
    """The live measures of one model.

    Attributes:
        key_freqs: the provisional key frequencies.
        values: ``{progress-measure column: 0-d float64 tensor on the device}``
            (``restricted_loss``, ``restricted_acc``, ``excluded_loss``, ``gini_W_E``,
            ``sum_sq_weights``); reading them (``.item()``) waits for the device.
    """

    key_freqs: tuple[int, ...]
    values: dict[str, Tensor]


def live_arrays(config: RunConfig, train_pairs, test_pairs, device: str | torch.device = "cpu") -> RunArrays:
    """The task arrays the live measures need (labels, split, valid pairs), on ``device``."""
    labels, train, test, valid = task_arrays(config.task.p, config.task.operation, train_pairs, test_pairs)
    return RunArrays.build(labels, train, test, valid, config.task.p, torch.device(device),
                           task_structure(config.task.task()))


@torch.no_grad()
def live_measures(params: dict[str, Tensor], cfg: ModelConfig, arrays: RunArrays, *, epoch: int = -1,
                  key_freqs: Sequence[int] | None = None) -> LiveResult:
    """Progress measures of one model with provisional key frequencies, on the parameters' device.

    Args:
        params: one model's parameters (``loop.params`` during training), not stacked.
        cfg: its config.
        arrays: :func:`live_arrays` of the run.
        epoch: recorded in the key-frequency rule text only.
        key_freqs: use these instead of choosing them (default: the rule of the task's structure on
            ``params``, ``W_L`` for a cyclic one; none for a task without structure: the values are NaN).

    Returns:
        :class:`LiveResult`.

    Notes:
        The values are those of the registered measures ``restricted``, ``excluded``, ``gini``
        and ``weight_norm`` on a one-checkpoint chunk, exactly as
        :func:`~grokinterp.analysis.measures.progress_measures` computes them at a checkpoint.
    """
    full = {k: v.detach()[None] for k, v in params.items()}
    single, rcfg = residue_outputs(full, cfg)  # the analyses see the residue logits only
    keys = resolve_model_keys({k: v.detach() for k, v in params.items()}, arrays.structure, arrays.p, key_freqs,
                              epoch=epoch, where=f"live, epoch {epoch}", cfg=cfg)
    dev = next(iter(single.values())).device
    ctx = ChunkContext(np.array([epoch]), single, rcfg, keys, arrays, dev,
                       model_params=full if single is not full else None)
    values: dict[str, Tensor] = {}
    for m in get_measures(list(LIVE_MEASURES)):
        out = m.compute(ctx)
        for c in LIVE_MEASURES[m.name]:
            v = out.get(c)
            values[c] = (torch.full((), float("nan"), dtype=torch.float64, device=dev) if v is None
                         else v.double().reshape(()))
    return LiveResult(tuple(keys.freqs), values)


def live_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The live rows of a run's metrics table, with the key frequencies parsed.

    Args:
        metrics: ``run.metrics`` (or a metrics CSV read with pandas).

    Returns:
        One row per live epoch: ``epoch``, ``key_freqs`` (tuple of ints), the numeric live
        columns without their ``live_`` prefix (``restricted_acc``, ...), ``test_acc`` (the
        latest test accuracy recorded at or before that epoch) and ``estimate`` (the early
        warning's estimate where it fired, else NaN). Empty when the run has no live measures.

    Raises:
        AnalysisError: a live column is malformed.
    """
    cols = ["epoch", "key_freqs", *(c[len("live_"):] for c in LIVE_COLUMNS), "test_acc", "estimate"]
    if LIVE_KEY_FREQS not in metrics.columns:
        return pd.DataFrame(columns=cols)
    rows = metrics[metrics[LIVE_KEY_FREQS].notna()]
    test = metrics["test_acc"].ffill() if "test_acc" in metrics.columns else pd.Series(np.nan, index=metrics.index)
    out = {"epoch": rows["epoch"].astype(np.int64).to_numpy(), "key_freqs": []}
    for text in rows[LIVE_KEY_FREQS]:
        try:
            freqs = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            freqs = None
        if not isinstance(freqs, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in freqs):
            raise AnalysisError(f"metrics: {LIVE_KEY_FREQS} holds {text!r}, expected a JSON list of frequencies")
        out["key_freqs"].append(tuple(freqs))
    for c in LIVE_COLUMNS:
        if c not in metrics.columns:
            raise AnalysisError(f"metrics: live column {c!r} is missing")
        v = pd.to_numeric(rows[c], errors="coerce")
        if v.isna().any():
            raise AnalysisError(f"metrics: live column {c!r} holds non-numbers at live epochs")
        out[c[len("live_"):]] = v.to_numpy(dtype=np.float64)
    out["test_acc"] = test.loc[rows.index].to_numpy(dtype=np.float64)
    est = pd.to_numeric(rows[LIVE_ESTIMATE], errors="coerce") if LIVE_ESTIMATE in rows.columns else np.nan
    out["estimate"] = np.asarray(est, dtype=np.float64) * np.ones(len(rows))
    return pd.DataFrame(out, columns=cols).reset_index(drop=True)


# -- the early warning ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EarlyWarning:
    """The early warning: the generalizing circuit is forming while test accuracy is still low.

    Attributes:
        epoch: the live epoch it fired.
        restricted_acc: the restricted accuracy there (≥ the threshold).
        test_acc: the latest test accuracy at that epoch (< ``test_below``).
        estimate: estimated epoch at which test accuracy will pass 99 % (``None`` if no estimate).
        method: how the estimate was made, in words.
        message: the announcement, one line.
    """

    epoch: int
    restricted_acc: float
    test_acc: float
    estimate: int | None
    method: str
    message: str


def estimate_test99_epoch(history: pd.DataFrame, acc: float = 0.99) -> tuple[int | None, str]:
    """Estimate when test accuracy will reach ``acc``, from the live history up to now.

    Args:
        history: :func:`live_table` rows up to the current epoch (``epoch``,
            ``restricted_acc``, ``test_acc``), in epoch order; the last row is "now".
        acc: the test accuracy to date (99 %).

    Returns:
        ``(epoch, method)``: the estimated epoch (``None`` when the history cannot support an
        estimate) and the method in words.

    Notes:
        Time-shift matching: assume the test accuracy follows the restricted accuracy's curve
        with a delay ``d``, ``test_acc(t) ≈ restricted_acc(t − d)``. ``d`` is read off the
        history: ``t_now − t'`` where ``t'`` is the first live epoch at which the restricted
        accuracy had reached today's test accuracy (linear interpolation between live epochs).
        The restricted accuracy reached ``acc`` at ``t_R`` (≤ now, interpolated likewise), so
        the estimate is ``t_R + d``. When today's test accuracy is below every recorded
        restricted accuracy, ``t'`` is the first live epoch (the delay is then a lower bound).
    """
    method = ("time-shift matching: test accuracy assumed to trail the restricted accuracy by a delay d = "
              "t_now − (first epoch the restricted accuracy reached today's test accuracy); estimate = "
              f"(epoch the restricted accuracy reached {acc:.0%}) + d")
    if len(history) == 0:
        return None, method
    ep = history["epoch"].to_numpy(dtype=np.float64)
    r = np.maximum.accumulate(history["restricted_acc"].to_numpy(dtype=np.float64))
    now, test_now = ep[-1], float(history["test_acc"].to_numpy(dtype=np.float64)[-1])
    if not math.isfinite(test_now) or r[-1] < acc:
        return None, method

    def first_reach(level: float) -> float:
        i = int(np.argmax(r >= level))
        if i == 0:
            return float(ep[0])
        lo, hi = r[i - 1], r[i]
        frac = (level - lo) / (hi - lo) if hi > lo else 1.0
        return float(ep[i - 1] + frac * (ep[i] - ep[i - 1]))

    delay = now - first_reach(min(test_now, r[-1]))
    return int(round(first_reach(acc) + delay)), method


def check_warning(history: pd.DataFrame, *, restricted_threshold: float = RESTRICTED_THRESHOLD,
                  test_below: float = TEST_BELOW) -> EarlyWarning | None:
    """The warning at the last row of ``history`` (:func:`live_table` rows up to now), or ``None``.

    Fires when the restricted accuracy at the last live epoch is ≥ ``restricted_threshold``
    and the latest test accuracy is < ``test_below`` (a missing test accuracy counts as low).
    Only the rows up to now are read, so the training callback (row by row) and
    :func:`first_warning` (on a finished run) agree.
    """
    if len(history) == 0:
        return None
    last = history.iloc[-1]
    r, t = float(last["restricted_acc"]), float(last["test_acc"])
    if not (r >= restricted_threshold and not (t >= test_below)):
        return None
    est, method = estimate_test99_epoch(history)
    epoch = int(last["epoch"])
    msg = (f"generalizing circuit forming at epoch {epoch}: the key-frequency circuit alone classifies {r:.1%} of "
           f"the pairs while test accuracy is {t:.1%}"
           + (f"; test accuracy estimated to pass 99% near epoch {est}" if est is not None else ""))
    return EarlyWarning(epoch, r, t, est, method, msg)


def first_warning(metrics: pd.DataFrame, **kw) -> EarlyWarning | None:
    """The first live epoch at which :func:`check_warning` fires on a run's metrics table."""
    table = live_table(metrics)
    for i in range(len(table)):
        w = check_warning(table.iloc[: i + 1], **kw)
        if w is not None:
            return w
    return None
