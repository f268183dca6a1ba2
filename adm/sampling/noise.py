"""Per-sample noise: every sample owns a random generator, so sample i never depends on the batch it is in.

With ``PerSampleNoise(seeds)`` the noise of sample i is drawn from ``torch.Generator().manual_seed(seeds[i])``
on the CPU and then moved to the target device. Sampling the same seeds with batch size 1 or 64, on one GPU
or split over eight, gives the same images. Sample number n of a run seeded ``seed`` gets
``sample_seed(seed, n)``; each device takes its slice of the seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

__all__ = ["PerSampleNoise", "randn_like", "sample_seed"]

_SEED_BITS = 32


def sample_seed(seed: int, index: int) -> int:
    """The noise seed of sample `index` in a run seeded `seed`: ``seed * 2**32 + index``.

    Every entry point (``ADM.infer``, ``scripts/sample.py``, the demo) uses it, so one seed gives the same
    images everywhere, and runs with different seeds never share a sample (seed s + 1 is not seed s shifted
    by one).
    """
    if not 0 <= index < 2**_SEED_BITS:
        raise ValueError(f"sample index must be in [0, 2**32), got {index}")
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    return (int(seed) << _SEED_BITS) + int(index)


def randn_like(x: torch.Tensor) -> torch.Tensor:
    """Default noise source: ``torch.randn_like`` from the global generator (looked up at call time)."""
    return torch.randn_like(x)


class PerSampleNoise:
    """Noise source with one CPU ``torch.Generator`` per sample.

    Args:
        seeds: one integer seed per sample of the batch (a list, range or 1-D tensor).
    """

    def __init__(self, seeds: Iterable[int] | torch.Tensor) -> None:
        if isinstance(seeds, torch.Tensor):
            seeds = seeds.flatten().tolist()
        self.seeds: list[int] = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("PerSampleNoise needs at least one seed (one per sample)")
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]

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
