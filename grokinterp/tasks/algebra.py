"""Finite groups, and the algebraic structures tasks declare for their analyses.

A task's :attr:`~grokinterp.tasks.base.Task.structure` tells the analyses which group the
generalizing circuit can live on and how the task's tokens map into it. Every structure here is a
:class:`GroupStructure`: on a *block* of the ``n × n`` grid the label of ``(a, b)`` is the token of a
group element ``s(a, b)`` (the *label coordinate*), and for every operand ``a`` of the block,
``b ↦ s(a, b)`` is a bijection onto the group. That property is what makes the functions
``u(s(a, b))`` (``u`` running over an orthonormal basis of functions on the group) orthogonal on the
block, so the restricted / excluded logits, the key terms and the logit attribution of every kind
are computed the same way (:mod:`grokinterp.analysis.groups`).

==========================  ===================================================  ====================
structure                   label coordinate ``s(a, b)``                         group
==========================  ===================================================  ====================
:class:`CyclicSum`          ``a + b mod n``                                      ``C_n``
:class:`CyclicDifference`   ``a − b mod n``                                      ``C_n``
:class:`DiscreteLog`        ``log a ± log b mod p − 1`` (``a, b ≠ 0``; ``g`` a   ``C_{p−1}``
                            primitive root, ``log g^i = i``)
:class:`GroupProduct`       ``g · h``                                            the group
:class:`GroupWord`          ``g · h · g⁻¹`` (``conj``) or ``g · h · g`` (``xyx``)   the group
==========================  ===================================================  ====================

Groups (:class:`FiniteGroup`) are multiplication tables over element indices ``0 .. |G|−1`` with
the identity at index 0: :func:`symmetric_group` (``S_n``, permutations in lexicographic order,
``(σ·τ)(i) = σ(τ(i))``), :func:`alternating_group` (``A_n``, the even permutations in the same
order), :func:`dihedral_group` (``D_n``, the ``2n`` symmetries of the regular n-gon: index ``k``
is the rotation ``r^k``, index ``n + k`` is ``r^k s``), :func:`cyclic_group` (``C_n``, addition mod
n). Only numpy is imported (configs validate against tasks without torch).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import ConfigError
from .base import Structure

__all__ = [
    "FiniteGroup", "symmetric_group", "alternating_group", "dihedral_group", "cyclic_group", "get_group",
    "group_order", "check_group", "primitive_root", "GroupStructure", "CyclicSum", "CyclicDifference", "DiscreteLog",
    "GroupProduct", "GroupWord", "GROUP_LIMITS",
]

#: Sizes accepted per family: ``family: (smallest n, largest n)`` (the vocabulary is the order).
GROUP_LIMITS = {"S": (3, 6), "A": (3, 6), "D": (3, 2500), "C": (3, 5000)}
_FAMILY_NAMES = {"S": "symmetric group", "A": "alternating group", "D": "dihedral group", "C": "cyclic group"}


class FiniteGroup:
    """A finite group as a multiplication table over element indices (identity = index 0).

    Attributes:
        name: ``S5``, ``A5``, ``D59``, ``C113``.
        family: ``S``, ``A``, ``D`` or ``C``; ``degree``: the ``n`` of the name.
        order: ``|G|``.
        elements: one Python object per element (permutation tuples for ``S_n`` / ``A_n``,
            ``(k, e)`` for ``r^k s^e`` in ``D_n``, ``k`` for ``C_n``).
        mult: int64 ``[|G|, |G|]``, ``mult[g, h]`` = index of ``g · h``.
        inverse: int64 ``[|G|]``.
        labels: a readable name per element (cycle notation, ``r^3 s``, ``7``).
    """

    def __init__(self, name: str, family: str, degree: int, elements: list, mult: np.ndarray, labels: list[str]):
        self.name, self.family, self.degree = name, family, int(degree)
        self.elements = list(elements)
        self.order = len(self.elements)
        self.mult = np.ascontiguousarray(mult, dtype=np.int64)
        self.labels = tuple(labels)
        inv = np.argmax(self.mult == 0, axis=1)
        if not (self.mult[np.arange(self.order), inv] == 0).all():
            raise ConfigError(f"{name}: the multiplication table has no inverses (not a group)")
        self.inverse = inv.astype(np.int64)

    identity = 0

    def __repr__(self) -> str:
        return f"FiniteGroup({self.name}: {self.describe()})"

    def __eq__(self, other) -> bool:
        return isinstance(other, FiniteGroup) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("FiniteGroup", self.name))

    def describe(self) -> str:
        return f"{_FAMILY_NAMES[self.family]} of order {self.order}"

    @property
    def is_abelian(self) -> bool:
        return bool((self.mult == self.mult.T).all())

    @cached_property
    def conjugacy_classes(self) -> list[np.ndarray]:
        """The conjugacy classes as sorted element-index arrays, the identity's first."""
        m = self.order
        conj = self.mult[self.mult[np.arange(m)[:, None], np.arange(m)[None, :]], self.inverse[:, None]]
        # conj[g, x] = g x g⁻¹
        seen = np.zeros(m, dtype=bool)
        out = []
        for x in range(m):
            if not seen[x]:
                cls = np.unique(conj[:, x])
                seen[cls] = True
                out.append(cls)
        return out


def _perm_codes(perms: np.ndarray, n: int) -> np.ndarray:
    """Base-n codes of permutations (increasing in lexicographic order)."""
    return perms @ (n ** np.arange(n - 1, -1, -1, dtype=np.int64))


def _perm_group(name: str, family: str, n: int, perms: np.ndarray) -> FiniteGroup:
    codes = _perm_codes(perms, n)
    composed = np.take_along_axis(perms[:, None, :].repeat(len(perms), 1),
                                  np.broadcast_to(perms[None, :, :], (len(perms),) * 2 + (n,)), axis=2)
    mult = np.searchsorted(codes, _perm_codes(composed.reshape(-1, n), n)).reshape(len(perms), len(perms))
    return FiniteGroup(name, family, n, [tuple(int(x) for x in p) for p in perms], mult,
                       [_cycle_notation(p) for p in perms])


def _cycle_notation(perm) -> str:
    seen, cycles = set(), []
    for i in range(len(perm)):
        if i in seen or perm[i] == i:
            continue
        cyc, j = [], i
        while j not in seen:
            seen.add(j)
            cyc.append(j)
            j = int(perm[j])
        cycles.append("(" + " ".join(str(c) for c in cyc) + ")")
    return "".join(cycles) or "e"


def _sign(perms: np.ndarray) -> np.ndarray:
    """+1 / −1 per permutation (parity of the number of inversions)."""
    n = perms.shape[1]
    inv = sum((perms[:, i, None] > perms[:, i + 1:]).sum(1) for i in range(n - 1))
    return np.where(inv % 2 == 0, 1, -1)


def symmetric_group(n: int) -> FiniteGroup:
    """``S_n``: the permutations of ``0..n−1`` in lexicographic order (identity first)."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    return _perm_group(f"S{n}", "S", n, perms)


def alternating_group(n: int) -> FiniteGroup:
    """``A_n``: the even permutations of ``0..n−1`` in lexicographic order (identity first)."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    return _perm_group(f"A{n}", "A", n, perms[_sign(perms) == 1])


def dihedral_group(n: int) -> FiniteGroup:
    """``D_n``, the ``2n`` symmetries of the regular n-gon: index ``k`` = ``r^k``, ``n + k`` = ``r^k s``.

    Notes:
        ``r`` is the rotation by ``2π/n``, ``s`` a reflection, ``s r s = r⁻¹``; so
        ``(r^a s^e)(r^b s^f) = r^{a + (−1)^e b} s^{e + f}``.
    """
    k, e = np.divmod(np.arange(2 * n), n)[::-1]
    a, b = k[:, None], k[None, :]
    ea, eb = e[:, None], e[None, :]
    rot = (a + np.where(ea == 0, b, -b)) % n
    mult = rot + n * ((ea + eb) % 2)
    labels = [("e" if kk == 0 else f"r^{kk}") if ee == 0 else ("s" if kk == 0 else f"r^{kk} s")
              for kk, ee in zip(k.tolist(), e.tolist())]
    return FiniteGroup(f"D{n}", "D", n, list(zip(k.tolist(), e.tolist())), mult, labels)


def cyclic_group(n: int) -> FiniteGroup:
    """``C_n``: ``0..n−1`` under addition mod n."""
    x = np.arange(n)
    return FiniteGroup(f"C{n}", "C", n, x.tolist(), (x[:, None] + x[None, :]) % n, [str(i) for i in x])


_BUILDERS = {"S": symmetric_group, "A": alternating_group, "D": dihedral_group, "C": cyclic_group}
_GROUPS: dict[str, FiniteGroup] = {}


def group_order(family: str, n: int) -> int:
    """``|G|`` without building the group."""
    return {"S": math.factorial(n), "A": math.factorial(n) // 2, "D": 2 * n, "C": n}[family]


def check_group(family: str, n: int) -> None:
    """Refuse (:class:`ConfigError`) a family or size outside :data:`GROUP_LIMITS`, without building the group."""
    if family not in GROUP_LIMITS:
        raise ConfigError(f"task.operation: unknown group family {family!r}; known: {', '.join(GROUP_LIMITS)}")
    lo, hi = GROUP_LIMITS[family]
    if not lo <= n <= hi:
        order = group_order(family, n) if n < 10_000 else None
        size = "too many" if order is None else f"{order:,}" if order < 10 ** 12 else f"about {float(order):.2g}"
        raise ConfigError(f"task.operation: {family}{n} is not supported: {_FAMILY_NAMES[family]}s {family}{lo}.."
                          f"{family}{hi} are (the vocabulary is the order, {family}{n} would have {size} elements)")


def get_group(family: str, n: int) -> FiniteGroup:
    """The group ``family + n`` (cached); :class:`ConfigError` outside :data:`GROUP_LIMITS`."""
    check_group(family, n)
    name = f"{family}{n}"
    if name not in _GROUPS:
        _GROUPS[name] = _BUILDERS[family](n)
    return _GROUPS[name]


def _prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while d * d <= n:
        if n % d == 0:
            out.append(d)
            while n % d == 0:
                n //= d
        d += 1
    if n > 1:
        out.append(n)
    return out


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group mod a prime ``p``.

    ``g`` generates iff ``g^((p−1)/q) ≢ 1 (mod p)`` for every prime ``q`` dividing ``p − 1``.
    """
    qs = _prime_factors(p - 1)
    for g in range(1, p):
        if all(pow(g, (p - 1) // q, p) != 1 for q in qs):
            return g
    raise ConfigError(f"p = {p}: no primitive root (p must be prime)")


# -- structures ---------------------------------------------------------------------------------
class GroupStructure(Structure):
    """A structure whose labels, on a block of the grid, are group elements ``s(a, b)``.

    Subclasses give ``n`` (the task's alphabet), :attr:`group`, :attr:`token_element` and
    :meth:`coordinate`. Derived here: :attr:`element_token`, :attr:`coords` (the label coordinate of
    every grid index, ``−1`` outside the block) and :attr:`block` (the grid indices of the block).
    """

    n: int

    @property
    def group(self) -> FiniteGroup:
        raise NotImplementedError

    @property
    def token_element(self) -> np.ndarray:
        """int64 ``[n]``: the group element each token stands for (``−1``: none, e.g. 0 for ``mul``)."""
        return np.arange(self.n, dtype=np.int64)

    #: the label coordinate in words, for reports (``a + b``, ``g·h``)
    word: str = ""
    #: how the tokens are read as group elements, for reports
    coordinates: str = "tokens are the group's elements"

    def coordinate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``s(a, b)`` (int64 element indices) for operand arrays inside the block."""
        raise NotImplementedError

    @cached_property
    def element_token(self) -> np.ndarray:
        """int64 ``[|G|]``: the token of each group element."""
        te = self.token_element
        out = np.full(self.group.order, -1, dtype=np.int64)
        ok = te >= 0
        out[te[ok]] = np.flatnonzero(ok)
        if (out < 0).any():
            raise ConfigError(f"{self.describe()}: not every group element has a token")
        return out

    @cached_property
    def coords(self) -> np.ndarray:
        """int64 ``[n²]``: ``s(a, b)`` of every grid index ``a * n + b`` (``−1`` outside the block)."""
        n = self.n
        a, b = np.divmod(np.arange(n * n, dtype=np.int64), n)
        te = self.token_element
        inside = (te[a] >= 0) & (te[b] >= 0)
        out = np.full(n * n, -1, dtype=np.int64)
        out[inside] = self.coordinate(a[inside], b[inside])
        return out

    @cached_property
    def block(self) -> np.ndarray:
        """Sorted grid indices of the block (where the label is a group element of ``s(a, b)``)."""
        return np.flatnonzero(self.coords >= 0)

    def describe(self) -> str:
        return f"{self.group.name} ({self.group.describe()}): label = {self.word}"


class _CyclicWord(GroupStructure):
    """``a ± b mod n`` on the residues (the sign is the subclass's)."""

    n: int
    sign = 1
    coordinates = "residues"

    @property
    def group(self) -> FiniteGroup:
        return get_group("C", self.n) if self.n >= 3 else cyclic_group(self.n)

    def coordinate(self, a, b):
        return (a + self.sign * b) % self.n

    def describe(self) -> str:
        return f"cyclic group Z_{self.n} (label = {self.word} mod {self.n})"


@dataclass(frozen=True, eq=True)
class CyclicSum(_CyclicWord):
    """The label is ``(a + b) mod n``: the cyclic group Z_n, analysed with its Fourier basis."""

    n: int
    word = "a + b"


@dataclass(frozen=True, eq=True)
class CyclicDifference(_CyclicWord):
    """The label is ``(a − b) mod n``: Z_n with the key terms ``cos(w(a − b − c))``."""

    n: int
    word = "a − b"
    sign = -1


@dataclass(frozen=True, eq=True)
class DiscreteLog(GroupStructure):
    """``a · b`` or ``a / b`` mod a prime ``p`` on the nonzero residues, in discrete-log coordinates.

    The nonzero residues form a cyclic group of order ``p − 1`` generated by ``g``: with
    ``log g^i = i``, ``log(a·b) = log a + log b`` and ``log(a/b) = log a − log b`` mod ``p − 1``. The
    block is ``a, b ≠ 0``; the row and column of 0 (label 0) lie outside it and are reported apart.

    Attributes:
        p: the prime.
        op: ``mul`` or ``div``.
        generator: ``g`` (:func:`primitive_root` by default, via :meth:`of`).
    """

    n: int
    op: str
    generator: int

    @classmethod
    def of(cls, p: int, op: str) -> "DiscreteLog":
        return cls(int(p), op, primitive_root(int(p)))

    @property
    def word(self) -> str:  # type: ignore[override]
        return "log a + log b" if self.op == "mul" else "log a − log b"

    @property
    def coordinates(self) -> str:  # type: ignore[override]
        return (f"discrete logarithms base {self.generator} (token g^i is element i of Z_{self.n - 1}; "
                f"0 has no logarithm)")

    @property
    def group(self) -> FiniteGroup:
        return get_group("C", self.n - 1) if self.n - 1 >= 3 else cyclic_group(self.n - 1)

    @cached_property
    def token_element(self) -> np.ndarray:  # type: ignore[override]
        p, g = self.n, self.generator
        out = np.full(p, -1, dtype=np.int64)
        x = 1
        for i in range(p - 1):
            out[x] = i
            x = x * g % p
        return out

    def coordinate(self, a, b):
        la, lb = self.token_element[a], self.token_element[b]
        return (la + lb) % (self.n - 1) if self.op == "mul" else (la - lb) % (self.n - 1)

    def describe(self) -> str:
        sym = "·" if self.op == "mul" else "/"
        return (f"cyclic group Z_{self.n - 1} of the nonzero residues mod {self.n} (label = a {sym} b; "
                f"discrete logarithms base {self.generator}; the row and column of 0 apart)")


@dataclass(frozen=True, eq=True)
class GroupProduct(GroupStructure):
    """The label is ``g · h`` in a finite group (tokens are element indices)."""

    group_: FiniteGroup
    word = "g·h"

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.group_.order

    @property
    def group(self) -> FiniteGroup:
        return self.group_

    def coordinate(self, a, b):
        return self.group_.mult[a, b]


_WORDS = {"conj": "g·h·g⁻¹", "xyx": "g·h·g"}


@dataclass(frozen=True, eq=True)
class GroupWord(GroupStructure):
    """The label is ``g·h·g⁻¹`` (``conj``) or ``g·h·g`` (``xyx``): for each ``g``, ``h ↦ label`` is a bijection."""

    group_: FiniteGroup
    kind: str

    @property
    def n(self) -> int:  # type: ignore[override]
        return self.group_.order

    @property
    def word(self) -> str:  # type: ignore[override]
        return _WORDS[self.kind]

    @property
    def group(self) -> FiniteGroup:
        return self.group_

    def coordinate(self, a, b):
        M = self.group_.mult
        last = self.group_.inverse[a] if self.kind == "conj" else a
        return M[M[a, b], last]
