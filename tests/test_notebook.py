"""The quickstart notebook runs top to bottom (small setting, CPU)."""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("ECOMJAX_NOTEBOOK_RUNS", str(tmp_path))
    if os.environ.get("ECOMJAX_DATA_DIR"):  # the kernel runs in notebooks/: make the path absolute
        monkeypatch.setenv("ECOMJAX_DATA_DIR", str(Path(os.environ["ECOMJAX_DATA_DIR"]).resolve()))
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "ndcg@10" in outputs
    assert (tmp_path / "quickstart" / "metrics.json").is_file()
    if os.environ.get("ECOMJAX_DATA_DIR") and (Path(os.environ["ECOMJAX_DATA_DIR"]) / "amazon-beauty/Beauty.txt").exists():
        assert (tmp_path / "sasrec_beauty" / "metrics.json").is_file()
