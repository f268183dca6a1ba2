"""``last.ckpt`` that always holds the newest state of a run (Lightning's ``ModelCheckpoint``, extended)."""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` also holds the final state of a run.

    Lightning's ModelCheckpoint writes ``last.ckpt`` only together with a periodic checkpoint, so a run whose
    ``max_steps`` (or epoch end) falls between two periods would lose its last steps. This one also writes
    ``last.ckpt`` after the final optimizer step and at the end of every epoch. It always overwrites
    ``last.ckpt`` (no ``last-v1.ckpt`` when a resumed run's callback settings differ), so ``ckpt_path=last``
    always finds the newest state.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, enable_version_counter=False, **kwargs)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_now(trainer)

    def _save_last_now(self, trainer: Any) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
