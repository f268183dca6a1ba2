"""FID (and precision / recall, IS, class accuracy) of samples drawn during training with the EMA weights.

Every `every_n_steps` optimizer steps (and once at the end of training) the callback draws `num_samples`
images with the EMA network (the first rate of the :class:`~adm.callbacks.ema.EMA` callback; the raw
network without one), extracts their features and scores them against a reference set (features computed
once):

- the reference is a reference batch ``.npz`` (``reference=PATH``: images and / or precomputed Inception
  statistics) or, by default, real images of the datamodule (``reference_images(num_reference, split)``);
- the features come from any :class:`~adm.metrics.FeatureExtractor`: Inception for natural images, the
  domain classifier (:class:`~adm.metrics.DomainFeatureExtractor`) for MNIST-sized data (which also gives
  class accuracy: does the model draw the class it was asked for?).

Sample i always has the noise seed ``sample_seed(seed, i)`` (the seed rule of ``scripts/sample.py`` and
``ADM.infer``) and label ``i % num_classes``, so scores at different steps compare the same noise. A module
whose network conditions on images (an upsampler: ``pl_module.conditions_on_images``) upsamples the first
`num_samples` real images of the datamodule's `reference_split` instead (their ``pl_module.model_kwargs``),
with their labels. With several processes each rank draws a contiguous share of the
samples, the features are gathered, rank 0 scores them and broadcasts the numbers, which every rank logs as
``sample/fid``, ``sample/precision``, ... . Nothing touches the global random streams (training stays
bit-reproducible). Rank 0 shows a transient progress bar over its samples while it draws (when the trainer
shows progress) and logs one line with the scores and where they were written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger

from adm.callbacks.progress import sampling_tqdm
from adm.callbacks.sample_grid import sample_conditioning, sampling_network
from adm.metrics import FeatureExtractor, FeatureSet, compute_metrics, extract_features, reference_features
from adm.metrics.evaluate import METRIC_KINDS, resolve_metrics
from adm.metrics.names import NEEDS_REFERENCE
from adm.sampling import draw_images, sample_seed

__all__ = ["FIDCallback"]

log = logging.getLogger(__name__)

_NEED_REFERENCE = NEEDS_REFERENCE  # the others (IS, accuracy) read the samples only


class FIDCallback(Callback):
    """Score `num_samples` EMA samples against a reference set every `every_n_steps` steps.

    Args:
        every_n_steps: period in optimizer steps (0: only at the end of training).
        num_samples: images drawn per evaluation (all ranks together).
        batch_size: images per sampler call on each rank.
        seed: the run seed of the samples (sample i: ``sample_seed(seed, i)``).
        sampler: ``sampler(model_fn, diffusion, x_T, model_kwargs=..., noise=...) -> x_0`` with its options
            bound (e.g. ``functools.partial(ddim_sample, steps=25, spacing="strided")``: few steps keep it
            cheap).
        feature_extractor: a :class:`~adm.metrics.FeatureExtractor` (moved to the module's device).
        reference: reference batch ``.npz`` (OpenAI's format), or None for the datamodule's real images.
        num_reference: images of the datamodule's `reference_split` used when `reference` is None.
        reference_split: "train", "val" or "all"; also where an upsampler's low-res inputs come from.
        metrics: names from ``adm.metrics.METRICS``; None: those the extractor supports ("accuracy" needs a
            class-conditional model and a domain classifier).
    """

    def __init__(
        self,
        *,
        every_n_steps: int,
        num_samples: int,
        batch_size: int,
        seed: int,
        sampler: Callable[..., torch.Tensor],
        feature_extractor: FeatureExtractor,
        reference: str | None,
        num_reference: int,
        reference_split: str,
        metrics: Sequence[str] | None,
    ) -> None:
        if every_n_steps < 0 or num_samples < 4 or batch_size < 1:
            raise ValueError(
                f"need every_n_steps >= 0, num_samples >= 4 (precision / recall use k = 3 neighbours) and "
                f"batch_size >= 1; got {every_n_steps}, {num_samples}, {batch_size}"
            )
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.sampler = sampler
        self.extractor = feature_extractor
        self.reference = reference
        self.num_reference = int(num_reference)
        self.reference_split = reference_split
        self.requested_metrics = None if metrics is None else [str(m) for m in metrics]
        self.metrics = resolve_metrics(feature_extractor, self.requested_metrics)
        self._reference_features: FeatureSet | None = None
        self._conditioning: tuple[torch.Tensor | None, dict[str, torch.Tensor]] | None = None
        self._last_step = -1
        self.last_scores: dict[str, float] = {}
        self.last_seconds = 0.0

    # --- pieces -------------------------------------------------------------------------------------------
    def _network(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        return sampling_network(trainer, pl_module)

    def conditioning(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, net: torch.nn.Module
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Labels (num_samples,) and further conditioning of all samples (computed once, then kept)."""
        if self._conditioning is None:
            classes = net.num_classes  # the data's classes (sampling_network)
            labels = None if classes is None else list(range(classes))  # label of sample i: i % num_classes
            self._conditioning = sample_conditioning(
                trainer,
                pl_module,
                net,
                self.num_samples,
                seed=self.seed,
                labels=labels,
                split=self.reference_split,
            )
        return self._conditioning

    def _metrics_for(self, unet: torch.nn.Module) -> list[str]:
        if unet.num_classes is None and "accuracy" in self.metrics:
            if self.requested_metrics is not None:
                raise ValueError(
                    "metric 'accuracy' needs a class-conditional model (the samples have no labels)"
                )
            return [m for m in self.metrics if m != "accuracy"]
        return self.metrics

    def reference_features(self, trainer: pl.Trainer) -> FeatureSet:
        """Features of the reference set (computed on the first call, then kept)."""
        if self._reference_features is None:
            start = time.perf_counter()
            metrics = [m for m in self.metrics if m in _NEED_REFERENCE]
            if self.reference is not None:
                if not Path(self.reference).is_file():
                    raise FileNotFoundError(f"FID reference batch not found: {self.reference}")
                feats = reference_features(
                    self.reference, self.extractor, metrics, batch_size=self.batch_size
                )
            else:
                datamodule = trainer.datamodule
                if datamodule is None or not hasattr(datamodule, "reference_images"):
                    raise ValueError(
                        "the FID callback needs reference=PATH (a reference batch .npz) or a datamodule with "
                        "reference_images(n, split)"
                    )
                images = datamodule.reference_images(self.num_reference, self.reference_split)
                kinds = sorted({METRIC_KINDS[m] for m in metrics})
                feats = extract_features(images, self.extractor, kinds, batch_size=self.batch_size)
            self._reference_features = feats
            log.info("FID reference: %d images, features in %.1f s", len(feats), time.perf_counter() - start)
        return self._reference_features

    def share(self, rank: int, world_size: int) -> range:
        """Sample indices drawn by `rank`: a contiguous block of ceil(num_samples / world_size)."""
        per = math.ceil(self.num_samples / world_size)
        return range(min(rank * per, self.num_samples), min((rank + 1) * per, self.num_samples))

    @torch.no_grad()
    def sample_features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, indices: range, kinds: Sequence[str]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Features {kind: (n, D)} of samples `indices` on this rank, their labels (n,) or None."""
        net = self._network(trainer, pl_module)
        device = pl_module.device
        all_labels, all_conditioning = self.conditioning(trainer, pl_module, net)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
        label_parts = []
        with sampling_tqdm(trainer, total=len(indices), desc="FID samples", unit="img") as bar:
            for first in range(indices.start, indices.stop, self.batch_size):
                rows = slice(first, min(first + self.batch_size, indices.stop))
                labels = None if all_labels is None else all_labels[rows]
                x_0 = draw_images(
                    net,
                    pl_module.diffusion,
                    self.sampler,
                    [sample_seed(self.seed, i) for i in range(rows.start, rows.stop)],
                    labels=labels,
                    conditioning={name: value[rows] for name, value in all_conditioning.items()},
                    device=device,
                    autocast=trainer.precision_plugin.forward_context,
                )
                feats = self.extractor.features(x_0)
                for k in kinds:
                    parts[k].append(feats[k].to(device))
                if labels is not None and net.num_classes is not None:
                    label_parts.append(labels.to(device))
                bar.update(rows.stop - rows.start)
        out = {k: torch.cat(v) if v else torch.zeros(0, device=device) for k, v in parts.items()}
        labels = torch.cat(label_parts) if label_parts else None
        return out, labels

    def _gather(self, trainer: pl.Trainer, value: torch.Tensor, count: int) -> np.ndarray:
        """Concatenate every rank's rows (padded to the same count for the collective) in rank order."""
        world = trainer.world_size
        if world == 1:
            return value.cpu().numpy()
        per = math.ceil(self.num_samples / world)
        padded = torch.zeros((per, *value.shape[1:]), dtype=value.dtype, device=value.device)
        padded[: len(value)] = value
        gathered = trainer.strategy.all_gather(padded)  # (world, per, ...)
        rows = [gathered[r, : len(self.share(r, world))] for r in range(world)]
        return torch.cat(rows)[:count].cpu().numpy()

    # --- one evaluation -----------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Draw, extract, gather, score (rank 0), broadcast: {"sample/<metric>": value} on all ranks."""
        start = time.perf_counter()
        self._last_step = trainer.global_step
        if trainer.world_size > self.num_samples:
            raise ValueError(
                f"num_samples={self.num_samples} is fewer than the {trainer.world_size} processes"
            )
        self.extractor.to(pl_module.device)
        unet = self._network(trainer, pl_module)
        metrics = self._metrics_for(unet)
        kinds = sorted({METRIC_KINDS[m] for m in metrics})
        mine = self.share(trainer.global_rank, trainer.world_size)
        feats, labels = self.sample_features(trainer, pl_module, mine, kinds)
        gathered = {k: self._gather(trainer, v, self.num_samples) for k, v in feats.items()}
        all_labels = self._gather(trainer, labels, self.num_samples) if labels is not None else None
        scores: dict[str, float] = {}
        if trainer.is_global_zero:
            samples = FeatureSet(
                extractor=self.extractor.name, features=gathered, labels=all_labels, count=self.num_samples
            )
            needs_reference = any(m in _NEED_REFERENCE for m in metrics)
            reference = self.reference_features(trainer) if needs_reference else None
            scores = {
                f"sample/{k}": float(v) for k, v in compute_metrics(samples, reference, metrics).items()
            }
        scores = trainer.strategy.broadcast(scores, src=0)
        self.last_scores = scores
        self.last_seconds = time.perf_counter() - start
        return scores

    # --- hooks --------------------------------------------------------------------------------------------
    def _publish(self, trainer: pl.Trainer, scores: dict[str, float]) -> None:
        """Scores to every logger (rank 0) at the current step and to callback_metrics (for monitoring);
        rank 0 logs one line with the scores and where they went."""
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scores.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(scores, step=trainer.global_step)
            log.info(scores_line(trainer.global_step, scores, trainer.loggers, self.last_seconds))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > self._last_step and step % self.every_n_steps == 0:
            self._publish(trainer, self.evaluate(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._publish(trainer, self.evaluate(trainer, pl_module))
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.save()


def logger_destination(logger: Logger) -> str:
    """Where a logger writes its metrics, in words: the CSV file, the TensorBoard folder, the W&B run."""
    if isinstance(logger, CSVLogger):
        return str(Path(logger.log_dir) / "metrics.csv")
    if isinstance(logger, TensorBoardLogger):
        return f"TensorBoard ({logger.log_dir})"
    if isinstance(logger, WandbLogger):
        return f"W&B run {logger.name}/{logger.version}"
    return type(logger).__name__


def scores_line(step: int, scores: dict[str, float], loggers: Sequence[Logger], seconds: float) -> str:
    """The log line: ``FID at step 600: 12.3 (sample/fid); sample/precision 0.61, ...; logged to WHERE``."""
    rest = {k: v for k, v in scores.items() if k != "sample/fid"}
    if "sample/fid" in scores:
        head = f"FID at step {step}: {scores['sample/fid']:.4g} (sample/fid)"
    else:
        head = f"Sample metrics at step {step}"
    if rest:
        head += "; " if "sample/fid" in scores else ": "
        head += ", ".join(f"{k} {v:.4g}" for k, v in rest.items())
    where = ", ".join(logger_destination(lg) for lg in loggers) or "no logger (trainer.callback_metrics only)"
    return f"{head}; logged to {where} ({seconds:.1f} s)"
