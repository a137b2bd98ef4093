"""Every notebook runs top to bottom in its small setting on CPU, install cell included: its
logic is rehearsed against this clone (clone, then ``pip install --dry-run``), and the data cells
download from a local mirror of the public URLs, with no data directory set."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from conftest import Mirror, real_data
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# what each notebook's data cell needs: a dataset the mirror serves, or the real data directory
# (Kaggle-only data cannot be downloaded; the notebook prints the manual steps instead)
DOWNLOADS = {"01_quickstart": "beauty"}
DATA_DIR = {"02_product_search": "homedepot/train.csv", "04_multimodal_fusion": "fashion-products/styles.csv"}
EXPECT = {"01_quickstart": "next:", "02_product_search": "Cordless", "03_satisfaction_ranker": "ESMM",
          "04_multimodal_fusion": "test NDCG@10", "05_efficiency": "distilled student",
          "06_scaling_on_tpu": "rehearsing on 8 virtual CPU devices", "07_tuning": "best trial"}


def test_every_notebook_is_built_from_its_source_with_the_one_repository_address():
    done = subprocess.run([sys.executable, "notebooks/build.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    repository = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    assert set(NOTEBOOKS) == set(EXPECT)
    for name in NOTEBOOKS:
        notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        header, install = notebook.cells[1], notebook.cells[2]
        assert "colab-badge" in header.source and "Accelerator: TPU" in header.source
        assert f'"ECOMJAX_REPOSITORY", "{repository}"' in install.source
        assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("ECOMJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("ECOMJAX_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("ECOMJAX_INSTALL_CHECK", "1")
    monkeypatch.setenv("ECOMJAX_REPOSITORY", str(ROOT))
    server, original = None, os.environ.get("ECOMJAX_DATA_DIR")
    if name in DOWNLOADS:  # the mirror serves the real files, read from the data directory
        server = Mirror()
        server.serve(DOWNLOADS[name])
        server.thread.start()
        monkeypatch.setenv("ECOMJAX_DOWNLOAD_MIRROR", server.base)
    if name in DATA_DIR:
        real_data(DATA_DIR[name])
        monkeypatch.setenv("ECOMJAX_DATA_DIR", str(Path(original).resolve()))
    else:
        monkeypatch.delenv("ECOMJAX_DATA_DIR", raising=False)
        monkeypatch.setenv("ECOMJAX_CACHE_DIR", str(tmp_path / "cache"))  # downloads land in .../data
    try:
        notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        NotebookClient(notebook, timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    finally:
        if server is not None:
            server.server.shutdown()
            server.server.server_close()
    text = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for o in cell.get("outputs", []))
    assert "install:" in text and "--dry-run" in text, "the install cell's logic did not run"
    assert EXPECT[name] in text, text[-2000:]
    if name in DOWNLOADS:
        assert server.requests, "the data cell downloaded nothing from the mirror"
        assert (tmp_path / "cache" / "data" / "amazon-beauty" / "Beauty.txt").is_file()

