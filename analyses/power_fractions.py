"""Power et al. 2022's study on the sweep machinery: the minimum training fraction per operation.

Their setting (preset ``power``; ``openai/grok``, see docs/anchors.md): a 2-layer post-LN causal decoder,
width 128, 4 heads, ReLU MLP 512, fixed sinusoidal positions, LayerNorm biases only; tokens ``[x, op, y, =]``;
AdamW lr 1e-3, betas 0.9 / 0.98, weight decay 1 on every parameter, warm-up over 10 updates, batches of
``min(512, ceil(n_train / 2))`` (their ``calculate_batchsize``), a budget of 10^5 updates. The grid is the
three specs ``analyses/specs/power_study_{p97,div,s5}.toml``: their operations (x+y, x−y, x·y, x/y, the
polynomials, x/y-or-x−y, the S5 tasks) × training fraction 0.1 … 0.9 × 3 seeds, 351 runs, each with
their batch rule and ≥ 10^5 optimizer steps (the exact steps per cell are in the specs' comments), and
the specs' stop rule: a stack stops once every run in it has held 99 % test accuracy at 3 consecutive
evaluations (≈ 300 steps), so a run that generalizes early does not spend its 10^5 steps.

Training goes through ``grokinterp.sweep`` (one sweep directory per spec under ``--runs-dir``): stacks of
runs that share shapes, finished and rule-stopped runs skipped, interrupted ones resumed. ``--ops``,
``--fracs``, ``--seeds`` and ``--steps`` restrict the grid (a derived spec: the same rows, fewer of them;
``--steps`` lowers each cell's epochs to ``ceil(steps / steps_per_epoch)``); a restricted grid trains into
its own sweep directory (``<spec>-<digest>``), so it never mixes with the full study's. ``--max-minutes``
/ ``--until HH:MM`` (UTC) is a wall-clock budget for the whole invocation: running stacks stop cleanly and
no new one starts; run the same command again to go on.

Measured per run: optimizer steps to 95 % and 99 % test accuracy (first evaluation at or above; the crossing
lies up to one evaluation interval earlier), steps to 99 % train accuracy, the steps trained and how the run
ended. Per cell (operation × fraction): the seeds' medians and ranges, and whether it **finished**: done
(generalized and stopped by the rule, or ran the full budget) or not (not started / stopped by the wall
limit at step N). Per operation: the smallest fraction at which a majority of the seeds reached 99 % within
the steps trained. Wall time, runs per hour and run-steps per second of the invocations that trained.

The first reproduction (80 % of the pairs, 1,005 steps, trained by the earlier version of this script with
``train_stacked``) is kept under ``--out``/earlier/ and shown beside the sweep's runs; ``--earlier-runs-dir``
reads more runs of that older layout (``<op>-f<frac>-s<seed>`` run directories) the same way.

Writes into ``--out``: ``runs.csv`` (one row per run), ``cells.csv``, ``summary.json`` (settings, cells,
minimum fractions, unfinished cells, wall times) and ``power_fractions.html``; ``wall.json`` accumulates the
invocations' wall times. Results: analyses/README.md.

Example:
    python analyses/power_fractions.py                                  # the whole study (a GPU: one command)
    python analyses/power_fractions.py --ops add,div --fracs 0.8 --seeds 0,1,2 --steps 300 \\
        --runs-dir /tmp/power-smoke --out /tmp/power-smoke/results       # a smoke check on CPU
    python analyses/power_fractions.py --report-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import _study as S

HERE = Path(__file__).resolve().parent
SPECS = [HERE / "specs" / f"power_study_{k}.toml" for k in ("p97", "div", "s5")]
OPS = {"add": "x+y", "sub": "x−y", "mul": "x·y", "div": "x/y", "div_odd_sub": "x/y if y odd, else x−y",
       "x2_y2": "x²+y²", "x2_xy_y2": "x²+xy+y²", "x2_xy_y2_x": "x²+xy+y²+x", "x3_xy": "x³+xy",
       "x3_xy2_y": "x³+xy²+y", "S5": "x∘y (S5)", "S5_conj": "x∘y∘x⁻¹ (S5)", "S5_xyx": "x∘y∘x (S5)"}
THEIRS = {
    "source": "Power et al. 2022, Figure 1 and Appendix A.1 (arXiv:2201.02177); openai/grok",
    "budget_steps": 100_000,
    "claim": "steps to 99 % validation accuracy grow sharply as the training fraction falls (x/y: from about "
             "10^3 steps at large fractions to the 10^5 budget); below a minimum fraction per operation no run "
             "generalizes within 10^5 updates. Values read off their figures are approximate; the exact "
             "per-operation minima are not in our references",
}
LEVEL = 0.99


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--specs", type=lambda t: [Path(x) for x in t.split(",") if x], default=SPECS,
                    help="comma-separated sweep specs (default: the three power_study_*.toml)")
    ap.add_argument("--ops", default=None, help=f"restrict to these operations (of {', '.join(OPS)})")
    ap.add_argument("--fracs", type=S.floats, default=None, help="restrict to these training fractions")
    ap.add_argument("--seeds", type=S.ints, default=None, help="restrict to these seeds")
    ap.add_argument("--steps", type=int, default=None, help="lower each cell's budget to this many optimizer steps")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget of this invocation")
    ap.add_argument("--until", default=None, help="UTC HH:MM: stop the running stacks there, start no new one")
    ap.add_argument("--workers", type=int, default=None, help="local worker processes (sweep option)")
    ap.add_argument("--max-stack", type=int, default=None, help="most runs in one stack (sweep option)")
    ap.add_argument("--report-only", action="store_true", help="train nothing; summarise the sweeps on disk")
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/power_study"))
    ap.add_argument("--earlier-runs-dir", type=Path, default=None,
                    help="run directories of the older layout (<op>-f<frac>-s<seed>) to summarise too")
    ap.add_argument("--out", type=Path, default=Path("analyses/results/power_fractions"))
    return ap.parse_args(argv)


# -- the sweeps -----------------------------------------------------------------------------------------------------
def derived_spec(path: Path, args) -> tuple[dict, str] | None:
    """The spec of ``path`` restricted by ``--ops/--fracs/--seeds/--steps`` (``None``: nothing of it is left),
    and its sweep directory's name (the spec's stem; a restricted spec gets a digest of its runs)."""
    import grokinterp as gi
    from grokinterp.sweeps.spec import load_spec

    spec = load_spec(path)
    doc = spec.to_dict()
    full = True
    ops = doc["grid"].get("operation")
    if args.ops is not None:
        want = [o for o in args.ops.split(",") if o]
        kept = [o for o in ops if o in want]
        if not kept:
            return None
        full = full and kept == ops
        doc["grid"]["operation"] = kept
    rows = list(range(len(doc["zip"]["frac_train"])))
    if args.fracs is not None:
        rows = [i for i in rows if any(math.isclose(doc["zip"]["frac_train"][i], f) for f in args.fracs)]
        if not rows:
            return None
        full = full and len(rows) == len(doc["zip"]["frac_train"])
    doc["zip"] = {k: [v[i] for i in rows] for k, v in doc["zip"].items()}
    if args.seeds is not None:
        full = full and list(args.seeds) == list(doc["seeds"])
        doc["seeds"] = list(args.seeds)
    if args.steps is not None:
        epochs = []
        for frac, batch in zip(doc["zip"]["frac_train"], doc["zip"]["batch_size"]):
            probe = gi.make_config(doc["preset"], operation=doc["grid"]["operation"][0], frac_train=frac,
                                   batch_size=batch)
            epochs.append(max(1, math.ceil(args.steps / probe.steps_per_epoch())))
        full = full and epochs == doc["zip"]["epochs"]
        doc["zip"]["epochs"] = epochs
        doc["zip"]["eval_every"] = [min(e, ev) for e, ev in zip(epochs, doc["zip"]["eval_every"])]
    options = {k: v for k, v in (("workers", args.workers), ("max_stack", args.max_stack)) if v is not None}
    doc["options"] = {**doc["options"], **options}
    if full:
        return doc, path.stem
    runs = {k: doc[k] for k in ("preset", "seeds", "fixed", "grid", "zip", "stop") if k in doc}
    return doc, f"{path.stem}-{hashlib.sha256(json.dumps(runs, sort_keys=True).encode()).hexdigest()[:8]}"


def derived_sweeps(args):
    """``(spec dict, sweep name, sweep directory)`` of each spec as this invocation restricts it (specs left
    with no runs are skipped): the directories :func:`train` writes and :func:`sweep_rows` reads."""
    for path in args.specs:
        got = derived_spec(path, args)
        if got is not None:
            doc, name = got
            yield doc, name, args.runs_dir / name


def train(args, wall: list[dict]) -> None:
    import grokinterp as gi
    from grokinterp.sweeps.stop import deadline_from

    deadline = deadline_from(args.max_minutes, args.until)
    for doc, name, out in derived_sweeps(args):
        before = _progress(out)
        t0 = time.time()
        print(f"{name}: sweep into {out}", flush=True)
        gi.sweep(doc, out, progress=False, deadline=deadline)
        after = _progress(out)
        entry = {"sweep": name, "seconds": time.time() - t0, "runs_done": after["done"] - before["done"],
                 "model_steps": after["steps"] - before["steps"], "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
        wall.append(entry)
        print(f"{name}: {entry['runs_done']} runs done, {entry['model_steps']:,} run-steps in {entry['seconds']:.0f} s",
              flush=True)


def _progress(sweep_dir: Path) -> dict:
    """Runs done and optimizer steps trained, summed over a sweep's runs (0 for a sweep not there)."""
    import grokinterp as gi
    from grokinterp.sweeps.executor import read_progress

    try:
        sw = gi.load_sweep(sweep_dir)
    except gi.GrokinterpError:
        return {"done": 0, "steps": 0}
    st = sw.status()
    steps = 0
    for p in sw.points:
        prog = read_progress(sweep_dir / p["run"])
        cfg = gi.RunConfig.from_dict(p["config"])
        epoch = int(prog.get("epoch", 0))
        steps += min(epoch, cfg.train.epochs) * cfg.steps_per_epoch()
    return {"done": int(st["done"].sum()), "steps": steps}


# -- reading the runs ----------------------------------------------------------------------------------------------
def first_step(ev, level: float, column: str = "test_acc") -> int | None:
    hit = ev[ev[column] >= level]
    return int(hit["step"].iloc[0]) if len(hit) else None


def run_row(run, *, op: str, frac: float, seed: int, source: str) -> dict | None:
    """One run's numbers (``None`` when nothing is flushed yet)."""
    ev = run.metrics
    ev = ev[ev["test_acc"].notna()]
    if not len(ev):
        return None
    rc = run.config
    spe = rc.steps_per_epoch()
    stopped = run.stopped
    steps_trained = (int(run.progress.get("epoch", 0)) * spe if not run.finished else rc.total_steps())
    if stopped is not None:  # the rule and the wall limit stop at an epoch's boundary
        ended = f"generalized: stopped by the rule at step {steps_trained}"
    elif run.finished:
        ended = "ran the full budget" + ("" if first_step(ev, LEVEL) is not None else " without generalizing")
    else:
        ended = f"stopped by the wall limit at step {steps_trained}"
    return {"source": source, "op": op, "frac": frac, "seed": seed, "n_train": rc.n_train(),
            "batch_size": rc.train.batch_size, "steps_per_epoch": spe,
            "step_test_95": first_step(ev, 0.95), "step_test_99": first_step(ev, LEVEL),
            "step_train_99": first_step(ev, LEVEL, "train_acc"), "steps_trained": steps_trained,
            "budget_steps": rc.total_steps(), "eval_every_steps": rc.train.eval_every * spe,
            "final_train_acc": float(ev["train_acc"].iloc[-1]), "final_test_acc": float(ev["test_acc"].iloc[-1]),
            "finished": bool(run.finished), "stopped_by_rule": stopped is not None,
            "done": bool(run.finished) or stopped is not None, "ended": ended, "run": str(run.path)}


def sweep_rows(args) -> tuple[list[dict], list[dict]]:
    """Rows of every run of this invocation's sweeps (the specs as restricted: the same directories
    :func:`train` writes), and the points not started (a sweep not there yet: every point)."""
    import grokinterp as gi
    from grokinterp.sweeps.spec import SweepSpec

    rows, missing = [], []
    for doc, name, d in derived_sweeps(args):
        if not (d / "sweep.json").exists():
            for p in SweepSpec.from_dict(doc).points():
                v = p.values
                missing.append({"source": name, "op": v.get("operation"), "frac": v.get("frac_train"),
                                "seed": v.get("seed"), "ended": "not started"})
            continue
        sw = gi.load_sweep(d)
        for p in sw.points:
            v = p["values"]
            op, frac, seed = v.get("operation"), v.get("frac_train"), v.get("seed")
            rd = sw.path / p["run"]
            row = None
            if (rd / "run.json").exists():
                try:
                    row = run_row(gi.load_run(rd), op=op, frac=frac, seed=seed, source=d.name)
                except gi.GrokinterpError as e:  # still training elsewhere, or damaged: say so
                    print(f"  {rd}: {e}", flush=True)
            if row is None:
                missing.append({"source": d.name, "op": op, "frac": frac, "seed": seed, "ended": "not started"})
            else:
                rows.append(row)
    return rows, missing


def earlier_rows(args) -> list[dict]:
    """The first reproduction's rows (``--out``/earlier/runs.csv, committed) and runs of the older layout."""
    import pandas as pd

    import grokinterp as gi

    out = []
    csv = args.out / "earlier" / "runs.csv"
    if csv.exists():
        df = pd.read_csv(csv)
        for r in df.to_dict("records"):
            r = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            r.update(source="earlier (train_stacked, 1,005 steps)", done=bool(r.get("finished")),
                     stopped_by_rule=False, ended="ran the full budget (1,005 steps)")
            out.append(r)
    d = args.earlier_runs_dir
    if d is not None and d.is_dir():
        for rd in sorted(d.iterdir()):
            m = re.fullmatch(r"(\w+)-f([\d.]+)-s(\d+)", rd.name)
            if not m or not (rd / "run.json").exists():
                continue
            try:
                row = run_row(gi.load_run(rd), op=m[1], frac=float(m[2]), seed=int(m[3]), source=f"earlier: {d}")
            except gi.GrokinterpError as e:
                print(f"  {rd}: {e}", flush=True)
                continue
            if row is not None:
                if not row["done"]:
                    row["ended"] = f"trained to step {row['steps_trained']} (older layout: no stop record)"
                out.append(row)
    return out


def cells_of(rows: list[dict], missing: list[dict]) -> list[dict]:
    """Per (source, operation, fraction): the seeds' steps, whether most reached 99 %, and whether it finished."""
    import pandas as pd

    df = pd.DataFrame(rows)
    cells = []
    if len(df):
        for (src, op, frac), g in df.groupby(["source", "op", "frac"], sort=False):
            trained = int(g["steps_trained"].max())
            s99 = S.seed_spread(g["step_test_99"].tolist(), trained)
            s95 = S.seed_spread(g["step_test_95"].tolist(), trained)
            n_missing = sum(1 for m in missing if (m["source"], m["op"], m["frac"]) == (src, op, frac))
            unfinished = [r["ended"] for r in g.to_dict("records") if not r["done"]]
            cells.append({"source": src, "op": op, "frac": frac, "n": len(g) + n_missing, "seeds": g["seed"].tolist(),
                          "steps_trained_min": int(g["steps_trained"].min()), "steps_trained_max": trained,
                          "budget_steps": int(g["budget_steps"].max()), "step_test_99": s99, "step_test_95": s95,
                          "generalized": s99["n_reached"] >= (len(g) + n_missing) // 2 + 1,
                          "finished": not unfinished and not n_missing,
                          "not_finished": unfinished + ["not started"] * n_missing})
    seen = {(c["source"], c["op"], c["frac"]) for c in cells}
    for m in missing:
        key = (m["source"], m["op"], m["frac"])
        if key not in seen:
            seen.add(key)
            n = sum(1 for x in missing if (x["source"], x["op"], x["frac"]) == key)
            cells.append({"source": m["source"], "op": m["op"], "frac": m["frac"], "n": n, "seeds": [],
                          "generalized": False, "finished": False, "not_finished": ["not started"] * n})
    return cells


def minimum_fractions(cells: list[dict]) -> dict:
    out = {}
    for op in dict.fromkeys(c["op"] for c in cells):
        cs = [c for c in cells if c["op"] == op and c["seeds"]]
        ok = sorted({c["frac"] for c in cs if c["generalized"]})
        out[op] = {"min_frac_generalized": ok[0] if ok else None, "fracs_run": sorted({c["frac"] for c in cs}),
                   "within_steps": max((c["steps_trained_max"] for c in cs), default=None),
                   "note": "smallest fraction at which most seeds reached 99 % test accuracy within the steps "
                           "trained" if ok else "no fraction run generalized within the steps trained"}
    return out


def speed(wall: list[dict]) -> dict:
    secs = sum(w["seconds"] for w in wall)
    runs = sum(w["runs_done"] for w in wall)
    steps = sum(w["model_steps"] for w in wall)
    return {"wall_s": secs, "runs_done": runs, "run_steps": steps,
            "runs_per_hour": runs / (secs / 3600) if secs else None,
            "run_steps_per_s": steps / secs if secs else None, "invocations": len(wall)}


def summarise(args, wall: list[dict]) -> dict:
    import pandas as pd
    import plotly.graph_objects as go

    rows, missing = sweep_rows(args)
    early = earlier_rows(args)
    cells = cells_of(rows, missing)
    early_cells = cells_of(early, [])
    summary = {"settings": S.settings(args), "theirs": THEIRS, "cells": cells,
               "min_fraction": minimum_fractions(cells), "not_finished": [c for c in cells if not c["finished"]],
               "speed": speed(wall), "wall": wall, "runs": rows, "not_started": missing,
               "earlier": {"cells": early_cells, "min_fraction": minimum_fractions(early_cells), "runs": early}}
    args.out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows + early)
    if len(df):
        tmp = args.out / ".runs.csv.tmp"
        df.drop(columns="run", errors="ignore").to_csv(tmp, index=False)
        tmp.replace(args.out / "runs.csv")
    flat = [{"source": c["source"], "op": c["op"], "frac": c["frac"], "n": c["n"],
             "reached_99": (c.get("step_test_99") or {}).get("n_reached", 0),
             # the median where most seeds reached 99 % (then it is a reached value); else undefined
             "median_step_99": (c.get("step_test_99") or {}).get("median") if c["generalized"] else None,
             "steps_trained_max": c.get("steps_trained_max"), "budget_steps": c.get("budget_steps"),
             "generalized": c["generalized"], "finished": c["finished"],
             "not_finished": "; ".join(sorted(set(c["not_finished"])))} for c in cells + early_cells]
    cells_df = pd.DataFrame(flat)
    if len(cells_df):
        tmp = args.out / ".cells.csv.tmp"
        cells_df.to_csv(tmp, index=False)
        tmp.replace(args.out / "cells.csv")
    S.write_json(args.out / "summary.json", summary)

    fig = go.Figure()
    for src, cs_all in (("sweep", cells), ("earlier", early_cells)):
        for op in dict.fromkeys(c["op"] for c in cs_all):
            cs = sorted((c for c in cs_all if c["op"] == op and c.get("step_test_99")), key=lambda c: c["frac"])
            med = [c["step_test_99"]["median"] if c["generalized"] else None for c in cs]
            if not any(m is not None for m in med):
                continue
            fig.add_trace(go.Scatter(x=[c["frac"] for c in cs], y=med, mode="lines+markers",
                                     name=f"{OPS.get(op, op)}" + (" (earlier)" if src == "earlier" else "")))
    fig.update_layout(template="plotly_white", yaxis_type="log", height=460, xaxis_title="training fraction",
                      yaxis_title="optimizer steps to 99 % test accuracy (median over seeds)",
                      title="Steps to generalization against training fraction (their Figure 1, centre)")
    sp = summary["speed"]
    per_hour = f"{sp['runs_per_hour']:.1f}" if sp["runs_per_hour"] else "—"
    per_s = f"{sp['run_steps_per_s']:.2f}" if sp["run_steps_per_s"] else "—"
    intro = ("<p>Preset <code>power</code>, specs <code>analyses/specs/power_study_*.toml</code>, trained with "
             "<code>grokinterp.sweep</code> and the specs' stop rule (99 % test accuracy held at 3 evaluations). "
             "Their budget is 10<sup>5</sup> updates; ours per cell is in the table (budget_steps). "
             f"Wall time of the invocations that trained: {sp['wall_s']:.0f} s, {sp['runs_done']} runs done "
             f"({per_hour} runs per hour), {sp['run_steps']:,} run-steps ({per_s} per second).</p>")
    S.write_report(args.out / "power_fractions.html", "Power et al.'s study: minimum training fraction per operation",
                   intro, [("Steps to 99 % test accuracy", "Median over seeds where most seeds reached it.", fig),
                           ("Cells", "Per operation and fraction; not_finished says why a cell is not done.",
                            cells_df),
                           ("Per run", "First evaluated step at or above each level.",
                            df.drop(columns="run", errors="ignore") if len(df) else pd.DataFrame())])
    if len(cells_df):
        print(cells_df.to_string(index=False))
    for op, m in summary["min_fraction"].items():
        print(op, m)
    print("speed", json.dumps(sp))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ops is not None:
        bad = [o for o in args.ops.split(",") if o and o not in OPS]
        if bad:
            raise SystemExit(f"--ops: unknown {bad}; known: {', '.join(OPS)}")
    wall_path = args.out / "wall.json"
    wall = json.loads(wall_path.read_text()) if wall_path.exists() else []
    if not isinstance(wall, list):  # the earlier layout's {cell: seconds}: kept under earlier/
        wall = []
    if not args.report_only:
        try:
            train(args, wall)
        finally:
            S.write_json(wall_path, wall)
    summarise(args, wall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
