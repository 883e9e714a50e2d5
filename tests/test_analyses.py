"""The studies in analyses/ run from the command line and write their summaries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


@pytest.mark.parametrize("script", ["progress_measures_paper.py", "train_fraction.py", "phase_dates.py",
                                    "seed_statistics.py", "phase_diagram.py", "clock_pizza.py", "sub_terms.py",
                                    "grokfast_lee.py", "semi_grokking.py"])
def test_help(script):
    res = subprocess.run([PY, str(ROOT / "analyses" / script), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "usage" in res.stdout.lower()


def test_progress_measures_paper_on_a_run(tiny_run, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run([PY, str(ROOT / "analyses" / "progress_measures_paper.py"), "--run", str(tiny_run.path),
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["quantity"]: r for r in summary["comparison"]}
    assert rows["key frequencies (count)"]["paper"] == 5
    assert rows["key frequencies (count)"]["ours"] == len(summary["ours"]["key_frequencies"])
    # each phase date is compared under its own definition: the paper's dates beside our paper-rule dates
    paper_mem = rows["memorization ends (epoch), paper's definition: excluded loss turns up"]
    assert paper_mem["paper"] == 1400 and paper_mem["ours"] == summary["ours"]["memorization_end_paper"]
    ours_mem = rows["memorization ends (epoch), ours: train accuracy ≥ 99 %"]
    assert ours_mem["ours"] == summary["ours"]["memorization_end"] and "not reported" in ours_mem["paper"]
    assert (out / "report.html").stat().st_size > 100_000 and (out / "figures" / "progress_measures.html").exists()
    assert (out / "comparison.csv").read_text().startswith("quantity,ours,paper")


def test_progress_measures_paper_bad_run(tmp_path):
    res = subprocess.run([PY, str(ROOT / "analyses" / "progress_measures_paper.py"), "--run", str(tmp_path / "x"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no such run directory" in res.stderr


def test_train_fraction_smoke(tmp_path):
    res = subprocess.run([PY, str(ROOT / "analyses" / "train_fraction.py"), "--preset", "tiny", "--p", "23",
                          "--fractions", "0.5,0.8", "--seeds", "0", "--epochs", "150",
                          "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["frac_train"] for r in summary["runs"]] == [0.5, 0.8]
    assert all(r["n_train"] > 0 for r in summary["runs"])
    assert summary["runs"][0]["n_train"] < summary["runs"][1]["n_train"]
    assert (tmp_path / "out" / "train_fraction.html").exists()
    # the phase dates travel with each run, named after their rules
    for name in ("memorization_end_acc99", "circuit_formation_end_restricted99", "memorization_end_paper"):
        assert name in summary["runs"][0] and name in summary["phase_rules"] and name in summary["medians"]
    assert summary["runs"][1]["circuit_formed"] == summary["runs"][1]["circuit_formation_end_restricted99"]


def test_phase_dates_on_a_run(tiny_run, tmp_path):
    import grokinterp as gi

    out = tmp_path / "out"
    res = subprocess.run([PY, str(ROOT / "analyses" / "phase_dates.py"), str(tiny_run.path), str(tiny_run.path),
                          "--until", "600", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    expected = gi.detect_phases(gi.progress_measures(tiny_run, epochs=[e for e in tiny_run.epochs if e <= 600]))
    assert [r["last_epoch"] for r in summary["runs"]] == [600, 600]
    for name, date in expected.dates().items():
        assert summary["runs"][0][name] == date and name in summary["rules"]
        assert summary["spread"][name]["runs"] == 2
    assert summary["runs"][0]["circuit_formed"] == expected.circuit_formation_end
    res = subprocess.run([PY, str(ROOT / "analyses" / "phase_dates.py"), str(tmp_path / "nope"), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no such run directory" in res.stderr


def test_train_fraction_is_a_resumable_sweep(tmp_path):
    args = [PY, str(ROOT / "analyses" / "train_fraction.py"), "--preset", "tiny", "--p", "23", "--fractions", "0.5,0.8",
            "--seeds", "0,1", "--epochs", "100", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    import grokinterp as g

    sw = g.load_sweep(tmp_path / "runs")
    assert len(sw.points) == 4 and sw.finished and all(r.info["stack"]["size"] == 4 for r in sw.runs().values())
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)  # again: nothing to train
    assert res.returncode == 0 and "4 finished, 0 to resume, 0 to train" in res.stdout + res.stderr


def test_seed_statistics_and_phase_diagram_on_small_sweeps(tmp_path):
    spec = tmp_path / "seeds.toml"
    spec.write_text('preset = "tiny"\nseeds = [0, 1, 2]\n[fixed]\np = 23\nepochs = 200\nevery = 20\n')
    res = subprocess.run([PY, str(ROOT / "analyses" / "seed_statistics.py"), "--spec", str(spec), "--sweep-dir",
                          str(tmp_path / "sw"), "--out", str(tmp_path / "out"), "--max-checkpoints", "20"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    rows = {r["quantity"]: r for r in summary["distributions"]}
    assert summary["runs"] == 3 and set(rows["n_key_frequencies"]["per_seed"]) == {"0", "1", "2"}
    assert rows["neurons_explained_fraction"]["paper"].startswith("433")
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "distributions.csv").exists()
    spec = tmp_path / "pd.toml"
    spec.write_text('preset = "tiny"\nseeds = [0]\n[fixed]\np = 23\nepochs = 100\nevery = 50\n'
                    '[grid]\noperation = ["add", "sub"]\nweight_decay = [0.5, 2.0]\nfrac_train = [0.5, 0.8]\n')
    res = subprocess.run([PY, str(ROOT / "analyses" / "phase_diagram.py"), "--spec", str(spec), "--sweep-dir",
                          str(tmp_path / "pd"), "--out", str(tmp_path / "pdo")], capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "pdo" / "summary.json").read_text())
    assert len(summary["cells"]) == 8 and summary["grid"][0].startswith("operation = add")


def test_clock_pizza_in_zhong_layout_smoke(tmp_path):
    """--layout a_b: the runs (coefficients × seeds) train as one stack in Zhong et al.'s layout, and the summary
    and table carry per-run signatures, medians over seeds, the untrained controls and their released values."""
    res = subprocess.run([PY, str(ROOT / "analyses" / "clock_pizza.py"), "--layout", "a_b", "--p", "7", "--epochs",
                          "4", "--seeds", "0,1", "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["attn_coeff"], r["seed"]) for r in summary["runs"]] == [(1.0, 0), (1.0, 1), (0.0, 0), (0.0, 1)]
    assert summary["settings"]["epochs"] == 4 and summary["zhong_epochs"] == 20000
    assert [(c["attn_coeff"], c["seed"]) for c in summary["controls"]] == [(1.0, 0), (1.0, 1), (0.0, 0), (0.0, 1)]
    assert set(summary["spreads"]) == set(summary["control_spreads"]) == {"1", "0"}
    assert summary["spreads"]["0"]["gradient_symmetricity"]["n"] == 2
    infos = [json.loads((Path(r["run"]) / "run.json").read_text()) for r in summary["runs"]]
    assert all(i["config"]["model"]["input_layout"] == "a_b" for i in infos)
    assert {i["stack"]["id"] for i in infos} != {None} and len({i["stack"]["id"] for i in infos}) == 1
    assert [i["config"]["model"]["attn_coeff"] for i in infos] == [1.0, 1.0, 0.0, 0.0]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "GS 0.993 (0.947–0.997)" in table and table.count("\n| 1 | ") == 3


def test_llc_paper_help_and_a_report_without_chunks_exits_2(tmp_path):
    script = str(ROOT / "analyses" / "llc_paper.py")
    res = subprocess.run([PY, script, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--stage" in res.stdout
    res = subprocess.run([PY, script, "--stage", "report", "--out", str(tmp_path / "out"), "--runs-dir",
                          str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "llc_chunks" in res.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("bad", ["foo=1", "epsilon", "epsilon=abc"])
def test_llc_paper_a_malformed_sampler_exits_2_naming_it(tmp_path, bad):
    """--sampler NAME=VALUE with an unknown name, no '=' or a non-number: exit 2 naming the item, before any
    run is read or written (the llc stage parses it first)."""
    res = subprocess.run([PY, str(ROOT / "analyses" / "llc_paper.py"), "--stage", "llc", "--sampler", bad,
                          "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "--sampler" in res.stderr and bad.split("=")[0] in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_semi_grokking_hysteresis_on_planted_results(tmp_path):
    """Planted runs.csv files: the per-size medians, the thresholds (smallest D from which every larger D has a
    median ≥ 95 %) and the middling runs come out as planted; a bad --scratch exits 2 and writes nothing."""
    import pandas as pd

    scratch, ung = tmp_path / "scratch", tmp_path / "ung"
    scratch.mkdir()
    ung.mkdir()
    rows = [(400, s, a) for s, a in enumerate([0.01, 0.02, 0.01])] + [(900, s, a) for s, a in enumerate([0.3, 0.97, 0.99])] \
        + [(1300, s, 1.0) for s in range(3)]
    pd.DataFrame([{"D": D, "kind": k, "seed": s, "test_acc": a if k == "generalizing" else 0.0, "train_acc": 1.0}
                  for D, s, a in rows for k in ("generalizing", "memorizing")]).to_csv(scratch / "runs.csv", index=False)
    pd.DataFrame([{"D_prime": D, "weight_decay": 1.0, "seed": s, "test_acc": a, "train_acc": 1.0,
                   "test_acc_parent_test": a}
                  for D, acc in [(250, [0.5, 0.6, 0.4]), (400, [0.99, 0.98, 1.0])] for s, a in enumerate(acc)]
                 ).to_csv(ung / "runs.csv", index=False)
    out = tmp_path / "out"
    script = str(ROOT / "analyses" / "semi_grokking.py")
    res = subprocess.run([PY, script, "--scratch", f"{scratch}:1500", "--ungrok", str(ung), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["thresholds_median_95"] == {"from scratch, 1,500 epochs": 900, "ungrokking, weight decay 1": 400}
    table = pd.read_csv(out / "hysteresis.csv")
    got = table.set_index(["condition", "D"])["median"]
    assert got[("from scratch, 1,500 epochs", 900)] == 0.97 and got[("ungrokking, weight decay 1", 250)] == 0.5
    mid = pd.read_csv(out / "middling.csv")
    assert sorted(mid["test_acc"]) == [0.3, 0.4, 0.5, 0.6]  # memorizing rows are not read; 0.97 is not middling
    for bad in ([f"{scratch}"], [f"{tmp_path / 'nope'}:10"]):
        res = subprocess.run([PY, script, "--scratch", *bad, "--ungrok", str(ung), "--out", str(tmp_path / "o2")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "--scratch" in res.stderr and "Traceback" not in res.stderr
        assert not (tmp_path / "o2").exists()
