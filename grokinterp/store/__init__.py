"""The run directory: its format, the public writer, the loader, integrity checks, legacy import.

* :mod:`~grokinterp.store.layout` — file names, atomic writes, JSON and safetensors headers;
* :mod:`~grokinterp.store.writer` — :func:`start_run`, :class:`CheckpointWriter` (the only way
  anything writes into a run: the trainer and the legacy importer both use it);
* :mod:`~grokinterp.store.run` — :class:`Run` and :func:`load_run` (reading never imports training);
* :mod:`~grokinterp.store.integrity` — the manifest, the checks on read and :func:`verify`;
* :mod:`~grokinterp.store.lock` — the run lock (one writer per run, stale locks taken over safely);
* :mod:`~grokinterp.store.legacy` — reference implementations' ``.pth`` files, read with
  ``torch.load(weights_only=True)``.
"""
