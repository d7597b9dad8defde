"""The Matern-1/2 prior over the pixels of convolution filters (bayes_dip's filter GP prior).

Every k x k filter of a conv kernel (one per input/output channel pair, k > 1) gets the prior
N(0, v K) over its k^2 taps, with K_ij = exp(-|p_i - p_j| / l) the Matern-1/2
(exponential) correlation of the tap positions p (distances in taps): neighbouring taps
are correlated, which favours smooth filters. All other parameters (biases, 1x1 kernels,
norms) keep independent priors. One variance v for all, learned by the EM as for the
isotropic prior (`priors` says why not one per layer). The lengthscale l of each kernel
is set before the EM, by maximising the likelihood of its fitted filters under N(0, v K(l))
over the grid LENGTHSCALES (v in closed form): the fitted network says how smooth its own
filters are. Or one fixed lengthscale for all.

It is implemented as a change of coordinates, so that no solver needs a non-diagonal prior:
with K = L L^T (Cholesky), `correlate` maps u to theta by applying L to every filter's taps,
and the network is linearised in u, fn_u(u) = fn(correlate(u)), J_u = J L, with
u ~ N(0, v I). The image posterior is exactly that of the correlated prior on
theta; the M-step norm ||u||^2 is theta^T K^-1 theta; sampling, CG, EM and the exact path
are those of the isotropic prior.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ctbayes.kernels import matern_covariance
from ctbayes.laplace.linearise import as_partial

LENGTHSCALES = tuple(np.round(np.geomspace(0.1, 10.0, 21), 4).tolist())


def is_filter_kernel(leaf) -> bool:
    """A flax conv kernel (k, k, in, out) with spatial size k > 1."""
    shape = np.shape(leaf)
    return len(shape) == 4 and shape[0] == shape[1] and shape[0] > 1


def correlation(k: int, lengthscale: float) -> np.ndarray:
    """K (k^2, k^2): exp(-distance / lengthscale) between the taps of a k x k filter, in
    the row-major order of a (k, k, ...) kernel reshaped to (k^2, ...): the design's Matern
    image prior (nu 1/2, unit variance) on a k x k grid."""
    return matern_covariance((k, k), float(lengthscale), 1.0, nu=0.5)


def fit_lengthscale(kernel, grid=LENGTHSCALES) -> float:
    """The lengthscale on `grid` under which the kernel's filters (its (k, k) slices) are
    likeliest as independent draws of N(0, v K(l)), v at its maximum-likelihood value."""
    k = np.shape(kernel)[0]
    filters = np.asarray(kernel, np.float64).reshape(k * k, -1)  # (taps, filters)
    n = filters.shape[1]
    best, best_ll = grid[0], -np.inf
    for lengthscale in grid:
        chol = np.linalg.cholesky(correlation(k, lengthscale))
        white = scipy.linalg.solve_triangular(chol, filters, lower=True)
        v = max(float(np.sum(white ** 2)) / (k * k * n), 1e-300)
        ll = -0.5 * n * (k * k * np.log(v) + 2 * np.sum(np.log(np.diag(chol))))
        if ll > best_ll:
            best, best_ll = lengthscale, ll
    return float(best)


def lengthscales(params, fixed: float | None = None) -> tuple:
    """One lengthscale per leaf of params (None for leaves that are not filters): `fixed`,
    or fitted to each kernel's filters (`fit_lengthscale`)."""
    return tuple((fit_lengthscale(leaf) if fixed is None else float(fixed))
                 if is_filter_kernel(leaf) else None for leaf in jax.tree.leaves(params))


def _factors(params, scales) -> list:
    return [None if s is None else
            jnp.asarray(np.linalg.cholesky(correlation(np.shape(leaf)[0], s)), jnp.result_type(leaf))
            for leaf, s in zip(jax.tree.leaves(params), scales)]


def _apply(params, factors, inverse: bool):
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for leaf, chol in zip(leaves, factors):
        if chol is None:
            out.append(leaf)
            continue
        taps = jnp.reshape(leaf, (chol.shape[0], -1))
        mapped = (jax.scipy.linalg.solve_triangular(chol, taps, lower=True) if inverse
                  else chol @ taps)
        out.append(jnp.reshape(mapped, jnp.shape(leaf)))
    return jax.tree.unflatten(treedef, out)


def correlate(u, scales):
    """theta = L u: the filter taps of u (white coordinates) correlated by K = L L^T."""
    return _apply(u, _factors(u, scales), inverse=False)


def whiten(params, scales):
    """u = L^-1 theta, the inverse of `correlate`."""
    return _apply(params, _factors(params, scales), inverse=True)


def correlated_fn(fn: Callable, params, scales: tuple) -> Callable:
    """fn_u(u) = fn(correlate(u)), as a `jax.tree_util.Partial` over fn and the Cholesky
    factors: the factors are traced rather than baked in, so refits of one network (other
    weights, z or lengthscales) reuse every compiled function that takes fn_u."""
    return jax.tree_util.Partial(_correlated_image, as_partial(fn), _factors(params, scales))


def _correlated_image(fn, factors, u):
    return fn(_apply(u, factors, inverse=False))


def reparameterise(fn: Callable, params, lengthscale: float | None = None
                   ) -> tuple[Callable, object, tuple]:
    """(fn_u, u, scales): the network in white coordinates, the fitted parameters in them,
    and the lengthscale of every leaf (None: not a filter; `lengthscales`)."""
    scales = lengthscales(params, lengthscale)
    return correlated_fn(fn, params, scales), whiten(params, scales), scales
