"""LightningModule that trains a noisy-image classifier (the guidance classifier of ADM-G)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.timestep_sampler import TimestepSampler
from adm.lit.common import OptimizerFactory, ScheduleFactory, TrainModule

__all__ = ["ClassifierModule", "top_k_correct"]


def top_k_correct(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """1.0 where the label is among the k largest logits, else 0.0: float (B,). logits (B, C), y (B,)."""
    k = min(k, logits.shape[-1])
    return (logits.topk(k, dim=-1).indices == y[:, None]).any(dim=-1).float()


class ClassifierModule(TrainModule):
    """Trains p(y | x_t, t) on x_t = q_sample(x_0, t, eps) with t from the timestep sampler (cross-entropy).

    Args:
        classifier: ``EncoderUNet`` (forward(x, t) -> logits (B, num_classes)).
        diffusion: the process whose noisy images the classifier must read (same as the diffusion model's).
        timestep_sampler, optimizer, lr_schedule, config: see :class:`~adm.lit.common.TrainModule`.

    Logs: train/loss, train/acc@1, train/acc@5 and each by timestep quartile (train/loss_q0 ...); the same
    under val/ on the held-out split, where t and eps come from a fixed per-batch seed so every validation
    sees the same noisy images (and the training random streams are left untouched).
    """

    def __init__(
        self,
        *,
        classifier: nn.Module,
        diffusion: GaussianDiffusion,
        timestep_sampler: TimestepSampler,
        optimizer: OptimizerFactory,
        lr_schedule: ScheduleFactory | None = None,
        config: dict[str, Any] | None = None,
    ):
        super().__init__(
            timestep_sampler=timestep_sampler, optimizer=optimizer, lr_schedule=lr_schedule, config=config
        )
        self.classifier = classifier
        self.diffusion = diffusion

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """logits (B, num_classes) for x_t (B, C, H, W) at diffusion indices t (B,) int64."""
        return self.classifier(x_t, self.diffusion.model_timesteps(t))

    def _step(
        self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x_0, y = batch
        t_cpu, weights = self.timestep_sampler.sample(x_0.shape[0], "cpu", generator=generator)
        t, weights = t_cpu.to(self.device), weights.to(self.device)
        if generator is None:
            eps = torch.randn_like(x_0)
        else:
            eps = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype).to(self.device)
        x_t = self.diffusion.q_sample(x_0, t, eps)
        logits = self(x_t, t)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        metrics = {"loss": ce, "acc@1": top_k_correct(logits, y, 1), "acc@5": top_k_correct(logits, y, 5)}
        return (ce * weights).mean(), metrics, t_cpu

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics, t_cpu = self._step(batch, generator=None)
        self.log_by_quartile(
            "train", metrics, t_cpu, prog_bar=("loss", "acc@1"), on_step=True, on_epoch=False
        )
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        seed = 1_000_003 * (batch_idx + 1) + self.global_rank
        generator = torch.Generator().manual_seed(seed)
        _, metrics, t_cpu = self._step(batch, generator=generator)
        self.log_by_quartile(
            "val", metrics, t_cpu, prog_bar=("acc@1",), on_step=False, on_epoch=True, sync_dist=True
        )
