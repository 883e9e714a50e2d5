"""Command-line interface: ``grokinterp train | info | report | verify | import-legacy | watch``.

Only argparse, the config dataclasses and numpy are imported until a command runs, so
``grokinterp --help`` answers at once; torch and transformer_lens load inside the commands.
Errors in the input print one line naming the field or file and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import PRESETS, SECTIONS, make_config
from .errors import GrokinterpError

EXIT_USAGE = 2

# Fields not exposed as flags: fixed by the task format.
_HIDDEN = {("model", "n_ctx"), ("model", "p")}


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


def _name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names (``grokfast_ema,orthograd``); an empty string is the empty list."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 4,14,35), got {text!r}") from None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = make_config("paper")
    for sec, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{sec} config (defaults: the chosen preset)")
        for f in dataclasses.fields(cls):
            if (sec, f.name) in _HIDDEN:
                continue
            default = getattr(getattr(defaults, sec), f.name)
            doc = f"{sec}.{f.name} (paper: {default!r})"
            if (sec, f.name) == ("task", "p"):
                doc = "task.p, also sets the model's vocabulary (paper: 113)"
            if f.name == "windows":
                group.add_argument("--window", dest="windows", action="append", type=_window,
                                   metavar="START:STOP:EVERY", help="dense checkpoint window; repeatable")
            elif isinstance(default, tuple):
                group.add_argument(_flag(f.name), dest=f.name, type=_name_list, metavar="A,B", help=doc)
            elif isinstance(default, bool):
                group.add_argument(_flag(f.name), dest=f.name, type=_bool, metavar="BOOL", help=doc)
            elif isinstance(default, int):
                group.add_argument(_flag(f.name), dest=f.name, type=int, metavar="N", help=doc)
            elif isinstance(default, float):
                group.add_argument(_flag(f.name), dest=f.name, type=float, metavar="X", help=doc)
            else:
                group.add_argument(_flag(f.name), dest=f.name, type=str, metavar="S", help=doc)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    out = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "windows" in out:
        out["windows"] = tuple(out["windows"])
    return out


#: Flags that act only through a gradient transform: given without one of these in
#: ``--grad-transforms`` they would change nothing, so the command refuses them (exit 2).
_NEEDS_TRANSFORM = {"grokfast_alpha": ("grokfast_ema",), "grokfast_window": ("grokfast_ma",),
                    "grokfast_lamb": ("grokfast_ema", "grokfast_ma")}


def _check_knobs_used(overrides: dict[str, Any], config) -> None:
    """A Grokfast flag given without its filter in ``train.grad_transforms`` is a ConfigError naming it."""
    from .errors import ConfigError

    for name, needs in _NEEDS_TRANSFORM.items():
        if name in overrides and not set(needs) & set(config.train.grad_transforms):
            raise ConfigError(f"train.{name}: has no effect without {' or '.join(needs)} in train.grad_transforms "
                              f"(add --grad-transforms {needs[0]})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grokinterp",
        description="Train small transformers that grok, keep dense checkpoints, and analyse them.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train on a + b mod p (or another operation) with full-batch AdamW and write "
                                   "dense checkpoints. Flags override the preset's fields.")
    t.add_argument("--preset", choices=list(PRESETS), default="quick",
                   help="paper: Nanda et al. 2023 (p=113, 30%% data, 40k epochs); quick (default): groks on a "
                        "2-core CPU in minutes; tiny: seconds, for tests")
    t.add_argument("--out", type=Path, help="run directory (default: checkpoints/<preset>-<op>-p<p>-<config hash>)")
    t.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run (no config flags)")
    t.add_argument("--overwrite", action="store_true", help="replace a different run found in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(t)

    i = sub.add_parser("info", help="summarise a run", description="Config, checkpoints, final losses, and when "
                       "test accuracy passed 99 %%.")
    i.add_argument("run", type=Path, metavar="RUN")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    r = sub.add_parser("report", help="write a self-contained HTML report of a run",
                       description="Analyse a run (progress measures, phases, when the circuit formed, key "
                                   "frequencies, neurons, logits, ablations) and write one HTML file with every "
                                   "figure; plotly.js is embedded, so it opens offline.")
    r.add_argument("run", type=Path, metavar="RUN")
    r.add_argument("--out", type=Path, help="HTML file to write (default: RUN/report.html)")
    r.add_argument("--max-checkpoints", type=int, default=400, metavar="N",
                   help="analyse at most N checkpoints, evenly spread (default 400)")
    r.add_argument("--key-freqs", type=_int_list, metavar="K1,K2,...",
                   help="fix the key frequencies (default: from the final checkpoint)")
    r.add_argument("--summary-json", type=Path, metavar="FILE", help="also write the headline numbers as JSON")

    v = sub.add_parser("verify", help="check a run's files against its manifest",
                       description="Re-hash every file of a run and compare with manifest.json; lists each "
                                   "missing, truncated, altered or unlisted file. Exit status: 0 when all is well, "
                                   "1 when a file is damaged, 2 when the run or its manifest cannot be read.")
    v.add_argument("run", type=Path, metavar="RUN")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    m = sub.add_parser("import-legacy", help="import a reference implementation's .pth into a run directory",
                       description="Read the TransformerLens grokking demo's .pth or the paper's full_run_data.pth "
                                   "with torch.load(weights_only=True) (nothing else is unpickled; files that need "
                                   "it are refused) and write a normal run directory.")
    m.add_argument("file", type=Path, metavar="FILE")
    m.add_argument("out", type=Path, metavar="OUT")
    m.add_argument("--layout", choices=["auto", "paper", "tl-demo"], default="auto", help="file layout (default: auto)")
    m.add_argument("--split-seed", type=int, metavar="N",
                   help="seed of the paper code's split when the file stores none (default: its config's seed)")
    m.add_argument("--epoch-offset", type=int, default=1, metavar="N",
                   help="our epoch of the checkpoint labelled e is e + N (default 1: saved after the step)")
    m.add_argument("--overwrite", action="store_true", help="replace a run found in OUT")

    w = sub.add_parser("watch", help="follow a run training in another process",
                       description="Print the live progress measures of a run as its trainer flushes them (provisional "
                                   "key frequencies, restricted accuracy and loss, excluded loss, Gini of W_E, Σθ², test "
                                   "accuracy) and the early warning when the generalizing circuit forms. A run trained "
                                   "without live measures (live_every = 0) gets them computed from each new checkpoint. "
                                   "Ends when the run is finished.")
    w.add_argument("run", type=Path, metavar="RUN")
    w.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between looks (default 5)")
    w.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without anything new")
    return parser


def _default_out(preset: str, config) -> Path:
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("checkpoints") / f"{preset}-{config.task.operation}-p{config.task.p}-{digest}"


def cmd_train(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    if args.resume is not None:
        device = overrides.pop("device", None)  # the one setting a resume may change (e.g. CUDA → CPU)
        if device is not None:
            from .config import TrainConfig

            TrainConfig(device=device)  # validates the value (ConfigError naming train.device)
        if overrides or args.out is not None or args.overwrite:
            raise GrokinterpError("--resume continues a run with its stored config; drop the config flags, --out "
                                  "and --overwrite (only --device may be given)")
        from .monitor import resume

        run = resume(args.resume, progress=not args.no_progress, device=device)
        print(_short_summary(run))
        return 0
    config = make_config(args.preset, **overrides)  # validates before anything is created
    _check_knobs_used(overrides, config)
    out = args.out if args.out is not None else _default_out(args.preset, config)
    from .monitor import train

    run = train(config, out, overwrite=args.overwrite, progress=not args.no_progress, preset=args.preset)
    print(_short_summary(run))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise GrokinterpError(f"--interval: must be positive, got {args.interval}")
    from .monitor import watch

    print(f"watching {args.run} (Ctrl-C to stop)", flush=True)
    for event in watch(args.run, interval=args.interval, timeout=args.timeout):
        print(event.text, flush=True)
    return 0


def _short_summary(run) -> str:
    s = run.summary()
    acc = s.get("final_test_acc")
    hit = s.get("test_acc_99_epoch")
    lines = [f"run: {run.path}",
             f"  {s['n_checkpoints']} checkpoints, epochs {s['first_checkpoint']}..{s['last_checkpoint']}"]
    if acc is not None:
        lines.append(f"  final train loss {s['final_train_loss']:.3g}, test loss {s['final_test_loss']:.3g}, "
                     f"test accuracy {acc:.2%}")
        lines.append(f"  test accuracy passed 99% at epoch {hit}" if hit is not None
                     else "  test accuracy never passed 99%")
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


def cmd_info(args: argparse.Namespace) -> int:
    from .store.run import load_run

    run = load_run(args.run)
    s = run.summary()
    if args.json:
        from .config import interventions

        print(json.dumps({**s, "config": run.config.to_dict(), "versions": run.info.get("versions"),
                          "interventions": interventions(run.config), "early_warning": _early_warning(run)}, indent=2))
        return 0
    c = run.config
    print(f"run: {run.path}" + (f"  (preset {s['preset']})" if s.get("preset") else ""))
    print(f"task:   {c.task.operation} mod {c.task.p}, frac_train {c.task.frac_train}, split_seed {c.task.split_seed}")
    print(f"model:  d_model {c.model.d_model}, {c.model.n_heads} heads × {c.model.d_head}, d_mlp {c.model.d_mlp}, "
          f"{c.model.n_layers} layer(s), {c.model.act_fn}, init_seed {c.model.init_seed}")
    print(f"train:  {c.train.epochs} epochs, {c.train.optimizer}, lr {c.train.lr}, weight_decay {c.train.weight_decay}, "
          f"betas ({c.train.beta1}, {c.train.beta2}), warmup {c.train.warmup_epochs}, device {s['device']}")
    from .config import interventions

    for line in interventions(c):
        print(f"intervention: {line}")
    if c.train.live_every:
        print(f"live measures: every {c.train.live_every} epochs")
    status = "finished" if s["finished"] else f"stopped at epoch {s['epoch_reached']} (resume with --resume)"
    print(f"status: {status}")
    print(f"checkpoints: {s['n_checkpoints']} (epochs {s['first_checkpoint']}..{s['last_checkpoint']})")
    if "metrics_error" in s:
        print(f"metrics: unreadable: {s['metrics_error']}")
    elif s.get("final_epoch") is not None:
        print(f"final (epoch {s['final_epoch']}): train loss {s['final_train_loss']:.3g} "
              f"(acc {s['final_train_acc']:.2%}), test loss {s['final_test_loss']:.3g} (acc {s['final_test_acc']:.2%})")
        print(f"train accuracy passed 99% at epoch {s['train_acc_99_epoch']}")
        hit = s["test_acc_99_epoch"]
        print(f"test accuracy passed 99% at epoch {hit}" if hit is not None else "test accuracy never passed 99%")
        warning = _early_warning(run)
        if warning:
            print(warning)
    for prob in s["problems"]:
        print(f"problem: {prob}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .store.integrity import verify

    report = verify(args.run)
    if args.json:
        print(json.dumps({"path": str(report.path), "ok": report.ok, "n_listed": report.n_listed,
                          **{k: list(getattr(report, k)) for k in ("missing", "truncated", "altered", "unreadable",
                                                                   "unlisted", "temporary")},
                          "details": report.details, "notes": list(report.notes)}, indent=2))
    else:
        print(report)
    return 0 if report.ok else 1


def cmd_import_legacy(args: argparse.Namespace) -> int:
    import warnings

    from .store.legacy import import_legacy

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = import_legacy(args.file, args.out, layout=args.layout, split_seed=args.split_seed,
                            epoch_offset=args.epoch_offset, overwrite=args.overwrite)
    src = run.info["imported_from"]
    print(_short_summary(run))
    print(f"  imported from {src['file']} ({src['layout']} layout), epoch offset {src['epoch_offset']}")
    print(f"  split: {src['split']}")
    check = src["loss_check"]
    if check["compared"]:
        w = check["worst"]
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
    formed, hit = headline["circuit_formed_epoch"], headline["test_acc_99_epoch"]
    print(f"report: {path}")
    print(f"  key frequencies {headline['key_frequencies']}; circuit formed at epoch {formed}, "
          f"test accuracy ≥ 99% at epoch {hit}")
    algo = headline.get("extras", {}).get("algorithm")
    if algo:
        print(f"  algorithm: {algo['label']} (gradient symmetricity {algo['gradient_symmetricity']:.3f}, distance "
              f"irrelevance {algo['distance_irrelevance']:.2f})")
    if headline.get("extras", {}).get("early_warning"):
        print(f"  early warning: {headline['extras']['early_warning']}")
    print(f"  open it in a browser: file://{Path(path).resolve()}")
    return 0


COMMANDS = {"report": cmd_report, "train": cmd_train, "info": cmd_info, "verify": cmd_verify,
            "import-legacy": cmd_import_legacy, "watch": cmd_watch}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GrokinterpError as e:
        print(f"grokinterp {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        msg = str(e) or "interrupted"
        print(f"grokinterp {args.command}: {msg}", file=sys.stderr)
        return 128 + getattr(e, "signum", 2)  # 130 for Ctrl-C, 143 for SIGTERM


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
