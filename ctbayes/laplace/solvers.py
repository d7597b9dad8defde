"""Solvers for the observation covariance K = P + s2 I, P = (A J) S (A J)^T, many right-hand sides.

- `cg`: batched preconditioned conjugate gradients, one `lax.while_loop`. Every column runs
  until its own relative residual ||b - K x|| / ||b|| <= tol (then it is frozen), so a
  column's solution does not depend on which other columns share its batch.
- `nystrom`: the randomised Nystrom approximation P ~ U diag(lam) U^T of rank r from r
  products with P (Frangella, Tropp & Udell, "Randomized Nystrom preconditioning", SIAM J.
  Matrix Anal. Appl. 2023), used as the preconditioner
      M^-1 = (lam_r + s2) U (diag(lam) + s2)^-1 U^T + (I - U U^T).
  P's spectrum decays fast for CT with a network Jacobian, so a few dozen directions remove
  most of K's ill-conditioning.
- `sample_then_optimise`: posterior samples by gradient descent, for problems too large for
  CG (Antoran et al., ICLR 2023, eq. 7). Each sample minimises
      L(w) = ||A J w||^2 / (2 s2) + ||w - w_n||^2_{S^-1} / 2,  w_n = t + S J^T A^T e / s2,
  whose minimiser is the pathwise-conditioned sample t + S J^T A^T K^-1 (e - A J t). It runs
  in whitened coordinates u = S^-1/2 w, where the Hessian's eigenvalues lie in [1, L] with
  L = 1 + lambda_max(P) / s2 (power iteration), so Nesterov's method with step 1/L and
  momentum (sqrt(L) - 1)/(sqrt(L) + 1) converges at rate 1 - 1/sqrt(L). The gradient is exact
  (full batch: the randomness is in the sampled targets t, e, not in data subsets).
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class CGInfo(NamedTuple):
    """Per column: iterations taken, final relative residual ||b - K x|| / ||b|| (in float32
    recomputed from x, where it can sit above the tolerance that the CG recursion reached
    when K is ill-conditioned; see `cg`), and whether the recursion reached the tolerance."""

    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array


def cg(apply: Callable, b: jax.Array, *, precond: Callable | None = None, tol: float = 1e-4,
       max_iter: int = 200, side: bool = False):
    """Solve K x = b for each row of b (n, m) by preconditioned conjugate gradients.

    apply: (n, m) -> (n, m), K applied row by row (symmetric positive definite).
    precond: (n, m) -> (n, m), an approximation of K^-1 (symmetric positive definite).
    Returns (x, CGInfo), or with side=True (x, CGInfo, a(x)): apply then returns
    (K p, a(p)) for a linear map a (a pytree of (n, ...) arrays) that K's product computes
    on the way, and a(x) = sum_k alpha_k a(p_k) is accumulated along the iterations like x
    itself, which spares a product with a after the solve (`sampling` takes a posterior
    sample's weights and image this way).
    The returned residuals: in float32 recomputed from x (one more product with K), as the
    recursion's can drift below the truth when K is ill-conditioned; in float64 the
    recursion's own, whose drift (about eps64 * cond(K)) lies far below
    any tolerance, which saves that product (a seventh of a 4-iteration sample's work).
    """
    precond = precond or (lambda v: v)
    products = apply if side else (lambda p: (apply(p), ()))
    bnorm = jnp.linalg.norm(b, axis=1)
    safe = jnp.where(bnorm > 0, bnorm, 1.0)
    x = jnp.zeros_like(b)
    ax = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                      jax.eval_shape(products, b)[1]) if side else ()
    z = precond(b)
    rz = jnp.sum(b * z, axis=1)
    active = bnorm > 0
    state = (0, x, ax, b, z, rz, active, jnp.zeros(b.shape[0], jnp.int32))

    def cond(state):
        k, *_, active, _ = state
        return (k < max_iter) & jnp.any(active)

    def body(state):
        k, x, ax, r, p, rz, active, iters = state
        kp, ap = products(p)
        pkp = jnp.sum(p * kp, axis=1)
        alpha = jnp.where(active & (pkp > 0), rz / jnp.where(pkp > 0, pkp, 1.0), 0.0)
        x = x + alpha[:, None] * p
        ax = jax.tree.map(lambda acc, a: acc + alpha.reshape((-1,) + (1,) * (a.ndim - 1)) * a,
                          ax, ap)
        r = r - alpha[:, None] * kp
        iters = iters + active.astype(jnp.int32)
        still = active & (jnp.linalg.norm(r, axis=1) > tol * safe)
        z = precond(r)
        rz_new = jnp.sum(r * z, axis=1)
        beta = jnp.where(still, rz_new / jnp.where(rz != 0, rz, 1.0), 0.0)
        p = jnp.where(still[:, None], z + beta[:, None] * p, p)
        return k + 1, x, ax, r, p, jnp.where(still, rz_new, rz), still, iters

    _, x, ax, r, _, _, active, iters = jax.lax.while_loop(cond, body, state)
    final = r if b.dtype == jnp.float64 else b - products(x)[0]
    info = CGInfo(iters, jnp.linalg.norm(final, axis=1) / safe, ~active)
    return (x, info, ax) if side else (x, info)


def check_convergence(info: CGInfo, tol: float, what: str = "CG") -> dict:
    """Warn when some column did not reach the tolerance; return a summary for histories."""
    res = np.asarray(info.residual)
    its = np.asarray(info.iterations)
    failed = int(np.sum(~np.asarray(info.converged)))
    summary = {"iterations_max": int(its.max(initial=0)),
               "iterations_mean": float(its.mean()) if its.size else 0.0,
               "residual_max": float(res.max(initial=0.0)), "not_converged": failed}
    if failed:
        warnings.warn(f"{what}: {failed} of {its.size} systems did not reach the relative "
                      f"residual {tol:.1e} in {summary['iterations_max']} iterations (largest "
                      f"residual {summary['residual_max']:.2e}); raise the iteration limit or the "
                      f"preconditioner rank.", RuntimeWarning, stacklevel=3)
    return summary


class Nystrom(NamedTuple):
    """P ~ U diag(lam) U^T; as a preconditioner of P + shift I (see the module docstring).

    Ut: U^T (r, m), rows orthonormal, stored in the factor's own dtype (float32 halves the
    largest array of the Laplace pass where the model computes in float64; the
    preconditioner then applies its low-rank correction in float32, a relative
    perturbation of about 1e-7 of a map that CG only needs approximately). lam: (r,)
    descending, in the model's dtype. Directions the sketch could not resolve (round-off)
    have a zero row and lam equal to the smallest resolved one: they act as the identity.
    """

    Ut: jax.Array  # (r, m)
    lam: jax.Array  # (r,) descending
    shift: jax.Array  # s2

    def __call__(self, v):
        """M^-1 v for rows v (n, m): v + U diag(scale - 1) U^T v."""
        scale = (self.lam[-1] + self.shift) / (self.lam + self.shift)
        coef = v.astype(self.Ut.dtype) @ self.Ut.T
        return v + ((coef * (scale - 1.0).astype(self.Ut.dtype)) @ self.Ut).astype(v.dtype)

    def matvec(self, v):
        """The low-rank approximation U diag(lam) U^T v, rows v (n, m)."""
        coef = (v.astype(self.Ut.dtype) @ self.Ut.T) * self.lam.astype(self.Ut.dtype)
        return (coef @ self.Ut).astype(v.dtype)


def nystrom(apply_p: Callable, m: int, rank: int, key: jax.Array, shift, dtype=jnp.float32,
            block: int | None = None, factor_dtype=None) -> Nystrom:
    """Randomised Nystrom approximation of the PSD P (m x m) from `rank` products apply_p.

    apply_p: (n, m) -> (n, m). The stabilised algorithm of Frangella, Tropp & Udell (2023):
    orthonormal Gaussian test matrix, a small shift nu for round-off, Cholesky, then the
    factor's singular vectors (`nystrom_factor`). block: apply P to at most this many test
    vectors at once (bounds the memory of a network Jacobian's products; None: all at
    once). factor_dtype: the dtype U is stored in (None: dtype).
    """
    omega_t = sketch_matrix(key, m, rank, dtype)
    return nystrom_factor(omega_t, blocked(apply_p, omega_t, block), shift, factor_dtype)


def sketch_matrix(key: jax.Array, m: int, rank: int, dtype=jnp.float32) -> jax.Array:
    """The Nystrom sketch's test matrix as rows, Omega^T (rank, m): Gaussian rows.

    The Nystrom approximation P Omega (Omega^T P Omega)^-1 Omega^T P depends only on the
    range of Omega, so orthonormal rows buy nothing but the exactness of removing the
    round-off shift nu (`nystrom_factor`), itself of the order of eps ||P||. Where
    rank <= m / 4 the rows are Gaussian, scaled by 1 / sqrt(m) (then Omega^T Omega = I within
    sqrt(rank / m), a condition number below 3), drawn SKETCH_DRAW_ROWS rows at a time: one
    (rank, m) array and no more (a single draw of it held four such arrays in XLA's
    random-number temporaries). Nearer to square (small problems) a Gaussian matrix is
    ill-conditioned: there it is orthonormalised by Householder QR."""
    if 4 * rank > m:
        return jnp.linalg.qr(jax.random.normal(key, (m, rank), dtype))[0].T
    count = -(-rank // SKETCH_DRAW_ROWS)
    scale = np.asarray(1.0 / np.sqrt(m), dtype)
    rows = jax.lax.map(lambda i: scale * jax.random.normal(jax.random.fold_in(key, i),
                                                           (SKETCH_DRAW_ROWS, m), dtype),
                       jnp.arange(count)).reshape(count * SKETCH_DRAW_ROWS, m)
    return rows if count * SKETCH_DRAW_ROWS == rank else rows[:rank]


SKETCH_DRAW_ROWS = 32  # test rows drawn at once (`sketch_matrix`)


def nystrom_factor(omega_t: jax.Array, y_t: jax.Array, shift, factor_dtype=None) -> Nystrom:
    """The Nystrom factor of P from its sketch Y^T = (P Omega)^T (r, m), test rows Omega^T
    (r, m): a sketch is linear in P, so the sketches of P's parts (`sampling.GroupSketch`)
    sum to that of any combination.

    Memory: every (r, m) array is a row layout of the sketch. In float64 the factor's
    singular vectors come from the (r, r) Gram matrix of B = Y C^-T (eigenvalues
    sigma^2 = lam + nu, U^T = Sigma^-1 V^T B^T) instead of an SVD of B, whose LAPACK
    workspace is several more (r, m) arrays: at most three (r, m) arrays are live. The Gram
    matrix resolves sigma^2 to about eps * sigma_max^2, and the vectors to about
    eps * sigma_max^2 / sigma^2; directions with sigma^2 below sqrt(eps) sigma_max^2 (1.5e-8,
    far below the noise variance wherever float64 is chosen) are dropped (zero rows, see
    `Nystrom`). In float32 that cut (3e-4) would drop directions that matter, so float32
    keeps the SVD (its arrays are half the size)."""
    r, m = omega_t.shape
    dtype = y_t.dtype
    nu = np.sqrt(m) * jnp.finfo(dtype).eps * jnp.linalg.norm(y_t)
    y_t = y_t + nu * omega_t
    core = row_products(y_t, omega_t)
    core = 0.5 * (core + core.T)
    chol = jnp.linalg.cholesky(core)
    b_t = jax.scipy.linalg.solve_triangular(chol, y_t, lower=True)  # B^T = C^-1 Y^T
    if dtype == jnp.float64:
        sig2, vecs = jnp.linalg.eigh(row_products(b_t, b_t))
        sig2, vecs = sig2[::-1], vecs[:, ::-1]  # descending
        resolved = sig2 > np.sqrt(jnp.finfo(dtype).eps) * sig2[0]
        inv = jnp.where(resolved, 1.0 / jnp.sqrt(jnp.where(resolved, sig2, 1.0)), 0.0)
        # U^T in row blocks, each cast to the stored dtype as it is made
        stored = factor_dtype or dtype
        u_t = blocked(lambda w: (w @ b_t).astype(stored), vecs.T * inv[:, None],
                      SKETCH_DRAW_ROWS if r % SKETCH_DRAW_ROWS == 0 else None)
    else:
        _, sig, u_t = jnp.linalg.svd(b_t, full_matrices=False)
        sig2 = sig ** 2
        resolved = jnp.ones(r, bool)
    lam = jnp.maximum(sig2 - nu, 0.0)
    floor = jnp.min(jnp.where(resolved, lam, jnp.inf))
    lam = jnp.where(resolved, lam, floor)
    bad = ~jnp.all(jnp.isfinite(lam))  # Cholesky failed: no preconditioning
    u_t = jnp.where(bad, 0.0, u_t.astype(factor_dtype or dtype))
    return Nystrom(u_t, jnp.where(bad, 0.0, lam), jnp.asarray(shift, dtype))


def row_products(a: jax.Array, b: jax.Array, columns: int = 4096) -> jax.Array:
    """a @ b.T for wide (r, m) arrays, summed over column chunks of at most `columns` (a
    divisor of m): the whole product made XLA transpose an operand, one more (r, m) copy."""
    m = a.shape[1]
    chunk = max(c for c in range(1, min(columns, m) + 1) if m % c == 0)
    if chunk == m or chunk < 64:
        return a @ b.T

    def add(i, acc):
        start = i * chunk
        pa = jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=1)
        pb = jax.lax.dynamic_slice_in_dim(b, start, chunk, axis=1)
        return acc + pa @ pb.T

    return jax.lax.fori_loop(0, m // chunk, add, jnp.zeros((a.shape[0], b.shape[0]),
                                                          jnp.result_type(a, b)))


def blocked(apply: Callable, rows: jax.Array, block: int | None) -> jax.Array:
    """apply(rows) computed `block` rows at a time (one compiled loop body; zero padding
    where block does not divide the rows, which costs a copy of them)."""
    n = rows.shape[0]
    if block is None or n <= block:
        return apply(rows)
    count = -(-n // block)
    if count * block != n:
        rows = jnp.pad(rows, ((0, count * block - n), (0, 0)))
    out = jax.lax.map(apply, rows.reshape(count, block, -1))
    out = out.reshape(count * block, -1)
    return out if count * block == n else out[:n]


def power_max_eig(apply: Callable, m: int, key: jax.Array, iterations: int = 30, dtype=jnp.float32):
    """The largest eigenvalue of a PSD operator (n, m) -> (n, m), by power iteration: the
    Rayleigh quotient v.Av of the iterate after `iterations` steps. Each step's product
    also gives the Rayleigh quotient of the iterate it starts from, so the operator appears
    once in the compiled program, inside the loop (for a network Jacobian's product a
    second copy after the loop doubled the compilation time)."""
    v = jax.random.normal(key, (1, m), dtype)

    def step(carry, _):
        v, _ = carry
        w = apply(v)
        return (w / jnp.linalg.norm(w), jnp.sum(v * w)), None

    start = (v / jnp.linalg.norm(v), jnp.zeros((), dtype))
    (_, rayleigh), _ = jax.lax.scan(step, start, None, length=iterations + 1)
    return rayleigh


class SGDInfo(NamedTuple):
    """Per column: relative gradient norm at the end; the iterations run; the Lipschitz bound."""

    grad_norm: jax.Array
    iterations: int
    lipschitz: jax.Array


def sample_then_optimise(phi: Callable, phi_t: Callable, var: jax.Array, s2, t: jax.Array,
                         e: jax.Array, *, lipschitz, iterations: int = 500):
    """Minimise the sample-then-optimise objective for each row (t_s, e_s) by Nesterov descent.

    phi: (n, d) -> (n, m) = A J;  phi_t: (n, m) -> (n, d) = J^T A^T;  var: diag(S) (d,);
    t: prior draws (n, d) ~ N(0, S);  e: noise draws (n, m) ~ N(0, s2 I);
    lipschitz: L = 1 + lambda_max(P) / s2 (an upper bound is fine).
    Returns w (n, d) ~ the posterior of the zero-mean linear model, and SGDInfo.
    With t = 0 and e = r the minimiser is the posterior mean S J^T A^T K^-1 r.
    """
    sq = jnp.sqrt(var)
    u_target = t / sq + sq * phi_t(e) / s2
    lr = 1.0 / lipschitz
    root = jnp.sqrt(lipschitz)
    momentum = (root - 1.0) / (root + 1.0)

    def grad(u):
        return sq * phi_t(phi(sq * u)) / s2 + u - u_target

    def step(carry, _):
        u, u_prev = carry
        look = u + momentum * (u - u_prev)
        return (look - lr * grad(look), u), None

    u0 = t / sq  # start at the prior draw: directions the data do not inform are already right
    (u, _), _ = jax.lax.scan(step, (u0, u0), None, length=iterations)
    g = jnp.linalg.norm(grad(u), axis=1) / jnp.maximum(jnp.linalg.norm(u_target, axis=1), 1e-30)
    return sq * u, SGDInfo(g, iterations, lipschitz)
