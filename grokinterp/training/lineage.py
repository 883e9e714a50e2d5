"""Runs that continue a parent run on changed data (issue 21): ``grokinterp train --from RUN[@EPOCH]``.

A *child* run is a new run directory whose initial parameters are the bits of one checkpoint of a
*parent* run (``train.init_from``, ``train.init_epoch``), trained for its own ``train.epochs`` on

- a subset of the parent's training pairs (``task.n_train``, drawn with ``task.subset_seed``; see
  :mod:`grokinterp.tasks.subsets` — the pairs left out join the test set), and/or
- random labels (``task.random_labels``, ``task.label_seed``), the memorization-only baseline of
  Varma et al. 2023, which also works without a parent.

Decisions (NOTES.md, "Continuing a run on changed data (issue 21)"):

- **Fresh optimizer.** The child starts AdamW (or its configured optimizer) from zero moments, with
  its own warm-up. A run stores its optimizer state only at its last flush, not per checkpoint,
  so a parent's state at an arbitrary checkpoint does not exist; a fresh optimizer is defined for
  every checkpoint. (Varma et al. continue training the grokked network on the smaller set; their
  code is not public, and a fresh AdamW with a 10-step warm-up is the closest defined choice.)
- **What the parent must be.** Readable and intact (``grokinterp verify`` passes), not being
  trained (no live holder of its run lock: a checkpoint must not be taken from a run that is still
  moving), and holding a checkpoint at the requested epoch (the last one when none is named).
  Its task split must be the child's (same operation, p, fraction, split seed and method) and
  its model the child's (every field but the initialisation's), and the child's training pairs
  must lie inside the parent's. Each refusal is a :class:`~grokinterp.errors.RunError` /
  :class:`~grokinterp.errors.ConfigError` raised before anything is written (exit 2 in the CLI).
- **Lineage record.** ``run.json`` gets ``lineage``: the parent's absolute path, the epoch, the
  SHA-256 of the parent's ``run.json``, ``split.safetensors`` and the shard holding the checkpoint
  (from its manifest, checked by ``verify``), the SHA-256 of the checkpoint's parameters as
  loaded, how the subset and labels were drawn, the optimizer choice and the parent's own lineage.
- **Resume.** A child resumes as any run does, from its own state; only before its first flush
  (no state yet) does it read the parent's checkpoint again, whose parameter digest must then still
  match the recorded one.

Example:
    >>> import grokinterp as gi                                                   # doctest: +SKIP
    >>> parent = gi.train(gi.make_config("tiny"), "checkpoints/parent")          # doctest: +SKIP
    >>> cfg = child_config("checkpoints/parent", n_train=300, epochs=500)         # doctest: +SKIP
    >>> child = gi.train(cfg, "checkpoints/child")                               # doctest: +SKIP
    >>> child.info["lineage"]["epoch"]                                           # doctest: +SKIP
    1000
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import RunConfig
from ..errors import ConfigError, RunError
from ..model import param_shapes
from ..store import layout
from ..store.integrity import read_manifest, verify
from ..store.run import Run, load_run
from ..tasks import split_pairs

__all__ = ["parse_from", "child_config", "check_parent", "lineage_record", "parent_params", "init_from_parent",
           "init_stack_from_parents", "params_digest", "OPTIMIZER_CHOICE"]

#: What the child's optimizer starts from (recorded in the lineage).
OPTIMIZER_CHOICE = "fresh (zero moments, the child's own warm-up); the parent's state at a checkpoint is not stored"
#: Model fields a child may set differently from its parent (they only shape a seeded initialisation).
_INIT_FIELDS = ("init_seed", "init_scale", "init_method")
#: Task fields that define the split: parent and child must agree on them.
_SPLIT_FIELDS = ("p", "operation", "frac_train", "split_seed", "split_method", "eq_logit")


def parse_from(text: str) -> tuple[str, int | None]:
    """``RUN[@EPOCH]`` → ``(RUN, EPOCH or None)``; a path that itself contains ``@`` is split at the
    last one only when what follows is a number.

    Example:
        >>> parse_from("checkpoints/a@1500"), parse_from("checkpoints/a")
        (('checkpoints/a', 1500), ('checkpoints/a', None))
    """
    text = str(text)
    head, sep, tail = text.rpartition("@")
    if sep and tail.strip().isdigit() and head:
        return head, int(tail)
    if sep and head and not os.path.exists(text):
        raise ConfigError(f"--from: expected RUN or RUN@EPOCH with a non-negative integer epoch, got {text!r}")
    return text, None


def params_digest(params: dict[str, Tensor], names: Sequence[str]) -> str:
    """SHA-256 over the float32 bytes of ``params[name]`` for ``names`` in order (the recorded digest
    of the checkpoint a child starts from)."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0")
        h.update(np.ascontiguousarray(params[n].detach().cpu().to(torch.float32).numpy()).tobytes())
    return h.hexdigest()


def _load_parent(path: str | os.PathLike) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise RunError(f"train.init_from: {p}: no such run directory")
    return load_run(p)


def child_config(parent: str | os.PathLike, epoch: int | None = None, *, n_train: int | None = None,
                 frac_train: float | None = None, subset_seed: int = 0, random_labels: bool = False,
                 label_seed: int = 0, base: RunConfig | None = None, **overrides: Any) -> RunConfig:
    """The config of a child of ``parent``: the parent's config (or ``base``) with its task split and
    model, ``train.init_from`` / ``init_epoch`` set, the data changed as asked, and ``overrides``
    (bare field names, as :meth:`RunConfig.replace`: ``epochs=2000``, ``weight_decay=0.3``).

    Args:
        parent: the parent run directory (recorded as an absolute path).
        epoch: the parent's checkpoint; ``None`` = its last.
        n_train: train on this many of the parent's training pairs (``D′``).
        frac_train: the same as a fraction of *all* the task's pairs, ``D′ = round(frac_train · n)``
            (the meaning ``task.frac_train`` has; the split itself stays the parent's). Give one of
            ``n_train`` and ``frac_train``, or neither (all of the parent's training pairs).
        subset_seed: seed of the subset's order.
        random_labels, label_seed: train on random labels (:mod:`grokinterp.tasks.subsets`).
        base: take the train and checkpoint sections from this config instead of the parent's.
    """
    run = _load_parent(parent)
    if n_train is not None and frac_train is not None:
        raise ConfigError("n_train, frac_train: give one of them (both set the size of the child's training set)")
    cfg = run.config
    if base is not None:
        cfg = RunConfig(task=cfg.task, model=cfg.model, train=base.train, checkpoints=base.checkpoints)
    if frac_train is not None:
        if not 0.0 < float(frac_train) < 1.0:
            raise ConfigError(f"frac_train: must lie in (0, 1), got {frac_train}")
        n_train = max(1, round(float(frac_train) * len(run.task.valid_pairs())))
    parent_n = cfg.task.n_train
    if n_train is None:
        n_train = parent_n
    task = replace(cfg.task, n_train=n_train, subset_seed=subset_seed if n_train is not None else 0,
                   random_labels=bool(random_labels), label_seed=label_seed)
    train = replace(cfg.train, init_from=str(Path(parent).absolute()), init_epoch=epoch, weight_norm=False,
                    weight_norm_target=None)
    out = RunConfig(task=task, model=cfg.model, train=train, checkpoints=cfg.checkpoints)
    return out.replace(**overrides) if overrides else out


def _resolve_epoch(run: Run, epoch: int | None) -> int:
    if epoch is None:
        return int(run.resolve_epoch(-1))
    if int(epoch) not in set(run.epochs.tolist()):
        raise RunError(f"train.init_epoch: the parent {run.path} has no checkpoint at {run.checkpoint_unit} {epoch}; "
                       f"its checkpoints: {_few(run.epochs)}")
    return int(epoch)


def _few(epochs: np.ndarray) -> str:
    e = [int(x) for x in epochs]
    return ", ".join(map(str, e)) if len(e) <= 8 else f"{', '.join(map(str, e[:4]))}, ..., {', '.join(map(str, e[-3:]))}"


def check_parent(config: RunConfig) -> dict[str, Any] | None:
    """Check that ``config``'s parent may be continued from; returns the lineage record (``None``
    when the run has no parent). Raises before anything is written:

    - :class:`RunError` when the parent is missing, being trained (its run lock is held by a live
      process), damaged (``verify`` fails), or has no checkpoint at ``train.init_epoch``;
    - :class:`ConfigError` when the parent's split or model differ from the child's, or the child's
      training pairs are not a subset of the parent's (naming the field).
    """
    t = config.train
    if t.init_from is None:
        return None
    run = _load_parent(t.init_from)
    if run.training:
        raise RunError(f"train.init_from: the parent {run.path} is being trained ({run.writer.describe()}); "
                       f"continue from it once it has stopped (a checkpoint of a moving run is not taken)")
    report = verify(run.path)
    if not report.ok:
        raise RunError(f"train.init_from: the parent {run.path} is damaged; `grokinterp verify {run.path}` says: "
                       f"{'; '.join(report.problems()[:3])}")
    epoch = _resolve_epoch(run, t.init_epoch)
    pc, cc = run.config, config
    for name in _SPLIT_FIELDS:
        if getattr(pc.task, name) != getattr(cc.task, name):
            raise ConfigError(f"task.{name}: the child must keep its parent's split ({getattr(pc.task, name)!r} in "
                              f"{run.path}), got {getattr(cc.task, name)!r}")
    pm, cm = _asdict(pc.model), _asdict(cc.model)
    for name in sorted(set(pm) | set(cm)):
        if name not in _INIT_FIELDS and pm.get(name) != cm.get(name):
            raise ConfigError(f"model.{name}: the child starts from its parent's parameters and needs its model "
                              f"({pm.get(name)!r} in {run.path}), got {cm.get(name)!r}")
    parent_train = run.split_pairs()[0]
    child_train = split_pairs(cc.task)[0]
    outside = np.setdiff1d(child_train, parent_train, assume_unique=True)
    if len(outside):
        how = ("it is larger than the parent's" if len(child_train) > len(parent_train) else
               "the parent trained on another subset (task.subset_seed differs?)")
        raise ConfigError(f"task.n_train: the child's {len(child_train)} training pairs are not a subset of the "
                          f"parent's {len(parent_train)} ({len(outside)} outside: {how})")
    params = run.params(epoch)
    names = list(param_shapes(pc.model))
    manifest = read_manifest(run.path)
    files = {}
    for rel in (layout.RUN_JSON, layout.SPLIT_FILE):
        files[rel] = manifest.get(rel, {}).get("sha256")
    for rel, entry in sorted(manifest.items()):
        span = layout.shard_span(rel.rsplit("/", 1)[-1]) if rel.startswith(layout.SHARD_DIR + "/") else None
        if span is not None and span[0] <= epoch <= span[1]:
            files[rel] = entry.get("sha256")
    return {
        "parent": str(run.path.absolute()),
        "epoch": epoch,
        "unit": run.checkpoint_unit,
        "parent_files_sha256": files,
        "params_sha256": params_digest(params, names),
        "parent_n_train": int(len(parent_train)),
        "n_train": int(len(child_train)),
        "subset": None if cc.task.n_train is None else {
            "n_train": int(cc.task.n_train), "subset_seed": int(cc.task.subset_seed),
            "drawn_from": "the split's training pairs (the parent's: the same split), first n_train of a seeded "
                          "order (PCG64, SeedSequence([subset_seed, 0x5B5E7])); the rest join the test set"},
        "random_labels": None if not cc.task.random_labels else {
            "label_seed": int(cc.task.label_seed),
            "rule": "independent uniform labels over the task's classes per training pair (PCG64, "
                    "SeedSequence([label_seed, 0x1ABE1]), grid index order); test pairs keep true labels"},
        "optimizer": OPTIMIZER_CHOICE,
        "parent_lineage": run.info.get("lineage"),
    }


def _asdict(model: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(model)


def lineage_record(config: RunConfig) -> dict[str, Any] | None:
    """The ``lineage`` entry of a run's ``run.json``: :func:`check_parent`'s record, or, for a run
    without a parent that changes its data (``n_train``, ``random_labels``), how its data was drawn."""
    rec = check_parent(config)
    if rec is not None:
        return rec
    k = config.task
    if k.n_train is None and not k.random_labels:
        return None
    return {"parent": None, "n_train": int(config.n_train()),
            "subset": None if k.n_train is None else {"n_train": int(k.n_train), "subset_seed": int(k.subset_seed)},
            "random_labels": None if not k.random_labels else {"label_seed": int(k.label_seed)}}


def parent_params(config: RunConfig, expected_sha256: str | None = None) -> dict[str, Tensor]:
    """The parent's checkpoint the run starts from (``{name: float32 tensor}``, CPU), checked
    against ``expected_sha256`` (the digest recorded in ``run.json``) when given."""
    t = config.train
    run = _load_parent(t.init_from)
    epoch = _resolve_epoch(run, t.init_epoch)
    params = run.params(epoch)
    if expected_sha256 is not None:
        got = params_digest(params, list(param_shapes(run.config.model)))
        if got != expected_sha256:
            raise RunError(f"train.init_from: the parent {run.path}'s checkpoint {epoch} changed since this run "
                           f"started (parameter digest {got[:12]}… ≠ recorded {expected_sha256[:12]}…)")
    return params


def _recorded_digest(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    try:
        info = layout.read_json(Path(run_dir) / layout.RUN_JSON, "run.json")
    except (RunError, OSError):
        return None
    lin = info.get("lineage") if isinstance(info, dict) else None
    return lin.get("params_sha256") if isinstance(lin, dict) else None


def _effective_epoch(config: RunConfig, run_dir: Path | None) -> RunConfig:
    """The config with ``init_epoch`` as recorded when the run started (``None`` resolved then)."""
    if config.train.init_epoch is not None or run_dir is None:
        return config
    try:
        info = layout.read_json(Path(run_dir) / layout.RUN_JSON, "run.json")
        e = info["lineage"]["epoch"]
    except (RunError, OSError, KeyError, TypeError):
        return config
    return RunConfig(task=config.task, model=config.model, train=replace(config.train, init_epoch=int(e)),
                     checkpoints=config.checkpoints)


def _has_state(run_dir: Path | None) -> bool:
    """The run has flushed its training state: a resume loads its parameters from there, and the
    parent is not read (it may have moved or gone since)."""
    return run_dir is not None and os.path.lexists(Path(run_dir) / layout.STATE_FILE)


@torch.no_grad()
def init_from_parent(params: dict[str, Tensor], config: RunConfig, run_dir: Path | None = None) -> None:
    """Overwrite a single run's parameters (``{name: Parameter}``) with its parent's checkpoint (a no-op
    without ``train.init_from``). ``run_dir``: the child's directory, whose recorded digest is checked."""
    if config.train.init_from is None or _has_state(run_dir):
        return
    src = parent_params(_effective_epoch(config, run_dir), _recorded_digest(run_dir))
    for name, p in params.items():
        p.copy_(src[name].to(p.device, p.dtype))


@torch.no_grad()
def init_stack_from_parents(params: dict[str, Tensor], configs: Sequence[RunConfig],
                            run_dirs: Sequence[Path] | None = None) -> None:
    """The same for a stack: ``params`` are ``{name: [run, ...]}`` views; run ``r`` with a parent gets
    its parent's checkpoint, the others keep their seeded initialisation."""
    for r, cfg in enumerate(configs):
        d = None if run_dirs is None else run_dirs[r]
        if cfg.train.init_from is None or _has_state(d):
            continue
        src = parent_params(_effective_epoch(cfg, d), _recorded_digest(d))
        for name, p in params.items():
            p[r].copy_(src[name].to(p.device, p.dtype))
