"""OpenAI's ``guided_diffusion.dist_util`` without MPI.

``setup_dist()`` joins a ``torch.distributed`` group when the usual launcher environment is set
(``torchrun`` / SLURM / Lightning: ``WORLD_SIZE`` > 1 with ``RANK`` and ``MASTER_ADDR``); otherwise the
script runs as one process, which is what ``mpiexec``-less use of OpenAI's scripts means. ``dev()`` is the
device to use, ``load_state_dict`` reads a checkpoint with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from adm.io.safe_load import safe_torch_load

__all__ = ["GPUS_PER_NODE", "SETUP_RETRY_COUNT", "dev", "load_state_dict", "setup_dist", "sync_params"]

GPUS_PER_NODE = 8
SETUP_RETRY_COUNT = 3


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")) or 1)


def setup_dist() -> None:
    """Join the process group described by the environment, if any (a no-op for a single process)."""
    if dist.is_available() and dist.is_initialized():
        return
    if _world_size() <= 1 or not dist.is_available():
        return
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={_world_size()} but {key} is not set; start the script with torchrun "
                "(torchrun --nproc_per_node=N script.py ...) or unset WORLD_SIZE for a single process"
            )
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", init_method="env://")


def dev() -> torch.device:
    """This process's device: its GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def load_state_dict(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)`` with ``weights_only=True``: nothing in the file is executed.

    ``map_location`` is honoured (default "cpu"); ``weights_only=False`` is refused with a clear error.
    """
    if kwargs.pop("weights_only", True) is not True:
        raise ValueError(
            "load_state_dict reads checkpoints with weights_only=True only (unpickling arbitrary objects can "
            "run code); re-save the file as a plain state dict"
        )
    map_location = kwargs.pop("map_location", "cpu")
    if kwargs:
        raise TypeError(f"load_state_dict got unexpected keyword arguments {sorted(kwargs)}")
    return safe_torch_load(path, map_location=map_location)


def sync_params(params) -> None:
    """Broadcast each tensor from rank 0 (a no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in params:
        with torch.no_grad():
            dist.broadcast(p, 0)
