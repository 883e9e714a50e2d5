"""The Measure protocol, its registry, and the per-chunk context every measure shares.

A progress measure is one class: a ``name``, the ``columns`` it adds to the progress table (each
with a one-line ``definitions`` entry saying what it measures and on which pairs), and
``compute(ctx)`` returning ``{column: float tensor [n]}`` for a chunk of ``n`` checkpoints.
Registering it (:func:`register_measure`) adds its columns to :func:`~grokinterp.analysis.measures.progress_measures`
— nothing else changes.

:class:`ChunkContext` computes the expensive shared pieces once per chunk, on demand: the grid
logits of every input, the per-pair cross-entropy, the key-frequency filters, ``W_L``. A measure
asks for what it needs; measures that need the same piece share it.

Example:
    >>> class LogitNorm(Measure):                                           # doctest: +SKIP
    ...     name, columns = "logit_norm", ("logit_norm",)
    ...     definitions = {"logit_norm": "RMS of the logits over all p² inputs"}
    ...     def compute(self, ctx):
    ...         return {"logit_norm": ctx.logits.pow(2).mean((1, 2, 3)).sqrt()}
    >>> register_measure(LogitNorm())                                       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from ...config import ModelConfig
from ...errors import AnalysisError
from ...model.grid import grid_outputs, neuron_logit_map
from ..groups import TaskStructure
from ..keyfreqs import ResolvedKeys
from ..losses import excluded_nll, nll_and_correct
from ..projections import group_filters, sum_index

__all__ = ["Measure", "ChunkContext", "RunArrays", "MEASURES", "register_measure", "get_measures"]


@dataclass(frozen=True)
class RunArrays:
    """A run's task arrays on the analysis device, shared by every chunk.

    Attributes:
        p: the task's alphabet size (the modulus, or a group's order).
        labels: int64 ``[p²]`` label of each grid index (``-1`` outside the task).
        train, test: grid indices of the split (``test`` may be empty).
        valid: grid indices of all task pairs, sorted.
        train_pos, test_pos: positions of the train / test pairs among ``valid``.
        structure: the task's :class:`~grokinterp.analysis.groups.TaskStructure` (``None``: no group
            structure; the restricted / excluded measures are then undefined).
        s_valid, y_valid: ``(a + b) mod p`` and the label of each valid pair.
        s_block, y_block: label coordinate ``s(a, b)`` and label of each valid pair **in the block**
            (for ``a + b`` mod p: every pair, ``s = a + b mod p``); empty without a structure.
        train_block: the training pairs in the block.
    """

    p: int
    labels: Tensor
    train: Tensor
    test: Tensor
    valid: Tensor
    train_pos: Tensor
    test_pos: Tensor
    s_valid: Tensor
    y_valid: Tensor
    structure: TaskStructure | None = None
    s_block: Tensor | None = None
    y_block: Tensor | None = None
    train_block: Tensor | None = None

    @classmethod
    def build(cls, labels: Tensor, train: Tensor, test: Tensor, valid: Tensor, p: int, device: torch.device,
              structure: TaskStructure | None = None) -> "RunArrays":
        pos = torch.full((p * p,), -1, dtype=torch.int64)
        pos[valid] = torch.arange(len(valid))
        if structure is None:
            none = torch.zeros(0, dtype=torch.int64)
            s_block, y_block, train_block = none, none, none
        else:
            blk = valid[structure.coords[valid] >= 0]
            s_block, y_block = structure.coords[blk], labels[blk]
            train_block = train[structure.coords[train] >= 0]
        return cls(p, labels, train, test, valid, pos[train].to(device), pos[test].to(device),
                   sum_index(p)[valid], labels[valid], structure, s_block, y_block, train_block)


@dataclass
class ChunkContext:
    """What the measures of one chunk of checkpoints share (computed lazily, once).

    Attributes:
        epochs: int64 ``[n]`` epochs of the chunk.
        params: stacked parameters ``{name: [n, ...]}`` on ``device``, with the residue outputs only
            (a model with an output logit for ``=`` has its ``W_U`` column dropped:
            :func:`~grokinterp.analysis.inputs.residue_outputs`).
        cfg: the model config (of those parameters: ``eq_logit`` false).
        keys: the key frequencies held fixed for the run.
        arrays: the run's :class:`RunArrays`.
        device: where the chunk is computed.
        rows: rows ``a`` of the grid per forward (``None``: the whole grid at once). Set for grids too
            large to hold (``S6``: 720³ logits per checkpoint): the shared pieces below are then streamed
            over blocks of rows and the logits of the whole grid are never held; :attr:`logits` itself
            still builds them (whole), for measures that need them.
        model_params: every parameter of the model as trained (``=`` column included), when it
            differs from ``params``; :attr:`all_params` falls back to ``params``.
        prev_params: every parameter of the checkpoint measured just before this chunk (``{name: [1, ...]}``,
            as :attr:`all_params`); ``None`` for the first chunk (measures of the change between checkpoints).
        train_loss: the run's training loss (``TrainConfig.loss``: ``cross_entropy``, ``stablemax``, ``mse``);
            ``None`` where the caller does not know it (measures that need it then assume cross-entropy).
    """

    epochs: np.ndarray
    params: dict[str, Tensor]
    cfg: ModelConfig
    keys: ResolvedKeys
    arrays: RunArrays
    device: torch.device
    rows: int | None = None
    model_params: dict[str, Tensor] | None = None
    prev_params: dict[str, Tensor] | None = None
    train_loss: str | None = None

    @property
    def all_params(self) -> dict[str, Tensor]:
        """Every parameter of the model as trained (for measures of the weights themselves)."""
        return self.model_params if self.model_params is not None else self.params

    @property
    def n(self) -> int:
        return len(self.epochs)

    @property
    def streamed(self) -> bool:
        """The grid is processed in blocks of rows."""
        return self.rows is not None and self.rows < self.arrays.p

    @cached_property
    def logits(self) -> Tensor:
        """Final-position logits of every input: float32 ``[n, a, b, vocab]``."""
        with torch.no_grad():
            return grid_outputs(self.params, self.cfg).logits

    def logit_blocks(self):
        """``(start, stop, logits [n, stop − start, b, vocab])`` over blocks of rows (one block, the cached
        :attr:`logits`, unless :attr:`streamed`)."""
        p = self.arrays.p
        if not self.streamed:
            yield 0, p, self.logits
            return
        for a0 in range(0, p, self.rows):
            a1 = min(a0 + self.rows, p)
            with torch.no_grad():
                yield a0, a1, grid_outputs(self.params, self.cfg, rows=(a0, a1)).logits

    @cached_property
    def _stream(self) -> tuple[tuple[Tensor, Tensor], Tensor | None]:
        a, p = self.arrays, self.arrays.p
        ts = a.structure
        nll, correct, sums = [], [], None
        valid = a.valid
        with torch.no_grad():
            for a0, a1, L in self.logit_blocks():
                lo, hi = torch.searchsorted(valid, torch.tensor([a0 * p, a1 * p])).tolist()
                idx = valid[lo:hi] - a0 * p
                Lv = L.reshape(self.n, (a1 - a0) * p, -1)
                if len(idx) != Lv.shape[1]:
                    Lv = Lv[:, idx.to(L.device)]
                x, c = nll_and_correct(Lv, a.y_valid[lo:hi])
                nll.append(x)
                correct.append(c)
                if ts is not None:
                    S = ts.label_sums(L, rows=(a0, a1))
                    sums = S if sums is None else sums.add_(S)
        return (torch.cat(nll, 1), torch.cat(correct, 1)), sums

    @cached_property
    def nll_correct(self) -> tuple[Tensor, Tensor]:
        """Per valid pair: cross-entropy (float64) and correctness, ``[n, valid]`` each."""
        return self._stream[0]

    @cached_property
    def label_sums(self) -> Tensor | None:
        """``S [n, s, c]``: sums of the logits over the block pairs with label coordinate ``s``
        (for ``a + b``: the anti-diagonal sums); ``None`` without a group structure."""
        return self._stream[1]

    @cached_property
    def filters(self) -> tuple[Tensor, Tensor] | None:
        """``(R, K)`` ``[n, s, c]``: the restricted logits and the key components as functions of the label
        coordinate ``s`` (:func:`~grokinterp.analysis.projections.group_filters`; for ``a + b`` mod p the
        frequencies' ``cos/sin(w(a+b))``); ``None`` without a group structure."""
        if self.label_sums is None:
            return None
        with torch.no_grad():
            return group_filters(self.label_sums, self.arrays.structure, self.keys.freqs)

    @cached_property
    def excluded_nll(self) -> Tensor | None:
        """``[n]`` mean cross-entropy on the training pairs of the block of the logits minus their key
        components (:func:`~grokinterp.analysis.losses.excluded_nll`); ``None`` without a group structure.
        Streamed, it takes a second pass over the rows (the projection needs every row first)."""
        if self.filters is None:
            return None
        _, K = self.filters
        a, p = self.arrays, self.arrays.p
        trn = a.train_block
        total = torch.zeros(self.n, dtype=torch.float64, device=K.device)
        with torch.no_grad():
            for a0, a1, L in self.logit_blocks():
                lo, hi = torch.searchsorted(trn, torch.tensor([a0 * p, a1 * p])).tolist()
                if hi > lo:
                    part = trn[lo:hi]
                    total += excluded_nll(L, K, part - a0 * p, a.labels[part],
                                          a.structure.coords[a0 * p: a1 * p], n_cols=p) * (hi - lo)
        return total / max(len(trn), 1)

    @cached_property
    def W_L(self) -> Tensor | None:
        """The neurons' map to the logits ``[n, neurons, vocab]`` (float32): ``W_out W_U`` of a transformer's
        last block, ``W_U`` of an MLP (:func:`~grokinterp.model.grid.neuron_logit_map`); ``None`` where the
        family has none."""
        return neuron_logit_map(self.params, self.cfg)[0]

    @property
    def W_E(self) -> Tensor | None:
        """The token embedding ``[n, vocab, d]``; ``None`` for a family without one (an MLP on one-hot inputs)."""
        return self.params.get("embed.W_E")


class Measure:
    """A progress measure (see the module docstring). Subclass and set the class attributes."""

    #: registry name
    name: str = ""
    #: columns added to the progress table, in order
    columns: tuple[str, ...] = ()
    #: one line per column: what it measures, on which pairs
    definitions: dict[str, str] = {}
    #: computed by default (``False``: an opt-in measure, computed only when asked for by name)
    default: bool = True

    def compute(self, ctx: ChunkContext) -> dict[str, Tensor | None]:
        """``{column: [n] tensor}`` for the chunk (``None``: undefined here, recorded as NaN)."""
        raise NotImplementedError


#: Registered measures, in column order.
MEASURES: dict[str, Measure] = {}


def register_measure(measure: Measure, *, replace: bool = False) -> Measure:
    """Add a measure (an instance) to the default set of :func:`progress_measures`."""
    if not isinstance(measure, Measure) or not measure.name or not measure.columns:
        raise AnalysisError(f"register_measure: expected a Measure with a name and columns, got {measure!r}")
    taken = {c: m.name for m in MEASURES.values() if m.name != measure.name for c in m.columns}
    clash = [c for c in measure.columns if c in taken or c == "epoch"]
    if clash:
        raise AnalysisError(f"measure {measure.name!r}: column(s) {clash} already belong to another measure")
    if measure.name in MEASURES and not replace:
        raise AnalysisError(f"measure {measure.name!r} is already registered (pass replace=True)")
    MEASURES[measure.name] = measure
    return measure


def get_measures(measures=None) -> list[Measure]:
    """Measures by name or instance (default: every registered one whose ``default`` is true)."""
    if measures is None:
        return [m for m in MEASURES.values() if m.default]
    out = []
    for m in ([measures] if isinstance(measures, (str, Measure)) else list(measures)):
        if isinstance(m, Measure):
            out.append(m)
        elif m in MEASURES:
            out.append(MEASURES[m])
        else:
            raise AnalysisError(f"measures: unknown measure {m!r}; registered: {', '.join(MEASURES)}")
    if not out:
        raise AnalysisError("measures: the selection is empty")
    return out
