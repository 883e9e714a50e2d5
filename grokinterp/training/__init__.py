"""Training: the epoch loop and its seams, each a small module.

* :mod:`~grokinterp.training.loop` — :func:`train`, :func:`resume`, :class:`TrainLoop` (epochs,
  evaluation, snapshots, flushes, signals);
* :mod:`~grokinterp.training.optim` — the optimizer registry (``adamw``, ``adam``, ``sgd``), state
  through ``state_dict()``;
* :mod:`~grokinterp.training.transforms` — gradient transforms between backward and step, with state;
* :mod:`~grokinterp.training.step` — the step executor: eager, or replayed from a CUDA graph;
* :mod:`~grokinterp.training.callbacks` — loop callbacks (progress bar, live measures, yours).

Training writes runs only through :mod:`grokinterp.store.writer` and never imports the analyses;
names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["train", "resume", "TrainLoop", "TrainingInterrupted", "Callback", "register_optimizer",
           "register_gradient_transform"]

_WHERE = {"train": "loop", "resume": "loop", "TrainLoop": "loop", "TrainingInterrupted": "loop",
          "Callback": "callbacks", "register_optimizer": "optim", "register_gradient_transform": "transforms"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'grokinterp.training' has no attribute {name!r}")
