"""Sample-quality metrics with the definitions of OpenAI's ADM evaluator.

Features come from a `FeatureExtractor` (`load_inception()` for FID / sFID / IS / precision / recall on
natural images, `DomainFeatureExtractor` for small domains such as MNIST); the metrics are plain functions
on features; `evaluate(samples, reference, extractor)` ties them together for `.npz` sample files (read by
`adm.io.npz`). The metrics themselves are listed once, in `adm.metrics.names.METRIC_TABLE`.
"""

from __future__ import annotations

from adm.io.images import as_uint8_nchw, quantize
from adm.io.npz import NpzImages, open_samples, save_npz
from adm.metrics.accuracy import class_accuracy
from adm.metrics.build import build_extractor
from adm.metrics.domain import DomainClassifier, DomainFeatureExtractor, train_domain_classifier
from adm.metrics.evaluate import (
    METRICS,
    FeatureSet,
    compute_metrics,
    evaluate,
    extract_features,
    reference_features,
    resolve_metrics,
)
from adm.metrics.extractor import FEATURE_KINDS, FeatureExtractor
from adm.metrics.fid import fid_from_features, frechet_distance, gaussian_stats
from adm.metrics.inception import InceptionExtractor, load_inception, resolve_inception_weights
from adm.metrics.inception_score import inception_score
from adm.metrics.names import METRIC_TABLE, Metric
from adm.metrics.precision_recall import precision_recall
from adm.metrics.reference import ReferenceBatch, load_reference

__all__ = [
    "FEATURE_KINDS",
    "METRICS",
    "METRIC_TABLE",
    "DomainClassifier",
    "DomainFeatureExtractor",
    "FeatureExtractor",
    "FeatureSet",
    "InceptionExtractor",
    "Metric",
    "NpzImages",
    "ReferenceBatch",
    "as_uint8_nchw",
    "build_extractor",
    "class_accuracy",
    "compute_metrics",
    "evaluate",
    "extract_features",
    "fid_from_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "load_inception",
    "load_reference",
    "open_samples",
    "precision_recall",
    "quantize",
    "reference_features",
    "resolve_inception_weights",
    "resolve_metrics",
    "save_npz",
    "train_domain_classifier",
]
