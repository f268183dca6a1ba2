"""Exponential moving averages of the weights, at one or several rates, with an optional warm-up.

Built on Lightning's :class:`~pytorch_lightning.callbacks.WeightAveraging` (checkpoint layout, EMA weights for
validation, EMA weights in the module after ``fit``) and adds what it lacks for diffusion training:

- several rates at once (OpenAI kept 0.9999; short runs want faster ones);
- a warm-up: the decay of update n is ``min(rate, (1 + n) / (10 + n))``, so after a few hundred steps the
  average is not dominated by the random initial weights;
- optimizer steps skipped by the fp16 grad scaler (inf / nan gradients) do not update the averages;
- the averages follow the module onto its device.

Checkpoint layout: ``"state_dict"`` = EMA weights of ``rates[0]``, ``"current_model_state"`` = raw weights,
``"adm_ema"`` = ``{"rates": [...], "warmup": bool, "state_dicts": {repr(rate): weights}}`` (the other rates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from adm.io.checkpoint import EMA_KEY, ema_entry

__all__ = ["EMA", "ema_decay"]


def ema_decay(rate: float, num_updates: int, warmup: bool) -> float:
    """Decay of EMA update number `num_updates` (0-based): ``min(rate, (1 + n) / (10 + n))`` with warm-up."""
    if not warmup:
        return rate
    return min(rate, (1.0 + num_updates) / (10.0 + num_updates))


class EMA(WeightAveraging):
    """EMA of the LightningModule's parameters after every optimizer step: ema <- d * ema + (1 - d) * weights.

    Args:
        rates: EMA rates, e.g. [0.9999] (OpenAI) or [0.9999, 0.999]; the first one is the "main" average
            (checkpoint ``state_dict``, validation, sampling, the module's weights after ``fit``).
        warmup: use the decay ``min(rate, (1 + n) / (10 + n))`` for update n instead of `rate` from the start.
        device: where the averages live (None: the module's device).
    """

    def __init__(self, *, rates: Sequence[float], warmup: bool, device: str | None = None):
        rates = [float(r) for r in (rates if isinstance(rates, Sequence) else [rates])]
        if not rates or any(not 0.0 <= r < 1.0 for r in rates) or len(set(rates)) != len(rates):
            raise ValueError(f"EMA rates must be distinct numbers in [0, 1), e.g. [0.9999]; got {rates}")
        super().__init__(device=device, use_buffers=False)
        self.rates = rates
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.skipped_steps = 0
        self._extra: dict[float, AveragedModel] = {}
        self._scale_before_step: float | None = None

    # --- the averages ---------------------------------------------------------------------------------------
    def averaged_module(self, rate: float | None = None) -> pl.LightningModule:
        """The LightningModule copy holding the EMA weights of `rate` (default: the first rate)."""
        if self._average_model is None:
            raise RuntimeError("the EMA averages exist only once trainer.fit has started")
        rate = self.rates[0] if rate is None else float(rate)
        if rate == self.rates[0]:
            return self._average_model.module
        if rate not in self._extra:
            raise ValueError(f"no EMA with rate {rate}; this callback keeps {self.rates}")
        return self._extra[rate].module

    def _averages(self) -> list[tuple[float, AveragedModel]]:
        assert self._average_model is not None
        return [(self.rates[0], self._average_model), *self._extra.items()]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)  # builds the average of rates[0]
        if stage == "fit":
            device = self._device or pl_module.device
            self._extra = {
                r: AveragedModel(pl_module, device=device, use_buffers=False) for r in self.rates[1:]
            }
            # The averages start as copies of the initial weights; marking them as already averaged once makes
            # the first update blend (decay * initial + (1 - decay) * weights) instead of copying.
            for _, average in self._averages():
                average.n_averaged.fill_(1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # setup() runs before the strategy moves the module to its device; follow it there.
        if self._device is None and self._average_model is not None:
            for _, average in self._averages():
                average.to(pl_module.device)

    def _update(self, pl_module: pl.LightningModule) -> None:
        for rate, average in self._averages():
            decay = ema_decay(rate, self.num_updates, self.warmup)
            average.multi_avg_fn = get_ema_multi_avg_fn(decay)
            average.update_parameters(pl_module)
        self.num_updates += 1

    # --- when to update -------------------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._scale_before_step = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

    def _step_was_skipped(self, trainer: pl.Trainer) -> bool:
        """True when the grad scaler found inf / nan gradients: it skipped the step and lowered its scale."""
        if self._scale_before_step is None:
            return False
        scaler = trainer.precision_plugin.scaler
        return scaler.get_scale() < self._scale_before_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step <= self._latest_update_step:
            return  # accumulating gradients: no optimizer step yet
        self._latest_update_step = trainer.global_step
        if self._step_was_skipped(trainer):
            self.skipped_steps += 1
        else:
            self._update(pl_module)
        self._scale_before_step = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Averages are updated per step only (the base class may also update per epoch)."""

    # --- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "rates": list(self.rates),
            "num_updates": self.num_updates,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = [float(r) for r in state_dict.get("rates", self.rates)]
        if saved != self.rates:
            raise ValueError(
                f"the checkpoint's EMA rates {saved} differ from the configured {self.rates}; resume with "
                f"callbacks.ema.rates={saved}"
            )
        self.num_updates = int(state_dict.get("num_updates", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is None:
            return
        checkpoint[EMA_KEY] = ema_entry(
            self.rates,
            warmup=self.warmup,
            state_dicts={repr(r): _module_state(avg) for r, avg in self._extra.items()},
            n_averaged={repr(r): avg.n_averaged.detach().cpu().clone() for r, avg in self._extra.items()},
        )

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
        info = checkpoint.get(EMA_KEY)
        for rate, average in self._extra.items():
            if info is None or repr(rate) not in info.get("state_dicts", {}):
                average.module.load_state_dict(
                    pl_module.state_dict()
                )  # no saved average: start from the weights
                continue
            average.module.load_state_dict(info["state_dicts"][repr(rate)])
            average.n_averaged.copy_(info["n_averaged"][repr(rate)])


def _module_state(average: AveragedModel) -> dict[str, torch.Tensor]:
    module: nn.Module = average.module
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
