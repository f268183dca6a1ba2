"""Sample a fixed grid (same seeds, same labels) every N steps with the EMA weights and log it everywhere."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from adm.callbacks.ema import EMA
from adm.callbacks.progress import sampling_tqdm
from adm.io.grid import grid_image, label_captions, save_grid
from adm.io.images import from_uint8, to_uint8
from adm.sampling import LabelPlan, draw_images, plan_guidance, sample_seed

__all__ = ["SampleGrid", "class_names", "sampling_network", "sample_conditioning"]

log = logging.getLogger(__name__)


def sampling_network(trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
    """The network callbacks sample with: the EMA one of the first :class:`EMA` rate, else the raw one, as
    :func:`adm.sampling.plan_guidance` has it drawn unguided (a network trained with a null label is seen as
    a network of the data's classes, so labels never draw the null one)."""
    net = pl_module.unet
    for cb in trainer.callbacks:
        if isinstance(cb, EMA) and cb._average_model is not None:
            net = cb.averaged_module().unet
            break
    return plan_guidance(None, 0.0, network=net, null_label=getattr(pl_module, "null_label", None)).network


def sample_conditioning(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    net: torch.nn.Module,
    count: int,
    *,
    seed: int,
    labels: Sequence[int] | None,
    split: str,
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Labels (count,) and further conditioning {name: (count, ...)} of samples 0..count-1 drawn in training.

    A module whose network conditions on images (``pl_module.conditions_on_images``, e.g. an upsampler)
    gets the first `count` real images of the datamodule's `split` (``reference_batch``) and their
    ``pl_module.model_kwargs((x_0, y))`` (``low_res``, and the labels when the network is class-conditional).
    Otherwise a class-conditional network gets ``labels`` cycled (default: 0, 1, 2, ... through its classes)
    and an unconditional one nothing. The same call gives the same conditioning: samples compare across
    steps.
    """
    if getattr(pl_module, "conditions_on_images", False):
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "reference_batch"):
            raise ValueError(
                f"{type(pl_module).__name__} conditions its samples on real images: train it with a "
                "datamodule that has reference_batch(n, split) (adm.data's datamodules do)"
            )
        images, y = datamodule.reference_batch(count, split)
        batch = (from_uint8(images), torch.as_tensor(y, dtype=torch.int64))
        kwargs = dict(pl_module.model_kwargs(batch))
        return kwargs.pop("y", None), kwargs
    if net.num_classes is None:
        return None, {}
    classes = net.num_classes  # the data's classes (sampling_network)
    spec = list(labels) if labels else list(range(classes))
    return torch.from_numpy(LabelPlan(spec, classes, seed)(range(count))), {}


def class_names(trainer: pl.Trainer | None, pl_module: pl.LightningModule) -> list[str] | None:
    """The data's class names (index order): the datamodule's ``class_names``, else the module's checkpoint
    config (``adm_config["data"]["class_names"]``); None when neither knows them."""
    names = getattr(getattr(trainer, "datamodule", None), "class_names", None)
    if names is None:
        config = getattr(pl_module, "adm_config", None) or {}
        names = (config.get("data") or {}).get("class_names")
    return None if names is None else [str(n) for n in names]


def sampler_steps(sampler: Callable[..., Any], num_timesteps: int) -> int | None:
    """Network calls a sampler with bound options makes per batch, when its ``steps`` option tells (an int,
    per-section counts, or none: every step of the process); None when it cannot be told."""
    if not isinstance(sampler, functools.partial):
        return None
    steps = sampler.keywords.get("steps")
    if steps is None:
        return int(num_timesteps)
    if isinstance(steps, int):
        return steps
    if isinstance(steps, Sequence) and all(isinstance(v, int) for v in steps):
        return sum(steps)
    return None


@contextlib.contextmanager
def counting_calls(net: torch.nn.Module, bar: Any) -> Iterator[None]:
    """Advance `bar` by one on every forward call of `net` (one sampler step of a batch) while inside."""

    def step_done(*_: Any) -> None:  # a forward hook's return value would replace the output: none here
        bar.update(1)

    handle = net.register_forward_hook(step_done)
    try:
        yield
    finally:
        handle.remove()


class SampleGrid(Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training) draw `num_samples` images.

    Sample i always has the noise seed ``sample_seed(seed, i)`` (the seed rule of ``scripts/sample.py`` and
    ``ADM.infer``) and gets label ``labels[i % len(labels)]``, so grids from different steps show the same
    samples as training goes on, and the grid shows what ``scripts/sample.py`` would draw with the same
    seed, labels and sampler. A module whose network conditions on images (an upsampler) is given the first
    `num_samples` real images of the datamodule's `split` instead (:func:`sample_conditioning`). The network
    is the EMA one of the :class:`~adm.callbacks.ema.EMA` callback when present (its first rate), else the
    raw one; the process is the module's ``diffusion``. The grid is written to ``dirpath/step_XXXXXXX.png``
    and logged to every logger that takes images (TensorBoard, W&B); one log line tells where. Only global
    rank 0 samples, with a transient progress bar over the sampler's steps when the trainer shows progress.

    Grids of labelled samples carry captions: each image's class name (the datamodule's ``class_names``, or
    the checkpoint config's), or its label index when the data has no names. They are drawn under the
    images (``captions=False``: not drawn) and, on W&B, also given as the image's caption (row by row).

    Args:
        every_n_steps: sampling period in optimizer steps (0: only at the end of training).
        num_samples: images per grid.
        seed: the grid's run seed (sample i: ``sample_seed(seed, i)``).
        labels: class of each sample (cycled), or None for 0, 1, 2, ... cycling through the classes;
            ignored for unconditional models and for upsamplers (their real images bring their labels).
        sampler: ``sampler(model_fn, diffusion, x_T, model_kwargs=..., noise=...) -> x_0`` from adm.sampling,
            with its options bound (e.g. ``functools.partial(ddim_sample, steps=50, eta=0.0)``).
        nrow: images per grid row (None: the number of classes for class-conditional models, else sqrt(n)).
        dirpath: folder for the PNG files (None: none written).
        split: datamodule split of the real images an upsampler's grid is conditioned on ("train", "val",
            "all").
        captions: draw each image's class name (or label) under it; no effect for unconditional models.
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
        split: str,
        captions: bool = True,
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
        self.split = str(split)
        self.captions = bool(captions)
        self._last_step = -1
        self.last_path: Path | None = None

    def _network(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.nn.Module:
        return sampling_network(trainer, pl_module)

    @torch.no_grad()
    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> torch.Tensor:
        """The grid's images x_0: float (num_samples, C, H, W) in [-1, 1]."""
        return self.draw(trainer, pl_module)[0]

    @torch.no_grad()
    def draw(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The grid's images x_0 (float (num_samples, C, H, W) in [-1, 1]) and their labels (or None)."""
        net = self._network(trainer, pl_module)
        labels, conditioning = sample_conditioning(
            trainer, pl_module, net, self.num_samples, seed=self.seed, labels=self.labels, split=self.split
        )
        steps = sampler_steps(self.sampler, pl_module.diffusion.num_timesteps)
        bar = sampling_tqdm(trainer, total=steps, desc="Sample grid", unit="step")
        with bar, counting_calls(net, bar):
            x_0 = draw_images(
                net,
                pl_module.diffusion,
                self.sampler,
                [sample_seed(self.seed, i) for i in range(self.num_samples)],
                labels=labels,
                conditioning=conditioning,
                device=pl_module.device,
                autocast=trainer.precision_plugin.forward_context,
            )
        return x_0, labels

    def _nrow(self, count: int, num_classes: int | None) -> int:
        if self.nrow is not None:
            return self.nrow
        return num_classes if num_classes and self.labels is None else math.ceil(math.sqrt(count))

    def log_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        if not trainer.is_global_zero:
            return
        x_0, labels = self.draw(trainer, pl_module)
        # Quantised as sample files are, so the grid shows exactly the images scripts/sample.py writes.
        images = to_uint8(x_0)
        # One row per class when the labels cycle through the classes (not for real images' labels).
        cycling = not getattr(pl_module, "conditions_on_images", False)
        num_classes = self._network(trainer, pl_module).num_classes if cycling else None
        nrow = self._nrow(len(images), num_classes)
        names = None if labels is None else label_captions(labels, class_names(trainer, pl_module))
        drawn = names if self.captions else None
        written = []
        if self.dirpath is not None:
            path = save_grid(images, self.dirpath / f"step_{step:07d}.png", nrow=nrow, captions=drawn)
            self.last_path = path
            written.append(str(path))
        grid = grid_image(images, nrow=nrow, captions=drawn)  # (H, W, C) uint8
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=step, dataformats="HWC")
                written.append(f"TensorBoard ({logger.log_dir})")
            elif isinstance(logger, WandbLogger):
                extra = {} if names is None else {"caption": [rows_caption(names, min(nrow, len(names)))]}
                logger.log_image(key="samples", images=[grid], step=step, **extra)
                written.append("W&B (samples)")
        where = ", ".join(written) if written else "not written (dirpath is null and no logger takes images)"
        log.info("Sample grid (step %d): %s", step, where)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > self._last_step and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.log_grid(trainer, pl_module)


def rows_caption(names: Sequence[str], nrow: int) -> str:
    """The captions of a grid as text, one line per grid row: ``"row 1: 0, 1, 2\nrow 2: ..."``."""
    nrow = max(1, int(nrow))
    rows = [names[i : i + nrow] for i in range(0, len(names), nrow)]
    return "\n".join(f"row {r + 1}: {', '.join(row)}" for r, row in enumerate(rows))
