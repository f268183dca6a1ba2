"""Samplers (one signature for all), classifier guidance, per-sample noise, and drawing images by index.

Every sampler is called as::

    sampler(model_fn, diffusion, x_T, *, model_kwargs=None, guidance=None, noise=None, clip_denoised=True,
            callback=None, progress=False, **options) -> x_0

with ``model_fn(x_t, t_model, **model_kwargs)`` and ``t_model = diffusion.model_timesteps(t)``.
Options: ``steps`` + ``spacing`` (respacing, both samplers: e.g. ``steps=25, spacing="strided"``),
``eta`` (DDIM); ``spacing="logsnr"``, ``thresholding`` (DPM-Solver++ 2M / 3M).

Classifier-free guidance (:class:`ClassifierFreeGuidance`) wraps the model instead
(``guidance.wrap(model_fn)`` or ``guidance.wrap_network(net)``), so every sampler runs it unchanged.

``draw_images(net, diffusion, sampler, seeds, labels=..., conditioning=..., guidance=...)`` is what every
sampling loop calls: one image per seed (``sample_seed(seed, i)``; ``upsample_seed(seed, i)`` for the
upsampling stage), labels by index from :class:`LabelPlan`.
"""

from adm.sampling.cfg import ClassifierFreeGuidance, ClassifierFreeNetwork, null_label_of
from adm.sampling.ddim import ddim_sample, ddim_step
from adm.sampling.ddpm import ddpm_sample, ddpm_step
from adm.sampling.dpm_solver import dpm_solver_timesteps, dpmpp_2m_sample, dpmpp_3m_sample, dpmpp_sample
from adm.sampling.draw import LabelPlan, draw_images, random_label
from adm.sampling.guidance import ClassifierGuidance, CondFnGuidance, Guidance
from adm.sampling.noise import PerSampleNoise, sample_seed, upsample_seed

SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp_2m": dpmpp_2m_sample,
    "dpmpp_3m": dpmpp_3m_sample,
}

__all__ = [
    "SAMPLERS",
    "ClassifierFreeGuidance",
    "ClassifierFreeNetwork",
    "ClassifierGuidance",
    "CondFnGuidance",
    "Guidance",
    "LabelPlan",
    "PerSampleNoise",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "dpm_solver_timesteps",
    "dpmpp_2m_sample",
    "dpmpp_3m_sample",
    "dpmpp_sample",
    "draw_images",
    "null_label_of",
    "random_label",
    "sample_seed",
    "upsample_seed",
]
