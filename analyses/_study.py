"""Helpers shared by the intervention studies (imported as ``_study`` by the scripts in this folder).

* :func:`train_until` — train a config into a run directory, or reuse the run already there; optionally
  stop once test accuracy has stayed ≥ 99 % for a margin of epochs (the run is then left interrupted and
  resumable; a re-run of the study reuses it as it is);
* :class:`StopStack` — stop a stack once every run has held a level for a margin of epochs, or at a wall-clock limit;
* :func:`fail` — a bad argument: the message and exit status 2;
* :func:`epochs_to` — first epoch a metrics column reached a level;
* :func:`seed_spread` — median, min and max over seeds, and how many reached the level;
* :func:`write_report` — the study's figures and tables as one HTML file (plotly.js from its CDN, to
  keep the committed file small).
"""

from __future__ import annotations

import html
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import grokinterp as gi
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainingInterrupted


def fail(message: str):
    """Bad command-line input or input file: ``<script>: message`` on stderr and exit status 2, as the CLI
    does (raised before anything is written)."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    raise SystemExit(2)


def ints(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (argparse type)."""
    return [int(x) for x in text.split(",") if x]


def floats(text: str) -> list[float]:
    """``"0.5,1,2"`` → ``[0.5, 1.0, 2.0]`` (argparse type)."""
    return [float(x) for x in text.split(",") if x]


def settings(args) -> dict[str, Any]:
    """The study's arguments as JSON-ready settings."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


class StopAfter(Callback):
    """Stop training once ``column`` has stayed ≥ ``level`` for ``margin`` epochs (checked at evaluations)."""

    def __init__(self, margin: int, level: float = 0.99, column: str = "test_acc"):
        self.margin, self.level, self.column = margin, level, column
        self.since: int | None = None

    def on_eval(self, loop, epoch: int) -> None:
        v = float(loop.metrics[self.column][epoch].item())
        if v >= self.level:
            self.since = epoch if self.since is None else self.since
            if epoch - self.since >= self.margin:
                loop.request_stop()
        else:
            self.since = None


class StopStack(Callback):
    """Stop a stack once every run has held ``column ≥ level`` for ``margin`` epochs (checked at evaluations;
    ``margin=None``: never), or once ``max_minutes`` of wall time have passed since it was made."""

    def __init__(self, margin: int | None, level: float = 0.99, column: str = "test_acc",
                 max_minutes: float | None = None):
        self.margin, self.level, self.column = margin, level, column
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        self.since: int | None = None

    def on_eval(self, loop, epoch: int) -> None:
        if self.margin is not None:
            acc = loop.metrics[self.column][:, epoch]
            if bool((acc >= self.level).all()):
                self.since = epoch if self.since is None else self.since
                if epoch - self.since >= self.margin:
                    loop.request_stop()
            else:
                self.since = None
        if self.deadline is not None and time.monotonic() > self.deadline:
            loop.request_stop()


def _held(run, margin: int, level: float = 0.99) -> bool:
    ev = run.evals
    ok = (ev["test_acc"] >= level).to_numpy()
    if not ok.any():
        return False
    # the last stretch of evaluations at or above the level
    last_bad = np.flatnonzero(~ok)
    start = int(ev["epoch"].iloc[last_bad[-1] + 1]) if len(last_bad) else int(ev["epoch"].iloc[0])
    return ok[-1] and int(ev["epoch"].iloc[-1]) - start >= margin


def train_until(cfg, out: Path, *, margin: int | None = None, log=print):
    """The run of ``cfg`` in ``out``: reused when it is there (finished, or stopped after the margin),
    else trained (or resumed) now."""
    out = Path(out)
    if (out / "run.json").exists():
        try:
            run = gi.load_run(out)
            if run.config == cfg and (run.finished or (margin is not None and _held(run, margin))):
                return run
        except gi.GrokinterpError:
            pass
    cbs = [StopAfter(margin)] if margin is not None else []
    try:
        run = gi.train(cfg, out, progress=False, callbacks=cbs)
    except TrainingInterrupted:
        run = gi.load_run(out)
    log(f"  trained {out.name}: test acc ≥ 99 % at {epochs_to(run)}", flush=True)
    return run


def same_runs_on_disk(cfgs, outs) -> list[bool]:
    """Whether each ``out`` holds a run of exactly that config (finished or not)."""
    found = []
    for cfg, out in zip(cfgs, outs):
        try:
            found.append(gi.load_run(out).config == cfg)
        except gi.GrokinterpError:
            found.append(False)
    return found


def train_or_resume_stack(cfgs, outs, callbacks=()) -> float:
    """Train ``cfgs`` into ``outs`` as one stack, or resume the stack when every run is already there with its
    config; a stop by a callback or a finished stack is printed, not raised. Returns the wall seconds."""
    import time

    from grokinterp.training.stacked import StackInterrupted, resume_stacked

    t0 = time.time()
    try:
        if all(same_runs_on_disk(cfgs, outs)):
            resume_stacked(outs, progress=False, callbacks=list(callbacks))
        else:
            gi.train_stacked(cfgs, outs, progress=False, overwrite=True, callbacks=list(callbacks))
    except StackInterrupted as e:
        print(f"  stack stopped at epoch {e.epoch}", flush=True)
    except gi.GrokinterpError as e:  # resuming a finished stack
        print(f"  {e}", flush=True)
    return time.time() - t0


def epochs_to(run_or_metrics, level: float = 0.99, column: str = "test_acc") -> int | None:
    """First epoch at which ``column`` (evaluation rows) reached ``level`` (``None``: never)."""
    m = run_or_metrics.evals if hasattr(run_or_metrics, "evals") else run_or_metrics
    hit = m[m[column] >= level]
    return int(hit["epoch"].iloc[0]) if len(hit) else None


def seed_spread(values: Sequence[float | None], budget: int | None = None) -> dict[str, Any]:
    """``{median, min, max, n, n_reached}`` over seeds; values that never reached count as ``budget``
    (so the median is a lower bound when some seeds did not reach it) and are counted apart."""
    reached = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    filled = reached + ([float(budget)] * (len(values) - len(reached)) if budget is not None else [])
    if not filled:
        return {"median": None, "min": None, "max": None, "n": len(values), "n_reached": 0}
    return {"median": float(np.median(filled)), "min": float(min(filled)), "max": float(max(filled)),
            "n": len(values), "n_reached": len(reached)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x).__name__)


def write_report(path: Path, title: str, intro: str, sections: Sequence[tuple[str, str, Any]]) -> None:
    """One HTML page: a title, an introduction (HTML) and ``(heading, caption, figure or HTML table)``."""
    from plotly.offline import get_plotlyjs_version

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<script src='https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js'></script>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:20px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", intro]
    for i, (head, caption, obj) in enumerate(sections):
        parts += [f"<h2>{html.escape(head)}</h2>", f"<p>{html.escape(caption)}</p>"]
        if hasattr(obj, "to_html") and hasattr(obj, "data"):
            parts.append(obj.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{i}"))
        elif hasattr(obj, "to_html"):
            parts.append(obj.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—"))
        else:
            parts.append(str(obj))
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
