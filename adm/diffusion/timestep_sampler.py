"""Which timesteps a training batch uses.

``sample`` returns step indices and importance weights; multiplying each example's loss by its weight keeps
the objective unbiased: E_{t ~ p}[w(t) L_t] = mean_t L_t with w(t) = 1 / (T p(t)).

Under data parallelism every rank calls ``update_with_losses`` with the losses gathered from all ranks, so
every rank holds the same state and draws from the same distribution.
"""

from __future__ import annotations

import torch

from adm.diffusion.gaussian import GaussianDiffusion

__all__ = ["TimestepSampler", "UniformSampler", "LossSecondMomentSampler", "create_timestep_sampler"]


class TimestepSampler:
    """Base class: subclasses define ``weights()`` (unnormalised probabilities, float64 (T,))."""

    num_timesteps: int

    def weights(self) -> torch.Tensor:
        raise NotImplementedError

    def sample(
        self, batch_size: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``batch_size`` steps. Returns (t int64 (B,), weights float32 (B,)) on ``device``.

        ``generator``: a CPU generator (drawing happens on the CPU so results do not depend on the device).
        """
        p = self.weights().double()
        p = p / p.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        w = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), w.float().to(device)

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-example losses (already gathered across ranks). No-op unless the sampler adapts."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class UniformSampler(TimestepSampler):
    """t ~ Uniform{0, ..., T-1}; every weight is 1."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.num_timesteps = diffusion.num_timesteps

    def weights(self) -> torch.Tensor:
        return torch.ones(self.num_timesteps, dtype=torch.float64)


class LossSecondMomentSampler(TimestepSampler):
    """Importance sampling p(t) ∝ sqrt(E[L_t^2]) over the last ``history_per_term`` losses of each step.

    Uniform until every step has a full history; a ``uniform_prob`` share stays uniform afterwards so that
    no step's probability collapses to zero (Nichol & Dhariwal 2021, section 3.3).
    """

    def __init__(
        self, diffusion: GaussianDiffusion, history_per_term: int = 10, uniform_prob: float = 0.001
    ) -> None:
        if history_per_term < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError("history_per_term must be >= 1 and uniform_prob in [0, 1]")
        self.num_timesteps = diffusion.num_timesteps
        self.history_per_term = int(history_per_term)
        self.uniform_prob = float(uniform_prob)
        self.loss_history = torch.zeros(self.num_timesteps, self.history_per_term, dtype=torch.float64)
        self.loss_counts = torch.zeros(self.num_timesteps, dtype=torch.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up:
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = torch.sqrt((self.loss_history**2).mean(dim=-1))
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append each (t_i, loss_i) to step t_i's history (a FIFO of the last ``history_per_term``)."""
        t = torch.as_tensor(t).detach().flatten().cpu().long().tolist()
        losses = torch.as_tensor(losses).detach().flatten().cpu().double().tolist()
        if len(t) != len(losses):
            raise ValueError(f"got {len(t)} timesteps and {len(losses)} losses; they must pair up")
        for step, loss in zip(t, losses):
            count = int(self.loss_counts[step])
            if count == self.history_per_term:
                self.loss_history[step, :-1] = self.loss_history[step, 1:].clone()
                self.loss_history[step, -1] = loss
            else:
                self.loss_history[step, count] = loss
                self.loss_counts[step] = count + 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss_history": self.loss_history.clone(), "loss_counts": self.loss_counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        history, counts = state.get("loss_history"), state.get("loss_counts")
        if history is None or counts is None:
            raise ValueError(
                f"LossSecondMomentSampler state needs loss_history and loss_counts, got {sorted(state)}"
            )
        if tuple(history.shape) != tuple(self.loss_history.shape) or tuple(counts.shape) != tuple(
            self.loss_counts.shape
        ):
            raise ValueError(
                f"saved loss history has shape {tuple(history.shape)}, this sampler expects "
                f"{tuple(self.loss_history.shape)} (num_timesteps, history_per_term); "
                "build it with the same settings"
            )
        self.loss_history = history.detach().to("cpu", torch.float64).clone()
        self.loss_counts = counts.detach().to("cpu", torch.int64).clone()


_SAMPLERS = {"uniform": UniformSampler, "loss-second-moment": LossSecondMomentSampler}


def create_timestep_sampler(name: str, diffusion: GaussianDiffusion) -> TimestepSampler:
    """Sampler by name: "uniform" or "loss-second-moment"."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; use one of {sorted(_SAMPLERS)}")
    return _SAMPLERS[name](diffusion)
