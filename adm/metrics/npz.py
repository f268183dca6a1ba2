"""Sample files and reference batches in OpenAI's `.npz` format, read batch by batch.

Sample files: `arr_0` uint8 images (N, H, W, C), C in {1, 3} (or (N, H, W)); optional `arr_1` int labels (N,).
Large sets come as shards (a list of files or a folder of `*.npz`). Images are streamed straight out of the
zip member, so a 50k x 256 x 256 set never sits in memory at once.
Reference batches may also (or only) carry precomputed Inception statistics: `mu` (2048,), `sigma`
(2048, 2048) of pool_3 and `mu_s` (2023,), `sigma_s` (2023, 2023) of the spatial features.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adm.metrics.images import ImageBatch, as_uint8_nchw

IMAGES_EXPECTED = "uint8 images of shape (N, H, W, C) with C in {1, 3}, or (N, H, W)"
# Precomputed statistics in reference batches: key -> (feature kind, expected shape).
REFERENCE_STATS = {
    "mu": ("pool", (2048,)),
    "sigma": ("pool", (2048, 2048)),
    "mu_s": ("spatial", (2023,)),
    "sigma_s": ("spatial", (2023, 2023)),
}

PathLike = str | Path


def _members(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz archive (expected OpenAI's format: arr_0 images, arr_1 labels)"
        )
    with zipfile.ZipFile(path) as zf:
        return [name[: -len(".npy")] for name in zf.namelist() if name.endswith(".npy")]


def _read_header(fp) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of `key` in an .npz without reading its data."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as fp:
        shape, fortran, dtype = _read_header(fp)
    if fortran and len(shape) > 1:
        raise ValueError(f"{path}: '{key}' is stored in Fortran order; expected C order (save with np.savez)")
    return shape, dtype


@dataclass
class _Shard:
    path: Path
    shape: tuple[int, ...]  # (N, H, W, C)
    has_labels: bool


class NpzImages:
    """Images (and labels) of one or more `.npz` files, in file order. Headers are checked on construction.

    Iterate with `batches(batch_size)`; `len()` is the total image count; `image_shape` is (H, W, C).
    """

    def __init__(self, paths: Sequence[PathLike]) -> None:
        if not paths:
            raise ValueError("no sample files given")
        self.paths = [Path(p) for p in paths]
        self._shards = [self._inspect(path) for path in self.paths]
        shapes = {shard.shape[1:] for shard in self._shards}
        if len(shapes) > 1:
            raise ValueError(f"the shards hold images of different shapes (H, W, C): {sorted(shapes)}")
        self.image_shape: tuple[int, int, int] = shapes.pop()
        self.has_labels = all(shard.has_labels for shard in self._shards)

    @staticmethod
    def _inspect(path: Path) -> _Shard:
        members = _members(path)
        if "arr_0" not in members:
            raise ValueError(
                f"{path} has no 'arr_0' (keys: {members}); expected {IMAGES_EXPECTED} under 'arr_0'"
            )
        shape, dtype = _npz_header(path, "arr_0")
        if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise ValueError(
                f"{path}: 'arr_0' has shape {shape} and dtype {dtype}; expected {IMAGES_EXPECTED}"
            )
        if len(shape) == 3:
            shape = (*shape, 1)
        has_labels = "arr_1" in members
        if has_labels:
            label_shape, label_dtype = _npz_header(path, "arr_1")
            if label_shape != shape[:1] or not np.issubdtype(label_dtype, np.integer):
                raise ValueError(
                    f"{path}: 'arr_1' has shape {label_shape} and dtype {label_dtype}; "
                    f"expected integer labels of shape ({shape[0]},)"
                )
        return _Shard(path, shape, has_labels)

    def __len__(self) -> int:
        return sum(shard.shape[0] for shard in self._shards)

    def labels(self) -> np.ndarray | None:
        """All labels (N,) int64, or None when some shard has no 'arr_1'."""
        if not self.has_labels:
            return None
        parts = []
        for shard in self._shards:
            with np.load(shard.path) as data:
                parts.append(np.asarray(data["arr_1"], dtype=np.int64))
        return np.concatenate(parts)

    def batches(
        self, batch_size: int, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield (images (B, H, W, C) uint8, labels (B,) int64 | None), at most `limit` images in all.

        Batches do not straddle shards, so the last one of each shard may be shorter.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        remaining = len(self) if limit is None else min(limit, len(self))
        for shard in self._shards:
            if remaining <= 0:
                return
            count = min(shard.shape[0], remaining)
            labels = None
            if self.has_labels:
                with np.load(shard.path) as data:
                    labels = np.asarray(data["arr_1"][:count], dtype=np.int64)
            item_bytes = int(np.prod(shard.shape[1:]))
            with zipfile.ZipFile(shard.path) as zf, zf.open("arr_0.npy") as fp:
                _read_header(fp)
                for start in range(0, count, batch_size):
                    n = min(batch_size, count - start)
                    buffer = fp.read(n * item_bytes)
                    if len(buffer) != n * item_bytes:
                        raise ValueError(
                            f"{shard.path}: 'arr_0' is truncated (ends before image {start + n})"
                        )
                    images = np.frombuffer(buffer, dtype=np.uint8).reshape(n, *shard.shape[1:])
                    yield images, None if labels is None else labels[start : start + n]
            remaining -= count


def save_npz(path: PathLike, images: ImageBatch, labels: np.ndarray | torch.Tensor | None = None) -> Path:
    """Write images (uint8 (N, H, W, C), or float (N, C, H, W) in [-1, 1], quantised by `float_to_uint8`) and
    optional labels (N,) as OpenAI's `.npz` (`arr_0`, `arr_1`), atomically. Returns the path."""
    path = Path(path)
    arr_0 = as_uint8_nchw(images).permute(0, 2, 3, 1).cpu().numpy()
    arrays = {"arr_0": arr_0}
    if labels is not None:
        arr_1 = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if arr_1.shape != (len(arr_0),):
            raise ValueError(f"labels must be ({len(arr_0)},), got {arr_1.shape}")
        arrays["arr_1"] = arr_1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def sample_files(samples: PathLike | Sequence[PathLike]) -> list[Path]:
    """A file, a folder of `*.npz` shards (sorted by name) or a list of either -> the list of `.npz` files."""
    items = [samples] if isinstance(samples, str | Path) else list(samples)
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
    """`NpzImages` over a file, a folder of shards, or a list of them."""
    return NpzImages(sample_files(samples))


@dataclass
class ReferenceBatch:
    """A reference batch: its images (when it has `arr_0`) and any precomputed Inception statistics
    (`stats[kind] = (mu, sigma)` in float64, kind "pool" from mu/sigma, "spatial" from mu_s/sigma_s)."""

    path: Path
    images: NpzImages | None
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def load_reference(path: PathLike) -> ReferenceBatch:
    """Open a reference batch (an `.npz` in OpenAI's format, or a folder of sample shards) and check it.

    Raises ValueError naming the key, the shape / dtype found and what is expected when a key is malformed.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return ReferenceBatch(path, open_samples(path))
    members = _members(path)
    found = {key: _npz_header(path, key) for key in REFERENCE_STATS if key in members}
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
