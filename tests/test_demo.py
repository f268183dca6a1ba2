"""The guidance demo: each scale is a run of the sample recipe (same files, same scores), its checks, its
grids, and scripts/demo.py end to end at a tiny scale."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adm.io.grid import by_class, save_grid
from adm.metrics import DomainClassifier
from adm.recipes.demo import best_row, real_digits, sample_scales, train_network
from adm.recipes.sample import sample

REPO = Path(__file__).resolve().parents[1]
SCORES = ("accuracy", "fid", "precision", "recall")


@pytest.fixture
def tiny_setup(tmp_path, tiny_ckpts) -> dict[str, Path]:
    """Tiny diffusion / classifier checkpoints (8x8 grey, 3 classes), a domain CNN, a labelled reference."""
    files = dict(tiny_ckpts)
    files["domain"] = tmp_path / "domain.pt"
    DomainClassifier(in_channels=1, image_size=8, num_classes=3, width=2).save(files["domain"])
    rng = np.random.default_rng(0)
    files["reference"] = tmp_path / "reference.npz"
    np.savez(
        files["reference"],
        arr_0=rng.integers(0, 256, (18, 8, 8, 1), dtype=np.uint8),
        arr_1=np.arange(18) % 3,
    )
    return files


DEMO = [
    "scales=[0,2]",
    "samples_per_class=4",
    "sample_batch_size=5",
    "seed=3",
    "sample_overrides=['sampler=ddim','sampler.steps=2','progress=false']",
]


def test_each_scale_is_a_sample_recipe_run(tiny_setup, tmp_path, compose, hydra_app):
    """The demo's samples and scores at a scale are exactly what scripts/sample.py writes for the same
    settings (per-sample seeds, labels 0, 1, 2 cycled, DDIM, domain-CNN scores against the same reference)."""
    files = tiny_setup
    rows = sample_scales(
        compose("demo", DEMO),
        model_ckpt=files["model"],
        classifier_ckpt=files["classifier"],
        domain_ckpt=files["domain"],
        reference=files["reference"],
        num_classes=3,
        out_dir=tmp_path / "demo",
    )
    assert [r["guidance_scale"] for r in rows] == [0.0, 2.0]
    for row in rows:
        scale = row["guidance_scale"]
        alone = tmp_path / f"alone_{scale:g}"
        sample(
            compose(
                "sample",
                overrides=[
                    f"ckpt={files['model']}",
                    f"classifier_ckpt={files['classifier']}",
                    f"guidance.scale={scale}",
                    "labels=[0,1,2]",
                    "num_samples=12",
                    "seed=3",
                    "sampler=ddim",
                    "sampler.steps=2",
                    "batch_size=5",
                    "progress=false",
                    f"evaluate.domain_ckpt={files['domain']}",
                    f"evaluate.reference={files['reference']}",
                    "evaluate.metrics=[accuracy,fid,precision,recall]",
                    f"paths.output_dir={alone}",
                    f"out_dir={alone}",
                ],
            )  # fmt: skip
        )
        demo_dir = Path(row["dir"])
        assert demo_dir == tmp_path / "demo" / f"scale_{scale:g}"
        ours = json.loads((demo_dir / "metrics.json").read_text())
        theirs = json.loads((alone / "metrics.json").read_text())
        for key in SCORES:
            assert ours[key] == theirs[key] and math.isfinite(ours[key])
            assert row[key] == ours[key]  # the summary row reads metrics.json
        assert ours["feature_extractor"] == "domain" and ours["guidance_scale"] == scale
        with (
            np.load(demo_dir / "samples_12x8x8x1.npz") as a,
            np.load(alone / "samples_12x8x8x1.npz") as b,
        ):
            np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
            assert a["arr_1"].tolist() == b["arr_1"].tolist() == [0, 1, 2] * 4
    # Guidance changed the images: the scales are different runs, not one set scored twice.
    with (
        np.load(rows[0]["dir"] + "/samples_12x8x8x1.npz") as a,
        np.load(rows[1]["dir"] + "/samples_12x8x8x1.npz") as b,
    ):
        assert not np.array_equal(a["arr_0"], b["arr_0"])


def test_classifier_of_another_noising_process_is_refused(
    tiny_setup, tmp_path, tiny_checkpoint, compose, hydra_app
):
    linear = tiny_checkpoint("classifier", overrides=["diffusion=linear"])
    with pytest.raises(ValueError, match="noising schedule=linear"):
        sample_scales(
            compose("demo", DEMO),
            model_ckpt=tiny_setup["model"],
            classifier_ckpt=linear,
            domain_ckpt=tiny_setup["domain"],
            reference=tiny_setup["reference"],
            num_classes=3,
            out_dir=tmp_path / "demo",
        )


def test_reuse_keeps_a_trained_network(tmp_path):
    run_dir = tmp_path / "runs" / "diffusion"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"trained")

    def must_not_train(cfg):
        raise AssertionError("reuse=true must not train again")

    assert train_network("train", ["experiment=demo_diffusion"], run_dir, must_not_train, True) == ckpt
    assert ckpt.read_bytes() == b"trained"


def test_class_rows_grid(tmp_path):
    labels = np.array([2, 0, 1, 2, 0, 2])
    images = np.stack([np.full((4, 4, 1), 10 * i, dtype=np.uint8) for i in range(6)])
    rows = by_class(images, labels, num_classes=4, columns=2)
    assert rows.shape == (8, 4, 4, 1) and rows.dtype == np.uint8
    # row k: the first two images labelled k, in order; white where a class has fewer (class 1: one, 3: none)
    assert [int(cell[0, 0, 0]) for cell in rows] == [10, 40, 20, 255, 0, 30, 255, 255]
    path = save_grid(rows, tmp_path / "grid.png", nrow=2)
    with Image.open(path) as grid:
        assert grid.size == (2 + 2 * 6, 2 + 4 * 6)
    with pytest.raises(ValueError, match="one label per image"):
        by_class(images, labels[:3], num_classes=3, columns=2)


def test_real_digits_follow_the_sample_labels():
    labels = np.array([1, 0, 0, 2, 1, 2, 0, 1, 2, 2])
    images = np.arange(10)
    x, y = real_digits(images, labels, num_classes=3, per_class=5)
    assert y.tolist() == [0, 1, 2] * 3  # 3 of each: the rarest class has 3
    assert x.tolist() == [1, 0, 3, 2, 4, 5, 6, 7, 8]


def test_best_row():
    rows = [
        {"guidance_scale": 0.0, "accuracy": 0.5, "fid": 3.0},
        {"guidance_scale": 2.0, "accuracy": 0.9, "fid": 2.0},
        {"guidance_scale": 4.0, "accuracy": 0.9, "fid": 1.0},
        {"guidance_scale": 8.0, "accuracy": 0.9, "fid": 1.0},
    ]
    assert best_row(rows)["guidance_scale"] == 4.0  # highest accuracy, then lower FID, then smaller scale
    with pytest.raises(ValueError, match="scales"):
        best_row([])


def test_demo_end_to_end_tiny(tmp_path):
    """scripts/demo.py through both training recipes at a few steps; outputs have the promised shapes."""
    out = tmp_path / "demo"
    steps = ["trainer.max_steps=2", "batch_size=4"]
    overrides = [
        f"output_dir={out}",
        "num_threads=1",
        "domain.epochs=1",
        "domain.num_train=200",
        "domain.num_reference=60",
        "samples_per_class=2",
        "scales=[0,4]",
        "grid_columns=3",
        f"sample_overrides={json.dumps(['sampler=ddim', 'sampler.steps=2', 'progress=false'])}",
        f"diffusion_overrides={json.dumps(steps)}",
        f"classifier_overrides={json.dumps(steps)}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["0", "4"]
    for scores in summary.values():
        assert set(scores) == set(SCORES)
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
        assert math.isfinite(scores["fid"]) and scores["fid"] >= 0
    table = proc.stdout[proc.stdout.rindex("guidance scale") :].splitlines()
    assert table[0].split() == ["guidance", "scale", "fid", "precision", "recall", "accuracy"]
    assert [line.split()[0] for line in table[2:5]] == ["0", "4", "real"]
    assert (out / "summary.csv").is_file() and (out / "summary.png").is_file()

    with Image.open(out / "samples_grid.png") as grid:
        assert grid.size == (2 + 3 * 30, 2 + 10 * 30)  # 3 columns, one 28-px row per class, 2-px padding
    for key in summary:
        assert (out / "grids" / f"scale_{key}.png").is_file()
        run = out / "samples" / f"scale_{key}"
        with np.load(run / "samples_20x28x28x1.npz") as npz:
            assert npz["arr_0"].shape == (20, 28, 28, 1) and npz["arr_0"].dtype == np.uint8
            assert npz["arr_1"].tolist() == list(range(10)) * 2
        metrics = json.loads((run / "metrics.json").read_text())
        assert {k: round(metrics[k], 4) for k in SCORES} == summary[key]
    with np.load(out / "reference.npz") as ref:
        assert ref["arr_0"].shape == (60, 28, 28, 1) and ref["arr_1"].shape == (60,)

    details = json.loads((out / "details.json").read_text())
    assert details["diffusion_steps_trained"] == 2 and details["classifier_steps_trained"] == 2
    assert details["best_scale"] in summary and details["samples_per_scale"] == 20
    for run in ("diffusion", "classifier"):
        assert (out / "runs" / run / "checkpoints" / "last.ckpt").is_file()
