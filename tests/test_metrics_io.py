"""Sample shards, reference batches and the evaluate() plumbing (with a cheap stand-in feature extractor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adm.metrics import (
    FeatureExtractor,
    FeatureSet,
    compute_metrics,
    evaluate,
    extract_features,
    fid_from_features,
    frechet_distance,
    load_reference,
    open_samples,
    precision_recall,
    reference_features,
    resolve_metrics,
    save_npz,
)


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


# ---------------------------------------------------------------- sample files


def test_sample_shards_stream_in_order(tmp_path):
    images, labels = _write_shards(tmp_path / "s", [5, 7, 3])
    source = open_samples(tmp_path / "s")
    assert len(source) == 15 and source.image_shape == (8, 8, 3) and source.has_labels
    batches = list(source.batches(4))
    assert max(len(b) for b, _ in batches) == 4
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in batches]), labels)
    np.testing.assert_array_equal(source.labels(), labels)
    limited = np.concatenate([b for b, _ in source.batches(4, limit=9)])
    np.testing.assert_array_equal(limited, images[:9])
    files = sorted((tmp_path / "s").glob("*.npz"))
    assert len(open_samples([files[0], files[2]])) == 8
    assert len(open_samples(str(files[1]))) == 7


def test_grey_images_without_channel_axis(tmp_path):
    np.savez(tmp_path / "g.npz", _images(3, 0, (8, 8)))
    source = open_samples(tmp_path / "g.npz")
    assert source.image_shape == (8, 8, 1) and not source.has_labels and source.labels() is None
    ((batch, labels),) = list(source.batches(8))
    assert batch.shape == (3, 8, 8, 1) and labels is None


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.float32)},
            r"'arr_0' has shape \(2, 8, 8, 3\) and dtype float32; expected uint8",
        ),
        (
            {"arr_0": np.zeros((2, 3, 8, 8), np.uint8)},
            r"'arr_0' has shape \(2, 3, 8, 8\) and dtype uint8; expected uint8",
        ),
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(3, np.int64)},
            r"'arr_1' has shape \(3,\)",
        ),
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(2, np.float32)},
            r"'arr_1' .* float32",
        ),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, r"has no 'arr_0' \(keys: \['images'\]\)"),
    ],
)
def test_bad_sample_file_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        open_samples(tmp_path / "bad.npz")


def test_sample_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sample file"):
        open_samples(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz files"):
        open_samples(tmp_path / "empty")
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz archive"):
        open_samples(tmp_path / "x.npz")
    np.savez(tmp_path / "a.npz", _images(2, 0))
    np.savez(tmp_path / "b.npz", _images(2, 0, (4, 4, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        open_samples([tmp_path / "a.npz", tmp_path / "b.npz"])


# ---------------------------------------------------------------- reference batches


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"arr_0": np.zeros((4, 8, 8, 3), np.int64)},
            r"'arr_0' has shape \(4, 8, 8, 3\) and dtype int64; expected uint8",
        ),
        (
            {"mu": np.zeros(2047)},
            r"'mu' has shape \(2047,\) and dtype float64; expected a float array of shape \(2048,\)",
        ),
        (
            {"mu": np.zeros(2048, np.int32)},
            r"'mu' has shape \(2048,\) and dtype int32; expected a float array",
        ),
        (
            {"mu_s": np.zeros((2023, 1))},
            r"'mu_s' has shape \(2023, 1\) .* expected a float array of shape \(2023,\)",
        ),
        ({"mu": np.zeros(2048)}, r"has 'mu' but not 'sigma'"),
        ({"labels": np.zeros(3)}, r"neither 'arr_0' .* nor precomputed 'mu'/'sigma'"),
    ],
)
def test_bad_reference_batch_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_reference(tmp_path / "ref.npz")


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


def test_save_npz_round_trip(tmp_path):
    images = _images(5, 7)
    x_0 = (torch.from_numpy(images).permute(0, 3, 1, 2).float() + 0.5) / 127.5 - 1  # model layout
    save_npz(tmp_path / "a.npz", x_0, torch.arange(5))
    with np.load(tmp_path / "a.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["arr_1"], np.arange(5))
    with pytest.raises(ValueError, match=r"labels must be \(5,\)"):
        save_npz(tmp_path / "b.npz", images, np.arange(4))


def test_reference_feature_set_without_needed_features_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "s.npz", _images(8, 5))
    only_stats = FeatureSet("pixels", stats={"pool": (np.zeros(12), np.eye(12))})
    with pytest.raises(ValueError, match="no 'pool' features"):
        evaluate(tmp_path / "s.npz", only_stats, PixelFeatures(), ["precision"], batch_size=4)
