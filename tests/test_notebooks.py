"""The numbered notebooks run top to bottom on the tiny preset, and are stored without outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


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
    """Notebooks load a copy of the session's tiny run (same config: no retraining)."""
    run_dir = tmp_path_factory.mktemp("nb") / "tiny"
    shutil.copytree(tiny_run.path, run_dir)
    old = {k: os.environ.get(k) for k in ("GROKINTERP_PRESET", "GROKINTERP_RUN_DIR")}
    os.environ["GROKINTERP_PRESET"] = "tiny"
    os.environ["GROKINTERP_RUN_DIR"] = str(run_dir)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, nb_env, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError with the failing cell and traceback
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
