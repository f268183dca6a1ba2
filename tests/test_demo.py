"""The guidance demo: its pieces against hand-built cases, and scripts/demo.py end to end at a tiny scale."""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from adm.demo import DomainRuler, balanced_labels, best_scale, class_grid, draw_samples, format_table
from adm.diffusion import create_diffusion
from adm.metrics.domain import DomainClassifier
from adm.sampling import ClassifierGuidance, ddim_sample

REPO = Path(__file__).resolve().parents[1]


class ConstantEps(nn.Module):
    """A stand-in UNet predicting eps = 0.1 * x_t + 0.05 * y (depends on the label, nothing else)."""

    in_channels, image_size, num_classes = 1, 6, 3

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        return 0.1 * x + 0.05 * y.float().view(-1, 1, 1, 1) + self.anchor


class MeanClassifier(nn.Module):
    """Noisy-classifier stand-in: logits = (mean of x) * [0, 1, 2] (guidance pushes class 2 up, 0 down)."""

    def forward(self, x, t):
        return x.mean(dim=(1, 2, 3))[:, None] * torch.arange(3.0)


def test_balanced_labels():
    y = balanced_labels(4, 3)
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 3] * 3
    with pytest.raises(ValueError, match="per_class"):
        balanced_labels(4, 0)


def test_draw_samples_independent_of_batch_size_and_guided():
    diffusion = create_diffusion(steps=50, noise_schedule="cosine", learn_sigma=False)
    # eta > 0: the per-sample noise enters every step.
    sampler = functools.partial(ddim_sample, steps=5, eta=0.5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    seeds = [10 + i for i in range(7)]
    unet = ConstantEps()
    common = dict(sampler=sampler, guidance=None)
    a = draw_samples(unet, diffusion, labels, seeds, batch_size=7, **common)
    b = draw_samples(unet, diffusion, labels, seeds, batch_size=3, **common)
    assert a.shape == (7, 1, 6, 6) and a.abs().max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Scale 0 is exactly unguided; a positive scale moves class-2 samples up and class-0 samples down.
    zero = draw_samples(
        unet,
        diffusion,
        labels,
        seeds,
        batch_size=7,
        sampler=sampler,
        guidance=ClassifierGuidance(MeanClassifier(), 0.0),
    )
    torch.testing.assert_close(zero, a, rtol=0, atol=0)
    guided = draw_samples(
        unet,
        diffusion,
        labels,
        seeds,
        batch_size=7,
        sampler=sampler,
        guidance=ClassifierGuidance(MeanClassifier(), 20.0),
    )
    shift = (guided - a).mean(dim=(1, 2, 3))
    assert (shift[labels == 2] > 0).all() and (shift[labels == 0] < 0).all()
    with pytest.raises(ValueError, match="one seed per label"):
        draw_samples(unet, diffusion, labels, seeds[:3], batch_size=7, **common)


def test_class_grid_rows_are_classes():
    labels = torch.tensor([2, 0, 1, 2, 0, 2])
    # Class k is a flat image at k - 1 in [-1, 1], i.e. k / 2 in the grid's [0, 1].
    images = (labels.float() - 1).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()
    grid = class_grid(images, labels, num_classes=3, columns=2)
    assert grid.shape == (3, 2 + 3 * 6, 2 + 2 * 6)
    for k in range(3):
        for c in range(2):
            cell = grid[:, 2 + 6 * k : 6 + 6 * k, 2 + 6 * c : 6 + 6 * c]
            count = int((labels == k).sum())
            expected = k / 2 if c < count else 1.0  # white where the class has fewer images than columns
            torch.testing.assert_close(cell, torch.full_like(cell, expected))


def test_best_scale_and_table():
    summary = {
        "0": {"accuracy": 0.5, "fid": 3.0, "precision": 0.5, "recall": 0.6},
        "2": {"accuracy": 0.9, "fid": 2.0, "precision": 0.7, "recall": 0.5},
        "4": {"accuracy": 0.9, "fid": 1.0, "precision": 0.8, "recall": 0.4},
        "8": {"accuracy": 0.9, "fid": 1.0, "precision": 0.9, "recall": 0.3},
    }
    assert best_scale(summary) == "4"  # highest accuracy, then lower FID, then the smaller scale
    table = format_table(
        {**summary, "real": {"accuracy": 0.99, "fid": math.nan, "precision": 1, "recall": 1}}
    )
    lines = table.splitlines()
    assert lines[0].split() == ["scale", "accuracy", "fid", "precision", "recall"]
    assert lines[3].split() == ["2", "0.900", "2.000", "0.700", "0.500"]
    assert lines[-1].split() == ["real", "0.990", "-", "1.000", "1.000"]


def test_domain_ruler_against_itself():
    """Samples equal to the reference: FID 0, precision = recall = 1, accuracy = the CNN's own argmax rate."""
    torch.manual_seed(0)
    cnn = DomainClassifier(1, 8, 3, width=4).eval()
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    labels = torch.arange(40) % 3
    ruler = DomainRuler(cnn, images, labels.numpy())
    scores = ruler.score(images, labels)
    assert set(scores) == {"accuracy", "fid", "precision", "recall"}
    assert abs(scores["fid"]) < 1e-6 and scores["precision"] == 1.0 and scores["recall"] == 1.0
    assert not cnn.training  # scoring leaves the CNN in eval mode
    with torch.no_grad():
        quantised = (((images + 1) * 127.5).clamp(0, 255).to(torch.uint8).float() / 127.5) - 1
        expected = (cnn(quantised).argmax(1) == labels).double().mean().item()
    assert scores["accuracy"] == pytest.approx(expected) == pytest.approx(ruler.reference_accuracy)
    # Forty copies of one image: a point mass f, so FID = |mu_ref - f|^2 + tr(Sigma_ref) and recall = 0.
    blank = ruler.score(torch.ones_like(images), labels)
    with torch.no_grad():
        ref = cnn.features(quantised).double().numpy()
        f = cnn.features(torch.ones_like(images[:1])).double().numpy()[0]
    closed_form = ((ref.mean(0) - f) ** 2).sum() + np.trace(np.cov(ref, rowvar=False))
    assert blank["fid"] == pytest.approx(closed_form, rel=1e-4) and blank["recall"] == 0.0


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
        "sampler.steps=ddim2",
        "grid_columns=3",
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
        assert set(scores) == {"accuracy", "fid", "precision", "recall"}
        assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
        assert math.isfinite(scores["fid"]) and scores["fid"] >= 0
    assert "accuracy" in proc.stdout and "real" in proc.stdout  # the printed table

    with Image.open(out / "samples_grid.png") as grid:
        assert grid.size == (2 + 3 * 30, 2 + 10 * 30)  # 3 columns, one 28-px row per class, 2-px padding
    for key in summary:
        assert (out / "grids" / f"scale_{key}.png").is_file()
        npz = np.load(out / "samples" / f"scale_{key}.npz")
        assert npz["arr_0"].shape == (20, 28, 28, 1) and npz["arr_0"].dtype == np.uint8
        assert np.bincount(npz["arr_1"], minlength=10).tolist() == [2] * 10

    details = json.loads((out / "details.json").read_text())
    assert details["diffusion_steps_trained"] == 2 and details["classifier_steps_trained"] == 2
    assert details["best_scale"] in summary
    for run in ("diffusion", "classifier"):
        assert (out / "runs" / run / "checkpoints" / "last.ckpt").is_file()
