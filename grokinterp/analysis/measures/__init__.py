"""Progress measures: the Measure protocol and registry, the built-in measures, the chunk driver.

Adding a measure is one class in one file: subclass :class:`Measure`, set ``name``, ``columns``
and ``definitions``, implement ``compute(ctx)``, and :func:`register_measure` an instance.
"""

from __future__ import annotations

from .base import MEASURES, ChunkContext, Measure, RunArrays, get_measures, register_measure
from .driver import MEASURE_COLUMNS, measures_frame, progress_measures, select_epochs

__all__ = ["MEASURES", "MEASURE_COLUMNS", "ChunkContext", "Measure", "RunArrays", "get_measures",
           "measures_frame", "progress_measures", "register_measure", "select_epochs"]
