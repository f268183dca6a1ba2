"""W&B dashboards of sampling, evaluation, sweeps and training: what the OFFLINE runs really hold on disk.

Every check reads the run's transaction log (``<run dir>/wandb/offline-run-*/run-<id>.wandb``: the records
``wandb sync`` would upload) and the media files beside it; nothing of wandb is mocked.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from adm.errors import UsageError
from adm.metrics import DomainClassifier
from adm.recipes.evaluate import evaluate_samples
from adm.recipes.sweep import format_summary

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["zero", "one", "two"]
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one thread here and in spawned jobs


# --- reading an offline run ---------------------------------------------------------------------------------
@dataclass
class OfflineRun:
    """What one offline run recorded: its run record, config, summary and history, and its files folder."""

    folder: Path
    run: Any = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, dict[str, Path]] = field(default_factory=dict)  # name -> {path: staged file}

    def media(self, entry: dict[str, Any]) -> Path:
        """A logged image's file (``files/media/...``)."""
        return self.folder / "files" / entry["path"]

    def table(self, key: str) -> tuple[dict[str, Any], dict[str, Path]]:
        """A logged table (columns, data) and its files by path: wandb stores a table with its images as
        an artifact (``run-<id>-<key>``), staged until ``wandb sync`` uploads it."""
        files = self.artifacts[f"run-{self.run.run_id}-{key}"]
        return json.loads(files[f"{key}.table.json"].read_text()), files


def _records(path: Path) -> list[Any]:
    """The records of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of checksummed chunks)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, parts, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def _set(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_run(folder: Path, timeout: float = 30.0) -> OfflineRun:
    """Parse an ``offline-run-*`` folder, waiting for its log to be complete (wandb writes it in the
    background and may still be at it when ``finish()`` has returned)."""
    (log,) = folder.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = _records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = OfflineRun(folder)
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = record.run
            for item in record.run.config.update:
                _set(out.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(out.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            out.history.append(row)
        elif kind == "metric":
            out.metrics[record.metric.name] = record.metric
        elif kind == "artifact":
            contents = record.artifact.manifest.contents
            out.artifacts[record.artifact.name] = {c.path: Path(c.local_path) for c in contents}
    assert out.run is not None and any(r.WhichOneof("record_type") == "exit" for r in records), (
        f"{log}: the run never finished"
    )
    return out


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# --- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def wandb_offline(tmp_path, monkeypatch):
    """wandb offline and quiet, its own folders (settings, cache, staging) in the test's tmp_path."""
    home = tmp_path / "wandb_home"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": home / "dir",
        "WANDB_DATA_DIR": home / "data",
        "WANDB_CACHE_DIR": home / "cache",
        "WANDB_CONFIG_DIR": home / "config",
        "WANDB_ARTIFACT_DIR": home / "artifacts",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    wandb.finish()  # a run another test left active would be taken over by Lightning's WandbLogger
    yield env
    wandb.finish()


@pytest.fixture(scope="module")
def tiny(tiny_ckpts) -> dict[str, Path]:
    """The sampling tests' tiny model and classifier (8 px grey images, 3 classes)."""
    return tiny_ckpts


@pytest.fixture(scope="module")
def named(tiny_checkpoint) -> Path:
    """The tiny model (the same weights), its checkpoint recording the class names of its data."""
    return tiny_checkpoint(ema=True, class_names=CLASSES)


@pytest.fixture
def fast(fast_overrides) -> list[str]:
    return fast_overrides["sample"]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory) -> dict[str, Path]:
    """A domain classifier and a reference batch of 8 px grey images: scores in well under a second."""
    folder = tmp_path_factory.mktemp("scoring")
    DomainClassifier(in_channels=1, image_size=8, num_classes=3, width=2).save(folder / "domain.pt")
    rng = np.random.default_rng(0)
    np.savez(folder / "ref.npz", arr_0=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8))
    return {"domain": folder / "domain.pt", "reference": folder / "ref.npz"}


def _sample_args(named: Path, tiny: dict[str, Path], scoring: dict[str, Path], fast: list[str]) -> list[str]:
    return [
        f"ckpt={named}", f"classifier_ckpt={tiny['classifier']}", "guidance.scale=2", *fast,
        "num_samples=6", "batch_size=6", "labels=[2,0,1]", "grid_size=5", "table_rows=4",
        f"evaluate.domain_ckpt={scoring['domain']}", f"evaluate.reference={scoring['reference']}",
        "logger=wandb", "tags=[adm8,baseline]",
    ]  # fmt: skip


# --- sample jobs --------------------------------------------------------------------------------------------
def test_sample_job_logs_scores_settings_table_and_grid(
    named, tiny, scoring, tmp_path, fast, run_sample, load_npz
):
    out = tmp_path / "job"
    result = run_sample(_sample_args(named, tiny, scoring, fast), out)
    (folder,) = offline_runs(out)
    logged = read_run(folder)
    run_id = (out / "wandb_id").read_text().strip()
    assert logged.run.run_id == run_id and folder.name.endswith(run_id)
    assert list(logged.run.tags) == ["adm8", "baseline"]
    assert logged.run.job_type == "sample" and logged.run.project == "adm"

    # the settings, as the run's config
    config = logged.config
    assert (config["sampler"], config["steps"], config["guidance"]) == ("ddim", 2, "classifier")
    assert (config["guidance_scale"], config["num_samples"], config["seed"]) == (2.0, 6, 0)

    # every score of metrics.json, its best value kept (FID: the minimum; the others: the maximum)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result["metrics"]
    for name, best in (("fid", "min"), ("precision", "max"), ("recall", "max"), ("accuracy", "max")):
        assert logged.summary[f"sample/{name}"] == {best: pytest.approx(metrics[name])}
        assert getattr(logged.metrics[f"sample/{name}"].summary, best)
    assert logged.history[0]["sample/fid"] == pytest.approx(metrics["fid"])
    assert logged.summary["sample/seconds_per_image"] > 0

    # the samples table: the first table_rows samples, their labels and class names, the images themselves
    images, labels = load_npz(result["samples"])
    table, files = logged.table("samples")
    assert table["columns"] == ["index", "label", "class", "image"]
    assert [row[:3] for row in table["data"]] == [[i, int(labels[i]), CLASSES[labels[i]]] for i in range(4)]
    for i, row in enumerate(table["data"]):
        assert row[3]["_type"] == "image-file"
        with Image.open(files[row[3]["path"]]) as png:
            np.testing.assert_array_equal(np.asarray(png), images[i, ..., 0])

    # the grid, captioned with the classes of its images
    grid = logged.summary["grid"]
    assert grid["_type"] == "image-file"
    assert grid["caption"] == "5 samples: two, zero, one, two, zero"
    with Image.open(logged.media(grid)) as png, Image.open(out / "grid.png") as written:
        np.testing.assert_array_equal(np.asarray(png), np.asarray(written))


def test_rerun_continues_the_same_run(named, tiny, scoring, tmp_path, fast, run_sample):
    out = tmp_path / "job"
    args = [*_sample_args(named, tiny, scoring, fast), "labels=random"]
    run_sample(args, out)
    again = run_sample(args, out)  # the same job in the same run directory (e.g. after a preemption)
    assert again["generated_shards"] == 0
    first, second = (read_run(f) for f in offline_runs(out))
    run_id = (out / "wandb_id").read_text().strip()
    assert first.run.run_id == second.run.run_id == run_id
    assert second.run.resume  # wandb.init(resume="allow"): `wandb sync` appends it to the first one
    assert second.summary["sample/fid"] == first.summary["sample/fid"]  # the same samples, scored again


def test_class_indices_when_the_checkpoint_names_no_classes(tiny, scoring, tmp_path, fast, run_sample):
    out = tmp_path / "job"
    args = [f"ckpt={tiny['model']}", *fast, "num_samples=4", "batch_size=4", "labels=[1,2]",
            "table_rows=2", "logger=wandb"]  # fmt: skip
    run_sample(args, out)
    (folder,) = offline_runs(out)
    logged = read_run(folder)
    assert logged.summary["grid"]["caption"] == "4 samples: 1, 2, 1, 2"
    assert [row[:3] for row in logged.table("samples")[0]["data"]] == [[0, 1, "1"], [1, 2, "2"]]
    assert "sample/fid" not in logged.summary  # not scored: no scores, still the samples


def test_no_logger_by_default(tiny, tmp_path, fast, run_sample):
    out = tmp_path / "job"
    run_sample([f"ckpt={tiny['model']}", *fast, "num_samples=2", "batch_size=2"], out)
    assert not (out / "wandb").exists() and not (out / "wandb_id").exists()


# --- evaluation ---------------------------------------------------------------------------------------------
def test_evaluation_logs_its_scores(scoring, tmp_path, compose):
    rng = np.random.default_rng(1)
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), arr_1=rng.integers(0, 3, 12))
    out = tmp_path / "eval"
    overrides = [f"samples={samples}", f"reference={scoring['reference']}", "feature_extractor=domain",
                 f"domain_ckpt={scoring['domain']}", "progress=false", "logger=wandb", "tags=[eval]",
                 f"paths.output_dir={out}"]  # fmt: skip
    results = evaluate_samples(compose("evaluate", overrides))
    (folder,) = offline_runs(out)
    logged = read_run(folder)
    assert logged.run.job_type == "evaluate" and list(logged.run.tags) == ["eval"]
    assert logged.summary["sample/fid"] == {"min": pytest.approx(results["fid"])}
    assert logged.summary["sample/accuracy"] == {"max": pytest.approx(results["accuracy"])}
    assert logged.config["feature_extractor"] == "domain" and logged.config["samples"] == str(samples)


# --- training: the FID callback's scores --------------------------------------------------------------------
def test_training_run_keeps_the_best_fid(tmp_path, compose, fast_overrides):
    from adm.recipes.runs import preflight
    from adm.recipes.train import build_trainer_and_data

    cfg = compose(
        "train", ["experiment=smoke", *fast_overrides["train"], "logger=wandb"], output_dir=tmp_path
    )
    preflight(cfg)  # as the recipe does first (settles trainer.precision)
    trainer, _ = build_trainer_and_data(cfg)  # where the training recipe builds its loggers
    (logger,) = trainer.loggers
    # what the FID callback's self.log(...) sends, at three evaluations
    for step, (fid, accuracy) in enumerate([(5.0, 0.5), (3.0, 0.25), (4.0, 0.375)], start=1):
        logger.log_metrics({"sample/fid": fid, "sample/accuracy": accuracy}, step=step)
    logger.experiment.finish()
    (folder,) = offline_runs(tmp_path)
    logged = read_run(folder)
    assert logged.summary["sample/fid"] == {"min": 3.0}
    assert logged.summary["sample/accuracy"] == {"max": 0.5}
    assert logged.metrics["sample/fid"].step_metric == "trainer/global_step"
    assert [row["sample/fid"] for row in logged.history] == [5.0, 3.0, 4.0]


# --- sweeps -------------------------------------------------------------------------------------------------
def test_sweep_jobs_share_a_group_and_a_summary_run(named, tiny, scoring, tmp_path, wandb_offline, fast):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, "scripts/sample.py", "-m", "guidance.scale=0,1",
        f"ckpt={named}", f"classifier_ckpt={tiny['classifier']}", *fast, "num_samples=6", "batch_size=6",
        f"evaluate.domain_ckpt={scoring['domain']}", f"evaluate.reference={scoring['reference']}",
        "logger=wandb", "tags=[sweep]", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in wandb_offline.items()}}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    jobs = []
    for job in ("0", "1"):
        (folder,) = offline_runs(sweep / job)
        logged = read_run(folder)
        assert logged.run.run_group == "sweep" and logged.run.job_type == "sample"
        assert logged.run.display_name == f"sample-{job}" and list(logged.run.tags) == ["sweep"]
        jobs.append(logged)
    assert [j.config["guidance_scale"] for j in jobs] == [0.0, 1.0]

    (folder,) = offline_runs(sweep)
    summary = read_run(folder)
    assert summary.run.run_group == "sweep" and summary.run.job_type == "sweep-summary"
    table, _ = summary.table("summary")
    column = {name: i for i, name in enumerate(table["columns"])}
    assert [row[column["guidance_scale"]] for row in table["data"]] == [0.0, 1.0]
    assert [row[column["wandb_run"]] for row in table["data"]] == [j.run.run_id for j in jobs]
    fids = [j.summary["sample/fid"]["min"] for j in jobs]
    assert [row[column["fid"]] for row in table["data"]] == pytest.approx(fids)
    assert summary.summary["sample/fid"] == {"min": pytest.approx(min(fids))}  # the sweep's best FID
    assert summary.media(summary.summary["summary_plot"]).stat().st_size > 1000  # summary.png
    assert "fid_vs_guidance_scale_table" in summary.summary  # the FID line plot's data
    assert "guidance scale" in proc.stderr + proc.stdout  # the plain-text summary


def test_text_summary_names_every_setting_that_varies():
    rows = [
        {"guidance_scale": 2.0, "sampler": "ddim", "steps": 25, "guidance": "classifier", "fid": 5.0},
        {"guidance_scale": 2.0, "sampler": "ddpm", "steps": 250, "guidance": "cfg", "fid": 4.0},
        {"guidance_scale": 0.5, "sampler": "ddim", "steps": 25, "guidance": "cfg", "fid": 6.0},
    ]
    lines = format_summary(rows).splitlines()
    assert lines[0].split() == ["sampler", "guidance", "scale", "fid"]
    assert [" ".join(line.split()[:-1]) for line in lines[2:]] == [
        "ddim-25 classifier 2",
        "ddpm-250 cfg 2",
        "ddim-25 cfg 0.5",
    ]
    # only the scale differs: rows are labelled by it alone
    same = [{**row, "sampler": "ddim", "steps": 25, "guidance": "classifier"} for row in rows]
    assert format_summary(same).splitlines()[0].split() == ["guidance", "scale", "fid"]
    # another swept override is named with its value
    seeds = [{**row, "overrides": f"seed={i} guidance.scale=2"} for i, row in enumerate(same)]
    assert format_summary(seeds).splitlines()[2].split()[:2] == ["seed=0", "2"]


# --- errors -------------------------------------------------------------------------------------------------
def test_missing_wandb_is_one_clear_error_before_sampling(
    tiny, scoring, tmp_path, monkeypatch, fast, run_sample, compose
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    out = tmp_path / "job"
    with pytest.raises(UsageError, match="pip install wandb"):
        run_sample([f"ckpt={tiny['model']}", *fast, "num_samples=2", "batch_size=2", "logger=wandb"], out)
    assert not out.exists() or not any(out.iterdir())  # nothing drawn, nothing recorded
    overrides = [f"samples={scoring['reference']}", f"reference={scoring['reference']}", "logger=wandb",
                 "feature_extractor=domain", f"domain_ckpt={scoring['domain']}", "progress=false",
                 f"paths.output_dir={tmp_path / 'eval'}"]  # fmt: skip
    cfg = compose("evaluate", overrides)
    with pytest.raises(UsageError, match="pip install wandb"):
        evaluate_samples(cfg)
    assert not (tmp_path / "eval" / "metrics.json").exists()  # nothing scored
