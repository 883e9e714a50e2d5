"""The CLI and the Run API explain themselves: help with the chosen preset's values and every choice,
"did you mean", an explicit message when nothing was trained, torch threads chosen and recorded,
consistent table properties with documented NaN semantics."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from _helpers import cli

import grokinterp as g
from grokinterp.cli import main
from grokinterp.config import OPTIMIZER_NAMES, PRESETS, SECTIONS, field_docs, make_config
from grokinterp.errors import ConfigError
from grokinterp.tasks import SPLIT_METHODS, task_names
from grokinterp.training.callbacks import Callback
from grokinterp.training.loop import TrainingInterrupted


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # argparse wraps help (at hyphens too) to the terminal width


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


# -- help ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_train_help_shows_the_values_of_the_chosen_preset(capsys, preset):
    argv = ("train", "--preset", preset) if preset else ("train",)
    text = " ".join(_help(capsys, *argv).split())  # argparse wraps lines
    cfg = make_config(preset)
    for sec in SECTIONS:
        for f in dataclasses.fields(type(getattr(cfg, sec))):  # the model fields of the preset's family
            if f.name in ("n_ctx", "windows") or (sec, f.name) in (("model", "p"), ("model", "eq_logit")):
                continue
            value = getattr(getattr(cfg, sec), f.name)
            shown = (repr(value) if isinstance(value, str) else ",".join(value) or "none" if isinstance(value, tuple)
                     else str(value))  # a tuple (grad_transforms) as its comma-separated names
            assert f"[{preset}: {shown}]" in text, (sec, f.name, shown)
    other = "paper" if preset != "paper" else "quick"
    assert f"[{other}:" not in text


def test_train_help_default_preset_is_quick_and_lists_every_choice(capsys):
    text = " ".join(_help(capsys, "train").split())
    assert "[quick: 0.002]" in text and "[quick: 3000]" in text and "[paper:" not in text
    assert "{" + ",".join(task_names()) + "}" in text
    assert "{" + ",".join(sorted(SPLIT_METHODS)) + "}" in text
    assert "{" + ",".join(OPTIMIZER_NAMES) + "}" in text
    assert "{relu,gelu,quadratic}" in text and "{default,paper}" in text
    assert "{" + ",".join(PRESETS) + "}" in text and "{transformer,mlp}" in text
    # what each field means comes from the config docstrings, for every field
    docs = field_docs()
    assert all((sec, f.name) in docs for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls))
    assert "peak learning rate" in text and "full-batch steps" in text


def test_the_light_weight_optimizer_list_is_the_registry():
    from grokinterp.training.optim import OPTIMIZERS, register_optimizer

    assert set(OPTIMIZER_NAMES) == set(OPTIMIZERS)
    register_optimizer("rmsprop_test", lambda params, tc, o: torch.optim.RMSprop(params.values(), lr=o.lr),
                       "RMSprop (test)")
    try:
        assert OPTIMIZER_NAMES["rmsprop_test"] == "RMSprop (test)"
    finally:
        OPTIMIZERS.pop("rmsprop_test")
        OPTIMIZER_NAMES.pop("rmsprop_test")


def test_help_stays_off_torch():
    code = ("import sys; from grokinterp.cli import main\n"
            "try:\n    main(['train', '--preset', 'paper', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformer_lens' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split()[-2:] == ["False", "False"]


# -- did you mean ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,hint", [
    (["train", "--epohcs", "10"], "did you mean --epochs?"),
    (["train", "--frac_train", "0.3"], "did you mean --frac-train?"),
    (["train", "--operation", "ad"], "did you mean 'add'?"),
    (["train", "--optimizer", "admaw"], "did you mean 'adamw'?"),
    (["trian"], "did you mean 'train'?"),
    (["report", "run", "--max-chekpoints", "3"], "did you mean --max-checkpoints?"),
])
def test_mistyped_flags_and_choices_suggest_the_closest(argv, hint):
    res = cli(*argv)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and hint in lines[0] and "Traceback" not in res.stderr
    cmd = "grokinterp" if argv[0] == "trian" else f"grokinterp {argv[0]}"
    assert lines[0].startswith(f"{cmd}: error:")


# -- nothing trained, said so ----------------------------------------------------------------------
def test_rerunning_a_finished_run_says_it_trained_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--p", "13", "--d-model", "32", "--d-mlp", "64", "--epochs", "30", "--every",
            "10", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("trained 30 epochs with 1 torch thread\n")
    shard_times = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = cli(*args)  # the real command line, once
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing to train: {out} already holds this run, finished at epoch 30")
    assert "--overwrite" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == shard_times
    run = g.train(make_config("tiny", p=13, d_model=32, d_mlp=64, epochs=30, every=10), out, progress=False)
    assert run.session == {"action": "already_finished", "start_epoch": 30, "end_epoch": 30, "epochs_trained": 0,
                           "threads": None}
    assert g.load_run(out).session is None


# -- threads ---------------------------------------------------------------------------------------
class _StopAt(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_step(self, loop, epoch: int) -> None:
        if epoch + 1 == self.epoch:
            loop.request_stop()


def test_threads_default_to_one_are_recorded_and_restored(tmp_path):
    before = torch.get_num_threads()
    cfg = make_config("tiny", p=13, d_model=32, d_mlp=64, epochs=40, every=10, flush_every=2)
    run = g.train(cfg, tmp_path / "one", progress=False)
    assert run.info["device"]["torch_threads"] == 1 == run.session["threads"]
    assert torch.get_num_threads() == before
    run = g.train(cfg, tmp_path / "three", progress=False, threads=3)
    assert run.info["device"]["torch_threads"] == 3 and torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="threads: must be a positive integer"):
        g.train(cfg, tmp_path / "bad", progress=False, threads=0)
    assert not (tmp_path / "bad").exists()
    # a resume trains with the recorded count; another count works but warns
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, tmp_path / "stopped", progress=False, threads=2, callbacks=[_StopAt(20)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = g.resume(tmp_path / "stopped", progress=False)
    assert resumed.session["action"] == "resumed" and resumed.session["threads"] == 2
    assert resumed.session["start_epoch"] == 20 and resumed.session["epochs_trained"] == 20
    with pytest.raises(TrainingInterrupted):
        g.train(cfg, tmp_path / "stopped2", progress=False, threads=2, callbacks=[_StopAt(20)])
    with pytest.warns(UserWarning, match="resuming with 1 torch threads; the run was trained with 2"):
        g.resume(tmp_path / "stopped2", progress=False, threads=1)
    # the same config, seed and thread count: bit-identical, resumed or not
    ref = g.train(cfg, tmp_path / "ref", progress=False, threads=2)
    for name, stack in resumed.stacks().items():
        assert torch.equal(stack, ref.stack(name)), name


def test_cli_threads_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--p", "13", "--d-model", "32", "--d-mlp", "64", "--epochs", "10",
                 "--out", str(out), "--no-progress", "--threads", "2"]) == 0
    assert "with 2 torch threads" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["device"]["torch_threads"] == 2
    assert main(["info", str(out)]) == 0 and "(2 torch threads)" in capsys.readouterr().out
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err and not (tmp_path / "x").exists()


# -- the Run's tables ------------------------------------------------------------------------------
def test_metrics_nan_semantics_and_evals_property(tiny_run):
    m, E, k = tiny_run.metrics, tiny_run.config.train.epochs, tiny_run.config.train.eval_every
    evaluated = (m["epoch"] % k == 0) | (m["epoch"] == E)
    assert m["train_loss"].notna().all()
    for col in ("test_loss", "test_acc", "train_acc"):
        assert np.array_equal(m[col].notna().to_numpy(), evaluated.to_numpy()), col
    assert m["lr"].iloc[:-1].notna().all() and np.isnan(m["lr"].iloc[-1])  # no step at the final epoch
    ev = tiny_run.evals
    assert list(ev.columns) == ["epoch", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert not ev.isna().any().any() and ev["epoch"].tolist() == m.loc[evaluated, "epoch"].tolist()
    with pytest.warns(DeprecationWarning, match="run.evals"):
        old = tiny_run.eval_metrics()
    assert old.drop(columns="lr").equals(ev)
    assert isinstance(type(tiny_run).metrics, property) or hasattr(type(tiny_run).metrics, "__get__")
    assert isinstance(type(tiny_run).evals, property)


# -- the README's flags ------------------------------------------------------------------------------
def _readme_flag_lines() -> list[list[str]]:
    """Every command line of the README's interventions block, as argv after ``train``: comments dropped,
    ``[optional]`` parts kept, and each ``a|b|c`` choice expanded into one line per value."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Interventions", 1)[1].split("```", 2)[1]
    lines: list[list[str]] = []
    for raw in block.splitlines():
        tokens = raw.split("#", 1)[0].replace("[", " ").replace("]", " ").split()
        if not tokens:
            continue
        choices = [i for i, t in enumerate(tokens) if "|" in t]
        lines.append([t.split("|")[0] for t in tokens])
        for i in choices:
            for value in tokens[i].split("|")[1:]:
                lines.append([value if j == i else t.split("|")[0] for j, t in enumerate(tokens)])
    return lines


def _readme_commands() -> list[list[str]]:
    """Every ``grokinterp ...`` command of the README's bash blocks (not the synopsis, which has
    placeholders), as argv after ``grokinterp``."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    out = []
    for block in readme.split("```bash")[1:]:
        for line in block.split("```", 1)[0].splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["grokinterp"]:
                    out.append(words[1:])
    return out


def test_every_readme_flag_is_accepted_in_a_fresh_interpreter():
    """Each flag of the README's interventions block parses and makes a valid config, and every
    `grokinterp ...` command of its bash blocks parses, in a fresh
    interpreter where only the CLI module is imported (as for `grokinterp train ...`: the CLI's choices
    must not depend on training/ having been imported); and every optimizer training/optim.py registers
    is a choice of --optimizer."""
    lines = _readme_flag_lines()
    assert len(lines) >= 10 and any("ortho_adamw" in line for line in lines)
    commands = _readme_commands()
    assert len(commands) >= 6 and ["report", "checkpoints/quick"] in commands
    code = f"""
import json, sys
from grokinterp.cli import build_parser, _overrides, _check_knobs_used
from grokinterp.config import make_config
assert "grokinterp.training.optim" not in sys.modules
parser = build_parser("tiny")
bad = []
for argv in {lines!r}:
    try:
        args = parser.parse_args(["train", "--preset", "tiny", *argv])
        ov = _overrides(args)
        _check_knobs_used(ov, make_config("tiny", **ov))
    except SystemExit as e:
        bad.append((argv, "exit %s" % e.code))
    except Exception as e:
        bad.append((argv, repr(e)))
for argv in {commands!r}:
    try:
        build_parser("tiny").parse_args(argv)
    except SystemExit as e:
        bad.append((argv, "exit %s" % e.code))
choices = set(parser.subcommands["train"]._option_string_actions["--optimizer"].choices)
from grokinterp.training.optim import OPTIMIZERS
print(json.dumps({{"bad": bad, "unlisted": sorted(set(OPTIMIZERS) - choices)}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"bad": [], "unlisted": []}, (out, res.stderr[-2000:])


def test_readme_optimizer_trains_from_the_command_line(tmp_path):
    res = cli("train", "--preset", "tiny", "--epochs", "2", "--optimizer", "ortho_adamw", "--no-progress",
              "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["train"]["optimizer"] == "ortho_adamw"


# -- rough edges a newcomer meets -------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "info", "report", "verify", "import-legacy", "watch", "sweep",
                                     "sweep-report"])
def test_help_prints_percent_signs_once(capsys, command):
    text = _help(capsys, command)
    assert "%%" not in text, [line for line in text.splitlines() if "%%" in line]


def test_counts_are_pluralised(tmp_path):
    res = cli("sweep", "--preset", "tiny", "--seeds", "0,1", "--dry-run", "--out", str(tmp_path / "sw"))
    assert res.returncode == 0, res.stderr
    assert "2 runs (0 finished" in res.stdout and "1 job: 1 stack of 2 runs, 0 single runs" in res.stdout
    res = cli("sweep", "--preset", "tiny", "--seeds", "0", "--no-stack", "--dry-run", "--out", str(tmp_path / "one"))
    assert res.returncode == 0, res.stderr
    assert "1 run (0 finished" in res.stdout and "1 job: 0 stacks, 1 single run" in res.stdout


def test_a_run_trained_from_python_records_no_preset(tmp_path):
    """`preset` is recorded when a command line named one, and left out (not null) for a config built in
    Python; runs of release 0.1.0 with "preset": null still load."""
    run = g.train(make_config("tiny", epochs=2, every=1), tmp_path / "py", progress=False)
    info = json.loads((run.path / "run.json").read_text())
    assert "preset" not in info and run.summary()["preset"] is None
    res = cli("info", str(run.path))
    assert res.returncode == 0 and "preset" not in res.stdout, res.stdout
    info["preset"] = None
    (run.path / "run.json").write_text(json.dumps(info))
    assert g.load_run(run.path, check=False).info["preset"] is None  # (the manifest's digest is now stale)


def test_executed_notebooks_are_ignored_by_git():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    res = subprocess.run(["git", "check-ignore", "-q", "notebooks/01_quickstart.nbconvert.ipynb"], cwd=root)
    assert res.returncode == 0, "an executed notebook (jupyter nbconvert --execute) would show as untracked"


@pytest.mark.parametrize("argv, message", [
    (["info", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["report", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["verify", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["watch", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["train", "--resume", "/nonexistent/run"], "/nonexistent/run: no such run directory"),
    (["sweep", "--resume", "/nonexistent/sw"], "/nonexistent/sw: no such sweep directory"),
    (["sweep-report", "/nonexistent/sw"], "/nonexistent/sw: no such sweep directory"),
    (["import-legacy", "/nonexistent/f.pth", "/tmp/out"], "/nonexistent/f.pth: no such file"),
    (["train", "--preset", "tiny", "--lr", "-1"], "train.lr"),
    (["train", "--preset", "tiny", "--lrr", "1"], "did you mean --lr"),
])
def test_cheap_errors_answer_before_torch_loads(argv, message):
    """A mistyped path or flag is refused (exit 2, one line naming it) without importing torch, which
    takes seconds to load."""
    code = f"""
import sys
from grokinterp.cli import main
try:
    code = main({argv!r})
except SystemExit as e:
    code = e.code
print("torch loaded" if "torch" in sys.modules else "torch not loaded", code)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip().endswith("torch not loaded 2"), (res.stdout, res.stderr)
    assert message in res.stderr and len(res.stderr.strip().splitlines()) <= 2, res.stderr
