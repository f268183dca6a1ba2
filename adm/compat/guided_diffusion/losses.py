"""OpenAI's ``guided_diffusion.losses``: Gaussian KL and the discretized decoder likelihood."""

from adm.diffusion.losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, normal_kl

__all__ = ["approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "normal_kl"]
