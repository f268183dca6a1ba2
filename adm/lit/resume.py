"""Bit-exact resume: a train loader that restarts mid-epoch, and every rank's random streams in checkpoints.

Lightning restores weights, optimizer, lr schedule, grad scaler, loop counters and callback states by itself.
What it leaves out, and :class:`ExactResume` adds:

- the data order: the train loader's shuffle becomes a ``DistributedSampler`` seeded by ``(seed, epoch)``
  (one replica per rank, so it also shards the data), its worker seeds come from a generator seeded by
  ``(seed, epoch, rank)``, and the loader records how many batches of the epoch it handed out, so a resumed
  run continues with the very next batch (Lightning stores the loader's ``state_dict`` in the checkpoint);
- the random streams (torch CPU / CUDA, NumPy, Python) of every rank at the moment of the checkpoint, restored
  when training restarts; a fresh multi-process run gives each rank its own streams (seed + rank);
- validation leaves the training streams untouched: the val loaders get their own generator, and the
  streams are restored after each validation run.

With ``num_workers=0`` (in-process augmentation) a resumed CPU run is bit-identical to an uninterrupted one.
With worker processes the batches are the same; random augmentations inside workers restart their streams.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

__all__ = ["ExactResume", "ResumableLoader", "capture_rng_state", "restore_rng_state", "make_resumable"]

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
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
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
        torch.cuda.set_rng_state(state["cuda"].cpu().to(torch.uint8))


def _seed_process(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --- the loader ---------------------------------------------------------------------------------------------
class _SkipFirstBatches:
    """Batch-index sampler dropping the first ``loader._skip`` batches of one pass (indices only, no data)."""

    def __init__(self, base: Any, loader: ResumableLoader):
        self.base = base
        self.loader = loader

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[Any]:
        skip, self.loader._skip = self.loader._skip, 0
        it = iter(self.base)
        for _ in range(skip):
            next(it, None)
        yield from it


class _Counting:
    def __init__(self, it: Iterator[Any], loader: ResumableLoader):
        self.it = it
        self.loader = loader

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        batch = next(self.it)
        self.loader._consumed += 1
        return batch


class ResumableLoader(DataLoader):
    """DataLoader whose position in the epoch is saved (``state_dict``) and restored (``load_state_dict``).

    Use with a ``DistributedSampler`` (seeded shuffle, ``set_epoch``) so an epoch's order is reproducible;
    `seed` and `rank` seed the generator behind the worker seeds of each pass.
    """

    def __init__(self, *args: Any, seed: int = 0, rank: int = 0, **kwargs: Any):
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(*args, **kwargs)
        self.seed = int(seed)
        self.rank = int(rank)
        self._consumed = 0  # batches handed out in the current pass (including skipped ones)
        self._skip = 0  # batches to skip at the start of the next pass

    @property
    def _index_sampler(self) -> Any:
        base = self.batch_sampler if self._auto_collation else self.sampler
        return _SkipFirstBatches(base, self)

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Iterator[Any]:
        self.generator.manual_seed(hash((self.seed, self._epoch(), self.rank)) % 2**63)
        self._consumed = self._skip
        return _Counting(super().__iter__(), self)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if consumed >= len(self):  # saved on the last batch: the next pass is a new epoch
            epoch, consumed = epoch + 1, 0
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self._skip = consumed


def make_resumable(loader: DataLoader, seed: int, rank: int, world_size: int) -> DataLoader:
    """A :class:`ResumableLoader` with the settings of `loader`, a per-rank ``(seed, epoch)``-seeded sampler.

    Loaders with a custom sampler or batch sampler, or an iterable dataset, are returned unchanged.
    """
    if isinstance(loader, ResumableLoader):
        return loader
    sampler = loader.sampler
    plain_batches = type(loader.batch_sampler) is BatchSampler or loader.batch_sampler is None
    if (
        not plain_batches
        or type(sampler) not in (RandomSampler, SequentialSampler)
        or loader.batch_size is None
    ):
        rank_zero_warn(
            f"the train loader uses {type(sampler).__name__} / {type(loader.batch_sampler).__name__}; "
            "resuming from a mid-epoch checkpoint will not continue its exact batch order"
        )
        return loader
    new_sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=isinstance(sampler, RandomSampler),
        seed=seed,
    )
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra["prefetch_factor"] = loader.prefetch_factor
        extra["persistent_workers"] = loader.persistent_workers
    return ResumableLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=new_sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        seed=seed,
        rank=rank,
        **extra,
    )


# --- the callback -------------------------------------------------------------------------------------------
class ExactResume(Callback):
    """Everything beyond Lightning's own state that a bit-exact resume needs (see the module docstring).

    Args:
        seed: base seed of the data order and of the per-rank streams; None takes Lightning's global seed
            (``seed_everything``; ``PL_GLOBAL_SEED``).
    """

    def __init__(self, *, seed: int | None):
        self.seed = seed
        self._restore: dict[str, torch.Tensor] | None = None
        self._before_validation: dict[str, torch.Tensor] | None = None
        self._patched: pl.LightningDataModule | None = None

    def _base_seed(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or self._patched is not None:
            return
        original_train, original_val = datamodule.train_dataloader, datamodule.val_dataloader
        seed, rank, world = self._base_seed(), trainer.global_rank, trainer.world_size

        def train_dataloader() -> Any:
            return make_resumable(original_train(), seed=seed, rank=rank, world_size=world)

        def val_dataloader() -> Any:
            # Each DataLoader iterator draws a worker base seed; from the loader's own generator it leaves the
            # training streams alone (Lightning also builds a val iterator when it fast-forwards a resume).
            loaders = original_val()
            for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
                if isinstance(loader, DataLoader) and loader.generator is None:
                    loader.generator = torch.Generator().manual_seed(seed + rank)
            return loaders

        # instance attributes: only this datamodule, only this fit
        datamodule.train_dataloader, datamodule.val_dataloader = train_dataloader, val_dataloader
        self._patched = datamodule

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._patched is not None:
            vars(self._patched).pop("train_dataloader", None)
            vars(self._patched).pop("val_dataloader", None)
            self._patched = None

    # random streams in checkpoints
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = capture_rng_state()
        if trainer.world_size > 1:  # every rank takes part; rank 0 writes the file
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
        self._restore = {k: v[trainer.global_rank] for k, v in saved.items()}

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
