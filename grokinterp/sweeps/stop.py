"""The stop rule of a sweep (``[stop]`` in a spec) and the wall-clock budget of a sweep invocation.

A spec's ``[stop]`` table ends a stack early once every run in it has generalized::

    [stop]
    column = "test_acc"   # the metrics column watched: test_acc (default) or train_acc
    level = 0.99          # the stack stops once every run has held column ≥ level ...
    hold = 3              # ... at this many consecutive evaluations (not epochs: every
                          #     train.eval_every epochs, so hold = 3 is ≈ 3 · eval_every epochs)

The rule is that of ``StopStack`` in ``analyses/grokfast_lee.py``: it is checked at every evaluation
of the stack (all real runs, the stand-ins of a padded stack left out), and once the last ``hold``
evaluations of every run are at or above ``level`` the stack stops before its next step. Its runs
are flushed with a ``stopped`` record in ``progress.json`` (``{"by": "rule", "rule": {...},
"epoch": E, "step": S, "held_from_epoch": e0}``; ``epoch`` / ``step`` are where training stopped,
i.e. where ``train --resume`` would go on): the sweep counts such a run as done, its status and
table say where it stopped. A stack in which some run never reaches the level trains to its budget.

The rule changes what a run computes (how long it trains), so it is part of the spec (stored in
``sweep.json``, part of the comparison that tells whether a directory holds the same sweep), not a
:class:`~grokinterp.sweeps.spec.SweepOptions` field. It does not change the bits of the epochs it
lets train: it only reads the metrics.

The wall-clock budget (``sweep(..., deadline=...)``, ``grokinterp sweep --max-minutes M`` /
``--until HH:MM``) is not part of the spec: it stops the running stacks cleanly (flushed, resumable,
no ``stopped`` record) and starts no new job; running the sweep again continues.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..training.callbacks import Callback

__all__ = ["StopRule", "StopRuleCallback", "DeadlineCallback", "STOP_COLUMNS", "deadline_from"]

#: Columns a stop rule may watch, and the range of their level.
STOP_COLUMNS = {"test_acc": "accuracy", "train_acc": "accuracy"}
_KEYS = ("column", "level", "hold")


@dataclass(frozen=True)
class StopRule:
    """Stop a stack once every run has held ``column ≥ level`` at ``hold`` consecutive evaluations.

    Raises:
        ConfigError: naming the field (``stop.column``, ``stop.level``, ``stop.hold``) for an unknown
            column, a level outside ``(0, 1]``, a hold below 1, or an unknown key.
    """

    column: str = "test_acc"
    level: float = 0.99
    hold: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or self.column not in STOP_COLUMNS:
            raise ConfigError(f"stop.column: unknown column {self.column!r}; known: {', '.join(STOP_COLUMNS)}")
        if (not isinstance(self.level, (int, float)) or isinstance(self.level, bool) or not math.isfinite(self.level)
                or not 0 < self.level <= 1):
            raise ConfigError(f"stop.level: an accuracy level must be in (0, 1], got {self.level!r}")
        if not isinstance(self.hold, int) or isinstance(self.hold, bool) or self.hold < 1:
            raise ConfigError(f"stop.hold: must be an integer ≥ 1 (evaluations the level is held), got {self.hold!r}")
        object.__setattr__(self, "level", float(self.level))

    @classmethod
    def from_dict(cls, data: Any, where: str = "stop") -> "StopRule":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table (column, level, hold), got {data!r}")
        extra = sorted(set(data) - set(_KEYS))
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, extra))}; known: {', '.join(_KEYS)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "level": self.level, "hold": self.hold}

    def describe(self) -> str:
        return (f"a stack stops once every run has held {self.column} ≥ {self.level:g} at {self.hold} consecutive "
                f"evaluation{'s' if self.hold != 1 else ''}")


class StopRuleCallback(Callback):
    """The :class:`StopRule` on a training loop (a stack or a single run): reads the metrics only.

    Stateless: the held stretch is read back from the loop's metrics at each evaluation, so a
    resumed stack applies the rule exactly as an uninterrupted one. ``fired`` is set when it stopped
    the loop.
    """

    def __init__(self, rule: StopRule):
        self.rule = rule
        self.fired: dict[str, Any] | None = None

    def on_eval(self, loop: Any, epoch: int) -> None:
        col = loop.metrics[self.rule.column]
        values = col if col.dim() == 2 else col.unsqueeze(0)
        ev, E = loop.eval_every, loop.E
        epochs = [epoch]
        e = epoch - 1 if epoch % ev else epoch - ev  # the previous evaluations: multiples of eval_every
        e = (e // ev) * ev if e >= 0 else -1
        while len(epochs) < self.rule.hold and e >= 0:
            epochs.append(e)
            e -= ev
        if len(epochs) < self.rule.hold or epoch >= E:
            return  # not held long enough yet; at the last epoch the run finishes anyway
        real = [r for r, ok in enumerate(getattr(loop, "real", [True] * values.shape[0])) if ok]
        got = values[real][:, epochs].double()
        if bool((got >= self.rule.level).all()):  # NaN (not evaluated) compares False
            self.fired = {"by": "rule", "rule": self.rule.to_dict(), "held_from_epoch": int(epochs[-1])}
            loop.request_stop(record=self.fired)


class DeadlineCallback(Callback):
    """Stops the loop (flushed, resumable, no ``stopped`` record) once ``time.time()`` passes ``deadline``."""

    def __init__(self, deadline: float):
        self.deadline = float(deadline)
        self.fired = False

    def on_step(self, loop: Any, epoch: int) -> None:
        if not self.fired and time.time() >= self.deadline:
            self.fired = True
            loop.request_stop()


def deadline_from(max_minutes: float | None = None, until: str | None = None, *, now: float | None = None) -> float | None:
    """The wall-clock deadline (``time.time()`` seconds) of ``max_minutes`` from now and/or ``until``
    (``HH:MM``, UTC, the next such time); the earlier of the two, ``None`` when neither is given.

    Raises:
        ConfigError: ``max_minutes`` not positive, or ``until`` not ``HH:MM``.
    """
    now = time.time() if now is None else now
    out = []
    if max_minutes is not None:
        if not isinstance(max_minutes, (int, float)) or isinstance(max_minutes, bool) or not max_minutes > 0 \
                or not math.isfinite(max_minutes):
            raise ConfigError(f"max_minutes: must be a positive number of minutes, got {max_minutes!r}")
        out.append(now + 60.0 * max_minutes)
    if until is not None:
        try:
            h, m = (int(x) for x in str(until).split(":"))
            if not (0 <= h < 24 and 0 <= m < 60):
                raise ValueError
        except ValueError:
            raise ConfigError(f"until: expected a UTC time HH:MM (e.g. 03:30), got {until!r}") from None
        t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        end = t.replace(hour=h, minute=m, second=0, microsecond=0)
        if end <= t:
            end += dt.timedelta(days=1)
        out.append(end.timestamp())
    return min(out) if out else None
