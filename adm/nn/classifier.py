"""The noisy-image classifier of ADM: the UNet's encoder half followed by a pooling head.

State-dict keys and shapes are those of OpenAI's ``EncoderUNetModel``. Pooling heads (``pool``):

- ``"adaptive"``: GroupNorm, SiLU, global average pool, zero-initialised 1x1 conv;
- ``"attention"``: GroupNorm, SiLU, :class:`AttentionPool2d` (needs inputs of exactly ``image_size``);
- ``"spatial"``: MLP (ReLU) on the concatenated spatial means of every block's output;
- ``"spatial_v2"``: the same with GroupNorm + SiLU in the MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adm.nn.attention import AttentionPool2d
from adm.nn.layers import normalization, timestep_embedding, zero_module
from adm.nn.unet import _as_mult, attention_rates, batch_timesteps, build_encoder, check_image

__all__ = ["EncoderUNet", "POOLS"]

POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class EncoderUNet(nn.Module):
    """Classifier of noisy images ``forward(x, t) -> logits``, trained on x_t for classifier guidance.

    Args:
        image_size: input resolution (the attention pool's positional embedding is sized for it).
        in_channels: image channels.
        model_channels: base width.
        out_channels: number of classes (logits).
        num_res_blocks: ResBlocks per level.
        attention_resolutions: PIXEL resolutions with self-attention.
        channel_mult: width multiplier per level.
        pool: one of ``"adaptive"``, ``"attention"``, ``"spatial"``, ``"spatial_v2"``.
        dropout, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown,
        use_new_attention_order, use_checkpoint: as in :class:`adm.nn.UNet`.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        channel_mult: Sequence[float],
        pool: str,
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int = -1,
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
            model_channels=int(model_channels),
            out_channels=int(out_channels),
            num_res_blocks=int(num_res_blocks),
            attention_ds=attention_rates(int(image_size), attention_resolutions, len(mult)),
            channel_mult=mult,
            pool=str(pool),
            dropout=float(dropout),
            num_heads=int(num_heads),
            num_head_channels=int(num_head_channels),
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
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_ds: frozenset[int],
        channel_mult: tuple[float, ...],
        pool: str,
        dropout: float,
        num_heads: int,
        num_head_channels: int,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
        use_checkpoint: bool,
        conv_resample: bool,
    ) -> None:
        """Create the layers; ``attention_ds`` are downsample factors (1, 2, 4, ...)."""
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {POOLS}")
        if pool == "attention" and num_head_channels == -1:
            raise ValueError("pool='attention' needs num_head_channels (e.g. 64), not -1")
        self.image_size = image_size
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_classes = out_channels
        self.model_channels = model_channels
        self.channel_mult = channel_mult
        self.pool = pool
        self.use_checkpoint = use_checkpoint
        self.downsample_factor = 2 ** (len(channel_mult) - 1)
        self._trunk_dtype: torch.dtype | None = None  # set by the fp16 conversion of the OpenAI adapter

        emb_channels = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.input_blocks, self.middle_block, chans, ch, ds = build_encoder(
            in_channels=in_channels,
            model_channels=model_channels,
            emb_channels=emb_channels,
            num_res_blocks=num_res_blocks,
            attention_ds=attention_ds,
            channel_mult=channel_mult,
            dropout=dropout,
            num_heads=num_heads,
            num_head_channels=num_head_channels,
            use_scale_shift_norm=use_scale_shift_norm,
            resblock_updown=resblock_updown,
            use_new_attention_order=use_new_attention_order,
            use_checkpoint=use_checkpoint,
            conv_resample=conv_resample,
        )
        feature_size = sum(chans) + ch  # spatial pools: means of every input block and of the middle block
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(nn.Conv2d(ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(nn.Linear(feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels))
        else:
            self.out = nn.Sequential(
                nn.Linear(feature_size, 2048), normalization(2048), nn.SiLU(), nn.Linear(2048, out_channels)
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, H, W) noisy images, t: (B,) timesteps -> (B, out_channels) logits."""
        name = type(self).__name__
        check_image(x, self.in_channels, self.downsample_factor, what=name)
        if self.pool == "attention" and (x.shape[-2] != self.image_size or x.shape[-1] != self.image_size):
            raise ValueError(
                f"{name} with pool='attention' takes {self.image_size}x{self.image_size} inputs only "
                f"(its positional embedding is sized for them), got {x.shape[-2]}x{x.shape[-1]}"
            )
        t = batch_timesteps(t, x.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        h = x if self._trunk_dtype is None else x.to(self._trunk_dtype)
        spatial = self.pool.startswith("spatial")
        means = []
        for block in self.input_blocks:
            h = block(h, emb)
            if spatial:
                means.append(h.to(x.dtype).mean(dim=(2, 3)))
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.to(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))  # (B, feature_size) -> logits
        return self.out(h.to(x.dtype))
