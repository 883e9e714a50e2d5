"""Algorithmic tasks: inputs ``[a, b, =]`` and labels ``a ∘ b mod p``, with a seeded split.

Only numpy is imported here so that config validation (and the CLI) stay light; the trainer
turns the arrays into tensors on its device.

The token ``=`` is ``p`` (so the input vocabulary has ``p + 1`` tokens, the output ``p``).
A dataset covers every valid pair of the ``p × p`` grid in row-major order ``index = a * p + b``;
the split stores *those indices*, so a run never re-derives its split silently.

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

from .errors import ConfigError

__all__ = [
    "Operation",
    "OPERATIONS",
    "register_operation",
    "get_operation",
    "is_prime",
    "Dataset",
    "make_dataset",
    "split_indices",
]

BinaryFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


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
    """

    name: str
    fn: BinaryFn
    requires_prime: bool = False
    valid_pair: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None
    formula: str = ""


OPERATIONS: dict[str, Operation] = {}


def register_operation(
    name: str,
    fn: BinaryFn,
    *,
    requires_prime: bool = False,
    valid_pair: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None,
    formula: str = "",
) -> Operation:
    """Add an operation to the registry so configs and the CLI can name it.

    Example:
        >>> register_operation("x3_xy", lambda a, b, p: a**3 + a * b, formula="a³+ab")  # doctest: +SKIP
    """
    if not name.isidentifier():
        raise ConfigError(f"operation name must be an identifier, got {name!r}")
    op = Operation(name, fn, requires_prime, valid_pair, formula or name)
    OPERATIONS[name] = op
    return op


def get_operation(name: str) -> Operation:
    """Look an operation up by name; unknown names raise :class:`ConfigError` listing the known."""
    try:
        return OPERATIONS[name]
    except KeyError:
        known = ", ".join(sorted(OPERATIONS))
        raise ConfigError(f"task.operation: unknown operation {name!r}; known: {known}") from None


def _div(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    # b^(p-2) is b's inverse mod prime p (Fermat); pow on python ints keeps it exact.
    inv = np.array([pow(int(x), p - 2, p) if x else 0 for x in range(p)], dtype=np.int64)
    return a * inv[b]


register_operation("add", lambda a, b, p: a + b, formula="a + b")
register_operation("sub", lambda a, b, p: a - b, formula="a − b")
register_operation("mul", lambda a, b, p: a * b, formula="a · b")
register_operation(
    "div", _div, requires_prime=True, valid_pair=lambda a, b, p: b != 0, formula="a / b (b ≠ 0)"
)
register_operation("x2_xy_y2", lambda a, b, p: a * a + a * b + b * b, formula="a² + ab + b²")


@dataclass(frozen=True)
class Dataset:
    """Every valid pair of a task.

    Attributes:
        p: the modulus.
        operation: the operation's registry name.
        pair_index: int64 ``[n]``, ``a * p + b`` of each example (row-major over the grid).
        tokens: int64 ``[n, 3]`` rows ``[a, b, p]`` (``p`` is the ``=`` token).
        labels: int64 ``[n]`` in ``[0, p)``.
    """

    p: int
    operation: str
    pair_index: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def make_dataset(p: int, operation: str = "add") -> Dataset:
    """All valid ``(a, b)`` pairs of ``operation`` mod ``p``, in row-major grid order."""
    op = get_operation(operation)
    if p < 3:
        raise ConfigError(f"task.p: must be at least 3, got {p}")
    if op.requires_prime and not is_prime(p):
        raise ConfigError(f"task.p: operation {operation!r} needs a prime p, got {p}")
    a, b = np.divmod(np.arange(p * p, dtype=np.int64), p)
    keep = np.ones(p * p, dtype=bool) if op.valid_pair is None else np.asarray(op.valid_pair(a, b, p))
    a, b = a[keep], b[keep]
    labels = np.mod(op.fn(a, b, p), p).astype(np.int64)
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1)
    return Dataset(p, operation, a * p + b, tokens, labels)


def split_indices(n: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into sorted train and test positions.

    ``round(frac_train * n)`` examples go to training (at least 1, at most ``n - 1``). The
    permutation comes from ``numpy.random.default_rng(seed)`` (PCG64), which is stable across
    platforms and numpy versions, so the same seed gives the same split everywhere.
    """
    n_train = min(max(int(round(frac_train * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def split_pairs(task) -> tuple[np.ndarray, np.ndarray]:
    """A task's seeded train / test split (a :class:`~grokinterp.config.TaskConfig`) as grid
    indices ``a * p + b``: ``(train_pairs, test_pairs)``, each sorted int64."""
    ds = make_dataset(task.p, task.operation)
    trn, tst = split_indices(len(ds), task.frac_train, task.split_seed)
    return ds.pair_index[trn], ds.pair_index[tst]
