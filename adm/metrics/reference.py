"""Reference batches: the sample files scores are measured against.

A reference batch is a sample file (:mod:`adm.io.npz`) or a folder of shards that may also (or only) carry
precomputed Inception statistics: ``mu`` (2048,), ``sigma`` (2048, 2048) of pool_3 and ``mu_s`` (2023,),
``sigma_s`` (2023, 2023) of the spatial features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adm.io.npz import IMAGES_EXPECTED, NpzImages, npz_header, npz_members, open_samples

__all__ = [
    "REFERENCE_STATS",
    "ReferenceBatch",
    "load_reference",
]

PathLike = str | os.PathLike
# Precomputed statistics in reference batches: key -> (feature kind, expected shape).
REFERENCE_STATS = {
    "mu": ("pool", (2048,)),
    "sigma": ("pool", (2048, 2048)),
    "mu_s": ("spatial", (2023,)),
    "sigma_s": ("spatial", (2023, 2023)),
}


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
