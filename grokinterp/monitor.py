"""Training with live measures: the public ``train`` / ``resume``, their callbacks, and ``watch``.

The training loop never imports the analyses; this module, above both, wires them together:

* :func:`train` and :func:`resume` (exported as ``grokinterp.train`` / ``grokinterp.resume``) are
  :func:`grokinterp.training.loop.train` / ``resume`` plus, when ``TrainConfig.live_every > 0``,
  two callbacks:
* :class:`LiveMeasures` — every ``live_every`` epochs (and at the last epoch), on the training
  device, the live progress measures of :func:`grokinterp.analysis.early.live_measures`
  (provisional key frequencies from the current ``W_L``, restricted and excluded loss,
  restricted accuracy, Gini of ``W_E``, ``Σθ²``), written into the metrics table (``live_*``
  columns, saved with the state and in ``metrics.csv``) and shown in the progress bar;
* :class:`EarlyWarningCallback` — announces "generalizing circuit forming" once, when the
  restricted accuracy passes 99 % while test accuracy is still below 90 %, with an estimate of
  when test accuracy will pass 99 % (:func:`grokinterp.analysis.early.check_warning`);
* :func:`watch` — follows a run training in another process and reports the same signals (read
  from its metrics table, or computed from its checkpoints when it trains without live measures).

Example:
    >>> run = gi.train(gi.make_config("quick", live_every=50), "checkpoints/quick")   # doctest: +SKIP
    >>> run.metrics.filter(like="live_").dropna(how="all").tail(3)                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .analysis.early import (
    LIVE_COLUMNS,
    LIVE_ESTIMATE,
    LIVE_KEY_FREQS,
    RESTRICTED_THRESHOLD,
    TEST_BELOW,
    EarlyWarning,
    check_warning,
    live_arrays,
    live_measures,
    live_table,
)
from .config import RunConfig
from .errors import ConfigError, RunError
from .training import loop as _loop
from .training.callbacks import Callback

__all__ = ["train", "resume", "LiveMeasures", "EarlyWarningCallback", "live_callbacks", "watch", "WatchEvent"]

log = logging.getLogger(__name__)


class LiveMeasures(Callback):
    """Record the live progress measures every ``every`` epochs (see the module docstring).

    Args:
        every: interval in epochs (default: the run's ``TrainConfig.live_every``).

    The values are written as device scalars into ``loop.metrics`` (the ``live_*`` columns of
    :data:`~grokinterp.analysis.early.LIVE_COLUMNS`) and the key frequencies as a JSON list into
    ``loop.text_metrics["live_key_freqs"]``; choosing the key frequencies reads ``W_L``'s
    spectrum on the host, the one synchronisation per live epoch (the progress bar reads the
    restricted accuracy there too). Callbacks after this one find the latest measurement in
    ``loop.live`` (``{"epoch": e, "key_freqs": (...), "restricted_acc": 0-d tensor, ...}``) from
    their ``on_epoch`` of that epoch on.
    """

    metric_columns = LIVE_COLUMNS
    text_columns = (LIVE_KEY_FREQS,)

    def __init__(self, every: int | None = None):
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ConfigError(f"live_every: must be a positive integer, got {every!r}")
        self.every = every
        self.arrays = None

    def on_start(self, loop: Any, epoch: int) -> None:
        self.every = self.every or loop.config.train.live_every
        if not self.every:
            raise ConfigError("train.live_every: LiveMeasures needs a positive interval")
        self.arrays = live_arrays(loop.config, *loop.split, device=loop.device)

    def due(self, loop: Any, epoch: int) -> bool:
        return epoch % self.every == 0 or epoch == loop.config.train.epochs

    def on_epoch(self, loop: Any, epoch: int) -> None:
        if not self.due(loop, epoch):
            return
        res = live_measures(loop.params, loop.config.model, self.arrays, epoch=epoch)
        m = loop.metrics
        m["live_n_key_freqs"][epoch] = float(len(res.key_freqs))
        for c in LIVE_COLUMNS[1:]:
            m[c][epoch] = res.values[c[len("live_"):]]
        loop.text_metrics[LIVE_KEY_FREQS][epoch] = json.dumps(list(res.key_freqs))
        loop.live = {"epoch": epoch, "key_freqs": res.key_freqs, **res.values}
        loop.postfix.update(keys=",".join(map(str, res.key_freqs)) or "-",
                            r_acc=f"{res.values['restricted_acc'].item():.3f}")


class EarlyWarningCallback(Callback):
    """Announce once that the generalizing circuit is forming (see the module docstring).

    Args:
        restricted_threshold, test_below: the rule of :func:`~grokinterp.analysis.early.check_warning`.
        notify: called with the :class:`~grokinterp.analysis.early.EarlyWarning` when it fires
            (default: logged as a warning on the ``grokinterp.monitor`` logger, which Python prints
            to stderr when logging is not configured).

    Must come after :class:`LiveMeasures` in the callback list. The warning is recorded in the
    metrics table: column ``live_test99_estimate`` holds, at the epoch it fired, the estimated
    epoch of 99 % test accuracy (``-1`` when no estimate could be made). After a resume it does
    not fire again if it already had.
    """

    metric_columns = (LIVE_ESTIMATE,)

    def __init__(self, restricted_threshold: float = RESTRICTED_THRESHOLD, test_below: float = TEST_BELOW,
                 notify: Callable[[EarlyWarning], None] | None = None):
        self.restricted_threshold, self.test_below = float(restricted_threshold), float(test_below)
        self.notify = notify or (lambda w: log.warning("grokinterp: %s", w.message))
        self.warning: EarlyWarning | None = None
        self.fired = False

    def on_start(self, loop: Any, epoch: int) -> None:
        self.fired = bool(np.isfinite(loop.metrics[LIVE_ESTIMATE][:epoch].cpu().numpy()).any())

    def on_epoch(self, loop: Any, epoch: int) -> None:
        keys = loop.text_metrics.get(LIVE_KEY_FREQS)
        if self.fired or keys is None or keys[epoch] is None:  # not a live epoch (or no LiveMeasures before it)
            return
        table = live_table(loop_metrics_frame(loop, epoch + 1))
        w = check_warning(table, restricted_threshold=self.restricted_threshold, test_below=self.test_below)
        if w is None:
            return
        self.fired, self.warning = True, w
        loop.metrics[LIVE_ESTIMATE][epoch] = float(w.estimate if w.estimate is not None else -1)
        loop.postfix["circuit"] = f"forming@{w.epoch}" + (f"→{w.estimate}" if w.estimate is not None else "")
        self.notify(w)


def loop_metrics_frame(loop: Any, upto: int) -> pd.DataFrame:
    """The training loop's metrics of epochs ``0 .. upto − 1`` as a DataFrame (waits for the device)."""
    cols: dict[str, Any] = {"epoch": np.arange(upto)}
    for c, v in loop.metrics.items():
        cols[c] = v[:upto].cpu().numpy()
    for c, v in loop.text_metrics.items():
        cols[c] = v[:upto]
    return pd.DataFrame(cols)


def live_callbacks(config: RunConfig) -> list[Callback]:
    """The callbacks :func:`train` adds for ``config``: live measures and the early warning when
    ``config.train.live_every > 0``, else none. Every model family has them (the measures read the
    logits over the grid through the family's module: :func:`grokinterp.model.grid.grid_outputs`)."""
    if config.train.live_every > 0:
        return [LiveMeasures(config.train.live_every), EarlyWarningCallback()]
    return []


def train(config: RunConfig, out: str | os.PathLike, *, overwrite: bool = False, progress: bool = True,
          preset: str | None = None, callbacks: Sequence[Callback] = (), threads: int | None = None,
          from_: str | os.PathLike | None = None):
    """Train a model and write a run directory (``grokinterp.train``); returns the loaded run.

    :func:`grokinterp.training.loop.train` (see there for the arguments and errors) with the live
    measures and the early warning added when ``config.train.live_every > 0``.

    ``from_ = "RUN[@EPOCH]"`` starts from a checkpoint of the parent run ``RUN`` (its last one unless
    ``@EPOCH``): it sets ``config.train.init_from`` / ``init_epoch``; the config's task split and model
    must be the parent's (``run.config.replace(n_train=..., epochs=...)`` of the parent, or
    :func:`grokinterp.training.lineage.child_config`, builds one). See :mod:`grokinterp.training.lineage`.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config: expected a RunConfig, got {type(config).__name__}")
    if from_ is not None:
        from pathlib import Path

        from .training.lineage import parse_from

        parent, epoch = parse_from(str(from_))
        config = config.replace(init_from=str(Path(parent).absolute()), init_epoch=epoch)
    return _loop.train(config, out, overwrite=overwrite, progress=progress, preset=preset,
                       callbacks=live_callbacks(config) + list(callbacks), threads=threads)


def resume(run_dir: str | os.PathLike, *, progress: bool = True, device: str | None = None,
           callbacks: Sequence[Callback] = (), threads: int | None = None, check: bool | None = None):
    """Continue an interrupted run (``grokinterp.resume``), with its live measures when it has them.

    A run trained alone continues through :func:`grokinterp.training.loop.resume` (see there for
    ``threads`` and ``check``); a run trained in a stack continues in its recorded stack
    (:func:`grokinterp.training.stacked.resume`), without live measures: stacks record none (their
    runs get them afterwards, e.g. from :func:`watch` or the report, computed from the checkpoints).
    """
    from .store.run import RunWarning, load_run
    from .training import stacked

    with warnings.catch_warnings():  # a look at run.json only: the load under the lock reports problems
        warnings.simplefilter("ignore", RunWarning)
        run = load_run(run_dir, check=check)
    live = [] if isinstance(run.info.get("stack"), dict) else live_callbacks(run.config)
    return stacked.resume(run_dir, progress=progress, device=device, callbacks=live + list(callbacks), threads=threads,
                          check=check)


# -- watch ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchEvent:
    """One thing :func:`watch` reports.

    Attributes:
        kind: ``"live"`` (a row of live measures), ``"warning"`` (the early warning fired),
            ``"progress"`` (epochs trained, when there is nothing else new) or ``"finished"``.
        epoch: the epoch it describes.
        values: the live row (``key_freqs``, ``restricted_acc``, ...) for ``live``; the
            :class:`~grokinterp.analysis.early.EarlyWarning` fields for ``warning``.
        text: a one-line rendering.
    """

    kind: str
    epoch: int
    values: dict[str, Any]
    text: str


def _live_text(row: dict[str, Any]) -> str:
    keys = ",".join(map(str, row["key_freqs"])) or "-"
    test = row.get("test_acc")
    test_s = f"{test:6.1%}" if test is not None and math.isfinite(test) else "     —"
    return (f"epoch {row['epoch']:>7}  keys {keys:<16} restricted acc {row['restricted_acc']:6.1%} "
            f"loss {row['restricted_loss']:.3g}  excluded loss {row['excluded_loss']:.3g}  "
            f"gini W_E {row['gini_W_E']:.3f}  Σθ² {row['sum_sq_weights']:.4g}  test acc {test_s}")


def _rows_from_checkpoints(run, epochs: Sequence[int], arrays) -> list[dict[str, Any]]:
    """Live rows computed from checkpoints (for runs trained without live measures)."""
    ev = run.evals if (run.path / "metrics.csv").exists() else pd.DataFrame(columns=["epoch", "test_acc"])
    out = []
    for e in epochs:
        res = live_measures(run.params(int(e)), run.config.model, arrays, epoch=int(e))
        prior = ev[ev["epoch"] <= e]
        out.append({"epoch": int(e), "key_freqs": res.key_freqs, "n_key_freqs": len(res.key_freqs),
                    **{k: float(v) for k, v in res.values.items()},
                    "test_acc": float(prior["test_acc"].iloc[-1]) if len(prior) else float("nan"),
                    "estimate": float("nan")})
    return out


def _is_seconds(x: Any) -> bool:
    """A real number of seconds (numpy scalars too); not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def watch(run_dir: str | os.PathLike, *, interval: float = 5.0, timeout: float | None = None,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[WatchEvent]:
    """Follow a run (training in another process) and yield what its live measures say.

    Args:
        run_dir: the run directory (it must exist; ``run.json`` may appear a moment later).
        interval: seconds between looks at the directory.
        timeout: stop after this many seconds without anything new (``None``: until finished).
        sleep: the waiting function (tests pass a fake).

    Yields:
        :class:`WatchEvent` — each new live row (from the metrics table, which the trainer
        rewrites at every flush; a run without live measures gets them computed from each new
        checkpoint instead, with the same code), the early warning once it fires (from the
        rule the training callback applies, on the same rows), progress when only
        the epoch count moved, and ``finished`` at the end.

    Raises:
        RunError: ``run_dir`` is not (and does not become) a run directory.
        ConfigError: ``interval`` is not a finite positive number, or ``timeout`` not a finite one ≥ 0.
    """
    from .store.run import load_run

    if not (_is_seconds(interval) and math.isfinite(interval) and interval > 0):
        raise ConfigError(f"interval: must be a positive number of seconds, got {interval!r}")
    if timeout is not None and not (_is_seconds(timeout) and math.isfinite(timeout) and timeout >= 0):
        raise ConfigError(f"timeout: must be a non-negative number of seconds or None, got {timeout!r}")
    path = Path(run_dir)
    seen_epoch, last_progress, warned = -1, None, False
    history: list[dict[str, Any]] = []
    idle = 0.0
    arrays = None
    while True:
        if not (path / "run.json").exists():
            if not path.is_dir():
                raise RunError(f"{path}: no such run directory")
            if timeout is not None and idle >= timeout:
                raise RunError(f"{path}: no run.json appeared within {timeout:g} s")
            sleep(interval)
            idle += interval
            continue
        run = load_run(path)
        new: list[dict[str, Any]] = []
        try:
            metrics = run.metrics
        except RunError:
            metrics = None
        if metrics is not None and LIVE_KEY_FREQS in metrics.columns:
            table = live_table(metrics)
            new = [dict(r) for _, r in table[table["epoch"] > seen_epoch].iterrows()]
            for r in new:
                r["epoch"] = int(r["epoch"])
        else:  # no live columns: the measures of each new checkpoint (every family)
            if arrays is None:
                arrays = live_arrays(run.config, *run.split_pairs())
            new = _rows_from_checkpoints(run, [e for e in run.epochs if e > seen_epoch], arrays)
        for r in new:
            history.append(r)
            seen_epoch = r["epoch"]
            yield WatchEvent("live", r["epoch"], r, _live_text(r))
            if not warned:
                # the rule the training callback applied, on the same rows (so the same verdict)
                w = check_warning(pd.DataFrame(history))
                if w is not None:
                    warned = True
                    yield WatchEvent("warning", w.epoch, dict(w.__dict__), "WARNING " + w.message)
        prog = run.progress if (path / "progress.json").exists() else {}
        if prog.get("finished"):
            yield WatchEvent("finished", int(prog.get("epoch", seen_epoch)), dict(prog),
                             f"finished at epoch {prog.get('epoch')}")
            return
        if new or prog.get("epoch") != last_progress:
            idle = 0.0
            if not new and prog:
                yield WatchEvent("progress", int(prog.get("epoch", 0)), dict(prog),
                                 f"epoch {prog.get('epoch')} of {prog.get('epochs_total')} trained")
            last_progress = prog.get("epoch")
        else:
            idle += interval
            if timeout is not None and idle >= timeout:
                return
        sleep(interval)
