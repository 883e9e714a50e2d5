"""Denormal floats flushed to zero while grokinterp computes, and the caller's setting restored after.

Late in a run the model classifies its training pairs with huge margins: the softmax gives the
wrong classes probabilities below float32's smallest normal number (1.2e-38), so the gradient of
the logits, cast to float32, is full of *denormal* (subnormal) values, and every matrix product of
the backward pass takes them in. On many CPUs an instruction with a denormal operand or result
takes a slow microcode path: on an Intel Xeon (AVX-512) the ``quick`` preset trained in 805 s of
CPU time, and in 175 s with denormals flushed to zero — with bit-identical checkpoints and metrics,
because a value below 1.2e-38 added to gradients and weights of normal size is lost in rounding
anyway. ``benchmarks/denormal_speed.py`` times a late step beside an early one, with and without.

:func:`flush_denormals` sets flush-to-zero and denormals-are-zero (``torch.set_flush_denormal``)
for the duration of a block and then restores what was set before, so that importing or calling
grokinterp never changes a Jupyter session's floating-point state behind its back. Training
(:func:`grokinterp.train`, ``resume``, ``train_stacked``, sweep workers) and the analysis drivers
(``progress_measures``, ``analyze_run``) run inside it.

* Where the platform cannot flush denormals (``torch.set_flush_denormal`` returns ``False``), the
  block runs unchanged.
* ``GROKINTERP_FLUSH_DENORMALS=0`` leaves the setting alone (to compare, or to reproduce a run
  trained without it).
* The setting is the calling thread's (on x86 the MXCSR register): torch's intra-op worker
  threads (``--threads N`` > 1) keep their own. With the default single thread every kernel runs
  on the calling thread.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

__all__ = ["denormals_flushed", "flush_denormals", "flush_denormals_enabled", "with_flushed_denormals"]

F = TypeVar("F", bound=Callable)


def flush_denormals_enabled() -> bool:
    """Whether grokinterp flushes denormals (unless ``GROKINTERP_FLUSH_DENORMALS=0``)."""
    return os.environ.get("GROKINTERP_FLUSH_DENORMALS", "1").strip().lower() not in ("0", "false", "no", "off")


def denormals_flushed() -> bool:
    """Whether float32 arithmetic on this thread flushes denormal results to zero now.

    torch has a setter and no getter, so this asks the arithmetic itself: 1e-30 · 1e-10 is a
    denormal (1e-40), or zero where denormals are flushed.
    """
    return (torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10], dtype=torch.float32)).item() == 0.0


@contextmanager
def flush_denormals(enabled: bool | None = None) -> Iterator[bool]:
    """Run the block with denormals flushed to zero; the previous setting is restored after.

    Args:
        enabled: ``None`` (default) follows ``GROKINTERP_FLUSH_DENORMALS`` (on unless ``0``);
            ``False`` leaves the setting alone.

    Yields:
        ``True`` where denormals are flushed inside the block.
    """
    if enabled is None:
        enabled = flush_denormals_enabled()
    if not enabled:
        yield denormals_flushed()
        return
    before = denormals_flushed()
    if before:  # already on (the caller's choice, or an enclosing block): nothing to set or restore
        yield True
        return
    on = bool(torch.set_flush_denormal(True))
    try:
        yield on
    finally:
        if on:
            torch.set_flush_denormal(False)


def with_flushed_denormals(fn: F) -> F:
    """``fn`` run inside :func:`flush_denormals`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with flush_denormals():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
