"""The sharded sampling run that scripts/sample.py and scripts/upsample.py share.

A run draws ``num_samples`` images into ``out_dir`` as shards (``adm.io.shards``), split over the processes
of Lightning Fabric, and resumes where it stopped: a finished shard is never drawn again. The protocol:

1. every process loads its networks and describes the run's files (the recipe's ``build``);
2. rank 0 checks what scoring will need and records the run's settings (a folder holding samples of other
   settings is refused), and looks for a merged file of these settings (then nothing is drawn);
3. each process draws its missing shards (shard k goes to rank k % world_size); all wait at a barrier;
4. rank 0 merges the shards into ``samples_NxHxWxC.npz``, draws ``grid.png`` and scores the samples
   (``metrics.json``) when a reference or a domain classifier is given.

A recipe gives a ``build(fabric, cfg) -> (ShardStore, drawer)``; the drawer draws images by sample index
(``drawer(indices) -> (uint8 (n, H, W, C), labels (n,) | None)``) and says what it draws with
(``drawer.record``: sampler, steps, guidance, ...; ``drawer.labels``: the labels by index).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from lightning_fabric import Fabric
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from tqdm.auto import tqdm

from adm.io.grid import label_captions, save_grid
from adm.io.npz import read_images, write_pngs
from adm.io.shards import ShardStore, merge_shards
from adm.recipes.evaluate import check_scoring, score_samples

__all__ = ["Drawer", "build_fabric", "generate_shards", "run_rank"]

log = logging.getLogger("sample")


class Drawer(Protocol):
    """Draws a run's images by sample index."""

    image_shape: tuple[int, int, int]  # (H, W, C) of the images drawn
    labels: Callable[[range], np.ndarray | None] | None  # the labels by index, None for unlabelled samples
    record: dict[str, Any]  # what the images are drawn with, recorded in metrics.json

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]: ...


def build_fabric(trainer: dict[str, Any]) -> Fabric:
    """Lightning Fabric from the ``trainer`` settings (the sampling runtime).

    Several devices or nodes: the processes a cluster started (``srun`` under SLURM, ``torchrun``) join one
    DDP group; started by hand, one process per device is spawned.
    """
    strategy = trainer["strategy"]
    devices = trainer["devices"]
    many = (
        (isinstance(devices, int) and devices > 1) or isinstance(devices, list | tuple) and len(devices) > 1
    )
    if strategy == "auto" and (many or int(trainer["num_nodes"]) > 1):
        launched = (SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1) or (
            TorchElasticEnvironment.detect()
        )
        strategy = "ddp" if launched else "ddp_spawn"
    return Fabric(
        accelerator=trainer["accelerator"],
        devices=devices,
        num_nodes=trainer["num_nodes"],
        strategy=strategy,
        precision=trainer["precision"],
    )


def generate_shards(
    store: ShardStore,
    draw: Callable[[range], tuple[np.ndarray, np.ndarray | None]],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    labels: Callable[[range], np.ndarray | None] | None = None,
    progress: bool = True,
    png_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Generate this rank's missing shards (shard k belongs to rank k % world_size); valid ones are skipped.

    Args:
        store: the run's files (``store.prepare()`` must have run, on rank 0).
        draw: ``draw(indices) -> (images uint8 (n, H, W, C), labels (n,) | None)``.
        batch_size: samples per call of `draw` (per device); a batch never straddles two shards, so every
            shard is cut into the same batches whatever the device count.
        rank, world_size: this process among all sampling processes.
        labels: the run's labels by index (checked against finished shards); defaults to ``draw.labels``.
        progress: show a progress bar (rank 0).
        png_dir: also write every generated image as ``{index:06d}.png`` there.
    Returns:
        {"generated": shards written, "skipped": shards already done} for this rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is None:
        labels = getattr(draw, "labels", None)
    mine = store.layout.shards_of(rank, world_size)
    todo = []
    for k in mine:
        problem = store.check_shard(k, store.expected_labels(k, labels))
        if problem is None:
            continue
        if problem != "missing":
            log.warning("regenerating %s: %s", store.shard_path(k), problem)
        todo.append(k)
    skipped = len(mine) - len(todo)
    if skipped:
        log.info("rank %d: %d of its %d shards are already done, skipped", rank, skipped, len(mine))
    total = sum(len(store.layout.indices(k)) for k in todo)
    bar = tqdm(
        total=total,
        desc=f"sampling (rank {rank})",
        unit="img",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    try:
        for k in todo:
            indices = store.layout.indices(k)
            image_parts, label_parts = [], []
            for first in range(indices.start, indices.stop, batch_size):
                batch = range(first, min(first + batch_size, indices.stop))
                images, batch_labels = draw(batch)
                image_parts.append(images)
                if batch_labels is not None:
                    label_parts.append(batch_labels)
                bar.update(len(batch))
            images = np.concatenate(image_parts)
            shard_labels = np.concatenate(label_parts) if label_parts else None
            store.write_shard(k, images, shard_labels)
            if png_dir is not None:
                write_pngs(Path(png_dir), indices, images, shard_labels)
    finally:
        bar.close()
    if total:
        seconds = time.perf_counter() - start
        rate = total / max(seconds, 1e-9)
        log.info("rank %d: %d samples in %.1f s (%.2f img/s)", rank, total, seconds, rate)
    return {"generated": len(todo), "skipped": skipped}


def _merged_is_complete(store: ShardStore) -> bool:
    """True when the merged file of this run (same settings: ``prepare`` checked them) is already there."""
    path = store.merged_path
    if not path.is_file():
        return False
    try:
        images, _ = read_images(path, 0)
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        return False
    return images.shape[1:] == store.image_shape


def run_rank(
    fabric: Fabric,
    cfg: dict[str, Any],
    build: Callable[[Fabric, dict[str, Any]], tuple[ShardStore, Drawer]],
) -> dict[str, Any] | None:
    """One process of a sharded run: its shards, then (rank 0) merge, grid and scores.

    Args:
        fabric: the launched Fabric of this process.
        cfg: the run's resolved settings (``num_samples``, ``batch_size``, ``out_dir``, ``grid_size``,
            ``grid_nrow``, ``keep_shards``, ``progress``, ``evaluate``; optional ``save_png``,
            ``grid_captions``).
        build: loads the networks on this process's device -> (the run's files, the drawer).
    Returns:
        Rank 0's summary (paths, shard counts, seconds per image, metrics); None on the other ranks.
    """
    if not logging.getLogger().handlers:  # a spawned process: Hydra's logging lives in the parent only
        level = logging.INFO if fabric.global_rank == 0 else logging.WARNING
        logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    store, drawer = build(fabric, cfg)
    done = False
    if fabric.global_rank == 0:
        check_scoring(cfg["evaluate"], drawer.image_shape)  # before the run records its settings or draws
        store.prepare()  # refuses a folder holding samples of other settings
        done = _merged_is_complete(store)
    done = fabric.broadcast(done, src=0)
    counts: dict[str, Any] = {"generated": 0, "skipped": store.layout.num_shards}
    if not done:
        png_dir = Path(cfg["out_dir"]) / "png" if cfg.get("save_png") else None
        started = time.perf_counter()
        counts = generate_shards(
            store,
            drawer,
            batch_size=cfg["batch_size"],
            rank=fabric.global_rank,
            world_size=fabric.world_size,
            progress=cfg["progress"],
            png_dir=png_dir,
        )
        if counts["generated"] and not counts["skipped"]:  # this run drew every image: time per image
            elapsed = time.perf_counter() - started
            counts["seconds_per_image"] = elapsed * fabric.world_size / store.layout.num_samples
    fabric.barrier()
    if fabric.global_rank != 0:
        return None
    if done:
        log.info("%s is complete already: nothing to sample", store.merged_path)
    else:
        merge_shards(store, delete_shards=not cfg["keep_shards"])
        log.info("wrote %s", store.merged_path)
    out_dir = Path(cfg["out_dir"])
    images, grid_labels = read_images(store.merged_path, cfg["grid_size"])
    captions = None
    if cfg.get("grid_captions") and grid_labels is not None:
        class_names = (store.info.get("model") or {}).get("class_names")
        captions = label_captions(grid_labels, class_names)  # each image's class name (or index) under it
    save_grid(images, out_dir / "grid.png", nrow=cfg["grid_nrow"], captions=captions)
    result: dict[str, Any] = {
        "samples": str(store.merged_path),
        "grid": str(out_dir / "grid.png"),
        "generated_shards": counts["generated"],
        "skipped_shards": counts["skipped"],
    }
    if "seconds_per_image" in counts:
        result["seconds_per_image"] = counts["seconds_per_image"]
    record = {**drawer.record, "seconds_per_image": counts.get("seconds_per_image"), "seed": cfg["seed"]}
    metrics = score_samples(
        cfg["evaluate"],
        store.merged_path,
        out_dir,
        torch.device(fabric.device),
        record=record,
        progress=cfg["progress"],
    )
    if metrics is not None:
        result["metrics"] = metrics
    return result
