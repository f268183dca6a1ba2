"""The two image layouts and the one conversion between them.

- the sample-file layout: uint8 (N, H, W, C), values 0..255 (grey images may also come as (N, H, W));
- the model layout: float (N, C, H, W) in [-1, 1] (a sampler's x_0).

:func:`quantize` is the one float -> uint8 conversion (``((x + 1) * 127.5)`` clamped to [0, 255] and
truncated, as OpenAI's sampler writes its files), so images scored in memory and the files written from them
give identical numbers.

    >>> u = to_uint8(x_0)          # float (16, 3, 64, 64) in [-1, 1] -> uint8 (16, 64, 64, 3)
    >>> x = from_uint8(u)          # and back: float32 (16, 3, 64, 64) in [-1, 1]
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ImageBatch",
    "as_uint8_nchw",
    "from_uint8",
    "quantize",
    "to_uint8",
]

ImageBatch = np.ndarray | torch.Tensor


def quantize(x_0: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 on the same device: ``((x_0 + 1) * 127.5)``
    clamped to [0, 255] and truncated (OpenAI's sample files; bit-exact with their sampler)."""
    x = ((x_0.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def to_uint8(x_0: torch.Tensor) -> np.ndarray:
    """:func:`quantize` as a host numpy array: (N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8."""
    return quantize(x_0).cpu().numpy()


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) sample-file images -> float32 (N, C, H, W) in [-1, 1] (``u / 127.5 - 1``).

    The inverse of :func:`quantize` up to its truncation: ``quantize(from_uint8(u))`` is u or, where the
    float lands a hair below the level, u - 1 (pixel centres ``(u + 0.5) / 127.5 - 1`` come back as u).
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    return torch.from_numpy(_tensor_ready(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _tensor_ready(array: np.ndarray) -> np.ndarray:
    """`array` itself when torch can share it, else a C-contiguous writable copy (arrays read straight from
    a file's bytes are read-only)."""
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


def as_uint8_nchw(images: ImageBatch) -> torch.Tensor:
    """Either layout (numpy or torch) -> (N, C, H, W) uint8 tensor (C in {1, 3}) on the input's device.

    Accepts uint8 (N, H, W, C) / (N, H, W) and float (N, C, H, W) in [-1, 1] (quantised by :func:`quantize`).
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(_tensor_ready(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if images.is_floating_point():
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                "float images must be (N, C, H, W) in [-1, 1] with C in {1, 3}, "
                f"got shape {tuple(images.shape)}"
            )
        images = quantize(images)
    elif images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1], got dtype {images.dtype}"
        )
    if images.ndim == 3:  # (N, H, W) grey
        images = images.unsqueeze(-1)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "uint8 images must be (N, H, W, C) with C in {1, 3} (or (N, H, W)), "
            f"got shape {tuple(images.shape)}"
        )
    return images.permute(0, 3, 1, 2).contiguous()
