"""Benchmark and test problems: small Bayesian neural networks and Bayesian linear regression.

Each `Problem` holds a NumPyro model `model(x, y)`, standardised train/test data and the
network `forward(params, x)` (logits, or the regression mean), so every method is scored on
the same predictive. Data sets: two moons (synthetic), scikit-learn's breast_cancer and digits
(classification) and diabetes (regression); scikit-learn is needed for all but the
synthetic ones. `digits_wide` (64-160-10, 12,010 weights) and `digits_deep`
(64-300-300-10, 112,810 weights) test the methods at the sizes score-based VI was made for.
Models are tanh MLPs with N(0, prior_scale^2) weights; regression adds a noise
scale sigma ~ HalfNormal(1) (a constrained site: it exercises the unconstraining transform).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ctbayes.errors import InputError
from ctbayes.score_vi.targets import numpyro_target

KINDS = ("classification", "regression")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    name: str
    kind: str
    model: Callable
    forward: Callable  # (constrained params dict, x) -> logits (n, C) or mean (n,)
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    batch_size: int

    def target(self, seed: int = 0):
        """The problem's posterior as a score-VI `Target`."""
        return numpyro_target(self.model, self.x_train, self.y_train, self.batch_size, seed)


def mlp_forward(params, x, layers: int):
    """The MLP's outputs for inputs x under the weights `params` (`layers` layers)."""
    h = x
    for i in range(layers):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < layers - 1:
            h = jnp.tanh(h)
    return h


def bnn_model(sizes: tuple[int, ...], kind: str, prior_scale: float = 1.0):
    """A NumPyro tanh-MLP model(x, y) with layer sizes `sizes` (inputs first)."""
    if kind not in KINDS:
        raise InputError(f"Unknown problem kind {kind!r}; expected one of {', '.join(KINDS)}.")
    layers = len(sizes) - 1

    def model(x, y=None):
        params = {}
        for i in range(layers):
            scale = prior_scale / np.sqrt(sizes[i]) if i > 0 else prior_scale
            params[f"w{i}"] = numpyro.sample(f"w{i}", dist.Normal(0.0, scale).expand([sizes[i], sizes[i + 1]]).to_event(2))
            params[f"b{i}"] = numpyro.sample(f"b{i}", dist.Normal(0.0, prior_scale).expand([sizes[i + 1]]).to_event(1))
        out = mlp_forward(params, x, layers)
        if kind == "classification":
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("obs", dist.Categorical(logits=out), obs=y)
        else:
            sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
            with numpyro.plate("data", x.shape[0]):
                numpyro.sample("obs", dist.Normal(out[:, 0], sigma), obs=y)

    def forward(params, x):
        out = mlp_forward(params, x, layers)
        return out if kind == "classification" else out[:, 0]

    return model, forward


def _split_standardise(x, y, test_fraction, seed, regression):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    x = ((x - mu) / sd).astype(np.float32)
    if regression:
        y = ((y - y[train].mean()) / y[train].std()).astype(np.float32)
    else:
        y = y.astype(np.int32)
    return x[train], y[train], x[test], y[test]


def _sklearn():
    try:
        import sklearn.datasets as datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError("This problem needs scikit-learn: pip install scikit-learn.") from exc
    return datasets


def _problem(name, kind, x, y, hidden, batch_size, seed, test_fraction=0.3):
    """hidden: one width, or a tuple of widths (one per hidden layer)."""
    n_out = int(y.max()) + 1 if kind == "classification" else 1
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    model, forward = bnn_model((x.shape[1], *widths, n_out), kind)
    splits = _split_standardise(x, y, test_fraction, seed, kind == "regression")
    return Problem(name, kind, model, forward, *splits, min(batch_size, len(splits[0])))


def two_moons(n: int = 600, noise: float = 0.2, hidden: int = 16, batch_size: int = 64, seed: int = 0):
    """Two interleaving half circles (scikit-learn's make_moons), a 2-16-2 BNN classifier."""
    x, y = _sklearn().make_moons(n, noise=noise, random_state=seed)
    return _problem("two_moons", "classification", x, y, hidden, batch_size, seed, test_fraction=0.5)


def breast_cancer(hidden: int = 8, batch_size: int = 64, seed: int = 0):
    """scikit-learn's breast_cancer (569 x 30, binary), a 30-8-2 BNN classifier."""
    data = _sklearn().load_breast_cancer()
    return _problem("breast_cancer", "classification", data.data, data.target, hidden, batch_size, seed)


def digits(hidden: int = 16, batch_size: int = 128, seed: int = 0):
    """scikit-learn's digits (1797 x 64, 10 classes), a 64-16-10 BNN classifier."""
    data = _sklearn().load_digits()
    return _problem("digits", "classification", data.data, data.target, hidden, batch_size, seed)


def digits_wide(hidden: int = 160, batch_size: int = 128, seed: int = 0):
    """scikit-learn's digits with a 64-160-10 BNN classifier (12,010 weights)."""
    data = _sklearn().load_digits()
    return _problem("digits_wide", "classification", data.data, data.target, hidden, batch_size, seed)


def digits_deep(hidden: tuple[int, ...] = (300, 300), batch_size: int = 128, seed: int = 0):
    """scikit-learn's digits with a 64-300-300-10 BNN classifier (112,810 weights)."""
    data = _sklearn().load_digits()
    return _problem("digits_deep", "classification", data.data, data.target, hidden, batch_size, seed)


def diabetes(hidden: int = 16, batch_size: int = 64, seed: int = 0):
    """scikit-learn's diabetes (442 x 10, regression), a 10-16-1 BNN with a learned noise scale."""
    data = _sklearn().load_diabetes()
    return _problem("diabetes", "regression", data.data, data.target, hidden, batch_size, seed)


PROBLEMS = {"two_moons": two_moons, "breast_cancer": breast_cancer, "digits": digits,
            "diabetes": diabetes, "digits_wide": digits_wide, "digits_deep": digits_deep}


@dataclasses.dataclass(frozen=True, eq=False)
class LinearRegression:
    """Bayesian linear regression y ~ N(X w, noise^2), w ~ N(0, prior^2 I): a known posterior."""

    x: np.ndarray
    y: np.ndarray
    noise: float
    prior: float

    def model(self, x, y=None):
        """The NumPyro model of the regression."""
        w = numpyro.sample("w", dist.Normal(0.0, self.prior).expand([x.shape[1]]).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(x @ w, self.noise), obs=y)

    def posterior(self):
        """Exact posterior mean and covariance of w."""
        precision = self.x.T @ self.x / self.noise ** 2 + np.eye(self.x.shape[1]) / self.prior ** 2
        cov = np.linalg.inv(precision)
        return cov @ self.x.T @ self.y / self.noise ** 2, cov

    def target(self, batch_size: int | None = None, seed: int = 0):
        """The exact posterior's log density as a score-VI `Target`."""
        return numpyro_target(self.model, self.x, self.y, batch_size, seed)


def linear_regression(n: int = 200, d: int = 4, noise: float = 0.5, prior: float = 1.0,
                      seed: int = 0) -> LinearRegression:
    """A random correlated design, so the posterior covariance is not diagonal."""
    rng = np.random.default_rng(seed)
    mix = np.eye(d) + 0.6 * rng.standard_normal((d, d))
    x = (rng.standard_normal((n, d)) @ mix).astype(np.float32)
    w = rng.standard_normal(d)
    y = (x @ w + noise * rng.standard_normal(n)).astype(np.float32)
    return LinearRegression(x, y, noise, prior)

