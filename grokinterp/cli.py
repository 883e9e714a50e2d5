"""Command-line interface: ``grokinterp train | info | report | verify | import-legacy | watch | sweep |
sweep-report | llc``.

Only argparse, the config dataclasses and the task registry (numpy) are imported until a command
runs, so ``--help`` answers at once; torch and transformer_lens load inside the commands.

The CLI explains itself: ``grokinterp train --help`` shows the values of the preset given with
``--preset`` (``grokinterp train --preset paper --help``), the choices of every enumerated field
(operations from the task registry, optimizers from the light-weight list in
:data:`grokinterp.config.OPTIMIZER_NAMES`), and what each field means (from the config
docstrings). A mistyped flag or choice gets a "did you mean". Errors in the input print one line
naming the field, flag or file and exit with status 2; running out of memory prints one line (with how to
resume the run or sweep being written) and exits with status 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .config import (
    ACT_FNS,
    BIAS_MODES,
    COMMON_MODEL_FIELDS,
    DTYPES,
    INIT_METHODS,
    INPUT_LAYOUTS,
    LN_STYLES,
    OPTIMIZER_NAMES,
    POS_EMBEDS,
    PRESET_HELP,
    PRESETS,
    SECTIONS,
    WARMUP_STYLES,
    field_docs,
    make_config,
    model_config_classes,
)
from .errors import GrokinterpError
from .tasks import SPLIT_METHODS, fixed_size, operations_help, task_names

EXIT_USAGE = 2
#: Exit status when a command ran out of memory (a ``MemoryError``, or torch's out-of-memory error):
#: not bad input (2), not a damaged run (``verify``'s 1). The message says how to resume a run being written.
EXIT_NO_MEMORY = 3
DEFAULT_PRESET = "quick"

# Fields not exposed as flags: fixed by the task format, or set through the task's field.
_HIDDEN = {("model", "n_ctx"), ("model", "p"), ("model", "eq_logit")}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and a "did you mean" for mistyped choices."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            names = [str(c) for c in action.choices]
            field = getattr(action, "config_field", None)  # set on the config flags: name the field too
            msg = f"invalid choice{f' for {field}' if field else ''}: {value!r} (choose from {', '.join(names)})"
            if isinstance(action.choices, _TaskNames):
                try:
                    fixed_size(str(value))
                    msg += f"; or a group task: {operations_help().split('; ', 1)[1]}"
                except GrokinterpError as e:  # a group name of an unsupported size: say why
                    msg = str(e)
            close = difflib.get_close_matches(str(value), names, n=1)
            raise argparse.ArgumentError(action, msg + (f"; did you mean {close[0]!r}?" if close else ""))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _window(text: str) -> tuple[int, int, int]:
    try:
        start, stop, every = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:EVERY (e.g. 1000:15000:10), got {text!r}") from None
    return start, stop, every


def _nonempty_path(text: str) -> Path:
    """argparse type of every path argument: an empty path is refused at parse time (exit 2), before any other
    check, not taken as ``.`` (``Path("")`` is the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a directory or file name")
    return Path(text)


def _existing(path: Path | None, what: str) -> Path | None:
    """Refuse a path that does not exist with the loader's own one-line message (``PATH: no such run
    directory``), before the command imports torch: a mistyped path is answered in a fraction of a
    second instead of after torch's few seconds of start-up. Everything else is left to the loader."""
    if path is not None and not os.path.lexists(path):
        raise GrokinterpError(f"{path}: no such {what}")
    return path


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 4,14,35), got {text!r}") from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


class _TaskNames:
    """The operation choices: every registered operation, listed; group tasks (``S5``, ``D59``) are
    named by pattern, so membership also accepts any name a task kind fixes the size of."""

    def __iter__(self):
        return iter(task_names())

    def __contains__(self, name: object) -> bool:
        if name in task_names():
            return True
        try:
            return isinstance(name, str) and fixed_size(name) is not None
        except GrokinterpError:
            return False


def _choices() -> dict[tuple[str, str], Any]:
    """The allowed values of every enumerated config field (no torch import: light-weight lists); a
    family's config class declares its own in ``CHOICES`` (``{field: values}``)."""
    out: dict[tuple[str, str], Any] = {
        ("task", "operation"): _TaskNames(),
        ("task", "split_method"): sorted(SPLIT_METHODS),
        ("model", "act_fn"): list(ACT_FNS),
        ("model", "family"): list(model_config_classes()),
        ("model", "init_method"): list(INIT_METHODS),
        ("model", "bias"): list(BIAS_MODES),
        ("model", "input_layout"): list(INPUT_LAYOUTS),
        ("model", "ln_style"): list(LN_STYLES),
        ("model", "pos_embed"): list(POS_EMBEDS),
        ("train", "optimizer"): list(OPTIMIZER_NAMES),
        ("train", "warmup_style"): list(WARMUP_STYLES),
        ("train", "dtype"): list(DTYPES),
    }
    for cls in model_config_classes().values():
        for name, values in getattr(cls, "CHOICES", {}).items():
            out[("model", name)] = list(dict.fromkeys([*out.get(("model", name), []), *values]))
    return out


def _plain(text: str) -> str:
    """A docstring fragment as plain text for --help (no reST roles or literals; '%' escaped for argparse)."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "").replace("%", "%%")


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        if not value:
            return "none"
        if all(isinstance(v, tuple) for v in value):
            return " ".join(":".join(str(x) for x in v) for v in value)
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, str) else str(value)


def _flag_groups(preset: str, defaults) -> list[tuple[str, str, str, list[tuple[dataclasses.Field, Any, str]]]]:
    """``(title, section, family, [(field, shown default, its label)])`` per flag group: each section, and the
    model section split into the fields every family has and each family's own (a field two families share
    is listed with the first and named in the other's title)."""
    out = []
    for sec, cls in SECTIONS.items():
        title = f"{sec} config ([{preset}: value] = the value of preset {preset!r}; a flag overrides it)"
        if sec != "model":
            out.append((title, sec, "", [(f, getattr(getattr(defaults, sec), f.name), preset)
                                         for f in dataclasses.fields(cls)]))
            continue
        families = model_config_classes()
        current = defaults.model.family
        by_family = {fam: {f.name: f for f in dataclasses.fields(c)} for fam, c in families.items()}
        common = [(by_family[current][n], getattr(defaults.model, n), preset) for n in COMMON_MODEL_FIELDS]
        out.append((f"model config, every family (--family {', '.join(families)}; [{preset}: value] = the "
                    f"value of preset {preset!r})", sec, current, common))
        seen = set(COMMON_MODEL_FIELDS)
        for fam, fields_ in by_family.items():
            rows, shared = [], []
            for name, f in fields_.items():
                if name in COMMON_MODEL_FIELDS:
                    continue
                if name in seen:
                    shared.append(_flag(name))
                    continue
                seen.add(name)
                if name in by_family[current]:  # the preset's family has it (a field two families share)
                    rows.append((f, getattr(defaults.model, name), preset))
                else:
                    rows.append((f, f.default, f"{fam} default"))
            also = f"; also {', '.join(shared)}" if shared else ""
            out.append((f"model config, --family {fam} (these flags are refused for another family{also})",
                        sec, fam, rows))
    return out


def _add_config_flags(parser: argparse.ArgumentParser, preset: str) -> None:
    """One flag per config field; help shows what it means and its value in ``preset`` (a model field
    of another family than the preset's: the family's default), grouped per section and model family."""
    defaults = make_config(preset)
    choices = _choices()
    docs = {fam: field_docs(fam) for fam in model_config_classes()}
    for title, sec, fam, rows in _flag_groups(preset, defaults):
        group = parser.add_argument_group(title)
        fdocs = docs[fam or defaults.model.family]
        for f, default, label in rows:
            if (sec, f.name) in _HIDDEN:
                continue
            doc = f"{_plain(fdocs.get((sec, f.name), sec + '.' + f.name))} [{label}: {_shown(default)}]"
            if sec == "model" and f.name not in COMMON_MODEL_FIELDS:  # a field other families have too
                doc += "".join(f"; --family {other}: {_plain(d[(sec, f.name)])}" for other, d in docs.items()
                               if other != fam and (sec, f.name) in d)
            if (sec, f.name) == ("task", "p"):
                doc = f"{doc} (also sets the model's vocabulary; refused for a group task, whose vocabulary is the " \
                      f"group's order)"
            elif (sec, f.name) == ("task", "operation"):
                doc = f"{doc}. {_plain(operations_help())}"
            kw: dict[str, Any] = {"dest": f.name, "help": doc}
            if (sec, f.name) in choices:
                kw["choices"] = choices[(sec, f.name)]
            if f.name == "windows":
                action = group.add_argument("--window", dest="windows", action="append", type=_window,
                                            metavar="START:STOP:EVERY", help=doc + "; repeatable")
            elif isinstance(default, tuple):
                kw["help"] += "; comma-separated"
                action = group.add_argument(_flag(f.name), type=_name_list, metavar="NAME[,NAME...]", **kw)
            elif f.name == "device":
                action = group.add_argument(_flag(f.name), type=str, metavar="{auto,cpu,cuda,cuda:N,mps}", **kw)
            elif isinstance(default, bool):  # --layer-norm alone means true
                kw["help"] += "; the flag alone means true"
                action = group.add_argument(_flag(f.name), type=_bool, metavar="BOOL", nargs="?", const=True, **kw)
            elif isinstance(default, int) or f.type == "int | None":  # unset by default (train.batch_size)
                action = group.add_argument(_flag(f.name), type=int, metavar="N", **kw)
            elif isinstance(default, float) or f.type == "float | None":  # unset by default (weight_norm_target)
                action = group.add_argument(_flag(f.name), type=float, metavar="X", **kw)
            else:
                action = group.add_argument(_flag(f.name), type=str, metavar=None if "choices" in kw else "S", **kw)
            action.config_field = f"{sec}.{f.name}"  # type: ignore[attr-defined]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    classes = [*SECTIONS.values(), *model_config_classes().values()]
    names = {f.name for cls in classes for f in dataclasses.fields(cls)}
    out = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "windows" in out:
        out["windows"] = tuple(out["windows"])
    return out


#: Flags that act only through a gradient transform: given without one of these in
#: ``--grad-transforms`` they would change nothing, so the command refuses them (exit 2).
_NEEDS_TRANSFORM = {"grokfast_alpha": ("grokfast_ema",), "grokfast_window": ("grokfast_ma",),
                    "grokfast_lamb": ("grokfast_ema", "grokfast_ma")}


def _check_knobs_used(overrides: dict[str, Any], config) -> None:
    """A Grokfast flag given without its filter in ``train.grad_transforms``, or ``--fast-path true`` for a
    model the fast kernels cannot compute (another family, more layers, LayerNorm, other biases or layout),
    is a ConfigError naming it."""
    from .errors import ConfigError

    if overrides.get("fast_path") is True:  # asked for explicitly: the kernels must be able to compute the model
        from .model.families.transformer import fast_kernels_apply

        reason = fast_kernels_apply(config.model)
        if reason is not None:
            raise ConfigError(f"train.fast_path: {reason}, so this run would train through the hooked module "
                              f"anyway; leave --fast-path out")

    for name, needs in _NEEDS_TRANSFORM.items():
        if name in overrides and not set(needs) & set(config.train.grad_transforms):
            raise ConfigError(f"train.{name}: has no effect without {' or '.join(needs)} in train.grad_transforms "
                              f"(add --grad-transforms {needs[0]})")


def build_parser(preset: str = DEFAULT_PRESET) -> argparse.ArgumentParser:
    """The CLI's parser; the ``train`` flags show the values of ``preset`` in their help."""
    parser = _Parser(
        prog="grokinterp",
        description="Train small transformers that grok, keep dense checkpoints, and analyse them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    parser.subcommands = {}  # type: ignore[attr-defined]

    presets = "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items())
    t = sub.add_parser(
        "train", help="train a model and write a run directory",
        usage="grokinterp train [--preset NAME] [--out DIR] [--threads N] [--<config field> VALUE ...]\n"
              "       grokinterp train --resume RUN [--device DEVICE] [--threads N]",
        description="Train on a + b mod p (or another operation mod p, or a finite group such as S5) with full-batch AdamW and write dense checkpoints. "
                    "Flags override the preset's fields; this help shows the values of the preset given with "
                    f"--preset (here {preset!r}; e.g. `grokinterp train --preset paper --help`). Re-running a "
                    "finished run's command trains nothing and says so.")
    t.add_argument("--preset", choices=list(PRESETS), default=DEFAULT_PRESET,
                   help=f"{presets.replace('%', '%%')} (default {DEFAULT_PRESET})")
    t.add_argument("--out", type=_nonempty_path, help="run directory (default: checkpoints/<preset>-<op>-p<p>-<config hash>)")
    t.add_argument("--resume", type=_nonempty_path, metavar="RUN", help="continue an interrupted run (no config flags)")
    t.add_argument("--from", dest="from_", metavar="RUN[@EPOCH]",
                   help="start a new run from a checkpoint of the parent run RUN (its last one unless @EPOCH): its "
                        "config, split and model, a fresh optimizer, --epochs of its own; with --n-train D (or "
                        "--frac-train F: D = round(F · all pairs)) it trains on D of the parent's training pairs "
                        "(--subset-seed), with --random-labels on random labels (--label-seed). The parent must be "
                        "intact (verify), not being trained, and hold that checkpoint; the lineage goes into run.json")
    t.add_argument("--overwrite", action="store_true", help="replace a different run found in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default 1: faster for these small models on a shared machine, and "
                        "bit-reproducible; see grokinterp.training.threads); recorded in run.json; --resume uses "
                        "the recorded count")
    _add_config_flags(t, preset)

    # descriptions are printed as written (argparse %-formats only help strings): a plain '%'
    i = sub.add_parser("info", help="summarise a run", description="Config, checkpoints, final losses, and when "
                       "test accuracy passed 99 %.")
    i.add_argument("run", type=_nonempty_path, metavar="RUN")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    r = sub.add_parser("report", help="write a self-contained HTML report of a run",
                       description="Analyse a run (progress measures, phases, when the circuit formed, key "
                                   "frequencies, neurons, logits, ablations) and write one HTML file with every "
                                   "figure; plotly.js is embedded, so it opens offline.")
    r.add_argument("run", type=_nonempty_path, metavar="RUN")
    r.add_argument("--out", type=_nonempty_path, help="HTML file to write (default: RUN/report.html)")
    r.add_argument("--max-checkpoints", type=int, default=400, metavar="N",
                   help="analyse at most N checkpoints, evenly spread (default 400)")
    r.add_argument("--key-freqs", type=_int_list, metavar="K1,K2,...",
                   help="fix the key frequencies (for a group task other than a + b: key irreps, by index as the "
                        "report lists them; default: chosen at the first checkpoint at or after test accuracy reached 99 %%, else the last)")
    r.add_argument("--summary-json", type=_nonempty_path, metavar="FILE", help="also write the headline numbers as JSON")

    v = sub.add_parser("verify", help="check a run's files against its manifest",
                       description="Re-hash every file of a run and compare with manifest.json; lists each "
                                   "missing, truncated, altered or unlisted file. Exit status: 0 when all is well, "
                                   "1 when a file is damaged, 2 when the run or its manifest cannot be read.")
    v.add_argument("run", type=_nonempty_path, metavar="RUN")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    s = sub.add_parser("sweep", help="train a family of runs (a grid over config fields), resumably",
                       description="Train every point of a sweep: a TOML/JSON spec file and/or --grid flags over any "
                                   "config fields; config flags (--p 59, --epochs 3000) fix fields for every point. "
                                   "Each point is an ordinary run directory under OUT/runs/. Running the same "
                                   "command again skips finished runs and resumes interrupted ones. Runs that share "
                                   "shapes train together as one stacked model.")
    s.add_argument("spec", nargs="?", type=_nonempty_path, metavar="SPEC", help="sweep spec (.toml or .json)")
    s.add_argument("--out", type=_nonempty_path, help="sweep directory (default: checkpoints/sweep-<spec hash>)")
    s.add_argument("--resume", type=_nonempty_path, metavar="SWEEP", help="continue a sweep directory (no spec, no flags)")
    s.add_argument("--preset", choices=list(PRESETS), help="base config of every point (default: the spec's, "
                   "else quick)")
    s.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="an axis of the grid; repeatable (every combination is trained). FIELD may be 'seed' "
                        "(sets split_seed and init_seed)")
    s.add_argument("--zip", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="axes varied together (same number of values each); repeatable")
    s.add_argument("--seeds", type=_int_list, metavar="S1,S2,...", help="seeds (each sets split_seed and init_seed)")
    s.add_argument("--executor", choices=["local", "ray"], help="where jobs run (default local)")
    s.add_argument("--workers", type=int, metavar="N", help="local worker processes training jobs side by side "
                   "(default 1; stacks are cut so that each worker gets one)")
    s.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join (auto, ray://host:10001)")
    s.add_argument("--num-gpus", type=float, metavar="N", help="GPUs per Ray task (one stack per task)")
    s.add_argument("--num-cpus", type=float, metavar="N", help="CPUs per Ray task")
    s.add_argument("--max-stack", type=int, metavar="N", help="most runs trained together (default: from memory)")
    s.add_argument("--no-stack", action="store_true", help="train runs one by one instead of stacked")
    s.add_argument("--max-disk-gb", type=float, metavar="X",
                   help="disk budget; checkpoint schedules are thinned to fit (default 20)")
    s.add_argument("--keep-checkpoints", action="store_true", help="never thin the checkpoint schedules")
    s.add_argument("--dry-run", action="store_true", help="print the plan (runs, stacks, disk, cost) and write nothing")
    s.add_argument("--max-minutes", type=float, metavar="M", help="wall-clock budget of this invocation: running "
                   "stacks stop cleanly (flushed, resumable) after M minutes and no new one starts")
    s.add_argument("--until", metavar="HH:MM", help="the same budget as a UTC time of day (the next such time)")
    s.add_argument("--overwrite", action="store_true", help="replace a different sweep found in --out")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(s, preset)

    sr = sub.add_parser("sweep-report", help="tabulate a sweep and write its HTML report",
                        description="One row per run (config, epochs to 99 % test accuracy, regime, key frequencies, "
                                    "circuit date and lead, neuron and logit fits), medians and spreads over seeds, "
                                    "and figures (phase diagram, data-fraction curves, seed distributions, every "
                                    "run's curves) in one self-contained HTML file; the tables as CSV.")
    sr.add_argument("sweep", type=_nonempty_path, metavar="SWEEP")
    sr.add_argument("--out", type=_nonempty_path, help="HTML file to write (default: SWEEP/report.html)")
    sr.add_argument("--csv", type=_nonempty_path, help="per-run table (default: SWEEP/table.csv; summary.csv beside it)")
    sr.add_argument("--max-checkpoints", type=int, default=100, metavar="N",
                    help="checkpoints each run study uses, evenly spread (default 100)")
    sr.add_argument("--no-analysis", action="store_true", help="only the training metrics (fast)")
    sr.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("import-legacy", help="import a reference implementation's .pth into a run directory",
                       description="Read a checkpoint file of the paper's code (full_run_data.pth, or the repository's "
                                   "saved_runs/*.pth with one final model) or of the TransformerLens grokking demo "
                                   "with torch.load(weights_only=True) (nothing else is unpickled; files that need "
                                   "it are refused) and write a normal run directory. The layout is told by the "
                                   "parameter shapes.")
    m.add_argument("file", type=_nonempty_path, metavar="FILE")
    m.add_argument("out", type=_nonempty_path, metavar="OUT")
    m.add_argument("--layout", choices=["auto", "paper", "tl-demo"], default="auto", help="file layout (default: auto)")
    m.add_argument("--split-seed", type=int, metavar="N",
                   help="seed of the paper code's split when the file stores none (default: its config's seed; "
                        "required when it has none)")
    m.add_argument("--frac-train", type=float, metavar="X",
                   help="training fraction of the paper code's split (default: its config's frac_train; required "
                        "when it has none)")
    m.add_argument("--epoch-offset", type=int, default=1, metavar="N",
                   help="our epoch of the checkpoint labelled e is e + N (default 1: saved after the step)")
    m.add_argument("--overwrite", action="store_true", help="replace a run found in OUT")

    w = sub.add_parser("watch", help="follow a run training in another process",
                       description="Print the live progress measures of a run as its trainer flushes them (provisional "
                                   "key frequencies, restricted accuracy and loss, excluded loss, Gini of W_E, Σθ², test "
                                   "accuracy) and the early warning when the generalizing circuit forms. A run trained "
                                   "without live measures (live_every = 0) gets them computed from each new checkpoint. "
                                   "Ends when the run is finished.")
    w.add_argument("run", type=_nonempty_path, metavar="RUN")
    w.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between looks (default 5)")
    w.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without anything new")
    ll = sub.add_parser("llc", help="estimate the local learning coefficient at a run's checkpoints (SGLD)",
                        description="SGLD estimate of the local learning coefficient (singular learning theory) at each "
                                    "checkpoint: the checkpoints' chains run as one stacked computation. Prints the table "
                                    "(llc_mean, llc_std, one column per chain, diagnostics) and writes it to --out (default "
                                    "RUN/llc.csv, which `grokinterp report` then draws beside the restricted and excluded "
                                    "loss). Estimates that fail a diagnostic are marked llc_reliable = False, with the reasons "
                                    "in llc_flags and a warning. Defaults: devinterp's grokking example (epsilon 3e-3, gamma "
                                    "5); nbeta defaults to devinterp's m / ln m for batches of m.")
    ll.add_argument("run", type=_nonempty_path, metavar="RUN")
    ll.add_argument("--draws", type=int, default=200, metavar="N", help="recorded SGLD steps per chain (default 200)")
    ll.add_argument("--chains", type=int, default=4, metavar="C", help="chains per checkpoint (default 4)")
    ll.add_argument("--burnin", type=int, default=0, metavar="N", help="unrecorded steps first (default 0)")
    ll.add_argument("--epsilon", type=float, default=3e-3, help="SGLD step size (default 3e-3)")
    ll.add_argument("--gamma", type=float, default=5.0, help="localization strength (default 5)")
    ll.add_argument("--nbeta", type=float, help="inverse temperature n*beta (default m / ln m, m the batch size)")
    ll.add_argument("--batch-size", type=int, default=128, metavar="M",
                    help="training pairs per step (default 128; 0: all of them)")
    ll.add_argument("--seed", type=int, default=0, help="noise and batch seed (default 0)")
    ll.add_argument("--epochs", type=_int_list, metavar="E1,E2,...", help="checkpoints to estimate (default: all)")
    ll.add_argument("--every", type=int, metavar="K", help="every K-th checkpoint (default: all)")
    ll.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ll.add_argument("--out", type=_nonempty_path, metavar="CSV", help="table to write (default RUN/llc.csv)")
    ll.add_argument("--no-write", action="store_true", help="print the table only")
    parser.subcommands.update({"train": t, "info": i, "report": r, "verify": v, "import-legacy": m, "watch": w, "llc": ll})  # type: ignore[attr-defined]

    _add_probes_parser(sub, parser)
    return parser


def _add_probes_parser(sub, parser) -> None:
    """``grokinterp probes`` (issue 20, item 4)."""
    pr = sub.add_parser("probes", help="probes of lazy→rich training and numerical stability over checkpoints",
                        description="One row per checkpoint: softmax-collapse fraction, update–weight cosine, logit "
                                    "scale, representation quality index (cheap), and with --probes all or ntk the "
                                    "NTK–label alignment (a backward per class per checkpoint). Definitions in "
                                    "grokinterp.analysis.probes; a probe undefined for the run's task or family is "
                                    "NaN, with the reason in the definitions printed by --definitions. On a dataset task "
                                    "(--operation digits) the probes read the logits on its input vectors; RQI and "
                                    "the NTK alignment are NaN there.")
    pr.add_argument("run", type=_nonempty_path, metavar="RUN")
    pr.add_argument("--probes", type=_name_list, default=("cheap",), metavar="P1,P2,...",
                    help="probe measures: cheap (default), all, or names among softmax_collapse, update_cos, "
                         "logit_scale, rqi, ntk_alignment")
    pr.add_argument("--out", type=_nonempty_path, metavar="CSV", help="write the table as CSV (default: print it)")
    pr.add_argument("--max-checkpoints", type=int, default=400, metavar="N",
                    help="at most N checkpoints, evenly spread (default 400)")
    pr.add_argument("--ntk-inputs", type=int, default=32, metavar="N", help="NTK subset size (default 32)")
    pr.add_argument("--ntk-classes", type=int, default=4, metavar="K", help="labels in the NTK subset (default 4)")
    pr.add_argument("--definitions", action="store_true", help="print each column's definition after the table")
    parser.subcommands["probes"] = pr  # type: ignore[attr-defined]


def _count(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1 (``1 setting``, ``2 settings``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _default_out(preset: str, config) -> Path:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("checkpoints") / f"{preset}-{config.task.operation}-p{config.task.p}-{digest}"


def cmd_train(args: argparse.Namespace) -> int:
    import warnings

    overrides = _overrides(args)
    if args.threads is not None:
        from .training.threads import check_threads  # torch-free

        check_threads(args.threads, "--threads")
    _existing(args.resume, "run directory")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        if args.resume is not None and args.from_ is None:
            device = overrides.pop("device", None)  # the one setting a resume may change (e.g. CUDA → CPU)
            if device is not None:
                from .config import TrainConfig

                TrainConfig(device=device)  # validates the value (ConfigError naming train.device)
            if overrides or args.out is not None or args.overwrite:
                raise GrokinterpError("--resume continues a run with its stored config; drop the config flags, "
                                      "--out and --overwrite (only --device and --threads may be given)")
            from .monitor import resume  # a run trained alone or in a stack; its live measures

            run = resume(args.resume, progress=not args.no_progress, device=device, threads=args.threads)
        elif args.from_ is not None:
            run = _train_from(args, overrides)
        else:
            config = make_config(args.preset, **overrides)  # validates before anything is created
            _check_knobs_used(overrides, config)
            out = args.out if args.out is not None else _default_out(args.preset, config)
            args.out = out  # for the resume hint, should the command run out of memory
            from .monitor import train

            run = train(config, out, overwrite=args.overwrite, progress=not args.no_progress, preset=args.preset,
                        threads=args.threads)
    for w in caught:
        print(f"grokinterp train: warning: {w.message}", file=sys.stderr)
    print(_session_line(run))
    print(_short_summary(run))
    return 0


def _train_from(args: argparse.Namespace, overrides: dict[str, Any]):
    """``train --from RUN[@EPOCH]``: a child of a parent run (grokinterp.training.lineage)."""
    from .training.lineage import child_config, parse_from

    if "init_from" in overrides or "init_epoch" in overrides:
        raise GrokinterpError("--from sets train.init_from and train.init_epoch; drop --init-from / --init-epoch")
    if args.resume is not None:
        raise GrokinterpError("--from starts a new run; --resume continues one: give one of them")
    path, epoch = parse_from(args.from_)
    _existing(Path(path), "run directory")
    data = {k: overrides.pop(k) for k in ("n_train", "frac_train", "subset_seed", "random_labels", "label_seed")
            if k in overrides}
    config = child_config(path, epoch, **data, **overrides)
    _check_knobs_used(overrides, config)
    if args.out is None:
        digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        args.out = Path(path).parent / f"{Path(path).absolute().name}-child-{digest}"
    from .monitor import train

    return train(config, args.out, overwrite=args.overwrite, progress=not args.no_progress, threads=args.threads)


def _session_line(run) -> str:
    """What this call did, in one line (re-running a finished run's command trains nothing)."""
    sess = run.session or {}
    action = sess.get("action")
    if action == "already_finished":
        return (f"nothing to train: {run.path} already holds this run, finished at epoch {sess['end_epoch']}; its "
                f"checkpoints were loaded, not retrained (pass --overwrite to train it again, or choose another --out)")
    if action == "imported":
        return f"nothing to train: {run.path} is an imported run (import-legacy); imported runs are not trained"
    threads = sess.get("threads")
    how = f" with {threads} torch thread{'s' if threads != 1 else ''}" if threads else ""
    if action == "resumed":
        return f"resumed {run.path} at epoch {sess['start_epoch']}: trained epochs {sess['start_epoch']}..{sess['end_epoch']}{how}"
    return f"trained {sess.get('epochs_trained', '?')} epochs{how}"


def cmd_watch(args: argparse.Namespace) -> int:
    import math

    if not (math.isfinite(args.interval) and args.interval > 0):  # nan and inf too: sleep(nan) raises
        raise GrokinterpError(f"--interval: must be a positive number of seconds, got {args.interval}")
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout >= 0):
        raise GrokinterpError(f"--timeout: must be a non-negative number of seconds (leave it out to wait until the "
                              f"run finishes), got {args.timeout}")
    _existing(args.run, "run directory")
    from .monitor import watch

    print(f"watching {args.run} (Ctrl-C to stop)", flush=True)
    for event in watch(args.run, interval=args.interval, timeout=args.timeout):
        print(event.text, flush=True)
    return 0


def _short_summary(run) -> str:
    s = run.summary()
    acc = s.get("final_test_acc")
    lines = [f"run: {run.path}",
             f"  {s['n_checkpoints']} checkpoints, {run.checkpoint_unit}s {s['first_checkpoint']}..{s['last_checkpoint']}"]
    if acc is not None:
        lines.append(f"  final train loss {s['final_train_loss']:.3g}, test loss {s['final_test_loss']:.3g}, "
                     f"test accuracy {acc:.2%}")
        lines.append("  " + _t99_text(s))
    warning = _early_warning(run)
    if warning:
        lines.append("  " + warning)
    return "\n".join(lines)


def _early_warning(run) -> str | None:
    """The early warning recorded by the live measures, in words (``None`` without live measures)."""
    try:
        if "live_key_freqs" not in run.metrics.columns:
            return None
        from .analysis.early import first_warning

        w = first_warning(run.metrics)
    except GrokinterpError:
        return None
    if w is None:
        return "early warning: did not fire"
    est = f", estimated 99% test accuracy at epoch {w.estimate}" if w.estimate is not None else ""
    return f"early warning: circuit forming at epoch {w.epoch} (test accuracy then {w.test_acc:.1%}){est}"


def _model_line(m) -> str:
    """The model in one line: a transformer as before; another family's fields by name."""
    if m.family == "transformer":
        return (f"d_model {m.d_model}, {m.n_heads} heads × {m.d_head}, d_mlp {m.d_mlp}, {m.n_layers} layer(s), "
                f"{m.act_fn}, init_seed {m.init_seed}\n        LayerNorm {f'on ({m.ln_style})' if m.layer_norm else 'off'}, "
                f"biases {m.bias}, input layout {m.input_layout} ({INPUT_LAYOUTS[m.input_layout].help}), "
                f"{m.pos_embed} positions")
    own = [f.name for f in dataclasses.fields(m) if f.name not in COMMON_MODEL_FIELDS]
    return (f"{m.family}: " + ", ".join(f"{n} {_shown(getattr(m, n))}" for n in own)
            + f", init_seed {m.init_seed}" + (f", init_scale {m.init_scale}" if m.init_scale != 1.0 else ""))


def _unused_preset_fields(preset: Any, config) -> dict[str, Any]:
    """The model fields of ``preset`` (the run's recorded preset) that the run's family does not have: a
    preset of another family gave them, and ``--family`` left them unused."""
    if not isinstance(preset, str) or preset not in PRESETS:
        return {}
    base = make_config(preset).model
    if base.family == config.model.family:
        return {}
    own = {f.name for f in dataclasses.fields(config.model)}
    return {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name not in own}


def cmd_info(args: argparse.Namespace) -> int:
    _existing(args.run, "run directory")
    from .store.run import load_run

    run = load_run(args.run)
    s = run.summary()
    if args.json:
        from .config import interventions

        print(json.dumps({**s, "config": run.config.to_dict(), "versions": run.info.get("versions"),
                          "lineage": run.info.get("lineage"),
                          "interventions": interventions(run.config), "early_warning": _early_warning(run),
                          "unused_preset_fields": _unused_preset_fields(s.get("preset"), run.config)}, indent=2))
        return 0
    c = run.config
    print(f"run: {run.path}" + (f"  (preset {s['preset']})" if s.get("preset") else ""))
    from .tasks import fixed_size

    what = run.task.describe() if fixed_size(c.task.operation) is not None else f"{c.task.operation} mod {c.task.p}"
    size = (f"train_size {c.task.train_size}" if getattr(c.task, "train_size", None) is not None
            else f"frac_train {c.task.frac_train}")
    data = f", data {c.task.data}" if getattr(c.task, "data", None) else ""
    print(f"task:   {what}, {size}, split_seed {c.task.split_seed}{data}")
    structure = run.task.structure
    print(f"structure: {structure.describe() if structure is not None else 'none declared (no group structure)'}")
    print(f"model:  {_model_line(c.model)}")
    unused = _unused_preset_fields(s.get("preset"), c)
    if unused:
        print(f"unused: preset {s['preset']}'s model fields that the {c.model.family} family does not have: "
              + ", ".join(f"{k} {_shown(v)}" for k, v in unused.items()))
    t = c.train
    opt = (f"{t.optimizer} (momentum {t.momentum})" if t.optimizer == "sgd" else
           f"{t.optimizer} (betas {t.beta1}, {t.beta2})" if t.optimizer in ("adam", "adamw") else t.optimizer)
    threads = s.get("torch_threads")
    batches = ("full batch" if t.batch_size is None else  # issue 19: epochs and optimizer steps both said
               f"batch_size {t.batch_size} ({c.steps_per_epoch()} steps an epoch, {c.total_steps()} steps, "
               f"sampler_seed {c.model.init_seed if t.sampler_seed is None else t.sampler_seed})")
    print(f"train:  {t.epochs} epochs, {batches}, {opt}, lr {t.lr}, weight_decay {t.weight_decay}, "
          f"warmup {t.warmup_epochs}"
          + (" (paper style)" if t.warmup_style == "paper" else "")
          + (f", gradient transforms {', '.join(t.grad_transforms)}" if t.grad_transforms else "")
          + f", device {s['device']}" + (f" ({threads} torch thread{'s' if threads != 1 else ''})" if threads else ""))
    from .config import interventions

    for line in interventions(c):
        print(f"intervention: {line}")
    if t.live_every:
        print(f"live measures: every {t.live_every} epochs")
    if s.get("training"):
        flushed = s["epoch_reached"] if s["epoch_reached"] is not None else "none yet"
        status = f"training ({s['writer']}); last flushed epoch {flushed}"
    elif s["finished"]:
        status = "finished"
    elif s["epoch_reached"] is None:
        status = "not started: stopped before its first flush (start it with --resume)"
    else:
        status = f"stopped at epoch {s['epoch_reached']} (resume with --resume)"
    print(f"status: {status}")
    lin = run.info.get("lineage")
    if isinstance(lin, dict):
        from .store.run import describe_lineage

        print(f"lineage: {describe_lineage(lin)}")
    stack = run.info.get("stack")
    if isinstance(stack, dict):
        print(f"stack:  trained with {stack.get('size')} runs at once (place {stack.get('index')}, {stack.get('impl')} "
              f"forward, {stack.get('mode')} split); --resume continues them together")
    print(f"checkpoints: {s['n_checkpoints']} ({c.checkpoint_unit()}s {s['first_checkpoint']}..{s['last_checkpoint']})")
    if "metrics_error" in s:
        print(f"metrics: unreadable: {s['metrics_error']}")
    elif s.get("final_epoch") is not None:
        print(f"final (epoch {s['final_epoch']}): train loss {s['final_train_loss']:.3g} "
              f"(acc {s['final_train_acc']:.2%}), test loss {s['final_test_loss']:.3g} (acc {s['final_test_acc']:.2%})")
        t = s["train_acc_99_epoch"]
        print(f"train accuracy passed 99% at epoch {t}" if t is not None else "train accuracy never passed 99%")
        print(_t99_text(s))
        warning = _early_warning(run)
        if warning:
            print(warning)
    for prob in s["problems"]:
        print(f"problem: {prob}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    _existing(args.run, "run directory")
    from .store.integrity import verify

    report = verify(args.run)
    if args.json:
        print(json.dumps({"path": str(report.path), "ok": report.ok, "status": report.status,
                          "n_listed": report.n_listed,
                          **{k: list(getattr(report, k)) for k in ("missing", "truncated", "altered", "unreadable",
                                                                   "unlisted", "temporary", "interrupted",
                                                                   "inconsistent")},
                          "details": report.details, "notes": list(report.notes)}, indent=2))
    else:
        print(report)
    return 0 if report.ok else 1


def cmd_import_legacy(args: argparse.Namespace) -> int:
    import warnings

    file, out = _existing(args.file, "file"), args.out  # both refused when empty at parse time
    from .store.legacy import import_legacy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = import_legacy(file, out, layout=args.layout,
                            split_seed=args.split_seed, frac_train=args.frac_train,
                            epoch_offset=args.epoch_offset, overwrite=args.overwrite)
    src = run.info["imported_from"]
    print(_short_summary(run))
    print(f"  imported from {src['file']} ({src['layout']} layout, checkpoints under {src.get('container')!r}), "
          f"epoch offset {src['epoch_offset']}")
    print(f"  split: {src['split']}")
    check = src["loss_check"]
    w = check["worst"]
    if check.get("kind") == "adjacent" and w is not None:
        verdict = "agrees" if check["agrees"] else "DISAGREES"
        print(f"  loss check (one step apart): train loss {w['recomputed']:.4g} at epoch {w['epoch']} vs "
              f"{w['recorded']:.4g} recorded at epoch {w['recorded_epoch']}, within a factor "
              f"{check['factor']:g}: {verdict}" + (" (inconclusive: train and test losses are alike)"
                                                   if check.get("inconclusive") else ""))
    elif check["compared"]:
        print(f"  loss check: {check['compared']} recorded losses recomputed, worst relative difference "
              f"{w['rel_diff']:.2g} ({w['metric']} at epoch {w['epoch']}): "
              + ("agrees" if check["agrees"] else "DISAGREES"))
    for note in src["notes"]:
        print(f"  note: {note}")
    for w in caught:
        print(f"grokinterp import-legacy: warning: {w.message}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import os

    _existing(args.run, "run directory")
    from .viz.report import write_report

    if args.summary_json is not None:  # refuse before the analysis, so nothing is half-written
        parent = args.summary_json.parent if str(args.summary_json.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise GrokinterpError(f"{args.summary_json}: the directory {parent} does not exist or is not writable")
    if args.max_checkpoints is not None and args.max_checkpoints < 2:
        raise GrokinterpError(f"--max-checkpoints: must be at least 2, got {args.max_checkpoints}")
    path, headline = write_report(args.run, args.out, max_checkpoints=args.max_checkpoints,
                                  key_freqs=args.key_freqs, return_headline=True)
    if args.summary_json is not None:
        from .store.layout import write_json_atomic

        try:
            write_json_atomic(args.summary_json, headline)
        except OSError as e:
            raise GrokinterpError(f"{args.summary_json}: cannot write the summary ({e.strerror or e})") from None
    print(f"report: {path}")
    for line in _report_lines(headline):
        print(f"  {line}")
    print(f"  open it in a browser: file://{Path(path).resolve()}")
    return 0


def _report_lines(headline: dict[str, Any]) -> list[str]:
    """What ``grokinterp report`` prints about a run: the headline sentence (never a bare ``None``), the key
    set the dates belong to, the algorithm label with its reason, the early warning."""
    keys = headline["key_irreps"] if headline.get("key_kind") == "irrep" else headline["key_frequencies"]
    noun = "irreps" if headline.get("key_kind") == "irrep" else "frequencies"
    lines = [headline["verdict"]]
    if headline.get("structure") is not None:
        ke = headline.get("key_frequency_epoch")
        final = headline.get("key_set_final")
        lines.append(f"key {noun} {', '.join(map(str, keys)) or 'none'}"
                     + (" (given)" if ke is None else
                        f" (chosen at epoch {ke}; the circuit date belongs to this set)" if final is not False else
                        f" (chosen at epoch {ke}, the last checkpoint, before test accuracy reached 99 %: provisional, "
                        f"training longer may change the set and the circuit date)"))
    algo = headline.get("extras", {}).get("algorithm")
    if algo and algo.get("gradient_symmetricity") is None:  # undefined for the model (no attention)
        lines.append(f"algorithm: {algo['label']}: {algo['reason']}")
    elif algo:
        lines.append(f"algorithm: {algo['label']} (gradient symmetricity {algo['gradient_symmetricity']:.3f}, "
                     f"distance irrelevance {algo['distance_irrelevance']:.2f}): {algo['reason']}")
    if headline.get("extras", {}).get("early_warning"):
        lines.append(f"early warning: {headline['extras']['early_warning']}")
    return lines


def _t99_text(s: dict[str, Any]) -> str:
    """When test accuracy passed 99 % (from ``run.summary()``), never ``None``; an upper bound when it passed
    at the first evaluation of test accuracy (an imported final model has only that one)."""
    hit = s.get("test_acc_99_epoch")
    if hit is None:
        return "test accuracy never passed 99%"
    if s.get("test_acc_99_upper_bound"):
        return f"test accuracy ≥ 99% by epoch {hit} (its first evaluation: an upper bound, not when it passed)"
    return f"test accuracy passed 99% at epoch {hit}"


def _sweep_spec(args: argparse.Namespace):
    from .sweeps.spec import SweepSpec, load_spec, parse_grid_flag

    doc: dict[str, Any] = load_spec(args.spec).to_dict() if args.spec is not None else {}
    if args.preset is not None:
        doc["preset"] = args.preset
    doc.setdefault("preset", "quick")
    fixed = dict(doc.get("fixed") or {})
    for k, v in _overrides(args).items():
        if k in fixed:
            raise GrokinterpError(f"--{k.replace('_', '-')}: {k} is already fixed by the spec file")
        fixed[k] = list(v) if isinstance(v, tuple) else v
    doc["fixed"] = fixed
    for part in ("grid", "zip"):
        axes = dict(doc.get(part) or {})
        for flag in getattr(args, part):
            name, values = parse_grid_flag(flag)
            if name in axes:
                raise GrokinterpError(f"--{part} {flag}: {name} is already an axis of the {part}")
            axes[name] = [list(v) if isinstance(v, tuple) else v for v in values]
        doc[part] = axes
    if args.seeds is not None:
        if doc.get("seeds") is not None:
            raise GrokinterpError("--seeds: the spec file already lists seeds")
        doc["seeds"] = args.seeds
    return SweepSpec.from_dict(doc, where=str(args.spec) if args.spec is not None else "sweep")


def cmd_sweep(args: argparse.Namespace) -> int:
    options = {"executor": args.executor, "workers": args.workers, "ray_address": args.ray_address, "num_gpus": args.num_gpus,
               "num_cpus": args.num_cpus, "max_stack": args.max_stack, "max_disk_gb": args.max_disk_gb,
               "stack": False if args.no_stack else None, "checkpoints": "keep" if args.keep_checkpoints else None}
    if args.resume is not None:
        if args.spec is not None or args.out is not None or args.grid or args.zip or args.seeds or _overrides(args) \
                or args.preset or args.overwrite:
            raise GrokinterpError("--resume continues a sweep with its stored spec; drop SPEC, --out, --preset, "
                                  "--grid, --zip, --seeds, --overwrite and config flags")
        spec, out = _existing(args.resume, "sweep directory"), None
    else:
        spec = _sweep_spec(args)
        if not spec.axes():
            raise GrokinterpError("sweep: nothing varies; give a spec file with a [grid], --grid FIELD=V1,V2 or --seeds")
        out = args.out
        if out is None:
            digest = hashlib.sha256(json.dumps(spec.runs_dict(), sort_keys=True).encode()).hexdigest()[:8]
            out = Path("checkpoints") / f"sweep-{digest}"
        args.out = out  # for the resume hint, should the command run out of memory
    from .sweeps.driver import execute_plan, plan_sweep
    from .sweeps.executor import executor_for
    from .sweeps.stop import deadline_from

    deadline = deadline_from(args.max_minutes, args.until)  # a bad value: ConfigError (exit 2) before anything
    plan = plan_sweep(spec, out, overwrite=args.overwrite, **options)
    if args.dry_run:
        print("\n".join(plan.describe()))
        for r in plan.runs:
            print(f"  {r.state:10s} {r.run_dir}")
        return 0
    executor = executor_for(plan.spec.options)
    if args.no_progress:
        print("\n".join(plan.describe()), flush=True)
    sw = execute_plan(plan, executor, progress=not args.no_progress, deadline=deadline)
    st = sw.status()
    stopped = int(st["stopped"].sum()) if len(st) else 0
    print(f"sweep: {sw.path}: {int(st['finished'].sum())} of {_count(len(st), 'run')} finished"
          + (f", {stopped} stopped by the stop rule (done)" if stopped else "")
          + ("" if sw.finished else f"; {int((~st['done']).sum())} not done: continue with "
                                    f"`grokinterp sweep --resume {sw.path}`"))
    print(f"  runs in {sw.path / 'runs'}; table and report: grokinterp sweep-report {sw.path}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    if args.max_checkpoints < 2:
        raise GrokinterpError(f"--max-checkpoints: must be at least 2, got {args.max_checkpoints}")
    _existing(args.sweep, "sweep directory")
    from .viz.sweep_report import write_sweep_report

    path, table, summary = write_sweep_report(args.sweep, args.out, analyse=not args.no_analysis,
                                              max_checkpoints=args.max_checkpoints, progress=not args.no_progress,
                                              csv=args.csv, return_table=True)
    n, fin = len(table), int(table["finished"].fillna(False).astype(bool).sum())
    print(f"report: {path}")
    print(f"  {_count(n, 'run')}, {fin} finished, {int(table['grokked'].fillna(False).astype(bool).sum())} reached "
          f"99 % test accuracy; {_count(len(summary), 'setting')}")
    print(f"  open it in a browser: file://{Path(path).resolve()}")
    return 0


def cmd_llc(args: argparse.Namespace) -> int:
    import warnings

    _existing(args.run, "run directory")
    if args.every is not None and args.every < 1:
        raise GrokinterpError(f"--every: must be a positive integer, got {args.every}")
    if args.batch_size is not None and args.batch_size < 0:
        raise GrokinterpError(f"--batch-size: must be ≥ 0 (0: full batch), got {args.batch_size}")
    from .analysis.llc import SGLDConfig  # validates the sampler values before the run is read

    cfg = SGLDConfig(epsilon=args.epsilon, gamma=args.gamma, nbeta=args.nbeta, chains=args.chains, draws=args.draws,
                     burnin=args.burnin, batch_size=args.batch_size or None, seed=args.seed)
    from .analysis.llc import llc_over_checkpoints
    from .store.layout import LLC_TABLE, write_atomic
    from .store.run import load_run

    run = load_run(args.run)
    if len(run.epochs) == 0:
        raise GrokinterpError(f"{run.path}: the run has no checkpoints to estimate the LLC at")
    out = None if args.no_write else (args.out if args.out is not None else run.path / LLC_TABLE)
    if out is not None:
        parent = out.parent if str(out.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise GrokinterpError(f"{out}: the directory {parent} does not exist or is not writable")
    epochs = args.epochs
    if args.every is not None:
        epochs = list((run.epochs if epochs is None else epochs)[:: args.every])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        df = llc_over_checkpoints(run, cfg, epochs=epochs, device=args.device)
    show = ["epoch", "llc_mean", "llc_std", "llc_init_loss", "llc_rhat", "llc_accept", "llc_reliable", "llc_flags"]
    print(df[show].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    a = df.attrs["llc"]
    print(f"nbeta {a['nbeta_used']:.4g}, {cfg.chains} chain(s) x {cfg.draws} draws, {a['seconds']:.1f} s")
    for w in caught:
        print(f"grokinterp llc: warning: {w.message}", file=sys.stderr)
    if out is not None:
        write_atomic(out, df.to_csv(index=False).encode())
        print(f"table: {out}")
    return 0


COMMANDS = {"llc": cmd_llc, "report": cmd_report, "train": cmd_train, "info": cmd_info, "verify": cmd_verify, "import-legacy": cmd_import_legacy,
            "watch": cmd_watch, "sweep": cmd_sweep, "sweep-report": cmd_sweep_report}


def cmd_probes(args: argparse.Namespace) -> int:
    _existing(args.run, "run directory")
    names = list(args.probes)
    if args.max_checkpoints is not None and args.max_checkpoints < 2:
        raise GrokinterpError(f"--max-checkpoints: must be at least 2, got {args.max_checkpoints}")
    for flag, v in (("--ntk-inputs", args.ntk_inputs), ("--ntk-classes", args.ntk_classes)):
        if v < 2:
            raise GrokinterpError(f"{flag}: must be at least 2, got {v}")
    if args.out is not None:  # refuse before the work, so nothing is half-written
        parent = args.out.parent if str(args.out.parent) else Path(".")
        if args.out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise GrokinterpError(f"--out: {args.out} is a directory, or its directory {parent} does not exist or is "
                                  f"not writable")
    from .analysis.measures import progress_measures
    from .analysis.probes.measures import CHEAP_PROBES, PROBES, NTKAlignment
    from .analysis.summary import select_checkpoints
    from .store.layout import write_atomic
    from .store.run import load_run

    chosen = []
    for n in names:
        if n == "cheap":
            chosen += CHEAP_PROBES
        elif n == "all":
            chosen += PROBES
        elif n in PROBES:
            chosen.append(n)
        else:
            raise GrokinterpError(f"--probes: unknown probe {n!r}; known: cheap, all, {', '.join(PROBES)}")
    if not chosen:
        raise GrokinterpError("--probes: the selection is empty")
    chosen = list(dict.fromkeys(chosen))
    measures = ["losses"] + [NTKAlignment(args.ntk_inputs, args.ntk_classes) if n == "ntk_alignment" else n
                             for n in chosen]
    run = load_run(args.run)
    if len(run.epochs) == 0:
        raise GrokinterpError(f"{run.path}: the run has no readable checkpoints to probe")
    eps = select_checkpoints(run.epochs, args.max_checkpoints)
    if getattr(run.config.model, "d_input", 0):  # a dataset task: the probes over its input vectors (issue 22)
        from .analysis.probes.vectors import vector_probes

        df = vector_probes(run, chosen, eps, ntk_inputs=args.ntk_inputs, ntk_classes=args.ntk_classes)
    else:
        df = progress_measures(run, epochs=eps, measures=measures)
    if args.out is not None:
        try:
            write_atomic(args.out, df.to_csv(index=False).encode())
        except OSError as e:
            raise GrokinterpError(f"{args.out}: cannot write the table ({e.strerror or e})") from None
        print(f"probes: {args.out} ({len(df)} checkpoints)")
    else:
        print(df.to_string(index=False))
    if args.definitions:
        for c, d in df.attrs["definitions"].items():
            print(f"{c}: {d}")
    return 0


COMMANDS["probes"] = cmd_probes


def _preset_in(argv: Sequence[str]) -> str:
    """The ``--preset`` given after ``train`` or ``sweep`` (exact spelling), so that ``--help`` can show its
    values."""
    argv = list(argv)
    at = next((i for i, a in enumerate(argv) if a in ("train", "sweep")), None)
    if at is None:
        return DEFAULT_PRESET
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--preset")
    known, _ = pre.parse_known_args(argv[at + 1:])
    return known.preset if known.preset in PRESETS else DEFAULT_PRESET


def _unrecognized(extra: Sequence[str], parser: argparse.ArgumentParser) -> str:
    """The "unrecognized arguments" message, with the closest flag of ``parser`` for each unknown one."""
    flags = [f for f in parser._option_string_actions if f.startswith("--")]
    hints = []
    for tok in extra:
        if tok.startswith("-"):
            name = tok.split("=", 1)[0]
            close = difflib.get_close_matches(name.replace("_", "-"), flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{name}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + (f"; {'; '.join(hints)}" if hints else "")


def _out_of_memory(args: argparse.Namespace, e: BaseException) -> str:
    """One line for a command that ran out of memory: what, and how to resume what it was writing."""
    import traceback

    try:
        frames = traceback.extract_tb(e.__traceback__)
        where = f" in {frames[-1].name}" if frames else ""
    except MemoryError:
        where = ""
    detail = str(e).splitlines()[0][:200] if str(e) else ""
    msg = f"out of memory ({type(e).__name__}{where}{': ' + detail if detail else ''})"
    target = args.resume if getattr(args, "resume", None) is not None else getattr(args, "out", None)
    try:
        if args.command == "train" and target is not None and (Path(target) / "run.json").exists():
            return msg + f"; what was flushed is kept: continue with `grokinterp train --resume {target}`"
        if args.command == "sweep" and target is not None and (Path(target) / "sweep.json").exists():
            return msg + f"; finished runs are kept: continue with `grokinterp sweep --resume {target}`"
    except OSError:
        pass
    return msg + "; free memory (or raise the limit) and run the command again"


def _is_out_of_memory(e: BaseException) -> bool:
    """torch.OutOfMemoryError (a GPU's memory; named, so torch need not be imported), the RuntimeError of
    torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"), or a native library that could not
    be mapped under an address-space limit (`ulimit -v`)."""
    text = str(e).lower()
    if type(e).__name__ == "OutOfMemoryError":
        return True
    if isinstance(e, ImportError):
        return "failed to map segment" in text or "cannot allocate memory" in text
    return "can't allocate memory" in text or "defaultcpuallocator" in text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_preset_in(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = parser.subcommands.get(args.command, parser)  # type: ignore[attr-defined]
        sub.error(_unrecognized(extra, sub))
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except BrokenPipeError:
        # The reader of our output closed it (``grokinterp info RUN | head -3``): stop quietly, and keep
        # the interpreter from complaining when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        return 128 + 13  # as if killed by SIGPIPE
    except GrokinterpError as e:
        print(f"grokinterp {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # e.g. a path too long for the file system, found below any check of ours
        if e.errno == errno.ENOMEM:  # mmap, fork or open under an address-space limit
            print(f"grokinterp {args.command}: error: {_out_of_memory(args, e)}", file=sys.stderr)
            return EXIT_NO_MEMORY
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        where = where if len(where) < 300 else where[:150] + "...: "
        print(f"grokinterp {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError as e:
        print(f"grokinterp {args.command}: error: {_out_of_memory(args, e)}", file=sys.stderr)
        return EXIT_NO_MEMORY
    except (RuntimeError, ImportError) as e:
        if not _is_out_of_memory(e):
            raise
        print(f"grokinterp {args.command}: error: {_out_of_memory(args, e)}", file=sys.stderr)
        return EXIT_NO_MEMORY
    except KeyboardInterrupt as e:
        msg = str(e) or "interrupted"
        print(f"grokinterp {args.command}: {msg}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
