"""Samplers in the noise level sigma for ADM's discrete-time networks: Euler ancestral, EDM's stochastic
Heun sampler (Karras et al. 2022, Algorithm 2) and SDE-DPM-Solver++ 2M (Lu et al. 2022).

They integrate in x = x_0 + sigma * eps (see :mod:`adm.sampling.sigma`): D(x, sigma) is the network read as
a denoiser at a fractional time, d = (x - D) / sigma is dx/dsigma of the probability-flow ODE. ADM's
x_T ~ N(0, I) is the variance-preserving x_t at the first noise level sigma_0, so the start is
x = x_T * sqrt(1 + sigma_0^2) (exact, not the usual approximation sigma_0 * x_T). The last step lands on
sigma = 0 and the result is x_0 (clamped to [-1, 1] when ``clip_denoised``).

Shared options: ``steps`` (network calls per image; see each sampler), ``schedule`` ("karras", "logsnr"
or "discrete", :func:`adm.sampling.sigma.sigma_schedule`), ``rho``, ``sigma_min``, ``sigma_max``, or a
ready ``sigmas`` sequence (descending, ending with 0; replaces steps and schedule). Fresh noise comes from
``noise(x)`` (per-sample generators in ``draw_images``), only on the steps that add noise. Classifier
guidance corrects eps in score form, as DDIM; classifier-free guidance wraps the network.
The callback gets dict(step, sigma, t (fractional original time), x_t, x_prev (both variance-preserving,
as the other samplers report them), pred_x0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from adm.diffusion.gaussian import GaussianDiffusion
from adm.sampling.common import Callback, ModelFn, NoiseFn
from adm.sampling.guidance import Guidance
from adm.sampling.noise import randn_like
from adm.sampling.sigma import Denoiser, check_sigmas, sigma_schedule

__all__ = ["dpmpp_2m_sde_sample", "edm_sample", "euler_ancestral_sample", "heun_levels"]

Sigmas = Sequence[float] | torch.Tensor | None


def heun_levels(steps: int) -> int:
    """Noise levels of a Heun run with at most `steps` network calls: 2 calls per level but the last."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    return (steps + 1) // 2


def _setup(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    model_kwargs: dict | None,
    guidance: Guidance | None,
    noise: NoiseFn | None,
    levels: int,
    schedule: str,
    rho: float,
    sigma_min: float | None,
    sigma_max: float | None,
    sigmas: Sigmas,
) -> tuple[Denoiser, list[float], torch.Tensor, NoiseFn]:
    """(denoiser, the noise levels ending with 0, the start x in sigma space, the noise source)."""
    denoiser = Denoiser(model_fn, diffusion, model_kwargs=model_kwargs, guidance=guidance)
    if sigmas is None:
        sigmas = sigma_schedule(
            diffusion, levels, schedule, rho=rho, sigma_min=sigma_min, sigma_max=sigma_max
        )
    sigmas = check_sigmas(sigmas).tolist()
    # ADM's x_T is the variance-preserving x_t at sigma_0: x = x_t / sqrt(alpha_bar) = x_t sqrt(1 + sigma^2).
    x = x_T * math.sqrt(1.0 + sigmas[0] ** 2)
    return denoiser, sigmas, x, (noise if noise is not None else randn_like)


def _report(
    callback: Callback | None,
    denoiser: Denoiser,
    i: int,
    sigma: float,
    sigma_next: float,
    x: torch.Tensor,
    x_next: torch.Tensor,
    denoised: torch.Tensor,
) -> None:
    if callback is not None:
        callback(
            {
                "step": i,
                "sigma": sigma,
                "t": float(denoiser.levels.sigma_to_t(sigma)),
                "x_t": x / math.sqrt(1.0 + sigma**2),
                "x_prev": x_next / math.sqrt(1.0 + sigma_next**2),
                "pred_x0": denoised,
            }
        )


def _finish(x: torch.Tensor, clip_denoised: bool) -> torch.Tensor:
    return x.clamp(-1, 1) if clip_denoised else x


@torch.no_grad()
def euler_ancestral_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    model_kwargs: dict | None = None,
    guidance: Guidance | None = None,
    noise: NoiseFn | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
    steps: int = 25,
    schedule: str = "karras",
    eta: float = 1.0,
    s_noise: float = 1.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    sigmas: Sigmas = None,
) -> torch.Tensor:
    """Euler ancestral sampling: ``steps`` noise levels, one network call each (``steps`` calls per image).

    Each step goes from sigma to sigma' with a deterministic Euler step down to sigma_down and adds fresh
    noise of std sigma_up, sigma_down^2 + sigma_up^2 = sigma'^2, where sigma_up = min(sigma', eta *
    sigma' sqrt(1 - sigma'^2 / sigma^2)): eta = 1 is the ancestral (DDPM-like) step, eta = 0 plain Euler.
    ``s_noise`` scales the added noise. Other arguments: see :mod:`adm.sampling.stochastic`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    denoiser, sigmas, x, noise = _setup(
        model_fn,
        diffusion,
        x_T,
        model_kwargs=model_kwargs,
        guidance=guidance,
        noise=noise,
        levels=steps,
        schedule=schedule,
        rho=rho,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=sigmas,
    )
    for i in tqdm(range(len(sigmas) - 1), desc="euler ancestral", disable=not progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        # Split sigma' into a deterministic part (sigma_down) and fresh noise (sigma_up).
        sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(1.0 - sigma_next**2 / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        # Euler step from sigma to sigma_down along d = (x - D) / sigma.
        x_next = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_up > 0:
            x_next = x_next + s_noise * sigma_up * noise(x)
        _report(callback, denoiser, i, sigma, sigma_next, x, x_next, denoised)
        x = x_next
    return _finish(x, clip_denoised)


@torch.no_grad()
def edm_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    model_kwargs: dict | None = None,
    guidance: Guidance | None = None,
    noise: NoiseFn | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
    steps: int = 25,
    schedule: str = "karras",
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    sigmas: Sigmas = None,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2): Heun's 2nd-order method with churn.

    ``steps`` is the number of network calls per image: N = (steps + 1) // 2 noise levels, two calls per
    level but one on the last (onto sigma = 0), so an even ``steps`` makes steps - 1 calls
    (:func:`adm.sampling.network_calls`). With a ready ``sigmas`` the calls are 2 N - 1.
    S_churn: total added noise (gamma_i = min(S_churn / N, sqrt(2) - 1)) on the levels in [S_tmin, S_tmax];
    S_noise: std of the added noise (slightly above 1 in the paper). S_churn = 0 is the deterministic Heun
    sampler (Algorithm 1). Other arguments: see :mod:`adm.sampling.stochastic`.
    """
    if S_churn < 0 or S_noise < 0:
        raise ValueError(f"S_churn and S_noise must be >= 0, got {S_churn} and {S_noise}")
    denoiser, sigmas, x, noise = _setup(
        model_fn,
        diffusion,
        x_T,
        model_kwargs=model_kwargs,
        guidance=guidance,
        noise=noise,
        levels=heun_levels(steps),
        schedule=schedule,
        rho=rho,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=sigmas,
    )
    n = len(sigmas) - 1
    for i in tqdm(range(n), desc="edm", disable=not progress):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # Increase noise temporarily: t_hat = (1 + gamma) t_i, x_hat = x_i + sqrt(t_hat^2 - t_i^2) S_noise z.
        gamma = min(S_churn / n, math.sqrt(2.0) - 1.0) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur + gamma * t_cur
        x_hat = x
        if gamma > 0:
            x_hat = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise(x)
        # Euler step.
        denoised = denoiser(x_hat, t_hat)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # Apply 2nd order correction (not on the last step, onto sigma = 0).
        if t_next > 0:
            d_prime = (x_next - denoiser(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        _report(callback, denoiser, i, t_hat, t_next, x_hat, x_next, denoised)
        x = x_next
    return _finish(x, clip_denoised)


@torch.no_grad()
def dpmpp_2m_sde_sample(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_T: torch.Tensor,
    *,
    model_kwargs: dict | None = None,
    guidance: Guidance | None = None,
    noise: NoiseFn | None = None,
    clip_denoised: bool = True,
    callback: Callback | None = None,
    progress: bool = False,
    steps: int = 25,
    schedule: str = "karras",
    eta: float = 1.0,
    s_noise: float = 1.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    sigmas: Sigmas = None,
) -> torch.Tensor:
    """SDE-DPM-Solver++ 2M (Lu et al. 2022, with k-diffusion's midpoint form of the second-order term):
    ``steps`` noise levels, one network call each (``steps`` calls per image).

    With lambda = -log sigma, h = lambda' - lambda and D the data prediction, a step from sigma to sigma' is

        x' = (sigma' / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) (D + (D - D_prev) / (2 r))
             + sigma' sqrt(1 - e^{-2 eta h}) s_noise z,

    where r = h_prev / h and the D_prev term is left out on the first step; the last step returns D.
    eta = 1 is the SDE solver, eta = 0 the ODE (DPM-Solver++ 2M). Other arguments: see
    :mod:`adm.sampling.stochastic`.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    denoiser, sigmas, x, noise = _setup(
        model_fn,
        diffusion,
        x_T,
        model_kwargs=model_kwargs,
        guidance=guidance,
        noise=noise,
        levels=steps,
        schedule=schedule,
        rho=rho,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=sigmas,
    )
    previous: tuple[float, torch.Tensor] | None = None  # (h, D) of the step before
    for i in tqdm(range(len(sigmas) - 1), desc="dpm-solver++ 2m sde", disable=not progress):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma)
        if sigma_next == 0:
            # Onto the data (lambda' = inf): x' = D.
            x_next = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            coef = -math.expm1(-h - eta_h)  # 1 - e^{-(1 + eta) h}
            # First-order (SDE-DPM-Solver++ 1) update.
            x_next = (sigma_next / sigma) * math.exp(-eta_h) * x + coef * denoised
            if previous is not None:
                # Second-order multistep correction from the previous prediction (midpoint form).
                h_prev, denoised_prev = previous
                r = h_prev / h
                x_next = x_next + 0.5 * coef / r * (denoised - denoised_prev)
            if eta > 0:
                x_next = x_next + sigma_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise * noise(x)
            previous = (h, denoised)
        _report(callback, denoiser, i, sigma, sigma_next, x, x_next, denoised)
        x = x_next
    return _finish(x, clip_denoised)
