"""Acquisition scores of candidate angles from predictive samples, and the baselines.

Predictive samples are noise-free predicted measurements A_c x_s, (n, V, D) for V candidate
views of D detector pixels (more detector dimensions are flattened). With the centred,
scaled ensemble Z_v = (a_v,s - mean_s a_v,s) / sqrt(n - 1), (n, D) for view v, the sample
covariance of the view's prediction is C_v = Z_v^T Z_v, and with noise variance s2:

- "var": tr C_v, the expected squared error of predicting the view (its predictive variance);
- "eig": the expected information gain 0.5 logdet(I + C_v / s2) of measuring the view,
  computed from the n x n Gram matrix Z_v Z_v^T (same non-zero eigenvalues as C_v) when
  n <= D, so a low rank from n samples costs n^3, not D^3 (else from C_v itself);
- "diag-eig": 0.5 sum_d log(1 + C_v[d, d] / s2), the information gain if the view's detector
  pixels were independent.

Baselines: "equidistant" (the best spread for each budget: equally spaced views, not nested)
and "random" (uniform among the unmeasured views).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.errors import InputError

ACQUISITIONS = ("eig", "var", "diag-eig")
BASELINES = ("equidistant", "random")
STRATEGIES = ACQUISITIONS + BASELINES


def check_strategy(name: str) -> str:
    """The name, if it is one of STRATEGIES; else InputError."""
    if name not in STRATEGIES:
        raise InputError(f"Unknown acquisition {name!r}; expected one of {', '.join(STRATEGIES)}.")
    return name


def centred(samples) -> jax.Array:
    """(n, V, D) samples -> Z = (samples - mean) / sqrt(n - 1), so that C_v = Z_v^T Z_v."""
    samples = jnp.asarray(samples)
    n = samples.shape[0]
    if n < 2:
        raise InputError("Acquisition scores need at least 2 predictive samples.")
    flat = samples.reshape(n, samples.shape[1], -1)
    return (flat - flat.mean(0)) / jnp.sqrt(n - 1.0)


@jax.jit
def var_scores(z) -> jax.Array:
    """tr C_v per view (V,) from a centred ensemble z (n, V, D)."""
    return jnp.sum(z * z, axis=(0, 2))


@jax.jit
def diag_eig_scores(z, noise_variance) -> jax.Array:
    """0.5 sum_d log(1 + C_v[d, d] / s2) per view (V,)."""
    return 0.5 * jnp.sum(jnp.log1p(jnp.sum(z * z, axis=0) / noise_variance), axis=-1)


@jax.jit
def eig_scores(z, noise_variance) -> jax.Array:
    """0.5 logdet(I + C_v / s2) per view (V,), by the Cholesky factor of the smaller of the
    n x n Gram matrix Z_v Z_v^T and the D x D covariance Z_v^T Z_v (same non-zero spectrum)."""
    n, _, d = z.shape
    if n <= d:
        gram = jnp.einsum("avd,bvd->vab", z, z) / noise_variance
    else:
        gram = jnp.einsum("avd,ave->vde", z, z) / noise_variance
    chol = jnp.linalg.cholesky(gram + jnp.eye(min(n, d), dtype=z.dtype))
    return jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def scores(kind: str, z, noise_variance: float) -> np.ndarray:
    """The acquisition `kind` (one of ACQUISITIONS) of every view of the centred ensemble z."""
    s2 = jnp.asarray(noise_variance, z.dtype)
    if kind == "var":
        return np.asarray(var_scores(z))
    if kind == "eig":
        return np.asarray(eig_scores(z, s2))
    if kind == "diag-eig":
        return np.asarray(diag_eig_scores(z, s2))
    raise InputError(f"{kind!r} is not a score-based acquisition; expected one of "
                     f"{', '.join(ACQUISITIONS)}.")


# -- baselines --------------------------------------------------------------------------------
def equidistant_views(num_candidates: int, budget: int) -> np.ndarray:
    """`budget` equally spaced indices of `num_candidates` equally spaced views, from view 0.

    The best spread for each budget (for candidates that cover the arc evenly); the sets of
    two budgets are in general not nested.
    """
    if not 1 <= budget <= num_candidates:
        raise InputError(f"Cannot choose {budget} equidistant views of {num_candidates}.")
    return np.floor(np.arange(budget) * (num_candidates / budget) + 1e-9).astype(int)


def random_views(available, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct views drawn uniformly from `available`."""
    available = np.asarray(available, int)
    if k > len(available):
        raise InputError(f"Cannot choose {k} new views: only {len(available)} are left.")
    return rng.choice(available, size=k, replace=False)


def spread_views(angles, measured, k: int, period: float) -> np.ndarray:
    """Greedy farthest-point choice: k views each farthest (on the circle of `period`) from the
    measured and already chosen ones; the prospective equidistant baseline (nested)."""
    angles = np.asarray(angles, np.float64)
    taken = list(np.asarray(measured, int))
    chosen = []
    for _ in range(k):
        if taken:
            diff = np.abs(angles[:, None] - angles[taken][None, :]) % period
            gap = np.minimum(diff, period - diff).min(axis=1)
        else:
            gap = np.ones(len(angles))
        gap[taken] = -np.inf
        best = int(np.argmax(gap))
        if not np.isfinite(gap[best]):
            raise InputError(f"Cannot choose {k} new views: too few are left.")
        chosen.append(best)
        taken.append(best)
    return np.asarray(chosen, int)
