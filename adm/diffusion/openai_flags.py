"""OpenAI's diffusion flags in our vocabulary: the one mapping from ``noise_schedule``, ``learn_sigma``,
``predict_xstart``, ``use_kl``, ... to the arguments of :meth:`GaussianDiffusion.from_schedule`.

It sits with the diffusion maths (below ``adm.io``) so that reading an older checkpoint, whose diffusion
config was written in these flags, needs nothing from the ``guided_diffusion`` drop-in (``adm.compat``),
which uses it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adm.diffusion.types import LossType, ModelMeanType, ModelVarType

__all__ = ["LEGACY_TARGET", "legacy_diffusion_config", "process_config", "process_kwargs"]


def process_kwargs(
    *,
    steps: int,
    noise_schedule: str,
    learn_sigma: bool,
    sigma_small: bool,
    predict_xstart: bool,
    use_kl: bool,
    rescale_learned_sigmas: bool,
    rescale_timesteps: bool,
) -> dict[str, Any]:
    """OpenAI's diffusion flags as the keyword arguments of ``adm.diffusion.GaussianDiffusion.from_schedule``.

    learn_sigma -> var_type LEARNED_RANGE (else FIXED_SMALL with sigma_small, FIXED_LARGE without);
    predict_xstart -> mean_type START_X (else EPSILON); use_kl -> loss_type RESCALED_KL, else RESCALED_MSE
    with rescale_learned_sigmas, else MSE.
    """
    if use_kl:
        loss_type = LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = LossType.RESCALED_MSE
    else:
        loss_type = LossType.MSE
    if learn_sigma:
        var_type = ModelVarType.LEARNED_RANGE
    else:
        var_type = ModelVarType.FIXED_SMALL if sigma_small else ModelVarType.FIXED_LARGE
    return dict(
        schedule=noise_schedule,
        steps=int(steps),
        mean_type=ModelMeanType.START_X if predict_xstart else ModelMeanType.EPSILON,
        var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=bool(rescale_timesteps),
    )


_PROCESS_TARGET = "adm.diffusion.GaussianDiffusion.from_schedule"


def process_config(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Plain config (``conf/diffusion/*.yaml`` layout) of :func:`process_kwargs`' result."""
    plain = {
        k: (v.value if isinstance(v, ModelMeanType | ModelVarType | LossType) else v)
        for k, v in kwargs.items()
    }
    return {"_target_": _PROCESS_TARGET, **plain}


LEGACY_TARGET = "adm.diffusion.create_diffusion"
# Defaults of the flag-style factory that checkpoints written before our own vocabulary name.
_LEGACY_DEFAULTS = dict(
    sigma_small=False,
    predict_xstart=False,
    use_kl=False,
    rescale_learned_sigmas=True,
    rescale_timesteps=False,
)


def legacy_diffusion_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Translate a checkpoint's flag-style diffusion config (``_target_: adm.diffusion.create_diffusion``,
    ``steps``, ``noise_schedule``, ``learn_sigma``, ...) into our own (``conf/diffusion/*.yaml``)."""
    values = {k: v for k, v in cfg.items() if k != "_target_"}
    if values.pop("timestep_respacing", None) not in (None, ""):
        raise ValueError(
            "the checkpoint's diffusion config respaces the training process (timestep_respacing); "
            "respacing is a sampler setting: remove it from the config"
        )
    missing = [k for k in ("steps", "noise_schedule", "learn_sigma") if k not in values]
    unknown = sorted(set(values) - {"steps", "noise_schedule", "learn_sigma", *_LEGACY_DEFAULTS})
    if missing or unknown:
        raise ValueError(
            f"cannot read the checkpoint's diffusion config {dict(cfg)}: "
            + (f"missing {missing}" if missing else f"unknown keys {unknown}")
        )
    return process_config(process_kwargs(**{**_LEGACY_DEFAULTS, **values}))
