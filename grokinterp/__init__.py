"""grokinterp: mechanistic interpretability of grokking.

Train small transformers on modular arithmetic (Power et al.'s operations) and finite groups with
dense, self-describing checkpoints, then ask which algorithm they learned (Fourier features, group
representations, circuits) and when the generalizing circuit formed (progress measures), following
Nanda et al., ICLR 2023, and Chughtai et al., 2023.

The package is layered (imports point down only; ``tests/test_architecture.py`` checks it)::

    cli                      commands wired to the layers below
    viz                      plotly figures, the HTML reports
    sweeps                   families of runs: specs, executors (local, Ray), tables
    monitor                  train / resume with live measures and the early warning; watch
    analysis | training      independent siblings: analyses of runs | the training loop and its seams
    store                    the run directory: writer, loader, integrity, legacy import
    model                    parameters, hooked transformer, table fold, fast forwards
    config                   frozen dataclasses, presets, validation
    tasks                    the Task protocol and the registered tasks
    errors                   one exception family

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
    "get_task": "tasks",
    "register_operation": "tasks",
    "HookedGrokTransformer": "model.hooked",
    "train": "monitor",
    "resume": "monitor",
    "watch": "monitor",
    "train_stacked": "training.stacked",
    "child_config": "training.lineage",
    "Callback": "training.callbacks",
    "register_optimizer": "training.optim",
    "register_gradient_transform": "training.transforms",
    "load_run": "store.run",
    "Run": "store.run",
    "verify": "store.integrity",
    "import_legacy": "store.legacy",
    "fourier_basis": "analysis.fourier",
    "key_frequencies": "analysis.keyfreqs",
    "key_irreps": "analysis.keyfreqs",
    "irreps": "analysis.groups",
    "group_basis": "analysis.groups",
    "progress_measures": "analysis.measures",
    "Measure": "analysis.measures",
    "register_measure": "analysis.measures",
    "detect_phases": "analysis.phases",
    "circuit_formation_epoch": "analysis.phases",
    "ablation_table": "analysis.ablations",
    "analyze_run": "analysis.summary",
    "register_run_analysis": "analysis.summary",
    "sweep": "sweeps.driver",
    "load_sweep": "sweeps.driver",
    "SweepSpec": "sweeps.spec",
    "write_report": "viz.report",
    "register_figure": "viz.report",
    "setup_notebook": "viz.notebook",
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
