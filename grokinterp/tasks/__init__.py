"""Tasks: what the model is trained on (``[a, b, =]`` → ``a ∘ b``), behind one :class:`Task` protocol.

Two kinds are built in: the binary operations mod p of :mod:`~grokinterp.tasks.modular` (Power et
al.'s catalogue) and the finite groups of :mod:`~grokinterp.tasks.groups` (``S5``, ``A5``, ``D59``,
``C113``, and words such as ``S5_conj``). Each task declares its algebraic structure
(:mod:`~grokinterp.tasks.algebra`); a new kind of task implements :class:`~grokinterp.tasks.base.Task`
and registers a factory with :func:`register_task_kind`. Only numpy is imported (configs validate
against tasks cheaply).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError
from .algebra import (
    CyclicDifference,
    CyclicSum,
    DiscreteLog,
    FiniteGroup,
    GroupProduct,
    GroupStructure,
    GroupWord,
    get_group,
)
from .base import (
    INPUT_LAYOUTS,
    SPLIT_METHODS,
    Dataset,
    InputLayout,
    Structure,
    Task,
    get_split_method,
    paper_split_indices,
    register_split_method,
    split_indices,
)
from .datasets import (
    DATASET_TASKS,
    VectorTask,
    dataset_task,
    dataset_task_size,
    is_dataset_task,
    read_idx,
    write_idx,
)
from .groups import GROUP_TASK_HELP, GroupTask, group_task_kind, group_task_size
from .modular import OPERATIONS, ModularTask, Operation, get_operation, is_prime, register_operation
from .subsets import random_label_grid, subset_pairs, training_labels

__all__ = [
    "Task", "Structure", "GroupStructure", "CyclicSum", "CyclicDifference", "DiscreteLog", "GroupProduct",
    "GroupWord", "FiniteGroup", "get_group", "Dataset", "InputLayout", "INPUT_LAYOUTS", "ModularTask", "GroupTask", "Operation", "OPERATIONS",
    "SPLIT_METHODS", "register_operation", "register_split_method", "register_task_kind", "get_operation",
    "get_split_method", "get_task", "is_prime", "make_dataset", "paper_split_indices", "split_indices", "split_pairs",
    "task_names", "fixed_size", "operations_help", "subset_pairs", "random_label_grid", "training_labels",
    "DATASET_TASKS", "VectorTask", "dataset_task", "is_dataset_task", "read_idx", "write_idx",
]

#: Task kinds tried in order: ``factory(name, p) -> Task | None`` (``None``: not this kind's name).
_KINDS: list[Callable[[str, int], Task | None]] = []
#: Per kind that fixes its alphabet size by name: ``size(name) -> int | None``.
_SIZES: list[Callable[[str], int | None]] = []
_CACHE: dict[tuple[str, int, bool | None], Task] = {}


def register_task_kind(factory: Callable[[str, int], Task | None],
                       fixed_size: Callable[[str], int | None] | None = None) -> None:
    """Add a family of tasks: ``factory(name, p)`` returns a :class:`Task` for the names it knows.

    ``fixed_size(name)``, for kinds whose names fix the alphabet (a group's order), returns that
    size (``None`` for names it does not know); configs then take ``p`` from it and refuse another.
    """
    _KINDS.insert(0, factory)
    if fixed_size is not None:
        _SIZES.insert(0, fixed_size)
    _CACHE.clear()


def _modular(name: str, p: int) -> Task | None:
    return ModularTask(name, p) if name in OPERATIONS else None


_KINDS.append(_modular)
register_task_kind(group_task_kind, group_task_size)
_SIZES.insert(0, dataset_task_size)  # a dataset task's p is its number of classes (10)


def fixed_size(operation: str) -> int | None:
    """The alphabet size a task name fixes (a group's order), or ``None`` when ``p`` is free.

    Raises:
        ConfigError: a group name of an unsupported size.
    """
    for size in _SIZES:
        n = size(operation)
        if n is not None:
            return int(n)
    return None


def task_names() -> list[str]:
    """Names a config may use: the registered operations (group tasks are named by pattern, see
    :data:`~grokinterp.tasks.groups.GROUP_TASK_HELP`)."""
    return sorted(OPERATIONS)


def operations_help() -> str:
    """Every operation a config may name, in one line (for ``--help``)."""
    return ("mod p: " + ", ".join(sorted(OPERATIONS)) + "; " + GROUP_TASK_HELP + "; datasets (vectors, the mlp "
            "family): " + ", ".join(DATASET_TASKS))


def get_task(operation: str, p: int, eq_logit: bool | None = None, data: str | None = None) -> Task:
    """The task called ``operation`` at size ``p`` (cached; raises :class:`ConfigError` if unknown).

    Args:
        operation: a registered operation or a name a registered task kind knows.
        p: the operand alphabet size.
        eq_logit: give ``=`` an output logit (``d_vocab_out = p + 1``, as the paper's code does) or
            not (``p``); ``None`` keeps the task's own choice (none for the operations mod p).
        data: a dataset task's directory of IDX files (``task.data``; :mod:`~grokinterp.tasks.datasets`).
    """
    if is_dataset_task(operation):
        task = dataset_task(operation, data)
        if int(p) != task.n or eq_logit:
            raise ConfigError(f"task.p: {operation} has {task.n} classes (p = {task.n}, no '=' logit), got p = {p}"
                              f"{' with eq_logit' if eq_logit else ''}")
        return task
    key = (operation, int(p), None if eq_logit is None else bool(eq_logit))
    task = _CACHE.get(key)
    if task is None or (isinstance(task, ModularTask) and OPERATIONS.get(operation) is not task.op):
        for kind in _KINDS:
            task = kind(operation, int(p))
            if task is not None:
                break
        else:
            raise ConfigError(f"task.operation: unknown operation {operation!r}; known: {operations_help()}")
        if eq_logit is not None and bool(eq_logit) != task.eq_logit:
            task = copy.copy(task)  # the same task with (or without) an output logit for '='
            task.eq_logit = bool(eq_logit)
        _CACHE[key] = task
    return task


def make_dataset(p: int, operation: str = "add") -> Dataset:
    """All valid ``(a, b)`` pairs of ``operation`` mod ``p``, in row-major grid order."""
    return get_task(operation, p).dataset()


def split_pairs(task_config: Any) -> tuple[np.ndarray, np.ndarray]:
    """The seeded train / test split of a :class:`~grokinterp.config.TaskConfig`, as grid indices
    ``a * p + b``: ``(train_pairs, test_pairs)``, each sorted int64 (dataset tasks: example ids).

    With ``task_config.n_train`` set, the training pairs are that many of the split's
    (:func:`~grokinterp.tasks.subsets.subset_pairs`, ``subset_seed``) and the rest join the test pairs.
    """
    task = get_task(task_config.operation, task_config.p, getattr(task_config, "eq_logit", None),
                    getattr(task_config, "data", None))
    if isinstance(task, VectorTask):  # example ids; train_size examples (or frac_train of the pool)
        trn, tst = task.split(task_config.frac_train, task_config.split_seed,
                              getattr(task_config, "split_method", "random"), getattr(task_config, "train_size", None))
    else:
        trn, tst = task.split(task_config.frac_train, task_config.split_seed,
                              getattr(task_config, "split_method", "random"))
    n = getattr(task_config, "n_train", None)
    if n is None:
        return trn, tst
    keep = subset_pairs(trn, n, int(getattr(task_config, "subset_seed", 0)))
    return keep, np.sort(np.concatenate([tst, np.setdiff1d(trn, keep, assume_unique=True)]))
