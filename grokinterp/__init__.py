"""grokinterp: mechanistic interpretability of grokking.

Train small transformers on modular arithmetic with dense, self-describing checkpoints, then ask
which algorithm they learned (Fourier features, circuits) and when the generalizing circuit formed
(progress measures), following Nanda et al., ICLR 2023.

Heavy modules (torch, transformer_lens, plotly) load on first use of a name that needs them, so
``import grokinterp`` and the CLI's ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "make_config": "config",
    "RunConfig": "config",
    "TaskConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CheckpointSchedule": "config",
    "PRESETS": "config",
    "GrokinterpError": "errors",
    "ConfigError": "errors",
    "RunError": "errors",
    "AnalysisError": "errors",
    "make_dataset": "tasks",
    "register_operation": "tasks",
    "HookedGrokTransformer": "model",
    "train": "trainer",
    "resume": "trainer",
    "load_run": "run",
    "Run": "run",
    "fourier_basis": "fourier",
    "key_frequencies": "fourier",
    "progress_measures": "progress",
    "detect_phases": "phases",
    "circuit_formation_epoch": "phases",
    "ablation_table": "ablations",
    "analyze_run": "summary",
    "write_report": "report",
    "verify": "integrity",
    "import_legacy": "legacy",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grokinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
