"""OmegaConf resolvers the configs use; registered when ``adm`` is imported (``adm/__init__.py``).

``${adm.var_type:${model.learn_sigma}}`` -> ``learned_range`` when the network learns the variance, else
``fixed_large`` (``${adm.var_type:${model.learn_sigma},fixed_small}`` picks the fixed kind). Whether the
variance is learned has one home, the network preset's ``learn_sigma`` (it doubles the output channels);
the diffusion config derives its ``var_type`` from it. The names are ``adm.diffusion.ModelVarType`` values.
"""

from __future__ import annotations

from omegaconf import OmegaConf

__all__ = ["register_resolvers", "var_type"]

_FIXED = ("fixed_large", "fixed_small")


def var_type(learn_sigma: bool, fixed: str = "fixed_large") -> str:
    """The diffusion's var_type for a network with / without a learned variance."""
    if not isinstance(learn_sigma, bool):
        raise ValueError(f"adm.var_type needs model.learn_sigma as true or false, got {learn_sigma!r}")
    if fixed not in _FIXED:
        raise ValueError(f"adm.var_type: the fixed variance is one of {', '.join(_FIXED)}; got {fixed!r}")
    return "learned_range" if learn_sigma else fixed


def register_resolvers() -> None:
    """Register the resolvers above with OmegaConf (again is a no-op)."""
    if not OmegaConf.has_resolver("adm.var_type"):
        OmegaConf.register_new_resolver("adm.var_type", var_type)
