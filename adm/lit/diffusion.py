"""LightningModule that trains an ADM UNet; the maths is in ``adm.diffusion``, the network in ``adm.nn``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.timestep_sampler import TimestepSampler, UniformSampler
from adm.lit.common import OptimizerFactory, ScheduleFactory, TrainModule

__all__ = ["DiffusionModule"]


class DiffusionModule(TrainModule):
    """Denoising training of `unet` on the process `diffusion` (Ho et al. / Nichol & Dhariwal objective).

    One step: t ~ timestep_sampler, eps ~ N(0, I), x_t = q_sample(x_0, t, eps),
    model_output = unet(x_t, model_timesteps(t), **model_kwargs(batch)),
    loss = mean(weights * training_losses(...)["loss"]).

    The network's conditioning comes from :meth:`model_kwargs` (labels here; subclasses add more, e.g. the
    upsampler's ``low_res``). ``conditions_on_images`` tells callbacks that draw samples whether that
    conditioning needs real images (a batch) or only labels.

    Args:
        unet: ``UNet`` (forward(x, t, y)). Class labels are passed when ``unet.num_classes`` is not None.
        diffusion: the (un-respaced) training process.
        timestep_sampler, optimizer, lr_schedule, config: see :class:`~adm.lit.common.TrainModule`.

    Logs: train/loss, train/loss_mse, train/loss_vb and each by timestep quartile (train/loss_q0 .. _q3, ...).
    """

    conditions_on_images: bool = False  # model_kwargs needs at most a batch's labels, never its images

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
        super().__init__(
            timestep_sampler=timestep_sampler, optimizer=optimizer, lr_schedule=lr_schedule, config=config
        )
        self.unet = unet
        self.diffusion = diffusion

    def model_kwargs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The network's conditioning for a batch (x_0 (B, C, H, W), y (B,)): ``{"y": y}`` or ``{}``.

        ``{"y": y}`` when the network is class-conditional (``unet.num_classes`` set), else ``{}``.
        """
        _, y = batch
        return {"y": y} if self.unet.num_classes is not None else {}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, **model_kwargs: torch.Tensor) -> torch.Tensor:
        """model_output (B, C or 2C, H, W) for x_t (B, C, H, W) at diffusion indices t (B,) int64.

        ``model_kwargs``: the network's conditioning, e.g. from :meth:`model_kwargs` (``y``, ``low_res``).
        """
        return self.unet(x_t, self.diffusion.model_timesteps(t), **model_kwargs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x_0 = batch[0]
        t_cpu, weights = self.timestep_sampler.sample(x_0.shape[0], "cpu")
        t, weights = t_cpu.to(self.device), weights.to(self.device)
        eps = torch.randn_like(x_0)
        x_t = self.diffusion.q_sample(x_0, t, eps)
        model_output = self.unet(x_t, self.diffusion.model_timesteps(t), **self.model_kwargs(batch))
        terms = self.diffusion.training_losses(model_output, x_0, x_t, t, eps)

        # The loss-aware sampler learns from every rank's losses, so all ranks keep the same history.
        if not isinstance(self.timestep_sampler, UniformSampler):
            all_t = self.all_gather(t).reshape(-1)
            all_losses = self.all_gather(terms["loss"].detach()).reshape(-1)
            self.timestep_sampler.update_with_losses(all_t, all_losses)

        loss = (terms["loss"] * weights).mean()
        logged = {
            "loss": terms["loss"] * weights,
            "loss_mse": terms["mse"] * weights,
            "loss_vb": terms["vb"] * weights,
        }
        self.log_by_quartile("train", logged, t_cpu, prog_bar=("loss",), on_step=True, on_epoch=False)
        return loss
