"""Ancestral sampling (Ho et al. 2020, Algorithm 2) with the learned variance and classifier guidance."""

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

__all__ = ["ddpm_sample", "ddpm_step"]


def ddpm_step(
    model_fn: ModelFn,
    diffusion: GaussianDiffusion,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    model_kwargs: dict,
    guidance: Guidance | None,
    noise: NoiseFn,
    clip_denoised: bool = True,
    denoised_fn=None,
) -> dict[str, torch.Tensor]:
    """One step x_t -> x_{t-1} (t: (B,) indices). Returns {"x_prev", "pred_x0", "mean", "log_variance"}."""
    t_model = diffusion.model_timesteps(t)
    # Predict p(x_{t-1} | x_t) = N(mu, Sigma) from the network output.
    out = diffusion.p_mean_variance(
        model_fn(x_t, t_model, **model_kwargs), x_t, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    # z ~ N(0, I).
    z = noise(x_t)
    mean = out["mean"]
    if is_active(guidance):
        # Classifier guidance: mu <- mu + Sigma * s * grad log p(y | x_t).
        mean = mean.float() + out["variance"] * guidance(x_t, t_model, **model_kwargs).float()
    # x_{t-1} = mu + sigma z, without noise on the last step.
    x_prev = mean + last_step_mask(t, x_t) * torch.exp(0.5 * out["log_variance"]) * z
    return {"x_prev": x_prev, "pred_x0": out["pred_x0"], "mean": mean, "log_variance": out["log_variance"]}


@torch.no_grad()
def ddpm_sample(
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
    denoised_fn=None,
) -> torch.Tensor:
    """Ancestral sampling from x_T down to x_0.

    Args:
        model_fn: model_fn(x_t, t_model, **model_kwargs) -> network output (B, C or 2C, H, W), where
            t_model = diffusion.model_timesteps(t) (the original timestep).
        diffusion: the (un-respaced) process.
        x_T: (B, C, H, W) starting noise (e.g. ``PerSampleNoise(seeds).initial((C, H, W))``).
        model_kwargs: extra network inputs, e.g. {"y": labels}; also handed to ``guidance``.
        guidance: e.g. ``ClassifierGuidance(classifier, scale)``: shifts each step's mean by Sigma * grad.
        noise: noise(x) -> N(0, I) like x, drawn once per step (default ``torch.randn_like``).
        clip_denoised: clamp predicted x_0 to [-1, 1].
        callback: called after every step with dict(step, t, x_t, x_prev, pred_x0).
        progress: show a progress bar.
        steps, spacing: respace the original steps first: ``steps`` N with ``spacing`` "even" (default: N
            spread evenly, first and last kept) or "strided" (0, k, 2k, ...; OpenAI's "ddimN"), or per-section
            counts [a, b, c] with "sections"; a ready ``adm.diffusion.Spacing`` also works. None: every step.
    Returns:
        x_0 (B, C, H, W), roughly in [-1, 1].
    """
    diffusion, noise = resolve(diffusion, steps, spacing, noise)
    model_kwargs = model_kwargs or {}
    x = x_T
    for i, t in reverse_steps(diffusion, x, "ddpm", progress):
        out = ddpm_step(
            model_fn,
            diffusion,
            x,
            t,
            model_kwargs=model_kwargs,
            guidance=guidance,
            noise=noise,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
        )
        report(callback, i, t, x, out)
        x = out["x_prev"]
    return x
