"""Plotly figures in Jupyter that still show once the kernel is gone.

Inside a kernel plotly's default renderer is ``plotly_mimetype``: JupyterLab draws the figure from
its JSON, but the saved notebook holds only that JSON, so GitHub, nbviewer and ``jupyter nbconvert
--to html`` show blank cells. :func:`setup_notebook` adds plotly's ``notebook`` renderer, which
stores each figure as HTML as well, with plotly.js embedded once in the notebook (about 4.7 MB):
the exported page is self-contained and works offline. ``images=True`` also stores a static PNG of
every figure (for viewers that run no JavaScript); that needs kaleido and a Chrome/Chromium.

Nothing happens on import (no renderer is set until you call the function).

Example:
    >>> import grokinterp as gi
    >>> gi.setup_notebook()                  # doctest: +SKIP
    'plotly_mimetype+notebook'
"""

from __future__ import annotations

from ..errors import AnalysisError

__all__ = ["setup_notebook", "NOTEBOOK_RENDERER"]

#: Interactive in JupyterLab (``plotly_mimetype``) and saved as self-contained HTML (``notebook``).
NOTEBOOK_RENDERER = "plotly_mimetype+notebook"


def setup_notebook(*, images: bool = False) -> str:
    """Make the plotly figures of this notebook interactive *and* saved with it; returns the renderer.

    Args:
        images: also save a static PNG of each figure (``+png``; needs ``pip install kaleido`` and
            a Chrome or Chromium browser, which kaleido finds or ``kaleido.get_chrome()`` installs).

    Raises:
        AnalysisError: ``images=True`` without kaleido installed.
    """
    import plotly.io as pio

    name = NOTEBOOK_RENDERER
    if images:
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise AnalysisError("setup_notebook(images=True): static images need kaleido "
                                "(pip install 'grokinterp[notebook]' or pip install kaleido)") from None
        name += "+png"
    pio.renderers.default = name
    return name
