"""DPM-Solver++ (Lu et al. 2022): few-step solvers of the probability-flow ODE in data-prediction form.

With alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t) and the half log-SNR
lambda_t = log(alpha_t / sigma_t), the exact solution of the diffusion ODE from s to t < s is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x_theta(x_lambda) dlambda,

where x_theta is the network's prediction of x_0. The multistep solvers expand x_theta in lambda around
lambda_s and estimate its derivatives from the predictions of earlier steps (one network call per step):
order 1 is DDIM with eta = 0, 2M the paper's Algorithm 2, 3M a second-order Taylor term on top.

Time points are steps of the (discrete) training process, so the network sees the timesteps it was trained
on: ``spacing="logsnr"`` (uniform in lambda, the paper's choice) or any time-uniform respacing ("even",
"strided", "sections"). After the last time point (t = 0) the solver lands on the data (alpha = 1,
sigma = 0, lambda = +inf), where every order returns the last x_0 prediction, as DDIM's last step does.

Classifier guidance enters as in DDIM (score form): eps <- eps - sigma_t * s * grad log p(y | x_t), and the
guided x_0 prediction follows from eps (not clipped again). Learned-variance networks: only the eps / x_0
part of the output is read. ``thresholding="dynamic"`` applies Imagen's dynamic thresholding (Saharia et
al. 2022) to every x_0 prediction, as the paper does for guided sampling.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.spacing import Spacing, SpacingMethod
from adm.sampling.common import Callback, ModelFn, NoiseFn, Steps
from adm.sampling.guidance import Guidance, is_active

__all__ = [
    "DPM_SOLVER_SPACINGS",
    "dpm_solver_timesteps",
    "dpmpp_2m_sample",
    "dpmpp_3m_sample",
    "dpmpp_sample",
    "dynamic_threshold",
]

LOGSNR = "logsnr"
DPM_SOLVER_SPACINGS = (LOGSNR, *(m.value for m in SpacingMethod))
_THRESHOLDING = (None, "none", "dynamic")


def _half_logsnr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = 0.5 * log(alpha_bar / (1 - alpha_bar)), float64."""
    return 0.5 * (torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod))


def dpm_solver_timesteps(
    diffusion: GaussianDiffusion, steps: Steps, spacing: SpacingMethod | str | None = LOGSNR
) -> list[int]:
    """The original timesteps the solver visits, descending (first the noisiest, last 0).

    ``steps=None`` keeps every step of `diffusion` (of a respaced process: its own steps). With ``spacing``
    "logsnr", ``steps`` time points uniform in lambda between the noisiest step and t = 0, each the training
    timestep nearest in lambda (repeats merged, so a very large ``steps`` can give fewer). Other spacings
    are the time-uniform ``Spacing`` choices of the other samplers.
    """
    if steps is None:
        if spacing not in (None, LOGSNR):
            raise ValueError(f"spacing={spacing!r} needs a number of steps (steps=N)")
        kept = [int(v) for v in diffusion.timestep_map.tolist()]
        return sorted(kept, reverse=True)
    name = spacing.value if isinstance(spacing, SpacingMethod) else (spacing or LOGSNR)
    if name not in DPM_SOLVER_SPACINGS:
        raise ValueError(
            f"spacing={name!r} is not a DPM-Solver spacing; use one of {', '.join(DPM_SOLVER_SPACINGS)}"
        )
    total = diffusion.original_num_steps
    if name != LOGSNR:
        return sorted(Spacing.of(steps, name).timesteps(total), reverse=True)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1 with spacing='logsnr', got {steps!r}")
    lam = _half_logsnr(diffusion.base_alphas_cumprod.to(torch.float64))  # decreasing in t
    targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64)
    nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    return sorted({int(t) for t in nearest}, reverse=True)


def dynamic_threshold(x_0: torch.Tensor, ratio: float = 0.995) -> torch.Tensor:
    """Dynamic thresholding (Imagen), per sample: s = max(1, quantile of |x_0|), x_0 <- clamp(x_0, s) / s."""
    flat = x_0.reshape(x_0.shape[0], -1).abs().float()
    s = torch.quantile(flat, ratio, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x_0.ndim - 1))).to(x_0.dtype)
    return torch.maximum(torch.minimum(x_0, s), -s) / s


class _Schedule:
    """alpha, sigma and lambda of the original process at the visited timesteps (float64 scalars)."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.alphas_cumprod = diffusion.base_alphas_cumprod.to(torch.float64)

    def at(self, t: int | None) -> tuple[float, float, float]:
        """(alpha_t, sigma_t, lambda_t); ``t=None`` is the data itself: (1, 0, +inf)."""
        if t is None:
            return 1.0, 0.0, math.inf
        abar = float(self.alphas_cumprod[t])
        return math.sqrt(abar), math.sqrt(1.0 - abar), 0.5 * (math.log(abar) - math.log1p(-abar))


def _data_prediction(
    model_fn: ModelFn,
    process: GaussianDiffusion,
    x: torch.Tensor,
    t: int,
    *,
    model_kwargs: dict,
    guidance: Guidance | None,
    clip_denoised: bool,
    thresholding: str | None,
    denoised_fn,
) -> torch.Tensor:
    """x_theta(x_t, t): the (guided, thresholded) x_0 prediction at original timestep t."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
    t_model = process.model_timesteps(t_batch)
    out = process.p_mean_variance(
        model_fn(x, t_model, **model_kwargs), x, t_batch, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    pred_x0 = out["pred_x0"]
    if is_active(guidance):
        # Guidance in score form, as DDIM: eps <- eps - sigma_t * s * grad log p(y | x_t); pred_x0 from eps.
        eps = process.eps_from_pred_x0(x, t_batch, pred_x0)
        sigma = process.extract("sqrt_one_minus_alphas_cumprod", t_batch, x)
        eps = eps - sigma * guidance(x, t_model, **model_kwargs).to(eps.dtype)
        pred_x0 = process.pred_x0_from_eps(x, t_batch, eps)
    if thresholding == "dynamic":
        pred_x0 = dynamic_threshold(pred_x0)
    return pred_x0


@torch.no_grad()
def dpmpp_sample(
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
    steps: Steps = 20,
    spacing: SpacingMethod | str | None = LOGSNR,
    order: int = 2,
    thresholding: str | None = None,
    lower_order_final: bool = True,
    denoised_fn=None,
) -> torch.Tensor:
    """DPM-Solver++ multistep sampling (order 1, 2 or 3) from x_T down to x_0: one network call per step.

    Same arguments as ``ddim_sample`` (``steps`` network calls, ``spacing`` "logsnr" by default), plus:
        order: 1 (DDIM, eta = 0), 2 (DPM-Solver++ 2M) or 3 (3M).
        thresholding: None or "dynamic" (on every x_0 prediction; ``clip_denoised`` clamps first).
        lower_order_final: with few (< 15) steps, no step uses more than its remaining steps' count as
            order (3M's second-last step is 2M), which keeps short runs stable.
    The solver is deterministic: ``noise`` is accepted for the common signature and never called.
    """
    del noise  # an ODE solver: no noise after x_T
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 (DPM-Solver++ 1/2M/3M), got {order!r}")
    if thresholding not in _THRESHOLDING:
        raise ValueError(f"thresholding must be null or 'dynamic', got {thresholding!r}")
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(
            f"diffusion must be an adm.diffusion.GaussianDiffusion, got {type(diffusion).__name__}"
        )
    model_kwargs = model_kwargs or {}
    timesteps = dpm_solver_timesteps(diffusion, steps, spacing)
    process = diffusion.respace(None)  # the original process: its tables are indexed by original timesteps
    schedule = _Schedule(process)
    predict = dict(
        model_kwargs=model_kwargs,
        guidance=guidance,
        clip_denoised=clip_denoised,
        thresholding=thresholding,
        denoised_fn=denoised_fn,
    )

    x = x_T
    history: list[
        tuple[float, torch.Tensor]
    ] = []  # (lambda_s, x_theta at s) of the latest steps, newest first
    n = len(timesteps)
    for i, s in enumerate(tqdm(timesteps, desc=f"dpm-solver++ {order}m", disable=not progress)):
        t = timesteps[i + 1] if i + 1 < n else None  # None: the data (sigma = 0)
        alpha_s, sigma_s, lambda_s = schedule.at(s)
        alpha_t, sigma_t, lambda_t = schedule.at(t)
        # Data prediction at the current point.
        x0 = _data_prediction(model_fn, process, x, s, **predict)
        history = [(lambda_s, x0), *history][:3]
        if t is None:
            # Last step onto the data: sigma_t = 0, e^{-h} = 0, so x_0 = x_theta(x_s).
            x_prev = x0
        else:
            h = lambda_t - lambda_s
            phi_1 = math.expm1(-h)  # e^{-h} - 1
            # Order of this step: limited by the history, and lowered on the final steps of short runs.
            k = min(order, len(history))
            if lower_order_final:
                k = min(k, n - 1 - i)
            # First-order (DDIM) update: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D.
            if k == 1:
                D = x0
            elif k == 2:
                # 2M: D = (1 + 1/(2r)) x_theta(s) - 1/(2r) x_theta(s'), r = h' / h (Algorithm 2).
                lambda_1, m1 = history[1]
                r = (lambda_s - lambda_1) / h
                D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * m1
            else:
                D = x0
            x_prev = (sigma_t / sigma_s) * x - alpha_t * phi_1 * D
            if k == 3:
                # 3M: Taylor terms up to the second derivative of x_theta in lambda, estimated from the
                # last three predictions: x_t += alpha_t (phi_2 h x' - phi_3 h^2 x'') with
                # phi_2 = 1 + (e^{-h} - 1) / h and phi_3 = phi_2 / h - 1/2.
                (lambda_1, m1), (lambda_2, m2) = history[1], history[2]
                r0, r1 = (lambda_s - lambda_1) / h, (lambda_1 - lambda_2) / h
                d1_0, d1_1 = (x0 - m1) / r0, (m1 - m2) / r1  # h x' at the midpoints of the last two gaps
                d2 = (d1_0 - d1_1) / (r0 + r1)  # h^2 x'' / 2
                d1 = d1_0 + r0 * d2  # h x' at lambda_s
                phi_2 = phi_1 / h + 1
                phi_3 = phi_2 / h - 0.5
                x_prev = x_prev + alpha_t * phi_2 * d1 - 2 * alpha_t * phi_3 * d2
        if callback is not None:
            callback({"step": i, "t": s, "x_t": x, "x_prev": x_prev, "pred_x0": x0})
        x = x_prev
    return x


def dpmpp_2m_sample(
    model_fn: ModelFn, diffusion: GaussianDiffusion, x_T: torch.Tensor, **options
) -> torch.Tensor:
    """DPM-Solver++ 2M (second-order multistep): ``dpmpp_sample(..., order=2)``."""
    return dpmpp_sample(model_fn, diffusion, x_T, **{**options, "order": 2})


def dpmpp_3m_sample(
    model_fn: ModelFn, diffusion: GaussianDiffusion, x_T: torch.Tensor, **options
) -> torch.Tensor:
    """DPM-Solver++ 3M (third-order multistep): ``dpmpp_sample(..., order=3)``."""
    return dpmpp_sample(model_fn, diffusion, x_T, **{**options, "order": 3})
