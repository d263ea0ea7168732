"""notebooks/quickstart.ipynb runs from top to bottom."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from evomerge.paths import NOTEBOOK


@pytest.mark.slow
def test_the_quickstart_notebook_runs(zoo, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(str(output) for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)
    assert "| winner (#" in outputs and "model.safetensors" in outputs and "lineage.png" in outputs
