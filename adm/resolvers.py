"""OmegaConf resolvers the configs use; registered when ``adm`` is imported (``adm/__init__.py``).

``${adm.var_type:${model.learn_sigma}}`` -> ``learned_range`` when the network learns the variance, else
``fixed_large`` (``${adm.var_type:${model.learn_sigma},fixed_small}`` picks the fixed kind). Whether the
variance is learned has one home, the network preset's ``learn_sigma`` (it doubles the output channels);
the diffusion config derives its ``var_type`` from it. The names are ``adm.diffusion.ModelVarType`` values.

``${adm.preset:${model},${classifier}}`` (defaults lists of sample.yaml, upsample.yaml and presets.yaml)
-> the first network preset chosen, whose ``conf/preset/<name>.yaml`` brings the data and process it was
made for, or ``none`` when the weights describe themselves (Hydra's group-choice interpolation needs a name).
"""

from __future__ import annotations

from omegaconf import OmegaConf

__all__ = ["preset", "register_resolvers", "var_type"]

_FIXED = ("fixed_large", "fixed_small")


def var_type(learn_sigma: bool, fixed: str = "fixed_large") -> str:
    """The diffusion's var_type for a network with / without a learned variance."""
    if not isinstance(learn_sigma, bool):
        raise ValueError(f"adm.var_type needs model.learn_sigma as true or false, got {learn_sigma!r}")
    if fixed not in _FIXED:
        raise ValueError(f"adm.var_type: the fixed variance is one of {', '.join(_FIXED)}; got {fixed!r}")
    return "learned_range" if learn_sigma else fixed


def preset(*chosen: str | None) -> str:
    """The ``preset`` overlay for the chosen network presets (model, then classifier): the first one, or
    ``none`` when no preset is chosen."""
    return next((name for name in chosen if name is not None), "none")


def register_resolvers() -> None:
    """Register the resolvers above with OmegaConf (again is a no-op)."""
    if not OmegaConf.has_resolver("adm.var_type"):
        OmegaConf.register_new_resolver("adm.var_type", var_type)
    if not OmegaConf.has_resolver("adm.preset"):
        OmegaConf.register_new_resolver("adm.preset", preset)
