"""Writing files all-or-nothing, and identifying them by content.

Every file the package writes for later use (checkpoints, sample shards and sets, metrics, converted weights)
goes through :func:`atomic_write`: the bytes go to a temporary file in the target's folder, are flushed to
disk, and the temporary file is renamed onto the target. A crash or kill at any moment leaves either the old
file or the new one, never a partial one, and a failed write leaves no temporary file behind.

    >>> atomic_write_json("out/metrics.json", {"fid": 2.07})
    >>> with atomic_write("out/samples.npz") as f:
    ...     np.savez(f, arr_0=images)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a binary file that replaces `path` only when the ``with`` block ends without an exception.

    The data go to a temporary file ``.{name}.*.tmp`` in the same folder (so the final rename never crosses
    file systems), which is flushed and fsynced, given the usual permissions (``0o666`` minus the umask) and
    moved onto `path` with ``os.replace``; the folder is then fsynced so the rename itself survives a power
    loss. If the block raises (or the process is interrupted), the temporary file is removed, `path` keeps its
    old content, and the exception propagates. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes private 0600 files
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (see :func:`atomic_write`). Returns the path."""
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically. Returns the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike, obj: Any, *, default: Callable[[Any], Any] | None = None
) -> Path:
    """Write `obj` as indented JSON (2 spaces, trailing newline) to `path` atomically. Returns the path.

    `default` is passed to ``json.dumps`` (e.g. ``str`` for values that are not JSON types); without it
    such values raise ``TypeError`` before anything is written.
    """
    return atomic_write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to `path` atomically: a reader sees the old file or the new one, never a part."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (identifies a checkpoint or sample file wherever it is copied to)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or fsynced
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
