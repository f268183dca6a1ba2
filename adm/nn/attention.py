"""Self-attention over feature maps and the attention-pooling head of the noisy classifier.

Both qkv channel layouts of OpenAI's checkpoints are supported:

- legacy (``use_new_attention_order=False``): the qkv projection's output channels are ordered
  ``[heads, 3, ch]`` (each head holds its own q, k, v);
- new (``use_new_attention_order=True`` and the classifier's attention pool): ``[3, heads, ch]``.

The blocks work on tokens, ``(B, L, C)`` with channels last: the 1x1 qkv projection is then a plain
matrix product whose output splits into q, k and v as ``(B, heads, L, ch)`` views with unit stride
along ``ch``. That is the layout the fused kernels of ``scaled_dot_product_attention`` take (the flash
kernel on CPU, flash / memory-efficient kernels on CUDA); with any other stride it falls back to the
unfused math path, which materialises the ``L x L`` weights and pays for safe-softmax checks.

SDPA scales ``q @ k^T`` by ``ch ** -0.5``, which equals OpenAI's ``(q * ch ** -0.25) @ (k * ch ** -0.25)^T``
up to float rounding; the softmax runs in float32 for float32 inputs (and in float32 accumulators inside
the fused half-precision kernels).

An attention block whose own weights are float16 (a trunk converted with OpenAI's ``convert_to_fp16``)
runs OpenAI's float16 sequence instead, :func:`qkv_attention_openai_order`: q and k each scaled by
``ch ** -0.25`` and rounded to float16, their product rounded to float16, the softmax in float32 rounded
back to float16, then the product with v. At float16 precision each of those roundings shows (SDPA
differs from it by about one float16 ulp per element), so only this sequence gives OpenAI's fp16
numbers. Under autocast the weights stay float32 and the fused path is used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adm.nn.layers import maybe_checkpoint, normalization, zero_module


def _split_heads(qkv: torch.Tensor, num_heads: int, legacy: bool) -> tuple[torch.Tensor, ...]:
    """(B, L, 3 * heads * ch) -> q, k, v, each a (B, heads, L, ch) view with unit stride along ch."""
    b, length, width = qkv.shape
    ch = width // (3 * num_heads)
    if legacy:
        parts = qkv.view(b, length, num_heads, 3, ch).permute(3, 0, 2, 1, 4)  # (3, B, heads, L, ch)
    else:
        parts = qkv.view(b, length, 3, num_heads, ch).permute(2, 0, 3, 1, 4)
    return parts.unbind(0)


def token_attention(
    qkv: torch.Tensor, num_heads: int, legacy: bool, query_tokens: int | None = None
) -> torch.Tensor:
    """Multi-head attention from packed projections in token layout.

    Args:
        qkv: (B, L, 3 * heads * ch) packed queries, keys and values, contiguous.
        num_heads: number of heads.
        legacy: ``True`` for the ``[heads, 3, ch]`` channel layout, ``False`` for ``[3, heads, ch]``.
        query_tokens: attend from the first ``query_tokens`` positions only (all when None).
    Returns:
        (B, Lq, heads * ch) attended values, heads concatenated along the last dim.
    """
    qkv = qkv.contiguous()
    q, k, v = _split_heads(qkv, num_heads, legacy)
    if query_tokens is not None:
        q = q[:, :, :query_tokens]
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Lq, ch)
    b, _, length, ch = out.shape
    return out.transpose(1, 2).reshape(b, length, num_heads * ch)


def qkv_attention(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head attention from packed projections in channel layout (as OpenAI's ``QKVAttention``).

    Args:
        qkv: (B, 3 * heads * ch, L) packed queries, keys and values.
        num_heads: number of heads.
        legacy: ``True`` for the ``[heads, 3, ch]`` channel layout, ``False`` for ``[3, heads, ch]``.
    Returns:
        (B, heads * ch, L) attended values, heads concatenated along channels.
    """
    return token_attention(qkv.transpose(1, 2), num_heads, legacy).transpose(1, 2)


def qkv_attention_openai_order(qkv: torch.Tensor, num_heads: int, legacy: bool) -> torch.Tensor:
    """Multi-head attention in channel layout with OpenAI's float16 order of roundings.

    q and k are each multiplied by ``ch ** -0.25`` in the input dtype (scaling before the product keeps the
    float16 logits in range), the logits are formed in the input dtype, the softmax is taken in float32 and
    cast back, and the weights are applied to v in the input dtype. Used for float16 trunks, where it
    reproduces OpenAI's ``QKVAttention`` / ``QKVAttentionLegacy`` to the bit on the same backend; for
    float32 :func:`qkv_attention` is faster and agrees to rounding.

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
        q, k, v = qkv.reshape(b * num_heads, 3 * ch, length).split(ch, dim=1)
    else:
        q, k, v = (part.reshape(b * num_heads, ch, length) for part in qkv.chunk(3, dim=1))
    scale = 1.0 / math.sqrt(math.sqrt(ch))  # the same double OpenAI multiplies by
    logits = torch.einsum("nct,ncs->nts", q * scale, k * scale)  # (B*heads, Lq, Lk)
    weights = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    out = torch.einsum("nts,ncs->nct", weights, v)  # (B*heads, ch, Lq)
    return out.reshape(b, num_heads * ch, length)


def _pointwise(conv: nn.Conv1d, tokens: torch.Tensor) -> torch.Tensor:
    """A 1x1 Conv1d applied to (B, L, C_in) tokens -> (B, L, C_out): one matrix product."""
    return F.linear(tokens, conv.weight.squeeze(-1), conv.bias)


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
        if self.qkv.weight.dtype == torch.float16:  # a converted fp16 trunk: OpenAI's fp16 sequence
            qkv = self.qkv(self.norm(flat))  # (B, 3C, L)
            h = self.proj_out(qkv_attention_openai_order(qkv, self.num_heads, self.legacy))
            return (flat + h).reshape(x.shape)
        tokens = self.norm(flat).transpose(1, 2).contiguous()  # (B, L, C)
        h = token_attention(_pointwise(self.qkv, tokens), self.num_heads, self.legacy)  # (B, L, C)
        h = _pointwise(self.proj_out, h).to(flat.dtype)
        return (flat + h.transpose(1, 2)).reshape(x.shape)


class AttentionPool2d(nn.Module):
    """Attention pooling (CLIP-style): the mean token attends over all positions of a square map.

    Parameter names: ``positional_embedding`` (C, S*S + 1), ``qkv_proj``, ``c_proj`` (1x1 Conv1d).
    Uses the ``[3, heads, ch]`` qkv layout. Only the mean token's output is kept, so only its query
    is computed (every other position's output would be thrown away).

    ``openai_order`` (off by default; the OpenAI adapters' ``convert_to_fp16`` turns it on) computes the
    head as OpenAI's code does instead: channel layout, every query, :func:`qkv_attention_openai_order`.
    The results agree with the default path to float32 rounding (~3e-7), but in front of a float16 trunk
    such differences flip float16 roundings in the backward pass and move guidance gradients by ~3e-3.
    """

    openai_order: bool = False

    def __init__(self, spatial_dim: int, embed_dim: int, num_head_channels: int, output_dim: int) -> None:
        super().__init__()
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim**2 + 1) / embed_dim**0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.num_heads = resolve_num_heads(embed_dim, 1, num_head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, output_dim)."""
        if self.openai_order:
            return self._forward_openai_order(x)
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1).transpose(1, 2)  # (B, S*S, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, S*S + 1, C)
        x = x + self.positional_embedding.t()[None].to(x.dtype)
        x = token_attention(_pointwise(self.qkv_proj, x), self.num_heads, legacy=False, query_tokens=1)
        return _pointwise(self.c_proj, x)[:, 0]  # (B, output_dim)

    def _forward_openai_order(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)  # (B, C, S*S)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (B, C, S*S + 1)
        x = x + self.positional_embedding[None].to(x.dtype)
        h = qkv_attention_openai_order(self.qkv_proj(x), self.num_heads, legacy=False)
        return self.c_proj(h)[:, :, 0]  # (B, output_dim)
