"""Cheap posterior updates between DIP refits: grow the linear model by the new views' rows.

The linearised-Laplace posterior is a linear-Gaussian model: adding views adds rows to A
(and their data to y), and the observation covariance K = A J S J^T A^T + s2 I grows by a
block. Rebuilding the `LinearModel` with the enlarged operator, with the same prior groups
and hyperparameters (no EM, no DIP refit), gives exactly the posterior of that model on all
the data; new samples are then drawn from it. After a DIP refit the model is relinearised at
the new parameters in the same way.

Any other posterior can provide `with_data(A, y)` (the GP prior does); for those that do not,
`update_posterior` returns None and the caller builds a new one with its factory.
"""

from __future__ import annotations

from jax.flatten_util import ravel_pytree

from ctbayes.laplace import exact
from ctbayes.laplace.linearise import linear_model
from ctbayes.laplace.posterior import LinearisedLaplace


def relinearised(posterior: LinearisedLaplace, params, A, y) -> LinearisedLaplace:
    """The posterior's linear model rebuilt at network parameters `params` for data y = A x,
    with its prior groups, prior-mean convention and hyperparameters."""
    base = posterior.model
    theta, _ = ravel_pytree(posterior.coordinates(params))
    model = linear_model(base.fn_flat, theta, A, y, base.prior, base.prior_mean)
    dense = exact.dense_problem(model) if posterior.config.solver == "exact" else None
    return LinearisedLaplace(model, posterior.hyper, posterior.config, posterior.history, dense,
                             posterior.mesh, coordinates=posterior.coordinates)


def update_posterior(base, params, A, y):
    """The posterior `base` updated to data y = A x (linearised at `params` for Laplace), or
    None when the backend offers no cheap update."""
    if isinstance(base, LinearisedLaplace):
        return relinearised(base, params, A, y)
    if hasattr(base, "with_data"):
        return base.with_data(A, y)
    return None
