"""Grids of sample images, with optional captions (class names) under the images.

Grids use torchvision's ``make_grid`` layout (white padding between images and around the grid); captions are
drawn in black on a white strip under each image.

    >>> save_grid(images, "grid.png", nrow=8, captions=label_captions(labels, class_names))
    >>> save_grid(by_class(images, labels, num_classes=10, columns=8), "by_class.png", nrow=8)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from adm.io.files import atomic_write
from adm.io.images import _tensor_ready

__all__ = [
    "by_class",
    "caption_strips",
    "grid_image",
    "label_captions",
    "save_grid",
]

PathLike = str | os.PathLike


def label_captions(
    labels: Sequence[int] | np.ndarray | torch.Tensor, names: Sequence[str] | None
) -> list[str]:
    """One caption per label: its class name, or the index itself where there is no name for it."""
    names = list(names or [])
    values = labels.tolist() if hasattr(labels, "tolist") else labels  # numpy or torch (any device)
    return [names[k] if 0 <= k < len(names) else str(k) for k in (int(v) for v in values)]


def grid_image(
    images: np.ndarray,
    nrow: int | None = None,
    padding: int = 2,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """uint8 (n, H, W, C) images -> one uint8 (rows * (H + p) + p, nrow * (W + p) + p, C) grid image.

    `nrow` images per row (default: about square), `padding` white pixels between images and around the
    grid (torchvision's ``make_grid`` layout). Grey images give a grey grid. `captions` (one string per
    image) are drawn in black on a white strip under each image (:func:`caption_strips`), which makes every
    row taller by the strip's height; text wider than the image is cut short.
    """
    from torchvision.utils import make_grid

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or not len(images):
        raise ValueError(
            f"a grid needs uint8 images (n, H, W, C) with n >= 1 and C in {{1, 3}}, got {images.dtype} "
            f"{images.shape}; quantise float images with to_uint8 first"
        )
    if captions is not None:
        if isinstance(captions, str) or len(captions) != len(images):
            raise ValueError(f"captions must be one string per image ({len(images)}), got {captions!r}")
        strips = caption_strips(captions, width=images.shape[2], channels=images.shape[3])
        images = np.concatenate([images, strips], axis=1)
    n, channels = len(images), images.shape[-1]
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    batch = torch.from_numpy(_tensor_ready(images)).permute(0, 3, 1, 2)
    if n == 1:  # make_grid returns a lone image unpadded; pad it like any grid
        grid = torch.nn.functional.pad(batch[0], (padding,) * 4, value=255)
    else:
        grid = make_grid(batch, nrow=nrow, padding=padding, pad_value=255)
    return np.ascontiguousarray(grid[:channels].permute(1, 2, 0).numpy())  # make_grid repeats grey to 3


def caption_strips(captions: Sequence[str], width: int, channels: int) -> np.ndarray:
    """uint8 (n, h, width, channels) white strips with each caption in black (Pillow's default font).

    h fits the font (ascenders and descenders, 1 pixel above and below); a caption wider than `width` is
    cut to the characters that fit.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    _, top, _, bottom = font.getbbox("Agjy|")  # the font's ink extent, from its ascender line
    height = int(bottom - top) + 2
    mode, ink, paper = ("L", 0, 255) if channels == 1 else ("RGB", (0, 0, 0), (255, 255, 255))
    strips = np.empty((len(captions), height, width, channels), dtype=np.uint8)
    for k, caption in enumerate(captions):
        strip = Image.new(mode, (width, height), paper)
        draw = ImageDraw.Draw(strip)
        text = str(caption)
        while text and draw.textlength(text, font=font) > width - 2:  # 1 pixel clear on either side
            text = text[:-1]
        if text:
            draw.text((1, 1 - top), text, fill=ink, font=font)
        strips[k] = np.asarray(strip).reshape(height, width, channels)
    return strips


def save_grid(
    images: np.ndarray,
    path: PathLike,
    nrow: int | None = None,
    padding: int = 2,
    captions: Sequence[str] | None = None,
) -> Path:
    """Save uint8 (n, H, W, C) images as one PNG grid (:func:`grid_image`, with optional captions under the
    images), atomically; returns the path."""
    from PIL import Image

    canvas = grid_image(images, nrow, padding, captions)
    path = Path(path)
    with atomic_write(path) as f:
        Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas).save(f, format="PNG")
    return path


def by_class(images: np.ndarray, labels: np.ndarray, num_classes: int, columns: int) -> np.ndarray:
    """Images laid out for ``save_grid(..., nrow=columns)`` with one row per class.

    Row k holds the first `columns` images labelled k, in order; white cells fill a row whose class has
    fewer images.

    Args:
        images: uint8 (n, H, W, C). labels: (n,) ints in [0, num_classes).
    Returns:
        uint8 (num_classes * columns, H, W, C).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if columns < 1 or num_classes < 1:
        raise ValueError(f"by_class needs columns and num_classes >= 1, got {columns} and {num_classes}")
    if labels.shape != (len(images),):
        raise ValueError(f"by_class needs one label per image: {len(images)} images, labels {labels.shape}")
    out = np.full((num_classes * columns, *images.shape[1:]), 255, dtype=np.uint8)
    for k in range(num_classes):
        row = images[labels == k][:columns]
        out[k * columns : k * columns + len(row)] = row
    return out
