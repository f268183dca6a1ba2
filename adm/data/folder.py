"""Image folders: scanning (no decoding) and a dataset that decodes lazily and skips a few corrupt files.

Two labelling schemes (only used when the data is class-conditional):

- ``labels="folder"`` (ImageNet / torchvision ImageFolder layout): the class of
  ``ROOT/<class>/.../img.jpg`` is its first sub-folder; classes are the sorted sub-folder names.
- ``labels="filename"`` (OpenAI's convention, e.g. ``n01440764_10026.JPEG``): the class is the file name up to
  its first ``_``; classes are the sorted unique prefixes.

Corrupt files: decoding happens in the data-loader workers, so a corrupt file is only found when it is read.
It is then skipped (the next index's image is returned instead), a warning names it with the running count,
and once more than ``max_corrupt`` files have failed in one process a ValueError stops the run. A folder where
nothing can be read fails at once (the data module's ``setup`` decodes a small sample first).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "find_images",
    "folder_channels",
    "folder_content_hash",
    "folder_labels",
    "load_image",
    "read_folder_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
# What PIL raises for unreadable / truncated / unsupported files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# PIL modes without colour: bilevel, 8-bit grey (with alpha), 16/32-bit integer and float grey.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def find_images(root: str | os.PathLike, config_key: str = "data.path") -> list[Path]:
    """All image files under `root` (recursive, sorted, hidden files and folders ignored). Decodes nothing.

    Raises:
        FileNotFoundError: `root` does not exist or is not a folder (the message names `config_key`).
        ValueError: no file with an extension in IMAGE_EXTENSIONS was found.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"image folder {root} {what}; set {config_key}=/path/to/images "
            "(the dataset configs look under $ADM_DATA_DIR, default ./data)"
        )
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(dirpath, name))
    if not files:
        raise ValueError(
            f"image folder {root} contains no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
            f"point {config_key} at the folder that holds them"
        )
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return files


def folder_labels(root: Path, files: Sequence[Path], labels: str) -> tuple[list[int], list[str]]:
    """Class index of every file and the sorted class names, from the paths alone.

    Args:
        root: the scanned folder; files: paths under it; labels: "folder" or "filename" (see module doc).
    """
    if labels == "folder":
        names = []
        for f in files:
            parts = f.relative_to(root).parts
            if len(parts) < 2:
                raise ValueError(
                    f"{f} lies directly in {root}, but labels='folder' needs ROOT/<class>/<image>; "
                    "use labels=filename for OpenAI-style NAME_xxx.png files or data.num_classes=null "
                    "(unconditional)"
                )
            names.append(parts[0])
    elif labels == "filename":
        names = []
        for f in files:
            if "_" not in f.name:
                raise ValueError(
                    f"{f} has no '_' in its name, but labels='filename' takes the class from the text before "
                    "the first '_' (e.g. n01440764_10026.JPEG); use labels=folder or data.num_classes=null "
                    "(unconditional)"
                )
            names.append(f.name.split("_", 1)[0])
    else:
        raise ValueError(f"labels must be 'folder' or 'filename', got {labels!r}")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return [index[n] for n in names], classes


def folder_channels(files: Sequence[Path], sample: int = 32) -> int:
    """1 when the images are greyscale, else 3: the PIL modes of up to `sample` files spread evenly over
    `files` (every class of a sorted folder list), read from the file headers only (nothing is decoded).

    Any colour file among them gives 3, and so do palette files (GIF, 8-bit PNG: their palette may hold
    colours), so a folder is read as grey only when every sampled file is. Unreadable files are skipped.

    Raises:
        ValueError: none of the sampled files can be opened.
    """
    k = min(sample, len(files))
    idx = sorted({round(i * (len(files) - 1) / max(k - 1, 1)) for i in range(k)})  # first and last included
    errors = []
    for i in idx:
        try:
            with Image.open(files[i]) as image:
                if image.mode not in GREY_MODES:
                    return 3
        except _DECODE_ERRORS as e:
            errors.append(f"{files[i]} ({type(e).__name__}: {e})")
    if len(errors) == len(idx):
        raise ValueError(
            f"none of the {len(idx)} sampled images could be opened, e.g. {errors[0]}; the folder holds no "
            "readable images"
        )
    return 1


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file (raises PIL's / the OS's error for unreadable files)."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image.load()
    return image


class ImageFileDataset(Dataset):
    """Image files + labels -> (transform(image), y int64). Corrupt files are skipped, see the module doc.

    Paths are kept as one numpy byte array (relative to `root`) and labels as one tensor, so that forked
    data-loader workers do not copy a million Python objects page by page.

    Args:
        files: image paths under `root`. labels: class index per file (zeros when unconditional).
        transform: PIL image -> tensor (e.g. AdmImageTransform).
        max_corrupt: most unreadable files tolerated per process before a ValueError.
        root: the folder the files came from (for messages).
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor] | None,
        max_corrupt: int,
        root: Path,
    ):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.root = Path(root)
        self._rel_paths = np.array([os.fsencode(Path(f).relative_to(self.root)) for f in files])
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform
        self.max_corrupt = max_corrupt
        self.corrupt: dict[str, str] = {}  # path -> error, in this process

    def __len__(self) -> int:
        return len(self._rel_paths)

    def path(self, index: int) -> Path:
        """The file at `index`."""
        return self.root / os.fsdecode(self._rel_paths[index])

    @property
    def files(self) -> list[Path]:
        """All files, in index order."""
        return [self.path(i) for i in range(len(self))]

    def _record_corrupt(self, path: Path, error: Exception) -> None:
        if str(path) in self.corrupt:
            return
        self.corrupt[str(path)] = f"{type(error).__name__}: {error}"
        n = len(self.corrupt)
        if n > self.max_corrupt:
            raise ValueError(
                f"{n} unreadable images under {self.root} (more than max_corrupt={self.max_corrupt}), "
                f"latest {path} ({self.corrupt[str(path)]}); repair or delete them, or raise data.max_corrupt"
            )
        warnings.warn(
            f"skipping unreadable image {path} ({self.corrupt[str(path)]}); "
            f"{n} unreadable image(s) skipped so far in this process",
            stacklevel=3,
        )

    def read(self, index: int) -> tuple[Image.Image, int]:
        """Decoded image at `index`, or at the next readable index if that file is corrupt; and its label."""
        n_try = min(len(self), self.max_corrupt + 1)
        for k in range(n_try):
            j = (index + k) % len(self)
            try:
                return load_image(self.path(j)), int(self.labels[j])
            except _DECODE_ERRORS as e:
                self._record_corrupt(self.path(j), e)
        raise ValueError(
            f"{n_try} consecutive images under {self.root} from {self.path(index)} on could not be read; "
            "check the folder (e.g. open one of them with PIL)"
        )

    def check_readable(self, num: int = 8) -> None:
        """Decode `num` files spread over the dataset; raise ValueError if none of them can be read."""
        idx = torch.linspace(0, len(self) - 1, min(num, len(self))).round().long().unique().tolist()
        errors = []
        for i in idx:
            try:
                load_image(self.path(i))
                return
            except _DECODE_ERRORS as e:
                errors.append(f"{self.path(i)} ({type(e).__name__}: {e})")
        raise ValueError(
            f"none of the {len(idx)} sampled images under {self.root} could be read, e.g. {errors[0]}; "
            "the folder holds no readable images"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, y = self.read(index)
        return self.transform(image), torch.tensor(y, dtype=torch.int64)


def folder_content_hash(root: str | os.PathLike, files: Sequence[Path] | None = None) -> str:
    """sha256 over the relative path and bytes of every image under `root` (changes with any content)."""
    import hashlib

    root = Path(root).expanduser()
    files = find_images(root, "reference") if files is None else files
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_folder_images(
    root: str | os.PathLike, image_size: int, *, channels: int = 3, labels: str | None = "folder"
) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Every image under `root`, decoded with ADM's deterministic preprocessing (BOX halvings, BICUBIC resize
    of the short side, centre crop): the images a reference batch is made of.

    Args:
        channels: 3 (RGB) or 1 (grey).
        labels: "folder" / "filename" (see the module doc) when the images lie in class folders; None: no
            labels. With "folder", images directly in `root` (no class folders) give no labels.
    Returns:
        uint8 (N, image_size, image_size, channels); int64 (N,) labels or None; sorted class names or None.
    Raises:
        FileNotFoundError / ValueError: no folder, no images, an unreadable image (named).
    """
    from adm.data.transforms import resize_center_crop

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    root = Path(root).expanduser()
    files = find_images(root, "reference")
    if labels == "folder" and any(len(f.relative_to(root).parts) < 2 for f in files):
        labels = None  # a flat folder: an unlabelled reference
    label_list, names = folder_labels(root, files, labels) if labels is not None else (None, None)
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            image = load_image(f).convert("RGB" if channels == 3 else "L")
        except Exception as err:  # noqa: BLE001 - any decoding failure is reported with the file
            raise ValueError(f"cannot read image {f}: {err}; remove or replace the file") from None
        arr = resize_center_crop(image, image_size)
        out[i] = arr if channels == 3 else arr[..., None]
    return out, (np.asarray(label_list, dtype=np.int64) if label_list is not None else None), names
