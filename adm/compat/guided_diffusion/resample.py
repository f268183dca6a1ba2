"""OpenAI's ``guided_diffusion.resample``: timestep samplers by name, over ``adm.diffusion.timestep_sampler``.

``sample(batch_size, device)`` returns ``(t, weights)`` as OpenAI's samplers do; the loss-aware sampler is
fed with ``update_with_local_losses`` (gathered over ranks when a process group is up) or
``update_with_all_losses``. ``.core`` is the adm sampler underneath.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from adm.diffusion.timestep_sampler import LossSecondMomentSampler, TimestepSampler
from adm.diffusion.timestep_sampler import UniformSampler as _Uniform

__all__ = [
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "ScheduleSampler",
    "UniformSampler",
    "create_named_schedule_sampler",
]


class ScheduleSampler:
    """A distribution over the diffusion's timesteps (importance weights keep the objective unbiased)."""

    core: TimestepSampler

    def weights(self) -> np.ndarray:
        """Unnormalised probability of each timestep, float64 numpy (T,)."""
        return self.core.weights().numpy()

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps int64 (B,), weights float32 (B,)) on ``device``."""
        return self.core.sample(batch_size, device)


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely."""

    def __init__(self, diffusion) -> None:
        self.diffusion = diffusion
        self.core = _Uniform(diffusion)


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the training losses."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's (t, loss) pairs, after gathering every rank's (all ranks stay identical)."""
        if dist.is_available() and dist.is_initialized():
            ts = [torch.zeros_like(local_ts) for _ in range(dist.get_world_size())]
            losses = [torch.zeros_like(local_losses) for _ in range(dist.get_world_size())]
            dist.all_gather(ts, local_ts)
            dist.all_gather(losses, local_losses)
            local_ts, local_losses = torch.cat(ts), torch.cat(losses)
        self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())

    def update_with_all_losses(self, ts, losses) -> None:
        """Record (t, loss) pairs that are already the same on every rank."""
        self.core.update_with_losses(torch.as_tensor(ts), torch.as_tensor(losses, dtype=torch.float64))


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over each step's last ``history_per_term`` losses."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.core = LossSecondMomentSampler(
            diffusion, history_per_term=history_per_term, uniform_prob=uniform_prob
        )

    def _warmed_up(self) -> bool:
        return self.core.warmed_up


_NAMED = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """``"uniform"`` or ``"loss-second-moment"`` for ``diffusion``."""
    if name not in _NAMED:
        raise NotImplementedError(f"unknown schedule sampler: {name!r}; use one of {sorted(_NAMED)}")
    return _NAMED[name](diffusion)
