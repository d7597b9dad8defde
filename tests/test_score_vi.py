"""Score-based VI: known Gaussian posteriors, unbiased minibatch scores, the DIP posterior."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes.errors import InputError
from ctbayes.posteriors.base import ImagePosterior
from ctbayes.score_vi import baselines, evaluation, problems
from ctbayes.score_vi.families import DiagonalGaussian, LowRankGaussian, RealNVP, make_family
from ctbayes.score_vi.proximal import ProximalConfig, proximal_score_matching
from ctbayes.score_vi.runner import run_method
from ctbayes.score_vi.targets import density_target
from tests.conftest import run_quick_notebook

ROOT = Path(__file__).resolve().parents[1]


def _gaussian(dim=5, rank=2, seed=0):
    """A correlated Gaussian whose covariance is rank-2 plus diagonal."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(dim, rank))
    cov = w @ w.T + np.diag(rng.uniform(0.2, 1.0, dim))
    mean = 3 * rng.normal(size=dim)
    precision = np.linalg.inv(cov)
    target = density_target(lambda t: -0.5 * (t - mean) @ precision @ (t - mean), dim)
    return target, mean, cov, precision


def _fit(target, family, key=1, **settings):
    config = ProximalConfig(**settings)
    run = run_method(proximal_score_matching(target, family, config), jax.random.key(key),
                     config.steps, chunk=config.steps)
    return run.state[0]


def test_diagonal_family_matches_mean_and_inverse_precision_diagonal():
    """Score matching's best diagonal fit of a Gaussian: the exact mean, variances
    1/diag(Precision) -- not the marginal variances diag(Covariance)."""
    target, mean, cov, precision = _gaussian()
    family = DiagonalGaussian(target.dim)
    params = _fit(target, family, steps=1500, samples=32, lr=3e-2, init_std=1.0)
    np.testing.assert_allclose(family.mean(params), mean, atol=0.1)
    variance = np.asarray(family.variance(params))
    expected = 1 / np.diag(precision)
    np.testing.assert_allclose(variance, expected, rtol=0.15)
    distinct = np.diag(cov) > 1.2 * expected  # where the two candidate answers differ
    assert distinct.sum() >= 3
    assert np.all(np.abs(variance - expected)[distinct] < np.abs(variance - np.diag(cov))[distinct])


def test_low_rank_family_recovers_a_representable_covariance():
    target, mean, cov, _ = _gaussian()
    family = LowRankGaussian(target.dim, rank=2)
    params = _fit(target, family, steps=1500, samples=16, lr=3e-2, init_std=1.0)
    np.testing.assert_allclose(family.mean(params), mean, atol=1e-3)
    np.testing.assert_allclose(family.covariance(params), cov, atol=1e-2 * np.abs(cov).max())


def test_flow_family_approximates_a_gaussian_target():
    target, mean, cov, _ = _gaussian()
    family = RealNVP(target.dim, layers=4, hidden=16)
    params = _fit(target, family, steps=1500, samples=16, lr=1e-2, init_std=1.0)
    draws = np.asarray(family.sample(params, jax.random.key(3), 20000))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.3)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.15 * np.abs(cov).max())
    # its density is normalised and matches its sampler: E_q[log q] = -entropy estimate agrees
    log_q = jax.vmap(family.log_prob, in_axes=(None, 0))(params, jnp.asarray(draws[:2000]))
    gauss_entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * np.cov(draws.T))[1]
    assert abs(-float(log_q.mean()) - gauss_entropy) < 0.3


@pytest.fixture(scope="module")
def regression():
    problem = problems.linear_regression(n=200, d=4)
    return problem, problem.target(), *problem.posterior()


def test_minibatch_score_is_unbiased(regression):
    problem, _, _, _ = regression
    target = problem.target(batch_size=10)
    theta = target.init + 0.3
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: target.score(theta, k))(keys))
    full = np.asarray(target.full_score(theta))
    se = draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - full) < 4 * se)
    # the test has power: dropping the N/B scaling is detected
    prior = np.asarray(jax.grad(lambda t: -0.5 * jnp.sum(t ** 2))(theta))
    unscaled = prior + (draws - prior) * 10 / 200
    assert np.any(np.abs(unscaled.mean(0) - full) > 4 * se)


def test_bam_and_gsm_recover_the_linear_regression_posterior(regression):
    _, target, mean, cov = regression
    for method in (baselines.bam(target, baselines.GaussianBaselineConfig(samples=16, prox=100.0, init_std=1.0)),
                   baselines.gsm(target, baselines.GaussianBaselineConfig(samples=16, init_std=1.0))):
        state = run_method(method, jax.random.key(0), 60, chunk=60).state
        np.testing.assert_allclose(state[0], mean, atol=1e-3, err_msg=method.name)
        np.testing.assert_allclose(state[1], cov, rtol=1e-2, atol=1e-5, err_msg=method.name)


def test_low_rank_bam_projection_is_exact_for_a_representable_covariance():
    _, _, cov, _ = _gaussian()
    factor, diag = baselines.project_low_rank(jnp.asarray(cov), 2, iterations=200)
    np.testing.assert_allclose(factor @ factor.T + np.diag(diag), cov, atol=1e-3)


def test_score_vi_and_advi_on_linear_regression(regression):
    """Diagonal score-VI and ADVI (mean field) both recover the posterior mean and the
    variances 1/diag(Precision) (the best diagonal fit for either divergence here)."""
    _, target, mean, cov = regression
    sd = np.sqrt(np.diag(cov))
    family = DiagonalGaussian(target.dim)
    params = _fit(target, family, steps=1000, samples=16, lr=1e-2)
    np.testing.assert_allclose(family.mean(params), mean, atol=0.5 * sd.min())
    np.testing.assert_allclose(family.variance(params), 1 / np.diag(np.linalg.inv(cov)), rtol=0.2)

    problem = problems.linear_regression(n=200, d=4)
    method = baselines.advi(problem.model, target, lr=1e-2, steps=3000, final_lr=0.01)
    loc, std = method.moments(run_method(method, jax.random.key(0), 3000, chunk=3000).state)
    np.testing.assert_allclose(loc, mean, atol=0.05 * np.abs(mean).max())
    ratio = std ** 2 * np.diag(np.linalg.inv(cov))  # one-particle ADVI: noisy variances
    assert np.all((ratio > 0.5) & (ratio < 2.0))


def test_metrics_of_known_predictives():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)  # calibrated: correct with probability conf
    labels = np.where(rng.uniform(size=conf.size) < conf, 0, 1)
    probs = np.stack([conf, 1 - conf], 1)
    assert evaluation.classification_ece(probs, labels) < 0.02
    assert evaluation.classification_ece(probs, 1 - labels) > 0.5
    assert evaluation.quantile_ece(rng.uniform(size=20000)) < 0.01
    assert evaluation.quantile_ece(rng.uniform(size=20000) ** 3) > 0.1


def test_bad_settings_raise_input_error():
    with pytest.raises(InputError):
        ProximalConfig(prox=0.0)
    with pytest.raises(InputError):
        make_family("gaussian-mixture", 3)
    with pytest.raises(InputError):
        LowRankGaussian(3, rank=5)
    target, *_ = _gaussian()
    with pytest.raises(InputError):
        proximal_score_matching(target, DiagonalGaussian(target.dim + 1))


# -- the DIP posterior ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dip_problem():
    from ctbayes.dip.fit import DIPConfig, fit_dip
    from ctbayes.operators import make_ray_transform
    from ctbayes.phantoms import shepp_logan
    from ctbayes.simulate import default_geometry, simulate_scan

    geometry = default_geometry(16, views=8)
    A = make_ray_transform(geometry)
    y = np.asarray(simulate_scan(shepp_logan(16), geometry, seed=0).sinogram, np.float32)
    config = DIPConfig(scales=2, channels=4, skip_channels=2, in_channels=2, iterations=40,
                       warm_start=False, chunk=20)
    return geometry, A, y, fit_dip(A, y, config, progress=False)


def test_view_groups_project_exactly_the_views_of_each_group(dip_problem):
    from ctbayes.posteriors.score_vi import ViewGroups

    _, A, y, fit = dip_problem
    groups = ViewGroups(A, y, 3)  # 8 views in groups of 3, 3, 2 (padded)
    x = jnp.asarray(fit.image)
    full = np.asarray(A(x)).reshape(A.range_shape)
    seen = []
    for g in range(3):
        views = np.arange(g, 8, 3)
        rows = np.asarray(groups.project(x, g)).reshape(-1, A.range_shape[1])
        np.testing.assert_allclose(rows[: views.size], full[views], rtol=1e-5, atol=1e-5)
        assert np.all(rows[views.size:] == 0)
        seen.extend(views)
    assert sorted(seen) == list(range(8))


def test_score_vi_dip_posterior_answers_the_posterior_interface(dip_problem):
    from ctbayes.operators import make_ray_transform
    from ctbayes.posteriors.score_vi import ScoreVIConfig, score_vi_posterior

    geometry, A, y, fit = dip_problem
    config = ScoreVIConfig(steps=20, view_groups=2, moment_samples=8, sample_chunk=4)
    posterior = score_vi_posterior(fit, A, y, config=config, seed=0)
    assert isinstance(posterior, ImagePosterior)
    key = jax.random.key(1)
    samples = posterior.sample(key, 5)
    assert samples.shape == (5, 16, 16)
    np.testing.assert_array_equal(samples, posterior.sample(key, 5))
    assert not np.allclose(samples[0], samples[1])
    std = np.asarray(posterior.std())
    assert std.shape == (16, 16) and np.all(std > 0)
    # the posterior is centred on the fit: its mean is much closer to the fit than the spread
    # of the image itself
    assert np.abs(np.asarray(posterior.mean()) - fit.image).mean() < 0.1 * np.abs(fit.image).mean()
    A_c = make_ray_transform(geometry.with_angles(np.linspace(0.1, 3.0, 5)))
    predictive = posterior.predictive_samples(key, 5, A_c)
    assert predictive.shape == (5, *A_c.range_shape)
    np.testing.assert_allclose(predictive, A_c(samples), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError):
        score_vi_posterior(fit, A, y[:-1], config=config)


# -- the notebook -----------------------------------------------------------------------------
def test_notebook_runs_in_quick_mode():
    pytest.importorskip("sklearn")
    _, outputs = run_quick_notebook("score_vi.ipynb", timeout=120)
    assert "score-vi" in outputs and "advi" in outputs
