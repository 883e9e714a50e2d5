"""analyses/double_descent.py (issue 21 item 4): its spec, its per-run and per-cell numbers, the claims'
verdicts on planted grids whose answers are known, and the script end to end on a tiny sweep."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SPEC = ROOT / "analyses" / "specs" / "double_descent.toml"


@pytest.fixture(scope="module")
def dd():
    spec = importlib.util.spec_from_file_location("double_descent_study", ROOT / "analyses" / "double_descent.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_spec_is_huang_grid_with_three_seeds_and_one_stack_group_per_width():
    from grokinterp.sweeps.spec import load_spec
    from grokinterp.training.stacked import stack_key

    spec = load_spec(SPEC)
    pts = spec.points()
    assert len(spec.seeds) >= 3 and len(pts) == 6 * 5 * len(spec.seeds)
    cfgs = [p.config for p in pts]
    assert {c.task.p for c in cfgs} == {113} and {c.task.operation for c in cfgs} == {"add"}
    assert all(c.model.d_mlp == 4 * c.model.d_model and c.model.n_heads == 4 and c.model.n_layers == 1 for c in cfgs)
    assert sorted({c.n_train() for c in cfgs}) == [2000, 2600, 3000, 3500, 4000]
    keys = {}
    for c in cfgs:
        keys.setdefault(stack_key(c), set()).add(c.model.d_model)
    assert len(keys) == 6 and all(len(v) == 1 for v in keys.values())  # one stack group per width


def test_spec_dry_run():
    res = subprocess.run([PY, "-m", "grokinterp", "sweep", str(SPEC), "--dry-run", "--out", "/nonexistent/dd"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "90 runs" in res.stdout and "12 stacks" in res.stdout


def _evals(test_loss, test_acc, train_acc=None):
    n = len(test_loss)
    return pd.DataFrame({"epoch": np.arange(n) * 10, "train_acc": np.ones(n) if train_acc is None else train_acc,
                         "test_acc": test_acc, "train_loss": np.full(n, 0.01), "test_loss": test_loss})


def test_run_row_reads_final_budget_and_pattern(dd):
    # memorize at once, test accuracy at 99 % from evaluation 15 (epoch 150 > 2 × 0): grokking; loss rises then falls
    loss = np.r_[np.linspace(4, 3, 5), np.linspace(3, 8, 5), np.linspace(8, 0.01, 11)]
    acc = np.r_[np.zeros(15), np.ones(6)]
    train = np.r_[0.5, np.ones(20)]
    row = dd.run_row({"name": "x"}, _evals(loss, acc, train), epochs=200, budgets=[100, 200])
    assert row["finished"] and row["epochs_reached"] == 200
    assert row["curve_pattern"] == "grokking" and row["epochwise_double_descent"]
    assert row["test_acc_99_epoch"] == 150 and row["train_acc_99_epoch"] == 10
    assert row["test_loss_at_100"] == pytest.approx(loss[10]) and row["test_loss_at_200"] == pytest.approx(0.01)
    assert row["final_test_loss"] == pytest.approx(0.01) and row["generalized"]
    # compared at epoch 120, the same run has not generalized yet and its loss has not come down again
    cut = dd.run_row({"name": "x"}, _evals(loss, acc, train), epochs=200, budgets=[120])
    assert cut["finished"] and cut["epochs_reached"] == 200 and not cut["generalized"]
    assert cut["final_test_loss"] == pytest.approx(loss[12]) and cut["curve_pattern"] == "not_generalized"
    assert cut["test_acc_99_epoch"] is None
    between = dd.run_row({"name": "x"}, _evals(loss, acc, train), epochs=200, budgets=[105, 200])
    assert between["test_loss_at_105"] == pytest.approx(loss[10])  # the last evaluation at or before 105
    beyond = dd.run_row({"name": "x"}, _evals(loss, acc, train), epochs=200, budgets=[300])
    assert not beyond["finished"] and np.isnan(beyond["test_loss_at_300"])
    short = dd.run_row({"name": "y"}, _evals(loss[:8], acc[:8]), epochs=200, budgets=[100])
    assert not short["finished"] and short["epochs_reached"] == 70 and not short["generalized"]


WIDTHS, SIZES = [16, 24, 32, 40, 48, 64], [2000, 2600, 3000, 3500, 4000]


def _grid(d_crit: dict, acc_2600: dict, seeds=3) -> pd.DataFrame:
    """Runs whose final test accuracy is 1 at n ≥ d_crit[w], acc_2600[w] at 2600 below it, else 0."""
    rows = []
    for w in WIDTHS:
        for n in SIZES:
            for s in range(seeds):
                dc = d_crit[w]
                acc = 1.0 if dc is not None and n >= dc else (acc_2600[w] if n == 2600 else 0.0)
                row = {"name": f"{w}_{n}_{s}", "hidden": w, "n_train": n, "seed": s, "epochs": 100,
                       "epochs_reached": 100, "finished": True, "final_test_acc": acc, "final_train_acc": 1.0,
                       "final_test_loss": -np.log(max(acc, 1e-3)) + 0.01 * s, "generalized": acc >= 0.99,
                       "curve_pattern": "grokking" if acc >= 0.99 else "not_generalized"}
                row["test_loss_at_100"], row["test_acc_at_100"] = row["final_test_loss"], acc
                row["test_acc_at_50"], row["test_loss_at_50"] = acc, row["final_test_loss"]  # settled by epoch 50
                rows.append(row)
    return pd.DataFrame(rows)


HUANG = {16: None, 24: 4000, 32: 4000, 40: 3500, 48: 3000, 64: 3000}
DIP = {16: 0.3, 24: 0.0, 32: 0.0, 40: 0.0, 48: 0.5, 64: 0.6}


def test_cells_and_d_crit_on_a_planted_grid(dd):
    c = dd.cells(_grid(HUANG, DIP), [50, 100])
    assert len(c) == 30 and set(c["n_seeds"]) == {3}
    assert dd.d_crit(c) == HUANG
    row = c[(c.hidden == 16) & (c.n_train == 2600)].iloc[0]
    assert row["final_test_acc_median"] == pytest.approx(0.3) and row["n_generalized"] == 0
    assert row["curve_pattern"] == "not_generalized" and row["curve_patterns"] == "not_generalized 3"


def test_claims_reproduced_on_huangs_own_picture(dd):
    grid = _grid(HUANG, DIP)
    cl = {x["claim"]: x for x in dd.claims(dd.cells(grid, [50, 100]), 100, 50)}
    assert set(cl) == set(dd.PAPER)
    for k in ("hidden 64 generalizes at 3,000", "hidden 32 needs 4,000", "D_crit falls with width",
              "dip at 2,600 for hidden 24-40", "semi-grokking near D_crit"):
        assert cl[k]["verdict"] == "reproduced", (k, cl[k])
    # a narrow width outside their Figure 3's range (32-64) that generalizes early (progression) leaves the trend
    cl = {x["claim"]: x for x in dd.claims(dd.cells(_grid({**HUANG, 16: 2600}, DIP), [50, 100]), 100, 50)}
    assert cl["D_crit falls with width"]["verdict"] == "reproduced" and "16: 2600" in cl["D_crit falls with width"]["ours"]
    # the same middling accuracies still rising at the budget (0 at epoch 50) are not semi-grokking
    rising = grid.assign(test_acc_at_50=np.where(grid["final_test_acc"] < 0.99, 0.0, grid["final_test_acc"]))
    cl = {x["claim"]: x for x in dd.claims(dd.cells(rising, [50, 100]), 100, 50)}
    assert cl["semi-grokking near D_crit"]["verdict"].startswith("not separable")


def test_claims_contradicted_on_a_grid_without_them(dd):
    # every width generalizes at 3000, 64 only at 3500; at 2600 accuracy grows with width (no dip, no middle)
    flat = {16: 3000, 24: 3000, 32: 3000, 40: 3000, 48: 3000, 64: 3500}
    rising = {16: 0.0, 24: 0.0, 32: 0.0, 40: 0.0, 48: 0.0, 64: 0.0}
    cl = {x["claim"]: x for x in dd.claims(dd.cells(_grid(flat, rising), [100]), 100)}
    assert cl["hidden 64 generalizes at 3,000"]["verdict"].startswith("contradicted")
    assert "already generalizes at 3,000" in cl["hidden 32 needs 4,000"]["verdict"]
    assert cl["D_crit falls with width"]["verdict"].startswith("contradicted")
    assert cl["dip at 2,600 for hidden 24-40"]["verdict"].startswith("contradicted")
    assert cl["semi-grokking near D_crit"]["verdict"] == "not seen"


def test_modelwise_double_descent_uses_the_epochwise_rule(dd):
    cells = pd.DataFrame({"hidden": WIDTHS, "n_train": 2600, "loss": [3.0, 2.0, 4.0, 5.0, 1.5, 1.0]})
    mw = dd.modelwise_double_descent(cells, 2600, "loss")
    assert mw["double_descent"] and (mw["first_min_width"], mw["peak_width"], mw["second_min_width"]) == (24, 40, 48)
    mono = cells.assign(loss=[5.0, 4.0, 3.0, 2.0, 1.5, 1.0])
    assert dd.modelwise_double_descent(mono, 2600, "loss")["double_descent"] is False


@pytest.mark.slow
def test_script_end_to_end_on_a_tiny_sweep(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("""
name = "tiny double descent"
preset = "tiny"
seeds = [0, 1]
[fixed]
p = 23
frac_train = 0.9
epochs = 60
eval_every = 10
every = 30
log_early = 0
windows = []
[grid]
n_train = [200, 300]
[zip]
d_model = [16, 8]
d_mlp = [64, 32]
""")
    out = tmp_path / "out"
    res = subprocess.run([PY, str(ROOT / "analyses" / "double_descent.py"), "--spec", str(spec), "--sweep-dir",
                          str(tmp_path / "sw"), "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["runs"] == 8 and s["runs_finished"] == 8 and s["budgets"] == [30, 60]
    assert set(s["claims_by_budget"]) == {"30", "60"}
    assert s["claims_by_budget"]["60"]["dip at 2,600 for hidden 24-40"] == s["claims"][3]["verdict"]
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["hidden"].unique()) == [8, 16] and set(runs["curve_pattern"]) <= set(
        ["grokking", "double_descent", "not_generalized", "neither", "too_short"])
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 4 and set(cells["n_seeds"]) == {2}
    assert {c["claim"] for c in s["claims"]} == {
        "hidden 64 generalizes at 3,000", "hidden 32 needs 4,000", "D_crit falls with width",
        "dip at 2,600 for hidden 24-40", "semi-grokking near D_crit"}
    for f in ("double_descent.html", "sweep_report.html", "table.csv"):
        assert (out / f).stat().st_size > 1000, f
    page = (out / "sweep_report.html").read_text()  # plotly.js from its CDN, not embedded (small to commit)
    assert "cdn.plot.ly" in page and len(page) < 1_000_000 and "grokinterp sweep" in page
    # analysing again reads the same runs (the sweep is not retrained) and gives the same numbers
    res2 = subprocess.run([PY, str(ROOT / "analyses" / "double_descent.py"), "--spec", str(spec), "--sweep-dir",
                           str(tmp_path / "sw"), "--out", str(tmp_path / "out2"), "--analyse-only"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res2.returncode == 0, res2.stderr
    pd.testing.assert_frame_equal(runs, pd.read_csv(tmp_path / "out2" / "runs.csv"))


def test_script_refuses_a_missing_sweep(tmp_path):
    res = subprocess.run([PY, str(ROOT / "analyses" / "double_descent.py"), "--analyse-only", "--sweep-dir",
                          str(tmp_path / "none"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode == 2 and "none" in res.stderr
    assert not (tmp_path / "o").exists()
