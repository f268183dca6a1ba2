"""Sample-set evaluation: features of samples and reference, then FID / sFID / IS / precision / recall /
accuracy.

`evaluate(samples, reference, extractor)` is the one call for scripts, sweeps and callbacks. To score many
sample sets against one reference, compute the reference once with `reference_features` and pass the
resulting `FeatureSet` as `reference`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adm.io.files import file_sha256
from adm.io.images import ImageBatch
from adm.io.npz import NpzImages, open_samples, write_arrays
from adm.metrics.accuracy import class_accuracy
from adm.metrics.extractor import FeatureExtractor
from adm.metrics.fid import frechet_distance, gaussian_stats
from adm.metrics.inception_score import SPLIT_SIZE, inception_score
from adm.metrics.names import METRIC_KINDS, METRIC_TABLE, METRICS, NEEDS_REFERENCE
from adm.metrics.precision_recall import NEAREST_K, precision_recall
from adm.metrics.reference import ReferenceBatch, load_reference

__all__ = [
    "METRICS",
    "METRIC_KINDS",
    "FeatureSet",
    "check_same_images",
    "compute_metrics",
    "evaluate",
    "extract_features",
    "reference_features",
    "resolve_metrics",
]


@dataclass
class FeatureSet:
    """Features of one image set under one extractor.

    features: kind -> (N, D) float32 arrays; labels: (N,) int64 or None; stats: kind -> precomputed
    (mu, sigma) (a reference batch's Inception statistics), used by `gaussian` instead of fitting features.
    """

    extractor: str
    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    count: int = 0

    def __len__(self) -> int:
        return self.count

    def require(self, kind: str) -> np.ndarray:
        """The (N, D) `kind` features; ValueError when this set was computed without them."""
        if kind not in self.features:
            raise ValueError(
                f"this {self.extractor} feature set has no {kind!r} features (it has "
                f"{sorted(self.features)}); compute it for the metrics that need them "
                "(reference_features(..., metrics=[...]))"
            )
        return self.features[kind]

    def gaussian(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(mu (D,), sigma (D, D)) of `kind`: precomputed if present, else fitted to the features (kept)."""
        if kind not in self.stats:
            self.stats[kind] = gaussian_stats(self.require(kind))
        return self.stats[kind]


def resolve_metrics(extractor: FeatureExtractor, metrics: Sequence[str] | None) -> list[str]:
    """Check requested metric names against what `extractor` provides; None -> every metric it supports."""
    if metrics is None:
        return [
            m
            for m, kind in METRIC_KINDS.items()
            if kind in extractor.provides and (m != "accuracy" or extractor.logits_are_labels)
        ]
    metrics = [str(m).lower() for m in metrics]
    unknown = [m for m in metrics if m not in METRIC_KINDS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    for m in metrics:
        if m == "accuracy" and not extractor.logits_are_labels:
            raise ValueError(
                "class accuracy needs a classifier over the samples' own classes (feature_extractor=domain); "
                f"the {extractor.name} extractor's logits are not in the samples' label space"
            )
        if METRIC_KINDS[m] not in extractor.provides:
            raise ValueError(
                f"metric {m!r} needs {METRIC_KINDS[m]!r} features, but "
                + extractor.unavailable_reason(METRIC_KINDS[m])
            )
    return list(dict.fromkeys(metrics))


def _batches(
    images: NpzImages | ImageBatch,
    labels: np.ndarray | torch.Tensor | None,
    batch_size: int,
    limit: int | None,
) -> tuple[Iterable[tuple[ImageBatch, np.ndarray | None]], int]:
    if isinstance(images, NpzImages):
        total = len(images) if limit is None else min(limit, len(images))
        return images.batches(batch_size, limit), total
    total = len(images) if limit is None else min(limit, len(images))
    if labels is not None:
        labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"labels must be ({len(images)},), got {labels.shape}")
    return (
        (
            (
                images[i : min(i + batch_size, total)],
                None if labels is None else labels[i : min(i + batch_size, total)],
            )
            for i in range(0, total, batch_size)
        ),
        total,
    )


def extract_features(
    images: NpzImages | ImageBatch | str | Path | Sequence[str | Path],
    extractor: FeatureExtractor,
    kinds: Iterable[str],
    *,
    batch_size: int,
    labels: np.ndarray | torch.Tensor | None = None,
    limit: int | None = None,
    progress: bool = False,
    desc: str = "features",
) -> FeatureSet:
    """Run `extractor` over an image set batch by batch, keeping the feature kinds in `kinds`.

    images: sample file(s) / folder of shards / `NpzImages` (labels from `arr_1`), or an in-memory batch
    (uint8 (N, H, W, C) or float (N, C, H, W) in [-1, 1]) with optional `labels` (N,). `limit`: first N only.
    """
    if isinstance(images, str | Path) or (
        isinstance(images, Sequence) and not isinstance(images, np.ndarray)
    ):
        images = open_samples(images)
    kinds = list(dict.fromkeys(kinds))
    missing = [k for k in kinds if k not in extractor.provides]
    if missing:
        raise ValueError(extractor.unavailable_reason(missing[0]))
    batches, total = _batches(images, labels, batch_size, limit)
    if total == 0:
        raise ValueError("the image set is empty")
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-total // batch_size), desc=desc, unit="batch", dynamic_ncols=True)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    label_parts: list[np.ndarray] = []
    for batch, batch_labels in batches:
        if kinds:
            out = extractor.features(batch)
            for k in kinds:
                parts[k].append(out[k].cpu().numpy())
        if batch_labels is not None:
            label_parts.append(batch_labels)
    has_labels = len(label_parts) > 0
    return FeatureSet(
        extractor=extractor.name,
        features={k: np.concatenate(v) for k, v in parts.items()},
        labels=np.concatenate(label_parts) if has_labels else None,
        count=total,
    )


# For the reference: metric -> (kind, whether precomputed Gaussian statistics suffice)
_REFERENCE_NEEDS = {m.name: (m.kind, m.reference == "stats") for m in METRIC_TABLE if m.needs_reference}


def reference_features(
    reference: str | Path | ReferenceBatch,
    extractor: FeatureExtractor,
    metrics: Sequence[str] | None = None,
    *,
    batch_size: int,
    limit: int | None = None,
    progress: bool = False,
    cache_dir: str | Path | None = None,
) -> FeatureSet:
    """What `metrics` need from a reference batch. Precomputed `mu`/`sigma`/`mu_s`/`sigma_s` are used with the
    Inception extractor (they are Inception statistics) so that their images are read only when precision /
    recall need the features themselves.

    cache_dir: keep the features in ``cache_dir/reference_features/<key>.npz``, the key hashing the reference
    file's content, the extractor and its weights, the kinds and `limit`; a later call (another run of a
    sweep) with the same key reads them instead of running the extractor. Only for ``.npz`` references and
    extractors that name their weights (``source``).
    """
    if not isinstance(reference, ReferenceBatch):
        reference = load_reference(reference)
    metrics = resolve_metrics(extractor, metrics)
    cache = _cache_path(reference, extractor, metrics, limit, cache_dir)
    if cache is not None and cache.is_file():
        return _read_feature_cache(cache, extractor.name)
    stats = dict(reference.stats) if extractor.name == "inception" else {}
    kinds = [
        kind
        for m, (kind, stats_suffice) in _REFERENCE_NEEDS.items()
        if m in metrics and not (stats_suffice and kind in stats)
    ]
    if kinds and reference.images is None:
        why = (
            "precision / recall need its images"
            if stats
            else f"the {extractor.name} extractor needs its images"
        )
        raise ValueError(f"reference batch {reference.path} has no 'arr_0' images: {why}")
    if kinds:
        feats = extract_features(
            reference.images,
            extractor,
            kinds,
            batch_size=batch_size,
            limit=limit,
            progress=progress,
            desc="reference",
        )
    else:
        feats = FeatureSet(extractor=extractor.name, count=len(reference.images) if reference.images else 0)
    feats.stats.update({k: v for k, v in stats.items() if k not in feats.stats})
    if cache is not None:
        _write_feature_cache(cache, feats)
    return feats


def _cache_path(
    reference: ReferenceBatch,
    extractor: FeatureExtractor,
    metrics: Sequence[str],
    limit: int | None,
    cache_dir: str | Path | None,
) -> Path | None:
    source = getattr(extractor, "source", None)
    if cache_dir is None or source is None or not reference.path.is_file():
        return None
    weights = Path(str(source))
    key = {
        "reference": file_sha256(reference.path),
        "extractor": extractor.name,
        "weights": file_sha256(weights) if weights.is_file() else str(source),
        "metrics": sorted(metrics),
        "limit": limit,
    }
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(cache_dir).expanduser() / "reference_features" / f"{name}.npz"


def _write_feature_cache(path: Path, feats: FeatureSet) -> None:
    arrays = {f"features/{k}": v for k, v in feats.features.items()}
    for kind, (mu, sigma) in feats.stats.items():
        arrays[f"stats/{kind}/mu"], arrays[f"stats/{kind}/sigma"] = mu, sigma
    if feats.labels is not None:
        arrays["labels"] = feats.labels
    arrays["count"] = np.asarray(feats.count)
    write_arrays(path, arrays)


def _read_feature_cache(path: Path, extractor: str) -> FeatureSet:
    with np.load(path) as data:
        keys = list(data.keys())
        feats = FeatureSet(
            extractor=extractor,
            features={k.split("/", 1)[1]: data[k] for k in keys if k.startswith("features/")},
            labels=data["labels"] if "labels" in keys else None,
            count=int(data["count"]),
        )
        for k in keys:
            if k.startswith("stats/") and k.endswith("/mu"):
                kind = k.split("/")[1]
                feats.stats[kind] = (data[k], data[f"stats/{kind}/sigma"])
    return feats


def check_same_images(samples: NpzImages | ImageBatch, reference: ReferenceBatch | None) -> None:
    """Samples and reference images must have one resolution and channel count (ValueError otherwise)."""
    if reference is None or reference.images is None:
        return
    if isinstance(samples, NpzImages):
        shape = tuple(samples.image_shape)
    elif isinstance(samples, np.ndarray) and samples.dtype == np.uint8 and samples.ndim == 4:
        shape = tuple(samples.shape[1:])
    elif samples.ndim == 4:  # float (N, C, H, W)
        shape = (samples.shape[2], samples.shape[3], samples.shape[1])
    else:
        return
    ref_shape = tuple(reference.images.image_shape)
    if shape != ref_shape:
        (h, w, c), (sh, sw, sc) = ref_shape, shape
        raise ValueError(
            f"samples are {sh}x{sw} px with {sc} channel(s) but the reference images {reference.path} are "
            f"{h}x{w} px with {c} channel(s): compare like with like; make a reference at the samples' size,"
            f" e.g. python scripts/make_reference.py folder=IMAGES image_size={sh} channels={sc}"
        )


def compute_metrics(
    samples: FeatureSet,
    reference: FeatureSet | None,
    metrics: Sequence[str],
    *,
    split_size: int = SPLIT_SIZE,
    k: int = NEAREST_K,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Metrics from features. `reference` may be None when only "is" / "accuracy" are asked for."""
    if reference is not None and reference.extractor != samples.extractor:
        raise ValueError(
            f"reference features come from the {reference.extractor!r} extractor, "
            f"samples from {samples.extractor!r}"
        )
    out: dict[str, float] = {}
    if any(m in NEEDS_REFERENCE for m in metrics) and reference is None:
        raise ValueError(f"metrics {list(metrics)} need a reference batch")
    if "fid" in metrics:
        out["fid"] = frechet_distance(*samples.gaussian("pool"), *reference.gaussian("pool"))
    if "sfid" in metrics:
        out["sfid"] = frechet_distance(*samples.gaussian("spatial"), *reference.gaussian("spatial"))
    if "is" in metrics:
        out["is"] = inception_score(samples.require("logits"), split_size=split_size)
    if "precision" in metrics or "recall" in metrics:
        precision, recall = precision_recall(
            reference.require("pool"), samples.require("pool"), k=k, device=device
        )
        if "precision" in metrics:
            out["precision"] = precision
        if "recall" in metrics:
            out["recall"] = recall
    if "accuracy" in metrics:
        if samples.labels is None:
            raise ValueError(
                "class accuracy needs the samples' labels ('arr_1' in the sample files, or labels=)"
            )
        out["accuracy"] = class_accuracy(samples.require("logits"), samples.labels)
    return out


def evaluate(
    samples: str | Path | Sequence[str | Path] | NpzImages | ImageBatch,
    reference: str | Path | ReferenceBatch | FeatureSet | None,
    extractor: FeatureExtractor,
    metrics: Sequence[str] | None = None,
    *,
    batch_size: int,
    labels: np.ndarray | torch.Tensor | None = None,
    limit: int | None = None,
    progress: bool = False,
    split_size: int = SPLIT_SIZE,
    k: int = NEAREST_K,
    cache_dir: str | Path | None = None,
) -> dict[str, float | int]:
    """Score a sample set against a reference batch with OpenAI's evaluator definitions.

    samples: `.npz` file(s) / folder of shards (labels from `arr_1`), or in-memory images (uint8
    (N, H, W, C) or float (N, C, H, W) in [-1, 1]) with optional `labels` (N,).
    reference: `.npz` path, `ReferenceBatch`, or a `FeatureSet` from `reference_features` (computed once,
    reused). metrics: names from `METRICS`; None = all the extractor supports ("accuracy" only with
    labels). `limit` caps the number of samples used. `cache_dir`: reuse the reference's features across
    calls (see `reference_features`). Samples and reference images must have the same size and channels.
    Returns {metric: value, ..., "num_samples": N, "num_reference": N_ref}.
    """
    explicit = metrics is not None
    metrics = resolve_metrics(extractor, metrics)
    if isinstance(samples, str | Path) or (
        isinstance(samples, Sequence) and not isinstance(samples, np.ndarray)
    ):
        samples = open_samples(samples)  # checks every shard's header before any work
    has_labels = samples.has_labels if isinstance(samples, NpzImages) else labels is not None
    if "accuracy" in metrics and not has_labels:
        if explicit:
            raise ValueError(
                "class accuracy needs the samples' labels ('arr_1' in the sample files, or labels=)"
            )
        metrics.remove("accuracy")
    needs_reference = any(m in NEEDS_REFERENCE for m in metrics)
    ref_feats = None
    if needs_reference:
        if reference is None:
            raise ValueError(f"metrics {metrics} need a reference batch")
        if isinstance(reference, FeatureSet):
            ref_feats = reference
        else:
            if not isinstance(reference, ReferenceBatch):
                reference = load_reference(reference)
            check_same_images(samples, reference)
            ref_feats = reference_features(
                reference, extractor, metrics, batch_size=batch_size, progress=progress, cache_dir=cache_dir
            )
    kinds = [METRIC_KINDS[m] for m in metrics]
    sample_feats = extract_features(
        samples,
        extractor,
        kinds,
        batch_size=batch_size,
        labels=labels,
        limit=limit,
        progress=progress,
        desc="samples",
    )
    out: dict[str, float | int] = compute_metrics(
        sample_feats, ref_feats, metrics, split_size=split_size, k=k, device=extractor.device
    )
    out["num_samples"] = len(sample_feats)
    if ref_feats is not None:
        out["num_reference"] = len(ref_feats)
    return out
