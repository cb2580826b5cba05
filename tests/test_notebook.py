"""The Colab notebook runs end to end outside Colab (tiny configuration)."""
import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("LARQ_ENGRAMS_NOTEBOOK_SIZE", "tiny")
    monkeypatch.setenv("LARQ_ENGRAMS_SOURCE", "none")  # this checkout, installed already
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)  # the notebook must set it itself
    notebook = nbformat.read(os.path.join(ROOT, "colab", "larq_engrams_quickstart.ipynb"), as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if any cell fails
    outputs = "".join(
        out.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "ACC" in outputs and "peak RSS" in outputs
    images = [out for cell in notebook.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert images, "the accuracy-matrix figure is displayed"
    assert os.path.isdir(tmp_path / "notebook_logs")
