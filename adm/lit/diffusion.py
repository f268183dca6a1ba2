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
        label_dropout: probability that a training label is replaced by the null label, the network's last
            class (classifier-free guidance, Ho & Salimans 2022): build the network with one class more
            than the data has. The checkpoint's config records it as ``classifier_free: {label_dropout,
            null_label}``, which is how sampling finds the null label. 0 (default): conditional training.

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
        label_dropout: float = 0.0,
    ):
        label_dropout = float(label_dropout)
        null_label: int | None = None
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if label_dropout > 0:
            num_classes = getattr(unet, "num_classes", None)
            data_classes = ((config or {}).get("data") or {}).get("num_classes")
            if num_classes is None or (data_classes is not None and num_classes != data_classes + 1):
                raise ValueError(
                    f"label_dropout={label_dropout} needs a network with one class more than the data (the "
                    f"null label): set model.num_classes={(data_classes or 0) + 1} (the data has "
                    f"{data_classes} classes), got num_classes={num_classes}"
                )
            null_label = int(num_classes) - 1
            config = {
                **(config or {}),
                "classifier_free": {"label_dropout": label_dropout, "null_label": null_label},
            }
        super().__init__(
            timestep_sampler=timestep_sampler, optimizer=optimizer, lr_schedule=lr_schedule, config=config
        )
        self.unet = unet
        self.diffusion = diffusion
        self.label_dropout = label_dropout
        self.null_label = null_label

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
        model_kwargs = self.model_kwargs(batch)
        if self.null_label is not None:
            # Label dropout: with probability label_dropout the network learns the unconditional model.
            y = model_kwargs["y"]
            dropped = torch.rand(y.shape, device=y.device) < self.label_dropout
            model_kwargs["y"] = torch.where(dropped, torch.full_like(y, self.null_label), y)
        model_output = self(x_t, t, **model_kwargs)
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
