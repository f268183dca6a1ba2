"""Samplers (one signature for all), classifier guidance, per-sample noise.

Every sampler is called as::

    sampler(model_fn, diffusion, x_T, *, model_kwargs=None, guidance=None, noise=None, clip_denoised=True,
            callback=None, progress=False, **options) -> x_0

with ``model_fn(x_t, t_model, **model_kwargs)`` and ``t_model = diffusion.model_timesteps(t)``.
Options: ``steps`` (respacing, both samplers), ``eta`` (DDIM).
"""

from adm.sampling.ddim import ddim_sample, ddim_step
from adm.sampling.ddpm import ddpm_sample, ddpm_step
from adm.sampling.guidance import ClassifierGuidance, CondFnGuidance, Guidance
from adm.sampling.noise import PerSampleNoise

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}

__all__ = [
    "SAMPLERS",
    "ClassifierGuidance",
    "CondFnGuidance",
    "Guidance",
    "PerSampleNoise",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
]
