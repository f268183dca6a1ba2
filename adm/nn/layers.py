"""Building blocks of the ADM networks: normalisation, timestep embedding, resampling and residual blocks.

Module and parameter names mirror OpenAI's guided-diffusion (``in_layers.0``, ``emb_layers.1``, ``op``,
``conv``, ``skip_connection`` ...) so that released state dicts load without any key conversion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


def maybe_checkpoint(enabled: bool, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """Run ``fn(*args)``, recomputing its activations in the backward pass when ``enabled`` and grad is on.

    Uses non-reentrant ``torch.utils.checkpoint`` (works with ``torch.compile`` and with inputs that do not
    require grad); the RNG state is restored for the recomputation, so dropout masks are identical.
    """
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU that overwrites ``x`` when autograd will not need it (``x`` must be a fresh temporary)."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5) always computed in float32.

    Under autocast the float32 result is returned (the next conv/linear casts it as autocast decides);
    outside autocast the result is cast back to the input dtype (fp16 trunks of converted checkpoints).
    """

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5) -> None:
        super().__init__(num_groups, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        plain = x.dtype == torch.float32 and self.weight.dtype == torch.float32
        if plain and not torch.is_autocast_enabled(device_type):  # the common case: nothing to cast
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        with torch.autocast(device_type=device_type, enabled=False):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        if torch.is_autocast_enabled(device_type):
            return out
        return out.to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    """The ADM normalisation layer: GroupNorm with 32 groups in float32."""
    if channels % 32 != 0:
        raise ValueError(
            f"GroupNorm(32) needs a channel count divisible by 32, got {channels}; "
            "use model_channels (times every channel_mult entry) divisible by 32"
        )
    return GroupNorm32(channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` in place (output layers start as the identity residual)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``cat([cos(t f), sin(t f)])`` with ``f_i = max_period ** (-i / (dim // 2))``.

    Args:
        t: (B,) timesteps, integer or fractional.
        dim: embedding width; odd widths get a trailing zero column.
    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU masks cost a quarter of a random draw per element.

    On CPU ``F.dropout`` draws one Bernoulli number per element, which made dropout about 5% of an
    ADM-64 training step. Here each 64-bit draw gives four 16-bit lanes and an element is dropped when
    its lane is below ``round(p * 2**16)``: the drop probability is ``p`` rounded to a multiple of
    ``2**-16`` (0.1 becomes 0.1000061), and kept values are scaled by ``1 / (1 - that probability)``, so
    the expectation is exactly the input's. Masks come from the default generator, so seeded runs and
    resumed runs draw the same masks. Where that rounding would move ``p`` by more than 0.1% (``p``
    below about 0.008), on other devices, in place, and inside ``torch.compile`` (which cannot trace the
    64-bit draw), this is plain ``F.dropout``.
    """

    LANES = 2**16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cut = round(self.p * self.LANES)
        fast = (
            self.training
            and 0 < self.p < 1
            and x.device.type == "cpu"
            and not self.inplace
            and abs(cut / self.LANES - self.p) <= 1e-3 * self.p
            and not torch.compiler.is_compiling()
        )
        if not fast:
            return F.dropout(x, self.p, self.training, self.inplace)
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # full 64-bit range
        lanes = draws.view(torch.int16)[:n].view(x.shape)  # uniform on [-2**15, 2**15)
        scale = 1.0 / (1.0 - cut / self.LANES)
        mask = torch.where(lanes >= cut - self.LANES // 2, scale, 0.0).to(x.dtype)
        return x * mask


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep (+ class) embedding as a second argument."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential container that hands ``emb`` to the layers that take it (``TimestepBlock``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class _NearestUp2x(torch.autograd.Function):
    """Nearest 2x upsampling whose gradient is a 2x2 sum pooling, about 3x faster on CPU than the sum over
    the broadcast dimensions autograd would otherwise run (6.3 against 1.8 ms for 4x128x64x64)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(grad, 2, divisor_override=1)


def upsample_nearest_2x(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), each pixel repeated 2x2: ``F.interpolate(x, scale_factor=2,
    mode="nearest")`` exactly, as one strided copy (a broadcast view reshaped). On CPU that is several times
    faster than the interpolation kernel (30 ms against 4 ms for 8x128x32x32 on two threads), whose output
    is copied once more; its backward is a 2x2 sum pooling."""
    return _NearestUp2x.apply(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 conv (parameter name ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, 2H, 2W)."""
        x = upsample_nearest_2x(x)
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling: stride-2 3x3 conv, or 2x2 average pooling without parameters (name ``op``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C_out, H/2, W/2)."""
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the embedding, optionally resampling (BigGAN-style up/down).

    With ``use_scale_shift_norm`` the embedding gives a per-channel scale and shift applied after the
    second GroupNorm (AdaGN: ``norm(h) * (1 + scale) + shift``); otherwise it is added before it.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        *,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            Dropout(p=dropout),
            zero_module(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), emb: (B, E) -> (B, C_out, H', W')."""
        return maybe_checkpoint(self.use_checkpoint, self._forward, x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # The nn.SiLU / Dropout modules of in_layers and out_layers are applied functionally (in place on
        # fresh temporaries when autograd does not need their inputs); the state dict is unchanged.
        norm_in, _, conv_in = self.in_layers
        h = _silu(norm_in(x))
        if self.updown:
            # Resample between the activation and the conv of the first layer stack (and on the skip path).
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = conv_in(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # (B, E', 1, 1)
        norm_out, _, dropout, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = norm_out(h)
            if h.dtype == torch.float32:
                h = torch.addcmul(shift, h, 1 + scale)  # norm(h) * (1 + scale) + shift, one rounding
            else:
                # Half-precision trunk (OpenAI's convert_to_fp16): round the product before adding the shift,
                # as OpenAI's two separate ops do; the fused addcmul rounds once and moves outputs by an ulp.
                h = h * (1 + scale) + shift
        else:
            h = norm_out(h + emb_out)
        h = conv_out(dropout(_silu(h)))
        skip = self.skip_connection(x)
        if torch.is_grad_enabled():
            return skip + h
        return h.add_(skip)  # h is the conv's fresh output
