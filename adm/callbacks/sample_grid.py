"""Sample a fixed grid (same seeds, same labels) every N steps with the EMA weights and log it everywhere."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from adm.callbacks.ema import EMA
from adm.sampling import PerSampleNoise

__all__ = ["SampleGrid"]


class SampleGrid(Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training) draw `num_samples` images.

    Sample i always starts from seed ``seed + i`` (``adm.sampling.PerSampleNoise``) and gets label
    ``labels[i]``, so grids from different steps show the same samples as training goes on. The network is the
    EMA one of the :class:`~adm.callbacks.ema.EMA` callback when present (its first rate), else the raw one;
    the process is the module's ``diffusion``. The grid is written to ``dirpath/step_XXXXXXX.png`` and
    logged to every logger that takes images (TensorBoard, W&B). Only global rank 0 samples.

    Args:
        every_n_steps: sampling period in optimizer steps (0: only at the end of training).
        num_samples: images per grid.
        seed: seed of sample 0.
        labels: class of each sample (cycled), or None for 0, 1, 2, ... cycling through the classes;
            ignored for unconditional models.
        sampler: ``sampler(model_fn, diffusion, x_T, model_kwargs=..., noise=...) -> x_0`` from adm.sampling,
            with its options bound (e.g. ``functools.partial(ddim_sample, steps=50, eta=0.0)``).
        nrow: images per grid row (None: the number of classes for class-conditional models, else sqrt(n)).
        dirpath: folder for the PNG files (None: none written).
    """

    def __init__(
        self,
        *,
        every_n_steps: int,
        num_samples: int,
        seed: int,
        labels: Sequence[int] | None,
        sampler: Callable[..., torch.Tensor],
        nrow: int | None,
        dirpath: str | None,
    ):
        if every_n_steps < 0 or num_samples < 1:
            raise ValueError(
                f"need every_n_steps >= 0 and num_samples >= 1, got {every_n_steps}, {num_samples}"
            )
        self.every_n_steps = int(every_n_steps)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.sampler = sampler
        self.nrow = nrow
        self.dirpath = None if dirpath is None else Path(dirpath)
        self._last_step = -1

    def _network(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        for cb in trainer.callbacks:
            if isinstance(cb, EMA) and cb._average_model is not None:
                return cb.averaged_module().unet
        return pl_module.unet

    @torch.no_grad()
    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """The grid's images x_0: float (num_samples, C, H, W) in [-1, 1]."""
        unet = self._network(trainer, pl_module)
        device = pl_module.device
        noise = PerSampleNoise(range(self.seed, self.seed + self.num_samples))
        x_T = noise.initial((unet.in_channels, unet.image_size, unet.image_size), device=device)
        model_kwargs: dict[str, Any] = {}
        if unet.num_classes is not None:
            labels = self.labels if self.labels else list(range(unet.num_classes))
            y = [labels[i % len(labels)] for i in range(self.num_samples)]
            model_kwargs["y"] = torch.tensor(y, dtype=torch.int64, device=device)
        was_training = unet.training
        unet.eval()
        try:
            x_0 = self.sampler(unet, pl_module.diffusion, x_T, model_kwargs=model_kwargs, noise=noise)
        finally:
            unet.train(was_training)
        return x_0.float().clamp(-1, 1)

    def _grid(self, x_0: torch.Tensor, num_classes: int | None) -> torch.Tensor:
        nrow = self.nrow
        if nrow is None:
            nrow = num_classes if num_classes and self.labels is None else math.ceil(math.sqrt(len(x_0)))
        return make_grid((x_0.cpu() + 1) / 2, nrow=min(nrow, len(x_0)), padding=2, pad_value=1.0)

    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return
        x_0 = self.sample(trainer, pl_module)
        grid = self._grid(x_0, self._network(trainer, pl_module).num_classes)  # (3, H, W) in [0, 1]
        if self.dirpath is not None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            save_image(grid, self.dirpath / f"step_{step:07d}.png")
        image = (grid * 255).round().to(torch.uint8)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", image, global_step=step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key="samples", images=[image.permute(1, 2, 0).numpy()], step=step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > self._last_step and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)
