"""Guidance-scale sweeps: `scripts/sample.py -m ...` writes one scored run per scale and, at the end, the
summary (summary.csv, summary.png) in the sweep folder."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from adm.metrics import DomainClassifier
from adm.recipes.sweep import SweepSummary, format_summary

REPO = Path(__file__).resolve().parents[1]


def _fake_job(sweep: Path, job: int, scale: float, metrics: dict | None, overrides: list[str]) -> None:
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    fingerprint = {
        "sampler": {"_target_": "adm.sampling.ddim_sample", "steps": 25},
        "guidance": {"kind": "classifier", "scale": scale},
    }
    # what the sample recipe records of the run: its sampler and guidance by their registered names
    drawn = {"sampler": "ddim", "steps": 25, "eta": 0.0, "guidance": "classifier", "guidance_scale": scale}
    info = {"fingerprint": fingerprint, "num_samples": 100, "drawn_with": drawn}
    (folder / "sample_info.json").write_text(json.dumps(info))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    Image.fromarray(np.full((10, 10), 40 * job, dtype=np.uint8)).save(folder / "grid.png")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_summary_table_and_plot(tmp_path):
    sweep = tmp_path / "sweep"
    # jobs finish in any order; the table is sorted by scale
    _fake_job(
        sweep, 0, 4.0, {"fid": 9.0, "precision": 0.9, "recall": 0.2, "accuracy": 0.99}, ["guidance.scale=4"]
    )
    _fake_job(
        sweep, 1, 0.0, {"fid": 5.0, "precision": 0.6, "recall": 0.6, "accuracy": 0.5}, ["guidance.scale=0"]
    )
    _fake_job(sweep, 2, 1.0, None, ["guidance.scale=1"])  # not scored: empty cells
    (sweep / "multirun.yaml").write_text("{}")
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    rows = _rows(sweep / "summary.csv")
    assert [r["guidance_scale"] for r in rows] == ["0.0", "1.0", "4.0"]
    assert [r["fid"] for r in rows] == ["5.0", "", "9.0"]
    assert rows[2]["accuracy"] == "0.99" and rows[0]["sampler"] == "ddim" and rows[0]["steps"] == "25"
    assert rows[1]["overrides"] == "guidance.scale=1"
    with Image.open(sweep / "summary.png") as image:
        assert image.width > image.height  # fid, precision, recall, accuracy, the trade-off: 3 x 2 panels

    # no run scored: the plot shows the sample grids side by side
    bare = tmp_path / "bare"
    _fake_job(bare, 0, 0.0, None, ["guidance.scale=0"])
    _fake_job(bare, 1, 2.0, None, ["guidance.scale=2"])
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(bare)}}}))
    assert (bare / "summary.png").is_file() and len(_rows(bare / "summary.csv")) == 2


def test_summary_as_text():
    rows = [
        {"guidance_scale": 0.0, "fid": 5.0, "precision": 0.6, "recall": None, "accuracy": 0.5},
        {"guidance_scale": 2.5, "fid": float("nan"), "precision": 0.75, "recall": 0.25, "accuracy": 0.875},
        {"label": "real digits", "fid": 0.5, "precision": 1.0, "recall": 1.0, "accuracy": 1.0},
    ]
    lines = format_summary(rows).splitlines()
    # only the scores some row has, in the summary's column order; '-' where a row has none (or NaN)
    assert lines[0].split() == ["guidance", "scale", "fid", "precision", "recall", "accuracy"]
    assert set(lines[1]) == {"-"} and len(lines[1]) == len(lines[0])
    assert lines[2].split() == ["0", "5.000", "0.600", "-", "0.500"]
    assert lines[3].split() == ["2.5", "-", "0.750", "0.250", "0.875"]
    assert lines[4].split() == ["real", "digits", "0.500", "1.000", "1.000", "1.000"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_sweep_config_composes(compose):
    cfg = compose("sample", ["sweep=guidance_scale"], hydra_node=True)
    assert cfg.hydra.sweeper.params["guidance.scale"] == "0,0.5,1,2,4,10"
    assert cfg.hydra.callbacks.sweep_summary._target_ == "adm.recipes.sweep.SweepSummary"


def test_multirun_over_guidance_scales(tmp_path, tiny_ckpts):
    ckpts = tiny_ckpts
    DomainClassifier(in_channels=1, image_size=8, num_classes=3, width=2).save(tmp_path / "domain.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "scripts/sample.py", "-m", "guidance.scale=0,2",
        f"ckpt={ckpts['model']}", f"classifier_ckpt={ckpts['classifier']}",
        "sampler=ddim", "sampler.steps=2", "num_samples=12", "batch_size=12", "progress=false",
        f"evaluate.domain_ckpt={tmp_path / 'domain.pt'}", f"evaluate.reference={tmp_path / 'ref.npz'}",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, scale in (("0", 0.0), ("1", 2.0)):
        assert (sweep / job / "samples_12x8x8x1.npz").is_file() and (sweep / job / "grid.png").is_file()
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["guidance_scale"] == scale and metrics["feature_extractor"] == "domain"
        for key in ("fid", "precision", "recall", "accuracy"):
            assert np.isfinite(metrics[key])
    rows = _rows(sweep / "summary.csv")
    assert [r["guidance_scale"] for r in rows] == ["0.0", "2.0"]
    assert all(r["fid"] and r["accuracy"] for r in rows)
    assert (sweep / "summary.png").stat().st_size > 1000
