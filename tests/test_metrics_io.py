"""The evaluate() plumbing over sample shards and reference batches (with a cheap stand-in feature extractor).

The file formats themselves (reading and writing sample files, reference batches) are tested in test_io.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adm.io.npz import open_samples
from adm.metrics import (
    FeatureExtractor,
    FeatureSet,
    compute_metrics,
    evaluate,
    extract_features,
    fid_from_features,
    frechet_distance,
    precision_recall,
    reference_features,
    resolve_metrics,
)
from adm.metrics.reference import load_reference


class PixelFeatures(FeatureExtractor):
    """Stand-in extractor: 2x2 average-pooled pixels as "pool", two of them (scaled) as "logits"."""

    name = "pixels"
    provides = ("pool", "logits")
    logits_are_labels = True

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = F.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)
        return {"pool": pool, "logits": pool[:, :2] * 10}


class FakeInception(PixelFeatures):
    name = "inception"
    provides = ("pool", "spatial")
    logits_are_labels = False


def _images(n: int, seed: int, shape=(8, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_shards(folder: Path, sizes, seed=0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _images(sum(sizes), seed), np.arange(sum(sizes)) % 2
    start = 0
    for i, n in enumerate(sizes):
        save = np.savez_compressed if i == 1 else np.savez  # both storage modes stream
        save(folder / f"shard_{i:03d}.npz", images[start : start + n], labels[start : start + n])
        start += n
    return images, labels


# ---------------------------------------------------------------- reference statistics


def test_reference_statistics_are_used_only_by_inception(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(2048).astype(np.float32), np.eye(2048, dtype=np.float32)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    ref = load_reference(tmp_path / "stats.npz")
    assert ref.images is None and set(ref.stats) == {"pool"}
    feats = reference_features(ref, FakeInception(), ["fid"], batch_size=4)  # reads no images
    np.testing.assert_array_equal(feats.gaussian("pool")[0], mu.astype(np.float64))
    with pytest.raises(ValueError, match="precision / recall need its images"):
        reference_features(ref, FakeInception(), ["precision"], batch_size=4)
    with pytest.raises(ValueError, match="no 'arr_0' images: the pixels extractor needs its images"):
        reference_features(ref, PixelFeatures(), ["fid"], batch_size=4)


def test_compute_metrics_prefers_precomputed_statistics():
    rng = np.random.default_rng(1)
    fake = rng.standard_normal((30, 4))
    mu, sigma = np.ones(4), np.eye(4) * 2
    samples = FeatureSet("pixels", features={"pool": fake}, count=30)
    reference = FeatureSet("pixels", stats={"pool": (mu, sigma)})
    expected = frechet_distance(fake.mean(0), np.cov(fake, rowvar=False), mu, sigma)
    assert compute_metrics(samples, reference, ["fid"])["fid"] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="'inception' extractor"):
        compute_metrics(samples, FeatureSet("inception", stats={"pool": (mu, sigma)}), ["fid"])


# ---------------------------------------------------------------- evaluate()


def test_metric_selection_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        resolve_metrics(PixelFeatures(), ["fid", "kid"])
    with pytest.raises(ValueError, match="'sfid' needs 'spatial' features"):
        resolve_metrics(PixelFeatures(), ["sfid"])
    with pytest.raises(ValueError, match="not in the samples' label space"):
        resolve_metrics(FakeInception(), ["accuracy"])
    assert resolve_metrics(PixelFeatures(), None) == ["fid", "is", "precision", "recall", "accuracy"]
    assert resolve_metrics(FakeInception(), None) == ["fid", "sfid", "precision", "recall"]


def test_evaluate_npz_matches_direct_computation(tmp_path):
    _write_shards(tmp_path / "samples", [6, 10], seed=1)
    ref_images = _images(24, seed=2)
    np.savez(tmp_path / "ref.npz", ref_images)
    extractor = PixelFeatures()
    out = evaluate(tmp_path / "samples", tmp_path / "ref.npz", extractor, batch_size=5)

    source = open_samples(tmp_path / "samples")
    images = np.concatenate([b for b, _ in source.batches(100)])
    fake = extractor.features(images)["pool"].numpy()
    real = extractor.features(ref_images)["pool"].numpy()
    assert out["fid"] == pytest.approx(fid_from_features(fake, real), rel=1e-6)
    assert (out["precision"], out["recall"]) == precision_recall(real, fake)
    logits = extractor.features(images)["logits"].numpy()
    assert out["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == source.labels()))
    assert out["num_samples"] == 16 and out["num_reference"] == 24 and "is" in out

    # the same images in memory (uint8 NHWC, or float NCHW in [-1, 1]) give the same numbers
    # (pixel centres, so that the writer's truncating quantisation maps them back to the same uint8)
    labels = source.labels()
    x_0 = (torch.from_numpy(images).permute(0, 3, 1, 2).float() + 0.5) / 127.5 - 1
    for in_memory in (images, x_0):
        again = evaluate(in_memory, tmp_path / "ref.npz", extractor, batch_size=7, labels=labels)
        assert again == pytest.approx(out, rel=1e-6)

    # a reference FeatureSet computed once gives the same numbers too; a set against itself has FID ~ 0
    ref_feats = reference_features(tmp_path / "ref.npz", extractor, batch_size=8)
    assert evaluate(tmp_path / "samples", ref_feats, extractor, batch_size=5) == pytest.approx(out, rel=1e-6)
    same = evaluate(tmp_path / "ref.npz", ref_feats, extractor, ["fid", "precision", "recall"], batch_size=8)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0


def test_evaluate_labels_and_limit(tmp_path):
    np.savez(tmp_path / "s.npz", _images(12, 3))  # no labels
    np.savez(tmp_path / "r.npz", _images(12, 4))
    out = evaluate(tmp_path / "s.npz", tmp_path / "r.npz", PixelFeatures(), batch_size=4, limit=8)
    assert "accuracy" not in out and out["num_samples"] == 8
    with pytest.raises(ValueError, match="needs the samples' labels"):
        evaluate(tmp_path / "s.npz", tmp_path / "r.npz", PixelFeatures(), ["accuracy"], batch_size=4)
    only_is = evaluate(tmp_path / "s.npz", None, PixelFeatures(), ["is"], batch_size=4)
    assert set(only_is) == {"is", "num_samples"}
    feats = extract_features(tmp_path / "s.npz", PixelFeatures(), ["pool"], batch_size=5)
    assert feats.features["pool"].shape == (12, 12) and feats.labels is None


def test_reference_feature_set_without_needed_features_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "s.npz", _images(8, 5))
    only_stats = FeatureSet("pixels", stats={"pool": (np.zeros(12), np.eye(12))})
    with pytest.raises(ValueError, match="no 'pool' features"):
        evaluate(tmp_path / "s.npz", only_stats, PixelFeatures(), ["precision"], batch_size=4)
