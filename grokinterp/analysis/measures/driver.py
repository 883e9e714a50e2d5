"""Progress measures across a run: restricted / excluded loss, Fourier sparsity, weight norm.

Nanda et al. (2023, §5 and App. C) track the formation of the generalizing circuit with measures
computed at every checkpoint. :func:`progress_measures` computes all of them for a whole run,
one row per checkpoint, vectorised over chunks of stacked checkpoints. Each measure is a
registered class (:mod:`~grokinterp.analysis.measures.standard`; add one with
:func:`~grokinterp.analysis.measures.register_measure`); the plain per-checkpoint oracle that
checks this driver lives with the tests (``tests/oracles.py``).

Which inputs each measure uses (our choice, stated because the study's codebases differ):

=====================  ==========================================================================
column                 definition
=====================  ==========================================================================
``train_loss/_acc``    cross-entropy / accuracy of the original logits on the stored **training**
                       pairs (``run.split_pairs()[0]``).
``test_loss/_acc``     the same on the stored **test** pairs.
``all_loss``           the same over **all** valid pairs of the task (train ∪ test).
``restricted_loss``    the logits of **all** ``p²`` inputs projected, per output ``c``, onto
                       ``span{1, cos(w(a+b)), sin(w(a+b)) : w ∈ key}`` (the per-output mean plus
                       the key-frequency components); cross-entropy over **all** valid pairs.
``restricted_acc``     accuracy of those restricted logits over **all** valid pairs: how well the
                       key-frequency circuit alone would classify.
``excluded_loss``      the logits with the key-frequency ``cos(w(a+b))``, ``sin(w(a+b))``
                       components removed (projection taken over the full grid, as above);
                       cross-entropy on the **training** pairs.
``gini_W_E``           Gini coefficient (Hurley & Rickard) of the per-frequency Fourier norms of
                       ``W_E[:p]``, frequencies ``1..⌊p/2⌋`` (the constant left out).
``gini_W_L``           the same for ``W_L = W_out W_U`` along the output (vocab) axis.
``sum_sq_weights``     ``Σ θ²`` over every parameter (weights and biases; an ``=`` output column too).
=====================  ==========================================================================

Other tasks (the task's :attr:`~grokinterp.tasks.base.Task.structure`): with a group structure the
key terms are the matrix elements ``ρ_ij(s(a, b))`` of the key irreps, ``s`` the label coordinate
(``a − b``; ``log a ± log b`` for ``a·b``, ``a/b`` mod a prime, on the nonzero block; ``g·h`` in a
group), the restricted / excluded losses are taken over the pairs of the block, and the Gini
columns use per-irrep norms in the group's coordinates (:mod:`~grokinterp.analysis.groups`). A task
without a group structure has ``restricted_loss``, ``restricted_acc`` and ``excluded_loss`` NaN
(undefined, never a wrong number) and the Fourier Gini columns over the tokens.

Losses are computed from the float32 grid logits of that checkpoint (exact per checkpoint, not
the metrics logged during training) with a log-softmax accurate to float64 level even for
losses of 1e-7 and below (:func:`~grokinterp.analysis.losses.nll_and_correct`). The key
frequencies are chosen once (by default by :func:`~grokinterp.analysis.keyfreqs.key_frequencies`
on the final checkpoint) and held fixed across checkpoints; they are reported in ``df.attrs``.

Example:
    >>> df = progress_measures(run)                                  # doctest: +SKIP
    >>> df.attrs["key_freqs"], df.columns.tolist()[:5]               # doctest: +SKIP
    ([14, 35, 41, 42, 52], ['epoch', 'train_loss', 'test_loss', 'train_acc', 'test_acc'])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ...errors import AnalysisError
from ...model.denormals import with_flushed_denormals
from ...model.grid import GRID_BUDGET, fold_unsupported, grid_bytes, grid_rows
from ...tasks import DiscreteLog
from ..groups import task_structure
from ..inputs import residue_outputs, run_task_arrays
from ..keyfreqs import KeyFrequencies, ResolvedKeys, resolve_key_frequencies
from ..probes import measures as probe_measures  # noqa: F401  (registers the opt-in probes, issue 20)
from . import standard  # noqa: F401  (registers the built-in measures)
from .base import ChunkContext, Measure, RunArrays, get_measures

__all__ = ["MEASURE_COLUMNS", "progress_measures", "select_epochs", "measures_frame", "auto_chunk", "auto_rows"]

#: Columns of :func:`progress_measures` with the built-in measures, in order.
MEASURE_COLUMNS = (
    "epoch", "train_loss", "test_loss", "train_acc", "test_acc", "all_loss",
    "restricted_loss", "restricted_acc", "excluded_loss", "gini_W_E", "gini_W_L", "sum_sq_weights",
)

_SPLITS = {
    "train_loss": "train pairs", "test_loss": "test pairs", "all_loss": "all valid pairs",
    "restricted_loss": "all valid pairs (projection over the full p×p grid)",
    "restricted_acc": "all valid pairs (projection over the full p×p grid)",
    "excluded_loss": "train pairs (projection over the full p×p grid)",
}


def splits(structure, n: int) -> dict[str, str]:
    """Which pairs each column averages over, for a task with this structure (``None``: none) on ``n`` symbols.

    The restricted / excluded columns live on the structure's *block*: the whole ``n × n`` grid for
    ``a ± b`` and groups, the pairs with ``a, b ≠ 0`` for ``a·b`` / ``a/b`` mod a prime (the row and
    column of 0 are outside the group of nonzero residues; :func:`~grokinterp.analysis.summary.analyze_run`
    reports them apart); without a structure they are undefined (NaN)."""
    out = dict(_SPLITS)
    if structure is None:
        why = "undefined (NaN): the task declares no group structure"
        return out | {c: why for c in ("restricted_loss", "restricted_acc", "excluded_loss")}
    grid = f"{n}×{n}"
    if structure.full_block:
        return out | {"restricted_loss": f"all valid pairs (projection over the full {grid} grid)",
                      "restricted_acc": f"all valid pairs (projection over the full {grid} grid)",
                      "excluded_loss": f"train pairs (projection over the full {grid} grid)"}
    outside = "a = 0 or b = 0" if isinstance(structure.structure, DiscreteLog) else "the pairs outside the block"
    block = (f"the {len(structure.block)} pairs of the group structure's block, not all valid pairs ({outside} lie "
             f"outside it and are reported apart); projection over the block")
    return out | {"restricted_loss": block, "restricted_acc": block,
                  "excluded_loss": f"train pairs of the block ({outside} left out); projection over the block"}


#: Working memory aimed at per chunk of checkpoints when ``chunk`` is not given (bytes).
_CHUNK_BUDGET = GRID_BUDGET


def select_epochs(run, epochs) -> np.ndarray:
    eps = run.epochs if epochs is None else np.array([run.resolve_epoch(e) for e in epochs], dtype=np.int64)
    if len(eps) == 0:
        raise AnalysisError(f"{run.path}: no checkpoints to measure (epochs = {list(eps)})")
    return eps


def _budget(device) -> int:
    dev = torch.device(device)
    if dev.type == "cuda":
        return max(_CHUNK_BUDGET, torch.cuda.mem_get_info(dev)[0] // 4)
    return _CHUNK_BUDGET


def auto_chunk(cfg, device: str | torch.device = "cpu") -> int:
    """Checkpoints per chunk: as many as fit the memory budget (on CPU a fixed budget, where larger
    chunks gain nothing; on CUDA a quarter of the free GPU memory, where they amortise launches:
    32 instead of 4 made the 400-checkpoint benchmark 2.4× faster on an H100), at most 64."""
    return int(min(max(_budget(device) // grid_bytes(cfg), 1), 64))


def auto_rows(cfg, device: str | torch.device = "cpu") -> int | None:
    """Rows of the grid per forward when one checkpoint's grid does not fit the budget (``None``: it fits;
    :func:`~grokinterp.model.grid.grid_rows`)."""
    return grid_rows(cfg, _budget(device))


def measures_frame(rows: dict[str, list], keys: ResolvedKeys, epochs: np.ndarray, impl: str, p: int,
                   definitions: dict[str, str], structure=None) -> pd.DataFrame:
    """The progress table from per-chunk column arrays, with its ``attrs`` (shared with the test oracle)."""
    df = pd.DataFrame({"epoch": epochs.astype(np.int64), **{c: np.concatenate(v) for c, v in rows.items()}})
    df.attrs.update({
        "key_freqs": list(keys.freqs),
        "key_irreps": list(keys.names),
        "key_freq_method": keys.method,
        "key_freq_rule": keys.rule,
        "key_freq_epoch": keys.epoch,
        "structure": structure.describe() if structure is not None else None,
        "splits": splits(structure, p),
        "definitions": dict(definitions),
        "gini": "Hurley & Rickard Gini of the per-frequency Fourier norms, frequencies 1..p//2",
        "implementation": impl,
        "p": int(p),
    })
    return df


@with_flushed_denormals
def progress_measures(
    run,
    key_freqs: Sequence[int] | KeyFrequencies | None = None,
    *,
    chunk: int | None = None,
    device: str | torch.device = "cpu",
    epochs: Sequence[int] | None = None,
    key_freq_method: str | None = None,
    measures: Sequence[str | Measure] | None = None,
    rows: int | None = None,
) -> pd.DataFrame:
    """Every progress measure at every checkpoint of a run, one row per checkpoint.

    Args:
        run: a :class:`~grokinterp.store.run.Run` (one-layer model).
        key_freqs: the frequencies held fixed across checkpoints: a sequence of ints, a
            :class:`~grokinterp.analysis.keyfreqs.KeyFrequencies`, or ``None`` for
            ``key_frequencies(checkpoint, method=key_freq_method)`` at the checkpoint
            :func:`~grokinterp.analysis.keyfreqs.key_checkpoint` picks (the first at or after test accuracy
            reached 99 %, else the last).
        chunk: checkpoints per vectorised forward (default: sized to keep the working memory
            near 768 MiB, e.g. 4 for the paper's p = 113 model). A grid too large for one checkpoint
            (a large group: S6 has 720³ logits) is computed in blocks of rows (:func:`auto_rows`).
        device: where to compute (``"cpu"``, ``"cuda"``); results come back to the CPU.
        epochs: checkpoint epochs to measure (default: all of ``run.epochs``).
        key_freq_method: rule for the default key frequencies (``W_L``, ``W_E`` or ``neurons``; key irreps
            also ``logits``, ``circuit``); default ``W_L``, or ``circuit`` for a non-cyclic group
            (:func:`~grokinterp.analysis.keyfreqs.default_key_method`).
        measures: which registered measures (names or :class:`Measure` objects) to compute
            (default: all of :data:`~grokinterp.analysis.measures.MEASURES`, in registration order).
        rows: rows of the grid per forward (default: :func:`auto_rows`, all of them when one checkpoint's
            grid fits the memory budget); the results do not depend on it.

    Returns:
        DataFrame with ``epoch`` (int64) and the columns of the measures (float64; by default
        :data:`MEASURE_COLUMNS` followed by those of measures registered later),
        one row per checkpoint in epoch order. ``df.attrs`` holds ``key_freqs`` (list of ints: the
        key frequencies, or key irrep indices), ``key_irreps`` (their names for a structure other than
        ``a + b``), ``structure`` (the task's structure in words, ``None`` without one), ``key_freq_method``, ``key_freq_rule``, ``key_freq_epoch`` (the checkpoint they were taken
        from, ``None`` if given), ``splits`` (which pairs each loss averages over), ``gini`` (what
        the Gini columns measure), ``definitions`` (one line per column) and ``implementation``.

    Notes:
        For a chunk of stacked checkpoints, :func:`~grokinterp.model.grid.grid_forward` gives the logits
        ``L [ckpt, a, b, c]`` of every input; the anti-diagonal sums ``G[s, c]`` and one FFT over
        ``s`` give the key-frequency projection (:func:`sum_frequency_projection`), which depends
        on ``(a, b)`` only through ``s = a + b mod p``. The module docstring lists each column's
        definition and split.
    """
    cfg = run.config.model
    if getattr(cfg, "d_input", 0):  # a dataset task: no p × p grid of inputs to measure over
        raise AnalysisError(
            f"{getattr(run, 'path', 'run')}: the progress measures and probes are undefined for the dataset task "
            f"{run.config.task.operation!r} (input vectors, no a ∘ b grid of an algebraic task); use "
            f"grokinterp.analysis.vectors (checkpoint_metrics, weight_norms, neuron_statistics), "
            f"grokinterp.analysis.probes.vectors.vector_probes (`grokinterp probes`), `grokinterp report` "
            f"or `grokinterp llc`")
    model_cfg, cfg = cfg, residue_outputs({}, cfg)[1]  # analyses see the residue logits only
    if rows is None:
        rows = auto_rows(cfg, device)
    elif not isinstance(rows, (int, np.integer)) or isinstance(rows, bool) or rows < 1:
        raise AnalysisError(f"rows: must be a positive integer, got {rows!r}")
    if chunk is None:
        chunk = auto_chunk(cfg, device)
    if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
        raise AnalysisError(f"chunk: must be a positive integer, got {chunk!r}")
    chosen = get_measures(measures)
    eps = select_epochs(run, epochs)
    keys = resolve_key_frequencies(run, key_freqs, key_freq_method)
    p = cfg.p
    dev = torch.device(device)
    structure = task_structure(run.task)
    arrays = RunArrays.build(*run_task_arrays(run), p, dev, structure)
    columns = [c for m in chosen for c in m.columns]
    if len(set(columns)) != len(columns):
        raise AnalysisError(f"measures: two measures produce the same column ({columns})")
    table: dict[str, list] = {c: [] for c in columns}
    prev = None
    for part, full in run.iter_chunks(int(chunk), epochs=eps):
        full = {k: v.to(dev) for k, v in full.items()}
        params = residue_outputs(full, model_cfg)[0]
        ctx = ChunkContext(part, params, cfg, keys, arrays, dev, rows=rows,
                           model_params=full if params is not full else None, prev_params=prev,
                           train_loss=run.config.train.loss)
        prev = {k: v[-1:] for k, v in full.items()}
        with torch.no_grad():
            for m in chosen:
                out = m.compute(ctx)
                for c in m.columns:
                    v = out.get(c)
                    table[c].append(np.full(ctx.n, np.nan) if v is None else
                                   torch.as_tensor(v).double().reshape(ctx.n).cpu().numpy())
        del ctx
    definitions = {c: m.definitions.get(c, "") for m in chosen for c in m.columns}
    reason = fold_unsupported(cfg)
    impl = ("vectorised (grid_forward" if reason is None else
            f"the {getattr(cfg, 'family', 'transformer')} family's hooked module on the whole grid, one checkpoint at a "
            f"time (generic_grid_forward: {reason}") + f", chunks of {int(chunk)} checkpoints" + \
        (f", blocks of {rows} rows of the grid)" if rows is not None and rows < p else ")")
    return measures_frame(table, keys, eps, impl, p, definitions, structure)
