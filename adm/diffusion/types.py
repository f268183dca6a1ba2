"""The vocabulary of a Gaussian diffusion process: what the network predicts and what training minimises.

These enums are what ``conf/diffusion/*.yaml`` name (``mean_type: epsilon``, ``var_type: learned_range``,
``loss_type: rescaled_mse``). OpenAI's boolean flags (``learn_sigma``, ``predict_xstart``, ``use_kl``, ...)
map onto them in one place, ``adm.compat.diffusion.process_kwargs``.
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = ["LossType", "ModelMeanType", "ModelVarType", "choose"]

E = TypeVar("E", bound=enum.Enum)


def choose(kind: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of ``kind``; one ValueError naming the valid choices otherwise.

    ``what`` names the setting in the message, e.g. ``"var_type"``.
    """
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise ValueError(f"unknown {what} {value!r}; choose one of: {choices}") from None


class ModelMeanType(str, enum.Enum):
    """What the network's first ``C`` output channels predict."""

    EPSILON = "epsilon"  # the noise eps
    START_X = "start_x"  # x_0
    PREVIOUS_X = "previous_x"  # the posterior mean of x_{t-1}


class ModelVarType(str, enum.Enum):
    """How the reverse-process variance is obtained."""

    FIXED_SMALL = "fixed_small"  # beta_tilde_t (posterior variance)
    FIXED_LARGE = "fixed_large"  # beta_t (with beta_tilde_1 at t = 0)
    LEARNED = "learned"  # the network outputs log variance
    # The network outputs v in [-1, 1]; log variance interpolates between log beta_tilde_t and log beta_t.
    LEARNED_RANGE = "learned_range"

    @property
    def is_learned(self) -> bool:
        """True when the network outputs the variance too (output channels = 2 * image channels)."""
        return self in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


class LossType(str, enum.Enum):
    """Training objective."""

    MSE = "mse"  # L_simple (+ L_vlb on the variance when it is learned: the hybrid loss)
    RESCALED_MSE = "rescaled_mse"  # as MSE, L_vlb multiplied by T / 1000
    KL = "kl"  # the variational bound
    RESCALED_KL = "rescaled_kl"  # the variational bound times T

    @property
    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)
