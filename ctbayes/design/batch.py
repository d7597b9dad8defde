"""Greedy batch selection: choose several views per step, each conditioned on the others.

Scoring every view once and taking the top k would pick near-duplicates (neighbouring angles
predict nearly the same thing). Instead the ensemble is conditioned on each chosen view's
(not yet seen) measurement before the next pick. For Gaussian conditioning the covariance
does not depend on the measured value, so only the ensemble's spread needs updating: with
the centred ensemble Z (n, M) (sample covariance Z^T Z) and the chosen view's block B (n, D),

    C' = C - C_:B (C_BB + s2 I)^-1 C_B:  =  Z^T T Z,   T = s2 (B B^T + s2 I)^-1,

so Z' = T^(1/2) Z (a deterministic square-root ensemble Kalman update, n x n work). The chosen
view's own covariance becomes B^T T B, whose eigenvalues lambda s2 / (lambda + s2) are below
the noise variance: measuring a view again teaches little.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.design import acquisition
from ctbayes.errors import InputError


@jax.jit
def condition(z, view, noise_variance) -> jax.Array:
    """The centred ensemble z (n, V, D) conditioned on a noisy measurement of `view`.

    With the thin SVD B = U diag(sigma) W^T of the view's block (lambda = sigma^2),
    T^(1/2) = I - U diag(1 - sqrt(s2 / (lambda + s2))) U^T: min(n, D)^2 n work."""
    u, sigma, _ = jnp.linalg.svd(z[:, view, :], full_matrices=False)
    shrink = 1.0 - jnp.sqrt(noise_variance / (sigma ** 2 + noise_variance))
    return z - jnp.einsum("ak,k,kvd->avd", u, shrink, jnp.einsum("ak,avd->kvd", u, z))


def greedy_batch(samples, k: int, noise_variance: float, kind: str = "eig", exclude=None):
    """Choose k views from predictive samples (n, V, D) greedily, conditioning after each.

    exclude: boolean (V,) of views that may not be chosen (already measured).
    Returns (chosen view indices (k,), the scores of each pick's round (k, V)).
    """
    z = acquisition.centred(samples)
    num_views = z.shape[1]
    blocked = np.zeros(num_views, bool) if exclude is None else np.asarray(exclude, bool).copy()
    if k > int((~blocked).sum()):
        raise InputError(f"Cannot choose {k} new views: only {int((~blocked).sum())} "
                                     "are left.")
    s2 = jnp.asarray(noise_variance, z.dtype)
    chosen, rounds = [], []
    for _ in range(k):
        s = acquisition.scores(kind, z, float(noise_variance))
        s = np.where(blocked, -np.inf, s)
        best = int(np.argmax(s))
        chosen.append(best)
        rounds.append(s)
        blocked[best] = True
        z = condition(z, best, s2)
    return np.asarray(chosen, int), np.stack(rounds)
