"""Targets of score-based VI: a log density on a flat parameter vector and its minibatch score.

A `Target` holds a log density log p(theta | batch) of a flat unconstrained vector theta and
the data it is evaluated on. Its minibatch score is

    s(theta) = grad log p(theta) + (N / B) sum_{i in batch} grad log p(y_i | x_i, theta),

with the B indices drawn uniformly without replacement, an unbiased estimate of the full-data
score grad log p(theta | all data). Without data the score is exact.

`numpyro_target` builds one from any NumPyro model `model(x, y)` whose observed sites are
indexed by the data along their leading axis: the unconstrained log density (with the
log-Jacobians of the constraining transforms) comes from `numpyro.infer.util.potential_energy`,
and the minibatch scaling N/B multiplies the observed sites only (a small effect handler).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_median
from numpyro.infer.util import constrain_fn, initialize_model, potential_energy

from ctbayes.errors import InputError


class scale_observed(numpyro.primitives.Messenger):
    """Multiply the log likelihood of observed sites (only) by `factor`."""

    def __init__(self, fn=None, factor: float = 1.0):
        self.factor = factor
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg.get("is_observed"):
            msg["scale"] = self.factor if msg.get("scale") is None else self.factor * msg["scale"]


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """log_density(theta, x_batch, y_batch): log prior + (N / B) * batch log likelihood for
    a flat theta (D,), with B = x_batch.shape[0] (x, y None: no data, exact density).

    dim: D. x, y: the training data (or None). batch_size: B (N when not minibatching).
    init: a starting point (D,). constrain: theta -> the model's constrained parameter dict.
    """

    log_density: Callable
    dim: int
    x: jax.Array | None = None
    y: jax.Array | None = None
    batch_size: int | None = None
    init: jax.Array | None = None
    constrain: Callable | None = None

    @property
    def n_data(self) -> int:
        """The number of data points the log density sums over."""
        return 0 if self.x is None else int(self.x.shape[0])

    def batch(self, key):
        """A minibatch (x_b, y_b) drawn without replacement (the whole data when B = N)."""
        if self.x is None:
            return None, None
        if self.batch_size >= self.n_data:
            return self.x, self.y
        idx = jax.random.choice(key, self.n_data, (self.batch_size,), replace=False)
        return self.x[idx], self.y[idx]

    def score(self, theta, key):
        """Minibatch scores of one theta (D,) or of a stack (S, D); one batch for the stack."""
        x_b, y_b = self.batch(key)
        grad = jax.grad(self.log_density)
        if theta.ndim == 1:
            return grad(theta, x_b, y_b)
        return jax.vmap(grad, in_axes=(0, None, None))(theta, x_b, y_b)

    def full_score(self, theta):
        """The exact score on all the data."""
        grad = jax.grad(self.log_density)
        if theta.ndim == 1:
            return grad(theta, self.x, self.y)
        return jax.vmap(grad, in_axes=(0, None, None))(theta, self.x, self.y)


def density_target(log_density: Callable, dim: int, init=None) -> Target:
    """A target from a plain log density of a flat vector (no data: exact scores)."""
    init = jnp.zeros(dim) if init is None else jnp.asarray(init, jnp.float32)
    return Target(lambda theta, x, y: log_density(theta), int(dim), init=init)


def numpyro_target(model, x, y, batch_size: int | None = None, seed: int = 0,
                   init_strategy=init_to_median) -> Target:
    """A target from a NumPyro model `model(x, y)` on training data (x, y).

    The parameter vector is the model's unconstrained latent sites, flattened in the order of
    `jax.flatten_util.ravel_pytree`; `target.constrain(theta)` maps back to named constrained
    values. batch_size: minibatch size B (None: all data).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    n = int(x.shape[0])
    if y.shape[0] != n:
        raise InputError(f"x has {n} rows but y has {y.shape[0]}; they must match.")
    batch_size = n if batch_size is None else int(batch_size)
    if not 1 <= batch_size <= n:
        raise InputError(f"The minibatch size must lie in 1..{n} (the data size), got {batch_size}.")
    info = initialize_model(jax.random.key(seed), model, model_args=(x, y),
                            init_strategy=init_strategy)
    flat, unravel = ravel_pytree(info.param_info.z)

    def log_density(theta, x_b, y_b):
        scaled = scale_observed(model, factor=n / x_b.shape[0])
        return -potential_energy(scaled, (x_b, y_b), {}, unravel(theta))

    def constrain(theta):
        return constrain_fn(model, (x[:1], y[:1]), {}, unravel(theta))

    return Target(log_density, int(flat.size), x, y, batch_size, flat, constrain)
