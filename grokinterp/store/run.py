"""Load a run directory: config, metrics, split and every checkpoint.

Example:
    >>> run = load_run("checkpoints/quick")                       # doctest: +SKIP
    >>> run.epochs[:3], run.metrics.columns.tolist()               # doctest: +SKIP
    >>> W_E = run.stack("embed.W_E")       # [ckpt, d_vocab, d_model], memory-mapped
    >>> model = run.model(-1)              # HookedGrokTransformer at the last checkpoint

Files are validated as they are read and nothing is unpickled. ``run.json`` and the split are
essential (without them nothing is usable) and raise :class:`RunError` at load time; a damaged
shard only removes its own checkpoints (listed in ``run.problems``, with a warning); a damaged
metrics table raises when ``run.metrics`` is read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import FORMAT_VERSION, RunConfig
from ..errors import ConfigError, RunError
from ..model import n_params, param_shapes
from . import layout as _io
from .writer import METRIC_COLUMNS

__all__ = ["Run", "load_run", "RunWarning"]


class RunWarning(UserWarning):
    """A part of a run is damaged; the rest stays usable."""


@dataclass(frozen=True)
class _Shard:
    path: Path
    epochs: np.ndarray


def _read_run_info(path: Path) -> tuple[dict[str, Any], RunConfig]:
    run_json = path / _io.RUN_JSON
    info = _io.read_json(run_json, "run metadata")
    if not isinstance(info, dict) or info.get("kind") != _io.RUN_KIND:
        raise RunError(f"{run_json}: not a grokinterp run file (no \"kind\": \"{_io.RUN_KIND}\")")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RunError(f"{run_json}: format_version is missing or not a positive integer")
    if version > FORMAT_VERSION:
        raise RunError(f"{run_json}: written by a newer grokinterp (format {version}; this version reads "
                       f"up to {FORMAT_VERSION}); upgrade grokinterp to read it")
    missing = [k for k in _RUN_FIELDS if k not in info]
    extra = sorted(set(info) - set(_RUN_FIELDS) - set(_RUN_OPTIONAL))
    if missing or extra:
        raise RunError(f"{run_json}: field(s) {missing} missing, {extra} unexpected")
    for key, types in {**_RUN_FIELDS, **_RUN_OPTIONAL}.items():
        if key in info and (not isinstance(info[key], types) or isinstance(info[key], bool)):
            raise RunError(f"{run_json}: field {key!r} has the wrong type ({type(info[key]).__name__})")
    try:
        config = RunConfig.from_dict(info["config"], source=str(run_json))
    except ConfigError as e:
        raise RunError(str(e)) from None
    _check_plausible(config, run_json)
    return info, config


#: Top-level fields of ``run.json`` and their JSON types; unknown fields are refused.
_RUN_FIELDS: dict[str, Any] = {
    "kind": str, "format_version": int, "config": dict, "preset": (str, type(None)), "seeds": dict,
    "n_train": int, "n_test": int, "created": str, "versions": dict, "device": dict,
}
_RUN_OPTIONAL: dict[str, Any] = {"imported_from": dict}  # written by grokinterp.legacy

# Loader limits: a config beyond them is damage, not a model (and would exhaust memory when built).
_MAX_LAYERS = 1024
_MAX_PARAMS = 2 ** 34
_MAX_EPOCHS = 10 ** 8  # the paper trains 40k; a resumed run holds per-epoch metrics in memory
_MAX_CHECKPOINTS = 10 ** 7


def _check_plausible(config: RunConfig, run_json: Path) -> None:
    m = config.model
    n = n_params(m)
    if m.n_layers > _MAX_LAYERS or n > _MAX_PARAMS:
        raise RunError(f"{run_json}: implausible model size ({m.n_layers} layers, {n} parameters per checkpoint; "
                       f"this loader accepts up to {_MAX_LAYERS} layers and {_MAX_PARAMS} parameters)")
    E, ck = config.train.epochs, config.checkpoints
    n_ckpt = E // ck.every + 2 + ck.log_early + sum(max(min(stop, E) - start, 0) // step + 1
                                                    for start, stop, step in ck.windows)
    if E > _MAX_EPOCHS or n_ckpt > _MAX_CHECKPOINTS:
        raise RunError(f"{run_json}: implausible schedule ({E} epochs, about {n_ckpt} checkpoints; this loader "
                       f"accepts up to {_MAX_EPOCHS} epochs and {_MAX_CHECKPOINTS} checkpoints)")


class Run:
    """A trained (or training) run on disk. Build with :func:`load_run`.

    Attributes:
        path: the run directory.
        info: the parsed ``run.json`` (configs, versions, seeds, device, preset).
        config: the :class:`~grokinterp.config.RunConfig`.
        epochs: int64 array of the checkpoint epochs available, sorted.
        problems: damaged files found while loading (their checkpoints are left out).
    """

    def __init__(self, path: Path, info: dict[str, Any], config: RunConfig, shards: list[_Shard], problems: list[str]):
        self.path = path
        self.info = info
        self.config = config
        self.problems = problems
        self._shards = shards
        where: dict[int, tuple[int, int]] = {}
        for si, sh in enumerate(shards):
            for row, e in enumerate(sh.epochs.tolist()):
                where[e] = (si, row)
        self._where = where
        self.epochs = np.array(sorted(where), dtype=np.int64)
        self._mmaps: dict[int, dict[str, np.ndarray]] = {}

    # -- metadata ----------------------------------------------------------------------------
    @property
    def p(self) -> int:
        return self.config.task.p

    @property
    def task(self):
        """The run's :class:`~grokinterp.tasks.Task` (vocabulary, valid pairs, labels, structure)."""
        return self.config.task.task()

    @cached_property
    def progress(self) -> dict[str, Any]:
        """``progress.json``: epoch reached, finished or not (empty dict if absent)."""
        path = self.path / _io.PROGRESS_JSON
        if not path.exists():
            return {}
        prog = _io.read_json(path, "progress file")
        if not isinstance(prog, dict):
            raise RunError(f"{path}: progress file must hold a JSON object, got {type(prog).__name__}")
        epoch, finished = prog.get("epoch", 0), prog.get("finished", False)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise RunError(f"{path}: 'epoch' must be a non-negative integer, got {epoch!r}")
        if not isinstance(finished, bool):
            raise RunError(f"{path}: 'finished' must be true or false, got {finished!r}")
        return prog

    @property
    def finished(self) -> bool:
        return bool(self.progress.get("finished", False))

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """One row per epoch: ``epoch, train_loss, train_acc, test_loss, test_acc, lr`` (NaN = not
        recorded), then any columns training callbacks added (the live measures: ``live_*``)."""
        path = self.path / _io.METRICS_CSV
        if not path.exists():
            raise RunError(f"{path}: metrics table is missing")
        try:
            df = pd.read_csv(path)
        except (ValueError, OSError, OverflowError) as e:  # ParserError, EmptyDataError, UnicodeDecodeError
            raise RunError(f"{path}: cannot parse the metrics table ({type(e).__name__}: {str(e)[:200]})") from None
        missing = [c for c in METRIC_COLUMNS if c not in df.columns]
        if missing:
            raise RunError(f"{path}: metrics table lacks column(s) {missing}")
        # Extra columns written by training callbacks (the live measures) follow the built-in ones;
        # they are kept as read (numbers, or texts) and checked by whoever interprets them.
        extra = [c for c in df.columns if c not in METRIC_COLUMNS and isinstance(c, str) and c.isidentifier()]
        df = df[list(METRIC_COLUMNS) + extra]
        for c in METRIC_COLUMNS:
            if not pd.api.types.is_numeric_dtype(df[c]):
                raise RunError(f"{path}: column {c!r} holds non-numeric values")
        epochs = df["epoch"].to_numpy(dtype=np.float64)
        if len(epochs) and not np.array_equal(epochs, np.arange(len(epochs))):
            ok = np.isfinite(epochs) & (epochs == np.round(epochs))
            if not ok.all():
                detail = f"epoch column holds non-integers ({epochs[~ok][:3].tolist()})"
            else:
                seen = set(epochs.astype(np.int64).tolist())
                first_gap = next(i for i in range(len(epochs) + 1) if i not in seen)
                detail = (f"missing rows from epoch {first_gap}" if first_gap < max(seen)
                          else "epochs out of order or repeated")
            raise RunError(f"{path}: metrics table is inconsistent: {detail}")
        limit = self.config.train.epochs + 1
        if len(df) > limit:
            raise RunError(f"{path}: metrics table has {len(df)} rows, more than the {limit} epochs of the run")
        try:
            prog = self.progress
        except RunError:  # progress.json has its own error; the table itself is consistent
            prog = {}
        if prog:
            expected = int(prog.get("epoch", 0)) + (1 if prog.get("finished") else 0)
            if len(df) < expected:
                raise RunError(f"{path}: metrics table is missing rows: it ends at epoch {len(df) - 1}, but "
                               f"{_io.PROGRESS_JSON} says epochs up to {expected - 1} were trained")
        df["epoch"] = df["epoch"].astype(np.int64)
        return df

    def eval_metrics(self) -> pd.DataFrame:
        """The rows of :attr:`metrics` where test loss was recorded."""
        m = self.metrics
        return m[m["test_loss"].notna()].reset_index(drop=True)

    def split_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored split as grid indices ``a * p + b``: ``(train_pairs, test_pairs)``."""
        return self._split

    @cached_property
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        path = self.path / _io.SPLIT_FILE
        arrays = _io.mmap_tensors(path, ["train_pairs", "test_pairs"])
        trn, tst = (np.array(arrays[k]) for k in ("train_pairs", "test_pairs"))
        p2 = self.p ** 2
        for name, a in (("train_pairs", trn), ("test_pairs", tst)):
            if a.ndim != 1 or a.dtype != np.int64 or (len(a) and (a.min() < 0 or a.max() >= p2)):
                raise RunError(f"{path}: {name} must be int64 indices in [0, {p2})")
        if len(np.intersect1d(trn, tst)):
            raise RunError(f"{path}: train and test pairs overlap")
        n = len(trn) + len(tst)
        for key, have in (("n_train", len(trn)), ("n_test", len(tst))):
            if self.info.get(key) != have:
                raise RunError(f"{path}: holds {have} {key[2:]} pairs, {_io.RUN_JSON} says {key} = {self.info.get(key)}")
        # The split must cover exactly the task's valid pairs. (Bound p first: a damaged p must not
        # make us build a p² grid far larger than the split; the built-in tasks keep ≥ p(p-1) pairs.)
        if p2 > 4 * n + 64:
            raise RunError(f"{path}: holds {n} pairs, but the task mod {self.p} has up to {p2}")
        valid = self.task.valid_pairs()
        if len(valid) != n or not np.array_equal(np.sort(np.concatenate([trn, tst])), valid):
            raise RunError(f"{path}: train and test pairs do not partition the {len(valid)} valid pairs of "
                           f"{self.config.task.operation} mod {self.p} (repeated, invalid or missing pairs)")
        return trn, tst

    def _data(self, which: int) -> tuple[Tensor, Tensor]:
        tokens, labels = self.task.dataset().select(self._split[which])
        return torch.from_numpy(tokens), torch.from_numpy(labels)

    def train_data(self) -> tuple[Tensor, Tensor]:
        """Training tokens ``[n_train, 3]`` and labels ``[n_train]`` (int64, CPU)."""
        return self._data(0)

    def test_data(self) -> tuple[Tensor, Tensor]:
        """Test tokens ``[n_test, 3]`` and labels ``[n_test]`` (int64, CPU)."""
        return self._data(1)

    # -- checkpoints -------------------------------------------------------------------------
    def resolve_epoch(self, epoch: int) -> int:
        """An epoch number, with negative values counting from the end (``-1`` = last)."""
        if len(self.epochs) == 0:
            raise RunError(f"{self.path}: the run has no readable checkpoints")
        epoch = int(epoch)
        if epoch < 0:
            if -epoch > len(self.epochs):
                raise RunError(f"{self.path}: checkpoint index {epoch} out of range ({len(self.epochs)} checkpoints)")
            return int(self.epochs[epoch])
        if epoch not in self._where:
            i = int(np.searchsorted(self.epochs, epoch))
            near = self.epochs[max(i - 1, 0): i + 1].tolist()
            raise RunError(f"{self.path}: no checkpoint at epoch {epoch}; nearest: {near}")
        return epoch

    def _shard_arrays(self, si: int) -> dict[str, np.ndarray]:
        if si not in self._mmaps:
            self._mmaps[si] = _io.mmap_tensors(self._shards[si].path)
        return self._mmaps[si]

    def params(self, epoch: int = -1) -> dict[str, Tensor]:
        """``{name: tensor}`` at ``epoch`` (copies, float32, CPU)."""
        e = self.resolve_epoch(epoch)
        si, row = self._where[e]
        arrays = self._shard_arrays(si)
        return {name: torch.from_numpy(np.array(arrays[name][row])) for name in param_shapes(self.config.model)}

    def model(self, epoch: int = -1, device: str | torch.device = "cpu"):
        """A ready :class:`~grokinterp.model.HookedGrokTransformer` at ``epoch`` (``-1`` = last)."""
        from ..model.hooked import HookedGrokTransformer

        params = self.params(epoch)  # first: a bad epoch must not cost building the model
        model = HookedGrokTransformer(self.config.model, init=False)
        model.load_params(params)
        return model.to(device).eval()

    def stack(self, name: str, epochs: Sequence[int] | np.ndarray | None = None) -> Tensor:
        """One parameter across checkpoints, ``[ckpt, ...]``.

        Args:
            name: a TransformerLens parameter name (``embed.W_E``, ``blocks.0.mlp.W_out``, ...).
            epochs: which checkpoints (default: all of :attr:`epochs`).

        Returns:
            float32 tensor. When the checkpoints asked for are consecutive rows of one shard it is
            a memory-mapped view of that file (copy-on-write: nothing is read until used);
            otherwise a copy.
        """
        shapes = param_shapes(self.config.model)
        if name not in shapes:
            raise RunError(f"{self.path}: no parameter named {name!r}; parameters: {', '.join(shapes)}")
        eps = self.epochs if epochs is None else [self.resolve_epoch(e) for e in epochs]
        if len(eps) == 0:
            raise RunError(f"{self.path}: no checkpoints to stack")
        locs = [self._where[int(e)] for e in eps]
        shard_ids = {si for si, _ in locs}
        if len(shard_ids) == 1:
            si = locs[0][0]
            rows = [r for _, r in locs]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                return torch.from_numpy(self._shard_arrays(si)[name][rows[0]: rows[-1] + 1])
        parts = []
        i = 0
        while i < len(locs):  # gather runs of rows from the same shard
            si, r0 = locs[i]
            j = i
            while j + 1 < len(locs) and locs[j + 1] == (si, locs[j][1] + 1):
                j += 1
            parts.append(np.asarray(self._shard_arrays(si)[name][r0: locs[j][1] + 1]))
            i = j + 1
        return torch.from_numpy(np.concatenate(parts, axis=0))

    def stacks(self, names: Sequence[str] | None = None, epochs=None) -> dict[str, Tensor]:
        """Several parameters at once: ``{name: [ckpt, ...]}`` (all parameters by default)."""
        names = list(param_shapes(self.config.model)) if names is None else list(names)
        return {n: self.stack(n, epochs) for n in names}

    def iter_chunks(self, chunk: int = 64, names: Sequence[str] | None = None,
                    epochs=None) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """Yield ``(epochs, {name: [≤ chunk, ...]})`` over the checkpoints, bounding memory."""
        eps = self.epochs if epochs is None else np.array([self.resolve_epoch(e) for e in epochs])
        if chunk < 1:
            raise RunError(f"chunk: must be positive, got {chunk}")
        for i in range(0, len(eps), chunk):
            part = eps[i: i + chunk]
            yield part, self.stacks(names, part)

    # -- display -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Key facts: config, checkpoints, final losses, epoch test accuracy first passed 99 %."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "preset": self.info.get("preset"),
            "task": f"{self.config.task.operation} mod {self.p}, frac_train {self.config.task.frac_train}",
            "device": self.info.get("device", {}).get("type"),
            "finished": self.finished,
            "epoch_reached": self.progress.get("epoch"),
            "epochs_total": self.config.train.epochs,
            "n_checkpoints": int(len(self.epochs)),
            "first_checkpoint": int(self.epochs[0]) if len(self.epochs) else None,
            "last_checkpoint": int(self.epochs[-1]) if len(self.epochs) else None,
            "problems": list(self.problems),
        }
        try:
            ev = self.eval_metrics()
        except RunError as e:
            out["metrics_error"] = str(e)
            return out
        if len(ev):
            last = ev.iloc[-1]
            out.update({
                "final_epoch": int(last["epoch"]),
                "final_train_loss": float(last["train_loss"]),
                "final_test_loss": float(last["test_loss"]),
                "final_train_acc": float(last["train_acc"]),
                "final_test_acc": float(last["test_acc"]),
            })
            hit = ev[ev["test_acc"] >= 0.99]
            out["test_acc_99_epoch"] = int(hit["epoch"].iloc[0]) if len(hit) else None
            hit = ev[ev["train_acc"] >= 0.99]
            out["train_acc_99_epoch"] = int(hit["epoch"].iloc[0]) if len(hit) else None
        return out

    def __repr__(self) -> str:
        c = self.config
        span = f"epochs {self.epochs[0]}..{self.epochs[-1]}" if len(self.epochs) else "no checkpoints"
        state = "finished" if self.finished else f"at epoch {self.progress.get('epoch')}"
        return (f"Run({str(self.path)!r}: {c.task.operation} mod {c.task.p}, {len(self.epochs)} checkpoints "
                f"({span}), {state})")


def _scan_shards(path: Path, config: RunConfig) -> tuple[list[_Shard], list[str]]:
    shapes = param_shapes(config.model)
    shards, problems = [], []
    shard_dir = path / _io.SHARD_DIR
    files = sorted(shard_dir.glob("ckpt_*.safetensors")) if shard_dir.is_dir() else []
    seen: set[int] = set()
    for f in files:
        try:
            header, _ = _io.read_safetensors_header(f)
            info = header.get("epochs")
            if info is None or info.get("dtype") != "I64" or len(info.get("shape", [])) != 1:
                raise RunError(f"{f}: 'epochs' must be an int64 vector")
            n = int(info["shape"][0])
            for name, shape in shapes.items():
                t = header.get(name)
                if t is None:
                    raise RunError(f"{f}: parameter {name!r} is missing")
                if t["dtype"] != "F32":
                    raise RunError(f"{f}: parameter {name!r} has dtype {t['dtype']}, expected F32")
                if list(t["shape"]) != [n, *shape]:
                    raise RunError(f"{f}: parameter {name!r} has shape {t['shape']}, expected {[n, *shape]}")
            extra = set(header) - set(shapes) - {"epochs", "__metadata__"}
            if extra:
                raise RunError(f"{f}: unexpected tensor(s) {sorted(extra)}")
            epochs = np.array(_io.mmap_tensors(f, ["epochs"])["epochs"])
            if n and (np.any(np.diff(epochs) <= 0) or epochs[0] < 0 or epochs[-1] > config.train.epochs):
                raise RunError(f"{f}: epochs are not increasing within [0, {config.train.epochs}]")
            if seen.intersection(epochs.tolist()):
                raise RunError(f"{f}: repeats epochs already held by another shard")
            seen.update(epochs.tolist())
            shards.append(_Shard(f, epochs))
        except RunError as e:
            problems.append(str(e))
    return shards, problems


def load_run(path: str | os.PathLike, *, strict: bool = False) -> Run:
    """Open a run directory.

    Args:
        path: a directory written by :func:`grokinterp.train`.
        strict: raise on any damaged shard instead of leaving its checkpoints out with a warning.

    Raises:
        RunError: the path is not a run, ``run.json`` or the split is missing or malformed, or
            (``strict``) a shard is damaged.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory (expected a run directory)")
    if not (path / _io.RUN_JSON).exists():
        raise RunError(f"{path}: not a grokinterp run (no {_io.RUN_JSON})")
    info, config = _read_run_info(path)
    shards, problems = _scan_shards(path, config)
    if problems:
        if strict:
            raise RunError("; ".join(problems))
        warnings.warn(f"{path}: {len(problems)} damaged file(s) left out: " + "; ".join(problems),
                      RunWarning, stacklevel=2)
    run = Run(path, info, config, shards, problems)
    run.split_pairs()  # essential: validate now
    return run
