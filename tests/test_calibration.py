"""The calibration of std maps (`ctbayes.calibration`): the edge term's maximum-likelihood
fit recovers known parameters, and the calibrated samples have the calibrated std."""

import numpy as np
import pytest
from scipy import ndimage

from ctbayes.calibration import (calibrated_samples, calibrated_std, fit_scale_and_edge,
                                 unscaled_std)
from ctbayes.metrics import edge_strength
from ctbayes.phantoms import make_phantom


def _scans(scale, edge, count=4, size=64):
    """Images with sharp and soft edges, a smooth positive std map, and truths drawn from
    N(mean, calibrated_std(std, mean, scale, edge)^2)."""
    rng = np.random.default_rng(0)
    scans = []
    for seed in range(count):
        mean = ndimage.gaussian_filter(make_phantom("ellipses", size, seed), 0.7)
        std = 0.01 * np.exp(ndimage.gaussian_filter(rng.standard_normal((size, size)), 4) * 3)
        truth = mean + calibrated_std(std, mean, scale, edge) * rng.standard_normal(mean.shape)
        scans.append((truth, mean, std, None))
    return scans


def test_edge_strength_is_the_gradient_in_units_per_pixel():
    ramp = np.tile(np.arange(16.0) * 0.25, (16, 1))  # 0.25 per pixel along the columns
    np.testing.assert_allclose(edge_strength(ramp)[2:-2, 2:-2], 0.25, rtol=1e-12)


def test_fit_recovers_a_known_scale_and_edge_std():
    scale, edge = fit_scale_and_edge(_scans(2.0, 0.15))
    assert scale == pytest.approx(2.0, rel=0.05)
    assert edge == pytest.approx(0.15, rel=0.08)


def test_without_edge_errors_the_fit_is_the_pooled_rms_z_score():
    scans = _scans(1.5, 0.0)
    scale, edge = fit_scale_and_edge(scans)
    pooled = np.sqrt(np.mean([np.mean(((t - m) / s) ** 2) for t, m, s, _ in scans]))
    assert edge < 0.01  # an edge std of 0.01 px would add under 1% to any std here
    assert scale == pytest.approx(pooled, rel=0.02)
    assert scale == pytest.approx(1.5, rel=0.05)


def _with_noisy_truths(scans, seed=2):
    """The scans' truths plus noise of a known, smoothly varying variance v: (..., v)."""
    rng = np.random.default_rng(seed)
    noisy = []
    for truth, mean, std, mask in scans:
        v = (0.02 * np.exp(ndimage.gaussian_filter(rng.standard_normal(mean.shape), 6) * 2)) ** 2
        noisy.append((truth + np.sqrt(v) * rng.standard_normal(mean.shape), mean, std, mask, v))
    return noisy


def test_fit_allows_for_a_noisy_truth():
    """Truths with noise of known variance v on top (a noisy reference): told v, the fit
    recovers the scale and edge std, and the scale alone when asked for it; not told, the
    scale absorbs the noise and comes out too large."""
    noisy = _with_noisy_truths(_scans(2.0, 0.15))
    scale, edge = fit_scale_and_edge(noisy)
    assert scale == pytest.approx(2.0, rel=0.05) and edge == pytest.approx(0.15, rel=0.1)
    assert fit_scale_and_edge([item[:4] for item in noisy])[0] > 2.2
    alone, none = fit_scale_and_edge(_with_noisy_truths(_scans(1.5, 0.0)), edge=False)
    assert none == 0.0 and alone == pytest.approx(1.5, rel=0.05)


def test_calibrated_samples_have_the_calibrated_std_and_it_can_be_undone():
    rng = np.random.default_rng(1)
    mean = make_phantom("rectangles", 32, 0).astype(np.float32)
    std = np.full(mean.shape, 0.02, np.float32)
    samples = mean + std * rng.standard_normal((4000,) + mean.shape).astype(np.float32)
    target = calibrated_std(std, mean, 1.7, 0.2)
    drawn = calibrated_samples(samples, mean, 1.7, 0.2, seed=3)
    np.testing.assert_allclose(drawn.std(0), target, rtol=0.08)
    assert (target > 1.7 * std + 1e-3).any()  # the edges widen it
    np.testing.assert_allclose(unscaled_std(target, mean, 1.7, 0.2), std, rtol=1e-4)
    np.testing.assert_array_equal(calibrated_samples(samples[:3], mean, 1.0, 0.0), samples[:3])
