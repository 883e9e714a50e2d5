"""Minibatches: a seeded order of each run's training examples, a function of (seed, epoch) alone.

A run with ``train.batch_size = B`` over ``n`` training examples takes ``ceil(n / B)`` optimizer
steps per epoch (:func:`steps_per_epoch`). Epoch ``e`` is a fresh permutation of positions
``0 .. n-1`` in the run's training set (:func:`permutation`) cut into consecutive batches of
``B``; the last batch holds the ``n − (ceil(n / B) − 1) B`` left over (PyTorch's ``DataLoader``
default, ``drop_last=False``, which devinterp's grokking example and Grokfast use with
``shuffle=True``): every example is seen exactly once per epoch. Full batch (``B = None``) is one
step per epoch over the examples in their stored order.

The order depends on ``(seed, epoch)`` only, so a resume recomputes it and needs no generator
state, and it is the same on every machine: the permutation sorts ``n`` raw 64-bit outputs of
``PCG64(SeedSequence([seed, epoch]))``. NumPy fixes the streams of its bit generators and of
``SeedSequence`` across versions and platforms (NEP 19; only ``Generator`` *methods* may change), and
a stable sort breaks the (2⁻⁶⁴-rare) ties by position. Torch's global RNG is never touched.

Steps and epochs: step ``s`` (the number of optimizer steps taken before it) is batch
``s mod k`` of epoch ``s // k`` with ``k = steps_per_epoch(n, B)`` (:func:`epoch_of`,
:func:`step_of`); "epoch ``e``" in a checkpoint schedule is the state after ``e · k`` steps.

Stacks: runs trained together take one step at a time, so they must share ``k`` and ``B``
(:func:`stack_key`); their ``n_r`` may still differ (then their last batches differ in size).
:func:`stacked_epoch` gives one epoch of every run as index and weight tensors
``[step, run, B]``: positions into each run's own training set, and weights ``1 / b_r`` on the
``b_r`` real members of the batch and 0 on padding, so ``Σ_b w · loss_each`` is each run's mean
batch loss (see :data:`grokinterp.training.step.PER_EXAMPLE_LOSSES`).

Example:
    >>> steps_per_epoch(5, 2), [b.tolist() for b in batch_indices(seed=0, epoch=0, n=5, batch_size=2)]
    (3, [[3, 2], [1, 0], [4]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["steps_per_epoch", "permutation", "batch_indices", "step_of", "epoch_of", "stack_key",
           "stacked_epoch", "stacked_batch", "sampler_seed"]


def _check(n: int, batch_size: int | None) -> None:
    if int(n) < 1:
        raise ValueError(f"n: a training set needs at least one example, got {n}")
    if batch_size is not None and not 1 <= int(batch_size) <= int(n):
        raise ValueError(f"train.batch_size: must lie in [1, {n}] (the training examples), got {batch_size}")


def steps_per_epoch(n: int, batch_size: int | None) -> int:
    """Optimizer steps per epoch: ``ceil(n / batch_size)``, or 1 for full batch (``None``).

    Example:
        >>> steps_per_epoch(1124, 128), steps_per_epoch(1124, None)
        (9, 1)
    """
    _check(n, batch_size)
    return 1 if batch_size is None else -(-int(n) // int(batch_size))


def permutation(seed: int, epoch: int, n: int) -> Tensor:
    """The order of epoch ``epoch``: a permutation of ``range(n)`` (int64 ``[n]``, CPU).

    Notes:
        ``argsort(PCG64(SeedSequence([seed, epoch])).random_raw(n), stable)``: a uniformly random
        permutation (up to ties of 64-bit keys), fixed by ``(seed, epoch)`` on every machine.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed {seed}, epoch {epoch}")
    return torch.from_numpy(np.argsort(_keys(seed, epoch, n), kind="stable").astype(np.int64))


def _keys(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])).random_raw(int(n))


def batch_indices(seed: int, epoch: int, n: int, batch_size: int | None) -> list[Tensor]:
    """The batches of epoch ``epoch``: ``steps_per_epoch(n, batch_size)`` int64 tensors of positions
    into the training set, each of ``batch_size`` except a smaller last one; together a permutation
    of ``range(n)``. Full batch (``None``): ``[arange(n)]``, the stored order.

    Example:
        >>> [len(b) for b in batch_indices(seed=3, epoch=7, n=10, batch_size=4)]
        [4, 4, 2]
    """
    k = steps_per_epoch(n, batch_size)
    if batch_size is None:
        return [torch.arange(int(n))]
    return list(torch.split(permutation(seed, epoch, n), int(batch_size)))[:k]


def step_of(epoch: int, batch: int, per_epoch: int) -> int:
    """Optimizer steps taken before batch ``batch`` of epoch ``epoch`` (``per_epoch`` batches an epoch).

    Example:
        >>> step_of(2, 1, per_epoch=9)
        19
    """
    if not 0 <= batch < per_epoch:
        raise ValueError(f"batch must lie in [0, {per_epoch}), got {batch}")
    return int(epoch) * int(per_epoch) + int(batch)


def epoch_of(step: int, per_epoch: int) -> tuple[int, int]:
    """``(epoch, batch)`` of step ``step``: the inverse of :func:`step_of`.

    Example:
        >>> epoch_of(19, per_epoch=9)
        (2, 1)
    """
    if step < 0 or per_epoch < 1:
        raise ValueError(f"step must be ≥ 0 and per_epoch ≥ 1, got step {step}, per_epoch {per_epoch}")
    e, b = divmod(int(step), int(per_epoch))
    return e, b


def stack_key(n: int, batch_size: int | None) -> tuple[int | None, int]:
    """What runs of one stack must share: ``(batch_size, steps_per_epoch)``.

    Full-batch runs all share ``(None, 1)`` whatever their ``n``; minibatch runs stack together
    when they have the same ``batch_size`` and the same number of batches per epoch.
    """
    return (None if batch_size is None else int(batch_size)), steps_per_epoch(n, batch_size)


def stacked_epoch(seeds: Sequence[int], ns: Sequence[int], batch_size: int, epoch: int) -> tuple[Tensor, Tensor]:
    """One epoch of minibatches of ``R`` runs: ``(index, weight)``, each ``[step, run, batch_size]``.

    Args:
        seeds: each run's sampler seed (:func:`sampler_seed`).
        ns: each run's number of training examples; all must give one :func:`stack_key`.
        batch_size: ``train.batch_size`` (shared).
        epoch: the epoch.

    Returns:
        ``index``: int64 positions into each run's own training set (``< n_r``); row
        ``index[s, r, :b]`` is :func:`batch_indices` ``(seeds[r], epoch, ns[r], batch_size)[s]``
        of ``b`` members, padded with that batch's first position. ``weight``: float64, ``1 / b``
        on the real members and 0 on the padding (each row sums to 1; ``weight > 0`` is the mask).

    Example:
        >>> index, weight = stacked_epoch([0, 1], [10, 9], batch_size=4, epoch=0)
        >>> index.shape, weight.sum(-1).tolist()
        (torch.Size([3, 2, 4]), [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    """
    if len(seeds) != len(ns) or not len(ns):
        raise ValueError(f"seeds and ns must name the same runs (≥ 1), got {len(seeds)} seeds and {len(ns)} sizes")
    if batch_size is None:
        raise ValueError("train.batch_size: stacked_epoch is for minibatches; full batch needs no index")
    keys = {stack_key(n, batch_size) for n in ns}
    if len(keys) != 1:
        raise ValueError(f"train.batch_size: runs of one stack must take the same steps per epoch; training sets of "
                         f"{sorted(set(int(n) for n in ns))} examples in batches of {batch_size} give "
                         f"{sorted(k for _, k in keys)} steps")
    (_, k), B, R = keys.pop(), int(batch_size), len(ns)
    n = np.asarray([int(x) for x in ns], dtype=np.int64)
    raw = np.full((R, k * B), np.iinfo(np.uint64).max, dtype=np.uint64)  # padding sorts last (stable)
    for r, seed in enumerate(seeds):
        raw[r, :n[r]] = _keys(seed, epoch, n[r])
    perm = np.argsort(raw, axis=1, kind="stable").astype(np.int64).reshape(R, k, B)  # row r: permutation(seeds[r], ...), padded
    last = n - (k - 1) * B  # real members of each run's last batch
    real = np.arange(B)[None, :] < last[:, None]  # [run, B], the last batch
    perm[:, -1] = np.where(real, perm[:, -1], perm[:, -1, :1])
    w = np.full((R, k, B), 1.0 / B)
    w[:, -1] = np.where(real, 1.0 / last[:, None], 0.0)
    index = torch.from_numpy(np.ascontiguousarray(perm.transpose(1, 0, 2)))
    weight = torch.from_numpy(np.ascontiguousarray(w.transpose(1, 0, 2)))
    return index, weight


def stacked_batch(seeds: Sequence[int], ns: Sequence[int], batch_size: int, epoch: int,
                  batch: int) -> tuple[Tensor, Tensor]:
    """Batch ``batch`` of epoch ``epoch`` of every run: ``(index, weight)``, each ``[run, batch_size]``
    (one step of :func:`stacked_epoch`; computing the whole epoch once is cheaper)."""
    index, weight = stacked_epoch(seeds, ns, batch_size, epoch)
    if not 0 <= batch < index.shape[0]:
        raise ValueError(f"batch must lie in [0, {index.shape[0]}), got {batch}")
    return index[batch], weight[batch]


def sampler_seed(cfg) -> int:
    """The sampler seed of a :class:`~grokinterp.config.RunConfig`: ``train.sampler_seed``, or
    ``model.init_seed`` when unset."""
    s = cfg.train.sampler_seed
    return int(cfg.model.init_seed if s is None else s)
