"""Beta schedules and timestep respacing (all in float64, like the reference implementation).

Glossary: ``betas[t]`` = beta_t, ``alphas_cumprod[t]`` = alpha_bar_t = prod_{s<=t} (1 - beta_s).
A *respaced* process keeps a subset of the original timesteps; its betas are chosen so that the kept
alpha_bar values are unchanged: beta'_i = 1 - alpha_bar[k_i] / alpha_bar[k_{i-1}].
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "linear_betas",
    "cosine_betas",
    "named_beta_schedule",
    "space_timesteps",
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
        raise ValueError(f"unknown noise_schedule {name!r}; use one of {sorted(BETA_SCHEDULES)}")
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return BETA_SCHEDULES[name](int(steps))


def _evenly_spaced(start: int, size: int, count: int) -> list[int]:
    """``count`` indices from [start, start + size), first and last included, rounded half-to-even."""
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    kept, position = [], 0.0
    for _ in range(count):
        # Accumulating the float position (instead of multiplying) reproduces the reference rounding exactly.
        kept.append(start + round(position))
        position += stride
    return kept


def space_timesteps(num_timesteps: int, spacing: int | str | None) -> list[int]:
    """The original timesteps a respaced process keeps (sorted ascending).

    ``spacing`` is one of
      - ``None`` / ``""``: keep every step;
      - an int or ``"N"``: N steps spread evenly over [0, T-1] (first and last step always kept);
      - ``"a,b,c"``: split [0, T) into equal sections (the first ``T % k`` one step longer) and spread
        ``a``, ``b``, ``c`` steps evenly over each section;
      - ``"ddimN"``: every k-th step from 0, where k is the integer stride that gives exactly N steps
        (the DDIM paper's "uniform" spacing).
    """
    if spacing is None or (isinstance(spacing, str) and spacing.strip() == ""):
        return list(range(num_timesteps))
    if isinstance(spacing, bool):
        raise ValueError(f"timestep spacing must be an int or a string, got {spacing!r}")
    if isinstance(spacing, int):
        spacing = str(spacing)
    if not isinstance(spacing, str):
        raise ValueError(
            f"timestep spacing must be an int or a string like '250', 'ddim25', '10,15,20'; got {spacing!r}"
        )
    text = spacing.strip().replace(" ", "")
    if text.startswith("ddim"):
        try:
            wanted = int(text[len("ddim") :])
        except ValueError:
            raise ValueError(f"bad DDIM spacing {spacing!r}; write it as 'ddimN', e.g. 'ddim25'") from None
        for stride in range(1, num_timesteps):
            kept = list(range(0, num_timesteps, stride))
            if len(kept) == wanted:
                return kept
        if wanted == num_timesteps:
            return list(range(num_timesteps))
        raise ValueError(
            f"cannot take exactly {wanted} of {num_timesteps} steps with an integer stride ('ddim{wanted}'); "
            f"pick a count such as {_ddim_counts_hint(num_timesteps)} or use an even spacing like '{wanted}'"
        )
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"bad timestep spacing {spacing!r}; use an int ('250'), 'ddimN' or comma-separated section counts"
        ) from None
    if any(c < 1 for c in counts):
        raise ValueError(f"every section of timestep spacing {spacing!r} needs at least one step")
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"timestep spacing {spacing!r}: section {i} spans {size} of the {num_timesteps} steps and "
                f"cannot keep {count}; ask for at most {size} there"
            )
        kept += _evenly_spaced(start, size, count)
        start += size
    return sorted(set(kept))


def _ddim_counts_hint(num_timesteps: int) -> str:
    """A few step counts that 'ddimN' can make from ``num_timesteps`` (for error messages)."""
    counts = sorted({len(range(0, num_timesteps, k)) for k in range(1, num_timesteps)}, reverse=True)
    return ", ".join(str(c) for c in [c for c in counts if c <= 250][:6])


def respaced_betas(alphas_cumprod: torch.Tensor, kept: list[int]) -> torch.Tensor:
    """Betas (float64) of the process that keeps timesteps ``kept`` of one with ``alphas_cumprod``."""
    betas, previous = [], 1.0
    for k in kept:
        alpha_bar = float(alphas_cumprod[k])
        betas.append(1.0 - alpha_bar / previous)
        previous = alpha_bar
    return torch.tensor(betas, dtype=torch.float64, device="cpu")
