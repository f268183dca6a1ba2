"""A continuous noise level for ADM's discrete-time networks (the variable of Karras et al. 2022, "EDM").

Notation (paper symbol -> name):
  alpha_bar_t -> ``alphas_cumprod`` of the original (un-respaced) process, t = 0..T-1;
  sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) -> ``NoiseLevels.sigmas`` (increasing in t);
  x = x_t / sqrt(alpha_bar_t) = x_0 + sigma * eps -> the sampler's state (variance-exploding form);
  D(x, sigma) ~ E[x_0 | x] -> :class:`Denoiser`.

ADM's network was trained at the discrete times only. For any sigma, :meth:`NoiseLevels.sigma_to_t` finds
a fractional time by interpolating log sigma linearly between the two neighbouring discrete times (as
k-diffusion's discrete-time wrappers do); sigmas outside [sigma(0), sigma(T-1)] are clamped to the ends.
The network then sees x_t = x / sqrt(1 + sigma^2) (c_in) at that time, in the convention of
``diffusion.model_timesteps`` (``t * 1000 / T`` when ``rescale_timesteps``), as a float.

Schedules (:func:`sigma_schedule`): ``karras`` (Karras et al. 2022, eq. 5, rho = 7), ``logsnr`` (uniform in
log sigma) and ``discrete`` (the process's own sigmas at N evenly spaced times); each is N noise levels,
descending, followed by sigma = 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from adm.diffusion.gaussian import GaussianDiffusion, ModelMeanType
from adm.sampling.common import ModelFn
from adm.sampling.guidance import Guidance, is_active

__all__ = ["SIGMA_SCHEDULES", "Denoiser", "NoiseLevels", "check_sigmas", "sigma_schedule"]

SIGMA_SCHEDULES = ("karras", "logsnr", "discrete")


class NoiseLevels:
    """sigma(t) of a process's original times and the maps between sigma and (fractional) network time.

    Args:
        diffusion: the process (respaced or not: its original alpha_bar is used).
    """

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        alpha_bar = diffusion.base_alphas_cumprod.to(torch.float64).cpu()
        self.sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()  # (T,) float64, increasing in t
        self.log_sigmas = self.sigmas.log()
        if not bool((self.log_sigmas[1:] > self.log_sigmas[:-1]).all()):
            raise ValueError("sigma(t) of the process must increase strictly with t (every beta > 0)")
        self.num_steps = int(alpha_bar.numel())
        self.rescale_timesteps = bool(diffusion.rescale_timesteps)

    @property
    def sigma_min(self) -> float:
        """sigma(0), the lowest noise level the network was trained at."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """sigma(T - 1), the highest noise level the network was trained at."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional time in [0, T - 1] (float64, shaped like `sigma`): log sigma interpolated linearly
        between the discrete times; the discrete sigmas give their integer times, values outside the
        trained range the end times."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        log_sigma = sigma.clamp(min=1e-300).log().clamp(float(self.log_sigmas[0]), float(self.log_sigmas[-1]))
        # The discrete time just below: log_sigmas[low] <= log_sigma < log_sigmas[low + 1] (low <= T - 2).
        low = (torch.searchsorted(self.log_sigmas, log_sigma.reshape(-1), right=True) - 1).clamp(
            0, self.num_steps - 2
        )
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_sigma.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (low.to(torch.float64) + w).reshape(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma at fractional times t in [0, T - 1] (float64): the inverse of :meth:`sigma_to_t`."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.num_steps - 1)
        low = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def model_time(self, sigma: float) -> float:
        """The time the network is handed at noise level sigma (``diffusion.model_timesteps`` convention)."""
        t = float(self.sigma_to_t(sigma))
        return t * 1000.0 / self.num_steps if self.rescale_timesteps else t


def sigma_schedule(
    diffusion: GaussianDiffusion,
    steps: int,
    schedule: str = "karras",
    *,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """The noise levels a sampler visits: (steps + 1,) float64, descending, the last one 0.

    Args:
        diffusion: the network's process (its sigmas bound the range).
        steps: N noise levels above 0.
        schedule: "karras" (sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) -
            sigma_max^(1/rho)))^rho), "logsnr" (uniform in log sigma) or "discrete" (sigma(t) at N evenly
            spaced original times, T - 1 first and 0 last).
        rho: the Karras schedule's exponent (7 in the paper).
        sigma_min, sigma_max: the range for "karras" and "logsnr" (None: sigma(0) and sigma(T - 1) of the
            process); they must lie inside it.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if schedule not in SIGMA_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SIGMA_SCHEDULES)}, got {schedule!r}")
    levels = NoiseLevels(diffusion)
    lowest = levels.sigma_min if sigma_min is None else float(sigma_min)
    highest = levels.sigma_max if sigma_max is None else float(sigma_max)
    tolerance = 1e-9 * levels.sigma_max
    if not levels.sigma_min - tolerance <= lowest < highest <= levels.sigma_max + tolerance:
        raise ValueError(
            f"need sigma(0) = {levels.sigma_min:.4g} <= sigma_min < sigma_max <= sigma(T-1) = "
            f"{levels.sigma_max:.4g}, got sigma_min={lowest:.4g}, sigma_max={highest:.4g}"
        )
    if schedule == "discrete":
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("schedule='discrete' takes the process's own sigmas: leave sigma_min/max unset")
        times = torch.linspace(levels.num_steps - 1, 0, steps, dtype=torch.float64).round().long()
        sigmas = levels.sigmas[times] if steps > 1 else levels.sigmas[-1:]
    elif steps == 1:
        sigmas = torch.tensor([highest], dtype=torch.float64)
    elif schedule == "karras":
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        top, bottom = highest ** (1 / rho), lowest ** (1 / rho)
        sigmas = (top + ramp * (bottom - top)) ** rho
    else:  # logsnr
        sigmas = torch.linspace(math.log(highest), math.log(lowest), steps, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def check_sigmas(sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """A ready schedule as float64 (N + 1,): positive and strictly descending, then exactly one 0."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
    if (
        sigmas.numel() < 2
        or float(sigmas[-1]) != 0.0
        or not bool((sigmas[:-1] > 0).all())
        or not bool((sigmas[1:] < sigmas[:-1]).all())
    ):
        raise ValueError("sigmas must be positive and strictly descending, ending with a single 0")
    return sigmas


class Denoiser:
    """D(x, sigma): ADM's network read as a denoiser of x = x_0 + sigma * eps (x_0 in [-1, 1] units).

    Args:
        model_fn: ``model_fn(x_t, t_model, **model_kwargs)`` -> eps or x_0 (ModelMeanType EPSILON or
            START_X), (B, C or 2C, H, W); with a learned variance only the first C channels are read.
        diffusion: the network's process (mean type, schedule, ``rescale_timesteps``).
        model_kwargs: extra network inputs (e.g. {"y": labels}), also handed to ``guidance``.
        guidance: classifier guidance in score form, as DDIM: the gradient at x_t corrects eps,
            eps <- eps - sqrt(1 - alpha_bar) * grad, with alpha_bar = 1 / (1 + sigma^2).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        diffusion: GaussianDiffusion,
        *,
        model_kwargs: dict | None = None,
        guidance: Guidance | None = None,
    ) -> None:
        if not isinstance(diffusion, GaussianDiffusion):
            raise ValueError(
                f"diffusion must be an adm.diffusion.GaussianDiffusion, got {type(diffusion).__name__}"
            )
        if diffusion.model_mean_type not in (ModelMeanType.EPSILON, ModelMeanType.START_X):
            raise ValueError(
                "the sigma samplers read eps or x_0 from the network; "
                f"model_mean_type {diffusion.model_mean_type.name} is neither"
            )
        self.model_fn = model_fn
        self.diffusion = diffusion
        self.levels = NoiseLevels(diffusion)
        self.model_kwargs = model_kwargs or {}
        self.guidance = guidance

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The x_0 estimate (shaped and typed like x) of x (B, C, H, W) at noise level sigma > 0."""
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)  # x_t = sqrt(alpha_bar) x
        x_t = x * c_in
        t_model = torch.full(
            (x.shape[0],), self.levels.model_time(sigma), dtype=torch.float32, device=x.device
        )
        output, _ = self.diffusion.split_model_output(self.model_fn(x_t, t_model, **self.model_kwargs), x_t)
        output = output.to(x.dtype)
        guided = is_active(self.guidance)
        if self.diffusion.model_mean_type == ModelMeanType.START_X:
            if not guided:
                return output
            eps = (x - output) / sigma
        else:
            eps = output
        if guided:
            # Score form: eps <- eps - sqrt(1 - alpha_bar) * s * grad log p(y | x_t), sqrt(1 - alpha_bar) =
            # sigma * c_in.
            grad = self.guidance(x_t, t_model, **self.model_kwargs).to(x.dtype)
            eps = eps - sigma * c_in * grad
        return x - sigma * eps
