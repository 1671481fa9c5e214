"""notebooks/quickstart.ipynb runs from top to bottom (so it never rots), with its pictures written."""

from __future__ import annotations

from pathlib import Path

import nbformat
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("GEOTRAINR_DEMO_DIR", str(tmp_path / "demo"))  # built fresh by the notebook
    monkeypatch.setenv("GEOTRAINR_QUICKSTART_EPOCHS", "1")  # a few seconds of training
    monkeypatch.setenv("GEOTRAINR_QUICKSTART_BATCHES", "6")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any failure

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "err_km_median" in text and "Grad-CAM for class" in text and "view(s) ->" in text
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images == 3  # CDF, map, Grad-CAM shown inline

    runs = tmp_path / "quickstart-runs"
    assert (runs / "checkpoints" / "quickstart.ckpt").is_file() and (runs / "report" / "report.md").is_file()
    for name, min_size in [("map.png", (600, 300)), ("gradcam.png", (512, 512)), ("report/error_cdf.png", (400, 250)),
                           ("report/confusion.png", (400, 400))]:
        with Image.open(runs / name) as im:
            assert im.width >= min_size[0] and im.height >= min_size[1], (name, im.size)
