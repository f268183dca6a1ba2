"""Gaussian diffusion maths: schedules, respacing, q / p distributions, losses, timestep samplers.

Nothing in this package calls a network except ``calc_bpd`` (an evaluation loop); samplers live in
``adm.sampling``.
"""

from adm.diffusion.gaussian import GaussianDiffusion, LossType, ModelMeanType, ModelVarType, create_diffusion
from adm.diffusion.losses import (
    calc_bpd,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
    training_losses,
    vb_terms_bpd,
)
from adm.diffusion.schedules import named_beta_schedule, space_timesteps
from adm.diffusion.timestep_sampler import (
    LossSecondMomentSampler,
    TimestepSampler,
    UniformSampler,
    create_timestep_sampler,
)

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "create_diffusion",
    "calc_bpd",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "training_losses",
    "vb_terms_bpd",
    "named_beta_schedule",
    "space_timesteps",
    "LossSecondMomentSampler",
    "TimestepSampler",
    "UniformSampler",
    "create_timestep_sampler",
]
