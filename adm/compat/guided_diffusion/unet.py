"""OpenAI's ``guided_diffusion.unet``: the three network classes with OpenAI's constructor arguments.

The building blocks (``ResBlock``, ``AttentionBlock``, ``Upsample``, ...) are adm's own (``adm.nn.layers``,
``adm.nn.attention``) and take adm's arguments; only the timestep-aware container types are re-exported
here, for ``isinstance`` checks.
"""

from adm.compat.models import (
    EncoderUNetModel,
    SuperResModel,
    UNetModel,
    convert_module_to_f16,
    convert_module_to_f32,
)
from adm.nn.layers import TimestepBlock, TimestepEmbedSequential

__all__ = [
    "EncoderUNetModel",
    "SuperResModel",
    "TimestepBlock",
    "TimestepEmbedSequential",
    "UNetModel",
    "convert_module_to_f16",
    "convert_module_to_f32",
]
