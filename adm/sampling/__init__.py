"""Samplers (one signature for all), classifier guidance, per-sample noise, and drawing images by index.

Every sampler is called as::

    sampler(model_fn, diffusion, x_T, *, model_kwargs=None, guidance=None, noise=None, clip_denoised=True,
            callback=None, progress=False, **options) -> x_0

with ``model_fn(x_t, t_model, **model_kwargs)`` and ``t_model = diffusion.model_timesteps(t)``.
Options: ``steps`` + ``spacing`` (respacing, both samplers: e.g. ``steps=25, spacing="strided"``),
``eta`` (DDIM).

``draw_images(net, diffusion, sampler, seeds, labels=..., conditioning=..., guidance=...)`` is what every
sampling loop calls: one image per seed (``sample_seed(seed, i)``; ``upsample_seed(seed, i)`` for the
upsampling stage), labels by index from :class:`LabelPlan`.
"""

from adm.sampling.ddim import ddim_sample, ddim_step
from adm.sampling.ddpm import ddpm_sample, ddpm_step
from adm.sampling.draw import LabelPlan, draw_images, random_label
from adm.sampling.guidance import ClassifierGuidance, CondFnGuidance, Guidance
from adm.sampling.noise import PerSampleNoise, sample_seed, upsample_seed

SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}

__all__ = [
    "SAMPLERS",
    "ClassifierGuidance",
    "CondFnGuidance",
    "Guidance",
    "LabelPlan",
    "PerSampleNoise",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "draw_images",
    "random_label",
    "sample_seed",
    "upsample_seed",
]
