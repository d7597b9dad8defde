"""The mean-field variational posterior over DIP weights (`ctbayes.posteriors.mfvi`)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes.dip.fit import DIPConfig, fit_dip
from ctbayes.errors import InputError
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import shepp_logan
from ctbayes.posteriors.base import ImagePosterior
from ctbayes.simulate import default_geometry
from ctbayes.posteriors.mfvi import MFVIConfig, fit_mfvi, mfvi_posterior

SMALL_DIP = DIPConfig(iterations=150, channels=(8, 16, 16), skip_channels=(0, 2, 2),
                      warm_start=False, chunk=50)
CONFIG = MFVIConfig(iterations=60, chunk=30, std_samples=32)


@pytest.fixture(scope="module")
def problem():
    A = make_ray_transform(default_geometry(32, views=20))
    truth = np.asarray(shepp_logan(32), np.float32)
    clean = np.asarray(A(truth))
    noise = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    y = clean + 0.03 * np.abs(clean).mean() * noise
    fit = fit_dip(A, y, SMALL_DIP, progress=False)
    return A, y, fit, fit_mfvi(fit, A, y, CONFIG, jax.random.key(0))


def test_answers_the_posterior_interface(problem):
    A, y, fit, post = problem
    assert isinstance(post, ImagePosterior)
    assert post.mean().shape == fit.image.shape and post.std().shape == fit.image.shape
    assert np.all(np.asarray(post.std()) > 0)
    # Initialised at the fit and kept there by the data: the mean image stays close to it.
    rel = np.linalg.norm(post.mean() - fit.image) / np.linalg.norm(fit.image)
    assert rel < 0.1
    samples = post.sample(jax.random.key(1), 64)
    assert samples.shape == (64, 32, 32)
    # The sample mean agrees with the mean within a few Monte Carlo standard errors.
    gap = np.abs(samples.mean(0) - post.mean()) / (np.asarray(post.std()) / 8)
    assert np.mean(gap < 4) > 0.95
    # The residual noise estimate is the DIP's residual variance.
    assert post.noise_variance == pytest.approx(float(jnp.mean((A(fit.image) - y) ** 2)), rel=1e-5)
    assert np.all(np.isfinite(post.history)) and len(post.history) == CONFIG.iterations


def test_predictive_samples_are_candidate_projections_of_samples(problem):
    A, y, fit, post = problem
    A_candidate = make_ray_transform(default_geometry(32, views=5, arc_degrees=90))
    key = jax.random.key(2)
    predictive = post.predictive_samples(key, 6, A_candidate)
    assert predictive.shape == (6, *A_candidate.range_shape)
    expected = jax.vmap(A_candidate)(post.sample(key, 6))
    np.testing.assert_allclose(predictive, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="candidate"):
        post.predictive_samples(key, 2, make_ray_transform(default_geometry(16, views=5)))


def test_std_grows_when_the_data_constrain_less(problem):
    """With a noise variance 100 times larger the likelihood binds the weights less: the
    weight and image std grow towards the prior's (the mean image std by 1.95x with jax
    0.10.2; 1.5x is far outside the Monte Carlo error of either std)."""
    A, y, fit, post = problem
    loose = fit_mfvi(fit, A, y, dataclasses.replace(CONFIG, noise_variance=100 * post.noise_variance),
                     jax.random.key(0))
    assert np.mean(loose.std()) > 1.5 * np.mean(post.std())
    tight_w = jax.tree.leaves(post.weight_std())
    loose_w = jax.tree.leaves(loose.weight_std())
    assert sum(float(jnp.sum(w)) for w in loose_w) > 1.02 * sum(float(jnp.sum(w)) for w in tight_w)
    # Loosely bound weights sit near their prior std (prior_scale times the tensor's rms).
    rms = [max(float(jnp.sqrt(jnp.mean(t ** 2))), 1e-2) for t in jax.tree.leaves(fit.params)]
    ratio = np.concatenate([np.ravel(w) / (CONFIG.prior_scale * s) for w, s in zip(loose_w, rms)])
    assert 0.5 < np.median(ratio) < 1.05


def test_entry_point_and_bad_settings(problem):
    A, y, fit, post = problem
    with pytest.raises(InputError, match="prior_mean"):
        MFVIConfig(prior_mean="median")
    with pytest.raises(InputError, match="lr"):
        MFVIConfig(lr=0)
    with pytest.raises(InputError, match="sinogram has shape"):
        fit_mfvi(fit, A, y[:3], CONFIG)
    same = mfvi_posterior(fit, A, y, samples=8, seed=0, config=CONFIG)
    assert same.config.std_samples == 8
    np.testing.assert_allclose(same.mean(), fit_mfvi(fit, A, y, same.config,
                                                     jax.random.key(0)).mean(), rtol=1e-6)
