"""LightningModule that trains an ADM upsampler (``SuperResUNet``): diffusion training conditioned on low_res.

Everything but the conditioning is :class:`~adm.lit.diffusion.DiffusionModule`'s (timestep sampling, losses,
quartile logs, checkpoints); EMA, precision, DDP and exact resume come from the same callbacks and trainer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adm.data.transforms import downsample_area
from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.timestep_sampler import TimestepSampler
from adm.lit.common import OptimizerFactory, ScheduleFactory
from adm.lit.diffusion import DiffusionModule
from adm.nn.unet import SuperResUNet

__all__ = ["SuperResModule"]


class SuperResModule(DiffusionModule):
    """Denoising training of an upsampler on (x_0, low_res) pairs made from the high-resolution batch.

    low_res = downsample_area(x_0, unet.low_res_size): area averaging, i.e. antialiased (OpenAI's upsampler
    training uses the same ``F.interpolate(..., mode="area")``); the network resizes it back bilinearly and
    sees it next to x_t. One step is :class:`DiffusionModule`'s, with ``low_res`` added to the network's
    conditioning by :meth:`model_kwargs`.

    Args:
        unet: a ``SuperResUNet`` (forward(x, t, low_res, y)) that knows its ``low_res_size`` (64 for
            64 -> 256, 14 for MNIST 14 -> 28; set by the model preset, ``model.low_res_size``). Labels are
            passed when ``unet.num_classes`` is set.
        diffusion: the (un-respaced) training process.
        timestep_sampler, optimizer, lr_schedule, config: see :class:`~adm.lit.common.TrainModule`. The
            network's ``low_res_size`` is written into ``config["model"]`` when that section lacks it, so a
            checkpoint rebuilds an upsampler that knows it.
    """

    conditions_on_images = True  # low_res comes from real high-resolution images

    def __init__(
        self,
        *,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        timestep_sampler: TimestepSampler,
        optimizer: OptimizerFactory,
        lr_schedule: ScheduleFactory | None = None,
        config: dict[str, Any] | None = None,
    ):
        if not isinstance(unet, SuperResUNet):
            raise ValueError(
                f"SuperResModule trains an upsampler (adm.nn.SuperResUNet), got {type(unet).__name__}; "
                "use an upsampler preset such as model=adm_sr_64_256, or train a base model with "
                "scripts/train.py"
            )
        if unet.low_res_size is None:
            raise ValueError(
                "the upsampler was built without low_res_size, the side of its low-resolution input; set "
                "model.low_res_size (e.g. 64 for a 64 -> 256 upsampler)"
            )
        if config is not None and "model" in config:
            recorded = config["model"].get("low_res_size")
            if recorded is not None and recorded != unet.low_res_size:
                raise ValueError(
                    f'config["model"]["low_res_size"]={recorded} but the upsampler was built with '
                    f"low_res_size={unet.low_res_size}; pass the config the network was built from"
                )
            config = {**config, "model": {**config["model"], "low_res_size": unet.low_res_size}}
        super().__init__(
            unet=unet,
            diffusion=diffusion,
            timestep_sampler=timestep_sampler,
            optimizer=optimizer,
            lr_schedule=lr_schedule,
            config=config,
        )

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution input (the network's ``low_res_size``)."""
        return self.unet.low_res_size

    def low_res(self, x_0: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) high-res images -> (B, C, low_res_size, low_res_size) area-downsampled copies."""
        return downsample_area(x_0, self.low_res_size)

    def model_kwargs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`DiffusionModule.model_kwargs` plus ``"low_res"``: the batch's x_0, area-downsampled."""
        return {**super().model_kwargs(batch), "low_res": self.low_res(batch[0])}
