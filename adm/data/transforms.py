"""ADM's image preprocessing and the low/high-resolution pair helper.

The diffusion models see `x_0` as float32 (C, H, W) in [-1, 1]. Images reach that form in three steps:

1. resize + crop to `image_size` (:func:`resize_center_crop`, or :func:`random_resized_crop` for classifiers);
   large images are first halved with a BOX filter while the short side is at least twice the target, which
   is cheap antialiasing, then one BICUBIC resize brings the short side to the target;
2. optional random horizontal flip;
3. uint8 -> float: ``x = u / 127.5 - 1`` (:func:`to_model_range`).

:func:`downsample_area` builds the low-resolution input of an upsampling model from a high-resolution batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "AdmImageTransform",
    "downsample_area",
    "random_resized_crop",
    "resize_center_crop",
    "resize_short_side",
    "to_model_range",
]


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the short side is `size`: BOX halvings while the short side >= 2*size, then BICUBIC.

    The long side becomes ``round(long * size / short)`` after the halvings.
    """
    while min(image.size) >= 2 * size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = size / min(image.size)
    new_size = (round(image.width * scale), round(image.height * scale))
    return image.resize(new_size, resample=Image.BICUBIC)


def resize_center_crop(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's deterministic preprocessing: :func:`resize_short_side` then a centre crop.

    Returns uint8 (image_size, image_size) for mode "L" or (image_size, image_size, 3) for "RGB".
    When the surplus is odd, the crop starts at ``surplus // 2`` (one more pixel is cut at the far side).
    """
    arr = np.asarray(resize_short_side(image, image_size))
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def random_resized_crop(
    image: Image.Image,
    image_size: int,
    min_crop_frac: float = 0.8,
    max_crop_frac: float = 1.0,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Classifier augmentation: resize the short side to a random size, then crop a random square.

    The short side is drawn uniformly from the integers in
    ``[ceil(image_size / max_crop_frac), ceil(image_size / min_crop_frac)]`` (28..35 for 28 px with the
    defaults), so the crop covers between `min_crop_frac` and `max_crop_frac` of the short side.
    Randomness comes from torch (`generator`, or the global generator, which Lightning seeds per worker).
    """
    if not 0 < min_crop_frac <= max_crop_frac <= 1:
        raise ValueError(
            f"need 0 < min_crop_frac <= max_crop_frac <= 1, got {min_crop_frac}, {max_crop_frac}"
        )
    lo = math.ceil(image_size / max_crop_frac)
    hi = math.ceil(image_size / min_crop_frac)
    short = int(torch.randint(lo, hi + 1, (), generator=generator))
    arr = np.asarray(resize_short_side(image, short))
    top = int(torch.randint(0, arr.shape[0] - image_size + 1, (), generator=generator))
    left = int(torch.randint(0, arr.shape[1] - image_size + 1, (), generator=generator))
    return arr[top : top + image_size, left : left + image_size]


def to_model_range(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (C, H, W) in [-1, 1] (``u / 127.5 - 1``)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    x = torch.from_numpy(np.array(arr.transpose(2, 0, 1), dtype=np.float32))  # a writable copy
    return x / 127.5 - 1.0


class AdmImageTransform:
    """PIL image -> x_0 float32 (C, H, W) in [-1, 1] with ADM's preprocessing.

    Args:
        image_size: output height and width.
        channels: 1 (grey, PIL mode "L") or 3 (RGB); the image is converted first.
        random_crop: use :func:`random_resized_crop` (classifier training) instead of the centre crop.
        random_flip: flip horizontally with probability 0.5.
    """

    def __init__(self, image_size: int, channels: int, random_crop: bool = False, random_flip: bool = False):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"
        self.random_crop = random_crop
        self.random_flip = random_flip

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """The resized, cropped (and maybe flipped) image as uint8 (H, W) or (H, W, 3)."""
        image = image.convert(self.mode)
        if self.random_crop:
            arr = random_resized_crop(image, self.image_size)
        else:
            arr = resize_center_crop(image, self.image_size)
        if self.random_flip and bool(torch.rand(()) < 0.5):
            arr = arr[:, ::-1]
        return arr

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_model_range(self.to_uint8(image))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, mode={self.mode!r}, "
            f"random_crop={self.random_crop}, random_flip={self.random_flip})"
        )


def downsample_area(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Antialiased low-resolution copy of a high-res batch (area averaging, as OpenAI's SR training does).

    Args:
        x: (B, C, H, W) float images, e.g. x_0 in [-1, 1].
        size: target side (square) or (h, w); must not exceed the input size. When H is a multiple of h,
            each output pixel is the mean of an (H/h) x (W/w) block.
    Returns:
        low_res: (B, C, h, w), same dtype and range as `x`.
    """
    if x.ndim != 4:
        raise ValueError(f"downsample_area expects (B, C, H, W), got shape {tuple(x.shape)}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h > x.shape[-2] or w > x.shape[-1] or h < 1 or w < 1:
        raise ValueError(
            f"downsample_area: target {(h, w)} must be between 1 and the input size {tuple(x.shape[-2:])}"
        )
    return F.interpolate(x, size=(h, w), mode="area")
