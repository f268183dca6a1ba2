"""OpenAI's ``guided_diffusion.respace``: keep a subset of the timesteps of a diffusion process."""

from adm.compat.diffusion import SpacedDiffusion, space_timesteps

__all__ = ["SpacedDiffusion", "space_timesteps"]
