"""The Task protocol: what the trainer, the store and the analyses need to know about a task.

A task is a binary operation on a finite alphabet of ``n`` symbols, presented to the model as
``[a, b, =]`` and labelled by ``a ∘ b``. Everything downstream talks to a :class:`Task` — never to
"a + b mod p" directly:

=====================  ==============================================================================
member                 meaning
=====================  ==============================================================================
``name``               registry name (``add``, ``mul``, ...), what configs and the CLI use
``n``                  operand alphabet size (``p`` for arithmetic mod p)
``d_vocab``            input vocabulary: the ``n`` operands and ``=`` (token ``n``)
``d_vocab_out``        output logits: ``n``, or ``n + 1`` when ``=`` has an output logit
``n_ctx``              context length (3: ``[a, b, =]``)
``eq_token``           the token id of ``=``
``valid_pairs()``      sorted grid indices ``a * n + b`` of the pairs that belong to the task
``label_grid()``       int64 ``[n²]``: the label of every grid index, ``-1`` outside the task
``dataset()``          :class:`Dataset` of every valid pair (indices, tokens, labels)
``split(...)``         a named, seeded train/test split of the valid pairs (:data:`SPLIT_METHODS`)
``structure``          the algebraic structure analyses may rely on (``None``: none declared)
=====================  ==============================================================================

Only numpy is imported here: configs (and the CLI's ``--help``) validate against tasks without
loading torch.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import ConfigError

__all__ = [
    "Task",
    "Structure",
    "Dataset",
    "InputLayout",
    "INPUT_LAYOUTS",
    "SPLIT_METHODS",
    "register_split_method",
    "split_indices",
    "paper_split_indices",
]


@dataclass(frozen=True)
class Structure:
    """Algebraic structure a task declares for its analyses (base class of the kinds).

    Analyses check ``isinstance(task.structure, <kind>)`` and report what is undefined where the
    structure they need is absent (``task.structure is None``: no group structure). The kinds
    (cyclic sum and difference, discrete logarithms, finite groups) are in
    :mod:`~grokinterp.tasks.algebra`.
    """

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class InputLayout:
    """How a model reads an example: which columns of the task's ``[a, b, =]`` rows it gets.

    Attributes:
        name: the layout's name (``ModelConfig.input_layout``).
        drop_eq: the ``=`` token (the last column) is left out: Zhong et al. 2023's ``[a, b]``.
        help: one line for ``--help``.
        op_token: a constant operation token (``n + 1``, one more input token) is read between the
            operands: ``[a, op, b, =]``, as Power et al.'s and Lee et al.'s (Grokfast) decoders.
    """

    name: str
    drop_eq: bool
    help: str
    op_token: bool = False

    @property
    def extra_vocab(self) -> int:
        """Input tokens the layout adds to the task's (``op``: 1)."""
        return int(self.op_token)

    @property
    def fixed_n_ctx(self) -> int | None:
        """The context length the layout fixes whatever the task (``None``: the task's). A layout that
        changes the rows reads the ``[a, b, =]`` rows of a two-operand task."""
        return 3 - int(self.drop_eq) + int(self.op_token) if self.drop_eq or self.op_token else None

    def n_ctx(self, task: "Task") -> int:
        """The model's context length for ``task`` in this layout."""
        return task.n_ctx - int(self.drop_eq) + int(self.op_token)

    def tokens(self, tokens):
        """The task's token rows ``[..., 3]`` (numpy or torch) as the model reads them (a copy where
        the layout changes them; the ``op`` token is ``=`` + 1, i.e. ``n + 1``)."""
        if self.op_token:
            out = tokens[..., [0, 2, 1, 2]]  # [a, =, b, =] (a copy, numpy or torch) ...
            out[..., 1] += 1  # ... [a, op, b, =]
            return out[..., :-1] if self.drop_eq else out
        return tokens[..., :-1] if self.drop_eq else tokens


#: Input layouts by name (``ModelConfig.input_layout``).
INPUT_LAYOUTS: dict[str, InputLayout] = {
    "a_b_eq": InputLayout("a_b_eq", False, "[a, b, =]: causal attention, read out at '=' (Nanda et al.)"),
    "a_b": InputLayout("a_b", True, "[a, b]: no '=' token, attention over both positions, read out at b "
                                    "(Zhong et al. 2023)"),
    "a_op_b_eq": InputLayout("a_op_b_eq", False, "[a, op, b, =]: a constant operation token (n + 1) between the "
                                                 "operands, causal, read out at '=' (Power et al.; Lee et al.'s "
                                                 "Grokfast)", op_token=True),
}


@dataclass(frozen=True)
class Dataset:
    """Every valid pair of a task, in grid order.

    Attributes:
        n: the operand alphabet size (``p``).
        operation: the task's registry name.
        pair_index: int64 ``[m]``, ``a * n + b`` of each example (row-major over the grid).
        tokens: int64 ``[m, 3]`` rows ``[a, b, =]``.
        labels: int64 ``[m]``.
    """

    n: int
    operation: str
    pair_index: np.ndarray
    tokens: np.ndarray
    labels: np.ndarray

    @property
    def p(self) -> int:  # the name every modular-arithmetic user expects
        return self.n

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, pairs: np.ndarray, layout: str = "a_b_eq") -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, labels)`` of the given grid indices (each must be a valid pair); the tokens as
        a model of input ``layout`` (:data:`INPUT_LAYOUTS`) reads them (``[a, b, =]`` by default)."""
        pos = np.full(self.n * self.n, -1, dtype=np.int64)
        pos[self.pair_index] = np.arange(len(self.pair_index))
        idx = pos[np.asarray(pairs, dtype=np.int64)]
        if (idx < 0).any():
            raise ConfigError(f"pairs: grid indices {np.asarray(pairs)[idx < 0][:5].tolist()} are not pairs of "
                              f"the task {self.operation!r}")
        if layout not in INPUT_LAYOUTS:
            raise ConfigError(f"model.input_layout: must be one of {', '.join(INPUT_LAYOUTS)}, got {layout!r}")
        return np.ascontiguousarray(INPUT_LAYOUTS[layout].tokens(self.tokens[idx])), self.labels[idx]


# -- named split methods ----------------------------------------------------------------------------
SplitFn = Callable[[int, float, int], tuple[np.ndarray, np.ndarray]]


def split_indices(n: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``random`` split: sorted train and test positions in ``range(n)``.

    ``round(frac_train * n)`` examples go to training (at least 1, at most ``n - 1``). The
    permutation comes from ``numpy.random.default_rng(seed)`` (PCG64), which is stable across
    platforms and numpy versions, so the same seed gives the same split everywhere.
    """
    n_train = min(max(int(round(frac_train * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:])


def paper_split_indices(n: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``paper`` split: the reference code's ``gen_train_test``, as sorted positions in ``range(n)``.

    Notes:
        Nanda et al.'s code builds the row-major list of pairs ``[(a, b, =) for a in range(p) for b in
        range(p)]``, calls ``random.seed(seed); random.shuffle(pairs)`` (Python's Mersenne Twister)
        and trains on the first ``int(frac_train · len(pairs))``. Shuffling positions ``0..n-1``
        with ``random.Random(seed)`` permutes them identically, so the same seed selects the same
        pairs. Note the floor (``int``), where the ``random`` method rounds. For a task whose
        valid pairs are not the whole grid, the list is the valid pairs in row-major order.
    """
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    div = int(frac_train * n)
    if not 0 < div < n:
        raise ConfigError(f"task.frac_train: the paper split of {n} pairs at frac_train {frac_train} leaves an empty "
                          f"train or test set")
    return np.sort(np.array(idx[:div], dtype=np.int64)), np.sort(np.array(idx[div:], dtype=np.int64))


#: Split methods by name: ``fn(n_valid, frac_train, seed) -> (train_positions, test_positions)``,
#: positions into the task's sorted valid pairs. ``random``: a PCG64 permutation, ``round(frac · n)``
#: train; ``paper``: the reference code's ``random.shuffle``, ``int(frac · n)`` train.
SPLIT_METHODS: dict[str, SplitFn] = {"random": split_indices, "paper": paper_split_indices}


def register_split_method(name: str, fn: SplitFn) -> None:
    """Make a split method available to ``TaskConfig.split_method`` (and the CLI)."""
    if not name.isidentifier():
        raise ConfigError(f"split method name must be an identifier, got {name!r}")
    SPLIT_METHODS[name] = fn


def get_split_method(name: str) -> SplitFn:
    try:
        return SPLIT_METHODS[name]
    except KeyError:
        raise ConfigError(f"task.split_method: unknown split method {name!r}; known: "
                          f"{', '.join(sorted(SPLIT_METHODS))}") from None


# -- the protocol -----------------------------------------------------------------------------------
class Task(ABC):
    """A binary operation on ``n`` symbols presented as ``[a, b, =]`` (see the module docstring)."""

    name: str
    n: int
    n_ctx: int = 3
    #: whether ``=`` has an output logit (the paper's own code has one; ours does not by default)
    eq_logit: bool = False
    structure: Structure | None = None

    @property
    def d_vocab(self) -> int:
        return self.n + 1

    @property
    def d_vocab_out(self) -> int:
        return self.n + int(self.eq_logit)

    @property
    def eq_token(self) -> int:
        return self.n

    @abstractmethod
    def labels_of(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Labels (int64, in ``[0, n)``) of operand arrays ``a``, ``b`` (valid pairs only)."""

    def is_valid(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which pairs belong to the task (all by default)."""
        return np.ones(np.broadcast(a, b).shape, dtype=bool)

    @cached_property
    def _dataset(self) -> Dataset:
        n = self.n
        a, b = np.divmod(np.arange(n * n, dtype=np.int64), n)
        keep = np.asarray(self.is_valid(a, b), dtype=bool)
        a, b = a[keep], b[keep]
        labels = np.asarray(self.labels_of(a, b), dtype=np.int64)
        tokens = np.stack([a, b, np.full_like(a, self.eq_token)], axis=1)
        return Dataset(n, self.name, a * n + b, tokens, labels)

    def dataset(self) -> Dataset:
        """Every valid pair, in row-major grid order (computed once per task object)."""
        return self._dataset

    def valid_pairs(self) -> np.ndarray:
        """Sorted int64 grid indices ``a * n + b`` of the task's pairs."""
        return self._dataset.pair_index

    def label_grid(self) -> np.ndarray:
        """int64 ``[n²]``: the label of each grid index, ``-1`` where ``(a, b)`` is not a task pair."""
        ds = self._dataset
        out = np.full(self.n * self.n, -1, dtype=np.int64)
        out[ds.pair_index] = ds.labels
        return out

    def split(self, frac_train: float, seed: int, method: str = "random") -> tuple[np.ndarray, np.ndarray]:
        """A named, seeded split as grid indices ``(train_pairs, test_pairs)``, each sorted int64."""
        ds = self._dataset
        trn, tst = get_split_method(method)(len(ds), frac_train, seed)
        return np.sort(ds.pair_index[trn]), np.sort(ds.pair_index[tst])

    def color_labels(self, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The label an embedding picture colours a symbol or class by: ``(ids [m], names)`` for the
        symbols ``values`` (residues, group elements, classes). Default: the symbol itself (``a + b``:
        the residue); a group: its conjugacy class (:class:`~grokinterp.tasks.groups.GroupTask`)."""
        v = np.asarray(values, dtype=np.int64)
        return v, [str(int(x)) for x in range(int(v.max()) + 1 if len(v) else 0)]

    def describe(self) -> str:
        return f"{self.name} on {self.n} symbols"
