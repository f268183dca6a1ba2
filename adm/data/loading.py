"""Train loaders that save and restore their own position: a resumed run continues with the very next batch.

:func:`resumable_loader` builds a :class:`ResumableLoader` (torchdata's ``StatefulDataLoader``) around a
:class:`ShardSampler`:

- the order of an epoch depends only on ``(seed, epoch)`` (torch's ``DistributedSampler`` permutation), and
  each of ``num_replicas`` ranks takes its own share of it, so a multi-process run reads the same batches
  on every restart;
- ``loader.state_dict()`` records the epoch and how far into it the loader has handed out batches (with
  worker processes: the batches the training loop received, not the ones prefetched), and
  ``loader.load_state_dict(state)`` makes the next ``iter(loader)`` continue from there. Lightning saves and
  restores this state with every checkpoint by itself (``loops.fit_loop.state_dict.combined_loader``);
- a state saved after the last batch of an epoch loads as the start of the next epoch (the loop counters of
  such checkpoints: :class:`adm.callbacks.EpochEndResume`).

The loader draws the worker seeds from its own generator, so iterating it never moves the global random
streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["ResumableLoader", "ShardSampler", "resumable_loader"]


class _ShardIterator(Iterator[int]):
    def __init__(self, sampler: ShardSampler, indices: list[int]):
        self.sampler = sampler
        self.indices = indices
        self.epoch = sampler.epoch
        self.position = sampler._start  # indices handed out so far in this epoch

    def __next__(self) -> int:
        # Loaders may create iterators they never draw from; the restored start holds until one draws.
        self.sampler._start = 0
        if self.position >= len(self.indices):
            raise StopIteration
        self.position += 1
        return self.indices[self.position - 1]


class ShardSampler(DistributedSampler):
    """This rank's share of a dataset, in an order fixed by ``(seed, epoch)``; it knows where it is.

    The order is torch's ``DistributedSampler``'s (a permutation seeded by ``seed + epoch``, padded so every
    rank gets as many indices, rank r taking every ``num_replicas``-th index from r on). With
    `drop_last_batch` each share is cut to whole batches of `batch_size`, so an epoch ends exactly when its
    last index is drawn. Lightning calls :meth:`set_epoch` before each epoch.

    ``state_dict()`` is ``{"epoch", "position"}`` of the latest iterator (indices drawn so far);
    ``load_state_dict`` makes the next iterator start there, and a position at the end of an epoch starts
    the next epoch.

    Args:
        dataset: anything with ``len``. num_replicas, rank: the processes sharing the data, this one's rank.
        shuffle: permute (train) or keep the dataset order. seed: base seed of the permutations.
        batch_size, drop_last_batch: the loader's batching (see above).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        num_replicas: int,
        rank: int,
        shuffle: bool,
        seed: int,
        batch_size: int,
        drop_last_batch: bool,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = int(batch_size)
        self.drop_last_batch = bool(drop_last_batch)
        self._start = 0  # where new iterators begin (set by load_state_dict, reset by the first draw)
        self._latest: _ShardIterator | None = None

    def __len__(self) -> int:
        """Indices one epoch draws on this rank."""
        if self.drop_last_batch:
            return self.num_samples // self.batch_size * self.batch_size
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        self._latest = _ShardIterator(self, list(super().__iter__())[: len(self)])
        return self._latest

    def state_dict(self) -> dict[str, int]:
        if self._latest is None:  # nothing drawn yet
            return {"epoch": int(self.epoch), "position": self._start}
        return {"epoch": int(self._latest.epoch), "position": int(self._latest.position)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if set(state) != {"epoch", "position"}:
            raise ValueError(
                f"a ShardSampler state has the keys 'epoch' and 'position', got {sorted(state)}; the "
                "checkpoint was written with another train loader (resume it with the code that wrote it)"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if position >= len(self):  # saved after the last batch of an epoch
            epoch, position = epoch + 1, 0
        self.set_epoch(epoch)
        self._start = position
        self._latest = None


class ResumableLoader(StatefulDataLoader):
    """torchdata's ``StatefulDataLoader`` over a :class:`ShardSampler`.

    It also reads the position that earlier versions of this project saved in checkpoints
    (``{"epoch", "consumed"}``: batches handed out).
    """

    sampler: ShardSampler

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) == {"epoch", "consumed"}:
            super().load_state_dict({})  # a fresh iterator, started where the sampler says
            position = int(state_dict["consumed"]) * self.sampler.batch_size
            self.sampler.load_state_dict({"epoch": int(state_dict["epoch"]), "position": position})
            return
        super().load_state_dict(state_dict)


def resumable_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int,
    pin_memory: bool,
) -> ResumableLoader:
    """A :class:`ResumableLoader` over this rank's :class:`ShardSampler` share of `dataset` (see module doc).

    Args:
        batch_size: per-device batch. shuffle: a new ``(seed, epoch)`` order every epoch.
        drop_last: only whole batches. seed: base seed of the order.
        rank, world_size: this process and the number of processes sharing the data.
        num_workers: worker processes (kept alive across epochs). pin_memory: page-locked batches.
    """
    sampler = ShardSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        batch_size=batch_size,
        drop_last_batch=drop_last,
    )
    with warnings.catch_warnings():
        # torchdata 0.11 calls torch.set_vital, which current torch reports as deprecated (it does nothing)
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
        return ResumableLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed + rank),
        )
