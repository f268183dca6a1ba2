"""What both training modules share: optimizer / lr schedule wiring, the checkpoint's config, logs."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch.optim import Optimizer

from adm.diffusion.timestep_sampler import TimestepSampler
from adm.io.checkpoint import check_plain, checkpoint_payload
from adm.lit.optim import scheduler_config

__all__ = ["TrainModule", "per_device_batch_size"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
ScheduleFactory = Callable[[Optimizer], Any]


class TrainModule(pl.LightningModule):
    """Base of the diffusion and classifier modules.

    Args:
        timestep_sampler: draws t (and importance weights) for each batch; its state goes into checkpoints.
        optimizer: factory ``optimizer(params) -> Optimizer``
            (e.g. ``functools.partial(torch.optim.AdamW, lr=...)``).
        lr_schedule: factory ``lr_schedule(optimizer) -> LRScheduler`` stepped after every optimizer step,
            or None.
        config: plain, resolved description of the run (``{"model": ..., "diffusion": ..., "data": ...}``)
            stored in every checkpoint under "adm_config" so a checkpoint is enough to rebuild the networks.
    """

    def __init__(
        self,
        *,
        timestep_sampler: TimestepSampler,
        optimizer: OptimizerFactory,
        lr_schedule: ScheduleFactory | None,
        config: dict[str, Any] | None,
    ):
        super().__init__()
        self.timestep_sampler = timestep_sampler
        self.optimizer_factory = optimizer
        self.lr_schedule_factory = lr_schedule
        self.adm_config = copy.deepcopy(config) if config is not None else None
        if self.adm_config is not None:
            check_plain(self.adm_config, "config")

    # --- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_schedule_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler_config(self.lr_schedule_factory(optimizer))}

    # --- checkpoints ----------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.adm_config is not None:
            checkpoint.update(checkpoint_payload(self.adm_config))  # the weights are Lightning's state_dict
        checkpoint["timestep_sampler"] = self.timestep_sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "timestep_sampler" in checkpoint:
            self.timestep_sampler.load_state_dict(checkpoint["timestep_sampler"])

    # --- logging --------------------------------------------------------------------------------------------
    def quartile(self, t: torch.Tensor) -> torch.Tensor:
        """The quarter of the process each t falls in: int64 (B,) in {0, 1, 2, 3} (OpenAI's ``_q0.._q3``)."""
        return (4 * t // self.diffusion.num_timesteps).clamp(max=3)

    def log_by_quartile(
        self,
        prefix: str,
        values: dict[str, torch.Tensor],
        t: torch.Tensor,
        prog_bar: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        """Log ``{prefix}/{name}`` (batch mean) and ``{prefix}/{name}_q{k}`` (mean over quartile k).

        Args:
            values: name -> per-example values (B,) on the module's device.
            t: (B,) timesteps of the examples, on the CPU (so the counts per quartile need no device sync).
            prog_bar: names whose batch mean is also shown in the progress bar.
        """
        q = self.quartile(t.cpu())
        counts = torch.bincount(q, minlength=4).tolist()
        onehot = torch.nn.functional.one_hot(q, 4).to(self.device, torch.float32)  # (B, 4)
        batch_size = t.shape[0]
        for name, v in values.items():
            v = v.detach().float()
            self.log(f"{prefix}/{name}", v.mean(), batch_size=batch_size, prog_bar=name in prog_bar, **kwargs)
            sums = v @ onehot  # (4,)
            for k in range(4):
                if counts[k]:
                    self.log(f"{prefix}/{name}_q{k}", sums[k] / counts[k], batch_size=counts[k], **kwargs)


def per_device_batch_size(batch_size: int, devices: int, num_nodes: int, accumulate_grad_batches: int) -> int:
    """Per-device batch that keeps the global batch `batch_size` whatever the device count and accumulation.

    Raises:
        ValueError: `batch_size` is not a multiple of devices * num_nodes * accumulate_grad_batches.
    """
    parts = int(devices) * int(num_nodes) * int(accumulate_grad_batches)
    if batch_size < 1 or parts < 1 or batch_size % parts:
        raise ValueError(
            f"batch_size={batch_size} (the global batch) is not divisible by devices x num_nodes x "
            f"accumulate_grad_batches = {devices} x {num_nodes} x {accumulate_grad_batches} = {parts}; "
            f"pick a batch_size that is a multiple of {parts}, or change trainer.devices / "
            "trainer.num_nodes / trainer.accumulate_grad_batches"
        )
    return batch_size // parts
