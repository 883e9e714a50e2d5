"""What a sweep is: a preset, fixed overrides, axes to vary, and how to run it — parsed and checked.

A :class:`SweepSpec` expands into :class:`SweepPoint` s, one per run: every combination of the
``grid`` axes (the last axis varies fastest), each with every row of the ``zip`` axes (varied
together), each with every seed. Axis names are config fields, bare (``weight_decay``) or dotted
(``train.weight_decay``), plus ``seed``, which sets both ``task.split_seed`` and
``model.init_seed``. Every point's :class:`~grokinterp.config.RunConfig` is built while the spec is
parsed, so a bad value is refused before anything is written, with a message naming the axis and
the value (``grid.weight_decay = -1: train.weight_decay: must be non-negative, got -1``).

A spec file is TOML or JSON with the same structure::

    preset = "quick"
    seeds = [0, 1, 2]              # each seed sets split_seed and init_seed

    [fixed]                        # every point
    p = 59
    epochs = 3000

    [grid]                         # every combination
    frac_train = [0.3, 0.5, 0.7]
    weight_decay = [0.3, 1.0, 3.0]

    [zip]                          # optional: varied together, one value of each per point
    lr = [1e-3, 3e-3]
    warmup_epochs = [10, 30]

    [stop]                         # optional: end a stack once every run generalized (sweeps.stop)
    column = "test_acc"
    level = 0.99
    hold = 3                       # consecutive evaluations at or above the level

    [options]                      # how it runs (see SweepOptions; command-line flags override)
    max_disk_gb = 20

Example:
    >>> spec = SweepSpec(preset="tiny", grid={"frac_train": [0.5, 0.7]}, seeds=(0, 1))
    >>> [p.name for p in spec.points()]
    ['frac_train=0.5_seed=0', 'frac_train=0.5_seed=1', 'frac_train=0.7_seed=0', 'frac_train=0.7_seed=1']
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import LIMITS, PRESETS, SECTIONS, RunConfig, make_config, model_config_classes
from ..errors import ConfigError
from .stop import StopRule

# False while a sweep directory's own spec is read back: the limit on points applies to new sweeps only
_LIMIT_POINTS: contextvars.ContextVar[bool] = contextvars.ContextVar("_LIMIT_POINTS", default=True)

__all__ = ["SweepSpec", "SweepOptions", "SweepPoint", "load_spec", "parse_grid_flag", "SEED_AXIS"]

#: The pseudo-field that sets both seeds of a run.
SEED_AXIS = "seed"
_SPEC_KEYS = {"preset", "name", "seeds", "fixed", "grid", "zip", "stop", "options"}
_NAME_MAX = 120


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs; none of these change what a run computes.

    Attributes:
        stack: train runs that share shapes together as one stacked model
            (:mod:`grokinterp.training.stacked`); ``False`` trains them one by one.
        max_stack: the most runs in one stack (default: chosen from the device's memory).
        max_disk_gb: the disk the sweep may use. When the runs' checkpoint schedules would need
            more, and the spec sets no checkpoint field, the schedules are thinned to fit
            (``checkpoints = "auto"``); ``"keep"`` keeps them and only warns.
        checkpoints: ``auto`` or ``keep`` (see ``max_disk_gb``).
        executor: ``local`` (this machine, default) or ``ray``.
        workers: local worker processes that train jobs side by side (default 1: every job in this
            process). With ``n`` workers each group of runs that share a stack is cut into at least
            ``n`` stacks, so that every core trains one. On a 2-core machine two stacks of 8 ``tiny``
            runs in two processes train 1.75× faster than one stack of 16 with one thread, 1.2×
            faster than one with two threads (``benchmarks/stacked_speed.py``). Not the machine's
            core count by default: how runs are cut into stacks changes their rounding, and a
            sweep's runs should not depend on the machine it ran on.
        ray_address: the Ray cluster to join (``auto``, ``ray://host:port``; default: a local one).
        num_gpus: GPUs each Ray task asks for (one stack per task).
        num_cpus: CPUs each Ray task asks for.
    """

    stack: bool = True
    max_stack: int | None = None
    max_disk_gb: float = 20.0
    checkpoints: str = "auto"
    executor: str = "local"
    workers: int = 1
    ray_address: str | None = None
    num_gpus: float = 0.0
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.stack, bool):
            raise ConfigError(f"options.stack: must be true or false, got {self.stack!r}")
        if self.max_stack is not None and (not _is_int(self.max_stack) or self.max_stack < 1):
            raise ConfigError(f"options.max_stack: must be a positive integer, got {self.max_stack!r}")
        if not _is_num(self.max_disk_gb) or not self.max_disk_gb > 0:
            raise ConfigError(f"options.max_disk_gb: must be a positive number, got {self.max_disk_gb!r}")
        if self.checkpoints not in ("auto", "keep"):
            raise ConfigError(f"options.checkpoints: must be 'auto' or 'keep', got {self.checkpoints!r}")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"options.executor: must be 'local' or 'ray', got {self.executor!r}")
        if not _is_int(self.workers) or self.workers < 1:
            raise ConfigError(f"options.workers: must be a positive integer, got {self.workers!r}")
        if self.workers > 1 and self.executor != "local":
            raise ConfigError(f"options.workers: worker processes are the local executor's; the {self.executor} "
                              f"executor places its tasks itself (num_cpus, num_gpus)")
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            raise ConfigError(f"options.ray_address: must be a string, got {self.ray_address!r}")
        for name in ("num_gpus", "num_cpus"):
            v = getattr(self, name)
            if not _is_num(v) or v < 0:
                raise ConfigError(f"options.{name}: must be a non-negative number, got {v!r}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "options") -> "SweepOptions":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: must be a table of options, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep.

    Attributes:
        name: the run's directory name inside the sweep (``runs/<name>``), made of the varied values.
        values: the varied axes and their values at this point (``{"frac_train": 0.3, "seed": 1}``).
        config: the run's full configuration.
    """

    name: str
    values: dict[str, Any]
    config: RunConfig


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _field_types() -> dict[str, tuple[str, Any]]:
    """Bare and dotted field names → (dotted name, default value of the paper preset)."""
    paper = make_config("paper")
    out: dict[str, tuple[str, Any]] = {}
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            dotted = f"{sec}.{f.name}"
            default = getattr(getattr(paper, sec), f.name)
            if default is None and f.type == "int | None":  # unset by default (train.batch_size): read ints
                default = 0
            out[dotted] = (dotted, default)
            out.setdefault(f.name, (dotted, default))
    for cls in model_config_classes().values():  # every family's model fields (--family mlp: d_hidden, ...)
        for f in dataclasses.fields(cls):
            dotted = f"model.{f.name}"
            if dotted not in out:
                out[dotted] = (dotted, f.default)
                out.setdefault(f.name, (dotted, f.default))
    return out


def _check_axis_name(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{where}: axis names must be strings, got {name!r}")
    if name != SEED_AXIS and name not in _field_types():
        raise ConfigError(f"{where}.{name}: no such config field (axes are config fields, bare or dotted, or "
                          f"'{SEED_AXIS}')")
    return name


def _coerce_text(name: str, text: str) -> Any:
    """A value given as text (``--grid``) converted to the field's type."""
    if name == SEED_AXIS:
        kind: Any = 0
    else:
        kind = _field_types()[name][1]
    try:
        if isinstance(kind, bool):
            t = text.strip().lower()
            if t in ("1", "true", "yes", "on"):
                return True
            if t in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(kind, int):
            return int(text)
        if isinstance(kind, float):
            return float(text)
        if isinstance(kind, tuple):
            return tuple(x for x in text.split("+") if x)
        return text
    except ValueError:
        raise ConfigError(f"grid.{name}: cannot read {text!r} as a {type(kind).__name__}") from None


def parse_grid_flag(text: str) -> tuple[str, list[Any]]:
    """``"field=v1,v2,..."`` (a ``--grid`` flag) → ``(field, [values])``, typed like the field.

    List-valued fields (``grad_transforms``) join the items of one value with ``+``.
    """
    if "=" not in text:
        raise ConfigError(f"--grid {text!r}: expected FIELD=V1,V2,... (e.g. weight_decay=0.3,1,3)")
    name, _, rest = text.partition("=")
    name = _check_axis_name(name.strip(), "grid")
    values = [v.strip() for v in rest.split(",")]
    if not rest.strip() or any(v == "" for v in values):
        raise ConfigError(f"grid.{name}: expected comma-separated values, got {rest!r}")
    return name, [_coerce_text(name, v) for v in values]


def _json_value(v: Any) -> Any:
    """Values as they go into ``sweep.json`` (tuples as lists)."""
    if isinstance(v, (tuple, list)):
        return [_json_value(x) for x in v]
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, "g")
    if isinstance(v, (tuple, list)):
        return "+".join(_fmt(x) for x in v) or "none"
    return re.sub(r"[^A-Za-z0-9.+-]", "-", str(v))


def _short(axis: str) -> str:
    return axis.split(".", 1)[1] if "." in axis else axis


@dataclass(frozen=True)
class SweepSpec:
    """A family of runs: ``preset`` + ``fixed`` overrides, varied over ``grid`` × ``zip`` × ``seeds``.

    Attributes:
        preset: the base config (``paper``, ``quick``, ``tiny``).
        fixed: overrides applied to every point (``{"p": 59, "epochs": 3000}``).
        grid: axes whose values combine in every way (``{"weight_decay": [0.3, 1, 3]}``).
        zip: axes varied together (all lists of one length): point ``i`` takes value ``i`` of each.
        seeds: shorthand for a last grid axis ``seed`` (each sets the split and init seeds).
        name: a label for reports.
        stop: a :class:`~grokinterp.sweeps.stop.StopRule` (or its dict): stacks stop once every run
            generalized; ``None`` (default) trains every run to its budget.
        options: :class:`SweepOptions`.

    Raises:
        ConfigError: naming the axis and value, for unknown fields, empty or ragged axes, an axis
            given twice, or a point whose config is invalid.
    """

    preset: str = "quick"
    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    zip: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: Sequence[int] | None = None
    name: str | None = None
    options: SweepOptions = field(default_factory=SweepOptions)
    stop: StopRule | None = None

    def __post_init__(self) -> None:
        if self.stop is not None and not isinstance(self.stop, StopRule):
            object.__setattr__(self, "stop", StopRule.from_dict(self.stop))
        if self.preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {self.preset!r}; known: {', '.join(PRESETS)}")
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"name: must be a string, got {self.name!r}")
        if not isinstance(self.options, SweepOptions):
            object.__setattr__(self, "options", SweepOptions.from_dict(self.options))
        for part in ("fixed", "grid", "zip"):
            if not isinstance(getattr(self, part), Mapping):
                raise ConfigError(f"{part}: must be a table of field = value(s), got {getattr(self, part)!r}")
            object.__setattr__(self, part, {_check_axis_name(k, part): v for k, v in getattr(self, part).items()})
        for part in ("grid", "zip"):
            for k, v in getattr(self, part).items():
                if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) == 0:
                    raise ConfigError(f"{part}.{k}: must be a non-empty list of values, got {v!r}")
        if self.seeds is not None:
            if (isinstance(self.seeds, (str, bytes)) or not isinstance(self.seeds, Sequence) or not self.seeds
                    or not all(_is_int(s) and s >= 0 for s in self.seeds)):
                raise ConfigError(f"seeds: must be a non-empty list of non-negative integers, got {self.seeds!r}")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"seeds: repeated seeds in {list(self.seeds)}")
        lengths = {k: len(v) for k, v in self.zip.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"zip: every axis needs the same number of values, got {lengths}")
        # The same field must not be set in two places (bare and dotted names count as one).
        seen: dict[str, str] = {}
        axes = [("fixed", k) for k in self.fixed] + [("grid", k) for k in self.grid] + [("zip", k) for k in self.zip]
        if self.seeds is not None:
            axes.append(("seeds", SEED_AXIS))
        for part, k in axes:
            targets = ["task.split_seed", "model.init_seed"] if k == SEED_AXIS else [_field_types()[k][0]]
            if k in ("p", "task.p", "model.p"):
                targets = ["task.p"]
            for t in targets:
                if t in seen:
                    raise ConfigError(f"{part}.{k}: {t} is already set by {seen[t]}")
                seen[t] = f"{part}.{k}"
        for k, vals in self.grid.items():
            if len({json.dumps(_json_value(v), sort_keys=True) for v in vals}) != len(vals):
                raise ConfigError(f"grid.{k}: repeated values in {list(vals)}")
        if self.zip:  # an axis of a zip may repeat a value (batch_size 512 at most fractions); its rows may not
            rows = [json.dumps([_json_value(v[i]) for v in self.zip.values()], sort_keys=True)
                    for i in range(len(next(iter(self.zip.values()))))]
            if len(set(rows)) != len(rows):
                if len(self.zip) == 1:
                    k, vals = next(iter(self.zip.items()))
                    raise ConfigError(f"zip.{k}: repeated values in {list(vals)}")
                dup = next(i for i, r in enumerate(rows) if rows.index(r) != i)
                raise ConfigError(f"zip: row {dup} ({', '.join(f'{k} = {_json_value(v[dup])!r}' for k, v in self.zip.items())}) "
                                  f"repeats an earlier row")
        self.n_points()  # within the limit, before anything is expanded
        self.points()  # every point's config is valid (ConfigError naming the axis and value)

    # -- expansion --------------------------------------------------------------------------------
    def axes(self) -> list[str]:
        """The varied axes, in naming order: grid axes, zip axes, then ``seed``."""
        out = list(self.grid) + list(self.zip)
        if self.seeds is not None:
            out.append(SEED_AXIS)
        return out

    def n_points(self) -> int:
        """How many points the spec has (the product of the axis lengths; nothing is expanded).

        Raises:
            ConfigError: more than :data:`grokinterp.config.LIMITS` ``.sweep_points``, naming the axes.
        """
        sizes = [(f"grid.{k}", len(v)) for k, v in self.grid.items()]
        if self.zip:
            sizes.append((f"zip ({', '.join(self.zip)})", len(next(iter(self.zip.values())))))
        if self.seeds is not None:
            sizes.append(("seeds", len(self.seeds)))
        n = math.prod(size for _, size in sizes)
        if n > LIMITS.sweep_points and _LIMIT_POINTS.get():
            raise ConfigError(f"{' × '.join(f'{name} ({size})' for name, size in sizes)}: {n} points, more than the "
                              f"limit of {LIMITS.sweep_points} runs in one sweep; split it into several sweeps")
        return n

    def _combinations(self) -> list[dict[str, Any]]:
        grid_axes = list(self.grid)
        grid_rows = [dict(zip(grid_axes, vals)) for vals in itertools.product(*self.grid.values())]
        n_zip = len(next(iter(self.zip.values()))) if self.zip else 0
        zip_rows = [{k: v[i] for k, v in self.zip.items()} for i in range(n_zip)] or [{}]
        seed_rows = [{SEED_AXIS: s} for s in self.seeds] if self.seeds is not None else [{}]
        return [{**g, **z, **s} for g in grid_rows for z in zip_rows for s in seed_rows]

    def points(self) -> list[SweepPoint]:
        """Every run of the sweep, with its name and validated config (expanded once per spec object)."""
        cached = self.__dict__.get("_points")
        if cached is not None:
            return list(cached)
        self.n_points()
        combos = self._combinations()
        names = [self._name(c) for c in combos]
        if len(set(names)) != len(names) or any(len(n) > _NAME_MAX for n in names):
            names = [f"point{i:04d}-{_digest(c)}" for i, c in enumerate(combos)]
        out = []
        for name, values in zip(names, combos):
            overrides = dict(self.fixed)
            for k, v in values.items():
                if k == SEED_AXIS:
                    overrides.update({"task.split_seed": v, "model.init_seed": v})
                else:
                    overrides[k] = tuple(v) if isinstance(v, list) else v
            for k, v in list(overrides.items()):
                if isinstance(v, list):
                    overrides[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            try:
                if SEED_AXIS in self.fixed:
                    s = overrides.pop(SEED_AXIS)
                    overrides.update({"task.split_seed": s, "model.init_seed": s})
                config = make_config(self.preset, **overrides)
            except ConfigError as e:
                where = ", ".join(f"{self._part_of(k)}.{k} = {_json_value(v)!r}" for k, v in values.items()) or "fixed"
                raise ConfigError(f"{where}: {e}") from None
            out.append(SweepPoint(name, {k: _json_value(v) for k, v in values.items()}, config))
        self.__dict__["_points"] = tuple(out)  # not a field: equality, repr and to_dict ignore it
        return out

    def _part_of(self, axis: str) -> str:
        return "grid" if axis in self.grid else "zip" if axis in self.zip else "seeds"

    def _name(self, values: dict[str, Any]) -> str:
        if not values:
            return "run"
        return "_".join(f"{_short(k)}={_fmt(v)}" for k, v in values.items())

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back to an equal spec."""
        return {
            "preset": self.preset, "name": self.name,
            "seeds": list(self.seeds) if self.seeds is not None else None,
            "fixed": {k: _json_value(v) for k, v in self.fixed.items()},
            "grid": {k: _json_value(v) for k, v in self.grid.items()},
            "zip": {k: _json_value(v) for k, v in self.zip.items()},
            # left out when unset: a sweep written before the stop rule existed compares equal
            **({"stop": self.stop.to_dict()} if self.stop is not None else {}),
            "options": self.options.to_dict(),
        }

    def runs_dict(self) -> dict[str, Any]:
        """The part of :meth:`to_dict` that decides the runs (options left out)."""
        d = self.to_dict()
        d.pop("options")
        d.pop("name")
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "spec") -> "SweepSpec":
        """Build from a parsed TOML / JSON document (unknown keys raise, naming them)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a sweep spec must be a table, got {type(data).__name__}")
        extra = sorted(set(data) - _SPEC_KEYS)
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}; a spec has {', '.join(sorted(_SPEC_KEYS))}")
        kw = {k: data[k] for k in ("preset", "name", "seeds", "fixed", "grid", "zip") if data.get(k) is not None}
        kw["options"] = SweepOptions.from_dict(data.get("options") or {}, "options")
        if data.get("stop") is not None:
            try:
                kw["stop"] = StopRule.from_dict(data["stop"])
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    @classmethod
    def from_stored(cls, data: Any, where: str) -> "SweepSpec":
        """:meth:`from_dict` for the spec a sweep directory records: a sweep written before
        ``LIMITS.sweep_points`` existed (or on a machine that planned it) still loads, resumes and reports."""
        token = _LIMIT_POINTS.set(False)
        try:
            return cls.from_dict(data, where)
        finally:
            _LIMIT_POINTS.reset(token)

    def with_options(self, **changes: Any) -> "SweepSpec":
        """The same runs with some options changed (``None`` values are ignored)."""
        opts = {k: v for k, v in changes.items() if v is not None}
        if not opts:
            return self
        return dataclasses.replace(self, options=SweepOptions(**{**self.options.to_dict(), **opts}))


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(_json_value(values), sort_keys=True, default=str).encode()).hexdigest()[:8]


def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep spec from a ``.toml`` or ``.json`` file.

    Raises:
        ConfigError: the file is missing, unparsable, or the spec is invalid (naming the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the sweep spec ({e.strerror or e})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} sweep spec "
                          f"({str(e)[:200]})") from None
    return SweepSpec.from_dict(data, where=str(path))
