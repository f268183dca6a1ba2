"""Bit-exact resume: every rank's random streams in checkpoints; epoch-end checkpoints that restart cleanly.

Lightning restores weights, optimizer, lr schedule, grad scaler, loop counters and callback states by itself,
and the train loader of our datamodules saves its own position (:mod:`adm.data.loading`). Two callbacks add
the rest (``conf/callbacks/exact_resume.yaml`` configures both):

- :class:`RandomStreams`: the random streams (torch CPU / CUDA, NumPy, Python) of every rank at the moment of
  the checkpoint, restored when training restarts (a fresh multi-process run gives each rank its own streams,
  seed + rank); validation leaves the training streams untouched (they are restored after each validation
  run).
- :class:`EpochEndResume`: a checkpoint written at the end of an epoch restarts at the start of the next one.
  Lightning's loops restart an iteration-based run (``max_steps``) from a checkpoint written in
  ``on_train_epoch_end`` (``last.ckpt`` of :class:`~adm.callbacks.LastCheckpoint`, ``ModelCheckpoint``
  with ``save_on_train_epoch_end``) by running that epoch's end a second time: the epoch counter moves on
  twice, the next epoch's ``set_epoch`` skips one data order, and the batches differ from an uninterrupted
  run. A checkpoint written after the last batch of an epoch (``on_train_batch_end``) restarts with the right
  batches, but without counting the next epoch as started. Both are rewritten, while the checkpoint is
  loaded, into the loop state an uninterrupted run has between the two epochs. (A run by epochs,
  ``max_epochs`` without ``max_steps``, restores no loader position from such a checkpoint; the datamodule
  starts its train loader at ``trainer.current_epoch``, which the rewrite makes the next epoch.)
  Epoch-interval lr schedulers step after ``on_train_epoch_end``, so their step is not in such a checkpoint
  (ours step per optimizer step).

With ``num_workers=0`` (in-process augmentation) a resumed CPU run is bit-identical to an uninterrupted one.
With worker processes the batches are the same; random augmentations inside workers restart their streams.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["EpochEndResume", "RandomStreams", "between_epochs", "capture_rng_state", "restore_rng_state"]

RNG_KEY = "rng_states"


# --- random streams -----------------------------------------------------------------------------------------
def capture_rng_state(cuda: bool = True) -> dict[str, torch.Tensor]:
    """This process's random streams as tensors (so they can be all-gathered and saved with weights_only)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.concatenate([np_state[1].astype(np.int64), [np_state[2], np_state[3]]])),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor([py_version, *py_internal], dtype=torch.int64),
        "python_gauss": torch.tensor(
            [0.0 if py_gauss is None else 1.0, py_gauss or 0.0], dtype=torch.float64
        ),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8).clone())
    np_ints = state["numpy"].cpu().tolist()
    np.random.set_state(
        (
            "MT19937",
            np.asarray(np_ints[:624], dtype=np.uint32),
            np_ints[624],
            np_ints[625],
            float(state["numpy_gauss"][0]),
        )
    )
    py = state["python"].cpu().tolist()
    has_gauss, gauss = state["python_gauss"].cpu().tolist()
    random.setstate((py[0], tuple(py[1:]), gauss if has_gauss else None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu().to(torch.uint8).clone())


def _seed_process(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --- random streams in checkpoints -------------------------------------------------------------------------
def _inside_training_step(trainer: pl.Trainer) -> bool:
    """Whether the trainer is between the start of a training batch and the end of its optimizer step."""
    try:
        progress = trainer.fit_loop.epoch_loop.batch_progress.total
        return bool(trainer.training) and progress.started > progress.processed
    except AttributeError:
        return False


class RandomStreams(Callback):
    """Per-rank random streams in checkpoints; validation that does not move them (see the module docstring).

    With several ranks, every checkpoint gathers all ranks' streams (a collective), so checkpoints are to be
    written where all ranks are in step: Lightning's checkpoint callbacks, and
    :class:`adm.callbacks.PreemptionCheckpoint` for SLURM's warning signal. A checkpoint written inside
    a training step (from a signal handler, where another rank may be in the gradient all-reduce) gathers
    nothing and holds no random streams, with a warning.

    Args:
        seed: base seed of the per-rank streams of a fresh multi-process run; None takes Lightning's global
            seed (``seed_everything``; ``PL_GLOBAL_SEED``).
    """

    def __init__(self, *, seed: int | None):
        self.seed = seed
        self._restore: dict[str, torch.Tensor] | None = None
        self._before_validation: dict[str, torch.Tensor] | None = None

    def _base_seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = capture_rng_state()
        if trainer.world_size > 1:  # every rank takes part; rank 0 writes the file
            if _inside_training_step(trainer):
                # a save from inside a step (a signal handler, training_step): the other ranks may be in
                # another collective (the gradient all-reduce), so gathering could hang; no streams saved
                warnings.warn(
                    f"rank {trainer.global_rank}: checkpoint written inside a training step; the random "
                    "streams are not gathered (resuming from it restarts them from seed + rank)",
                    stacklevel=2,
                )
                return
            state = {k: pl_module.all_gather(v.to(pl_module.device)).cpu() for k, v in state.items()}
        else:
            state = {k: v[None] for k, v in state.items()}
        checkpoint[RNG_KEY] = state

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        saved = checkpoint.get(RNG_KEY)
        if saved is None:
            return
        ranks = int(saved["torch"].shape[0])
        if ranks != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds random states of {ranks} processes, this run has "
                f"{trainer.world_size}: "
                "the random streams restart from seed + rank (the run is no longer bit-exact)"
            )
            return
        # clone: a row of the saved (world, ...) tensor is a view at an offset, and torch.set_rng_state reads
        # the whole underlying buffer from its start (rank >= 1 would restore rank 0's bytes, or crash).
        self._restore = {k: v[trainer.global_rank].clone() for k, v in saved.items()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restore is not None:
            restore_rng_state(self._restore)
            self._restore = None
        elif trainer.world_size > 1:
            _seed_process(self._base_seed() + trainer.global_rank)

    # validation must not move the training streams
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._before_validation = (
            capture_rng_state(cuda=False) if trainer.val_dataloaders is not None else None
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self._before_validation is not None:
            restore_rng_state(self._before_validation)
            self._before_validation = None


# --- checkpoints written at an epoch's end -----------------------------------------------------------------
def _counts(progress: dict[str, Any]) -> tuple[int, ...]:
    total = progress["total"]
    return tuple(int(total.get(k, 0)) for k in ("ready", "started", "processed", "completed"))


def _add(progress: dict[str, Any], field: str, n: int = 1) -> None:
    for part in ("total", "current"):
        progress[part][field] += n


def _zero(counts: dict[str, int]) -> None:
    for k in counts:
        counts[k] = 0


def between_epochs(fit_loop: dict[str, Any]) -> str | None:
    """Rewrite, in place, a fit loop's saved state at the end of an epoch into the state between two epochs.

    Args:
        fit_loop: ``checkpoint["loops"]["fit_loop"]`` (Lightning 2.x layout: flat keys such as
            ``"epoch_progress"``, ``"epoch_loop.batch_progress"``).
    Returns:
        "epoch_end" (written in ``on_train_epoch_end``: the epoch is counted processed, not completed),
        "last_batch" (written in ``on_train_batch_end`` after the epoch's last batch: that batch is counted
        processed, not completed), or None (anything else: left as it is).
    """
    try:
        epochs = fit_loop["epoch_progress"]
        batches = fit_loop["epoch_loop.batch_progress"]
        e_ready, e_started, e_processed, e_completed = _counts(epochs)
        b_ready, b_started, b_processed, b_completed = _counts(batches)
    except (KeyError, TypeError):
        return None  # another layout: Lightning's own restart logic applies
    if e_ready == e_started == e_processed == e_completed + 1:
        kind = "epoch_end"
        _add(epochs, "completed")
    elif (
        e_ready == e_started == e_processed + 1
        and e_processed == e_completed
        and b_ready == b_started == b_processed == b_completed + 1
        and batches.get("is_last_batch")
    ):
        kind = "last_batch"
        _add(batches, "completed")
        _add(epochs, "processed")
        _add(epochs, "completed")
        # Lightning counts the stepped batch after on_train_batch_end (its own restart adds it back too)
        stepped = fit_loop.get("epoch_loop.state_dict", {})
        if "_batches_that_stepped" in stepped:
            stepped["_batches_that_stepped"] += 1
    else:
        return None
    # what the next epoch's start resets (``_TrainingEpochLoop.reset`` of a run that is not restarting)
    _zero(batches["current"])
    batches["is_last_batch"] = False
    if "epoch_loop.scheduler_progress" in fit_loop:
        _zero(fit_loop["epoch_loop.scheduler_progress"]["current"])
    optimizers = fit_loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    for progress in optimizers.values():
        _zero(progress["current"])
    if "epoch_loop.val_loop.batch_progress" in fit_loop:
        _zero(fit_loop["epoch_loop.val_loop.batch_progress"]["total"])
    return kind


class EpochEndResume(Callback):
    """Checkpoints written at the end of an epoch restart at the start of the next (see the module docstring).

    Works while the checkpoint is loaded, so it serves every checkpoint, whoever wrote it; the train loader's
    own state (at the end of its epoch) starts the next epoch by itself (:class:`adm.data.ShardSampler`).
    """

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        if isinstance(fit_loop, dict):
            between_epochs(fit_loop)
