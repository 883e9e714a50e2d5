"""Changed training data: a seeded subset of a split's training pairs, and random labels.

Two settings of :class:`~grokinterp.config.TaskConfig` change what a run trains on (issue 21):

- ``n_train = D′`` keeps ``D′`` of the split's training pairs (:func:`subset_pairs`): the first
  ``D′`` of a seeded order of the training pairs (``subset_seed``). A prefix of one order, so with
  the same seed a smaller ``D″`` is a subset of ``D′`` — a chain of runs that shrink their data
  (a grokked parent → ``D′`` → ``D″``) keeps each child's pairs inside its parent's. The pairs
  left out join the test set: the split still partitions the task's pairs (what the loader
  checks), and ``test`` = the split's test pairs ∪ the dropped training pairs.
- ``random_labels`` gives every *training* pair a label drawn uniformly at random from the task's
  classes (:func:`random_label_grid`): independent draws (not a permutation of the true labels, so
  the label counts are not kept), a function of ``(label_seed, grid index)`` alone — a pair keeps
  its random label whatever subset it is in. Test pairs keep their true labels (a memorizing
  run's test accuracy is then chance, ≈ 1/p). This is the memorization-only baseline of Varma et
  al. 2023 ("Explaining grokking through circuit efficiency").

Both are deterministic on every machine: the orders and draws use NumPy's ``PCG64`` streams under a
``SeedSequence`` (fixed across versions, NEP 19) through ``random_raw`` (no ``Generator`` method,
whose algorithms may change).

Example:
    >>> import numpy as np
    >>> trn = np.arange(10) * 3
    >>> subset_pairs(trn, 4, seed=0).tolist(), set(subset_pairs(trn, 2, 0)) <= set(subset_pairs(trn, 4, 0))
    ([0, 3, 12, 27], True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["subset_order", "subset_pairs", "random_label_grid", "training_labels", "SUBSET_TAG", "LABEL_TAG"]

#: Second words of the ``SeedSequence`` entropy, so the subset order, the random labels and the
#: minibatch sampler (``[seed, epoch]``) never share a stream for equal seeds.
SUBSET_TAG = 0x5B5E7
LABEL_TAG = 0x1ABE1


def _raw(seed: int, tag: int, n: int) -> np.ndarray:
    if int(seed) < 0:
        raise ConfigError(f"seed: must be non-negative, got {seed}")
    return np.random.PCG64(np.random.SeedSequence([int(seed), int(tag)])).random_raw(int(n))


def subset_order(n: int, seed: int) -> np.ndarray:
    """A seeded order of ``range(n)``: ``argsort`` of ``n`` raw 64-bit draws (stable), int64 ``[n]``."""
    return np.argsort(_raw(seed, SUBSET_TAG, n), kind="stable").astype(np.int64)


def subset_pairs(train_pairs: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``train_pairs``: the positions of the first ``n`` of :func:`subset_order`, sorted.

    Args:
        train_pairs: a split's training pairs (sorted int64 grid indices).
        n: how many to keep, ``1 ≤ n ≤ len(train_pairs)``.
        seed: the order's seed (``task.subset_seed``).

    Returns:
        Sorted int64 ``[n]``, a subset of ``train_pairs``; with one seed, nested in ``n``.
    """
    train_pairs = np.asarray(train_pairs, dtype=np.int64)
    if not 1 <= int(n) <= len(train_pairs):
        raise ConfigError(f"task.n_train: must lie in [1, {len(train_pairs)}] (the split's training pairs), got {n}")
    keep = np.sort(subset_order(len(train_pairs), seed)[: int(n)])
    return train_pairs[keep]


def random_label_grid(n_symbols: int, n_classes: int, seed: int) -> np.ndarray:
    """int64 ``[n_symbols²]``: a label in ``[0, n_classes)`` for every grid index ``a · n + b``.

    Notes:
        Label of grid index ``g`` = ``raw[g] mod n_classes`` with ``raw`` the PCG64 stream of
        ``SeedSequence([seed, LABEL_TAG])``; the modulo bias is below ``n_classes / 2⁶⁴``.
    """
    if int(n_classes) < 2:
        raise ConfigError(f"random labels need at least 2 classes, got {n_classes}")
    raw = _raw(seed, LABEL_TAG, int(n_symbols) ** 2)
    return (raw % np.uint64(n_classes)).astype(np.int64)


def training_labels(task_config: Any, pairs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The labels a run trains on for ``pairs`` (its training pairs): ``labels`` (the task's) unless
    ``task_config.random_labels``, then the random labels of :func:`random_label_grid` over the
    task's residue classes (``task.n``; never the ``=`` logit)."""
    if not getattr(task_config, "random_labels", False):
        return labels
    task = task_config.task()
    grid = random_label_grid(task.n, task.n, int(getattr(task_config, "label_seed", 0)))
    return grid[np.asarray(pairs, dtype=np.int64)]
