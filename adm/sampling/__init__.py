"""Samplers (one signature for all), classifier guidance, per-sample noise, and drawing images by index.

Every sampler is called as::

    sampler(model_fn, diffusion, x_T, *, model_kwargs=None, guidance=None, noise=None, clip_denoised=True,
            callback=None, progress=False, **options) -> x_0

with ``model_fn(x_t, t_model, **model_kwargs)`` and ``t_model = diffusion.model_timesteps(t)``.
Options: ``steps`` + ``spacing`` (respacing, both samplers: e.g. ``steps=25, spacing="strided"``),
``eta`` (DDIM); ``spacing="logsnr"``, ``thresholding`` (DPM-Solver++ 2M / 3M). The samplers in the noise level
sigma (Euler ancestral, EDM, SDE-DPM-Solver++ 2M: :mod:`adm.sampling.stochastic`) take ``steps`` as network
calls per image and a sigma ``schedule`` ("karras", "logsnr", "discrete"); :func:`network_calls` gives the
exact count of every sampler.

Classifier-free guidance (:class:`ClassifierFreeGuidance`) wraps the model instead
(``guidance.wrap(model_fn)`` or ``guidance.wrap_network(net)``), so every sampler runs it unchanged.

``draw_images(net, diffusion, sampler, seeds, labels=..., conditioning=..., guidance=...)`` is what every
sampling loop calls: one image per seed (``sample_seed(seed, i)``; ``upsample_seed(seed, i)`` for the
upsampling stage), labels by index from :class:`LabelPlan`.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

from adm.sampling.classifier_free import ClassifierFreeGuidance, ClassifierFreeNetwork, null_label_of
from adm.sampling.common import Steps
from adm.sampling.ddim import ddim_sample, ddim_step
from adm.sampling.ddpm import ddpm_sample, ddpm_step
from adm.sampling.dpm_solver import dpm_solver_timesteps, dpmpp_2m_sample, dpmpp_3m_sample, dpmpp_sample
from adm.sampling.draw import LabelPlan, draw_images, labels_by_name, random_label
from adm.sampling.guidance import (
    GUIDANCE_KINDS,
    ClassifierGuidance,
    CondFnGuidance,
    Guidance,
    GuidanceKind,
    GuidancePlan,
    check_classifier_fits,
    plan_guidance,
)
from adm.sampling.noise import PerSampleNoise, sample_seed, upsample_seed
from adm.sampling.sigma import SIGMA_SCHEDULES, Denoiser, NoiseLevels, sigma_schedule
from adm.sampling.stochastic import dpmpp_2m_sde_sample, edm_sample, euler_ancestral_sample, heun_levels

# The samplers by the name users type (``sampler=<name>``, ``ADM.infer(sampler=<name>)``); every one has the
# signature above. A sampler config (conf/sampler/<name>.yaml) is a partial of one of these functions.
SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpmpp_2m": dpmpp_2m_sample,
    "dpmpp_3m": dpmpp_3m_sample,
    "euler_ancestral": euler_ancestral_sample,
    "edm": edm_sample,
    "dpmpp_2m_sde": dpmpp_2m_sde_sample,
}


def network_calls(name: str, steps: Steps) -> int:
    """Network calls per image of sampler `name` run with ``steps`` (the sampler's option).

    One per step for every sampler but "edm" (Heun: 2 per noise level but the last, so
    ``2 * ((steps + 1) // 2) - 1``); per-section counts (spacing "sections") add up. DPM-Solver++ with
    spacing "logsnr" may merge repeated timesteps and call the network fewer times for a very large
    ``steps``.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    if name == "edm":
        return 2 * heun_levels(steps) - 1
    if isinstance(steps, Sequence) and not isinstance(steps, str) and name in ("ddpm", "ddim"):
        return sum(int(v) for v in steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1 (or per-section counts), got {steps!r}")
    return steps


def sampler_name(sampler: Callable[..., Any]) -> str:
    """The registered name of a sampler function or of a partial of one (``functools.partial(ddim_sample,
    steps=25)`` -> "ddim"); ValueError for a function that is not in :data:`SAMPLERS`."""
    func = sampler
    while isinstance(func, functools.partial):
        func = func.func
    for name, registered in SAMPLERS.items():
        if func is registered:
            return name
    raise ValueError(f"{sampler!r} is not a registered sampler; the samplers are {sorted(SAMPLERS)}")


def describe_sampler(sampler: Callable[..., Any]) -> dict[str, Any]:
    """What a run records of its sampler: ``{"sampler": name, "steps": ..., "eta": ...}`` (None where the
    partial binds no such option)."""
    options = getattr(sampler, "keywords", {})
    return {"sampler": sampler_name(sampler), "steps": options.get("steps"), "eta": options.get("eta")}


def build_sampler(name: str, **options: Any) -> functools.partial:
    """The sampler registered as `name` with its options bound (``build_sampler("ddim", steps=25)``)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    return functools.partial(SAMPLERS[name], **options)


__all__ = [
    "GUIDANCE_KINDS",
    "SAMPLERS",
    "SIGMA_SCHEDULES",
    "Denoiser",
    "NoiseLevels",
    "dpmpp_2m_sde_sample",
    "edm_sample",
    "euler_ancestral_sample",
    "network_calls",
    "sigma_schedule",
    "GuidanceKind",
    "GuidancePlan",
    "build_sampler",
    "check_classifier_fits",
    "describe_sampler",
    "plan_guidance",
    "sampler_name",
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
    "labels_by_name",
    "null_label_of",
    "random_label",
    "sample_seed",
    "upsample_seed",
]
