"""Every file-format concern of the package, below the numerical code (it imports none of it).

- :mod:`adm.io.files`: all-or-nothing writes (``atomic_write`` and its bytes / text / JSON / ``torch.save``
  conveniences) and ``file_sha256``;
- :mod:`adm.io.samples`: sample files in OpenAI's ``.npz`` format (quantisation, reading and writing,
  sharded runs, reference batches, grids);
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
