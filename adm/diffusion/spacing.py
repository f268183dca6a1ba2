"""Which of the original timesteps a respaced (shorter) process keeps.

A :class:`Spacing` is a count plus a method::

    Spacing.even(250)           # 250 steps spread evenly over [0, T-1], first and last kept
    Spacing.strided(25)         # 0, 40, ..., 960 for T = 1000: the integer stride that gives exactly 25
    Spacing.sections(10, 5, 3)  # T split into 3 equal sections with 10, 5 and 3 steps spread over each

Configs write it as two options, ``steps: 25`` and ``spacing: strided`` (``steps: [10, 5, 3]`` with
``spacing: sections``). OpenAI's strings (``"250"``, ``"ddim25"``, ``"10,5,3"``) are read by ``adm.compat``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from adm.diffusion.types import choose

__all__ = ["Spacing", "SpacingMethod"]


class SpacingMethod(str, enum.Enum):
    """How a respaced process picks its timesteps from the original ``T``."""

    EVEN = "even"  # N steps spread evenly over [0, T-1] (first and last always kept)
    STRIDED = "strided"  # every k-th step from 0, k the integer stride giving exactly N (DDIM's "uniform")
    SECTIONS = "sections"  # [0, T) cut into len(counts) equal sections, counts[i] spread evenly over each


@dataclass(frozen=True)
class Spacing:
    """A respacing of a diffusion process: ``counts`` steps picked by ``method``.

    ``counts`` holds one count for EVEN and STRIDED, one count per section for SECTIONS.
    """

    counts: tuple[int, ...]
    method: SpacingMethod = SpacingMethod.EVEN

    def __post_init__(self) -> None:
        method = choose(SpacingMethod, self.method, "spacing")
        object.__setattr__(self, "method", method)
        counts = self.counts if isinstance(self.counts, tuple) else (self.counts,)
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
            raise ValueError(f"steps must be whole numbers of steps, got {self.counts!r}")
        if any(c < 1 for c in counts):
            raise ValueError(
                f"every section of the spacing needs at least one step, got steps={list(counts)}"
            )
        if method != SpacingMethod.SECTIONS and len(counts) != 1:
            raise ValueError(
                f"steps={list(counts)} are per-section counts: use spacing='sections' (or one count with "
                f"spacing='{method.value}')"
            )
        object.__setattr__(self, "counts", counts)

    # ------------------------------------------------------------------ construction
    @classmethod
    def even(cls, steps: int) -> Spacing:
        """``steps`` timesteps spread evenly over [0, T-1] (OpenAI's ``timestep_respacing="N"``)."""
        return cls((steps,), SpacingMethod.EVEN)

    @classmethod
    def strided(cls, steps: int) -> Spacing:
        """0, k, 2k, ... with the integer stride k that gives exactly ``steps`` (OpenAI's ``"ddimN"``)."""
        return cls((steps,), SpacingMethod.STRIDED)

    @classmethod
    def sections(cls, *counts: int) -> Spacing:
        """Equal sections of [0, T) with ``counts[i]`` steps spread evenly over section i (``"a,b,c"``)."""
        return cls(tuple(counts), SpacingMethod.SECTIONS)

    @classmethod
    def of(
        cls,
        steps: int | Sequence[int] | Spacing | None,
        spacing: SpacingMethod | str | None = None,
    ) -> Spacing | None:
        """The spacing the samplers' ``steps`` / ``spacing`` options ask for (None: keep every step).

        ``steps`` is a count (or per-section counts, or a ready :class:`Spacing`); ``spacing`` the method,
        EVEN when not given.
        """
        if steps is None:
            if spacing is not None:
                raise ValueError(f"spacing={_name(spacing)!r} needs a number of steps (steps=N)")
            return None
        if isinstance(steps, Spacing):
            if spacing is not None and choose(SpacingMethod, spacing, "spacing") != steps.method:
                raise ValueError(
                    f"steps={steps} already says how its steps are spaced; drop spacing={_name(spacing)!r}"
                )
            return steps
        if isinstance(steps, str):
            raise ValueError(
                f"steps must be a number of steps, got the string {steps!r}: write OpenAI's 'ddimN' as "
                "steps=N spacing='strided', 'a,b,c' as steps=[a, b, c] spacing='sections' "
                "(adm.compat reads OpenAI's timestep_respacing strings)"
            )
        method = SpacingMethod.EVEN if spacing is None else choose(SpacingMethod, spacing, "spacing")
        if isinstance(steps, Sequence):
            return cls(tuple(steps), method)
        return cls((steps,), method)

    # ------------------------------------------------------------------ use
    def __str__(self) -> str:
        counts = self.counts[0] if len(self.counts) == 1 else list(self.counts)
        return f"{counts} {self.method.value}"

    def timesteps(self, num_timesteps: int) -> list[int]:
        """The original timesteps kept out of ``num_timesteps`` (sorted ascending)."""
        if self.method == SpacingMethod.STRIDED:
            return _strided(num_timesteps, self.counts[0])
        return _sections(num_timesteps, self.counts)


def _name(spacing: SpacingMethod | str) -> str:
    return spacing.value if isinstance(spacing, SpacingMethod) else str(spacing)


def _strided(num_timesteps: int, wanted: int) -> list[int]:
    if wanted == num_timesteps:
        return list(range(num_timesteps))
    for stride in range(2, num_timesteps):
        kept = list(range(0, num_timesteps, stride))
        if len(kept) == wanted:
            return kept
    counts = sorted({len(range(0, num_timesteps, k)) for k in range(1, num_timesteps)}, reverse=True)
    hint = ", ".join(str(c) for c in [c for c in counts if c <= 250][:6])
    raise ValueError(
        f"cannot take exactly {wanted} of {num_timesteps} steps with an integer stride (spacing='strided'); "
        f"pick a count such as {hint}, or spacing='even'"
    )


def _evenly_spaced(start: int, size: int, count: int) -> list[int]:
    """``count`` indices from [start, start + size), first and last included, rounded half-to-even."""
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    kept, position = [], 0.0
    for _ in range(count):
        # Accumulating the float position (instead of multiplying) reproduces the reference rounding exactly.
        kept.append(start + round(position))
        position += stride
    return kept


def _sections(num_timesteps: int, counts: tuple[int, ...]) -> list[int]:
    base, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            where = f"section {i} spans {size}" if len(counts) > 1 else f"the process has {size}"
            raise ValueError(
                f"cannot keep {count} steps: {where} of the {num_timesteps} steps; ask for at most {size}"
            )
        kept += _evenly_spaced(start, size, count)
        start += size
    return sorted(set(kept))
