"""Finite groups as tasks: ``[g, h, =] → g·h`` (and Power et al.'s ``g·h·g⁻¹``, ``g·h·g``).

Operation names (configs and ``grokinterp train --operation``):

==================  ==========================================================================
name                task
==================  ==========================================================================
``S3`` .. ``S6``    the symmetric group ``S_n`` (order ``n!``): label ``g·h``
``A3`` .. ``A6``    the alternating group ``A_n`` (order ``n!/2``)
``D3`` .. ``D2500`` the dihedral group ``D_n``, the 2n symmetries of the n-gon (``D59``: order 118)
``C3`` .. ``C5000`` the cyclic group ``C_n`` (``C113`` is ``add`` mod 113 as a group task)
``<G>_conj``        ``g·h·g⁻¹`` in ``G`` (Power et al.'s ``x∘y∘x⁻¹`` on ``S5``: ``S5_conj``)
``<G>_xyx``         ``g·h·g`` in ``G`` (Power et al.'s ``x∘y∘x``: ``S5_xyx``)
==================  ==========================================================================

The vocabulary of a group task is its order: tokens ``0..|G|−1`` are the group's elements in the
order of :mod:`~grokinterp.tasks.algebra` (identity = 0) and ``=`` is token ``|G|``. The size is
fixed by the name, so a config takes ``p`` from the group (:func:`group_task_size`) and refuses
another value.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ConfigError
from .algebra import GroupProduct, GroupWord, check_group, get_group, group_order
from .base import Task

__all__ = ["GroupTask", "parse_group_task", "group_task_size", "group_task_kind", "GROUP_TASK_HELP"]

_NAME = re.compile(r"^([SADC])(\d+)(?:_(conj|xyx))?$")

#: One line for ``--help`` and error messages.
GROUP_TASK_HELP = ("groups (label g·h, vocabulary = the order): S3..S6 (S5: order 120), A3..A6 (A5: 60), "
                   "D3..D2500 (D59: the 59-gon, order 118), C3..C5000 (C113); <G>_conj: g·h·g⁻¹ and "
                   "<G>_xyx: g·h·g (Power et al.: S5_conj, S5_xyx)")


def parse_group_task(name: str) -> tuple[str, int, str | None] | None:
    """``(family, n, word)`` of a group-task name (``word``: ``None``, ``conj`` or ``xyx``), or ``None``."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None:
        return None
    return m.group(1), int(m.group(2)), m.group(3)


def group_task_size(name: str) -> int | None:
    """The vocabulary (group order) a group-task name fixes, ``None`` for other names.

    Raises:
        ConfigError: a group name outside the supported sizes.
    """
    parsed = parse_group_task(name)
    if parsed is None:
        return None
    family, n, _ = parsed
    check_group(family, n)
    return group_order(family, n)


class GroupTask(Task):
    """A finite group as a task: ``[g, h, =]`` labelled by ``g·h`` (or a word in ``g, h``).

    Attributes:
        group: the :class:`~grokinterp.tasks.algebra.FiniteGroup`.
        word: ``None`` (``g·h``), ``conj`` (``g·h·g⁻¹``) or ``xyx`` (``g·h·g``).
    """

    def __init__(self, name: str):
        parsed = parse_group_task(name)
        if parsed is None:
            raise ConfigError(f"task.operation: {name!r} is not a group task ({GROUP_TASK_HELP})")
        family, degree, word = parsed
        self.group = get_group(family, degree)
        self.name, self.n, self.word = name, self.group.order, word
        self.structure = GroupProduct(self.group) if word is None else GroupWord(self.group, word)

    @property
    def p(self) -> int:  # configs and runs call the alphabet size p
        return self.n

    def labels_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(self.structure.coordinate(np.asarray(a), np.asarray(b)), dtype=np.int64)

    def color_labels(self, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """An element's conjugacy class (classes in :attr:`FiniteGroup.conjugacy_classes` order, the
        identity's first; named by a representative and the class size)."""
        classes = self.group.conjugacy_classes
        of = np.empty(self.group.order, dtype=np.int64)
        for i, c in enumerate(classes):
            of[c] = i
        names = [f"class {i}: {self.group.labels[int(c[0])]} (size {len(c)})" for i, c in enumerate(classes)]
        return of[np.asarray(values, dtype=np.int64)], names

    def describe(self) -> str:
        return f"{self.name}: {self.structure.word} in {self.group.name} ({self.group.describe()})"

    def __repr__(self) -> str:
        return f"GroupTask({self.name!r}, order={self.n})"


def group_task_kind(name: str, p: int) -> Task | None:
    """Task-kind factory (:func:`grokinterp.tasks.register_task_kind`): a :class:`GroupTask` for group names.

    ``p`` must equal the group's order (configs set it from the name).
    """
    size = group_task_size(name)
    if size is None:
        return None
    if int(p) != size:
        raise ConfigError(f"task.p: {name} is a group of order {size}: its vocabulary is set by the group; leave "
                          f"p out (or give {size}), got {p}")
    return GroupTask(name)
