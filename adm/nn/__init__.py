"""The ADM networks with OpenAI-identical state-dict keys: UNet, SuperResUNet, EncoderUNet."""

from adm.nn.attention import AttentionBlock, AttentionPool2d, qkv_attention
from adm.nn.classifier import EncoderUNet
from adm.nn.layers import GroupNorm32, ResBlock, timestep_embedding
from adm.nn.loading import load_state_dict_checked, shape_map
from adm.nn.unet import SuperResUNet, UNet

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "EncoderUNet",
    "GroupNorm32",
    "ResBlock",
    "SuperResUNet",
    "UNet",
    "load_state_dict_checked",
    "qkv_attention",
    "shape_map",
    "timestep_embedding",
]
