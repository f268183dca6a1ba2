"""Beta schedules and timestep respacing (all in float64, like the reference implementation).

Glossary: ``betas[t]`` = beta_t, ``alphas_cumprod[t]`` = alpha_bar_t = prod_{s<=t} (1 - beta_s).
A *respaced* process keeps a subset of the original timesteps (``adm.diffusion.spacing`` says which); its
betas are chosen so that the kept alpha_bar values are unchanged:
beta'_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}].
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "linear_betas",
    "cosine_betas",
    "named_beta_schedule",
    "respaced_betas",
    "BETA_SCHEDULES",
]


def linear_betas(steps: int) -> torch.Tensor:
    """Linear schedule of Ho et al., rescaled so that any ``steps`` covers the same noise range as 1000.

    Returns float64 (steps,) from 1e-4 * 1000/steps to 0.02 * 1000/steps.
    """
    scale = 1000.0 / steps
    # numpy's linspace (not torch's) reproduces the reference values to the last bit.
    return torch.from_numpy(np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64))


def _cosine_alpha_bar(u: float) -> float:
    """alpha_bar at diffusion time u in [0, 1] (Nichol & Dhariwal 2021, eq. 17, s = 0.008)."""
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(steps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule: beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at ``max_beta``.

    The clip keeps the last step from being a pure-noise singularity. Returns float64 (steps,).
    """
    betas = [
        min(1.0 - _cosine_alpha_bar((i + 1) / steps) / _cosine_alpha_bar(i / steps), max_beta)
        for i in range(steps)
    ]
    return torch.tensor(betas, dtype=torch.float64, device="cpu")


BETA_SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def named_beta_schedule(name: str, steps: int) -> torch.Tensor:
    """Betas (float64, (steps,)) of the schedule called ``name`` ("linear" or "cosine")."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of: {', '.join(sorted(BETA_SCHEDULES))}")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return BETA_SCHEDULES[name](int(steps))


def respaced_betas(alphas_cumprod: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Betas (float64) of the process that keeps timesteps ``kept`` of one with ``alphas_cumprod``."""
    betas, previous = [], 1.0
    for k in kept:
        alpha_bar = float(alphas_cumprod[k])
        betas.append(1.0 - alpha_bar / previous)
        previous = alpha_bar
    return torch.tensor(betas, dtype=torch.float64, device="cpu")
