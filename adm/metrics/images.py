"""Image conventions shared by every feature extractor.

Two layouts are accepted everywhere in `adm.metrics`:

- uint8 images in the sample-file layout, (N, H, W, C) with C in {1, 3} (or (N, H, W) for grey),
  values 0..255, as numpy arrays or torch tensors;
- float torch tensors in the model layout, (N, C, H, W) with values in [-1, 1] (a sampler's x_0).

Float images are quantised to uint8 exactly as sample files are written (``((x + 1) * 127.5)`` clamped and
truncated), so evaluating images in memory and evaluating the `.npz` written from them give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

ImageBatch = np.ndarray | torch.Tensor


def float_to_uint8(x_0: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8: ``((x_0 + 1) * 127.5)`` clamped and truncated.

    This is how OpenAI's sampler writes `.npz` files; writers of sample files should call this function so
    that images evaluated in memory and the files written from them give identical metrics.
    """
    return ((x_0.detach().float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def as_uint8_nchw(images: ImageBatch) -> torch.Tensor:
    """Any accepted image batch -> (N, C, H, W) uint8 tensor (C in {1, 3}), on the device the input was on."""
    if isinstance(images, np.ndarray):
        writable = images.flags.writeable and images.flags.c_contiguous
        images = torch.from_numpy(images if writable else np.array(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if images.is_floating_point():
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                "float images must be (N, C, H, W) in [-1, 1] with C in {1, 3}, "
                f"got shape {tuple(images.shape)}"
            )
        images = float_to_uint8(images)
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
