"""OpenAI's ``guided_diffusion.image_datasets`` on adm's image-folder dataset and ADM preprocessing.

``load_data(...)`` is an endless generator of ``(images, cond)``: images float32 (B, 3, H, W) in [-1, 1],
``cond = {"y": int64 (B,)}`` with ``class_cond`` (class = file name up to its first ``_``, as OpenAI's)
else ``{}``. Files are sharded over the ranks of a ``torch.distributed`` group when one is up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from adm.data.folder import ImageFileDataset, find_images, folder_labels
from adm.data.transforms import AdmImageTransform, random_resized_crop, resize_center_crop

__all__ = ["ImageDataset", "center_crop_arr", "load_data", "random_crop_arr"]


def load_data(
    *,
    data_dir: str,
    batch_size: int,
    image_size: int,
    class_cond: bool = False,
    deterministic: bool = False,
    random_crop: bool = False,
    random_flip: bool = True,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Endless generator of ``(images (B, 3, image_size, image_size), {"y": (B,)} or {})`` from a folder.

    ``deterministic``: files in sorted order (else shuffled each pass); ``random_crop`` / ``random_flip``:
    the classifier's augmentations. Incomplete last batches are dropped.
    """
    if not data_dir:
        raise ValueError("unspecified data directory: pass data_dir=/path/to/images (e.g. --data_dir)")
    files = find_images(data_dir, config_key="data_dir")
    classes = folder_labels(Path(data_dir).expanduser(), files, "filename")[0] if class_cond else None
    rank, world = (
        (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    )
    dataset = ImageDataset(
        image_size,
        files,
        classes=classes,
        shard=rank,
        num_shards=world,
        random_crop=random_crop,
        random_flip=random_flip,
    )
    if len(dataset) < batch_size:
        raise ValueError(
            f"{len(dataset)} images under {data_dir} (for this rank) are fewer than batch_size={batch_size}; "
            "lower the batch size or add images"
        )
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=not deterministic, num_workers=1, drop_last=True
    )
    while True:
        yield from loader


class ImageDataset(Dataset):
    """Image files (this shard's share: ``image_paths[shard::num_shards]``) -> ``(x (3, H, W), cond)``.

    ``cond`` is ``{"y": int64}`` when ``classes`` (one index per path) are given, else ``{}``.
    """

    def __init__(
        self,
        resolution: int,
        image_paths: Sequence[str | os.PathLike],
        classes: Sequence[int] | None = None,
        shard: int = 0,
        num_shards: int = 1,
        random_crop: bool = False,
        random_flip: bool = True,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.local_images = [Path(p) for p in image_paths][shard:][::num_shards]
        self.local_classes = None if classes is None else list(classes)[shard:][::num_shards]
        self.random_crop = random_crop
        self.random_flip = random_flip
        root = (
            Path(os.path.commonpath([str(p.parent) for p in self.local_images]))
            if self.local_images
            else Path(".")
        )
        labels = self.local_classes if self.local_classes is not None else [0] * len(self.local_images)
        self.files = ImageFileDataset(
            self.local_images,
            labels,
            AdmImageTransform(resolution, 3, random_crop=random_crop, random_flip=random_flip),
            max_corrupt=0,
            root=root,
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        x, y = self.files[idx]
        cond = {} if self.local_classes is None else {"y": np.array(int(y), dtype=np.int64)}
        return x, cond


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's deterministic preprocessing: BOX halvings, BICUBIC to ``image_size``, centre crop (uint8)."""
    return resize_center_crop(pil_image, image_size)


def random_crop_arr(
    pil_image: Image.Image, image_size: int, min_crop_frac: float = 0.8, max_crop_frac: float = 1.0
) -> np.ndarray:
    """The classifier's augmentation: resize the short side to a random size, crop a random square (uint8)."""
    return random_resized_crop(pil_image, image_size, min_crop_frac, max_crop_frac)
