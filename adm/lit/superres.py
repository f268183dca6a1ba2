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

    low_res = downsample_area(x_0, low_res_size): area averaging, i.e. antialiased (OpenAI's upsampler
    training uses the same ``F.interpolate(..., mode="area")``); the network resizes it back bilinearly and
    sees it next to x_t. One step is :class:`DiffusionModule`'s with ``low_res`` passed to the network.

    Args:
        unet: a ``SuperResUNet`` (forward(x, t, low_res, y)); labels are passed when ``unet.num_classes``
            is set.
        diffusion: the (un-respaced) training process.
        low_res_size: side of the low-resolution input (64 for 64 -> 256, 14 for MNIST 14 -> 28). It is
            recorded in the checkpoint's config under ``"low_res_size"``.
        timestep_sampler, optimizer, lr_schedule, config: see :class:`~adm.lit.common.TrainModule`.
    """

    def __init__(
        self,
        *,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        low_res_size: int,
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
        low_res_size = int(low_res_size)
        if not 1 <= low_res_size < unet.image_size:
            raise ValueError(
                f"low_res_size={low_res_size} must be between 1 and the upsampler's image_size "
                f"{unet.image_size} (exclusive); e.g. low_res_size=64 for a 256 px upsampler"
            )
        if config is not None:
            config = {**config, "low_res_size": low_res_size}
        super().__init__(
            unet=unet,
            diffusion=diffusion,
            timestep_sampler=timestep_sampler,
            optimizer=optimizer,
            lr_schedule=lr_schedule,
            config=config,
        )
        self.low_res_size = low_res_size
        self._batch_low_res: torch.Tensor | None = None  # low_res of the batch being trained on

    def low_res(self, x_0: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) high-res images -> (B, C, low_res_size, low_res_size) area-downsampled copies."""
        return downsample_area(x_0, self.low_res_size)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """model_output (B, C or 2C, H, W) for x_t (B, C, H, W) at indices t (B,), given low_res (B, C, h, w).

        Without `low_res` the low-resolution copy of the current training batch is used.
        """
        if low_res is None:
            low_res = self._batch_low_res
        return self.unet(x_t, self.diffusion.model_timesteps(t), low_res=low_res, y=y)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # The parent step calls self(x_t, t, y); the batch's low_res reaches forward() through this attribute.
        self._batch_low_res = self.low_res(batch[0])
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self._batch_low_res = None
