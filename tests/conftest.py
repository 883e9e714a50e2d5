"""Shared fixtures: trained runs are made once per test session in a temporary directory."""

from __future__ import annotations

import os

import pytest

# Tiny models: one thread per process is fastest and avoids oversubscribing a 2-core CI machine
# when tests start subprocesses; every process (and subprocess) uses the same count, which keeps
# bit-for-bit comparisons across processes meaningful.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run of the ``tiny`` preset (trains in seconds, groks: test accuracy ≥ 99 %)."""
    import grokinterp as g

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return g.train(g.make_config("tiny"), out, progress=False)
