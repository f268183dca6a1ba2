"""Reading ``torch.save`` files without executing anything they contain."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["safe_torch_load", "safe_torch_load_with_sha256"]


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with clear errors.

    Only tensors and plain containers/numbers/strings are reconstructed; a pickle asking for any other
    global (a class, a function such as ``os.system``) is refused before anything is called.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file needs arbitrary objects to unpickle, or it is truncated / corrupt / not a
            ``torch.save`` file.
    """
    p = _existing(path)
    return _load(p, p, map_location)


def safe_torch_load_with_sha256(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Any, str]:
    """:func:`safe_torch_load` and the hex SHA-256 of the file's bytes, from one read of the file.

    The bytes are hashed and unpickled from memory (for a moment the file's size twice), so a weights file of
    a few GB is read from disk once, not once to identify it and once to load it.
    """
    p = _existing(path)
    data = p.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    buffer = io.BytesIO(data)
    del data
    return _load(buffer, p, map_location), digest


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    return p


def _load(source: Path | io.BytesIO, p: Path, map_location: Any) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        lines = [line.strip() for line in msg.splitlines() if line.strip()]
        if "GLOBAL" in msg:
            detail = next(line for line in lines if "GLOBAL" in line)
            raise ValueError(
                f"refusing to unpickle arbitrary objects from {p}: the file needs Python objects beyond "
                f"tensors and plain containers ({detail}). Nothing was executed. Re-save the weights as a "
                "plain dict of tensors (e.g. torch.save(model.state_dict(), path)), or allow-list the exact "
                "classes you trust with torch.serialization.add_safe_globals."
            ) from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise ValueError(
            f"{p} cannot be read safely (corrupt, or a pickle outside the weights-only subset: {detail}); "
            "nothing was executed and arbitrary objects are never unpickled"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{p} is not a readable torch checkpoint (truncated, corrupt or not from torch.save): {first}"
        ) from None
