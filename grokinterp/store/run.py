"""Load a run directory: config, metrics, split and every checkpoint.

Example:
    >>> run = load_run("checkpoints/quick")                       # doctest: +SKIP
    >>> run.epochs[:3], run.metrics.columns.tolist()               # doctest: +SKIP
    >>> W_E = run.stack("embed.W_E")       # [ckpt, d_vocab, d_model], memory-mapped
    >>> model = run.model(-1)              # HookedGrokTransformer at the last checkpoint

Every file is checked before its bytes are used, and nothing is unpickled:

* **against the manifest** (:class:`~grokinterp.store.integrity.ReadChecker`): each file's size and
  digest, lazily — a shard when one of its checkpoints is first needed, the metrics when
  ``run.metrics`` is first read — once per file per :class:`Run` (the checked bytes are what is
  used: shards stay memory-mapped from the very mapping that was hashed). Files written by a flush
  that is under way or was interrupted match the flush's record in the manifest and are used;
* **for structure**: safetensors headers, JSON fields, the split, the metrics table, and that each
  shard holds exactly the checkpoints its file name and the run's schedule say;
* **for type and place** (:func:`~grokinterp.store.layout.open_regular`): only regular files inside
  the run are opened; JSON is size-capped.

``run.json`` and the split are essential (without them nothing is usable) and raise
:class:`RunError` at load time. A damaged, missing or foreign shard only removes its own
checkpoints: a :class:`RunWarning` names the file and the epochs left out, ``run.problems`` lists
them, and a call that needed one of them raises :class:`RunError`; ``load_run(path, strict=True)``
checks everything at once and raises instead. A damaged metrics table or progress file raises when
read. ``load_run(path, check=False)`` (or ``GROKINTERP_TRUST_STORAGE=1``) skips the manifest checks
for storage you trust; structure is still checked.
"""

from __future__ import annotations

import io
import os
import stat
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..config import FORMAT_VERSION, LIMITS, RunConfig
from ..errors import ConfigError, RunError
from ..model import param_shapes
from ..tasks import fixed_size, split_pairs, training_labels
from . import layout as _io
from .integrity import ReadChecker, never_flushed
from .writer import METRIC_COLUMNS

__all__ = ["Run", "load_run", "RunWarning", "run_directory", "describe_lineage"]


class RunWarning(UserWarning):
    """A part of a run is damaged; the rest stays usable."""


@dataclass
class _Shard:
    """A shard the run may use: its file, the epochs it must hold, and what is known of it so far."""

    rel: str
    path: Path
    span: tuple[int, int]
    expected: np.ndarray | None  # the epochs its name and the schedule say (None: imported run, read it)
    arrays: dict[str, np.ndarray] | None = None  # tensor views, once checked
    dropped: str | None = None  # why it was left out
    epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


#: The safetensors dtype of a run's checkpoint tensors, by ``train.dtype``.
_STORED = {"float32": "F32", "float64": "F64"}


def _as(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``t`` in ``dtype`` (``None``: as it is; no copy when it already is)."""
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


def _fmt_epochs(epochs: Sequence[int] | np.ndarray) -> str:
    e = [int(x) for x in epochs]
    if not e:
        return "none"
    if len(e) <= 8:
        return ", ".join(map(str, e))
    return f"{e[0]}, {e[1]}, {e[2]}, ..., {e[-2]}, {e[-1]} ({len(e)} checkpoints)"


#: Shards checked ahead, in worker threads, when a loop over checkpoints opens one.
_PREFETCH = 2
_EXECUTOR: list[Any] = []


def _executor():
    """The worker threads that check shards ahead (two: hashing is memory-bound)."""
    if not _EXECUTOR:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR.append(ThreadPoolExecutor(max_workers=2, thread_name_prefix="grokinterp-check"))
    return _EXECUTOR[0]


if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads: start afresh
    os.register_at_fork(after_in_child=_EXECUTOR.clear)


def _trust_storage() -> bool:
    return os.environ.get("GROKINTERP_TRUST_STORAGE", "").strip().lower() in ("1", "true", "yes", "on")


def _read_checked(path: Path, checker: ReadChecker, rel: str, what: str, max_bytes: int | None) -> bytes:
    """A run file's bytes, checked against the manifest. On a live run a file may be replaced between
    reading it and reading the manifest; it is read again a few times before being called damaged."""
    for attempt in range(6):
        raw = _io.read_file(path / rel, path, what, max_bytes)
        try:
            checker.check(rel, raw, what)
            return raw
        except RunError:
            if attempt == 5 or not _live(path):
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _live(path: Path) -> bool:
    from .lock import holder

    try:
        h = holder(path)
    except RunError:
        return False
    return h is not None and h.alive is not False


def _read_run_info(path: Path, checker: ReadChecker) -> tuple[dict[str, Any], RunConfig]:
    run_json = path / _io.RUN_JSON
    raw = _read_checked(path, checker, _io.RUN_JSON, "run metadata", LIMITS.json_bytes)
    info = _io.parse_json(raw, run_json, "run metadata")
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
    try:  # the config's own validation applies the limits shared with training (config.LIMITS)
        config = RunConfig.from_dict(info["config"], source=str(run_json))
    except ConfigError as e:
        raise RunError(str(e)) from None
    return info, config


#: Top-level fields of ``run.json`` and their JSON types; unknown fields are refused.
_RUN_FIELDS: dict[str, Any] = {
    "kind": str, "format_version": int, "config": dict, "seeds": dict,
    "n_train": int, "n_test": int, "created": str, "versions": dict, "device": dict,
}
# imported_from: written by grokinterp.store.legacy; stack: the stack a run was trained in
# (grokinterp.training.stacked: its members, this run's index, the implementation); preset: the
# preset a command line named (absent for a config built in Python; null in runs of release 0.1.0).
# lineage: a run started from a parent's checkpoint or trained on changed data
# (grokinterp.training.lineage, issue 21).
_RUN_OPTIONAL: dict[str, Any] = {"imported_from": dict, "stack": dict, "preset": (str, type(None)),
                                 "lineage": dict}

class Run:
    """A trained (or training) run on disk. Build with :func:`load_run`.

    Attributes:
        path: the run directory.
        info: the parsed ``run.json`` (configs, versions, seeds, device, preset).
        config: the :class:`~grokinterp.config.RunConfig`.
        problems: damaged, missing or foreign files found so far, each with the checkpoints it took
            out (found at load time or when a file is first read; :meth:`check` reads them all now).
        session: what the training call that returned this run did (``None`` when loaded).

    Tables are properties: :attr:`metrics` (every epoch; NaN where a value was not recorded) and
    :attr:`evals` (the evaluation epochs only, no NaN). ``eval_metrics()`` is a deprecated method
    kept for older code.
    """

    def __init__(self, path: Path, info: dict[str, Any], config: RunConfig, shards: list[_Shard],
                 problems: list[str], checker: ReadChecker, strict: bool = False):
        self.path = path
        self.info = info
        self.config = config
        self.problems = problems
        self.strict = strict
        self._checker = checker
        self._shards = shards
        self._futures: dict[int, Any] = {}  # shard index -> its check under way in a worker thread
        self._index()

    def _index(self) -> None:
        where: dict[int, tuple[int, int]] = {}
        for si, sh in enumerate(self._shards):
            if sh.dropped is None:
                for row, e in enumerate(sh.epochs.tolist()):
                    where[e] = (si, row)
        self._where = where
        self._epochs = np.array(sorted(where), dtype=np.int64)
        #: What the call that returned this run trained (set by :func:`grokinterp.train` and
        #: :func:`grokinterp.resume`; ``None`` for :func:`load_run`): a dict with ``action``
        #: (``trained``, ``resumed`` or ``already_finished``), ``start_epoch``, ``end_epoch``,
        #: ``epochs_trained`` and ``threads`` (torch CPU threads used).
        self.session: dict[str, Any] | None = None

    @property
    def epochs(self) -> np.ndarray:
        """int64 array of the checkpoint epochs available, sorted: those the manifest lists, less any
        found damaged so far (:meth:`check` checks every file now)."""
        return self._epochs

    @property
    def checked(self) -> bool:
        """Whether files are checked against the manifest as they are read (``load_run(check=...)``)."""
        return self._checker.enabled

    # -- metadata ----------------------------------------------------------------------------
    @property
    def p(self) -> int:
        return self.config.task.p

    @property
    def task(self):
        """The run's :class:`~grokinterp.tasks.Task` (vocabulary, valid pairs, labels, structure)."""
        return self.config.task.task()

    @property
    def writer(self):
        """Who is writing this run now (:class:`~grokinterp.store.lock.Holder`: host, pid, since), or
        ``None`` when no live process holds its lock."""
        from .lock import holder

        try:
            return holder(self.path)
        except RunError:
            return None

    @property
    def training(self) -> bool:
        """True while a live process holds the run lock (the run is being trained)."""
        h = self.writer
        return h is not None and h.alive is not False

    def _listed(self, rel: str) -> bool:
        m = self._checker.manifest
        return m is not None and rel in m.files

    @cached_property
    def progress(self) -> dict[str, Any]:
        """``progress.json``: epoch reached, finished or not (empty dict if absent)."""
        path = self.path / _io.PROGRESS_JSON
        if not os.path.lexists(path) and not self._listed(_io.PROGRESS_JSON):
            return {}
        raw = _read_checked(self.path, self._checker, _io.PROGRESS_JSON, "progress file", LIMITS.json_bytes)
        prog = _io.parse_json(raw, path, "progress file")
        if not isinstance(prog, dict):
            raise RunError(f"{path}: progress file must hold a JSON object, got {type(prog).__name__}")
        epoch, finished = prog.get("epoch", 0), prog.get("finished", False)
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise RunError(f"{path}: 'epoch' must be a non-negative integer, got {epoch!r}")
        if not isinstance(finished, bool):
            raise RunError(f"{path}: 'finished' must be true or false, got {finished!r}")
        written = prog.get("checkpoints_written", 0)
        if not isinstance(written, int) or isinstance(written, bool) or written < 0:
            raise RunError(f"{path}: 'checkpoints_written' must be a non-negative integer, got {written!r}")
        stopped = prog.get("stopped")
        if stopped is not None and not (isinstance(stopped, dict) and all(
                isinstance(stopped.get(k), int) and not isinstance(stopped.get(k), bool) and stopped[k] >= 0
                for k in ("epoch", "step"))):
            raise RunError(f"{path}: 'stopped' must be an object with non-negative integers 'epoch' and 'step', "
                           f"got {stopped!r}")
        return prog

    @property
    def stopped(self) -> dict[str, Any] | None:
        """The ``stopped`` record of ``progress.json``: the run was stopped early by a rule (a sweep's
        ``[stop]``) at ``epoch`` / ``step``, and counts as done; ``None`` for every other run (finished,
        interrupted, or written before the record existed). Resuming the run drops it."""
        rec = self.progress.get("stopped")
        return None if self.finished or rec is None else dict(rec)

    @property
    def finished(self) -> bool:
        return bool(self.progress.get("finished", False))

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """The training log: one row per epoch ``0 .. E``, columns ``epoch, train_loss, train_acc,
        test_loss, test_acc, lr``, then any columns training callbacks added (the live measures:
        ``live_*``, every ``train.live_every`` epochs); NaN means "not recorded at this epoch".

        Row ``e`` describes the model after ``e`` steps. What is recorded where (runs trained by
        grokinterp):

        ============  =========================================================================
        column        recorded at
        ============  =========================================================================
        train_loss    every epoch (the loss of step ``e``, before its update; the final epoch
                      ``E`` is evaluated without a step)
        lr            every epoch but the last (the learning rate of step ``e``; none at ``E``)
        test_loss,    every ``train.eval_every`` epochs and at ``E``: NaN in between
        test_acc,
        train_acc
        ============  =========================================================================

        Minibatch runs (``train.batch_size`` set; ``k`` optimizer steps an epoch) record row ``e``
        at the model after ``e · k`` steps: ``train_loss`` / ``train_acc`` are a full-training-set
        evaluation recorded with the test metrics (every ``eval_every`` epochs and at ``E``; NaN in
        between), ``lr`` is that of step ``e · k``, and an extra ``step`` column holds ``e · k``
        (their checkpoints may count steps: :attr:`checkpoint_unit`).

        A run still training has rows up to its last flush. Imported runs
        (:mod:`~grokinterp.store.legacy`) hold the recorded curves (test loss possibly every ``k``
        epochs), accuracies only at checkpoint epochs, and no ``lr``. For the evaluations alone,
        without NaN, use :attr:`evals`.
        """
        path = self.path / _io.METRICS_CSV
        try:  # first: on a live run the table read after it is at least as new
            prog = self.progress
        except RunError:  # progress.json has its own error; the table itself may be consistent
            prog = {}
        if not os.path.lexists(path) and not self._listed(_io.METRICS_CSV):
            raise RunError(f"{path}: metrics table is missing")
        cap = 256 * (self.config.train.epochs + 2) + 4096  # a row is under 150 bytes
        raw = _read_checked(self.path, self._checker, _io.METRICS_CSV, "metrics table", cap)
        try:
            df = pd.read_csv(io.BytesIO(raw))
        except (ValueError, OSError, OverflowError) as e:  # ParserError, EmptyDataError, UnicodeDecodeError
            raise RunError(f"{path}: cannot parse the metrics table ({type(e).__name__}: {str(e)[:200]})") from None
        missing = [c for c in METRIC_COLUMNS if c not in df.columns]
        if missing:
            raise RunError(f"{path}: metrics table lacks column(s) {missing}")
        shape = _header_mismatch(raw, list(df.columns))
        if shape:
            raise RunError(f"{path}: metrics table is inconsistent: {shape}")
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
        if prog:
            expected = int(prog.get("epoch", 0)) + (1 if prog.get("finished") else 0)
            if len(df) < expected:
                raise RunError(f"{path}: metrics table is missing rows: it ends at epoch {len(df) - 1}, but "
                               f"{_io.PROGRESS_JSON} says epochs up to {expected - 1} were trained")
        df["epoch"] = df["epoch"].astype(np.int64)
        return df

    @property
    def evals(self) -> pd.DataFrame:
        """The evaluations: the rows of :attr:`metrics` where the test loss was recorded, with
        columns ``epoch, train_loss, train_acc, test_loss, test_acc`` (no ``lr``: it belongs to a
        step). In runs trained by grokinterp every value is set (no NaN): every
        ``train.eval_every`` epochs and the final epoch. (Imported runs may lack the accuracies
        between checkpoints.)
        """
        m = self.metrics
        return m.loc[m["test_loss"].notna(), list(METRIC_COLUMNS[:-1])].reset_index(drop=True)

    def eval_metrics(self) -> pd.DataFrame:
        """Deprecated: use the property :attr:`evals` (this method also keeps the ``lr`` column).

        The rows of :attr:`metrics` where test loss was recorded. Kept so that older code runs; it
        warns with a :class:`DeprecationWarning` and will be removed in a later release.
        """
        warnings.warn("Run.eval_metrics() is deprecated; use the property run.evals (or run.metrics for every "
                      "epoch)", DeprecationWarning, stacklevel=2)
        m = self.metrics
        return m[m["test_loss"].notna()].reset_index(drop=True)

    def split_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored split as grid indices ``a * p + b``: ``(train_pairs, test_pairs)``."""
        return self._split

    @cached_property
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        path = self.path / _io.SPLIT_FILE
        vector = getattr(self.task, "vector_input", False)  # a dataset task: example ids, not grid indices
        n_ids = len(self.task.valid_pairs()) if vector else self.p ** 2
        raw = _read_checked(self.path, self._checker, _io.SPLIT_FILE, "split", 8 * n_ids + (1 << 16))
        header, start = _io.parse_safetensors_header(raw, path)
        arrays = _io.tensor_views(bytearray(raw), header, start, ["train_pairs", "test_pairs"], path)
        trn, tst = (np.array(arrays[k]) for k in ("train_pairs", "test_pairs"))
        p2 = n_ids
        for name, a in (("train_pairs", trn), ("test_pairs", tst)):
            if a.ndim != 1 or a.dtype != np.int64 or (len(a) and (a.min() < 0 or a.max() >= p2)):
                raise RunError(f"{path}: {name} must be int64 indices in [0, {p2})")
        if len(np.intersect1d(trn, tst)):
            raise RunError(f"{path}: train and test pairs overlap")
        n = len(trn) + len(tst)
        for key, have in (("n_train", len(trn)), ("n_test", len(tst))):
            if self.info.get(key) != have:
                raise RunError(f"{path}: holds {have} {key[2:]} pairs, {_io.RUN_JSON} says {key} = {self.info.get(key)}")
        if vector:  # the task's own seeded split, exactly (train_size ids of the pool; the test ids)
            want = split_pairs(self.config.task)
            if not (np.array_equal(trn, want[0]) and np.array_equal(tst, want[1])):
                raise RunError(f"{path}: the train / test example ids are not the seeded split of "
                               f"{self.config.task.operation} (split_seed {self.config.task.split_seed}, train_size "
                               f"{self.config.task.train_size})")
            return trn, tst
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
        if which == 0:  # the labels it trained on (random ones for task.random_labels)
            labels = training_labels(self.config.task, self._split[0], labels)
        return torch.from_numpy(tokens), torch.from_numpy(labels)

    @property
    def lineage(self) -> dict[str, Any] | None:
        """``run.json``'s ``lineage`` (issue 21): the parent run and checkpoint this run started from,
        their digests, and how its training pairs and labels were drawn; ``None`` for a plain run."""
        lin = self.info.get("lineage")
        return lin if isinstance(lin, dict) else None

    def train_data(self) -> tuple[Tensor, Tensor]:
        """Training tokens ``[n_train, 3]`` and labels ``[n_train]`` (int64, CPU): the labels the run
        trained on (random ones when ``task.random_labels``; :meth:`test_data` keeps the true ones)."""
        return self._data(0)

    def test_data(self) -> tuple[Tensor, Tensor]:
        """Test tokens ``[n_test, 3]`` and labels ``[n_test]`` (int64, CPU)."""
        return self._data(1)


    # -- checkpoints -------------------------------------------------------------------------
    def _drop(self, si: int, reason: str) -> None:
        """Leave a shard's checkpoints out: a warning and ``problems`` name the file and the epochs."""
        sh = self._shards[si]
        if sh.dropped is not None:
            return
        msg = f"{reason}; its checkpoints at epochs {_fmt_epochs(sh.epochs)} are left out"
        sh.dropped, sh.arrays = msg, None
        self.problems.append(msg)
        self._index()
        if self.strict:
            raise RunError(msg)
        warnings.warn(f"{self.path}: damaged file left out: {msg}", RunWarning, stacklevel=4)

    def _map_checked(self, sh: _Shard):
        """Map a shard and check the mapping against the manifest (safe in a worker thread)."""
        buf = _io.map_file(sh.path, self.path, "shard")
        self._checker.check(sh.rel, buf, "shard")
        return buf

    def _open_shard(self, sh: _Shard, buf=None) -> dict[str, np.ndarray]:
        """Map, check (manifest, structure, epochs) and return the tensor views of one shard (``buf``:
        its mapping, already checked against the manifest)."""
        if buf is None:
            buf = self._map_checked(sh)
        header, start = _io.parse_safetensors_header(buf, sh.path)
        info = header.get("epochs")
        if info is None or info.get("dtype") != "I64" or len(info.get("shape", [])) != 1:
            raise RunError(f"{sh.path}: 'epochs' must be an int64 vector")
        n = int(info["shape"][0])
        shapes = param_shapes(self.config.model)
        want = _STORED[self.config.train.dtype]  # F32, or F64 for a run with train.dtype = float64
        for name, shape in shapes.items():
            t = header.get(name)
            if t is None:
                raise RunError(f"{sh.path}: parameter {name!r} is missing")
            if t["dtype"] != want:
                raise RunError(f"{sh.path}: parameter {name!r} has dtype {t['dtype']}, expected {want} (train.dtype "
                               f"{self.config.train.dtype})")
            if list(t["shape"]) != [n, *shape]:
                raise RunError(f"{sh.path}: parameter {name!r} has shape {t['shape']}, expected {[n, *shape]}")
        extra = set(header) - set(shapes) - {"epochs", "__metadata__"}
        if extra:
            raise RunError(f"{sh.path}: unexpected tensor(s) {sorted(extra)}")
        arrays = _io.tensor_views(buf, header, start, ["epochs", *shapes], sh.path)
        epochs = np.array(arrays.pop("epochs"))
        if sh.expected is not None:
            if not np.array_equal(epochs, sh.expected):
                raise RunError(f"{sh.path}: holds checkpoints of epochs {_fmt_epochs(epochs)}, but its name and the "
                               f"run's checkpoint schedule say {_fmt_epochs(sh.expected)}")
        else:
            if not (n and epochs[0] == sh.span[0] and epochs[-1] == sh.span[1] and np.all(np.diff(epochs) > 0)):
                raise RunError(f"{sh.path}: holds checkpoints of epochs {_fmt_epochs(epochs)}, which are not the "
                               f"increasing epochs {sh.span[0]}..{sh.span[1]} its name says")
            sh.epochs = epochs
        return arrays

    def _prefetch(self, shard_ids) -> None:
        """Start checking shards in worker threads (hashing releases the GIL): the next shards of a
        loop over checkpoints, or all the shards a stack needs. Results are used — and damage
        reported — only when a shard is needed."""
        if not self._checker.enabled:
            return
        for si in shard_ids:
            sh = self._shards[si]
            if sh.arrays is None and sh.dropped is None and si not in self._futures:
                self._futures[si] = _executor().submit(self._map_checked, sh)

    def _shard_arrays(self, si: int) -> dict[str, np.ndarray]:
        sh = self._shards[si]
        if sh.arrays is None:
            if sh.dropped is not None:
                raise RunError(f"{self.path}: {sh.dropped}")
            future = self._futures.pop(si, None)
            self._prefetch(range(si + 1, min(si + 1 + _PREFETCH, len(self._shards))))  # while this one is hashed
            try:
                sh.arrays = self._open_shard(sh, future.result() if future is not None else None)
            except RunError as e:
                self._drop(si, str(e))
                raise RunError(f"{self.path}: {sh.dropped}") from None
        return sh.arrays

    def _check_shards(self, shard_ids=None) -> None:
        """Check shards now (all by default); damaged ones are left out with a warning, not raised."""
        ids = range(len(self._shards)) if shard_ids is None else sorted(shard_ids)
        self._prefetch(ids)
        for si in ids:
            sh = self._shards[si]
            if sh.arrays is None and sh.dropped is None:
                try:
                    self._shard_arrays(si)
                except RunError:
                    if self.strict:
                        raise

    def check(self) -> list[str]:
        """Check every file of the run now (shards, progress, metrics) instead of when first used.

        Returns:
            :attr:`problems` (damaged shards are left out with a :class:`RunWarning`; a damaged
            progress file or metrics table is listed here, and still raises when read).
        """
        self._check_shards()
        for get in (lambda: self.progress, lambda: self.metrics):
            try:
                get()
            except RunError as e:
                if str(e) not in self.problems:
                    self.problems.append(str(e))
                if self.strict:
                    raise
        return self.problems

    @property
    def checkpoint_unit(self) -> str:
        """What the checkpoint labels (:attr:`epochs`, ``model(label)``, shard names) count: ``epoch``,
        or ``step`` — optimizer steps — when the schedule counts steps (``checkpoints.unit``, unset:
        ``step`` for a minibatch run). Metrics rows are epochs in either case; a minibatch run's
        ``metrics.csv`` has a ``step`` column (``epoch · steps_per_epoch``)."""
        return self.config.checkpoint_unit()

    def checkpoint_label(self, epoch: int) -> int:
        """The checkpoint label of the model after ``epoch`` epochs: ``epoch``, or
        ``epoch · steps_per_epoch`` when labels count steps (:attr:`checkpoint_unit`)."""
        return int(epoch) * (self.config.steps_per_epoch() if self.checkpoint_unit == "step" else 1)

    def resolve_epoch(self, epoch: int) -> int:
        """An epoch number, with negative values counting from the end (``-1`` = last intact checkpoint)."""
        epoch = int(epoch)
        if epoch < 0:
            while True:
                if len(self._epochs) == 0:
                    raise RunError(f"{self.path}: the run has no readable checkpoints")
                if -epoch > len(self._epochs):
                    raise RunError(f"{self.path}: checkpoint index {epoch} out of range ({len(self._epochs)} "
                                   f"checkpoints)")
                e = int(self._epochs[epoch])
                try:  # a damaged shard found now drops out: count again among the intact ones
                    self._shard_arrays(self._where[e][0])
                    return e
                except RunError:
                    if self.strict:
                        raise
        if len(self._epochs) == 0:
            raise RunError(f"{self.path}: the run has no readable checkpoints")
        if epoch not in self._where:
            i = int(np.searchsorted(self._epochs, epoch))
            near = self._epochs[max(i - 1, 0): i + 1].tolist()
            dropped = [sh.dropped for sh in self._shards if sh.dropped and epoch in sh.epochs.tolist()]
            why = f" ({dropped[0]})" if dropped else ""
            raise RunError(f"{self.path}: no checkpoint at epoch {epoch}{why}; nearest: {near}")
        return epoch

    def params(self, epoch: int = -1, dtype: torch.dtype | None = torch.float32) -> dict[str, Tensor]:
        """``{name: tensor}`` at ``epoch`` (copies, CPU), in ``dtype``: float32 by default, what every analysis reads
        (a run trained in float64, ``train.dtype``, is rounded to it); ``None``: as stored (float64 for such a run)."""
        e = self.resolve_epoch(epoch)
        si, row = self._where[e]
        arrays = self._shard_arrays(si)
        return {name: _as(torch.from_numpy(np.array(arrays[name][row])), dtype)
                for name in param_shapes(self.config.model)}

    def model(self, epoch: int = -1, device: str | torch.device = "cpu"):
        """The family's hooked module at ``epoch`` (``-1`` = last): a
        :class:`~grokinterp.model.HookedGrokTransformer` for a transformer run, a
        :class:`~grokinterp.model.families.mlp.module.HookedMLP` for an MLP run (float32, as :meth:`params`; a
        float64 run's model in float64: ``model.double().load_params(run.params(epoch, dtype=None))``)."""
        from ..model.families import family_of

        params = self.params(epoch)  # first: a bad epoch must not cost building the model
        model = family_of(self.config.model).hooked(self.config.model, init=False)
        model.load_params(params)
        return model.to(device).eval()

    def to_transformer_lens(self, epoch: int = -1, device: str | torch.device = "cpu"):
        """The checkpoint at ``epoch`` as a TransformerLens 4.x model, for TransformerLens' own tools.

        A ``transformer_lens.model_bridge.TransformerBridge`` built with ``TransformerBridge.boot_native``
        from this run's architecture, holding these weights unprocessed: its logits equal
        :meth:`model`'s (:mod:`grokinterp.model.tl_export` has the details). TransformerLens is
        imported only here.
        """
        from ..model.tl_export import to_transformer_lens

        return to_transformer_lens(self.params(epoch), self.config.model, device)

    def _resolve_many(self, epochs) -> list[int]:
        if epochs is None:
            self._check_shards()  # every checkpoint is wanted: leave damaged shards out first
            return self._epochs.tolist()
        eps = [self.resolve_epoch(e) for e in epochs]
        self._check_shards({self._where[e][0] for e in eps})
        missing = [e for e in eps if e not in self._where]
        if missing:
            self.resolve_epoch(missing[0])  # raises, naming the damaged file
        return eps

    def stack(self, name: str, epochs: Sequence[int] | np.ndarray | None = None,
              dtype: torch.dtype | None = torch.float32) -> Tensor:
        """One parameter across checkpoints, ``[ckpt, ...]``.

        Args:
            name: a TransformerLens parameter name (``embed.W_E``, ``blocks.0.mlp.W_out``, ...).
            epochs: which checkpoints (default: all of :attr:`epochs`, after checking every shard:
                damaged ones are left out with a :class:`RunWarning`).
            dtype: float32 (default: what every analysis reads; a float64 run's checkpoints are rounded to it),
                or ``None``: as stored (``train.dtype``).

        Returns:
            a tensor in ``dtype``. When the checkpoints asked for are consecutive rows of one shard (and stored
            in that dtype) it is a memory-mapped view of that file (copy-on-write: nothing is read until used);
            otherwise a copy.

        Raises:
            RunError: an epoch asked for is not a checkpoint, or its shard is damaged.
        """
        shapes = param_shapes(self.config.model)
        if name not in shapes:
            raise RunError(f"{self.path}: no parameter named {name!r}; parameters: {', '.join(shapes)}")
        eps = self._resolve_many(epochs)
        if len(eps) == 0:
            raise RunError(f"{self.path}: no checkpoints to stack")
        locs = [self._where[int(e)] for e in eps]
        shard_ids = {si for si, _ in locs}
        if len(shard_ids) == 1:
            si = locs[0][0]
            rows = [r for _, r in locs]
            if rows == list(range(rows[0], rows[0] + len(rows))):
                return _as(torch.from_numpy(self._shard_arrays(si)[name][rows[0]: rows[-1] + 1]), dtype)
        parts = []
        i = 0
        while i < len(locs):  # gather runs of rows from the same shard
            si, r0 = locs[i]
            j = i
            while j + 1 < len(locs) and locs[j + 1] == (si, locs[j][1] + 1):
                j += 1
            parts.append(np.asarray(self._shard_arrays(si)[name][r0: locs[j][1] + 1]))
            i = j + 1
        return _as(torch.from_numpy(np.concatenate(parts, axis=0)), dtype)

    def stacks(self, names: Sequence[str] | None = None, epochs=None,
               dtype: torch.dtype | None = torch.float32) -> dict[str, Tensor]:
        """Several parameters at once: ``{name: [ckpt, ...]}`` (all parameters by default; ``dtype`` as
        :meth:`stack`)."""
        names = list(param_shapes(self.config.model)) if names is None else list(names)
        eps = self._resolve_many(epochs)
        return {n: self.stack(n, eps, dtype) for n in names}

    def iter_chunks(self, chunk: int = 64, names: Sequence[str] | None = None,
                    epochs=None, dtype: torch.dtype | None = torch.float32
                    ) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """Yield ``(epochs, {name: [≤ chunk, ...]})`` over the checkpoints, bounding memory (``dtype`` as
        :meth:`stack`)."""
        if chunk < 1:
            raise RunError(f"chunk: must be positive, got {chunk}")
        eps = np.array(self._resolve_many(epochs), dtype=np.int64)
        for i in range(0, len(eps), chunk):
            part = eps[i: i + chunk]
            yield part, self.stacks(names, part, dtype)

    def training_state(self) -> tuple[dict[str, str], dict[str, Tensor]]:
        """``state.safetensors``, checked like every other file: ``(header metadata, tensors)``.

        What :func:`grokinterp.resume` continues from (the trainer reads it only through here).

        Raises:
            RunError: the state is missing, damaged or malformed.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        path = self.path / _io.STATE_FILE
        n = self.config.model.n_params
        cap = 64 * n + 64 * (self.config.train.epochs + 2) + (1 << 24)
        raw = _read_checked(self.path, self._checker, _io.STATE_FILE, "training state", cap)
        header, _ = _io.parse_safetensors_header(raw, path)
        try:
            tensors = st_load(raw)
        except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
            raise RunError(f"{path}: cannot read the training state ({e})") from None
        return dict(header.get("__metadata__", {})), tensors

    # -- display -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Key facts: config, checkpoints, final losses, epoch test accuracy first passed 99 %."""
        out: dict[str, Any] = {
            "path": str(self.path),
            "preset": self.info.get("preset"),
            "task": (f"{self.config.task.operation}, train_size {self.config.task.train_size}"
                     if getattr(self.task, "vector_input", False) else
                     f"{self.config.task.operation} mod {self.p}, frac_train {self.config.task.frac_train}"),
            "device": (self.info.get("device") or {}).get("type"),
            "torch_threads": (self.info.get("device") or {}).get("torch_threads"),
            "finished": self.finished,
            **({"stopped": self.stopped} if self.stopped is not None else {}),
            "epoch_reached": self.progress.get("epoch"),
            "epochs_total": self.config.train.epochs,
            "n_checkpoints": int(len(self.epochs)),
            "first_checkpoint": int(self.epochs[0]) if len(self.epochs) else None,
            "last_checkpoint": int(self.epochs[-1]) if len(self.epochs) else None,
            "problems": list(self.problems),
        }
        writer = self.writer
        if writer is not None and writer.alive is not False:
            out["training"] = True
            out["writer"] = writer.describe()
        else:
            out["training"] = False
        try:
            ev = self.evals
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
            # Passed at the first evaluation of test accuracy (an imported final model has only that one):
            # the epoch is an upper bound, not when it happened.
            first = ev.loc[ev["test_acc"].notna(), "epoch"]
            out["test_acc_99_upper_bound"] = bool(len(hit)) and int(hit["epoch"].iloc[0]) == int(first.iloc[0]) > 0
            hit = ev[ev["train_acc"] >= 0.99]
            out["train_acc_99_epoch"] = int(hit["epoch"].iloc[0]) if len(hit) else None
        return out

    def __repr__(self) -> str:
        c = self.config
        span = f"epochs {self.epochs[0]}..{self.epochs[-1]}" if len(self.epochs) else "no checkpoints"
        state = ("finished" if self.finished else
                 f"training, flushed to epoch {self.progress.get('epoch')}" if self.training else
                 f"at epoch {self.progress.get('epoch')}")
        what = (f"{c.task.operation} mod {c.task.p}" if fixed_size(c.task.operation) is None
                else f"{c.task.operation} (order {c.task.p})")
        return f"Run({str(self.path)!r}: {what}, {len(self.epochs)} checkpoints ({span}), {state})"


def _shard_files(path: Path) -> tuple[list[str], list[str]]:
    """Shard file names on disk (``ckpt_*``) and problems with the shard directory itself."""
    shard_dir = path / _io.SHARD_DIR
    try:
        st = os.lstat(shard_dir)
    except FileNotFoundError:
        return [], []
    except OSError as e:
        return [], [f"{shard_dir}: cannot read the shard directory ({e.strerror or e})"]
    if stat.S_ISLNK(st.st_mode) and not _io.is_within(os.path.realpath(shard_dir), os.path.realpath(path)):
        return [], [f"{shard_dir}: the shard directory is a symbolic link leading outside the run directory"]
    if not os.path.isdir(shard_dir):
        return [], [f"{shard_dir}: the shard directory is {_io.describe_mode(st.st_mode)}, not a directory"]
    try:
        return sorted(n for n in os.listdir(shard_dir) if n.startswith("ckpt_")), []
    except OSError as e:
        return [], [f"{shard_dir}: cannot read the shard directory ({e.strerror or e})"]


def _scan_shards(path: Path, config: RunConfig, info: dict[str, Any], checker: ReadChecker
                 ) -> tuple[list[_Shard], list[_Shard], list[str]]:
    """The shards the manifest promises (and any others on disk), without reading them.

    Returns ``(usable, left_out, problems)``: ``left_out`` shards are already known to be missing,
    of the wrong size, foreign or misnamed (their checkpoints are named in ``problems``).
    """
    on_disk, problems = _shard_files(path)
    prefix = _io.SHARD_DIR + "/"
    m = checker.manifest
    listed = {} if m is None else {rel[len(prefix):]: rel for rel in (*m.files, *m.pending) if rel.startswith(prefix)}
    schedule = None if "imported_from" in info else config.checkpoint_epochs()
    usable, left_out, claimed = [], [], {}  # claimed: rel -> the epochs its name says
    for name in sorted(set(on_disk) | set(listed)):
        rel, file = prefix + name, path / _io.SHARD_DIR / name
        span = _io.shard_span(name)
        if span is None:
            if name in on_disk:
                problems.append(f"{file}: not a shard name (ckpt_<first>_<last>.safetensors); ignored")
            continue
        expected = None
        if schedule is not None:
            expected = schedule[(schedule >= span[0]) & (schedule <= span[1])]
        sh = _Shard(rel, file, span, expected, epochs=expected if expected is not None else np.zeros(0, np.int64))
        reason = None
        if expected is not None and (not len(expected) or expected[0] != span[0] or expected[-1] != span[1]):
            reason = f"{file}: its name does not match the run's checkpoint schedule"
        elif checker.enabled and checker.usable:
            committed = rel in m.files
            if name not in on_disk:
                if not committed:
                    continue  # the record of a flush that had not written this file yet
                reason = f"{file}: listed in the manifest but missing"
            elif name not in listed:
                checker.refresh()  # a live run may have flushed since the manifest was read
                m = checker.manifest
                if m is None or (rel not in m.files and rel not in m.pending):
                    reason = (f"{file}: not listed in the manifest (written after it by an older grokinterp, or put "
                              f"there from elsewhere): its contents cannot be checked")
            if reason is None:
                sizes = {e["size"] for _, e in m.entries(rel)} if m is not None else set()
                try:
                    size = os.lstat(file).st_size
                except OSError:
                    size = None
                if sizes and size is not None and size not in sizes and stat.S_ISREG(os.lstat(file).st_mode):
                    reason = (f"{file}: {size} bytes, the manifest records {sorted(sizes)[0]}"
                              + (" (truncated)" if size < min(sizes) else ""))
        others = [] if reason is not None or expected is None else \
            [o for o in usable if claimed.get(o.rel) and claimed[o.rel].intersection(expected.tolist())]
        if others:  # two names claim an epoch: the one whose contents belie its name is the damaged one
            mine = _inside_if_not_as_named(sh, path)
            belied = {o.rel: _inside_if_not_as_named(o, path) for o in others}
            if mine is None and all(belied.values()):
                for o in others:  # the earlier shard was relabelled; this one holds what its name says
                    o.dropped = (f"{o.path}: its name says epochs {_fmt_epochs(o.expected)}, but it holds checkpoints "
                                 f"of epochs {belied[o.rel]} (and {file.name} holds what its name says): it is "
                                 f"left out")
                    usable.remove(o)
                    left_out.append(o)
                    problems.append(o.dropped)
                    del claimed[o.rel]
            elif mine is not None:
                reason = (f"{file}: its name says epochs {_fmt_epochs(expected)}, but it holds checkpoints of epochs "
                          f"{mine}")
            else:
                held = set().union(*(claimed[o.rel] for o in others))
                reason = (f"{file}: repeats epochs {_fmt_epochs(sorted(held.intersection(expected.tolist())))} already "
                          f"held by {', '.join(o.path.name for o in others)}")
        if reason is not None:
            sh.dropped = f"{reason}; its checkpoints at epochs {_fmt_epochs(sh.epochs)} are left out"
            left_out.append(sh)
            problems.append(sh.dropped)
            continue
        if expected is not None:
            claimed[rel] = set(expected.tolist())
        usable.append(sh)
    return usable, left_out, problems


def _header_mismatch(raw: bytes, columns: list[Any]) -> str | None:
    """How a metrics table's header disagrees with what the writer writes (the built-in columns first, in
    order) or with its own rows (as many values in each row as names in the header: pandas fills a short
    row with NaN, so a column added to the header alone would read as empty), or ``None``."""
    import csv

    head = [str(c) for c in columns[:len(METRIC_COLUMNS)]]
    if head != list(METRIC_COLUMNS):
        return (f"its header begins {', '.join(head)}; the columns every metrics table begins with are "
                f"{', '.join(METRIC_COLUMNS)}, in this order")
    try:
        rows = csv.reader(io.StringIO(raw.decode("utf-8")))
        n = len(next(rows))
        for i, row in enumerate(rows, start=1):
            if row and len(row) != n:
                return (f"its header names {n} columns but row {i} (epoch {row[0]}) holds {len(row)} values: the "
                        f"header does not match the rows")
    except (UnicodeDecodeError, csv.Error, StopIteration):  # pandas parsed it, so this is not expected
        return None
    return None


def _inside_if_not_as_named(sh: _Shard, run_dir: Path) -> str | None:
    """The epochs a shard holds, in words, when they are not those its name says (``None`` when they are);
    only its ``epochs`` vector is read (the full check against the manifest comes when it is opened)."""
    try:
        epochs = np.array(_io.mmap_tensors(sh.path, ["epochs"], run_dir)["epochs"]).tolist()
    except RunError as e:
        return f"none readable ({str(e).split(': ', 1)[-1]})"
    return None if sh.expected is not None and epochs == sh.expected.tolist() else _fmt_epochs(epochs)


def _coverage(run: Run, schedule_known: bool) -> list[str]:
    """Checkpoints that should exist but no listed shard holds (files gone together with their
    manifest entries): gaps in the schedule below the last listed checkpoint, and checkpoints
    ``progress.json`` says were written beyond it."""
    accounted: set[int] = set()
    for sh in run._shards:  # damaged ones too: they are reported on their own
        accounted.update(sh.epochs.tolist())
    out = []
    schedule = run.config.checkpoint_epochs() if schedule_known else None
    if schedule is not None and accounted:
        gaps = [e for e in schedule[schedule <= max(accounted)].tolist() if e not in accounted]
        if gaps:
            out.append(f"{run.path / _io.SHARD_DIR}: no shard in the manifest holds the checkpoints at epochs "
                       f"{_fmt_epochs(gaps)}, between those it holds; they are missing")
    try:
        written = int(run.progress.get("checkpoints_written", 0))
    except RunError as e:  # damaged: its own error is raised when it is read; here say what it hides
        if run.checked:
            out.append(f"{e}; whether checkpoints after the last listed one are missing cannot be checked")
        return out
    if schedule is not None:
        lost = [e for e in schedule[:written].tolist() if e not in accounted and (not accounted or e > max(accounted))]
        what = _fmt_epochs(lost)
    else:
        lost = [] if len(accounted) >= written else [written - len(accounted)]
        what = f"{lost[0]} checkpoint(s)" if lost else ""
    if lost:
        out.append(f"{run.path / _io.PROGRESS_JSON}: says {written} checkpoints were written, but no shard in the "
                   f"manifest holds those at epochs {what}; they are missing")
    return out


def describe_lineage(lin: dict[str, Any] | None) -> str:
    """``run.json``'s ``lineage`` (issue 21) in one line, as ``grokinterp info`` and the report show it."""
    if not isinstance(lin, dict):
        return "none"
    parts = []
    if lin.get("parent"):
        digest = str(lin.get("params_sha256", ""))[:12]
        parts.append(f"started from {lin['parent']} at {lin.get('unit', 'epoch')} {lin.get('epoch')} (parameters "
                     f"sha256 {digest}…; optimizer fresh)")
    sub = lin.get("subset")
    if isinstance(sub, dict):
        of = f" of the parent's {lin['parent_n_train']}" if lin.get("parent_n_train") else ""
        parts.append(f"trains on {sub.get('n_train')}{of} training pairs (subset_seed {sub.get('subset_seed')})")
    rl = lin.get("random_labels")
    if isinstance(rl, dict):
        parts.append(f"random labels (label_seed {rl.get('label_seed')})")
    if isinstance(lin.get("parent_lineage"), dict) and lin["parent_lineage"].get("parent"):
        parts.append(f"the parent itself started from {lin['parent_lineage']['parent']}")
    return "; ".join(parts) or "none"


def run_directory(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`~pathlib.Path`, if it is a run directory (holds ``run.json``).

    Raises:
        RunError: it does not exist, is not a directory, holds no ``run.json``, or cannot be read.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise RunError(f"{path}: no such run directory")
        if not path.is_dir():
            raise RunError(f"{path}: not a directory (expected a run directory)")
        if not os.path.lexists(path / _io.RUN_JSON):
            raise RunError(f"{path}: not a grokinterp run (no {_io.RUN_JSON})")
    except OSError as e:
        raise RunError(f"{path}: cannot open the run directory ({e.strerror or e})") from None
    return path


def load_run(path: str | os.PathLike, *, strict: bool = False, check: bool | None = None) -> Run:
    """Open a run directory.

    Args:
        path: a directory written by :func:`grokinterp.train`.
        strict: check every file now and raise on any problem, instead of leaving damaged
            checkpoints out with a :class:`RunWarning` when they are first used.
        check: check each file against the run's manifest before using it (default ``True``;
            ``GROKINTERP_TRUST_STORAGE=1`` makes the default ``False``). ``False`` is for storage
            you trust: structure is still checked, contents are not.

    Raises:
        RunError: the path is not a run; ``run.json`` or the split is missing, malformed or does not
            match the manifest; the manifest is missing or malformed (unless the run was stopped
            before its first flush); or (``strict``) anything is damaged.
    """
    path = run_directory(path)
    check = (not _trust_storage()) if check is None else bool(check)
    checker = ReadChecker(path, enabled=check)
    if check and not checker.usable:
        if os.path.lexists(path / _io.MANIFEST_JSON) or not never_flushed(path):
            raise RunError(f"{checker.problem}: the run's files cannot be checked against it (`grokinterp verify "
                           f"{path}` lists what is there; load_run(path, check=False) reads the files unchecked)")
        checker = ReadChecker(path, enabled=False)  # stopped before its first flush: nothing was promised
    info, config = _read_run_info(path, checker)
    usable, left_out, problems = _scan_shards(path, config, info, checker)
    run = Run(path, info, config, usable + left_out, problems, checker, strict=strict)
    run.split_pairs()  # essential: validate now
    if "imported_from" in info:  # no schedule to derive the epochs from: read each shard's now
        claimed: set[int] = set()
        for sh in run._shards:
            if sh.dropped is None:
                try:
                    sh.arrays = run._open_shard(sh)
                    if claimed.intersection(sh.epochs.tolist()):
                        raise RunError(f"{sh.path}: repeats epochs already held by another shard")
                    claimed.update(sh.epochs.tolist())
                except RunError as e:
                    sh.arrays, sh.dropped = None, f"{e}; its checkpoints are left out"
                    problems.append(sh.dropped)
        run._index()
    problems += _coverage(run, "imported_from" not in info)
    if strict:
        if problems:
            raise RunError("; ".join(problems))
        run.check()
    elif problems:
        warnings.warn(f"{path}: {len(problems)} problem(s) found, damaged checkpoints left out: " + "; ".join(problems),
                      RunWarning, stacklevel=2)
    return run
