"""The one interface every metric reads features through (``adm.metrics.build`` picks an implementation)."""

from __future__ import annotations

import torch
from torch import nn

from adm.io.images import ImageBatch, as_uint8_nchw

# Names of the feature kinds an extractor may provide (the metric functions pick theirs by name):
#   "pool"    (N, D) global features: FID, precision / recall     (Inception pool_3: D = 2048)
#   "spatial" (N, D) spatial features: sFID                       (Inception mixed_6/conv[..., :7]: D = 2023)
#   "logits"  (N, K) class logits: Inception Score, class accuracy (Inception: K = 1008)
FEATURE_KINDS = ("pool", "spatial", "logits")


class FeatureExtractor(nn.Module):
    """Maps image batches to named feature arrays.

    Subclasses set `name` and `provides` and implement `extract(x)` on (N, C, H, W) uint8 tensors already on
    the extractor's device. `features(images)` accepts either layout of `adm.io.images` and returns
    float32 tensors on the extractor's device.
    """

    name: str = "extractor"
    provides: tuple[str, ...] = ()
    # True when "logits" index the same classes as the samples' labels (a domain classifier), so that
    # class accuracy is meaningful. Inception's 1008 ImageNet logits do not follow ADM's label order.
    logits_are_labels: bool = False

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, C, H, W) uint8 on `self.device` -> {kind: (N, D) float32}."""
        raise NotImplementedError

    def unavailable_reason(self, kind: str) -> str:
        """Why `kind` is not in `provides` (used in error messages)."""
        return f"the {self.name} feature extractor provides {list(self.provides)}, not {kind!r}"

    @property
    def device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    @torch.no_grad()
    def features(self, images: ImageBatch) -> dict[str, torch.Tensor]:
        """Images (uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]) -> {kind: (N, D) float32 tensor}."""
        was_training = self.training
        self.eval()
        try:
            out = self.extract(as_uint8_nchw(images).to(self.device))
        finally:
            self.train(was_training)
        return {kind: value.float() for kind, value in out.items()}
