"""Metric maths against independent computations: closed forms, scipy, brute-force k-NN."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch

from adm.metrics import (
    class_accuracy,
    fid_from_features,
    frechet_distance,
    gaussian_stats,
    inception_score,
    precision_recall,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ---------------------------------------------------------------- Fréchet distance


def test_frechet_distance_commuting_covariances_closed_form():
    # Covariances sharing eigenvectors commute: (S1 S2)^1/2 = Q sqrt(a b) Q^T, so
    # FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2 exactly.
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_fid_random_gaussian_features_against_symmetric_sqrtm():
    # Independent route: tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2, with square roots of symmetric matrices.
    rng = np.random.default_rng(1)
    d = 16
    x1 = rng.multivariate_normal(rng.standard_normal(d), _random_spd(rng, d), size=400)
    x2 = rng.multivariate_normal(rng.standard_normal(d), _random_spd(rng, d), size=300)
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    r1 = scipy.linalg.sqrtm(s1).real
    tr_covmean = np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert fid_from_features(x1, x2) == pytest.approx(expected, rel=1e-8)
    assert fid_from_features(torch.from_numpy(x1).float(), torch.from_numpy(x2).float()) == pytest.approx(
        expected, rel=1e-4
    )


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64).T, ddof=1), rtol=1e-12)


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(3).standard_normal((256, 32))
    assert abs(fid_from_features(x, x)) < 1e-8


def test_fid_singular_covariance_stays_finite():
    # Fewer samples than dimensions: the covariance is singular; the result must still be finite and ~0.
    x = np.random.default_rng(4).standard_normal((20, 64))
    with np.errstate(all="ignore"):
        value = fid_from_features(x, x)
    assert np.isfinite(value) and abs(value) < 1e-3


def test_frechet_distance_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- Inception Score


def _is_reference(logits: np.ndarray, split_size: int) -> float:
    scores = []
    for start in range(0, len(logits), split_size):
        p = scipy.special.softmax(logits[start : start + split_size].astype(np.float64), axis=1)
        marginal = p.mean(axis=0)
        kl = np.mean([scipy.stats.entropy(p_i, marginal) for p_i in p])
        scores.append(np.exp(kl))
    return float(np.mean(scores))


@pytest.mark.parametrize("n, split_size", [(120, 40), (100, 30), (50, 5000)])
def test_inception_score_matches_formula(n, split_size):
    logits = np.random.default_rng(n).standard_normal((n, 10)) * 3
    assert inception_score(logits, split_size=split_size) == pytest.approx(
        _is_reference(logits, split_size), rel=1e-10
    )


def test_inception_score_closed_form_extremes():
    k = 8
    assert inception_score(np.zeros((64, k))) == pytest.approx(1.0)  # p(y|x) = p(y): no information
    confident = np.repeat(np.eye(k) * 200.0, 5, axis=0)  # each class equally often, with certainty
    assert inception_score(confident) == pytest.approx(k, rel=1e-6)


def test_inception_score_agrees_with_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(200, 1008, generator=torch.Generator().manual_seed(0)) * 4
    theirs = isc_features_to_metric(logits, splits=4, shuffle=False)["inception_score_mean"]
    assert inception_score(logits, split_size=50) == pytest.approx(theirs, rel=1e-9)


# ---------------------------------------------------------------- precision / recall


def _brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def dists(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    real_radius = np.sort(dists(real, real), axis=1)[:, k]  # column 0 is the point itself
    fake_radius = np.sort(dists(fake, fake), axis=1)[:, k]
    d = dists(fake, real)  # (fake, real)
    precision = np.mean([(d[i] <= real_radius).any() for i in range(len(fake))])
    recall = np.mean([(d[:, j] <= fake_radius).any() for j in range(len(real))])
    return float(precision), float(recall)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_brute_force_knn(k):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((60, 10))
    fake = rng.standard_normal((45, 10)) * 0.8 + 0.5
    expected = _brute_force_pr(real, fake, k)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0  # a test that can fail
    # float64 with small blocks (exercises the block loops): identical decisions
    assert precision_recall(real, fake, k=k, block_size=7) == pytest.approx(expected, abs=1e-12)
    # float32 with one block: same decisions for points in general position
    got32 = precision_recall(real.astype(np.float32), fake.astype(np.float32), k=k)
    assert got32 == pytest.approx(expected, abs=1e-12)


def test_precision_recall_extremes():
    x = np.random.default_rng(0).standard_normal((40, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError, match="more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


# ---------------------------------------------------------------- class accuracy


def test_class_accuracy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    assert class_accuracy(logits, np.array([0, 1, 0, 0])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="3 classes"):
        class_accuracy(logits, np.array([0, 1, 2, 3]))
