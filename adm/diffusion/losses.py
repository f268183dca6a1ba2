"""Likelihood terms and training losses of a Gaussian diffusion.

All functions take network *outputs*, never the network, except ``calc_bpd`` (an evaluation loop that
needs one forward pass per timestep). ``diffusion`` is an ``adm.diffusion.GaussianDiffusion``; this module
only uses its methods, so it does not import ``gaussian.py`` (which imports this one).

Terms (Ho et al. 2020, Nichol & Dhariwal 2021):
  L_simple = || target - model_mean_output ||^2 (target: eps, x_0 or the posterior mean);
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), L_0 = -log p(x_0 | x_1) (discretized Gaussian);
  hybrid = L_simple + L_vlb, where L_vlb sees the *detached* mean so that it only trains the variance.
Log-likelihood terms are reported in bits per dimension (nats / log 2, averaged over C*H*W).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from adm.diffusion.types import LossType, ModelMeanType

__all__ = [
    "mean_flat",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "vb_terms_bpd",
    "prior_bpd",
    "training_losses",
    "calc_bpd",
]

_LOG2 = math.log(2.0)

GaussianDiffusion = Any  # an adm.diffusion.GaussianDiffusion (see the module docstring)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (arguments broadcast)."""
    tensor = next(a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor))
    logvar1, logvar2 = (
        torch.as_tensor(v, dtype=tensor.dtype, device=tensor.device) for v in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Standard normal CDF via the tanh approximation 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    The approximation (not erf) is what the released models' likelihoods were computed with.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data ``x`` in [-1, 1] under a Gaussian discretized to bins.

    Each of the 256 values owns the bin x +- 1/255; the two edge bins extend to -inf / +inf.
    ``means``, ``log_scales`` (log standard deviation) have x's shape.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, "
            f"log_scales {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))  # bin (-inf, x + 1/255] for x = -1
    log_one_minus_cdf_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))  # bin [x - 1/255, inf) for x = 1
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_bin))


def vb_terms_bpd(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool = False,
) -> dict[str, torch.Tensor]:
    """One term of the variational bound, in bits/dim.

    Returns {"output": (B,) KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) where t > 0 and the decoder NLL
    -log p(x_0|x_1) where t == 0, "pred_x0": (B,C,H,W)}.
    """
    true_mean, _, true_log_variance = diffusion.q_posterior(x_0, x_t, t)
    out = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / _LOG2
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_0, means=out["mean"], log_scales=0.5 * out["log_variance"]
    )
    decoder_nll = mean_flat(decoder_nll) / _LOG2
    return {"output": torch.where(t == 0, decoder_nll, kl), "pred_x0": out["pred_x0"]}


def prior_bpd(diffusion: GaussianDiffusion, x_0: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits/dim, (B,). Not trainable; tiny for a good schedule."""
    t = torch.full((x_0.shape[0],), diffusion.num_timesteps - 1, dtype=torch.int64, device=x_0.device)
    mean, _, log_variance = diffusion.q_mean_variance(x_0, t)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


def training_losses(
    diffusion: GaussianDiffusion,
    model_output: torch.Tensor,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-example training losses for one noised batch.

    Args:
        model_output: (B, C or 2C, H, W) network output at (x_t, diffusion.model_timesteps(t)).
        x_0: clean data (B, C, H, W) in [-1, 1]; x_t = diffusion.q_sample(x_0, t, eps); t: (B,) int64.
    Returns:
        {"loss", "mse", "vb"}, each (B,). For MSE losses: loss = mse + vb, where vb (the variational term,
        zero when the variance is fixed) is computed with the mean output detached and multiplied by T/1000
        for RESCALED_MSE. For KL losses: loss = vb (times T for RESCALED_KL) and mse is reported detached.
    """
    mean_output, var_output = diffusion.split_model_output(model_output, x_t)
    if diffusion.model_mean_type == ModelMeanType.EPSILON:
        target = eps
    elif diffusion.model_mean_type == ModelMeanType.START_X:
        target = x_0
    else:
        target = diffusion.q_posterior(x_0, x_t, t)[0]

    if diffusion.loss_type.is_vb:
        vb = vb_terms_bpd(diffusion, model_output, x_0, x_t, t, clip_denoised=False)["output"]
        if diffusion.loss_type == LossType.RESCALED_KL:
            vb = vb * diffusion.num_timesteps
        with torch.no_grad():
            mse = mean_flat((target - mean_output) ** 2)
        return {"loss": vb, "mse": mse, "vb": vb}

    mse = mean_flat((target - mean_output) ** 2)
    if var_output is None:
        vb = torch.zeros_like(mse)
        return {"loss": mse, "mse": mse, "vb": vb}
    # The vb term must train only the variance: it sees a copy of the mean output with no gradient.
    frozen = torch.cat([mean_output.detach(), var_output], dim=1)
    vb = vb_terms_bpd(diffusion, frozen, x_0, x_t, t, clip_denoised=False)["output"]
    if diffusion.loss_type == LossType.RESCALED_MSE:
        # With T steps L_vlb sums T terms; T/1000 keeps its weight as for T = 1000.
        vb = vb * (diffusion.num_timesteps / 1000.0)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def _randn_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x)


@torch.no_grad()
def calc_bpd(
    model_fn: Callable[..., torch.Tensor],
    diffusion: GaussianDiffusion,
    x_0: torch.Tensor,
    *,
    model_kwargs: dict | None = None,
    clip_denoised: bool = True,
    noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The full variational bound of ``x_0`` in bits/dim, one network call per timestep.

    Args:
        model_fn: model_fn(x_t, diffusion.model_timesteps(t), **model_kwargs) -> model output.
        x_0: (B, C, H, W) data on the 8-bit grid in [-1, 1].
        noise: noise(x) -> fresh N(0, I) like x (e.g. ``PerSampleNoise``); default ``torch.randn_like``.
    Returns:
        {"total_bpd": (B,), "prior_bpd": (B,), "vb": (B, T), "xstart_mse": (B, T), "mse": (B, T)} where
        column j of the (B, T) terms belongs to the j-th step evaluated, i.e. t = T - 1 - j.
    """
    model_kwargs = model_kwargs or {}
    noise = noise or _randn_like
    vb, xstart_mse, mse = [], [], []
    steps = range(diffusion.num_timesteps - 1, -1, -1)
    for step in tqdm(steps, disable=not progress, desc="bpd"):
        t = torch.full((x_0.shape[0],), step, dtype=torch.int64, device=x_0.device)
        eps = noise(x_0)
        x_t = diffusion.q_sample(x_0, t, eps)
        model_output = model_fn(x_t, diffusion.model_timesteps(t), **model_kwargs)
        out = vb_terms_bpd(diffusion, model_output, x_0, x_t, t, clip_denoised=clip_denoised)
        vb.append(out["output"])
        xstart_mse.append(mean_flat((out["pred_x0"] - x_0) ** 2))
        mse.append(mean_flat((diffusion.eps_from_pred_x0(x_t, t, out["pred_x0"]) - eps) ** 2))
    vb_t = torch.stack(vb, dim=1)
    prior = prior_bpd(diffusion, x_0)
    return {
        "total_bpd": vb_t.sum(dim=1) + prior,
        "prior_bpd": prior,
        "vb": vb_t,
        "xstart_mse": torch.stack(xstart_mse, dim=1),
        "mse": torch.stack(mse, dim=1),
    }
