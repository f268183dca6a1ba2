"""Sample files in OpenAI's format: quantisation, `.npz` reading and writing, shards, reference sets, grids.

A sample file is an uncompressed `.npz` (what ``np.savez`` writes) holding

- ``arr_0``: uint8 images (N, H, W, C), C in {1, 3} (grey sets may also come as (N, H, W));
- ``arr_1``: optional int labels (N,) (we write int64);

so OpenAI's evaluator and every downstream tool read ours. Reference batches are sample files that may also
(or only) carry precomputed Inception statistics: ``mu`` (2048,), ``sigma`` (2048, 2048) of pool_3 and
``mu_s`` (2023,), ``sigma_s`` (2023, 2023) of the spatial features.

Images exist in two layouts; these functions convert between them:

- the sample-file layout: uint8 (N, H, W, C), values 0..255;
- the model layout: float (N, C, H, W) in [-1, 1] (a sampler's x_0).

:func:`quantize` is the one float -> uint8 conversion (``((x + 1) * 127.5)`` clamped to [0, 255] and
truncated, as OpenAI's sampler writes its files), so images scored in memory and the files written from them
give identical numbers. Large sets are read batch by batch straight out of the zip member, and a sample run
is written as shards (:class:`ShardStore`) that :func:`merge_shards` streams into one file.

    >>> save_npz("samples_16x64x64x3.npz", x_0, labels)       # float (16, 3, 64, 64) in [-1, 1], (16,)
    >>> source = open_samples("samples_16x64x64x3.npz")       # headers checked, nothing read yet
    >>> for images, labels in source.batches(256): ...         # uint8 (B, 64, 64, 3), int64 (B,)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from adm.io.files import atomic_write, atomic_write_json

__all__ = [
    "IMAGES_EXPECTED",
    "INFO_FILE",
    "REFERENCE_STATS",
    "SHARD_DIR",
    "BaseSamples",
    "ImageBatch",
    "NpzImages",
    "ReferenceBatch",
    "ShardLayout",
    "ShardStore",
    "as_uint8_nchw",
    "by_class",
    "caption_strips",
    "from_uint8",
    "grid_image",
    "load_reference",
    "merge_shards",
    "npz_header",
    "npz_members",
    "open_samples",
    "quantize",
    "read_images",
    "read_npy_header",
    "sample_files",
    "save_grid",
    "save_npz",
    "to_uint8",
    "write_arrays",
    "write_pngs",
]

PathLike = str | os.PathLike
ImageBatch = np.ndarray | torch.Tensor
IMAGES_EXPECTED = "uint8 images of shape (N, H, W, C) with C in {1, 3}, or (N, H, W)"
# Precomputed statistics in reference batches: key -> (feature kind, expected shape).
REFERENCE_STATS = {
    "mu": ("pool", (2048,)),
    "sigma": ("pool", (2048, 2048)),
    "mu_s": ("spatial", (2023,)),
    "sigma_s": ("spatial", (2023, 2023)),
}
INFO_FILE = "sample_info.json"
SHARD_DIR = "shards"


# --- the two image layouts ---------------------------------------------------------------------------------
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


# --- .npy / .npz headers -----------------------------------------------------------------------------------
def read_npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read the header of an ``.npy`` stream (any format version), leaving `fp` at the first data byte.

    Returns (shape, fortran_order, dtype).
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(fp)
    raise ValueError(f".npy format version {version} is not supported (save with np.savez)")


def npz_members(path: Path) -> list[str]:
    """The array names in an ``.npz`` (``["arr_0", "arr_1"]``), checking it is one."""
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz archive (expected OpenAI's format: arr_0 images, arr_1 labels)"
        )
    with zipfile.ZipFile(path) as zf:
        return [name[: -len(".npy")] for name in zf.namelist() if name.endswith(".npy")]


def npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of `key` in an ``.npz`` without reading its data (C order required)."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fp:
        shape, fortran, dtype = read_npy_header(fp)
    if fortran and len(shape) > 1:
        raise ValueError(f"{path}: '{key}' is stored in Fortran order; expected C order (save with np.savez)")
    return shape, dtype


# --- sample files ------------------------------------------------------------------------------------------
def save_npz(path: PathLike, images: ImageBatch, labels: np.ndarray | torch.Tensor | None = None) -> Path:
    """Write a sample file atomically: ``arr_0`` images uint8 (N, H, W, C), ``arr_1`` int64 labels (N,).

    Args:
        path: the ``.npz`` to write (folders are created).
        images: uint8 (N, H, W, C) / (N, H, W), or float (N, C, H, W) in [-1, 1] (then quantised by
            :func:`quantize`).
        labels: (N,) ints, or None for an unlabelled set.
    Returns:
        `path`.
    """
    path = Path(path)
    arr_0 = as_uint8_nchw(images).permute(0, 2, 3, 1).cpu().numpy()
    arrays = {"arr_0": arr_0}
    if labels is not None:
        arr_1 = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if arr_1.shape != (len(arr_0),):
            raise ValueError(f"labels must be ({len(arr_0)},), got {arr_1.shape}")
        arrays["arr_1"] = arr_1
    return write_arrays(path, arrays)


def write_arrays(path: PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays as an uncompressed ``.npz`` (``np.savez``), atomically; folders are created."""
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def read_images(path: PathLike, limit: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` images (uint8 (n, H, W, C)) and labels (int64 (n,) or None) of a sample file.

    Only those images' bytes are read, so peeking at a 50k-image file is cheap.
    """
    source = NpzImages([path])
    n = min(int(limit), len(source))
    if n <= 0:
        empty = np.zeros((0, *source.image_shape), dtype=np.uint8)
        return empty, np.zeros(0, dtype=np.int64) if source.has_labels else None
    return next(source.batches(n, limit=n))


def write_pngs(folder: PathLike, indices: range, images: np.ndarray, labels: np.ndarray | None) -> None:
    """One PNG per image: ``{index:06d}.png``, or ``{index:06d}_y{label}.png`` for labelled samples.

    Args:
        folder: where to write (created).
        indices: the sample indices of `images` (consecutive).
        images: uint8 (n, H, W, C), C in {1, 3} (grey images become 8-bit grey PNGs).
        labels: (n,) or None.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (i, image) in enumerate(zip(indices, images)):
        name = f"{i:06d}" + (f"_y{int(labels[offset])}" if labels is not None else "")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{name}.png")


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


class BaseSamples:
    """Images to upsample, in the sample-file layout: ``images`` uint8 (N, h, w, C), ``labels`` int64 (N,).

    ``base(indices)`` returns those images and labels; ``base.labels(indices)`` the labels alone (None when
    there are none), which is what finished shards are checked against. :meth:`load` reads a sample file.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, *, source: str = "arrays") -> None:
        self.source = source
        self.images = np.asarray(images)
        self.label_array = None if labels is None else np.asarray(labels).astype(np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{source}: base images must be uint8 (N, h, w, 1 or 3) as in OpenAI's sample files, got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.label_array is not None and self.label_array.shape != (len(self.images),):
            raise ValueError(
                f"{source}: need one label per image, got labels of shape {self.label_array.shape}"
            )

    @classmethod
    def load(cls, path: PathLike) -> BaseSamples:
        """Read ``arr_0`` (images) and, if present, ``arr_1`` (labels) of an ``.npz`` sample file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"base samples not found: {path} (an .npz with arr_0 images, arr_1 labels)"
            )
        source = NpzImages([path])
        images, _ = read_images(path, len(source))
        return cls(images, source.labels(), source=str(path))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the base images."""
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]

    def _check(self, indices: range) -> None:
        if indices.stop > len(self.images):
            raise ValueError(f"asked for base sample {indices.stop - 1}, but {self.source} holds {len(self)}")

    def labels(self, indices: range) -> np.ndarray | None:
        self._check(indices)
        return None if self.label_array is None else self.label_array[indices.start : indices.stop]

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        self._check(indices)
        return self.images[indices.start : indices.stop], self.labels(indices)


# --- sample sets and reference batches ---------------------------------------------------------------------
@dataclass
class _Part:
    path: Path
    shape: tuple[int, ...]  # (N, H, W, C)
    has_labels: bool


class NpzImages:
    """Images (and labels) of one or more sample files, in file order. Headers are checked on construction.

    Iterate with ``batches(batch_size)``; ``len()`` is the total image count; ``image_shape`` is (H, W, C).
    """

    def __init__(self, paths: Sequence[PathLike]) -> None:
        if not paths:
            raise ValueError("no sample files given")
        self.paths = [Path(p) for p in paths]
        self._parts = [self._inspect(path) for path in self.paths]
        shapes = {part.shape[1:] for part in self._parts}
        if len(shapes) > 1:
            raise ValueError(f"the shards hold images of different shapes (H, W, C): {sorted(shapes)}")
        self.image_shape: tuple[int, int, int] = shapes.pop()
        self.has_labels = all(part.has_labels for part in self._parts)

    @staticmethod
    def _inspect(path: Path) -> _Part:
        members = npz_members(path)
        if "arr_0" not in members:
            raise ValueError(
                f"{path} has no 'arr_0' (keys: {members}); expected {IMAGES_EXPECTED} under 'arr_0'"
            )
        shape, dtype = npz_header(path, "arr_0")
        if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise ValueError(
                f"{path}: 'arr_0' has shape {shape} and dtype {dtype}; expected {IMAGES_EXPECTED}"
            )
        if len(shape) == 3:
            shape = (*shape, 1)
        has_labels = "arr_1" in members
        if has_labels:
            label_shape, label_dtype = npz_header(path, "arr_1")
            if label_shape != shape[:1] or not np.issubdtype(label_dtype, np.integer):
                raise ValueError(
                    f"{path}: 'arr_1' has shape {label_shape} and dtype {label_dtype}; "
                    f"expected integer labels of shape ({shape[0]},)"
                )
        return _Part(path, shape, has_labels)

    def __len__(self) -> int:
        return sum(part.shape[0] for part in self._parts)

    def labels(self) -> np.ndarray | None:
        """All labels (N,) int64, or None when some file has no 'arr_1'."""
        if not self.has_labels:
            return None
        parts = []
        for part in self._parts:
            with np.load(part.path) as data:
                parts.append(np.asarray(data["arr_1"], dtype=np.int64))
        return np.concatenate(parts)

    def batches(
        self, batch_size: int, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (images (B, H, W, C) uint8, labels (B,) int64 | None), at most `limit` images in all.

        Batches do not straddle files, so the last one of each file may be shorter.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        remaining = len(self) if limit is None else min(limit, len(self))
        for part in self._parts:
            if remaining <= 0:
                return
            count = min(part.shape[0], remaining)
            labels = None
            if self.has_labels:
                with np.load(part.path) as data:
                    labels = np.asarray(data["arr_1"][:count], dtype=np.int64)
            item_bytes = int(np.prod(part.shape[1:]))
            with zipfile.ZipFile(part.path) as zf, zf.open("arr_0.npy") as fp:
                read_npy_header(fp)
                for start in range(0, count, batch_size):
                    n = min(batch_size, count - start)
                    buffer = fp.read(n * item_bytes)
                    if len(buffer) != n * item_bytes:
                        raise ValueError(f"{part.path}: 'arr_0' is truncated (ends before image {start + n})")
                    images = np.frombuffer(buffer, dtype=np.uint8).reshape(n, *part.shape[1:])
                    yield images, None if labels is None else labels[start : start + n]
            remaining -= count


def sample_files(samples: PathLike | Sequence[PathLike]) -> list[Path]:
    """A file, a folder of ``*.npz`` shards (sorted by name) or a list of either -> the list of files."""
    items = [samples] if isinstance(samples, str | os.PathLike) else list(samples)
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            shards = sorted(path.glob("*.npz"))
            if not shards:
                raise FileNotFoundError(f"no .npz files in folder {path}")
            files.extend(shards)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such sample file or folder: {path}")
    return files


def open_samples(samples: PathLike | Sequence[PathLike]) -> NpzImages:
    """:class:`NpzImages` over a file, a folder of shards, or a list of them."""
    return NpzImages(sample_files(samples))


@dataclass
class ReferenceBatch:
    """A reference batch: its images (when it has ``arr_0``) and any precomputed Inception statistics
    (``stats[kind] = (mu, sigma)`` in float64, kind "pool" from mu/sigma, "spatial" from mu_s/sigma_s)."""

    path: Path
    images: NpzImages | None
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def load_reference(path: PathLike) -> ReferenceBatch:
    """Open a reference batch (an ``.npz`` in OpenAI's format, or a folder of sample shards) and check it.

    Raises ValueError naming the key, the shape / dtype found and what is expected when a key is malformed.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return ReferenceBatch(path, open_samples(path))
    members = npz_members(path)
    found = {key: npz_header(path, key) for key in REFERENCE_STATS if key in members}
    for key, (shape, dtype) in found.items():
        expected = REFERENCE_STATS[key][1]
        if shape != expected or not np.issubdtype(dtype, np.floating):
            raise ValueError(
                f"{path}: '{key}' has shape {shape} and dtype {dtype}; "
                f"expected a float array of shape {expected}"
            )
    stats = {}
    for mu_key, sigma_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
        if (mu_key in found) != (sigma_key in found):
            present, absent = (mu_key, sigma_key) if mu_key in found else (sigma_key, mu_key)
            raise ValueError(
                f"{path}: has '{present}' but not '{absent}'; precomputed statistics come in pairs"
            )
        if mu_key in found:
            with np.load(path) as data:
                kind = REFERENCE_STATS[mu_key][0]
                stats[kind] = (data[mu_key].astype(np.float64), data[sigma_key].astype(np.float64))
    images = NpzImages([path]) if "arr_0" in members else None
    if images is None and not stats:
        raise ValueError(
            f"{path} has neither 'arr_0' ({IMAGES_EXPECTED}) nor precomputed 'mu'/'sigma' statistics "
            f"(keys: {members})"
        )
    return ReferenceBatch(path, images, stats)


# --- sharded sample runs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardLayout:
    """``num_samples`` samples in shards of ``shard_size`` consecutive ones (the last may be shorter)."""

    num_samples: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.shard_size < 1:
            raise ValueError(
                f"num_samples and shard_size must be >= 1, got {self.num_samples} and {self.shard_size}"
            )

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def indices(self, shard: int) -> range:
        """Sample indices of shard `shard`."""
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_samples))

    def shards_of(self, rank: int, world_size: int) -> list[int]:
        """The shards rank `rank` of `world_size` generates: k with k % world_size == rank."""
        return list(range(rank, self.num_shards, world_size))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class ShardStore:
    """The files of one sample run in `out_dir`: ``sample_info.json``, ``shards/shard_*.npz``, merged file.

    Shard k holds samples ``layout.indices(k)``: ``arr_0`` uint8 (n, H, W, C), ``arr_1`` int64 labels (n,)
    and ``fingerprint`` (a digest of the run's settings).

    Args:
        out_dir: the run's folder.
        fingerprint: plain dict of every setting that changes the images (model and classifier hashes,
            sampler, guidance scale, labels, seed, shard size, ...). Shards of other settings are refused.
        layout: how samples are cut into shards.
        image_shape: (H, W, C).
        with_labels: write ``arr_1`` labels.
        info: extra plain values recorded in ``sample_info.json`` but not compared (paths, device count, ...).
    """

    def __init__(
        self,
        out_dir: PathLike,
        *,
        fingerprint: dict[str, Any],
        layout: ShardLayout,
        image_shape: tuple[int, int, int],
        with_labels: bool,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.fingerprint = json.loads(_canonical(fingerprint))
        self.digest = hashlib.sha256(_canonical(self.fingerprint).encode()).hexdigest()[:16]
        self.layout = layout
        self.image_shape = tuple(int(v) for v in image_shape)
        self.with_labels = with_labels
        self.info = dict(info or {})

    @property
    def shard_dir(self) -> Path:
        return self.out_dir / SHARD_DIR

    @property
    def merged_path(self) -> Path:
        """OpenAI's name for a sample file: ``samples_{N}x{H}x{W}x{C}.npz``."""
        h, w, c = self.image_shape
        return self.out_dir / f"samples_{self.layout.num_samples}x{h}x{w}x{c}.npz"

    def shard_path(self, shard: int) -> Path:
        return self.shard_dir / f"shard_{shard:06d}.npz"

    # -- settings ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder and record the settings; refuse a folder holding samples of other settings.

        Settings recorded by a run that wrote no sample (it stopped before drawing) are simply replaced.

        Raises:
            ValueError: ``sample_info.json`` in `out_dir` records other settings (the differences are listed)
                and samples made with them are there.
        """
        info_path = self.out_dir / INFO_FILE
        if info_path.is_file():
            try:
                old = json.loads(info_path.read_text())["fingerprint"]
            except (ValueError, KeyError) as err:
                raise ValueError(
                    f"{info_path} is unreadable ({err}); delete it (and {self.shard_dir}) or pick a new "
                    "output folder"
                ) from None
            holds_samples = any(self.out_dir.glob("samples_*.npz")) or (
                self.shard_dir.is_dir() and any(self.shard_dir.glob("shard_*.npz"))
            )
            if old != self.fingerprint and holds_samples:
                raise ValueError(
                    f"{self.out_dir} holds samples made with other settings "
                    f"({_differences(old, self.fingerprint)}); sample into a new folder (another "
                    "hydra.run.dir / out_dir) or delete the old samples first"
                )
        elif self.shard_dir.is_dir() and any(self.shard_dir.glob("shard_*.npz")):
            raise ValueError(
                f"{self.shard_dir} holds shards but {info_path} is missing, so their settings are unknown; "
                "delete the shards or sample into a new folder"
            )
        record = {
            "fingerprint": self.fingerprint,
            "digest": self.digest,
            "num_samples": self.layout.num_samples,
            "image_shape": list(self.image_shape),
            **self.info,
        }
        atomic_write_json(info_path, record, default=str)

    # -- shards --------------------------------------------------------------------------------------------
    def expected_labels(
        self, shard: int, labels: Callable[[range], np.ndarray | None] | None
    ) -> np.ndarray | None:
        """The labels shard `shard` must hold: ``labels(indices)``, or None when the run has none."""
        return labels(self.layout.indices(shard)) if labels is not None and self.with_labels else None

    def check_shard(self, shard: int, expected_labels: np.ndarray | None) -> str | None:
        """None when shard `shard` is complete and valid, else why it must be (re)generated."""
        path = self.shard_path(shard)
        if not path.is_file():
            return "missing"
        count = len(self.layout.indices(shard))
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["fingerprint"]) != self.digest:
                    raise _SettingsMismatch(path)
                images = data["arr_0"]
                expected = (count, *self.image_shape)
                if images.dtype != np.uint8 or images.shape != expected:
                    return f"holds {images.dtype} images of shape {images.shape}, expected uint8 {expected}"
                if expected_labels is not None and (
                    "arr_1" not in data or not np.array_equal(data["arr_1"], expected_labels)
                ):
                    return "its labels differ from the run's labels"
        except _SettingsMismatch:
            raise ValueError(
                f"{path} was made with other settings than this run; sample into a new folder or delete it"
            ) from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return f"unreadable ({type(err).__name__}: {err})"
        return None

    def write_shard(self, shard: int, images: np.ndarray, labels: np.ndarray | None) -> Path:
        """Write shard `shard` atomically: arr_0 images (n, H, W, C) uint8, arr_1 labels, the fingerprint."""
        arrays: dict[str, np.ndarray] = {"arr_0": images}
        if labels is not None and self.with_labels:
            arrays["arr_1"] = labels
        arrays["fingerprint"] = np.array(self.digest)
        path = self.shard_path(shard)
        with atomic_write(path) as f:
            np.savez(f, **arrays)
        return path

    def shard_paths(self) -> list[Path]:
        return [self.shard_path(k) for k in range(self.layout.num_shards)]


class _SettingsMismatch(Exception):
    pass


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            if inner:
                changes.append(inner)
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes)


def merge_shards(store: ShardStore, *, delete_shards: bool = False, chunk_images: int = 1024) -> Path:
    """Stream every shard into ``store.merged_path`` (``arr_0`` uint8 (N, H, W, C), ``arr_1`` int64 (N,)).

    Written as an uncompressed zip like ``np.savez`` (``np.load`` and OpenAI's evaluator read it), atomically,
    ``chunk_images`` images at a time: the set is never in memory at once.
    """
    paths = store.shard_paths()
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot merge: {len(missing)} shard(s) missing, e.g. {missing[0]}")
    n = store.layout.num_samples
    item = int(np.prod(store.image_shape))
    with (
        atomic_write(store.merged_path) as f,
        zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
    ):
        with zf.open("arr_0.npy", "w", force_zip64=True) as out:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": (n, *store.image_shape),
            }
            np.lib.format.write_array_header_1_0(out, header)
            for path in paths:
                with zipfile.ZipFile(path) as shard, shard.open("arr_0.npy") as fp:
                    shape, _, _ = read_npy_header(fp)
                    remaining = int(np.prod(shape))
                    while remaining:
                        block = fp.read(min(remaining, chunk_images * item))
                        if not block:
                            raise ValueError(f"{path}: 'arr_0' ends early (truncated shard)")
                        out.write(block)
                        remaining -= len(block)
        if store.with_labels:
            parts = []
            for path in paths:
                with np.load(path) as data:
                    parts.append(data["arr_1"])
            labels = np.concatenate(parts).astype(np.int64)
            with zf.open("arr_1.npy", "w", force_zip64=True) as out:
                np.lib.format.write_array(out, labels, allow_pickle=False)
    if delete_shards:
        for path in paths:
            path.unlink()
        with contextlib.suppress(OSError):
            store.shard_dir.rmdir()
    return store.merged_path
