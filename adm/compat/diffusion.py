"""The diffusion half of the ``guided_diffusion`` drop-in: OpenAI's names, arguments and semantics.

``create_gaussian_diffusion`` returns a :class:`SpacedDiffusion` whose attributes (numpy float64 tables,
``timestep_map`` list, ``num_timesteps``, ...) and methods (``q_sample``, ``p_mean_variance``, ``p_sample``,
``p_sample_loop[_progressive]``, ``ddim_sample[_loop[_progressive]]``, ``training_losses``,
``_vb_terms_bpd``, ``calc_bpd_loop``, ...) behave like the reference ones. Underneath everything is
``adm.diffusion`` (maths) and ``adm.sampling`` (steps):

- the network is called as ``model(x, t_model, **model_kwargs)`` where ``t_model`` is the original timestep
  of the respaced step (``t * 1000 / T`` as float with ``rescale_timesteps``); ``cond_fn(x, t_model,
  **model_kwargs)`` receives the same timesteps;
- wherever the reference draws noise internally (each ``p_sample``, each DDIM step, each ``calc_bpd_loop``
  iteration, ``q_sample`` / ``training_losses`` without ``noise``) this module calls ``torch.randn_like``
  once, looked up at call time, so seeded scripts reproduce the reference's random streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adm.compat.models import create_classifier, create_model, diffusion_defaults, sr_create_model
from adm.diffusion import losses
from adm.diffusion.gaussian import GaussianDiffusion as _Core
from adm.diffusion.openai_flags import (
    legacy_diffusion_config,
    process_config,
    process_kwargs,
)
from adm.diffusion.schedules import named_beta_schedule, respaced_betas
from adm.diffusion.spacing import Spacing
from adm.diffusion.types import LossType, ModelMeanType, ModelVarType
from adm.sampling.ddim import ddim_step
from adm.sampling.ddpm import ddpm_step
from adm.sampling.guidance import CondFnGuidance

__all__ = [
    "GaussianDiffusion",
    "LossType",
    "ModelMeanType",
    "ModelVarType",
    "SpacedDiffusion",
    "create_classifier_and_diffusion",
    "create_gaussian_diffusion",
    "create_model_and_diffusion",
    "diffusion_config",
    "get_named_beta_schedule",
    "legacy_diffusion_config",
    "parse_timestep_respacing",
    "process_kwargs",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "space_timesteps",
    "sr_create_model_and_diffusion",
]

normal_kl = losses.normal_kl
mean_flat = losses.mean_flat


def discretized_gaussian_log_likelihood(x, *, means, log_scales):
    """Reference signature of :func:`adm.diffusion.losses.discretized_gaussian_log_likelihood`."""
    return losses.discretized_gaussian_log_likelihood(x, means=means, log_scales=log_scales)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas of "linear" or "cosine" as a float64 numpy array."""
    return named_beta_schedule(schedule_name, num_diffusion_timesteps).numpy()


def diffusion_config(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Our diffusion config for OpenAI's MODEL_FLAGS / DIFFUSION_FLAGS (parsed; missing flags take OpenAI's
    defaults; flags that do not describe the process are ignored). ``timestep_respacing`` is a sampler
    setting, not part of the process: it is not in the result."""
    values = {**diffusion_defaults(), **{k: v for k, v in flags.items() if k in diffusion_defaults()}}
    return process_config(
        process_kwargs(
            steps=values["diffusion_steps"],
            noise_schedule=values["noise_schedule"],
            learn_sigma=values["learn_sigma"],
            sigma_small=bool(flags.get("sigma_small", False)),
            predict_xstart=values["predict_xstart"],
            use_kl=values["use_kl"],
            rescale_learned_sigmas=values["rescale_learned_sigmas"],
            rescale_timesteps=values["rescale_timesteps"],
        )
    )


def parse_timestep_respacing(value: str | int | Sequence[int] | None) -> Spacing | None:
    """OpenAI's ``timestep_respacing`` as a :class:`~adm.diffusion.spacing.Spacing` (None: keep every step).

    ``"250"`` / 250 -> ``Spacing.even(250)``; ``"ddim25"`` -> ``Spacing.strided(25)``; ``"10,15,20"`` or
    ``[10, 15, 20]`` -> ``Spacing.sections(10, 15, 20)``.
    """
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Sequence):
        raise ValueError(
            f"timestep_respacing must be a string like '250', 'ddim25', '10,15,20' or a list of counts; "
            f"got {value!r}"
        )
    if isinstance(value, int):
        return Spacing.even(value)
    if not isinstance(value, str):
        return Spacing.sections(*(int(c) for c in value))
    text = value.strip().replace(" ", "")
    if text.startswith("ddim"):
        try:
            return Spacing.strided(int(text[len("ddim") :]))
        except ValueError:
            raise ValueError(f"bad DDIM spacing {value!r}; write it as 'ddimN', e.g. 'ddim25'") from None
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(
            f"bad timestep_respacing {value!r}; use an int ('250'), 'ddimN' or comma-separated section counts"
        ) from None
    return Spacing.sections(*counts)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> set[int]:
    """The set of original timesteps kept by a respacing ("N", "ddimN", "a,b,c" or a list of counts)."""
    spacing = parse_timestep_respacing(section_counts)
    return set(range(num_timesteps)) if spacing is None else set(spacing.timesteps(num_timesteps))


def _randn_like(x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x)  # looked up at call time on purpose (tests and seeded scripts rely on it)


def _model_device(model, fallback: torch.device | None = None) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return fallback if fallback is not None else torch.device("cpu")


class GaussianDiffusion:
    """Reference-shaped diffusion object (use :func:`create_gaussian_diffusion` to build one).

    Args are the reference's: ``betas`` (1-D float64), ``model_mean_type``, ``model_var_type``, ``loss_type``
    (enums of ``adm.diffusion``), ``rescale_timesteps``.
    """

    def __init__(
        self,
        *,
        betas,
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
    ) -> None:
        core = _Core(
            betas=torch.as_tensor(np.asarray(betas, dtype=np.float64)),
            model_mean_type=model_mean_type,
            model_var_type=model_var_type,
            loss_type=loss_type,
            rescale_timesteps=rescale_timesteps,
        )
        self._set_core(core)

    @classmethod
    def from_core(cls, core: _Core) -> GaussianDiffusion:
        """Wrap an ``adm.diffusion.GaussianDiffusion`` (respaced or not)."""
        obj = cls.__new__(cls)
        obj._set_core(core)
        return obj

    def _set_core(self, core: _Core) -> None:
        self.core = core
        self.model_mean_type = core.model_mean_type
        self.model_var_type = core.model_var_type
        self.loss_type = core.loss_type
        self.rescale_timesteps = core.rescale_timesteps
        self.num_timesteps = core.num_timesteps
        self.original_num_steps = core.original_num_steps
        self.timestep_map = core.timestep_map.tolist()
        self.use_timesteps = set(self.timestep_map)
        for name in (
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "alphas_cumprod_next",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        ):
            setattr(self, name, getattr(core, name).numpy().copy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.core!r})"

    # ----------------------------------------------------------------- helpers
    def _t_model(self, t: torch.Tensor) -> torch.Tensor:
        return self.core.model_timesteps(t)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        # The reference applies the scaling in the model wrapper of a spaced diffusion; here too.
        return t

    def _predict_xstart_from_eps(self, x_t, t, eps):
        return self.core.pred_x0_from_eps(x_t, t, eps)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return self.core.eps_from_pred_x0(x_t, t, pred_xstart)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        return self.core.pred_x0_from_x_prev(x_t, t, xprev)

    @staticmethod
    def _guidance(cond_fn: Callable | None) -> CondFnGuidance | None:
        return None if cond_fn is None else CondFnGuidance(cond_fn)

    # ----------------------------------------------------------------- q
    def q_mean_variance(self, x_start, t):
        """(mean, variance, log_variance) of q(x_t | x_0)."""
        return self.core.q_mean_variance(x_start, t)

    def q_sample(self, x_start, t, noise=None):
        """Diffuse x_start to step t (noise drawn with torch.randn_like when not given)."""
        if noise is None:
            noise = _randn_like(x_start)
        return self.core.q_sample(x_start, t, noise)

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """(mean, variance, log_variance_clipped) of q(x_{t-1} | x_t, x_0)."""
        return self.core.q_posterior(x_start, x_t, t)

    # ----------------------------------------------------------------- p
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """{"mean", "variance", "log_variance", "pred_xstart"} of p(x_{t-1} | x_t) with ``model``."""
        model_kwargs = model_kwargs or {}
        model_output = model(x, self._t_model(t), **model_kwargs)
        out = self.core.p_mean_variance(
            model_output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )
        return {
            "mean": out["mean"],
            "variance": out["variance"],
            "log_variance": out["log_variance"],
            "pred_xstart": out["pred_x0"],
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Guided mean: mean + variance * cond_fn(x, t_model, **model_kwargs)."""
        gradient = cond_fn(x, self._t_model(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Score-form guidance: eps - sqrt(1 - alpha_bar) * grad; returns the updated p_mean_var dict."""
        alpha_bar = self.core.extract("alphas_cumprod", t, x)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._t_model(t), **(model_kwargs or {}))
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None):
        """One ancestral step: {"sample": x_{t-1}, "pred_xstart"}."""
        out = ddpm_step(
            model,
            self.core,
            x,
            t,
            model_kwargs=model_kwargs or {},
            guidance=self._guidance(cond_fn),
            noise=_randn_like,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
        )
        return {"sample": out["x_prev"], "pred_xstart": out["pred_x0"]}

    def _loop(self, step, model, shape, noise, device, progress) -> Iterator[dict]:
        if device is None:
            device = _model_device(model, noise.device if noise is not None else None)
        if not isinstance(shape, tuple | list):
            raise ValueError(f"shape must be a tuple or list like (B, C, H, W), got {shape!r}")
        img = noise if noise is not None else torch.randn(*shape, device=device)
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress):
            t = torch.tensor([i] * shape[0], device=device)
            with torch.no_grad():
                out = step(img, t)
                yield out
                img = out["sample"]

    def p_sample_loop(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
    ):
        """Ancestral sampling; returns the final x_0 (B, C, H, W)."""
        final = None
        for out in self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress
        ):
            final = out
        return final["sample"]

    def p_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
    ):
        """Generator of each step's {"sample", "pred_xstart"}."""

        def step(img, t):
            return self.p_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs)

        yield from self._loop(step, model, shape, noise, device, progress)

    # ----------------------------------------------------------------- DDIM
    def ddim_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None, eta=0.0
    ):
        """One DDIM step: {"sample", "pred_xstart"} (torch.randn_like drawn once, also for eta = 0)."""
        out = ddim_step(
            model,
            self.core,
            x,
            t,
            model_kwargs=model_kwargs or {},
            guidance=self._guidance(cond_fn),
            noise=_randn_like,
            eta=eta,
            clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
        )
        return {"sample": out["x_prev"], "pred_xstart": out["pred_x0"]}

    def ddim_reverse_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0
    ):
        """Deterministic DDIM step x_t -> x_{t+1} (for inversion); only eta = 0."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample is deterministic: use eta=0.0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = self.core.extract("alphas_cumprod_next", t, x)
        sample = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        eta=0.0,
    ):
        """DDIM sampling; returns the final x_0 (B, C, H, W)."""
        final = None
        for out in self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress, eta
        ):
            final = out
        return final["sample"]

    def ddim_sample_loop_progressive(
        self,
        model,
        shape,
        noise=None,
        clip_denoised=True,
        denoised_fn=None,
        cond_fn=None,
        model_kwargs=None,
        device=None,
        progress=False,
        eta=0.0,
    ):
        """Generator of each DDIM step's {"sample", "pred_xstart"}."""

        def step(img, t):
            return self.ddim_sample(model, img, t, clip_denoised, denoised_fn, cond_fn, model_kwargs, eta)

        yield from self._loop(step, model, shape, noise, device, progress)

    # ----------------------------------------------------------------- losses
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """{"output": (B,) bits/dim (decoder NLL at t == 0, KL otherwise), "pred_xstart"}."""
        model_output = model(x_t, self._t_model(t), **(model_kwargs or {}))
        out = self.core.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=clip_denoised)
        return {"output": out["output"], "pred_xstart": out["pred_x0"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-example terms: {"loss"} for KL losses, else {"loss", "mse"} (+ "vb" with learned sigma)."""
        if noise is None:
            noise = _randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        model_output = model(x_t, self._t_model(t), **(model_kwargs or {}))
        terms = self.core.training_losses(model_output, x_start, x_t, t, noise)
        if self.loss_type.is_vb:
            return {"loss": terms["loss"]}
        if self.core.learn_sigma:
            return {"loss": terms["loss"], "mse": terms["mse"], "vb": terms["vb"]}
        return {"loss": terms["loss"], "mse": terms["mse"]}

    def _prior_bpd(self, x_start):
        return self.core.prior_bpd(x_start)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None):
        """Full bound: {"total_bpd", "prior_bpd", "vb", "xstart_mse", "mse"} ((B,) / (B, T) terms)."""
        return losses.calc_bpd(
            model,
            self.core,
            x_start,
            model_kwargs=model_kwargs,
            clip_denoised=clip_denoised,
            noise=_randn_like,
        )


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion that keeps only ``use_timesteps`` of the process built from ``**kwargs``."""

    def __init__(self, use_timesteps, **kwargs) -> None:
        base = GaussianDiffusion(**kwargs)
        kept = sorted(int(k) for k in use_timesteps)
        if not kept or kept[0] < 0 or kept[-1] >= base.num_timesteps:
            raise ValueError(f"use_timesteps must be a non-empty subset of 0..{base.num_timesteps - 1}")
        core = _Core(
            betas=respaced_betas(base.core.alphas_cumprod, kept),
            model_mean_type=base.model_mean_type,
            model_var_type=base.model_var_type,
            loss_type=base.loss_type,
            rescale_timesteps=base.rescale_timesteps,
            timestep_map=kept,
            base_alphas_cumprod=base.core.alphas_cumprod,
        )
        self._set_core(core)


def create_gaussian_diffusion(
    *,
    steps=1000,
    learn_sigma=False,
    sigma_small=False,
    noise_schedule="linear",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
    timestep_respacing="",
) -> SpacedDiffusion:
    """The reference factory (same keywords and defaults); always returns a :class:`SpacedDiffusion`."""
    core = _Core.from_schedule(
        **process_kwargs(
            steps=steps,
            noise_schedule=noise_schedule,
            learn_sigma=learn_sigma,
            sigma_small=sigma_small,
            predict_xstart=predict_xstart,
            use_kl=use_kl,
            rescale_learned_sigmas=rescale_learned_sigmas,
            rescale_timesteps=rescale_timesteps,
        )
    )
    # Like the reference, even "no respacing" recomputes the betas from alpha_bar (bit-for-bit parity).
    return SpacedDiffusion.from_core(core.respace(parse_timestep_respacing(timestep_respacing)))


_DIFFUSION_FLAGS = (
    "learn_sigma",
    "noise_schedule",
    "use_kl",
    "predict_xstart",
    "rescale_timesteps",
    "rescale_learned_sigmas",
    "timestep_respacing",
)


def _diffusion_from(flags: dict) -> SpacedDiffusion:
    """The process of a ``create_*_and_diffusion`` call, from that call's arguments (its ``locals()``)."""
    return create_gaussian_diffusion(
        steps=flags["diffusion_steps"], **{name: flags[name] for name in _DIFFUSION_FLAGS}
    )


def create_model_and_diffusion(
    image_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    channel_mult,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
    use_new_attention_order,
):
    """(UNetModel, SpacedDiffusion) from the reference's flags (``model_and_diffusion_defaults()`` keys)."""
    flags = dict(locals())  # the arguments, before any other local exists
    model = create_model(
        image_size,
        num_channels,
        num_res_blocks,
        channel_mult=channel_mult,
        learn_sigma=learn_sigma,
        class_cond=class_cond,
        use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        dropout=dropout,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
        use_new_attention_order=use_new_attention_order,
    )
    diffusion = _diffusion_from(flags)
    return model, diffusion


def sr_create_model_and_diffusion(
    large_size,
    small_size,
    class_cond,
    learn_sigma,
    num_channels,
    num_res_blocks,
    num_heads,
    num_head_channels,
    num_heads_upsample,
    attention_resolutions,
    dropout,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
    use_checkpoint,
    use_scale_shift_norm,
    resblock_updown,
    use_fp16,
):
    """(SuperResModel, SpacedDiffusion) from the reference's flags (``sr_model_and_diffusion_defaults()``)."""
    flags = dict(locals())  # the arguments, before any other local exists
    model = sr_create_model(
        large_size,
        small_size,
        num_channels,
        num_res_blocks,
        learn_sigma=learn_sigma,
        class_cond=class_cond,
        use_checkpoint=use_checkpoint,
        attention_resolutions=attention_resolutions,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        dropout=dropout,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
    )
    diffusion = _diffusion_from(flags)
    return model, diffusion


def create_classifier_and_diffusion(
    image_size,
    classifier_use_fp16,
    classifier_width,
    classifier_depth,
    classifier_attention_resolutions,
    classifier_use_scale_shift_norm,
    classifier_resblock_updown,
    classifier_pool,
    learn_sigma,
    diffusion_steps,
    noise_schedule,
    timestep_respacing,
    use_kl,
    predict_xstart,
    rescale_timesteps,
    rescale_learned_sigmas,
):
    """(EncoderUNetModel, SpacedDiffusion) from the flags of ``classifier_and_diffusion_defaults()``."""
    flags = dict(locals())  # the arguments, before any other local exists
    classifier = create_classifier(
        image_size,
        classifier_use_fp16,
        classifier_width,
        classifier_depth,
        classifier_attention_resolutions,
        classifier_use_scale_shift_norm,
        classifier_resblock_updown,
        classifier_pool,
    )
    diffusion = _diffusion_from(flags)
    return classifier, diffusion
