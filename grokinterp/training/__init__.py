"""Training: the epoch loop and its seams, each a small module.

* :mod:`~grokinterp.training.loop` — :func:`train`, :func:`resume`: one run, trained as a stack of one;
* :mod:`~grokinterp.training.stacked` — the one trainer, :class:`StackedLoop`, for ``R ≥ 1`` runs as one
  stacked model (:func:`train_stacked`), and :class:`TrainLoop`, its single-run view (a stack of one);
* :mod:`~grokinterp.training.common` — what the entry points share (interrupts, signals, devices);
* :mod:`~grokinterp.training.optim` — the optimizer registry (``adamw``, ``adam``, ``sgd``,
  ``ortho_adamw``), one entry each, written over stacks of ``R ≥ 1`` runs (a single run is a stack of one);
* :mod:`~grokinterp.training.transforms` — the gradient-transform registry (between backward and
  step, with state), likewise one entry each over stacks;
* :mod:`~grokinterp.training.step` — the step executor: eager, or replayed from a CUDA graph;
* :mod:`~grokinterp.training.callbacks` — loop callbacks (progress bar, live measures, yours).

Training writes runs only through :mod:`grokinterp.store.writer` and never imports the analyses.
"""
