"""DDIM sampling (Song et al. 2021, eq. 12) with eta, and classifier guidance in score form."""

from __future__ import annotations

import torch

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.spacing import SpacingMethod
from adm.sampling.common import (
    Callback,
    ModelFn,
    NoiseFn,
    Steps,
    last_step_mask,
    report,
    resolve,
    reverse_steps,
)
from adm.sampling.guidance import Guidance, is_active

__all__ = ["ddim_sample", "ddim_step"]


def ddim_step(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    model_kwargs: dict,
    guidance: Guidance | None,
    noise: NoiseFn,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn=None,
) -> dict[str, torch.Tensor]:
    """One step x_t -> x_{t-1} (t: (B,) step indices). Returns {"x_prev", "pred_x0", "eps"}."""
    t_model = diffusion.model_timesteps(t)
    out = diffusion.p_mean_variance(
        model_fn(x_t, t_model, **model_kwargs), x_t, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    pred_x0 = out["pred_x0"]
    alpha_bar = diffusion.extract("alphas_cumprod", t, x_t)
    alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x_t)
    if is_active(guidance):
        # Guidance in score form: eps <- eps - sqrt(1 - alpha_bar) * s * grad log p(y | x_t);
        # the new pred_x0 follows from eps and is not clipped again.
        eps = diffusion.eps_from_pred_x0(x_t, t, pred_x0)
        eps = eps - (1 - alpha_bar).sqrt() * guidance(x_t, t_model, **model_kwargs)
        pred_x0 = diffusion.pred_x0_from_eps(x_t, t, eps)
    # The noise implied by (x_t, pred_x0).
    eps = diffusion.eps_from_pred_x0(x_t, t, pred_x0)
    # sigma_t(eta): eta = 0 is deterministic DDIM, eta = 1 has DDPM's posterior variance.
    sigma = (
        eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    )
    z = noise(x_t)
    # x_{t-1} = sqrt(alpha_bar_prev) pred_x0 + sqrt(1 - alpha_bar_prev - sigma^2) eps + sigma z.
    # (clamped: rounding can make 1 - alpha_bar_prev - sigma^2 slightly negative when eta = 1)
    eps_coef = torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0))
    mean = pred_x0 * torch.sqrt(alpha_bar_prev) + eps_coef * eps
    x_prev = mean + last_step_mask(t, x_t) * sigma * z
    return {"x_prev": x_prev, "pred_x0": pred_x0, "eps": eps}


@torch.no_grad()
def ddim_sample(
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
    steps: Steps = None,
    spacing: SpacingMethod | str | None = None,
    eta: float = 0.0,
    denoised_fn=None,
) -> torch.Tensor:
    """DDIM sampling from x_T down to x_0.

    Same arguments as ``ddpm_sample`` plus ``eta`` (0 = deterministic; 1 = DDPM-like noise). ``steps`` and
    ``spacing`` respace the original process first (e.g. 50, or 25 "strided"). Guidance corrects the noise
    estimate (score form) instead of shifting the mean. The noise source is called once per step, also with
    eta = 0.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    diffusion, noise = resolve(diffusion, steps, spacing, noise)
    model_kwargs = model_kwargs or {}
    x = x_T
    for i, t in reverse_steps(diffusion, x, "ddim", progress):
        out = ddim_step(
            model_fn,
            diffusion,
            x,
            t,
            model_kwargs=model_kwargs,
            guidance=guidance,
            noise=noise,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
        )
        report(callback, i, t, x, out)
        x = out["x_prev"]
    return x
