"""How many CPU threads torch uses while training, and why the default is one.

:func:`grokinterp.train` and :func:`grokinterp.resume` run with ``torch.set_num_threads(n)`` for
their duration (the caller's setting is restored afterwards) and record ``n`` in ``run.json``
(``device.torch_threads``).

Why the default is 1 thread, whatever the machine:

* **Speed.** A full-batch step of these models is a few ``[batch, d_mlp] × [d_mlp, vocab]``
  products (~0.6 GFLOP at p = 113): too little work to pay for synchronising threads, and on a
  machine whose cores are busy with other work, extra threads wait for each other. Measured with
  ``benchmarks/threads.py`` on a 2-core machine with a load average of ~8.5 (other jobs running): 1
  thread 91 ms/epoch, 2 threads 485 ms/epoch (5.3× slower) for ``quick``; 101 vs 557 ms (5.5×)
  for ``paper``.
* **Reproducibility.** The result of a float32 matrix product depends on how it is split among
  threads: ``quick`` trained 30 steps with 1, 2 or 3 threads gives the same bits, with 4 or 8
  threads weights that differ by 0.02. A default that followed the machine's load would make two
  runs of the same config and seed differ; a fixed default keeps them bit-identical, and a resumed
  run uses the recorded count (tested).

Pass ``threads=N`` (``grokinterp train --threads N``) to use more where cores are idle; rerun
``benchmarks/threads.py`` there to see whether it pays off. A count above :func:`max_threads`
(:data:`THREADS_PER_CORE` per core of this machine) is refused before anything is written: it cannot
be faster, and a huge one (``--threads 1000000``) made torch's thread pool fail after ~45 s with
``std::bad_alloc``. A resumed run keeps its recorded count, whatever the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..config import is_int
from ..errors import ConfigError

__all__ = ["DEFAULT_THREADS", "THREADS_PER_CORE", "check_threads", "max_threads", "torch_threads"]

#: Torch intra-op threads used for training unless the caller asks for another count.
DEFAULT_THREADS = 1
#: Most threads asked for per core of the machine (:func:`max_threads`).
THREADS_PER_CORE = 4


def max_threads() -> int:
    """The most torch threads a training on this machine may ask for: :data:`THREADS_PER_CORE` per core."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def check_threads(threads: object, name: str = "threads") -> int:
    """A positive thread count at most :func:`max_threads`, or :class:`ConfigError` naming ``name``.

    Torch-free, so that the CLI refuses a bad ``--threads`` without loading torch.
    """
    if not is_int(threads) or int(threads) < 1:  # type: ignore[arg-type]
        raise ConfigError(f"{name}: must be a positive integer, got {threads!r}")
    if int(threads) > max_threads():  # type: ignore[arg-type]
        raise ConfigError(f"{name}: {threads} threads on a machine with {os.cpu_count()} cores; at most "
                          f"{max_threads()} ({THREADS_PER_CORE} per core)")
    return int(threads)  # type: ignore[arg-type]


@contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(n)``; the previous setting is restored after."""
    import torch

    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)
