"""Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2).

A guidance object computes s * grad_x log p(y | x_t, t) and the sampler applies it:
  - ancestral (DDPM) steps shift the mean: mu <- mu + Sigma * grad  ("condition_mean");
  - DDIM corrects the noise estimate: eps <- eps - sqrt(1 - alpha_bar_t) * grad  ("condition_score"),
    after which pred_x0 is recomputed from eps and *not* clipped again.
The classifier receives the same timesteps as the diffusion network (``diffusion.model_timesteps(t)``).
A guidance object with ``enabled == False`` (scale 0) is skipped entirely, so the sampler does exactly what
it does without guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Guidance", "ClassifierGuidance", "CondFnGuidance", "is_active"]


@runtime_checkable
class Guidance(Protocol):
    """What samplers expect of a guidance object."""

    enabled: bool

    def __call__(self, x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """The scaled gradient d/dx_t of log p(y | x_t, t), shaped like x_t."""
        ...


def is_active(guidance: Guidance | None) -> bool:
    """True when a sampler must compute and apply the guidance gradient."""
    return guidance is not None and bool(getattr(guidance, "enabled", True))


class ClassifierGuidance:
    """s * grad_x log softmax(classifier(x_t, t))[y] for a noisy-image classifier.

    Args:
        classifier: module called as classifier(x_t, t_model) -> logits (B, num_classes), in eval() mode.
        scale: guidance scale s (0 disables guidance).
    The label comes from the sampler's ``model_kwargs["y"]`` (int64 (B,)); y is given to the classifier
    even when the diffusion network is unconditional.
    """

    def __init__(self, classifier: nn.Module, scale: float) -> None:
        scale = float(scale)
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.classifier = classifier
        self.scale = scale

    @property
    def enabled(self) -> bool:
        return self.scale != 0.0

    def __repr__(self) -> str:
        return f"ClassifierGuidance(classifier={type(self.classifier).__name__}, scale={self.scale})"

    def log_prob_grad(self, x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unscaled d/dx_t sum_i log p(y_i | x_t[i], t[i]), shaped like x_t (float32)."""
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t_model), dim=-1)
            selected = log_probs[torch.arange(y.shape[0], device=y.device), y]
            return torch.autograd.grad(selected.sum(), x_in)[0]

    def __call__(
        self, x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor | None = None, **_
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(
                "classifier guidance needs labels: pass model_kwargs={'y': labels} to the sampler"
            )
        return self.log_prob_grad(x_t, t_model, y) * self.scale


class CondFnGuidance:
    """Adapter for a reference-style ``cond_fn(x, t, **model_kwargs) -> scaled gradient``."""

    enabled = True

    def __init__(self, cond_fn: Callable[..., torch.Tensor]) -> None:
        self.cond_fn = cond_fn

    def __call__(self, x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs) -> torch.Tensor:
        return self.cond_fn(x_t, t_model, **model_kwargs)
