"""Progress display of training runs: a tqdm bar over the run's optimizer steps, and the small bars the
sampling callbacks show while they draw."""

from __future__ import annotations

import sys
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from tqdm import tqdm

__all__ = ["StepProgressBar", "progress_enabled", "sampling_tqdm"]


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, but the main bar counts the run's optimizer steps (``trainer.global_step``)
    against ``trainer.max_steps`` instead of the batches of the current epoch.

    A resumed run starts the bar at the step it resumes from, and the rate (it/s) and the time left are
    measured over the steps of this run only (tqdm's ``initial``), so they stay right after a resume. With
    gradient accumulation the bar moves once per optimizer step (every `accumulate_grad_batches` batches);
    validation runs show their own bar below it and leave the main bar where it was. The postfix (loss,
    learning rate, ...) is Lightning's. Runs without a step budget (``max_steps`` <= 0) get Lightning's
    epoch-based bar.

    Args:
        refresh_rate: redraw the bar every this many optimizer steps (and at the last one); 0 disables
            the display. Logs that are not a terminal (batch jobs, CI) are best kept short with a large rate.
        process_position: offset of the bars in lines (several bars in one terminal).
        leave: keep each finished epoch's bar (only for the epoch-based bar).
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self._by_steps = False
        self._shown_step = -1

    @staticmethod
    def counts_steps(trainer: pl.Trainer) -> bool:
        """Whether the main bar counts optimizer steps: the run has a step budget (max_steps > 0)."""
        return trainer.max_steps is not None and trainer.max_steps > 0

    def _show_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, force: bool = False) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar.disable or (step == self._shown_step and not force):
            return
        if force or self._should_update(step, bar.total):
            self._shown_step = step
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws the bar

    def init_train_tqdm(self) -> Tqdm:
        """The main bar: from the step the run starts at (a resumed run's) to max_steps."""
        if not self._by_steps:
            return super().init_train_tqdm()
        bar = Tqdm(
            desc="Steps",
            total=self.trainer.max_steps,
            initial=self.trainer.global_step,  # tqdm's rate and time left count from here
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )
        bar.initial = self.trainer.global_step  # a disabled bar does not keep it
        return bar

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._by_steps = self.counts_steps(trainer)
        self._shown_step = trainer.global_step  # the resumed step (restored before training starts)
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._by_steps:
            super().on_train_epoch_start(trainer, *args)
            return
        self.train_progress_bar.set_description(f"Steps (epoch {trainer.current_epoch})")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._by_steps:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        self._show_step(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._by_steps:
            super().on_train_epoch_end(trainer, pl_module)
            return
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._by_steps:
            self._show_step(trainer, pl_module, force=True)
        super().on_train_end(trainer, pl_module)


def progress_enabled(trainer: pl.Trainer) -> bool:
    """Whether this process shows progress: global rank 0 with the trainer's progress bar enabled."""
    if not trainer.is_global_zero:
        return False
    bar = trainer.progress_bar_callback
    return bar is not None and not getattr(bar, "is_disabled", False)


def sampling_tqdm(trainer: pl.Trainer, *, total: int | None, desc: str, unit: str) -> tqdm:
    """A transient bar (``leave=False``) for work done inside a training hook, one line below the main bar;
    disabled where :func:`progress_enabled` is false."""
    bar = trainer.progress_bar_callback
    position = 2 * getattr(bar, "process_position", 0) + 1
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        position=position,
        dynamic_ncols=True,
        file=sys.stdout,
        disable=not progress_enabled(trainer),
    )
