"""Gaussian diffusion maths: schedules, respacing, q / p distributions, losses, timestep samplers.

Nothing in this package calls a network except ``calc_bpd`` (an evaluation loop); samplers live in
``adm.sampling``. Modules import each other in one direction: types, spacing, schedules -> losses ->
gaussian -> timestep_sampler, fit.
"""

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.losses import (
    calc_bpd,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    training_losses,
    vb_terms_bpd,
)
from adm.diffusion.schedules import named_beta_schedule
from adm.diffusion.spacing import Spacing, SpacingMethod
from adm.diffusion.timestep_sampler import (
    LossSecondMomentSampler,
    TimestepSampler,
    UniformSampler,
    create_timestep_sampler,
)
from adm.diffusion.types import LossType, ModelMeanType, ModelVarType

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "Spacing",
    "SpacingMethod",
    "calc_bpd",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "training_losses",
    "vb_terms_bpd",
    "named_beta_schedule",
    "LossSecondMomentSampler",
    "TimestepSampler",
    "UniformSampler",
    "create_timestep_sampler",
]
