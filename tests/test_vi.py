"""Bayesian neural networks by SVI: priors by name, guides, the chunked training loop, the
batched predictive, the metrics and the worked examples (Gamma, two moons, breast cancer)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from flax import nnx
from numpyro.infer import SVI

from ctbayes.errors import InputError
from ctbayes.vi import (MLP, TrainConfig, classification_metrics, classifier_model, ece, fit,
                        make_guide, make_loss, name_prior, nll, one_cycle_with_plateau, predict,
                        reliability_curve, reliability_diagram, roc_auc)
from ctbayes.vi import datasets
from tests.conftest import run_quick_notebook

PRIOR = name_prior({"bias$": dist.Normal(0.0, 1.0), "kernel$": dist.SoftLaplace(0.0, 1.0)})
QUIET = dict(progress=False)


# -- metrics against independent definitions ------------------------------------------------
def test_metrics_match_definitions_and_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.5 * y + 0.5 * rng.random(300), 0, 1)
    p[:20] = 0.5  # ties
    # AUC: the fraction of (positive, negative) pairs ordered correctly, ties counting 1/2.
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert roc_auc(p, y) == pytest.approx(pairs, abs=1e-12)
    assert nll(p, y) == pytest.approx(-np.mean(np.log(np.where(y == 1, p, 1 - p))), rel=1e-9)
    # A perfectly calibrated predictor has a small ECE; an overconfident one a large one.
    q = rng.random(20000)
    labels = rng.random(20000) < q
    assert ece(q, labels) < 0.02
    assert ece(np.where(q > 0.5, 1.0, 0.0), labels) > 0.2
    conf, acc, counts = reliability_curve(q, labels, bins=5)
    assert counts.sum() == 20000 and list(counts[:2]) == [0, 0]  # confidence is >= 1/2
    assert np.all(np.abs(acc - conf)[2:] < 0.03)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert roc_auc(p, y) == pytest.approx(sklearn.roc_auc_score(y, p), abs=1e-12)
    k = rng.dirichlet(np.ones(4), 200)
    yk = rng.integers(0, 4, 200)
    assert roc_auc(k, yk) == pytest.approx(sklearn.roc_auc_score(yk, k, multi_class="ovr"), 1e-9)
    assert nll(k, yk) == pytest.approx(sklearn.log_loss(yk, k), rel=1e-9)
    fig = reliability_diagram(q, labels)
    assert len(fig.axes) == 1
    with pytest.raises(InputError, match="do not match"):
        nll(p[:5], y)


def test_name_prior_and_bad_settings():
    prior = name_prior({"bias$": dist.Normal(0.0, 2.0)})
    assert prior("layers.0.bias", (3,)).scale == 2.0
    with pytest.raises(InputError, match="layers.0.kernel"):
        prior("layers.0.kernel", (2, 3))
    with pytest.raises(InputError, match="Guide kind"):
        make_guide(lambda: None, "laplace")
    with pytest.raises(InputError, match="ELBO kind"):
        make_loss("renyi")
    with pytest.raises(InputError, match="activation"):
        MLP(2, [3], 1, activation="sine", rngs=nnx.Rngs(0))
    with pytest.raises(InputError, match="patience"):
        TrainConfig(patience=0)


def _innermost(d):
    while hasattr(d, "base_dist"):  # Independent(Expanded(base))
        d = d.base_dist
    return d


def test_bnn_sites_are_named_by_parameter_path():
    mlp = MLP(2, [4, 3], 1, rngs=nnx.Rngs(0))
    model = classifier_model(mlp, PRIOR)
    trace = numpyro.handlers.trace(numpyro.handlers.seed(model, 0)).get_trace(jnp.ones((5, 2)))
    kinds = {name: type(_innermost(site["fn"])).__name__ for name, site in trace.items()
             if site["type"] == "sample" and name != "y"}
    assert kinds == {f"net/layers.{i}.{p}": "Normal" if p == "bias" else "SoftLaplace"
                     for i in range(3) for p in ("bias", "kernel")}
    assert trace["probs"]["value"].shape == (5,)


# -- Gamma concentration: a known one-dimensional posterior ---------------------------------
def gamma_model(x):
    alpha = numpyro.sample("alpha", dist.HalfNormal(10.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("x", dist.Gamma(alpha, 1.0), obs=x)


def gamma_guide(x):
    """A log-normal guide: a Normal pushed through exp."""
    loc = numpyro.param("loc", 0.0)
    scale = numpyro.param("scale", 0.5, constraint=dist.constraints.positive)
    numpyro.sample("alpha", dist.TransformedDistribution(dist.Normal(loc, scale),
                                                         dist.transforms.ExpTransform()))


def test_gamma_concentration_is_recovered():
    true_alpha = 3.5
    x = jax.random.gamma(jax.random.key(0), true_alpha, (1000,))
    svi = SVI(gamma_model, gamma_guide, optax.adam(0.05), make_loss("meanfield", 4))
    result = fit(svi, jax.random.key(1), x, config=TrainConfig(steps=1500, chunk=500, **QUIET))
    mean = float(np.exp(result.params["loc"] + result.params["scale"] ** 2 / 2))
    assert abs(mean - true_alpha) / true_alpha < 0.05
    # The posterior std of alpha is about 1/sqrt(n * trigamma(alpha)) (Fisher information).
    fisher_sd = 1 / np.sqrt(1000 * jax.scipy.special.polygamma(1, true_alpha))
    sd = mean * float(result.params["scale"])
    assert 0.5 * fisher_sd < sd < 2 * fisher_sd


# -- two moons ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moons():
    x, y = datasets.two_moons(600, noise=0.1, seed=0)
    data = datasets.split(x, y, seed=0, standardise=False)
    mlp = MLP(2, [4, 3], 1, activation="tanh", rngs=nnx.Rngs(0))
    model = classifier_model(mlp, PRIOR)
    guide = make_guide(model, "normal")
    svi = SVI(model, guide, optax.adam(2e-2), make_loss("trace", 1))
    config = TrainConfig(steps=3000, chunk=500, patience=2, **QUIET)
    result = fit(svi, jax.random.key(0), data.x_train, data.y_train, config=config,
                 validation=(data.x_val, data.y_val), batch_size=64)
    return data, model, guide, result


def test_two_moons_auc_and_training_loop(moons):
    data, model, guide, result = moons
    probs = predict(model, guide, result.params, data.x_test, jax.random.key(1), num_samples=200)
    metrics = classification_metrics(probs.mean(0), data.y_test)
    assert metrics["auc"] >= 0.98 and metrics["accuracy"] >= 0.95
    # The loop: losses fall, the best validation state is the one returned.
    assert result.losses[-200:].mean() < result.losses[:200].mean() / 2
    best = int(np.argmin(result.val_losses))
    assert result.best_step == result.val_steps[best]
    assert len(result.losses) == result.val_steps[-1]


def test_predictive_std_grows_away_from_the_data(moons):
    data, model, guide, result = moons
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    far = (np.array([0.5, 0.25]) + 8 * np.stack([np.cos(angles), np.sin(angles)], 1)).astype(np.float32)
    std_far = predict(model, guide, result.params, far, jax.random.key(2), num_samples=300).std(0)
    std_near = predict(model, guide, result.params, data.x_test, jax.random.key(2),
                       num_samples=300).std(0)
    assert std_far.mean() > 1.3 * std_near.mean()  # 1.6x with this seed


def test_predict_is_the_same_in_any_chunks(moons):
    data, model, guide, result = moons
    whole = predict(model, guide, result.params, data.x_test, jax.random.key(3), num_samples=30,
                    sample_chunk=30, data_chunk=None)
    chunked = predict(model, guide, result.params, data.x_test, jax.random.key(3), num_samples=30,
                      sample_chunk=7, data_chunk=50)
    assert whole.shape == (30, len(data.y_test))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_early_stopping_restores_the_best_state(moons):
    data, model, guide, _ = moons
    svi = SVI(model, guide, optax.adam(2e-2), make_loss("trace", 1))
    calls = iter([5.0, 3.0, 4.0, 4.5, 6.0, 1.0])  # best at the second check, then no gain
    result = fit(svi, jax.random.key(0), data.x_train, data.y_train, batch_size=64,
                 config=TrainConfig(steps=600, chunk=100, patience=3, **QUIET),
                 validation=lambda params, key: next(calls))
    assert result.stopped_early and list(result.val_steps) == [100, 200, 300, 400, 500]
    assert result.best_step == 200 and len(result.losses) == 500


def test_schedules_and_guides_run():
    x, y = datasets.two_moons(200, seed=1)
    mlp = MLP(2, [4], 1, rngs=nnx.Rngs(1))
    model = classifier_model(mlp, PRIOR)
    for kind in ("lowrank", "iaf"):
        guide = make_guide(model, kind)
        svi = SVI(model, guide, one_cycle_with_plateau(400, 2e-2, accumulation_size=20),
                  make_loss("trace", 2))
        result = fit(svi, jax.random.key(0), x, y, config=TrainConfig(steps=400, chunk=200, **QUIET))
        assert np.isfinite(result.losses).all()
        assert result.losses[-50:].mean() < result.losses[:50].mean()


# -- real data: MAP vs AutoNormal vs low rank -------------------------------------------------
def test_breast_cancer_map_normal_lowrank():
    pytest.importorskip("sklearn")
    data = datasets.load_sklearn("breast_cancer", seed=0)
    mlp = MLP(30, [8], 1, rngs=nnx.Rngs(0))
    model = classifier_model(mlp, name_prior({"bias$": dist.Normal(0.0, 1.0),
                                              "kernel$": dist.Normal(0.0, 0.5)}))
    results = {}
    for kind in ("delta", "normal", "lowrank"):
        guide = make_guide(model, kind)
        svi = SVI(model, guide, optax.adam(1e-2), make_loss("trace", 1))
        out = fit(svi, jax.random.key(0), data.x_train, data.y_train,
                  config=TrainConfig(steps=1500, chunk=500, **QUIET),
                  validation=(data.x_val, data.y_val))
        probs = predict(model, guide, out.params, data.x_test, jax.random.key(1), num_samples=100)
        results[kind] = classification_metrics(probs.mean(0), data.y_test)
    for kind, metrics in results.items():
        assert metrics["accuracy"] > 0.93, (kind, metrics)
        assert metrics["nll"] < 0.25 and metrics["ece"] < 0.1, (kind, metrics)


# -- the notebook, in quick mode -------------------------------------------------------------
@pytest.mark.slow  # about 3 minutes: each kernel pays NumPyro's eager start-up compiles again
def test_notebook_runs_in_quick_mode():
    _, text = run_quick_notebook("bnn_svi.ipynb", timeout=300)
    mean = float(text.split("posterior mean of alpha: ")[1].split()[0])
    assert abs(mean / 3.5 - 1) < 0.05
    assert "'auc'" in text and "noise variance" in text
