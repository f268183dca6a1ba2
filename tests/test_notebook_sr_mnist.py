"""notebooks/sr_mnist_vs_bicubic.ipynb is a valid notebook whose code cells run top to bottom (shrunk with
ADM_SR_EVAL_TINY=1) and leave the score table and the comparison grid behind.

The cells run as one script in a fresh interpreter (no Jupyter kernel): that is all they need, and it keeps
the check to the notebook's own seconds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sr_mnist_vs_bicubic.ipynb"


def test_sr_mnist_notebook_runs(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    script = tmp_path / "cells.py"
    script.write_text("\n\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    out = tmp_path / "out"
    env = {**os.environ, "ADM_SR_EVAL_TINY": "1", "ADM_SR_EVAL_DIR": str(out), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=NOTEBOOK.parent, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    record = json.loads((out / "results.json").read_text())
    assert record["inputs"] == "held-out real digits" and record["num"] == 40
    names = ["bicubic 14->28", "bilinear 14->28", "upsampler 14->28", "real 28 px (floor)"]
    assert list(record["results"]) == names
    for scores in record["results"].values():
        assert math.isfinite(scores["fid"]) and 0 <= scores["accuracy"] <= 1
    assert (out / "comparison.png").is_file() and (out / "upsampled" / "samples_40x28x28x1.npz").is_file()
    assert "upsampler 14->28" in proc.stdout  # the printed table
