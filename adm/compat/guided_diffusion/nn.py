"""OpenAI's ``guided_diffusion.nn``: small layer factories and helpers, over ``adm.nn.layers``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from adm.diffusion.losses import mean_flat
from adm.nn.layers import GroupNorm32 as _GroupNorm32
from adm.nn.layers import maybe_checkpoint, timestep_embedding, zero_module

__all__ = [
    "GroupNorm32",
    "SiLU",
    "avg_pool_nd",
    "checkpoint",
    "conv_nd",
    "linear",
    "mean_flat",
    "normalization",
    "scale_module",
    "timestep_embedding",
    "update_ema",
    "zero_module",
]

SiLU = nn.SiLU


class GroupNorm32(_GroupNorm32):
    """adm's float32 GroupNorm with ``torch.nn.GroupNorm``'s argument order ``(num_groups, num_channels)``."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, num_groups=num_groups, eps=eps)


def normalization(channels: int) -> GroupNorm32:
    """GroupNorm with 32 groups, computed in float32."""
    return GroupNorm32(32, channels)


def _by_dims(dims: int, layers: Sequence[type[nn.Module]], what: str) -> type[nn.Module]:
    if dims not in (1, 2, 3):
        raise ValueError(f"unsupported dimensions for {what}: {dims} (use 1, 2 or 3)")
    return layers[dims - 1]


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` for dims 1 / 2 / 3."""
    return _by_dims(dims, (nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv_nd")(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """``nn.AvgPool1d`` / ``AvgPool2d`` / ``AvgPool3d`` for dims 1 / 2 / 3."""
    return _by_dims(dims, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avg_pool_nd")(*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    """``nn.Linear``."""
    return nn.Linear(*args, **kwargs)


@torch.no_grad()
def update_ema(target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], rate=0.99):
    """target <- rate * target + (1 - rate) * source, parameter by parameter."""
    for target, source in zip(target_params, source_params):
        target.detach().mul_(rate).add_(source, alpha=1 - rate)


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply every parameter of ``module`` by ``scale`` in place; returns the module."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def checkpoint(func: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], params, flag: bool):
    """``func(*inputs)``, recomputed in the backward pass when ``flag`` (gradient checkpointing).

    ``params`` (the parameters ``func`` uses) is accepted for OpenAI's signature; torch's non-reentrant
    checkpoint finds them itself.
    """
    del params
    return maybe_checkpoint(bool(flag), func, *inputs)
