"""Training: the epoch loop and its seams, each a small module.

* :mod:`~grokinterp.training.loop` — :func:`train`, :func:`resume`, :class:`TrainLoop` (epochs,
  evaluation, snapshots, flushes, signals);
* :mod:`~grokinterp.training.optim` — the optimizer registry (``adamw``, ``adam``, ``sgd``), state
  through ``state_dict()``;
* :mod:`~grokinterp.training.transforms` — gradient transforms between backward and step, with state;
* :mod:`~grokinterp.training.step` — the step executor: eager, or replayed from a CUDA graph;
* :mod:`~grokinterp.training.callbacks` — loop callbacks (progress bar, live measures, yours).

Training writes runs only through :mod:`grokinterp.store.writer` and never imports the analyses.
"""
