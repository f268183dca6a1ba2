"""OpenAI-compatible network classes and factories (``guided_diffusion.unet`` / ``script_util``).

The classes are thin adapters over :mod:`adm.nn` with OpenAI's constructor arguments: here
``attention_resolutions`` are downsample RATES (``image_size // pixel_resolution``) and ``out_channels`` is
explicit. The factories take OpenAI's keyword names (``num_channels``, ``class_cond``, comma strings like
``"32,16,8"``) and defaults, so code written against ``guided_diffusion`` keeps working unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adm.nn.attention import AttentionPool2d
from adm.nn.classifier import EncoderUNet
from adm.nn.unet import SuperResUNet, UNet, _as_mult

__all__ = [
    "NUM_CLASSES",
    "EncoderUNetModel",
    "SuperResModel",
    "UNetModel",
    "classifier_and_diffusion_defaults",
    "classifier_defaults",
    "convert_module_to_f16",
    "convert_module_to_f32",
    "create_classifier",
    "create_model",
    "diffusion_defaults",
    "model_and_diffusion_defaults",
    "sr_create_model",
    "sr_model_and_diffusion_defaults",
]

NUM_CLASSES = 1000


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast the weights of a conv layer to float16 (what OpenAI's ``use_fp16`` models run their trunk in)."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo :func:`convert_module_to_f16`."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


def _check_openai_only(dims: int, conv_resample: bool) -> None:
    if dims != 2:
        raise ValueError(f"only 2-D networks are supported (dims=2), got dims={dims}")
    if not conv_resample:
        raise ValueError("only conv_resample=True is supported (every released ADM model uses it)")


class _FP16Mixin:
    """``convert_to_fp16`` / ``convert_to_fp32`` and the ``dtype`` attribute of OpenAI's networks."""

    input_blocks: nn.ModuleList
    middle_block: nn.Module
    _trunk_dtype: torch.dtype | None

    def _trunk(self) -> list[nn.Module]:
        parts = [self.input_blocks, self.middle_block]
        if hasattr(self, "output_blocks"):
            parts.append(self.output_blocks)
        return parts

    def convert_to_fp16(self) -> None:
        """Run the trunk (input, middle, output blocks) in float16; embeddings and the head stay float32.

        The float16 trunk follows OpenAI's order of float16 operations (the blocks switch to it when their
        weights are float16), and the classifier's attention-pool head switches to OpenAI's float32 order
        (see :class:`adm.nn.attention.AttentionPool2d`), so that logits and guidance gradients match
        OpenAI's fp16 run to float32 rounding rather than to float16 rounding.
        """
        for part in self._trunk():
            part.apply(convert_module_to_f16)
        self._trunk_dtype = torch.float16
        self._set_head_order(True)

    def convert_to_fp32(self) -> None:
        """Back to a float32 trunk."""
        for part in self._trunk():
            part.apply(convert_module_to_f32)
        self._trunk_dtype = None
        self._set_head_order(False)

    def _set_head_order(self, openai_order: bool) -> None:
        head = getattr(self, "out", None)
        if isinstance(head, nn.Module):
            for module in head.modules():
                if isinstance(module, AttentionPool2d):
                    module.openai_order = openai_order

    @property
    def dtype(self) -> torch.dtype:
        """float16 when built with ``use_fp16`` (as OpenAI's attribute), else float32."""
        return torch.float16 if self.use_fp16 else torch.float32


def _unet_kwargs(
    image_size: int,
    in_channels: int,
    model_channels: int,
    out_channels: int,
    num_res_blocks: int,
    attention_resolutions: Sequence[int],
    dropout: float,
    channel_mult: Sequence[float],
    conv_resample: bool,
    dims: int,
    num_classes: int | None,
    use_checkpoint: bool,
    num_heads: int,
    num_head_channels: int,
    num_heads_upsample: int,
    use_scale_shift_norm: bool,
    resblock_updown: bool,
    use_new_attention_order: bool,
) -> dict:
    _check_openai_only(dims, conv_resample)
    return dict(
        image_size=int(image_size),
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        model_channels=int(model_channels),
        num_res_blocks=int(num_res_blocks),
        attention_ds=frozenset(int(r) for r in attention_resolutions),
        channel_mult=_as_mult(channel_mult),
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


class UNetModel(_FP16Mixin, UNet):
    """OpenAI's ``UNetModel`` signature over :class:`adm.nn.UNet` (attention at downsample rates)."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self.use_fp16 = bool(use_fp16)
        self._build(
            **_unet_kwargs(
                image_size,
                in_channels,
                model_channels,
                out_channels,
                num_res_blocks,
                attention_resolutions,
                dropout,
                channel_mult,
                conv_resample,
                dims,
                num_classes,
                use_checkpoint,
                num_heads,
                num_head_channels,
                num_heads_upsample,
                use_scale_shift_norm,
                resblock_updown,
                use_new_attention_order,
            )
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        """OpenAI's argument names: (B, C, H, W) x, (B,) timesteps, (B,) labels y -> (B, out, H, W)."""
        return super().forward(x, timesteps, y)


class SuperResModel(_FP16Mixin, SuperResUNet):
    """OpenAI's ``SuperResModel``: ``forward(x, timesteps, low_res=None, y=None)``.

    ``in_channels`` are the image channels; the stem sees twice as many (x and the resized low_res).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: int | None = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self.use_fp16 = bool(use_fp16)
        self._build(
            **_unet_kwargs(
                image_size,
                in_channels,
                model_channels,
                out_channels,
                num_res_blocks,
                attention_resolutions,
                dropout,
                channel_mult,
                conv_resample,
                dims,
                num_classes,
                use_checkpoint,
                num_heads,
                num_head_channels,
                num_heads_upsample,
                use_scale_shift_norm,
                resblock_updown,
                use_new_attention_order,
            )
        )

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        low_res: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """OpenAI's argument names: x (B, C, H, W), timesteps (B,), low_res (B, C, h, w), y (B,)."""
        return super().forward(x, timesteps, low_res, y)


class EncoderUNetModel(_FP16Mixin, EncoderUNet):
    """OpenAI's ``EncoderUNetModel`` signature over :class:`adm.nn.EncoderUNet`."""

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ) -> None:
        del num_heads_upsample  # accepted for signature compatibility; the encoder has no decoder
        _check_openai_only(dims, conv_resample)
        nn.Module.__init__(self)
        self.use_fp16 = bool(use_fp16)
        self._build(
            image_size=int(image_size),
            in_channels=int(in_channels),
            model_channels=int(model_channels),
            out_channels=int(out_channels),
            num_res_blocks=int(num_res_blocks),
            attention_ds=frozenset(int(r) for r in attention_resolutions),
            channel_mult=_as_mult(channel_mult),
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

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """OpenAI's argument names: x (B, C, H, W), timesteps (B,) -> logits (B, out_channels)."""
        return super().forward(x, timesteps)


# ---------------------------------------------------------------------------------------------------------
# Factories and default dictionaries (guided_diffusion.script_util)
# ---------------------------------------------------------------------------------------------------------


def diffusion_defaults() -> dict:
    """OpenAI's defaults for the diffusion process (image and classifier training)."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults() -> dict:
    """OpenAI's defaults for the noisy classifier."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",
        classifier_use_scale_shift_norm=True,
        classifier_resblock_updown=True,
        classifier_pool="attention",
    )


def model_and_diffusion_defaults() -> dict:
    """OpenAI's defaults for the UNet and its diffusion (the flags of the image scripts)."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict:
    """Classifier defaults plus diffusion defaults (the classifier training script's flags)."""
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


_SR_KEYS = (
    "large_size",
    "small_size",
    "class_cond",
    "learn_sigma",
    "num_channels",
    "num_res_blocks",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "attention_resolutions",
    "dropout",
    "diffusion_steps",
    "noise_schedule",
    "timestep_respacing",
    "use_kl",
    "predict_xstart",
    "rescale_timesteps",
    "rescale_learned_sigmas",
    "use_checkpoint",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_fp16",
)


def sr_model_and_diffusion_defaults() -> dict:
    """OpenAI's defaults for the upsampler and its diffusion (large_size 256, small_size 64)."""
    res = model_and_diffusion_defaults()
    res["large_size"] = 256
    res["small_size"] = 64
    return {k: res[k] for k in _SR_KEYS}


_DEFAULT_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


def _default_mult(image_size: int, what: str) -> tuple[float, ...]:
    if image_size not in _DEFAULT_MULT:
        raise ValueError(
            f"no default channel_mult for {what} image_size={image_size} (known: 64, 128, 256, 512); "
            "pass channel_mult explicitly, e.g. '1,2,2'"
        )
    return _DEFAULT_MULT[image_size]


def _parse_ints(text: str | Sequence[int]) -> list[int]:
    if isinstance(text, str):
        return [int(p) for p in text.split(",") if p.strip()]
    return [int(p) for p in text]


def _attention_ds(image_size: int, attention_resolutions: str | Sequence[int]) -> tuple[int, ...]:
    """Pixel resolutions (comma string) -> downsample rates, exactly as OpenAI's factories convert them."""
    return tuple(image_size // res for res in _parse_ints(attention_resolutions))


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: str | Sequence[float] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str | Sequence[int] = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
) -> UNetModel:
    """OpenAI's ``create_model``: a 3-channel UNet (1000 classes when ``class_cond``)."""
    if channel_mult == "":
        mult = _default_mult(image_size, "the UNet with")
    elif isinstance(channel_mult, str):
        mult = tuple(int(m) for m in channel_mult.split(","))
    else:
        mult = tuple(channel_mult)
    return UNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(image_size, attention_resolutions),
        dropout=dropout,
        channel_mult=mult,
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


def create_classifier(
    image_size: int,
    classifier_use_fp16: bool,
    classifier_width: int,
    classifier_depth: int,
    classifier_attention_resolutions: str | Sequence[int],
    classifier_use_scale_shift_norm: bool,
    classifier_resblock_updown: bool,
    classifier_pool: str,
) -> EncoderUNetModel:
    """OpenAI's ``create_classifier``: 1000-class noisy classifier, 64 channels per attention head."""
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=NUM_CLASSES,
        num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(image_size, classifier_attention_resolutions),
        channel_mult=_default_mult(image_size, "the classifier with"),
        use_fp16=classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


_SR_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}


def sr_create_model(
    large_size: int,
    small_size: int,
    num_channels: int,
    num_res_blocks: int,
    learn_sigma: bool,
    class_cond: bool,
    use_checkpoint: bool,
    attention_resolutions: str | Sequence[int],
    num_heads: int,
    num_head_channels: int,
    num_heads_upsample: int,
    use_scale_shift_norm: bool,
    dropout: float,
    resblock_updown: bool,
    use_fp16: bool,
) -> SuperResModel:
    """OpenAI's ``sr_create_model``: the upsampler for ``large_size`` 64, 256 or 512.

    ``small_size`` does not shape the weights (low_res is resized inside the network); it becomes the
    network's ``low_res_size``, which upsampling checks base images against.
    """
    if large_size not in _SR_MULT:
        raise ValueError(f"unsupported large_size {large_size}: OpenAI's upsamplers use 64, 256 or 512")
    model = SuperResModel(
        image_size=large_size,
        in_channels=3,
        model_channels=num_channels,
        out_channels=6 if learn_sigma else 3,
        num_res_blocks=num_res_blocks,
        attention_resolutions=_attention_ds(large_size, attention_resolutions),
        dropout=dropout,
        channel_mult=_SR_MULT[large_size],
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_fp16=use_fp16,
    )
    model.low_res_size = small_size
    return model
