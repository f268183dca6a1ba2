"""The ADM UNet (Dhariwal & Nichol 2021) and its super-resolution variant.

State-dict keys and shapes are those of OpenAI's ``UNetModel`` / ``SuperResModel``
(``time_embed.0.weight``, ``label_emb.weight``, ``input_blocks.1.0.in_layers.0.weight``, ...).

Layout, for ``channel_mult`` with ``n`` levels and downsample factor ``ds = 2 ** level``:
``input_blocks`` = stem conv, then per level ``num_res_blocks`` x (ResBlock [+ attention]) and, except at the
last level, one downsampling block; ``middle_block`` = ResBlock, attention, ResBlock; ``output_blocks`` mirror
the input blocks with ``num_res_blocks + 1`` blocks per level, each taking a skip connection, and an
upsampling layer closing every level but the first; ``out`` = GroupNorm, SiLU, zero-initialised conv.
Attention sits at the levels whose pixel resolution ``image_size // ds`` is in ``attention_resolutions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adm.nn.attention import AttentionBlock
from adm.nn.layers import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    Upsample,
    normalization,
    timestep_embedding,
    zero_module,
)

__all__ = ["UNet", "SuperResUNet", "attention_rates", "build_encoder"]


def _as_mult(channel_mult: Sequence[float]) -> tuple[float, ...]:
    mult = tuple(float(m) if float(m) != int(float(m)) else int(float(m)) for m in channel_mult)
    if not mult:
        raise ValueError("channel_mult must list at least one level, e.g. [1, 2, 3, 4]")
    return mult


def attention_rates(image_size: int, attention_resolutions: Sequence[int], num_levels: int) -> frozenset[int]:
    """Convert pixel resolutions to downsample factors ``ds`` (OpenAI's internal convention).

    Raises ValueError when a resolution is not one the network reaches (``image_size // 2**level``).
    """
    reachable = {image_size // 2**level: 2**level for level in range(num_levels)}
    rates = set()
    for res in attention_resolutions:
        res = int(res)
        if res not in reachable:
            raise ValueError(
                f"attention resolution {res} is never reached: with image_size={image_size} and "
                f"{num_levels} levels the feature maps are {sorted(reachable, reverse=True)} pixels; "
                "attention_resolutions are pixel sizes (the middle block always has attention)"
            )
        rates.add(reachable[res])
    return frozenset(rates)


def check_image(
    x: torch.Tensor, channels: int, factor: int, name: str = "x", what: str = "the network"
) -> None:
    """Cheap shape checks for a (B, C, H, W) input; raise ValueError naming the problem."""
    if x.ndim != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels but {what} was built with in_channels={channels}")
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(
            f"{name} is {x.shape[-2]}x{x.shape[-1]} pixels; {what} downsamples {factor}x, so height and "
            f"width must be multiples of {factor} (resize or pad the input, or use fewer channel_mult levels)"
        )


def batch_timesteps(t: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a scalar timestep to (B,); check the batch size of a (B,) one."""
    if t.ndim == 0:
        return t.expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"t must have shape ({batch},) (one timestep per sample), got {tuple(t.shape)}")
    return t


def build_encoder(
    *,
    in_channels: int,
    model_channels: int,
    emb_channels: int,
    num_res_blocks: int,
    attention_ds: frozenset[int],
    channel_mult: tuple[float, ...],
    dropout: float,
    num_heads: int,
    num_head_channels: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
    use_checkpoint: bool,
    conv_resample: bool,
) -> tuple[nn.ModuleList, TimestepEmbedSequential, list[int], int, int]:
    """Input blocks and middle block shared by the UNet and the noisy classifier.

    Returns:
        (input_blocks, middle_block, channels of every input block's output, final channels, final ds).
    """

    def res(ch_in: int, ch_out: int, **updown: bool) -> ResBlock:
        return ResBlock(
            ch_in,
            emb_channels,
            dropout,
            ch_out,
            use_scale_shift_norm=use_scale_shift_norm,
            use_checkpoint=use_checkpoint,
            **updown,
        )

    def attn(ch: int) -> AttentionBlock:
        return AttentionBlock(
            ch,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_new_attention_order=use_new_attention_order,
            use_checkpoint=use_checkpoint,
        )

    ch = int(channel_mult[0] * model_channels)
    input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    chans = [ch]
    ds = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
            ch = int(mult * model_channels)
            if ds in attention_ds:
                layers.append(attn(ch))
            input_blocks.append(TimestepEmbedSequential(*layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample)
            input_blocks.append(TimestepEmbedSequential(down))
            chans.append(ch)
            ds *= 2
    middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch), res(ch, ch))
    return input_blocks, middle_block, chans, ch, ds


class UNet(nn.Module):
    """ADM denoising UNet: ``forward(x, t, y=None) -> model_output``.

    Args:
        image_size: training resolution; ``attention_resolutions`` are relative to it.
        in_channels: image channels.
        model_channels: base width (multiplied by ``channel_mult`` per level).
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_resolutions: PIXEL resolutions with self-attention, e.g. ``[32, 16, 8]``.
        channel_mult: width multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        learn_sigma: output ``2 * in_channels`` channels (eps and the variance interpolation ``v``).
        num_classes: number of class labels, or ``None`` for an unconditional model.
        dropout: dropout in every ResBlock.
        num_heads / num_head_channels: attention heads; a ``num_head_channels`` other than -1 wins.
        num_heads_upsample: heads on the decoder side (-1: same as ``num_heads``).
        use_scale_shift_norm: AdaGN (embedding scales and shifts the normalised activations).
        resblock_updown: BigGAN-style resampling ResBlocks instead of conv resampling.
        use_new_attention_order: qkv layout ``[3, heads, ch]`` instead of the legacy ``[heads, 3, ch]``.
        use_checkpoint: gradient checkpointing of every ResBlock and attention block.
    """

    _concat_low_res = False  # SuperResUNet: low_res is concatenated to x, doubling the stem's input

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[float],
        learn_sigma: bool,
        num_classes: int | None,
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        use_new_attention_order: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        mult = _as_mult(channel_mult)
        self._build(
            image_size=int(image_size),
            in_channels=int(in_channels),
            out_channels=int(in_channels) * (2 if learn_sigma else 1),
            model_channels=int(model_channels),
            num_res_blocks=int(num_res_blocks),
            attention_ds=attention_rates(int(image_size), attention_resolutions, len(mult)),
            channel_mult=mult,
            num_classes=None if num_classes is None else int(num_classes),
            dropout=float(dropout),
            num_heads=int(num_heads),
            num_head_channels=int(num_head_channels),
            num_heads_upsample=int(num_heads_upsample),
            use_scale_shift_norm=bool(use_scale_shift_norm),
            resblock_updown=bool(resblock_updown),
            use_new_attention_order=bool(use_new_attention_order),
            use_checkpoint=bool(use_checkpoint),
            conv_resample=True,
        )

    def _build(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        num_res_blocks: int,
        attention_ds: frozenset[int],
        channel_mult: tuple[float, ...],
        num_classes: int | None,
        dropout: float,
        num_heads: int,
        num_head_channels: int,
        num_heads_upsample: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
        use_checkpoint: bool,
        conv_resample: bool,
    ) -> None:
        """Create the layers; ``attention_ds`` are downsample factors (1, 2, 4, ...)."""
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.learn_sigma = out_channels == 2 * in_channels
        self.model_channels = model_channels
        self.num_res_blocks = num_res_blocks
        self.channel_mult = channel_mult
        self.num_classes = num_classes
        self.attention_ds = attention_ds
        self.use_checkpoint = use_checkpoint
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self._trunk_dtype: torch.dtype | None = None  # set by the fp16 conversion of the OpenAI adapters

        emb_channels = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_channels)

        common = dict(
            use_scale_shift_norm=use_scale_shift_norm, use_checkpoint=use_checkpoint, dropout=dropout
        )
        stem_in = in_channels * (2 if self._concat_low_res else 1)
        self.input_blocks, self.middle_block, chans, ch, ds = build_encoder(
            in_channels=stem_in,
            model_channels=model_channels,
            emb_channels=emb_channels,
            num_res_blocks=num_res_blocks,
            attention_ds=attention_ds,
            channel_mult=channel_mult,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
            conv_resample=conv_resample,
            **common,
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                skip_ch = chans.pop()
                width = int(model_channels * mult)
                layers: list[nn.Module] = [
                    ResBlock(
                        ch + skip_ch,
                        emb_channels,
                        dropout,
                        width,
                        use_scale_shift_norm=use_scale_shift_norm,
                        use_checkpoint=use_checkpoint,
                    )
                ]
                ch = width
                if ds in attention_ds:
                    layers.append(
                        AttentionBlock(
                            ch,
                            num_heads=num_heads_upsample,
                            num_head_channels=num_head_channels,
                            use_new_attention_order=use_new_attention_order,
                            use_checkpoint=use_checkpoint,
                        )
                    )
                if level and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(
                            ResBlock(
                                ch,
                                emb_channels,
                                dropout,
                                ch,
                                use_scale_shift_norm=use_scale_shift_norm,
                                use_checkpoint=use_checkpoint,
                                up=True,
                            )
                        )
                    else:
                        layers.append(Upsample(ch, conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1))
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the model output for noisy images.

        Args:
            x: (B, in_channels, H, W) noisy images x_t; H and W multiples of ``downsample_factor``.
            t: (B,) timesteps as the network sees them (int or float).
            y: (B,) int64 class labels for a class-conditional model, else None.
        Returns:
            (B, out_channels, H, W): eps (and the variance interpolation ``v`` when ``learn_sigma``).
        """
        check_image(x, self.in_channels, self.downsample_factor, what=type(self).__name__)
        self._check_labels(x, y)
        return self._forward(x, t, y)

    def _check_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        if self.num_classes is None and y is not None:
            raise ValueError(
                f"{type(self).__name__} is unconditional (num_classes=None) but labels y were given; "
                "drop y, or build a class-conditional network (num_classes=N)"
            )
        if self.num_classes is not None:
            if y is None:
                raise ValueError(
                    f"{type(self).__name__} is class-conditional (num_classes={self.num_classes}); "
                    "pass labels y of shape (B,)"
                )
            if y.shape != (x.shape[0],):
                raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        t = batch_timesteps(t, x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))  # (B, 4 * model_channels)
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x if self._trunk_dtype is None else x.to(self._trunk_dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))


class SuperResUNet(UNet):
    """ADM upsampler: a UNet that also sees ``low_res``, resized bilinearly to x's size and concatenated.

    The :class:`UNet` arguments (``in_channels`` = image channels; the stem takes twice as many) plus
    ``low_res_size``. ``forward(x, t, low_res, y=None)``.

    Args:
        low_res_size: side of the low-resolution images the upsampler is trained on / made for (64 for
            64 -> 256 px): training area-downsamples x_0 to it and upsampling checks base images against it.
            A plain attribute, not a weight (the state dict stays OpenAI's); None when unknown (e.g. OpenAI's
            ``SuperResModel`` built directly). The forward pass resizes any low_res, as OpenAI's does.
        the others: see :class:`UNet`.
    """

    _concat_low_res = True
    _low_res_size: int | None = None  # also the value of adapters that bypass __init__ (adm.compat)

    def __init__(self, *, low_res_size: int | None = None, **unet_kwargs: Any) -> None:
        super().__init__(**unet_kwargs)
        self.low_res_size = low_res_size

    @property
    def low_res_size(self) -> int | None:
        """Side of the low-resolution input, between 1 and ``image_size`` (exclusive); None when unknown."""
        return self._low_res_size

    @low_res_size.setter
    def low_res_size(self, value: int | None) -> None:
        valid = isinstance(value, int) and not isinstance(value, bool) and 1 <= value < self.image_size
        if value is not None and not valid:
            raise ValueError(
                f"low_res_size={value!r} must be an int between 1 and the upsampler's image_size "
                f"{self.image_size} (exclusive), e.g. 64 for a 256 px upsampler (model.low_res_size in "
                "configs, small_size in OpenAI's factories)"
            )
        self._low_res_size = value

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        low_res: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, C, H, W) noisy high-res images, low_res: (B, C, h, w) conditioning -> (B, out, H, W)."""
        what = type(self).__name__
        check_image(x, self.in_channels, self.downsample_factor, what=what)
        if low_res is None:
            raise ValueError(
                f"{what} needs the low-resolution image: call it as model(x, t, low_res=..., y=...)"
            )
        check_image(low_res, self.in_channels, 1, name="low_res", what=what)
        self._check_labels(x, y)
        upsampled = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self._forward(torch.cat([x, upsampled], dim=1), t, y)
