"""Guided sampling sweeps and how the demo scores and shows them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.utils import make_grid

from adm.diffusion.gaussian import GaussianDiffusion
from adm.metrics.accuracy import class_accuracy
from adm.metrics.domain import DomainClassifier, DomainFeatureExtractor
from adm.metrics.fid import fid_from_features
from adm.metrics.images import ImageBatch
from adm.metrics.precision_recall import precision_recall
from adm.sampling import PerSampleNoise
from adm.sampling.guidance import Guidance

__all__ = [
    "METRICS",
    "DomainRuler",
    "balanced_labels",
    "best_scale",
    "class_grid",
    "draw_samples",
    "format_table",
]

METRICS = ("accuracy", "fid", "precision", "recall")


def balanced_labels(num_classes: int, per_class: int) -> torch.Tensor:
    """int64 (num_classes * per_class,): 0, 1, ..., K-1, 0, 1, ... (each class `per_class` times)."""
    if num_classes < 1 or per_class < 1:
        raise ValueError(f"need num_classes >= 1 and per_class >= 1, got {num_classes} and {per_class}")
    return torch.arange(num_classes, dtype=torch.int64).repeat(per_class)


def draw_samples(
    unet: nn.Module,
    diffusion: GaussianDiffusion,
    labels: torch.Tensor,
    seeds: Sequence[int],
    *,
    sampler: Callable[..., torch.Tensor],
    guidance: Guidance | None,
    batch_size: int,
    progress: bool = False,
) -> torch.Tensor:
    """Class-conditional samples, sample i from its own seed (the same images for any batch size).

    Args:
        unet: class-conditional network ``unet(x_t, t_model, y)`` (in eval mode), image size and channels as
            ``unet.image_size`` / ``unet.in_channels``.
        diffusion: the process it was trained on (the sampler respaces it).
        labels: int64 (N,) class of each sample. seeds: N integers.
        sampler: ``sampler(model_fn, diffusion, x_T, model_kwargs=..., guidance=..., noise=...)`` with its
            options bound (e.g. ``functools.partial(ddim_sample, steps=25, eta=0.0)``).
        guidance: e.g. ``ClassifierGuidance(classifier, scale)``, or None.
        batch_size: samples per sampler call.
    Returns:
        x_0: float (N, C, H, W) in [-1, 1], on the CPU.
    """
    if len(seeds) != len(labels):
        raise ValueError(f"need one seed per label, got {len(seeds)} seeds for {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(unet.parameters()).device
    shape = (unet.in_channels, unet.image_size, unet.image_size)
    out = []
    for start in range(0, len(labels), batch_size):
        noise = PerSampleNoise(seeds[start : start + batch_size])
        y = labels[start : start + batch_size].to(device)
        x_T = noise.initial(shape, device=device)
        x_0 = sampler(
            unet, diffusion, x_T, model_kwargs={"y": y}, guidance=guidance, noise=noise, progress=progress
        )
        out.append(x_0.float().clamp(-1, 1).cpu())
    return torch.cat(out)


class DomainRuler:
    """Scores images with a classifier trained on the real data (independent of the diffusion model).

    Args:
        classifier: a trained :class:`~adm.metrics.domain.DomainClassifier`.
        reference: real images (uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]) the samples are compared
            with; hold them out of every network's training.
        reference_labels: their classes (N,), to report the classifier's accuracy on real images.
    """

    def __init__(
        self, classifier: DomainClassifier, reference: ImageBatch, reference_labels: np.ndarray | None
    ):
        # eval() on the wrapper too: feature extraction restores the wrapper's mode, and with it the CNN's.
        self.extractor = DomainFeatureExtractor(classifier).eval()
        features = self.extractor.features(reference)
        self.reference_pool = features["pool"]  # (N, D)
        self.reference_accuracy = (
            None if reference_labels is None else class_accuracy(features["logits"], reference_labels)
        )

    def score(self, images: ImageBatch, labels: np.ndarray | torch.Tensor) -> dict[str, float]:
        """{"accuracy": share classified as their label, "fid", "precision", "recall"} vs the reference.

        Args:
            images: (M, C, H, W) float in [-1, 1] or uint8 (M, H, W, C). labels: (M,) requested classes.
        """
        features = self.extractor.features(images)
        precision, recall = precision_recall(self.reference_pool, features["pool"])
        return {
            "accuracy": class_accuracy(features["logits"].cpu(), torch.as_tensor(labels)),
            "fid": fid_from_features(features["pool"], self.reference_pool),
            "precision": precision,
            "recall": recall,
        }


def class_grid(images: torch.Tensor, labels: torch.Tensor, num_classes: int, columns: int) -> torch.Tensor:
    """One row per class (row k: the first `columns` images labelled k; white cells where fewer exist).

    Args:
        images: float (N, C, H, W) in [-1, 1]. labels: int64 (N,).
    Returns:
        (3, 2 + num_classes * (H + 2), 2 + columns * (W + 2)) float in [0, 1] (torchvision's ``make_grid``,
        2-pixel white padding), ready for ``save_image``.
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    blank = torch.ones_like(images[:1])
    cells = []
    for k in range(num_classes):
        row = images[labels == k][:columns]
        cells.append(torch.cat([row, blank.expand(columns - len(row), -1, -1, -1)]))
    cells = (torch.cat(cells) + 1) / 2
    return make_grid(cells, nrow=columns, padding=2, pad_value=1.0)


def best_scale(summary: Mapping[str, Mapping[str, float]]) -> str:
    """The key of the highest accuracy (ties: lower FID, then the smaller scale)."""
    if not summary:
        raise ValueError("no scales to choose from")
    return min(summary, key=lambda k: (-summary[k]["accuracy"], summary[k]["fid"], float(k)))


def format_table(rows: Mapping[str, Mapping[str, float]], first_column: str = "scale") -> str:
    """Plain-text table: one row per key, columns accuracy / fid / precision / recall (NaN shown as '-')."""
    header = f"{first_column:>10} " + " ".join(f"{m:>10}" for m in METRICS)
    lines = [header, "-" * len(header)]
    for key, scores in rows.items():
        cells = []
        for m in METRICS:
            v = scores.get(m, math.nan)
            cells.append(f"{'-':>10}" if v is None or math.isnan(v) else f"{v:>10.3f}")
        lines.append(f"{key:>10} " + " ".join(cells))
    return "\n".join(lines)
