"""Per-sample noise: every sample owns a random generator, so sample i never depends on the batch it is in.

With ``PerSampleNoise(seeds)`` the noise of sample i is drawn from its own CPU ``torch.Generator`` seeded
from ``seeds[i]`` (:func:`generator_seed`) and then moved to the target device. Sampling the same seeds with
batch size 1 or 64, on one GPU or split over eight, gives the same images. Sample number n of a run seeded
``seed`` gets ``sample_seed(seed, n)``; each device takes its slice of the seeds. The upsampling stage of
sample n (ADM-U) draws from its own seed, ``upsample_seed(seed, n)``. These two are the only seed rules of
the project.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

__all__ = ["PerSampleNoise", "generator_seed", "randn_like", "sample_seed", "upsample_seed"]

_SEED_BITS = 32
_LOW = (1 << _SEED_BITS) - 1
# Odd, 2**32 / golden ratio: multiples of it spread far apart mod 2**32 (a Weyl sequence), so the high
# halves of seeds land far from each other's low halves.
_FOLD = 0x9E3779B9


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of sample `index` in a run seeded `seed`: ``seed * 2**32 + index``.

    Every entry point (``ADM.infer``, ``scripts/sample.py``, the demo, the training callbacks) uses it, so one
    seed gives the same images everywhere. Samples of one run never share noise, and neither do samples of
    runs seeded below 1000 that draw fewer than 1.9 million images each (see :func:`generator_seed`).
    """
    if not 0 <= index < 2**_SEED_BITS:
        raise ValueError(f"sample index must be in [0, 2**32), got {index}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return (int(seed) << _SEED_BITS) + int(index)


def upsample_seed(seed: int, index: int) -> int:
    """Noise seed of sample `index`'s upsampling stage in a run seeded `seed` (a 63-bit hash of both).

    Independent of the base stage's ``sample_seed(seed, index)`` and of every other sample's seeds, so the
    upsampler's noise does not repeat the noise the base image was drawn from.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    digest = hashlib.sha256(f"adm-upsample:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Default noise source: ``torch.randn_like`` from the global generator (looked up at call time)."""
    return torch.randn_like(x)


def generator_seed(seed: int) -> int:
    """The seed a CPU ``torch.Generator`` is given for a noise seed of up to 64 bits (32 bits).

    torch's CPU generator (mt19937) keeps only the low 32 bits of its seed, so ``sample_seed(s, i)`` for
    every run seed s would otherwise give sample i the same noise. The high half is folded in:
    ``(low + high * 0x9E3779B9) mod 2**32``; seeds below 2**32 are used as they are. Seeds of one run
    (same high half) never collide; seeds of two runs s != s' collide only if their indices differ by
    ``(s' - s) * 0x9E3779B9 mod 2**32``, more than 1.9 million for any two run seeds below 1000.
    """
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"noise seeds must be in [0, 2**64), got {seed}")
    return ((seed & _LOW) + (seed >> _SEED_BITS) * _FOLD) & _LOW


class PerSampleNoise:
    """Noise source with one CPU ``torch.Generator`` per sample.

    Args:
        seeds: one integer seed in [0, 2**64) per sample of the batch (a list, range or 1-D tensor), e.g.
            ``sample_seed(seed, i)``; each generator starts from :func:`generator_seed` of it.
    """

    def __init__(self, seeds: Iterable[int] | torch.Tensor) -> None:
        if isinstance(seeds, torch.Tensor):
            seeds = seeds.flatten().tolist()
        self.seeds: list[int] = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("PerSampleNoise needs at least one seed (one per sample)")
        self.generators = [torch.Generator(device="cpu").manual_seed(generator_seed(s)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def __repr__(self) -> str:
        return f"PerSampleNoise(seeds={self.seeds})"

    def _draw(self, shape: Sequence[int], device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
        draws = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def initial(
        self, shape: Sequence[int], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """x_T ~ N(0, I) of shape (len(seeds), *shape); ``shape`` has no batch dimension, e.g. (3, 64, 64)."""
        return self._draw(shape, device, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Fresh N(0, I) noise shaped like ``x`` (B, ...), B == len(seeds)."""
        if x.shape[0] != len(self.seeds):
            raise ValueError(
                f"PerSampleNoise holds {len(self.seeds)} seeds but the batch has {x.shape[0]} samples; "
                "build it with one seed per sample"
            )
        return self._draw(x.shape[1:], x.device, x.dtype)
