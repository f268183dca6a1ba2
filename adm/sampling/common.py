"""Pieces every sampler shares: option checks, the respaced process, timesteps, the per-step callback."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from adm.diffusion.gaussian import GaussianDiffusion
from adm.diffusion.spacing import Spacing, SpacingMethod
from adm.sampling.noise import randn_like

ModelFn = Callable[..., torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]
# The samplers' ``steps`` option: a count, per-section counts (spacing "sections") or a ready Spacing.
Steps = int | Sequence[int] | Spacing | None


def resolve(
    diffusion: GaussianDiffusion,
    steps: Steps,
    spacing: SpacingMethod | str | None,
    noise: NoiseFn | None,
) -> tuple[GaussianDiffusion, NoiseFn]:
    """(the process to sample, the noise source).

    ``steps`` and ``spacing`` respace the original process (``Spacing.of``: "even" when not given, e.g.
    ``steps=25, spacing="strided"`` keeps t = 0, 40, ..., 960 of 1000); ``steps=None`` keeps every step.
    """
    if not isinstance(diffusion, GaussianDiffusion):
        raise ValueError(
            f"diffusion must be an adm.diffusion.GaussianDiffusion, got {type(diffusion).__name__}"
        )
    chosen = Spacing.of(steps, spacing)
    if chosen is not None:
        diffusion = diffusion.respace(chosen)
    return diffusion, (noise if noise is not None else randn_like)


def reverse_steps(
    diffusion: GaussianDiffusion, x: torch.Tensor, desc: str, progress: bool
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (i, t) for i = 0..T-1 with t = T-1-i as an int64 (B,) tensor, with an optional progress bar."""
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    for i, step in enumerate(tqdm(indices, desc=desc, disable=not progress)):
        yield i, torch.full((x.shape[0],), step, dtype=torch.int64, device=x.device)


def last_step_mask(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 where t > 0, 0 where t == 0 (no noise is added on the final step), shaped (B, 1, ..., 1)."""
    return (t != 0).float().reshape(-1, *([1] * (x.ndim - 1)))


def report(callback: Callback | None, i: int, t: torch.Tensor, x_t: torch.Tensor, out: dict) -> None:
    """Call ``callback(dict(step, t, x_t, x_prev, pred_x0))`` if one was given."""
    if callback is not None:
        callback({"step": i, "t": int(t[0]), "x_t": x_t, "x_prev": out["x_prev"], "pred_x0": out["pred_x0"]})
