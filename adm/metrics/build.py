"""Building the feature extractor a metric run asks for: OpenAI's Inception network or a domain classifier.

The extractors import the interface (``adm.metrics.extractor``); this module imports the extractors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from adm.metrics.domain import DomainFeatureExtractor
from adm.metrics.extractor import FeatureExtractor
from adm.metrics.inception import load_inception

__all__ = ["build_extractor"]


def build_extractor(
    kind: str,
    *,
    inception_weights: str | Path | None = None,
    domain_ckpt: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> FeatureExtractor:
    """ "inception" (OpenAI's evaluator network; weights as in `adm.metrics.inception`) or "domain" (a
    `DomainClassifier` checkpoint at `domain_ckpt`), moved to `device`."""
    if kind == "inception":
        extractor: FeatureExtractor = load_inception(inception_weights, cache_dir=cache_dir)
    elif kind == "domain":
        if domain_ckpt is None:
            raise ValueError(
                "feature_extractor=domain needs domain_ckpt=PATH (a DomainClassifier saved with .save())"
            )
        extractor = DomainFeatureExtractor.from_checkpoint(domain_ckpt)
    else:
        raise ValueError(f"unknown feature extractor {kind!r}; choose 'inception' or 'domain'")
    return extractor.to(device)
