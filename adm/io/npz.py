"""Sample files in OpenAI's format: ``.npz`` headers, reading and writing.

A sample file is an uncompressed `.npz` (what ``np.savez`` writes) holding

- ``arr_0``: uint8 images (N, H, W, C), C in {1, 3} (grey sets may also come as (N, H, W));
- ``arr_1``: optional int labels (N,) (we write int64);

so OpenAI's evaluator and every downstream tool read ours. Large sets are read batch by batch straight out of
the zip member (:class:`NpzImages`); a folder of shards (:mod:`adm.io.shards`) reads as one set.

    >>> save_npz("samples_16x64x64x3.npz", x_0, labels)       # float (16, 3, 64, 64) in [-1, 1], (16,)
    >>> source = open_samples("samples_16x64x64x3.npz")       # headers checked, nothing read yet
    >>> for images, labels in source.batches(256): ...         # uint8 (B, 64, 64, 3), int64 (B,)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from adm.io.files import atomic_write
from adm.io.images import ImageBatch, as_uint8_nchw

__all__ = [
    "IMAGES_EXPECTED",
    "BaseSamples",
    "NpzImages",
    "npz_header",
    "npz_members",
    "open_samples",
    "read_images",
    "read_npy_header",
    "sample_files",
    "save_npz",
    "write_arrays",
    "write_pngs",
]

PathLike = str | os.PathLike
IMAGES_EXPECTED = "uint8 images of shape (N, H, W, C) with C in {1, 3}, or (N, H, W)"


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


# --- sample sets -------------------------------------------------------------------------------------------
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
