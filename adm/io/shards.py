"""Sharded sample runs: a run writes its samples as shards (:class:`ShardStore`), possibly from several
processes, and :func:`merge_shards` streams them into one sample file (:mod:`adm.io.npz`).

A run's folder holds ``sample_info.json`` (:data:`INFO_FILE`: the run's settings; samples made with other
settings are refused), ``shards/shard_*.npz`` and, once merged, ``samples_{N}x{H}x{W}x{C}.npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adm.io.files import atomic_write, atomic_write_json
from adm.io.npz import read_npy_header

__all__ = [
    "INFO_FILE",
    "SHARD_DIR",
    "ShardLayout",
    "ShardStore",
    "merge_shards",
]

PathLike = str | os.PathLike
INFO_FILE = "sample_info.json"
SHARD_DIR = "shards"


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
