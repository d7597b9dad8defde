"""The exact linearised-Laplace posterior with dense matrices, for small problems (the oracle).

Forms J (pixels x d) and the dense ray transform, then works in float64 with Cholesky
factorisations of the observation covariance

    K = A J S J^T A^T + s2 I = sum_g v_g K_g + s2 I,   K_g = (A J)_g diag(c_g) (A J)_g^T,

(the group Gram matrices K_g are formed once, so a change of hyperparameters costs one m x m
Cholesky). Same model and prior-mean convention as `LinearModel`: with the weight deviation
w = theta - mu ~ N(0, S) and r = y - A x0,

    posterior of w:   mean S Phi^T K^-1 r,  cov S - S Phi^T K^-1 Phi S   (Phi = A J),
    image:            mean x0 + J w_mean,  cov J cov_w J^T,
    evidence:         log p(y) = log N(r; 0, K).

`maximise_marginal_likelihood` maximises the exact evidence over (log v_g, log s2) with
L-BFGS: the oracle that the sample-based EM is tested against. Sizes: up to about 64 x 64
images and a few thousand parameters (J is pixels x d, each K_g is m x m).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctbayes.errors import InputError
from ctbayes.laplace.linearise import LinearModel, dense_jacobian

EXACT_MAX_BYTES = 2 * 2 ** 30  # dense J and A J in float64; above it use the CG or SGD path


@dataclasses.dataclass(frozen=True)
class DenseProblem:
    """Dense float64 pieces of a `LinearModel`: J, Phi = A J, K_g, the offsets and the prior."""

    J: np.ndarray  # (N, d)
    Phi: np.ndarray  # (m, d)
    grams: np.ndarray  # (G, m, m)
    residual: np.ndarray  # r (m,)
    offset_image: np.ndarray  # x0 (N,)
    index: np.ndarray  # (d,) group of each parameter
    scale: np.ndarray  # (d,) c_i
    image_shape: tuple[int, ...]

    @property
    def num_groups(self) -> int:
        """The number of prior groups."""
        return self.grams.shape[0]

    def variances(self, group_variances) -> np.ndarray:
        """The per-parameter prior variances for the group variances v."""
        return np.asarray(group_variances, np.float64)[self.index] * self.scale


def dense_operator(A) -> np.ndarray:
    """The ray transform as a dense (m, N) matrix, from A applied to the pixel basis."""
    n = int(np.prod(A.domain_shape))
    cols = []
    for start in range(0, n, 256):
        basis = np.zeros((min(256, n - start), n), np.float32)
        basis[np.arange(basis.shape[0]), start + np.arange(basis.shape[0])] = 1.0
        cols.append(np.asarray(A(jnp.asarray(basis.reshape((-1,) + tuple(A.domain_shape))))))
    return np.concatenate(cols).reshape(n, -1).T.astype(np.float64)


def check_size(pixels: int, num_data: int, num_params: int) -> None:
    """Refuse (InputError) a problem whose dense J and A J would pass `EXACT_MAX_BYTES`.

    Called by `dense_problem`, and by `reconstruct` before the DIP fit, so that a too-large
    `--solver exact` is refused before minutes of fitting rather than after."""
    size = 8 * num_params * (pixels + num_data)
    if size > EXACT_MAX_BYTES:
        raise InputError(f"The exact solver would form {pixels} pixels and {num_data} data by "
                         f"{num_params} parameters densely ({size / 2 ** 30:.1f} GiB), more than "
                         f"its {EXACT_MAX_BYTES / 2 ** 30:.0f} GiB limit: use the cg or sgd solver.")


def dense_problem(model: LinearModel) -> DenseProblem:
    """Form J, A J and the group Gram matrices of a `LinearModel` (small problems only)."""
    check_size(int(np.prod(model.image_shape)), model.num_data, model.num_params)
    J = np.asarray(dense_jacobian(model.fn_flat, model.theta), np.float64)
    Phi = dense_operator(model.A) @ J
    index = np.asarray(model.prior.index)
    scale = np.asarray(model.prior.scale, np.float64)
    grams = np.stack([(Phi[:, index == g] * scale[index == g]) @ Phi[:, index == g].T
                      for g in range(model.prior.num_groups)])
    return DenseProblem(J, Phi, grams, np.asarray(model.residual, np.float64).reshape(-1),
                        np.asarray(model.offset_image, np.float64).reshape(-1), index, scale,
                        model.image_shape)


class ExactPosterior(NamedTuple):
    """Exact posterior: weights (mean, cov) and image (mean, cov, per-pixel std)."""

    weight_mean: np.ndarray
    weight_cov: np.ndarray
    image_mean: np.ndarray  # (H, W)
    image_cov: np.ndarray  # (N, N)
    std: np.ndarray  # (H, W)


def posterior(problem: DenseProblem, group_variances, noise_variance) -> ExactPosterior:
    """The exact posterior of the linear model at the given hyperparameters (float64)."""
    var = problem.variances(group_variances)
    K = np.tensordot(np.asarray(group_variances, np.float64), problem.grams, 1)
    K[np.diag_indices_from(K)] += float(noise_variance)
    chol = np.linalg.cholesky(K)
    PhiS = problem.Phi * var  # (m, d)

    def solve(b):
        return np.linalg.solve(chol.T, np.linalg.solve(chol, b))

    w = var * (problem.Phi.T @ solve(problem.residual))
    half = np.linalg.solve(chol, PhiS)  # L^-1 Phi S
    cov_w = np.diag(var) - half.T @ half
    img_cov = problem.J @ cov_w @ problem.J.T
    mean = problem.offset_image + problem.J @ w
    std = np.sqrt(np.maximum(np.diag(img_cov), 0.0))
    return ExactPosterior(w, cov_w, mean.reshape(problem.image_shape), img_cov,
                          std.reshape(problem.image_shape))


def effective_dimensions(problem: DenseProblem, post: ExactPosterior, group_variances) -> np.ndarray:
    """gamma_g = sum over group g of (1 - posterior variance / prior variance), exactly."""
    var = problem.variances(group_variances)
    ratio = 1.0 - np.diag(post.weight_cov) / var
    return np.bincount(problem.index, weights=ratio, minlength=problem.num_groups)


def _log_ml(problem: DenseProblem, log_v, log_s2, form: str = "auto"):
    """log N(r; 0, K) in jnp (differentiable): the dual form (m x m Cholesky of K), or the
    primal form (d x d Cholesky of H = Phi^T Phi / s2 + S^-1, by Woodbury); "auto" takes the
    smaller."""
    r = jnp.asarray(problem.residual)
    m, d = problem.Phi.shape
    s2 = jnp.exp(log_s2)
    if form == "dual" or (form == "auto" and m <= d):
        K = jnp.tensordot(jnp.exp(log_v), jnp.asarray(problem.grams), 1)
        K = K + s2 * jnp.eye(m, dtype=r.dtype)
        chol = jnp.linalg.cholesky(K)
        alpha = jax.scipy.linalg.solve_triangular(chol, r, lower=True)
        quad, logdet = jnp.sum(alpha ** 2), 2 * jnp.sum(jnp.log(jnp.diag(chol)))
    else:
        log_var = log_v[problem.index] + jnp.log(jnp.asarray(problem.scale))
        gram = jnp.asarray(problem.Phi.T @ problem.Phi)
        H = gram / s2 + jnp.diag(jnp.exp(-log_var))
        chol = jnp.linalg.cholesky(H)
        alpha = jax.scipy.linalg.solve_triangular(chol, jnp.asarray(problem.Phi.T @ problem.residual),
                                                  lower=True)
        quad = (jnp.sum(r ** 2) - jnp.sum(alpha ** 2) / s2) / s2
        logdet = m * log_s2 + jnp.sum(log_var) + 2 * jnp.sum(jnp.log(jnp.diag(chol)))
    return -0.5 * quad - 0.5 * logdet - 0.5 * m * jnp.log(2 * jnp.pi)


def log_marginal_likelihood(problem: DenseProblem, group_variances, noise_variance,
                            form: str = "auto") -> float:
    """log N(r; 0, K): the exact evidence of the linear model (float64). form: see _log_ml."""
    with jax.enable_x64(True):
        return float(_log_ml(problem, jnp.log(jnp.asarray(group_variances, jnp.float64)),
                             jnp.log(jnp.asarray(noise_variance, jnp.float64)), form))


def maximise_marginal_likelihood(problem: DenseProblem, group_variances, noise_variance,
                                 max_steps: int = 100, gtol: float = 1e-6
                                 ) -> tuple[np.ndarray, float, float]:
    """Maximise the exact evidence over (log v_g, log s2) with L-BFGS from the given start.

    Stops when the gradient norm (per observation) is below gtol or after max_steps.
    Returns (group variances, noise variance, log evidence at the optimum): the oracle.
    """
    with jax.enable_x64(True):
        m = problem.Phi.shape[0]

        def loss(z):
            return -_log_ml(problem, z[:-1], z[-1]) / m

        z0 = jnp.log(jnp.concatenate([jnp.asarray(group_variances, jnp.float64).reshape(-1),
                                      jnp.asarray(noise_variance, jnp.float64).reshape(1)]))
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        @jax.jit
        def run(z):
            def cond(carry):
                k, _, _, gnorm = carry
                return (k < max_steps) & (gnorm > gtol)

            def body(carry):
                k, z, state, _ = carry
                value, grad = value_and_grad(z, state=state)
                updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=loss)
                return k + 1, optax.apply_updates(z, updates), state, jnp.linalg.norm(grad)

            init = (0, z, opt.init(z), jnp.asarray(jnp.inf, jnp.float64))
            _, z, _, _ = jax.lax.while_loop(cond, body, init)
            return z, -loss(z) * m

        z, value = run(z0)
        z = np.asarray(z)
        return np.exp(z[:-1]), float(np.exp(z[-1])), float(value)
