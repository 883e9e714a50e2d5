"""Figures and reports: plotly figures from analysis results, and the self-contained HTML report.

Plotting functions return a ``plotly.graph_objects.Figure`` and never call ``.show()``; they compute
nothing beyond what they draw (the analyses live in :mod:`grokinterp.analysis`).
"""
