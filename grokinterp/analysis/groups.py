"""Irreducible representations of finite groups and the group Fourier transform (cyclic = Fourier).

Chughtai et al. (2023) show that networks trained on a group learn a few of its irreducible
representations ρ and compute logits ``≈ Σ_ρ χ_ρ(g·h·c⁻¹)``; for ``C_p`` these are Nanda et al.'s
key frequencies and ``cos(w(a+b−c))``. This module builds the irreps (nothing is tabulated):

* ``S_n`` — Young's orthogonal form on standard Young tableaux: the adjacent transposition
  ``s_i = (i, i+1)`` acts by ``ρ(s_i) e_T = e_T / r + √(1 − 1/r²) e_{s_i T}`` with ``r`` the axial
  distance (content of ``i+1`` minus content of ``i`` in ``T``; ``±1`` when they share a row /
  column), and every other element by products along the Cayley graph;
* ``A_n`` — restriction from ``S_n``: ``ρ_λ`` and ``ρ_λ'`` restrict to the same irrep; for a
  self-conjugate ``λ = λ'`` the restriction splits in two, along the eigenspaces of the intertwiner
  ``T`` with ``T ρ(σ) = sgn(σ) ρ(σ) T`` (``T`` symmetric: two real irreps, as A5's two 3-dimensional
  ones; ``T`` antisymmetric: a complex-conjugate pair, as A4's two non-trivial 1-dimensional ones);
* ``D_n`` — closed forms: 1-dimensional ``r ↦ ±1, s ↦ ±1`` (four for even n, two for odd n) and the
  2-dimensional ``r ↦ rotation by 2πj/n, s ↦ diag(1, −1)``, ``1 ≤ j < n/2``;
* ``C_n`` — the characters ``x ↦ e^{2πikx/n}``.

**Real forms, and how they are counted.** Weights and logits are real, so the analyses use a real
orthonormal basis of the functions on ``G`` (:class:`GroupBasis`). A *real-type* irrep (Frobenius–
Schur indicator 1; all irreps of ``S_n`` and ``D_n``) is used in a real orthogonal form and gives
``d²`` basis functions ``√(d/|G|) ρ_ij``. A *complex-type* irrep (indicator 0) and its complex
conjugate form **one real irrep** of real dimension ``2d``, with ``2d²`` basis functions
``√(2d/|G|) Re ρ_ij`` and ``√(2d/|G|) Im ρ_ij`` (for ``C_n``: ``cos`` and ``sin`` of one frequency).
So ``Σ_complex irreps d² = |G|`` becomes ``Σ_real-type d² + Σ_complex pairs 2d² = |G|``, and the real
irreps of ``C_n`` are exactly the frequencies ``0..⌊n/2⌋`` of :class:`~grokinterp.analysis.fourier.FourierBasis`,
whose matrix :class:`GroupBasis` reproduces row for row. Quaternionic irreps (indicator −1) do not occur
in these families and are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from ..errors import AnalysisError
from ..model.grid import grid_outputs
from ..tasks.algebra import FiniteGroup, GroupStructure, get_group

__all__ = ["Irrep", "RealIrrep", "irreps", "real_irreps", "GroupBasis", "group_basis", "partitions",
           "standard_tableaux", "frobenius_schur", "TaskStructure", "task_structure", "embed_irrep_norms",
           "unembed_irrep_norms", "neuron_logit_irrep_norms", "neuron_irrep_energy", "neuron_irrep_fve", "CharacterFit",
           "logit_character_fit", "logit_irrep_norms_2d", "model_character_fit"]


@dataclass(frozen=True)
class Irrep:
    """A complex irreducible representation, in an orthogonal (real type) or unitary form.

    Attributes:
        name: e.g. ``[4,1] standard``, ``rot 2``, ``freq 3``, ``[2,2]+``.
        dim: its dimension ``d`` over the complex numbers.
        matrices: ``[|G|, d, d]``: float64 (real orthogonal) for real-type irreps, complex128 (unitary)
            otherwise; ``matrices[g]`` is ``ρ(g)``.
        kind: ``real`` or ``complex`` (Frobenius–Schur indicator 1 or 0).
    """

    name: str
    dim: int
    matrices: np.ndarray
    kind: str

    @property
    def character(self) -> np.ndarray:
        """``χ(g) = tr ρ(g)`` per element (complex128 for complex-type irreps)."""
        return np.trace(self.matrices, axis1=1, axis2=2)


@dataclass(frozen=True)
class RealIrrep:
    """An irreducible representation over the reals, as the analyses count them.

    Attributes:
        index: position in :func:`real_irreps` (0 = trivial).
        name: the name of the complex irrep (a complex pair carries the name of the member listed first).
        dim: real dimension (``d`` for a real-type irrep, ``2d`` for a complex pair).
        kind: ``real`` or ``complex`` (a complex-conjugate pair).
        functions: ``[k, |G|]`` float64, orthonormal basis functions of the span of its matrix elements
            (``k = d²`` or ``2d²``).
        labels: one name per basis function (``[4,1] 0,1``; ``cos 3`` / ``sin 3`` for cyclic groups).
        character: float64 ``[|G|]``, the character of the real form (``χ``, or ``2 Re χ`` for a pair).
    """

    index: int
    name: str
    dim: int
    kind: str
    functions: np.ndarray
    labels: tuple[str, ...]
    character: np.ndarray

    @property
    def n_functions(self) -> int:
        return int(self.functions.shape[0])


# -- building blocks ---------------------------------------------------------------------------------
def partitions(n: int) -> list[tuple[int, ...]]:
    """Partitions of ``n`` in decreasing lexicographic order (``(n)`` first, ``(1,…,1)`` last)."""
    def gen(rest: int, largest: int):
        if rest == 0:
            yield ()
            return
        for k in range(min(rest, largest), 0, -1):
            for tail in gen(rest - k, k):
                yield (k,) + tail
    return list(gen(n, n))


def _conjugate(lam: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sum(1 for part in lam if part > j) for j in range(lam[0]))


def standard_tableaux(lam: tuple[int, ...]) -> list[tuple[tuple[int, int], ...]]:
    """Standard Young tableaux of shape ``lam``, each as the ``(row, col)`` of the entries ``0..n−1``."""
    n = sum(lam)
    out = []

    def grow(filled: list[int], cells: list[tuple[int, int]]):
        k = len(cells)
        if k == n:
            out.append(tuple(cells))
            return
        for r in range(len(lam)):
            c = filled[r]
            if c < lam[r] and (r == 0 or filled[r - 1] > c):
                filled[r] += 1
                grow(filled, cells + [(r, c)])
                filled[r] -= 1

    grow([0] * len(lam), [])
    return out


def _generated(G: FiniteGroup, gens: dict[int, np.ndarray], dim: int, dtype=np.float64) -> np.ndarray:
    """``ρ(g)`` for every element from ``ρ`` of generators, along the Cayley graph: ``ρ(s·g) = ρ(s) ρ(g)``."""
    mats = np.zeros((G.order, dim, dim), dtype=dtype)
    done = np.zeros(G.order, dtype=bool)
    mats[0] = np.eye(dim)
    done[0] = True
    frontier = [0]
    while frontier:
        nxt = []
        for g in frontier:
            for s, Rs in gens.items():
                h = int(G.mult[s, g])
                if not done[h]:
                    mats[h] = Rs @ mats[g]
                    done[h] = True
                    nxt.append(h)
        frontier = nxt
    if not done.all():
        raise AnalysisError(f"{G.name}: the generators do not generate the group")
    return mats


def _young_orthogonal(G: FiniteGroup, lam: tuple[int, ...]) -> np.ndarray:
    """Young's orthogonal form of ``S_n``'s irrep ``λ`` on ``G = S_n``: ``[n!, d, d]`` float64."""
    n = G.degree
    tabs = standard_tableaux(lam)
    pos = {t: i for i, t in enumerate(tabs)}
    d = len(tabs)
    index = {p: i for i, p in enumerate(G.elements)}
    gens = {}
    for i in range(n - 1):
        perm = list(range(n))
        perm[i], perm[i + 1] = i + 1, i
        R = np.zeros((d, d))
        for t, col in pos.items():
            (r1, c1), (r2, c2) = t[i], t[i + 1]
            if r1 == r2:
                R[col, col] = 1.0
            elif c1 == c2:
                R[col, col] = -1.0
            else:
                ax = (c2 - r2) - (c1 - r1)  # axial distance: content(i+1) − content(i)
                swapped = list(t)
                swapped[i], swapped[i + 1] = t[i + 1], t[i]
                R[col, col] = 1.0 / ax
                R[pos[tuple(swapped)], col] = math.sqrt(1.0 - 1.0 / ax ** 2)
        gens[index[tuple(perm)]] = R
    return _generated(G, gens, d)


def _partition_name(lam: tuple[int, ...]) -> str:
    n = sum(lam)
    base = "[" + ",".join(map(str, lam)) + "]"
    alias = {(2,) + (1,) * (n - 2): "standard⊗sign", (n - 1, 1): "standard", (1,) * n: "sign", (n,): "trivial"}
    a = alias.get(lam) if n > 2 else None
    if lam == (n,):
        a = "trivial"
    return f"{base} {a}" if a else base


def frobenius_schur(G: FiniteGroup, character: np.ndarray) -> int:
    """The Frobenius–Schur indicator ``(1/|G|) Σ_g χ(g²)``: 1 real, 0 complex, −1 quaternionic type."""
    sq = G.mult[np.arange(G.order), np.arange(G.order)]
    return int(round(float(np.real(character[sq].sum()) / G.order)))


def _symmetric_irreps(G: FiniteGroup) -> list[Irrep]:
    return [Irrep(_partition_name(lam), len(standard_tableaux(lam)), _young_orthogonal(G, lam), "real")
            for lam in partitions(G.degree)]


def _alternating_irreps(G: FiniteGroup) -> list[Irrep]:
    n = G.degree
    S = get_group("S", n)
    idx = {p: i for i, p in enumerate(S.elements)}
    sub = np.array([idx[p] for p in G.elements])  # A_n's elements inside S_n
    sign = np.ones(S.order)
    even = np.zeros(S.order, dtype=bool)
    even[sub] = True
    sign[~even] = -1.0
    out = []
    rng = np.random.default_rng(0)
    for lam in partitions(n):
        conj = _conjugate(lam)
        if conj > lam:  # the pair λ, λ' restricts to one irrep: keep λ ≥ λ' (lexicographically)
            continue
        name = _partition_name(lam)
        R = _young_orthogonal(S, lam)
        if conj != lam:
            out.append(Irrep(name, R.shape[1], R[sub], "real"))
            continue
        d = R.shape[1]
        X = rng.standard_normal((d, d))
        T = np.einsum("g,gij,jk,glk->il", sign, R, X, R)  # Σ_σ sgn(σ) ρ(σ) X ρ(σ)ᵀ
        T /= np.abs(T).max()
        if np.allclose(T, T.T, atol=1e-8):
            w, V = np.linalg.eigh(T)
            for tag, cols in (("+", V[:, w > 0]), ("−", V[:, w < 0])):
                out.append(Irrep(name.split(" ")[0] + tag, cols.shape[1],
                                 np.einsum("ia,gij,jb->gab", cols, R[sub], cols), "real"))
        elif np.allclose(T, -T.T, atol=1e-8):
            J = T / math.sqrt(-np.trace(T @ T) / d)  # J² = −I
            w, V = np.linalg.eig(J)
            for tag, sel in (("+", w.imag > 0), ("−", w.imag < 0)):
                U, _ = np.linalg.qr(V[:, sel])
                out.append(Irrep(name.split(" ")[0] + tag, U.shape[1],
                                 np.einsum("ia,gij,jb->gab", U.conj(), R[sub].astype(complex), U), "complex"))
        else:  # pragma: no cover - Schur's lemma forbids it
            raise AnalysisError(f"{G.name}: the intertwiner of {name} is neither symmetric nor antisymmetric")
    return out


def _dihedral_irreps(G: FiniteGroup) -> list[Irrep]:
    n = G.degree
    k = np.array([e[0] for e in G.elements])
    refl = np.array([e[1] for e in G.elements])
    out = []
    ones = [("trivial", 1, 1), ("sign (s ↦ −1)", 1, -1)]
    if n % 2 == 0:
        ones += [("r ↦ −1, s ↦ 1", -1, 1), ("r ↦ −1, s ↦ −1", -1, -1)]
    for name, rv, sv in ones:
        out.append(Irrep(name, 1, ((rv ** k) * (sv ** refl)).astype(np.float64)[:, None, None], "real"))
    for j in range(1, (n - 1) // 2 + 1):
        th = 2 * np.pi * j * k / n
        Rot = np.stack([np.stack([np.cos(th), -np.sin(th)], -1), np.stack([np.sin(th), np.cos(th)], -1)], -2)
        S = np.where(refl[:, None, None] == 1, np.diag([1.0, -1.0])[None], np.eye(2)[None])
        out.append(Irrep(f"rot {j}", 2, Rot @ S, "real"))  # r^k s^e ↦ Rot(k) · diag(1, −1)^e
    return out


def _cyclic_irreps(G: FiniteGroup) -> list[Irrep]:
    n = G.order
    x = np.arange(n)
    out = []
    for k in range(n // 2 + 1):
        chi = np.exp(2j * np.pi * k * x / n)
        real = k == 0 or 2 * k == n
        name = "trivial" if k == 0 else f"freq {k}"
        out.append(Irrep(name, 1, (chi.real if real else chi)[:, None, None], "real" if real else "complex"))
        if not real:
            out.append(Irrep(f"freq {-k % n}", 1, chi.conj()[:, None, None], "complex"))
    return out


_IRREPS: dict[str, list[Irrep]] = {}


def irreps(group: FiniteGroup | str) -> list[Irrep]:
    """Every complex irreducible representation of ``group`` (a complex pair listed as two), trivial first.

    For a complex-type irrep the one listed first is the representative whose real and imaginary parts
    :func:`real_irreps` uses (for ``C_n``: frequency ``k < n/2`` before ``n − k``).
    """
    G = _as_group(group)
    if G.name not in _IRREPS:
        build = {"S": _symmetric_irreps, "A": _alternating_irreps, "D": _dihedral_irreps, "C": _cyclic_irreps}
        _IRREPS[G.name] = build[G.family](G)
    return _IRREPS[G.name]


def _as_group(group) -> FiniteGroup:
    if isinstance(group, FiniteGroup):
        return group
    if isinstance(group, str) and group[:1] in "SADC" and group[1:].isdigit():
        return get_group(group[0], int(group[1:]))
    raise AnalysisError(f"group: expected a FiniteGroup or a name such as 'S5', got {group!r}")


def real_irreps(group: FiniteGroup | str) -> list[RealIrrep]:
    """The irreps over the reals with their orthonormal basis functions (see the module docstring)."""
    G = _as_group(group)
    m = G.order
    out: list[RealIrrep] = []
    skip: set[int] = set()
    cyclic = G.family == "C"
    for i, ir in enumerate(irreps(G)):
        if i in skip:
            continue
        d = ir.dim
        if ir.kind == "real":
            F = np.sqrt(d / m) * ir.matrices.reshape(m, d * d).T.real
            labels = tuple(f"{ir.name} {a},{b}" for a in range(d) for b in range(d))
            if cyclic:
                labels = ("const",) if d == 1 and ir.name == "trivial" else (f"cos {m // 2}",)
            chi = ir.character.real
            out.append(RealIrrep(len(out), ir.name, d, "real", F, labels, chi))
        else:
            # its conjugate: the next complex irrep whose character is the complex conjugate
            partner = next(j for j in range(i + 1, len(irreps(G))) if j not in skip
                           and np.allclose(irreps(G)[j].character, ir.character.conj(), atol=1e-8))
            skip.add(partner)
            M = ir.matrices.reshape(m, d * d).T
            F = np.sqrt(2 * d / m) * np.stack([M.real, M.imag], 1).reshape(2 * d * d, m)
            if cyclic:
                k = int(ir.name.split()[1])
                labels = (f"cos {k}", f"sin {k}")
            else:
                labels = tuple(f"{ir.name} {part} {a},{b}" for a in range(d) for b in range(d) for part in ("re", "im"))
            name = ir.name if not ir.name.endswith("+") else ir.name[:-1] + "±"
            out.append(RealIrrep(len(out), name, 2 * d, "complex", F, labels, 2 * ir.character.real))
    return out


class GroupBasis:
    """A real orthonormal basis of the functions on a finite group, grouped by real irrep.

    Rows are the basis functions of :func:`real_irreps`, irrep by irrep (trivial first). For
    ``C_n`` the rows are ``const, cos 1, sin 1, …, (cos n/2)``: the
    :class:`~grokinterp.analysis.fourier.FourierBasis` (tested equal), and irrep ``k`` is frequency ``k``.

    Attributes:
        group: the :class:`~grokinterp.tasks.algebra.FiniteGroup`.
        irreps: the :class:`RealIrrep` list.
        matrix64, matrix: ``[|G|, |G|]`` float64 / float32; row ``i`` is component ``labels[i]``.
        irrep_of_row: int64 ``[|G|]``, the real irrep of each row (index into ``irreps``).
        labels: component names.
        names: irrep names (``freq_labels`` of the Fourier basis for cyclic groups).
        n_irreps: number of real irreps (the trivial one included).
        characters: float64 ``[n_irreps, |G|]``, the real characters.
    """

    def __init__(self, group: FiniteGroup | str):
        self.group = _as_group(group)
        self.irreps = real_irreps(self.group)
        self.matrix64 = torch.tensor(np.concatenate([r.functions for r in self.irreps]), dtype=torch.float64)
        self.matrix = self.matrix64.float()
        self.irrep_of_row = torch.tensor(np.concatenate([[r.index] * r.n_functions for r in self.irreps]),
                                         dtype=torch.int64)
        self.labels = tuple(lab for r in self.irreps for lab in r.labels)
        self.names = tuple(r.name for r in self.irreps)
        self.n_irreps = len(self.irreps)
        self.characters = torch.tensor(np.stack([r.character for r in self.irreps]), dtype=torch.float64)
        self.order = self.group.order

    def __repr__(self) -> str:
        return f"GroupBasis({self.group.name}: {self.n_irreps} real irreps, dims {list(self.dims)})"

    @cached_property
    def dims(self) -> tuple[int, ...]:
        """Real dimension of each irrep."""
        return tuple(r.dim for r in self.irreps)

    @cached_property
    def n_functions(self) -> Tensor:
        """int64 ``[n_irreps]``: basis functions per irrep (``d²``, or ``2d²`` for a complex pair)."""
        return torch.tensor([r.n_functions for r in self.irreps], dtype=torch.int64)

    def _check_axis(self, x: Tensor, dim: int) -> None:
        if x.shape[dim] != self.order:
            raise AnalysisError(f"axis {dim} of a tensor of shape {list(x.shape)} has size {x.shape[dim]}, but "
                                f"{self.group.name} has {self.order} elements")

    def check_irreps(self, keys, *, allow_trivial: bool = False) -> list[int]:
        """Irrep indices as a sorted list of unique ints in ``1..n_irreps−1`` (``0..`` with ``allow_trivial``)."""
        keys = getattr(keys, "freqs", keys)
        if isinstance(keys, (int, np.integer)) and not isinstance(keys, bool):
            keys = [keys]
        try:
            keys = list(keys)
        except TypeError:
            raise AnalysisError(f"key irreps: expected a sequence of irrep indices, got {keys!r}") from None
        lo = 0 if allow_trivial else 1
        out = []
        for k in keys:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not lo <= int(k) < self.n_irreps:
                if self.group.family == "C":
                    raise AnalysisError(f"frequency {k!r} is not in {lo}..{self.n_irreps - 1} (frequencies of "
                                        f"{self.group.name})")
                listed = ", ".join(f"{i} = {n}" for i, n in enumerate(self.names[:12]))
                more = ", ..." if self.n_irreps > 12 else ""
                raise AnalysisError(f"irrep {k!r} is not in {lo}..{self.n_irreps - 1} ({self.group.name}: {listed}{more})")
            out.append(int(k))
        return sorted(set(out))

    def to_basis(self, x: Tensor, dim: int = -1) -> Tensor:
        """Group Fourier coefficients along axis ``dim`` (size ``|G|``): ``Σ_g basis[i, g] x[..., g, ...]``.

        Works on any leading axes (e.g. ``ckpt``): one matrix product for a whole stack.
        """
        self._check_axis(x, dim)
        m = self.matrix64 if x.dtype == torch.float64 else self.matrix
        return torch.movedim(torch.movedim(x, dim, -1) @ m.to(x.device).T, -1, dim)

    def from_basis(self, coeffs: Tensor, dim: int = -1) -> Tensor:
        """Inverse of :meth:`to_basis` (the basis is orthogonal)."""
        self._check_axis(coeffs, dim)
        m = self.matrix64 if coeffs.dtype == torch.float64 else self.matrix
        return torch.movedim(torch.movedim(coeffs, dim, -1) @ m.to(coeffs.device), -1, dim)

    def fold(self, sq: Tensor, dims: int | tuple[int, ...] | list[int] = -1) -> Tensor:
        """Sum per-component values (e.g. squared coefficients) into per-irrep values along each axis in ``dims``.

        An axis of size ``|G|`` in the basis order becomes one of size ``n_irreps`` (index 0 = trivial);
        for ``C_n`` exactly :meth:`FourierBasis.fold <grokinterp.analysis.fourier.FourierBasis.fold>`.
        """
        for d in ([dims] if isinstance(dims, int) else list(dims)):
            self._check_axis(sq, d)
            d = d % sq.ndim
            shape = list(sq.shape)
            shape[d] = self.n_irreps
            sq = torch.zeros(shape, dtype=sq.dtype, device=sq.device).index_add_(d, self.irrep_of_row.to(sq.device), sq)
        return sq

    def norms(self, coeffs: Tensor, dim: int = -1) -> Tensor:
        """Per-irrep norms ``√(Σ coeff²)`` along ``dim`` (size ``n_irreps`` there)."""
        return self.fold(coeffs ** 2, dim).sqrt()

    def row_mask(self, keys, include_trivial: bool = False, device=None) -> Tensor:
        """Boolean ``[|G|]``: the rows of the irreps ``keys`` (and of the trivial irrep)."""
        ks = self.check_irreps(keys)
        mask = torch.isin(self.irrep_of_row, torch.tensor(ks + ([0] if include_trivial else []), dtype=torch.int64))
        return mask.to(device)

    def projector(self, keys, include_trivial: bool = False, device=None) -> Tensor:
        """float64 ``[|G|, |G|]``: the orthogonal projection of functions on ``G`` onto the span of the matrix
        elements of the irreps ``keys`` (isotypic components), plus the constants with ``include_trivial``."""
        B = self.matrix64[self.row_mask(keys, include_trivial)]
        return (B.T @ B).to(device)


_BASES: dict[str, GroupBasis] = {}


def group_basis(group: FiniteGroup | str) -> GroupBasis:
    """A cached :class:`GroupBasis`."""
    G = _as_group(group)
    if G.name not in _BASES:
        _BASES[G.name] = GroupBasis(G)
    return _BASES[G.name]


# -- a task's structure, as the analyses use it ------------------------------------------------------
class TaskStructure:
    """A task's group structure resolved into tensors (see :mod:`grokinterp.tasks.algebra`).

    On the block of the ``n × n`` grid the label of ``(a, b)`` is the token of the group element
    ``s(a, b)``; every analysis that needs a group (key irreps, restricted / excluded logits, the
    character fit, neuron clusters) works on the block in the group's coordinates.

    Attributes:
        task: the :class:`~grokinterp.tasks.base.Task`.
        structure: its :class:`~grokinterp.tasks.algebra.GroupStructure`.
        basis: the :class:`GroupBasis` of the group (the Fourier basis for cyclic groups).
        n: the task's alphabet size; ``m``: the group's order.
        coords: int64 ``[n²]``: ``s(a, b)`` per grid index (``−1`` outside the block).
        block: sorted grid indices of the block.
        token_element: int64 ``[n]``; ``element_token``: int64 ``[m]`` (token of each element).
        cyclic: the group is cyclic: irrep ``k`` is frequency ``k`` and reports say "frequency".
    """

    def __init__(self, task, structure):
        self.task, self.structure = task, structure
        self.group = structure.group
        self.basis = group_basis(self.group)
        self.n, self.m = int(task.n), self.group.order
        self.coords = torch.from_numpy(structure.coords.copy())
        self.block = torch.from_numpy(structure.block.copy())
        self.token_element = torch.from_numpy(structure.token_element.copy())
        self.element_token = torch.from_numpy(structure.element_token.copy())
        self.cyclic = self.group.family == "C"

    def __repr__(self) -> str:
        return f"TaskStructure({self.describe()})"

    def describe(self) -> str:
        return self.structure.describe()

    @property
    def noun(self) -> str:
        """``frequency`` (cyclic groups) or ``irrep``."""
        return "frequency" if self.cyclic else "irrep"

    @property
    def nouns(self) -> str:
        """The plural of :attr:`noun`: ``frequencies`` or ``irreps``."""
        return "frequencies" if self.cyclic else "irreps"

    def key_names(self, keys) -> list[str]:
        """Readable names of irrep indices (``3`` for a frequency of a cyclic group, else the irrep's name)."""
        return [str(k) if self.cyclic else self.basis.names[k] for k in self.basis.check_irreps(keys)]

    @cached_property
    def full_block(self) -> bool:
        """The block is the whole grid (no pair outside the group structure)."""
        return len(self.block) == self.n * self.n

    def label_sums(self, x: Tensor, rows: tuple[int, int] | None = None) -> Tensor:
        """``S[N, s, c] = Σ_{(a,b) in the block, s(a,b) = s} x[N, a, b, c]`` (float64) of ``x [N, a, b, c]``.

        For ``a + b`` these are the anti-diagonal sums of :func:`~grokinterp.analysis.projections.antidiagonal_sums`.
        ``rows = (start, stop)``: ``x`` holds only the rows ``start ≤ a < stop`` (``[N, stop − start, b, c]``);
        the sums over all blocks of rows add up to the sums over the grid.
        """
        N, c = x.shape[0], x.shape[-1]
        a0, a1 = (0, self.n) if rows is None else rows
        X = x.reshape(N, (a1 - a0) * self.n, c)
        idx = self.coords[a0 * self.n: a1 * self.n]
        if not (self.full_block and rows is None):
            keep = torch.nonzero(idx >= 0)[:, 0]
            X, idx = X[:, keep.to(x.device)], idx[keep]
        out = torch.zeros(N, self.m, c, dtype=torch.float64, device=x.device)
        return out.index_add_(1, idx.to(x.device), X.double())

    def element_rows(self, W: Tensor, dim: int) -> Tensor:
        """``W`` along axis ``dim`` (a token axis) reordered to the group's elements (tokens without one dropped)."""
        return W.index_select(dim, self.element_token.to(W.device))

    def element_grid(self, x: Tensor) -> Tensor:
        """``x [..., a, b, k]`` on the block, indexed by elements: ``[..., g, h, k]`` with ``a, b`` the tokens of ``g, h``."""
        e = self.element_token.to(x.device)
        return x.index_select(-3, e).index_select(-2, e)


_STRUCTURES: dict[tuple[str, int], TaskStructure | None] = {}


def task_structure(task) -> TaskStructure | None:
    """The :class:`TaskStructure` of a task (``None`` when it declares no group structure), cached."""
    key = (task.name, int(task.n))
    hit = _STRUCTURES.get(key, False)
    if hit is not False and (hit is None or hit.task is task):
        return hit
    s = task.structure
    ts = TaskStructure(task, s) if isinstance(s, GroupStructure) else None
    _STRUCTURES[key] = ts
    return ts


# -- group Fourier transforms of weights and activations ---------------------------------------------
def _per(coeffs: Tensor, basis: GroupBasis, dim: int, per: str) -> Tensor:
    if per == "component":
        return coeffs
    if per != "irrep":
        raise AnalysisError(f"per: expected 'irrep' or 'component', got {per!r}")
    return basis.fold(coeffs ** 2, dim).sqrt()


def embed_irrep_norms(W_E: Tensor, ts: TaskStructure, per: str = "irrep") -> Tensor:
    """Group Fourier norms of the embedding of the group's elements.

    Args:
        W_E: ``[..., vocab, d_model]`` (any leading axes, e.g. ``ckpt``).
        ts: the task's :class:`TaskStructure` (rows are read in its coordinates: token of element g).
        per: ``"irrep"`` → ``[..., n_irreps]`` or ``"component"`` → ``[..., |G|]`` in the basis order.

    Notes:
        ``norm_i = ‖Σ_g B[i, g] W_E[token(g)]‖₂``; per irrep ``√(Σ_{i ∈ ρ} norm_i²)``. For ``C_p`` with
        the identity token map this is :func:`~grokinterp.analysis.fourier.embed_fourier_norms`.
    """
    comp = ts.basis.to_basis(ts.element_rows(W_E.float(), -2), dim=-2).norm(dim=-1)
    return _per(comp, ts.basis, -1, per)


def _out_axis_norms(W: Tensor, ts: TaskStructure, per: str) -> Tensor:
    comp = ts.basis.to_basis(ts.element_rows(W.float(), -1), dim=-1).norm(dim=-2)
    return _per(comp, ts.basis, -1, per)


def unembed_irrep_norms(W_U: Tensor, ts: TaskStructure, per: str = "irrep") -> Tensor:
    """Group Fourier norms of ``W_U [..., d_model, vocab]`` along the output axis (columns of the elements)."""
    return _out_axis_norms(W_U, ts, per)


def neuron_logit_irrep_norms(W_L: Tensor, ts: TaskStructure, per: str = "irrep") -> Tensor:
    """Group Fourier norms of ``W_L = W_out W_U`` (``[..., d_mlp, vocab]``) along the output axis."""
    return _out_axis_norms(W_L, ts, per)


def neuron_irrep_energy(acts: Tensor, ts: TaskStructure) -> Tensor:
    """Energy of each neuron's map over the block per (irrep in ``g``, irrep in ``h``): ``[..., d_mlp, ρ, σ]``.

    Args:
        acts: ``[..., a, b, d_mlp]`` activations on the grid.

    Notes:
        ``C[i, j, n] = Σ_{g,h} B[i, g] B[j, h] N[token(g), token(h), n]``, squared and summed over the rows
        of each irrep on both axes (:meth:`GroupBasis.fold`).
    """
    X = ts.element_grid(acts.double())  # [..., g, h, d_mlp]
    C = ts.basis.to_basis(ts.basis.to_basis(X, -3), -2)
    return ts.basis.fold(torch.movedim(C.pow(2), -1, -3), (-2, -1))


def neuron_irrep_fve(acts: Tensor, ts: TaskStructure) -> Tensor:
    """Fraction of each neuron's variance (over the block) explained by each single irrep.

    Returns:
        float64 ``[..., d_mlp, n_irreps]``; index 0 (trivial) is 0; a neuron constant on the block has 0.

    Notes:
        With the per-irrep energies ``E[ρ, σ]`` (:func:`neuron_irrep_energy`):
        ``FVE_ρ = (E[ρ, 0] + E[0, ρ] + E[ρ, ρ]) / (Σ E − E[0, 0])``: the *linear* terms (matrix elements of
        ρ in ``g`` alone or ``h`` alone) and the *quadratic* ones (products ``ρ_ij(g) ρ_kl(h)``). For ``C_p``
        this is :func:`~grokinterp.analysis.neurons.neuron_fve` (frequency ``k`` = irrep ``k``).
    """
    E = neuron_irrep_energy(acts, ts)
    n = E.shape[-1]
    k = torch.arange(1, n, device=E.device)
    own = E[..., k, 0] + E[..., 0, k] + E[..., k, k]
    var = E.sum((-2, -1)) - E[..., 0, 0]
    tiny = 1e-12 * E.sum((-2, -1)).clamp_min(1e-300)
    ok = var > tiny
    fve = torch.where(ok[..., None], own / torch.where(ok, var, 1.0)[..., None], 0.0)
    return torch.cat([torch.zeros_like(fve[..., :1]), fve], dim=-1)


@dataclass(frozen=True)
class CharacterFit:
    """How well ``Σ_ρ α_ρ χ_ρ(s(a,b) · t(c)⁻¹)`` describes the logits on the block.

    ``s(a, b)`` is the label coordinate and ``t(c)`` the element of output ``c``; for ``a + b`` mod p the
    real character of frequency ``w`` is ``2 cos(w(a+b−c))`` (so ``α`` is half the coefficient of
    :class:`~grokinterp.analysis.logits.LogitCosFit` and the fractions of variance are equal).

    Attributes:
        alpha: ``[..., n_irreps]`` least-squares coefficient of each real character (index 0: 0).
        fve: ``[..., n_irreps]`` fraction of the centred logit variance explained by each term alone.
        fve_total: ``[...]`` by all of them together.
        keys: the irreps asked for, or ``None``; ``fve_key``: by their terms together.
        names: irrep names.
        fve_coordinate: ``[...]`` fraction of the centred logit variance that depends on ``(a, b)`` only
            through the label coordinate ``s(a, b)`` (any function of ``(s, c)``): the most any fit in ``s``
            can explain; characters of ``s · t(c)⁻¹`` are the part of it that is also translation-invariant.
    """

    alpha: Tensor
    fve: Tensor
    fve_total: Tensor
    keys: tuple[int, ...] | None
    fve_key: Tensor | None
    names: tuple[str, ...]
    fve_coordinate: Tensor | None = None


def logit_character_fit(logits: Tensor, ts: TaskStructure, keys=None) -> CharacterFit:
    """Project the logits on ``χ_ρ(s(a,b) · t(c)⁻¹)`` for every real irrep ρ (Chughtai et al.'s logit attribution).

    Args:
        logits: ``[..., a, b, vocab]`` on the task's grid.
        ts: the task's :class:`TaskStructure`.
        keys: optional irrep indices whose joint fraction is reported as ``fve_key``.

    Returns:
        :class:`CharacterFit` with the leading axes of ``logits``. Only block pairs and the outputs that are
        group elements enter (for ``a·b`` mod p: ``a, b, c ≠ 0``), centred over those outputs.

    Notes:
        With ``S[s, t] = Σ_{s(a,b)=s} L[a, b, token(t)]`` (label sums) and ``H[u] = Σ_{s t⁻¹ = u} S[s, t]``,
        ``⟨L, χ_ρ(s t⁻¹)⟩ = Σ_u H[u] χ_ρ(u)``. Characters of distinct irreps are orthogonal and
        ``‖χ_ρ(s(a,b) t(c)⁻¹)‖² = |G|² Σ_u χ_ρ(u)²`` (each ``s`` occurs ``|G|`` times on the block, each
        ``u`` as ``s t⁻¹`` for ``|G|`` pairs), so ``α_ρ = ⟨L, X_ρ⟩ / ‖X_ρ‖²`` and
        ``FVE_ρ = ⟨L, X_ρ⟩² / (‖X_ρ‖² ‖L − mean_c L‖²)``. Nothing of size ``|G|³`` beyond the logits is built.
    """
    lead = logits.shape[:-3]
    L = logits.reshape(-1, ts.n, ts.n, logits.shape[-1])
    S, total = _character_sums(L, ts)
    fit = _character_fit(S, total, ts, keys)
    return CharacterFit(fit.alpha.reshape(*lead, -1), fit.fve.reshape(*lead, -1), fit.fve_total.reshape(lead),
                        fit.keys, fit.fve_key.reshape(lead) if fit.fve_key is not None else None, fit.names,
                        fit.fve_coordinate.reshape(lead))


def _character_sums(L: Tensor, ts: TaskStructure, rows: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Label sums of the logits centred over the element outputs, and their squared norm, on the block
    (of the rows ``rows`` of the grid when ``L [N, rows, b, c]`` holds a block of rows)."""
    n, m = ts.n, ts.m
    a0, a1 = (0, n) if rows is None else rows
    e = ts.element_token.to(L.device)
    Lb = L.index_select(-1, e).double()
    Lc = Lb - Lb.mean(-1, keepdim=True)
    flat = Lc.reshape(L.shape[0], (a1 - a0) * n, m)
    inside = torch.nonzero(ts.coords[a0 * n: a1 * n] >= 0)[:, 0].to(L.device)
    total = flat[:, inside].pow(2).sum((1, 2))
    return ts.label_sums(Lc, rows=rows), total


def _character_fit(S: Tensor, total: Tensor, ts: TaskStructure, keys) -> CharacterFit:
    key = tuple(ts.basis.check_irreps(keys)) if keys is not None else None
    m = ts.m
    G = ts.group
    dev = S.device
    u = torch.from_numpy(G.mult[np.arange(m)[:, None], G.inverse[None, :]].reshape(-1)).to(dev)
    H = torch.zeros(S.shape[0], m, dtype=torch.float64, device=dev).index_add_(1, u, S.reshape(S.shape[0], -1))
    chars = ts.basis.characters.to(dev)  # [n_irreps, m]
    proj = H @ chars.T  # [N, n_irreps]
    norm2 = (m * m) * chars.pow(2).sum(-1)
    alpha = proj / norm2
    fve = proj.pow(2) / norm2 / total.clamp_min(1e-300)[:, None]
    alpha[:, 0] = 0.0
    fve[:, 0] = 0.0
    fve_key = fve[:, list(key)].sum(-1) if key is not None else None
    coordinate = S.pow(2).sum((1, 2)) / m / total.clamp_min(1e-300)  # ‖S[s, t] / m‖² summed over the m pairs of each s
    return CharacterFit(alpha, fve, fve.sum(-1), key, fve_key, ts.basis.names, coordinate)


def model_character_fit(params: dict[str, Tensor], cfg, ts: TaskStructure, keys=None,
                        rows: int | None = None) -> CharacterFit:
    """:func:`logit_character_fit` of a model (one checkpoint or a stack), streaming the grid in blocks of
    ``rows`` rows (default: all at once) so that a large group's ``|G|³`` logits are never held whole."""
    n = ts.n
    rows = n if rows is None else int(rows)
    single = params["embed.W_E"].ndim == 2
    S = total = None
    with torch.no_grad():
        for a0 in range(0, n, rows):
            a1 = min(a0 + rows, n)
            L = grid_outputs(params, cfg, rows=(a0, a1)).logits
            L = L[None] if single else L
            s, t = _character_sums(L, ts, rows=(a0, a1))
            S, total = (s, t) if S is None else (S + s, total + t)
    fit = _character_fit(S, total, ts, keys)
    if single:
        fit = CharacterFit(fit.alpha[0], fit.fve[0], fit.fve_total[0], fit.keys,
                           fit.fve_key[0] if fit.fve_key is not None else None, fit.names, fit.fve_coordinate[0])
    return fit


def logit_irrep_norms_2d(logits: Tensor, ts: TaskStructure, per: str = "component", center: bool = False) -> Tensor:
    """2-D group Fourier norms of the logit maps over the block, ``(g, h)`` in the group's coordinates.

    Args:
        logits: ``[..., a, b, vocab]``.
        ts: the :class:`TaskStructure`.
        per: ``"component"`` → ``[..., |G|, |G|]`` (basis components in ``g`` × in ``h``) or ``"irrep"`` →
            ``[..., n_irreps, n_irreps]``.
        center: subtract each input's mean over the outputs first.

    Notes:
        ``N[i, j] = √(Σ_c C[i, j, c]²)`` with ``C[i, j, c] = Σ_{g,h} B[i, g] B[j, h] L[token(g), token(h), c]``
        over all outputs ``c``; for ``a + b`` mod p this is
        :func:`~grokinterp.analysis.logits.logit_fourier_norms_2d`.
    """
    L = logits.double()
    if center:
        L = L - L.mean(-1, keepdim=True)
    X = ts.element_grid(L)
    sq = ts.basis.to_basis(ts.basis.to_basis(X, -3), -2).pow(2).sum(-1)
    if per == "irrep":
        sq = ts.basis.fold(sq, (-2, -1))
    elif per != "component":
        raise AnalysisError(f"per: expected 'component' or 'irrep', got {per!r}")
    return sq.sqrt()
