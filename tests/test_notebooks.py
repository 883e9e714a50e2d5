"""The numbered notebooks run top to bottom on the tiny preset, are stored without outputs, keep
their figures when exported (``nbconvert --to html``, rendered in headless Chromium), warn about
nothing, and never overwrite a user's files."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import nbformat
import pytest
from _browser import chromium, dump_dom, png_size, screenshot

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PLOTLY_JSON = "application/vnd.plotly.v1+json"


def test_notebooks_exist_and_are_numbered():
    names = [p.name for p in NOTEBOOKS]
    assert names[:3] == ["01_quickstart.ipynb", "02_fourier_features.ipynb", "03_progress_measures.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory, tiny_run):
    """Notebooks load a copy of the session's tiny run (same config: no retraining). The copy holds
    a report the 'user' wrote earlier, which no notebook may replace."""
    run_dir = tmp_path_factory.mktemp("nb") / "tiny"
    shutil.copytree(tiny_run.path, run_dir)
    (run_dir / "report.html").write_text("<p>my own report</p>")
    old = {k: os.environ.get(k) for k in ("GROKINTERP_PRESET", "GROKINTERP_RUN_DIR")}
    os.environ["GROKINTERP_PRESET"] = "tiny"
    os.environ["GROKINTERP_RUN_DIR"] = str(run_dir)
    yield run_dir
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _png_is_not_blank(png: Path) -> bool:
    """More than a handful of distinct byte values in the decoded image rows (a blank page has ~2)."""
    data, pos, idat = png.read_bytes(), 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat))) > 20


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, nb_env, tmp_path):
    from nbclient import NotebookClient

    before = {p: p.read_bytes() for p in nb_env.rglob("*") if p.is_file()}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # nothing to warn about (tqdm's "IProgress not found" needs ipywidgets, which [dev] and [notebook] bring)
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "IProgress" not in text and "Warning" not in text, text[:2000]
    # the run directory (and the user's own report in it) is untouched; notebook 01's report went
    # to a new folder of its own
    assert {p: p.read_bytes() for p in nb_env.rglob("*") if p.is_file()} == before
    for cell in nb.cells:
        if cell.cell_type == "code" and "write_report" in cell.source:
            shown = "".join(o.data.get("text/plain", "") for o in cell.outputs if o.output_type == "execute_result")
            report = Path(re.search(r"Path\('([^']+)'\)", shown).group(1))
            assert report.is_file() and report.stat().st_size > 100_000 and nb_env not in report.parents
            shutil.rmtree(report.parent)
    # every figure is stored as HTML beside its JSON, so it shows without a kernel
    figures = [o for o in outputs if o.output_type in ("display_data", "execute_result") and PLOTLY_JSON in o.data]
    assert figures, f"{path.name} draws no figure"
    assert all("text/html" in o.data for o in figures)

    # exported to HTML and opened in a browser, every figure is drawn
    from nbconvert import HTMLExporter

    page, _ = HTMLExporter().from_notebook_node(nb)
    assert re.search(r"plotly\.js v\d", page), "plotly.js is embedded in the export (it works offline)"
    html_path = tmp_path / f"{path.stem}.html"
    html_path.write_text(page)
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    dom = dump_dom(browser, html_path).stdout
    drawn = len(re.findall(r'class="[^"]*js-plotly-plot', dom))
    assert drawn >= len(figures), f"{drawn} of {len(figures)} figures drawn in the exported page"
    assert len(re.findall(r'class="main-svg"', dom)) >= drawn
    png = screenshot(browser, html_path, tmp_path / f"{path.stem}.png")
    assert png_size(png) == (1280, 2400) and _png_is_not_blank(png)


def test_setup_notebook_sets_a_renderer_that_saves_figures(monkeypatch):
    import builtins

    import plotly.io as pio

    import grokinterp as gi
    from grokinterp.errors import AnalysisError

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")
    assert gi.setup_notebook() == "plotly_mimetype+notebook" == pio.renderers.default
    real_import = builtins.__import__

    def no_kaleido(name, *args, **kw):
        if name == "kaleido":
            raise ImportError("no kaleido")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_kaleido)
    with pytest.raises(AnalysisError, match="kaleido"):
        gi.setup_notebook(images=True)
    assert pio.renderers.default == "plotly_mimetype+notebook"  # unchanged by the refusal
