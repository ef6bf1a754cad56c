"""Fréchet distance, feature statistics, KID, precision/recall and Inception Score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inrflow.metrics import (
    FeatureStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


def test_frechet_of_a_set_with_itself_is_zero() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32)) + 3.0
    mu, sigma = feature_statistics(feats)
    # tr(S) + tr(S) - 2 tr(S) cancels only to float64 round-off of terms of size tr(S) (~1e3 here,
    # so LAPACK builds differ around 1e-9): zero to 11 significant digits of those terms.
    scale = 2.0 * float(np.trace(sigma))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-11 * scale)


def test_frechet_matches_closed_form_for_diagonal_gaussians() -> None:
    # Commuting covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_one_dimensional_and_torch_inputs() -> None:
    # N(1, 2^2) vs N(-2, 0.5^2): (1 + 2)^2 + (2 - 0.5)^2 = 11.25.
    got = frechet_distance(
        torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[0.25]])
    )
    assert got == pytest.approx(11.25, rel=1e-12)


def test_frechet_matches_scipy_sqrtm_for_general_covariances() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 24
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # symmetric in its two arguments
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)


def test_frechet_handles_singular_covariances() -> None:
    # Fewer samples than dimensions (rank-deficient covariances): still finite, >= 0, and 0 for
    # equal statistics.
    rng = np.random.default_rng(3)
    s1, s2 = _random_spd(rng, 64, rank=5), _random_spd(rng, 64, rank=7)
    mu = np.zeros(64)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    v = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(v) and v > 0


def test_frechet_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_stats_batched_float64_matches_numpy() -> None:
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(1000, 8)) * 0.01 + 1e4  # large offset: the shift keeps precision
    stats = FeatureStats(keep=True)
    for i, chunk in enumerate(np.array_split(feats, 7)):
        stats.update(torch.from_numpy(chunk) if i % 2 else chunk)  # tensors and arrays alike
    np.testing.assert_allclose(stats.mean(), feats.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.cov(), np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-15)
    assert stats.n == 1000 and stats.features().shape == (1000, 8)
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 8), np.nan))


def test_kid_is_unbiased_on_equal_distributions() -> None:
    # Both pools come from one (skewed) distribution; each of the 400 rounds draws 20 features
    # from each pool, so every round's estimate has expectation 0: their mean is 0 within its
    # standard error. The biased estimate (kernel diagonals kept) on the same kind of draws is
    # clearly positive at this subset size, so the test can tell the two apart.
    gen = torch.Generator().manual_seed(0)
    d, m, rounds = 8, 20, 400
    x = torch.randn(8000, d, generator=gen, dtype=torch.float64).exp()
    y = torch.randn(8000, d, generator=gen, dtype=torch.float64).exp()
    mean, std = kid(x, y, subsets=rounds, subset_size=m, seed=3)
    se = std / np.sqrt(rounds)
    assert abs(mean) < 3 * se
    xs, ys = x[: rounds * m].view(rounds, m, d), y[: rounds * m].view(rounds, m, d)
    k = lambda a, b: (a @ b.transpose(1, 2) / d + 1) ** 3
    biased = k(xs, xs).mean((1, 2)) + k(ys, ys).mean((1, 2)) - 2 * k(xs, ys).mean((1, 2))
    assert float(biased.mean()) > 10 * se


def test_kid_separates_different_distributions() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=gen)
    y = torch.randn(200, 8, generator=gen) + 1.0
    same = kid(x, torch.randn(200, 8, generator=gen), subsets=20, subset_size=100)[0]
    diff, std = kid(x, y, subsets=20, subset_size=100)
    assert diff > 10 * max(abs(same), std / 10)


def test_precision_recall_constructed_cases() -> None:
    gen = torch.Generator().manual_seed(2)
    real = torch.randn(100, 4, generator=gen)
    assert precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 100.0)
    assert far == {"precision": 0.0, "recall": 0.0}
    # Mode dropping: the real set has two far clusters, the fake set covers one of them.
    a = torch.randn(100, 4, generator=gen)
    b = torch.randn(100, 4, generator=gen) + 50.0
    pr = precision_recall(torch.cat([a, b]), a.clone(), k=3)
    assert pr["precision"] == 1.0
    assert pr["recall"] == 0.5


def test_inception_score_known_values() -> None:
    # Uniform posteriors: IS = 1; confident, evenly spread over 10 classes: IS = 10.
    assert inception_score(torch.zeros(100, 10), splits=2)[0] == pytest.approx(1.0)
    logits = torch.full((100, 10), -1e4)
    logits[torch.arange(100), torch.arange(100) % 10] = 0.0
    mean, std = inception_score(logits, splits=5)
    assert mean == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
