"""Every file-format concern of the package, below the numerical code (it imports none of it).

- :mod:`adm.io.files`: all-or-nothing writes (``atomic_write`` and its bytes / text / JSON / ``torch.save``
  conveniences) and ``file_sha256``;
- :mod:`adm.io.images`: the two image layouts (uint8 (N, H, W, C) and float (N, C, H, W) in [-1, 1]) and
  quantisation between them;
- :mod:`adm.io.npz`: sample files in OpenAI's ``.npz`` format (headers, reading and writing);
- :mod:`adm.io.shards`: sharded sample runs and merging their shards into one sample file;
- :mod:`adm.io.grid`: image grids with optional captions;
- :mod:`adm.io.safe_load`: reading ``torch.save`` files without unpickling arbitrary objects;
- :mod:`adm.io.checkpoint`: self-describing training checkpoints.
"""

from adm.io.files import (
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
)
from adm.io.safe_load import safe_torch_load

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "safe_torch_load",
]
