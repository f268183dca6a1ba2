"""OpenAI's ``guided_diffusion.resample``: timestep samplers by name, over ``adm.diffusion.timestep_sampler``.

``sample(batch_size, device)`` returns ``(t, weights)`` drawn as OpenAI's samplers draw them: from numpy's
global generator, one ``np.random.choice(T, size=(batch_size,), p=p)`` call with ``p = weights() / sum``,
weights ``1 / (T * p[t])``. After the same ``np.random.seed(s)`` a script therefore gets the same timesteps
and weights as with OpenAI's package, and numpy's global state moves on exactly as it would there. (adm's
own samplers, ``.core``, draw with torch generators so that training resumes bit-exact; adm's Lightning
training, and so ``train_util.TrainLoop``, uses those.)

The loss-aware sampler is fed with ``update_with_local_losses`` (gathered over ranks when a process group
is up) or ``update_with_all_losses``; it stays uniform until every timestep has ``history_per_term``
losses. ``.core`` is the adm sampler underneath and holds that history.
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
    """A distribution over the diffusion's timesteps (importance weights keep the objective unbiased).

    Subclasses define ``weights()``; ``sample`` draws from numpy's global generator as OpenAI's does.
    """

    core: TimestepSampler

    def weights(self) -> np.ndarray:
        """Unnormalised probability of each timestep, float64 numpy (T,)."""
        return self.core.weights().numpy()

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps int64 (B,), weights float32 (B,)) on ``device``, from numpy's global generator."""
        w = self.weights()
        p = w / np.sum(w)
        t = np.random.choice(len(p), size=(batch_size,), p=p)
        importance = 1 / (len(p) * p[t])  # float64, cast to float32 only at the end
        return torch.from_numpy(t).long().to(device), torch.from_numpy(importance).float().to(device)


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely."""

    def __init__(self, diffusion) -> None:
        self.diffusion = diffusion
        self.core = _Uniform(diffusion)
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that learns from the training losses."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's (t, loss) pairs, after gathering every rank's (all ranks stay identical).

        Ranks may hold different numbers of pairs; the gathered pairs are recorded rank by rank.
        """
        if not (dist.is_available() and dist.is_initialized()):
            self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())
            return
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.int32, device=local_ts.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([len(local_ts)], dtype=torch.int32, device=local_ts.device))
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)

        def padded(x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(longest, dtype=x.dtype, device=x.device)
            out[: len(x)] = x
            return out

        ts = [torch.zeros(longest, dtype=local_ts.dtype, device=local_ts.device) for _ in range(world)]
        losses = [
            torch.zeros(longest, dtype=local_losses.dtype, device=local_losses.device) for _ in range(world)
        ]
        dist.all_gather(ts, padded(local_ts))
        dist.all_gather(losses, padded(local_losses))
        self.update_with_all_losses(
            [v for x, n in zip(ts, counts) for v in x[:n].tolist()],
            [v for x, n in zip(losses, counts) for v in x[:n].tolist()],
        )

    def update_with_all_losses(self, ts, losses) -> None:
        """Record (t, loss) pairs that are already the same on every rank."""
        self.core.update_with_losses(torch.as_tensor(ts), torch.as_tensor(losses, dtype=torch.float64))


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) proportional to sqrt(E[L_t^2]) over each step's last ``history_per_term`` losses.

    Uniform until every step has a full history; afterwards a ``uniform_prob`` share stays uniform.
    """

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001) -> None:
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.core = LossSecondMomentSampler(
            diffusion, history_per_term=history_per_term, uniform_prob=uniform_prob
        )

    @property
    def _loss_history(self) -> np.ndarray:
        """(T, history_per_term) float64: the recorded losses (a view of ``core.loss_history``)."""
        return self.core.loss_history.numpy()

    @property
    def _loss_counts(self) -> np.ndarray:
        """(T,) int64: how many losses each step holds (a view of ``core.loss_counts``)."""
        return self.core.loss_counts.numpy()

    def weights(self) -> np.ndarray:
        """Float64 numpy, with OpenAI's arithmetic (so that ``sample`` draws the same steps)."""
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        w /= np.sum(w)
        w *= 1 - self.uniform_prob
        w += self.uniform_prob / len(w)
        return w

    def _warmed_up(self) -> bool:
        return self.core.warmed_up


_NAMED = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentResampler}


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """``"uniform"`` or ``"loss-second-moment"`` for ``diffusion``."""
    if name not in _NAMED:
        raise NotImplementedError(f"unknown schedule sampler: {name!r}; use one of {sorted(_NAMED)}")
    return _NAMED[name](diffusion)
