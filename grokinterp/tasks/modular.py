"""Binary operations mod p: the registry of arithmetic tasks (``c = a ∘ b mod p``).

The token ``=`` is ``p`` (so the input vocabulary has ``p + 1`` tokens, the output ``p``). A
dataset covers every valid pair of the ``p × p`` grid in row-major order ``index = a * p + b``;
runs store their split as *those indices*, so a run never re-derives its split silently.

Example:
    >>> from grokinterp.tasks import make_dataset
    >>> ds = make_dataset(p=7, operation="add")
    >>> ds.tokens.shape, ds.labels[:3]
    ((49, 3), array([0, 1, 2]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .algebra import CyclicDifference, CyclicSum, DiscreteLog
from .base import Structure, Task

__all__ = ["Operation", "OPERATIONS", "register_operation", "get_operation", "is_prime", "ModularTask"]

BinaryFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
StructureFn = Callable[[int], "Structure | None"]


def is_prime(n: int) -> bool:
    """True when ``n`` is prime (trial division; p here is at most a few thousand)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % k for k in range(3, math.isqrt(n) + 1, 2))


@dataclass(frozen=True)
class Operation:
    """A binary operation mod p.

    Attributes:
        name: registry key, used in configs and on the command line.
        fn: ``fn(a, b, p) -> c`` on int64 arrays; the result is reduced mod p by the caller.
        requires_prime: the operation is only defined for prime p (e.g. division).
        valid_pair: optional predicate ``(a, b, p) -> bool array`` selecting the pairs that
            belong to the task (e.g. ``b != 0`` for division). ``None`` keeps all ``p²`` pairs.
        formula: a human-readable formula for reports.
        structure: ``p -> Structure | None``, the algebraic structure the analyses may use.
    """

    name: str
    fn: BinaryFn
    requires_prime: bool = False
    valid_pair: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None
    formula: str = ""
    structure: StructureFn | None = None


OPERATIONS: dict[str, Operation] = {}


def register_operation(
    name: str,
    fn: BinaryFn,
    *,
    requires_prime: bool = False,
    valid_pair: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    formula: str = "",
    structure: StructureFn | None = None,
) -> Operation:
    """Add an operation to the registry so configs and the CLI can name it.

    Example:
        >>> register_operation("x4_y", lambda a, b, p: a**4 + b, formula="a⁴+b")  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"operation name must be an identifier, got {name!r}")
    op = Operation(name, fn, requires_prime, valid_pair, formula or name, structure)
    OPERATIONS[name] = op
    return op


def get_operation(name: str) -> Operation:
    """Look an operation up by name; unknown names raise :class:`ConfigError` listing the known."""
    try:
        return OPERATIONS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(OPERATIONS))
        raise ConfigError(f"task.operation: unknown operation {name!r}; known: {known}") from None


class ModularTask(Task):
    """A registered :class:`Operation` mod ``p`` as a :class:`~grokinterp.tasks.base.Task`."""

    def __init__(self, operation: str, p: int):
        op = get_operation(operation)
        if p < 3:
            raise ConfigError(f"task.p: must be at least 3, got {p}")
        if op.requires_prime and not is_prime(p):
            raise ConfigError(f"task.p: operation {operation!r} is only defined for prime p, got {p}")
        self.op, self.name, self.n = op, operation, int(p)
        self.structure = op.structure(self.n) if op.structure is not None else None

    @property
    def p(self) -> int:
        return self.n

    def labels_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.mod(self.op.fn(a, b, self.n), self.n).astype(np.int64)

    def is_valid(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.op.valid_pair is None:
            return super().is_valid(a, b)
        return np.asarray(self.op.valid_pair(a, b, self.n), dtype=bool)

    def describe(self) -> str:
        return f"{self.op.formula} mod {self.n}"

    def __repr__(self) -> str:
        return f"ModularTask({self.name!r}, p={self.n})"


def _inverses(p: int) -> np.ndarray:
    # b^(p-2) is b's inverse mod prime p (Fermat); pow on python ints keeps it exact.
    return np.array([pow(int(x), p - 2, p) if x else 0 for x in range(p)], dtype=np.int64)


def _div(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return a * _inverses(p)[b]


def _div_odd_sub(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    return np.where(b % 2 == 1, a * _inverses(p)[b], a - b)


def _dlog(op: str) -> StructureFn:
    """``mul`` / ``div`` mod a prime: the nonzero residues in discrete-log coordinates; composite p: none."""
    return lambda p: DiscreteLog.of(p, op) if is_prime(p) else None


# Power et al. (2022), table of binary operations mod p (their p = 97), and x·y (Grokfast's task).
# Operations without a group structure declare none: analyses report what stays well defined.
register_operation("add", lambda a, b, p: a + b, formula="a + b", structure=CyclicSum)
register_operation("sub", lambda a, b, p: a - b, formula="a − b", structure=CyclicDifference)
register_operation("mul", lambda a, b, p: a * b, formula="a · b", structure=_dlog("mul"))
# Lee et al.'s Grokfast task (their multiplication_mod_p_data): x · y with x in 0..p-1 and y in 1..p-1
register_operation("mul_b_nonzero", lambda a, b, p: a * b, valid_pair=lambda a, b, p: b != 0,
                   formula="a · b (b ≠ 0)", structure=_dlog("mul"))
register_operation(
    "div", _div, requires_prime=True, valid_pair=lambda a, b, p: b != 0, formula="a / b (b ≠ 0)",
    structure=_dlog("div"),
)
register_operation("div_odd_sub", _div_odd_sub, requires_prime=True, formula="a / b if b is odd, else a − b")
register_operation("x2_y2", lambda a, b, p: a * a + b * b, formula="a² + b²")
register_operation("x2_xy_y2", lambda a, b, p: a * a + a * b + b * b, formula="a² + ab + b²")
register_operation("x2_xy_y2_x", lambda a, b, p: a * a + a * b + b * b + a, formula="a² + ab + b² + a")
register_operation("x3_xy", lambda a, b, p: a ** 3 + a * b, formula="a³ + ab")
register_operation("x3_xy2_y", lambda a, b, p: a ** 3 + a * b * b + b, formula="a³ + ab² + b")
