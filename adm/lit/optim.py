"""Optimizer and learning-rate schedule helpers shared by the LightningModules.

Both are passed to the modules as factories (Hydra ``_partial_: true``): ``optimizer(params) -> Optimizer``
and ``lr_schedule(optimizer) -> LRScheduler``; the module calls them in ``configure_optimizers``.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupLinearAnneal", "warmup_linear_anneal"]


class WarmupLinearAnneal:
    """lr factor at optimizer step `step` (0-based): linear warm-up, then constant or a linear anneal to 0.

    factor(step) = min(1, (step + 1) / warmup_steps) * (1 - step / anneal_steps, clipped at 0)

    ``warmup_steps=0, anneal_steps=None`` is a constant lr; ``anneal_steps=N`` is OpenAI's
    ``--lr_anneal_steps N`` (and the classifier's ``--anneal_lr True --iterations N``): lr * (1 - step / N).
    """

    def __init__(self, warmup_steps: int, anneal_steps: int | None):
        if warmup_steps < 0:
            raise ValueError(f"lr_schedule.warmup_steps must be >= 0, got {warmup_steps}")
        if anneal_steps is not None and anneal_steps <= 0:
            raise ValueError(
                f"lr_schedule.anneal_steps must be a positive step count or null, got {anneal_steps}"
            )
        self.warmup_steps = int(warmup_steps)
        self.anneal_steps = None if anneal_steps is None else int(anneal_steps)

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.warmup_steps > 0:
            factor = min(1.0, (step + 1) / self.warmup_steps)
        if self.anneal_steps is not None:
            factor *= max(0.0, 1.0 - step / self.anneal_steps)
        return factor

    def __repr__(self) -> str:
        return f"WarmupLinearAnneal(warmup_steps={self.warmup_steps}, anneal_steps={self.anneal_steps})"


def warmup_linear_anneal(optimizer: Optimizer, *, warmup_steps: int, anneal_steps: int | None) -> LambdaLR:
    """A per-step LambdaLR with :class:`WarmupLinearAnneal` (used by ``conf/lr_schedule/*.yaml``).

    The factor is wrapped in a plain function, which LambdaLR leaves out of its state dict: on resume the step
    count comes from the checkpoint and the schedule's shape from the config (e.g. a longer anneal).
    """
    schedule = WarmupLinearAnneal(warmup_steps, anneal_steps)
    return LambdaLR(optimizer, lambda step: schedule(step))


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """Lightning's scheduler dict: stepped after every optimizer step."""
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}
