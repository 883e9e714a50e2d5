"""The CPU features that decide the last bits of float32 arithmetic, recorded beside fixtures.

Bit-for-bit is a promise about one machine: torch picks its CPU kernels by the instruction set
(``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...), and MKL / oneDNN by vendor and
features, so a sum is split and rounded differently elsewhere (an Intel Xeon with AVX-512 trains
the release-0.1.0 fixture to weights within 1.6e-7 of those written on an AVX2 AMD EPYC). A
fixture written by training carries ``machine.json`` (:func:`machine_features` of the machine that
wrote it); tests compare bit for bit where this machine's features equal it, and to a stated
tolerance elsewhere (:func:`assert_reproduces`).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

#: /proc/cpuinfo flags that change which float kernels run.
FLOAT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
               "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")
#: What must match for a bit-for-bit comparison (the CPU model name is recorded, not compared).
COMPARED = ("machine", "cpu_vendor", "cpu_capability", "float_flags", "torch")
#: Across machines: weights agree to this (absolute; float32 weights of order 0.1–1), metrics (losses,
#: accuracies) to ``METRICS_RTOL`` relative plus ``METRICS_ATOL``.
WEIGHTS_ATOL = 1e-5
METRICS_RTOL, METRICS_ATOL = 1e-4, 1e-6


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def machine_features() -> dict:
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    return {"machine": platform.machine(), "cpu_vendor": info.get("vendor_id", "unknown"),
            "cpu_model": info.get("model name", platform.processor() or "unknown"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "float_flags": sorted(f for f in FLOAT_FLAGS if f in flags), "torch": torch.__version__}


def recorded_features(fixture_dir: Path) -> dict:
    return json.loads((Path(fixture_dir) / "machine.json").read_text())


def same_float_machine(recorded: dict, here: dict | None = None) -> bool:
    here = machine_features() if here is None else here
    return all(recorded.get(k) == here.get(k) for k in COMPARED)


def assert_reproduces(old, new, recorded: dict, here: dict | None = None) -> bool:
    """``new`` (a run) reproduces ``old``: bit for bit on the fixture's machine, to the stated
    tolerances elsewhere. Returns whether the comparison was bit for bit."""
    exact = same_float_machine(recorded, here)
    assert np.array_equal(old.epochs, new.epochs)
    for name, stack in old.stacks().items():
        if exact:
            assert torch.equal(stack, new.stack(name)), name
        else:
            torch.testing.assert_close(new.stack(name), stack, rtol=0, atol=WEIGHTS_ATOL, msg=name)
    a, b = old.metrics.to_numpy(dtype=float), new.metrics.to_numpy(dtype=float)
    if exact:
        assert np.array_equal(a, b, equal_nan=True)
    else:
        np.testing.assert_allclose(b, a, rtol=METRICS_RTOL, atol=METRICS_ATOL, equal_nan=True)
    return exact
