"""Predictive metrics of a posterior over network weights on a problem's test set.

From S posterior draws theta_s (flat, unconstrained) the predictive is the mixture over s:
- test NLL: -mean_i log (1/S) sum_s p(y_i | x_i, theta_s);
- classification: accuracy of the mean predictive probabilities, and the expected calibration
  error (ECE) of the top-class confidence over `bins` equal-width bins;
- regression: RMSE of the predictive mean, and the ECE of the predictive quantiles: with
  u_i = P(Y <= y_i) under the predictive (PIT values), the mean over levels p in
  {0.05, ..., 0.95} of |fraction(u_i <= p) - p| (0 for a calibrated predictive).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm


def classification_ece(probs, labels, bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == labels).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def quantile_ece(pit, levels=np.linspace(0.05, 0.95, 19)) -> float:
    """Calibration error of regression quantiles from PIT values."""
    pit = np.asarray(pit)
    return float(np.mean([abs(np.mean(pit <= p) - p) for p in levels]))


@functools.partial(jax.jit, static_argnames=("kind", "forward", "constrain"))
def _predictive(theta, x, y, kind, forward, constrain):
    params = jax.vmap(constrain)(theta)
    out = jax.vmap(forward, in_axes=(0, None))(params, x)
    s = theta.shape[0]
    if kind == "classification":
        logp = jax.nn.log_softmax(out, axis=-1)  # (S, n, C)
        log_pred = logsumexp(logp, axis=0) - jnp.log(s)
        nll = -jnp.mean(jnp.take_along_axis(log_pred, y[:, None], axis=1))
        return nll, jnp.exp(log_pred), jnp.zeros(0)
    sigma = params["sigma"][:, None]
    log_lik = norm.logpdf(y[None], out, sigma)
    nll = -jnp.mean(logsumexp(log_lik, axis=0) - jnp.log(s))
    pit = jnp.mean(norm.cdf((y[None] - out) / sigma), axis=0)
    return nll, jnp.mean(out, axis=0), pit


def predictive_metrics(problem, target, theta) -> dict:
    """Test NLL, ECE and accuracy (classification) or RMSE (regression) of draws theta (S, D)."""
    x, y = jnp.asarray(problem.x_test), jnp.asarray(problem.y_test)
    nll, pred, pit = _predictive(jnp.asarray(theta), x, y, problem.kind, problem.forward,
                                 target.constrain)
    if problem.kind == "classification":
        pred = np.asarray(pred)
        return dict(nll=float(nll), ece=classification_ece(pred, problem.y_test),
                    accuracy=float(np.mean(pred.argmax(1) == problem.y_test)))
    rmse = float(np.sqrt(np.mean((np.asarray(pred) - problem.y_test) ** 2)))
    return dict(nll=float(nll), ece=quantile_ece(pit), rmse=rmse)
