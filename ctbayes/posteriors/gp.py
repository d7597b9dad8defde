"""A Matern Gaussian-process image prior: the non-DIP linear-Gaussian posterior.

The comparison model of Barbano et al. (2022): x ~ N(c 1, K) with a Matern covariance over
pixel positions, y = A x + e, e ~ N(0, s2 I). The posterior is Gaussian and exact with dense
float64 algebra (small grids: up to about 64 x 64 images and a few thousand measured rows):

    M = R K R^T + s2 I,   mean = c 1 + K R^T M^-1 (y - c R 1),   cov = K - K R^T M^-1 R K,

with R the measured rows of A. It answers the posterior interface, so the design loop treats
it like any other backend; `predictive_covariance` gives the exact predictive covariance of
each candidate view, the oracle for the sample-based acquisition scores.

In the design loop the measured set only grows, so `with_data` updates the last posterior it
gave by the new views' rows alone (the exact sequential Bayesian update, O(N^2 k) for k new
rows) instead of solving with all measured rows again (O(N^2 m)).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse

from ctbayes.errors import InputError
from ctbayes.kernels import NUS, matern_covariance
from ctbayes.posteriors.base import PosteriorBase


@dataclasses.dataclass(frozen=True)
class MaternPrior:
    """Matern covariance variance * k_nu(r / lengthscale) over pixel centres (r in pixels),
    around the constant image `mean`."""

    lengthscale: float
    variance: float
    nu: float = 1.5
    mean: float = 0.0

    def __post_init__(self):
        if self.nu not in NUS:
            raise InputError(f"Matern nu must be one of {NUS}, got {self.nu}.")
        if not (self.lengthscale > 0 and self.variance > 0):
            raise InputError("The Matern lengthscale and variance must be positive.")

    def covariance(self, shape) -> np.ndarray:
        """The prior covariance (N, N) over the pixels of an image of `shape`."""
        return matern_covariance(shape, self.lengthscale, self.variance, self.nu)


# -- the measured system ---------------------------------------------------------------------
def measured_rows(A) -> tuple[object, np.ndarray]:
    """(base, rows): the full ray transform behind A and the indices of A's measured rows in
    its flattened range (all of them, or the views of mask 1 for a `MaskedRayTransform`)."""
    base, views = A, None
    if hasattr(A, "mask"):
        base, views = A.base, np.flatnonzero(np.asarray(A.mask) > 0)
    det = int(np.prod(base.range_shape[1:]))
    rows = np.arange(int(np.prod(base.range_shape)))
    if views is not None:
        rows = (views[:, None] * det + np.arange(det)[None, :]).ravel()
    return base, rows


def dense_rows(base, rows) -> np.ndarray:
    """Rows of the ray transform `base` as a dense float64 matrix (len(rows), pixels): from
    its sparse matrix on the sparse backend, else by applying it to the pixel basis."""
    if getattr(base, "backend", None) == "sparse":
        m = base.matrix
        idx = np.asarray(m.indices)
        csr = scipy.sparse.csr_matrix((np.asarray(m.data, np.float64), (idx[:, 0], idx[:, 1])),
                                      shape=m.shape)
        return csr[rows].toarray()
    from ctbayes.laplace.exact import dense_operator

    return dense_operator(base)[rows]


def measured_system(A, y) -> tuple[np.ndarray, np.ndarray]:
    """(R, y_R): the dense float64 rows of A that are measured, and their data."""
    base, rows = measured_rows(A)
    return dense_rows(base, rows), np.asarray(y, np.float64).reshape(-1)[rows]


# -- the posterior ---------------------------------------------------------------------------
class GaussianImagePosterior(PosteriorBase):
    """An exact Gaussian posterior over images: mean (N,), covariance (N, N), image shape."""

    std_is_exact = True

    def __init__(self, mean, cov, shape, prior: MaternPrior, noise_variance: float,
                 source=None, rows=None, data=None):
        self._mean = np.asarray(mean, np.float64)
        self.cov = np.asarray(cov, np.float64)
        self.shape = tuple(shape)
        self.prior = prior
        self.noise_variance = float(noise_variance)
        self._root = None
        # what it conditions on: rows of the ray transform `source` and their data
        self.source, self.rows, self.data = source, rows, data
        self._latest = None  # the last posterior `with_data` made: the start of the next

    def mean(self) -> jax.Array:
        """The posterior mean image (H, W)."""
        return jnp.asarray(self._mean.reshape(self.shape), jnp.float32)

    def std(self) -> jax.Array:
        """The exact per-pixel posterior std (H, W)."""
        return jnp.asarray(np.sqrt(np.maximum(np.diag(self.cov), 0)).reshape(self.shape),
                           jnp.float32)

    def _cholesky(self) -> np.ndarray:
        if self._root is None:
            jitter = 1e-10 * max(float(np.mean(np.diag(self.cov))), 1e-300)
            for _ in range(8):
                try:
                    self._root = np.linalg.cholesky(self.cov + jitter * np.eye(len(self.cov)))
                    break
                except np.linalg.LinAlgError:
                    jitter *= 100
            else:
                raise np.linalg.LinAlgError("the posterior covariance is not positive definite")
        return self._root

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n exact posterior draws (n, H, W)."""
        z = np.asarray(jax.random.normal(key, (n, len(self._mean))), np.float64)
        draws = self._mean + z @ self._cholesky().T
        return jnp.asarray(draws.reshape((n,) + self.shape), jnp.float32)

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array:
        """A_candidate applied to n posterior draws."""
        if tuple(A_candidate.domain_shape) != self.shape:
            raise InputError(f"The candidate operator acts on images of shape "
                             f"{tuple(A_candidate.domain_shape)}, not {self.shape}.")
        return A_candidate(self.sample(key, n))

    def predictive_covariance(self, A_candidate) -> np.ndarray:
        """Exact covariance of each view's noise-free prediction, (V, D, D)."""
        R, _ = measured_system(A_candidate, np.zeros(A_candidate.range_shape))
        views = A_candidate.range_shape[0]
        blocks = R.reshape(views, -1, R.shape[1])
        return np.einsum("vdn,nm,vem->vde", blocks, self.cov, blocks, optimize=True)

    def hyperparameters(self) -> dict:
        """The Matern prior's lengthscale, variance and mean, and the noise variance."""
        p = self.prior
        return {"lengthscale": p.lengthscale, "prior_variance": p.variance,
                "prior_mean": p.mean, "noise_variance": self.noise_variance}

    def with_data(self, A, y, params=None) -> "GaussianImagePosterior":
        """The posterior of the same prior and noise for other measurements y = A x.

        When they extend those of the last posterior this one gave (same ray transform, the
        same rows with the same data, plus new rows), that posterior is updated by the new
        rows only; otherwise it is computed afresh from all of them."""
        base, rows = measured_rows(A)
        values = np.asarray(y, np.float64).reshape(-1)
        last = self._latest
        new = None
        if last is not None and last.source is base and np.isin(last.rows, rows).all() \
                and np.array_equal(values[last.rows], last.data):
            new = rows[~np.isin(rows, last.rows)]
        if new is None:
            post = gp_posterior(A, y, self.prior, self.noise_variance)
        else:
            post = last.conditioned(base, new, values[new])
        self._latest = post
        return post

    def conditioned(self, source, rows, data) -> "GaussianImagePosterior":
        """This posterior given more measurements: `data` of the rows `rows` of `source`.

        mean' = mean + C B^T S^-1 (d - B mean),  C' = C - C B^T S^-1 B C,  S = B C B^T + s2 I.
        """
        if len(rows) == 0:
            return self
        B = dense_rows(source, rows)
        CB = self.cov @ B.T
        S = B @ CB
        S[np.diag_indices_from(S)] += self.noise_variance
        chol = scipy.linalg.cho_factor(S, lower=True)
        mean = self._mean + CB @ scipy.linalg.cho_solve(chol, data - B @ self._mean)
        cov = self.cov - CB @ scipy.linalg.cho_solve(chol, CB.T)
        cov = 0.5 * (cov + cov.T)
        all_rows = rows if self.rows is None else np.concatenate([self.rows, rows])
        all_data = data if self.data is None else np.concatenate([self.data, data])
        return GaussianImagePosterior(mean, cov, self.shape, self.prior, self.noise_variance,
                                      source, all_rows, all_data)

    def __repr__(self):
        p = self.prior
        return (f"GaussianImagePosterior(Matern nu={p.nu}, lengthscale {p.lengthscale:.3g} px, "
                f"variance {p.variance:.3g}, noise variance {self.noise_variance:.3g})")


def gp_posterior(A, y, prior: MaternPrior, noise_variance: float) -> GaussianImagePosterior:
    """The exact posterior of the Matern prior given y = A x + N(0, noise_variance I)."""
    if not noise_variance > 0:
        raise InputError(f"The noise variance must be positive, got {noise_variance}.")
    shape = tuple(A.domain_shape)
    base, rows = measured_rows(A)
    R = dense_rows(base, rows)
    yr = np.asarray(y, np.float64).reshape(-1)[rows]
    K = prior.covariance(shape)
    RK = R @ K
    M = RK @ R.T
    M[np.diag_indices_from(M)] += noise_variance
    chol = scipy.linalg.cho_factor(M, lower=True)
    resid = yr - prior.mean * R.sum(axis=1)
    mean = prior.mean + RK.T @ scipy.linalg.cho_solve(chol, resid)
    cov = K - RK.T @ scipy.linalg.cho_solve(chol, RK)
    return GaussianImagePosterior(mean, cov, shape, prior, noise_variance, base, rows, yr)


def fit_gp_prior(A, y, noise_variance: float | None = None, nu: float = 1.5,
                 lengthscales=None) -> tuple[MaternPrior, float]:
    """(prior, noise variance) maximising the marginal likelihood log N(y; c R1, M) on a grid.

    The mean c is the best constant image's value. For each lengthscale (default: 1/32 to
    1/2 of the image width) R K R^T is diagonalised once, so the variance and (if not given)
    the noise variance are searched on fine log grids at O(m^2) each.
    """
    shape = tuple(A.domain_shape)
    R, yr = measured_system(A, y)
    ones = R.sum(axis=1)
    c = float(ones @ yr / max(ones @ ones, 1e-300))
    r = yr - c * ones
    power = float(np.mean(yr ** 2)) or 1.0
    if lengthscales is None:
        lengthscales = shape[1] * np.array([1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2])
    variances = max(c * c, 1e-12) * np.logspace(-2, 1, 31)
    noises = [noise_variance] if noise_variance else power * np.logspace(-6, -1, 26)
    best = (-np.inf, None, None)
    for ell in lengthscales:
        unit = MaternPrior(float(ell), 1.0, nu, c)
        G = R @ unit.covariance(shape) @ R.T
        lam, vecs = np.linalg.eigh(G)
        proj = (vecs.T @ r) ** 2
        for v in variances:
            for s2 in noises:
                d = v * np.maximum(lam, 0) + s2
                ll = -0.5 * float(np.sum(proj / d) + np.sum(np.log(d)))
                if ll > best[0]:
                    best = (ll, MaternPrior(float(ell), float(v), nu, c), float(s2))
    return best[1], best[2]


@dataclasses.dataclass(frozen=True)
class GPConfig:
    """Settings of the Matern GP image prior.

    prior: the Matern prior (None: fitted by `fit_gp_prior` on the first data).
    noise_variance: of the sinogram noise (None: the scan's known one where the caller gives
      it, else fitted with the prior). nu: the Matern smoothness of a fitted prior.
    """

    prior: MaternPrior | None = None
    noise_variance: float | None = None
    nu: float = 1.5

    def __post_init__(self):
        if isinstance(self.prior, dict):  # read back from a result file's nested JSON
            object.__setattr__(self, "prior", MaternPrior(**self.prior))
        if self.nu not in NUS:
            raise InputError(f"Matern nu must be one of {NUS}, got {self.nu}.")
        if self.prior is not None and self.noise_variance is None:
            raise InputError("A given GP prior needs its noise_variance too.")


def build(fit, A, y, config: GPConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> GaussianImagePosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): the exact posterior of the
    given prior, or of one fitted to the data (the network fit is not used)."""
    if config.prior is not None:
        return gp_posterior(A, y, config.prior, config.noise_variance)
    prior, s2 = fit_gp_prior(A, y, config.noise_variance or noise_variance, config.nu)
    return gp_posterior(A, y, prior, s2)
