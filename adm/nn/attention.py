"""Self-attention over feature maps and the attention-pooling head of the noisy classifier.

Both qkv channel layouts of OpenAI's checkpoints are supported and both run through
``torch.nn.functional.scaled_dot_product_attention``:

- legacy (``use_new_attention_order=False``): the qkv conv's output channels are ordered
  ``[heads, 3, ch]`` (each head holds its own q, k, v);
- new (``use_new_attention_order=True`` and the classifier's attention pool): ``[3, heads, ch]``.

SDPA scales ``q @ k^T`` by ``ch ** -0.5``, which equals OpenAI's ``(q * ch ** -0.25) @ (k * ch ** -0.25)^T``
up to float rounding; the softmax runs in float32 for float32 inputs (and in float32 accumulators inside
the fused half-precision kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adm.nn.layers import maybe_checkpoint, normalization, zero_module


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head attention from packed projections.

    Args:
        qkv: (B, 3 * heads * ch, L) packed queries, keys and values.
        num_heads: number of heads.
        legacy: ``True`` for the ``[heads, 3, ch]`` channel layout, ``False`` for ``[3, heads, ch]``.
    Returns:
        (B, heads * ch, L) attended values, heads concatenated along channels.
    """
    b, width, length = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        q, k, v = qkv.reshape(b, num_heads, 3, ch, length).unbind(dim=2)  # each (B, heads, ch, L)
    else:
        q, k, v = qkv.reshape(b, 3, num_heads, ch, length).unbind(dim=1)
    out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return out.transpose(-1, -2).reshape(b, num_heads * ch, length)  # (B, heads * ch, L)


def resolve_num_heads(channels: int, num_heads: int, num_head_channels: int) -> int:
    """Number of heads: ``channels // num_head_channels`` if that is set (not -1), else ``num_heads``."""
    if num_head_channels == -1:
        if channels % num_heads != 0:
            raise ValueError(f"{channels} channels cannot be split into num_heads={num_heads} heads")
        return num_heads
    if num_head_channels <= 0 or channels % num_head_channels != 0:
        raise ValueError(f"{channels} channels are not divisible by num_head_channels={num_head_channels}")
    return channels // num_head_channels


class AttentionBlock(nn.Module):
    """Residual spatial self-attention: ``x + proj_out(attention(qkv(norm(x))))``.

    Parameter names: ``norm``, ``qkv`` (1x1 Conv1d, ``3C`` outputs), ``proj_out`` (zero-initialised).
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = resolve_num_heads(channels, num_heads, num_head_channels)
        self.legacy = not use_new_attention_order
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> same shape."""
        return maybe_checkpoint(self.use_checkpoint, self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        flat = x.reshape(b, c, -1)  # (B, C, L)
        h = qkv_attention(self.qkv(self.norm(flat)), self.num_heads, self.legacy)
        h = self.proj_out(h)
        return (flat + h).reshape(x.shape)


class AttentionPool2d(nn.Module):
    """Attention pooling (CLIP-style): the mean token attends over all positions of a square map.

    Parameter names: ``positional_embedding`` (C, S*S + 1), ``qkv_proj``, ``c_proj`` (1x1 Conv1d).
    Uses the ``[3, heads, ch]`` qkv layout.
    """

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int) -> None:
        super().__init__()
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = resolve_num_heads(embed_dim, 1, num_head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, output_dim)."""
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)  # (B, C, S*S)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (B, C, S*S + 1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = qkv_attention(self.qkv_proj(x), self.num_heads, legacy=False)
        return self.c_proj(x)[:, :, 0]
