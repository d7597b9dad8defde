"""Metrics against independent truth: closed forms and known distributions."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from ctbayes import metrics


def test_psnr_closed_form():
    truth = np.zeros((8, 8))
    truth[0, 0] = 2.0  # data range 2
    x = truth + 0.1
    assert metrics.psnr(x, truth) == pytest.approx(10 * np.log10(4 / 0.01))


def test_ssim_of_identical_images_is_one():
    truth = np.random.default_rng(0).random((32, 32))
    assert metrics.ssim(truth, truth) == pytest.approx(1.0)
    assert metrics.ssim(truth + 0.3 * np.random.default_rng(1).standard_normal((32, 32)), truth) < 0.8


def test_gaussian_log_likelihood_matches_scipy():
    rng = np.random.default_rng(0)
    mean, std = rng.random((16, 16)), 0.1 + rng.random((16, 16))
    truth = mean + std * rng.standard_normal((16, 16))
    assert metrics.gaussian_log_likelihood(truth, mean, std) == pytest.approx(
        norm.logpdf(truth, mean, std).mean())


def test_calibrated_std_has_nominal_coverage_and_beats_constant():
    rng = np.random.default_rng(1)
    mean = np.zeros((200, 200))
    std = np.exp(rng.normal(-2, 0.7, mean.shape))  # strongly varying uncertainty
    truth = mean + std * rng.standard_normal(mean.shape)
    cov = metrics.coverage(truth, mean, std)
    for level, observed in cov.items():
        assert observed == pytest.approx(level, abs=0.01)
    constant = metrics.best_constant_std(truth, mean)
    assert metrics.gaussian_log_likelihood(truth, mean, std) > \
        metrics.gaussian_log_likelihood(truth, mean, np.full_like(std, constant))
    levels, observed = metrics.calibration_curve(truth, mean, std)
    np.testing.assert_allclose(observed, levels, atol=0.01)


def test_patch_log_likelihood_approaches_the_exact_density():
    """Samples from a known 2x2-patch Gaussian: the sample-covariance log-likelihood converges
    to the exact multivariate normal log density, and patch 1 reduces to per-pixel Gaussians."""
    rng = np.random.default_rng(2)
    d = 4
    factor = rng.normal(size=(d, d))
    cov = factor @ factor.T / d + 0.1 * np.eye(d)
    mvn = multivariate_normal(np.zeros(d), cov)
    truth_patch = mvn.rvs(random_state=rng)
    samples = mvn.rvs(size=20000, random_state=rng).reshape(-1, 2, 2)
    exact = mvn.logpdf(truth_patch) / d
    assert metrics.patch_log_likelihood(truth_patch.reshape(2, 2), samples, 2) == pytest.approx(exact, abs=0.02)
    per_pixel = metrics.gaussian_log_likelihood(truth_patch.reshape(2, 2), samples.mean(0), samples.std(0, ddof=1))
    assert metrics.patch_log_likelihood(truth_patch.reshape(2, 2), samples, 1) == pytest.approx(per_pixel, abs=1e-4)


def test_patch_log_likelihood_does_not_depend_on_the_units():
    """Truth and samples in other units (times c): every density divides by c, so the
    log-likelihood per pixel drops by exactly log c; the jitter scales with the data range."""
    rng = np.random.default_rng(4)
    samples = rng.normal(size=(300, 4, 4)) * 0.05 + np.linspace(0, 1, 16).reshape(4, 4)
    truth = samples[0] + 0.01
    c = 1e-3  # a scan in 1/mm: std 5e-5, far below an absolute jitter of 1e-6 in variance
    for patch in (1, 2):
        assert metrics.patch_log_likelihood(c * truth, c * samples[1:], patch) == pytest.approx(
            metrics.patch_log_likelihood(truth, samples[1:], patch) - np.log(c), abs=1e-9)


def test_masked_scores_leave_the_outside_out():
    """Scored inside a mask, the metrics equal those of the pixels (and whole 2x2 patches)
    inside it, however wrong the outside is: a field of view's unmeasured corners drop out."""
    from ctbayes.uncertainty import uncertainty_metrics

    rng = np.random.default_rng(3)
    samples = rng.normal(size=(500, 4, 6))
    mean, std = samples.mean(0), samples.std(0, ddof=1)
    truth = rng.normal(size=(4, 6))
    truth[:, 3:] += 50.0  # far outside every interval
    mask = np.zeros((4, 6), bool)
    mask[:, :3] = True  # whole 2x2 patches: columns 0-1; column 2 is in no whole patch
    scores = uncertainty_metrics(truth, mean, std, samples, mask=mask)
    assert scores["log_likelihood"] == pytest.approx(
        norm.logpdf(truth[:, :3], mean[:, :3], std[:, :3]).mean())
    assert scores["patch_log_likelihood_2"] == pytest.approx(
        metrics.patch_log_likelihood(truth[:, :2], samples[..., :2], 2))
    assert scores["coverage_95"] == pytest.approx(metrics.coverage(
        truth[:, :3], mean[:, :3], std[:, :3])[0.95])
    assert uncertainty_metrics(truth, mean, std, samples)["coverage_95"] <= 0.5
