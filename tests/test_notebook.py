"""notebooks/quickstart.ipynb runs headless from top to bottom (shrunk with ADM_QUICKSTART_TINY=1) in a kernel
that uses this interpreter, and leaves its grids, sample files and sweep summary behind."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _kernelspec(folder: Path) -> None:
    """A "python3" kernelspec running this interpreter, found first through JUPYTER_PATH."""
    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "adm", "language": "python"}))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    _kernelspec(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("ADM_QUICKSTART_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("ADM_QUICKSTART_TINY", "1")
    monkeypatch.setenv("ADM_DEMO_DIR", str(tmp_path / "no_demo"))  # train here even if `make demo` ran
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb, kernel_name="python3", timeout=900, resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()

    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # two grids and the sweep plot
    out = tmp_path / "out"
    executable = [
        o for c in code_cells for o in c.outputs if o.get("name") == "stdout" and "outputs go to" in o.text
    ]
    assert executable, "the first cell did not run"
    for scale in ("scale_0", "scale_4"):
        assert list((out / "samples" / scale).glob("samples_20x28x28x1.npz"))
    with (out / "sweep" / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["guidance_scale"] for r in rows] == ["0.0", "4.0"]
    assert all(r["accuracy"] and r["fid"] for r in rows)
