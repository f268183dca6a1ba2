"""OpenAI's ``guided_diffusion.gaussian_diffusion``: schedules, the enums and the diffusion class."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from adm.compat.diffusion import GaussianDiffusion, get_named_beta_schedule
from adm.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from adm.diffusion.types import LossType, ModelMeanType, ModelVarType

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "betas_for_alpha_bar",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
]


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas (float64 numpy, (T,)) of the process whose cumulative product follows ``alpha_bar(u)``, u in
    [0, 1]: ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``."""
    steps = int(num_diffusion_timesteps)
    return np.array(
        [min(1.0 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)],
        dtype=np.float64,
    )


def _extract_into_tensor(arr, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """``arr[timesteps]`` as float32 on the timesteps' device, broadcast to ``broadcast_shape`` (B, ...).

    Private in OpenAI's module too, but imported by several projects built on it.
    """
    table = torch.as_tensor(np.asarray(arr), device=timesteps.device)
    res = table[timesteps].float()
    while res.dim() < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)
