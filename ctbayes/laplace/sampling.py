"""Posterior samples of the linearised model by pathwise conditioning (Matheron's rule).

For the zero-mean weight deviation w ~ N(0, S) and r = A J w + e (see `LinearModel`), a
posterior draw is a prior draw corrected by the data it would have produced:

    w_s = t_s + S J^T A^T K^-1 (e_s - A J t_s),   t_s ~ N(0, S),  e_s ~ N(0, s2 I),

and the image sample is x_lin + J w_s with the posterior mean x_lin = x0 + J S J^T A^T K^-1 r.
No covariance matrix is ever formed: K^-1 is applied by batched CG with a Nystrom
preconditioner, or the whole correction is found by sample-then-optimise (`solvers`).

Samples are sharded over all visible JAX devices: a 1-D mesh over the sample axis, each
device draws and solves its own samples (`shard_map`) with the same replicated
preconditioner (computed once, outside the sharded program); one device is just a mesh of
size one. Every sample has its own key (split from the caller's key) and its own CG stopping
rule, so the draws do not depend on the number of devices, and with a fixed
`SolverOptions.batch_size` neither do the samples, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ctbayes.laplace import solvers
from ctbayes.laplace.linearise import LinearModel, linearise

AXIS = "samples"
PRECONDITIONER_BLOCK = 64  # products with P per step of the Nystrom set-up (memory bound)


class Hyper(NamedTuple):
    """Hyperparameters: prior variance per prior group (G,) and the noise variance s2."""

    prior_variances: jax.Array
    noise_variance: jax.Array


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How K^-1 is applied. kind: "cg" or "sgd" (sample-then-optimise). These defaults are
    the only ones: `LaplaceConfig` takes its solver fields' defaults from here.

    cg_tol: relative CG residual; 1e-2 moves the std by well under its Monte Carlo error.
    precond_rank: of the Nystrom preconditioner (capped at the number of data); it should
    exceed the effective dimension of the fit, and its products are paid once per
    hyperparameter set, so a large rank makes CG cheap.

    batch_size: samples solved together on one device (None: all of the device's samples at
    once). It bounds memory, and with a fixed batch_size the samples are bitwise the same on
    any number of devices; otherwise they agree to within the solver's tolerance (CG's path
    depends on round-off, which depends on the batch shape).
    sketch_block: products with P per step of the Nystrom set-up (None: all at once).
    factor_dtype: the dtype the Nystrom factor U is stored in ("float32"; None: the model's).
    """

    kind: str = "cg"
    cg_tol: float = 1e-2
    cg_max_iter: int = 500
    precond_rank: int = 1024
    sgd_iterations: int = 1000
    batch_size: int | None = None
    sketch_block: int | None = PRECONDITIONER_BLOCK
    factor_dtype: str | None = None


class Samples(NamedTuple):
    """Zero-mean posterior samples and what the EM needs from them.

    images: J w_s, (n, H, W), sharded over the sample axis.
    weights: w_s (n, d), or None unless asked for.
    gamma_features: per sample and group, w_g . (J^T A^T A J w)_g / s2 (n, G).
    gamma_weights: per sample and group, ||w_g||^2 / S_g (n, G).
    iterations, residual, converged: per sample, solver iterations, final relative residual
    (CG) or relative gradient norm (SGD), and whether CG reached its tolerance.
    mean: the posterior mean, solved in the same batch (one more row).
    """

    images: jax.Array
    weights: jax.Array | None
    gamma_features: jax.Array
    gamma_weights: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    mean: "Mean"


class Mean(NamedTuple):
    """The linear model's posterior mean: weights w_lin (d,), image x_lin (H, W), solver info,
    and the data misfit ||r - A J w_lin||^2 that the EM's noise update needs.

    With CG the misfit is taken as ||s2 v||^2 (v = K^-1 r; equal at convergence), not from
    A J w_lin: r lies mostly along the top eigenvectors of P, and there a CG residual of
    relative size tol passes into A J w_lin = P v almost whole but into s2 v shrunk by
    s2 / lam. On the rectangles scan a 1e-2 residual made the misfit 51
    instead of 15 in one EM cycle, and the noise variance jumped threefold.
    """

    weights: jax.Array
    image: jax.Array
    iterations: jax.Array
    residual: jax.Array
    converged: jax.Array
    data_fit: jax.Array


def sample_mesh(devices=None) -> Mesh:
    """A 1-D mesh over the sample axis; all visible devices by default."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


# -- operators of the linear model ---------------------------------------------------------
def operators(model: LinearModel, hyper: Hyper):
    """Inside jit: (var, phi, phi_t, apply_p, jv) for batches of flat rows.

    var = diag(S); phi(v) = A J v (n, d) -> (n, m); phi_t(u) = J^T A^T u (n, m) -> (n, d);
    apply_p(u) = phi(var * phi_t(u)), the low-rank part of K; jv(v) = J v (n, H, W).
    """
    _, jv, jtu = linearise(model.fn_flat, model.theta)
    A = model.A
    shape = tuple(A.range_shape)
    var = model.prior.variances(hyper.prior_variances)

    def phi(v):
        return A(jv(v)).reshape(v.shape[0], -1)

    def phi_t(u):
        return jtu(A.T(u.reshape((u.shape[0],) + shape)))

    def apply_p(u):
        return phi(var * phi_t(u))

    return var, phi, phi_t, apply_p, jv


@jax.jit
def top_eigenvalue(model: LinearModel, hyper: Hyper, key: jax.Array) -> jax.Array:
    """lam_max(P) by power iteration (30 steps, `solvers.power_max_eig`)."""
    _, _, _, apply_p, _ = operators(model, hyper)
    return solvers.power_max_eig(apply_p, model.num_data, key, dtype=model.theta.dtype)


@functools.partial(jax.jit, static_argnames=("opts",))
def _preparation(model, hyper, key, opts: SolverOptions):
    """Solver set-up, computed once on one device and then replicated: the Nystrom
    preconditioner (CG) or the Lipschitz bound (SGD). Outside the sharded program, so every
    device count gets the very same preconditioner (a Nystrom factor is sensitive to
    round-off, and CG's path depends on it)."""
    var, phi, phi_t, apply_p, _ = operators(model, hyper)
    m = model.num_data
    s2 = hyper.noise_variance
    if opts.kind == "sgd":
        return 1.1 * (1.0 + top_eigenvalue(model, hyper, key) / s2)
    if opts.precond_rank > 0:
        return solvers.nystrom(apply_p, m, min(opts.precond_rank, m), key, s2, model.theta.dtype,
                               block=opts.sketch_block, factor_dtype=opts.factor_dtype)
    return None


# prior groups up to which the EM keeps one Nystrom sketch per group (G products per test
# vector, paid once) rather than a new rank-r factor per cycle (one product, every cycle)
SKETCH_MAX_GROUPS = 4


class GroupSketch(NamedTuple):
    """The Nystrom sketch of every prior group's part of P, P_g Omega with P_g = A J C_g J^T
    A^T (unit variance): P = sum_g v_g P_g, so sum_g v_g P_g Omega is the sketch of P at any
    variances, and a new factor costs no product with the network. Rows layout (`solvers.
    nystrom_factor`)."""

    omega_t: jax.Array  # (r, m)
    y_t: jax.Array  # (r, G, m)


class Reuse(NamedTuple):
    """What the next `preconditioner` call, at other hyperparameters, can reuse: the last
    set-up, the hyperparameters it was made for, and the group sketch (None: not kept)."""

    prep: object
    hyper: Hyper
    sketch: GroupSketch | None = None


@functools.partial(jax.jit, static_argnames=("rank", "block"))
def group_sketch(model: LinearModel, key: jax.Array, rank: int,
                 block: int | None = PRECONDITIONER_BLOCK) -> GroupSketch:
    """P_g Omega for every prior group g, from one product with J^T A^T and one with A J per
    group (`block` test vectors at a time)."""
    groups = model.prior.num_groups
    _, phi, phi_t, _, _ = operators(model, Hyper(jnp.ones(groups, model.theta.dtype),
                                                 jnp.ones((), model.theta.dtype)))
    members = [model.prior.index == g for g in range(groups)]

    def apply(u):  # (n, m) -> (n, G m)
        q = model.prior.scale * phi_t(u)
        return jnp.concatenate([phi(jnp.where(member, q, 0.0)) for member in members], axis=1)

    omega_t = solvers.sketch_matrix(key, model.num_data, rank, model.theta.dtype)
    y_t = solvers.blocked(apply, omega_t, block)  # (r, G m)
    return GroupSketch(omega_t, y_t.reshape(rank, groups, model.num_data))


@functools.partial(jax.jit, static_argnames=("factor_dtype",))
def _factor_of_sketch(sketch: GroupSketch, hyper: Hyper, factor_dtype=None) -> solvers.Nystrom:
    y_t = jnp.einsum("g,rgm->rm", hyper.prior_variances, sketch.y_t)
    return solvers.nystrom_factor(sketch.omega_t, y_t, hyper.noise_variance, factor_dtype)


def preconditioner(model: LinearModel, hyper: Hyper, key: jax.Array, opts: SolverOptions,
                   previous: Reuse | None = None) -> tuple[object, Reuse]:
    """(set-up, what to reuse next): the solver set-up for `hyper`, reusing `previous`
    where that is exact.

    With one prior group, P = v * P_1 is the unit-variance P scaled, so a Nystrom factor of
    P at any variance serves every other one after rescaling its eigenvalues (and the SGD
    bound likewise): the EM then pays for the rank-r factor once, not once per cycle. With
    a few groups (at most SKETCH_MAX_GROUPS, e.g. a prior with edge features) CG keeps one
    sketch per group (`GroupSketch`) and recombines it.
    """
    hyper = Hyper(*(jnp.asarray(h, model.theta.dtype) for h in hyper))
    groups = model.prior.num_groups
    if previous is not None and previous.prep is not None and groups == 1:
        prep, then = previous.prep, previous.hyper
        ratio = hyper.prior_variances[0] / then.prior_variances[0]
        if opts.kind == "sgd":  # 1.1 (1 + lam_max / s2)
            lam_max = (prep / 1.1 - 1.0) * then.noise_variance
            prep = 1.1 * (1.0 + ratio * lam_max / hyper.noise_variance)
        else:
            prep = solvers.Nystrom(prep.Ut, prep.lam * ratio, hyper.noise_variance)
        return prep, Reuse(prep, hyper)
    if opts.kind == "cg" and opts.precond_rank > 0 and 1 < groups <= SKETCH_MAX_GROUPS:
        sketch = previous.sketch if previous is not None else None
        if sketch is None:
            sketch = group_sketch(model, key, min(opts.precond_rank, model.num_data),
                                  opts.sketch_block)
        prep = _factor_of_sketch(sketch, hyper, opts.factor_dtype)
        return prep, Reuse(prep, hyper, sketch)
    prep = _preparation(model, hyper, key, opts)
    return prep, Reuse(prep, hyper)


def _solve(model, hyper, t, e, prep, opts: SolverOptions):
    """w = t + S J^T A^T K^-1 (e - A J t) for rows (t, e).

    Returns (w, J w, A J w, iterations, residual, converged). With CG, A J w is taken as
    e - s2 v (v = K^-1 (e - A J t); equal to A J w at convergence), which keeps the features
    estimate of gamma insensitive to the part of the CG error that K amplifies; and
    S J^T A^T v and its image J S J^T A^T v, which every product with K computes on the
    way, are accumulated along CG (`solvers.cg`'s side), not recomputed from v after it.
    """
    var, phi, phi_t, _, jv = operators(model, hyper)
    s2 = hyper.noise_variance
    if opts.kind == "sgd":
        w, info = solvers.sample_then_optimise(phi, phi_t, var, s2, t, e, lipschitz=prep,
                                               iterations=opts.sgd_iterations)
        iters = jnp.full(t.shape[0], opts.sgd_iterations, jnp.int32)
        return w, jv(w), phi(w), iters, info.grad_norm, jnp.ones(t.shape[0], bool)
    n = t.shape[0]

    def products(u):  # (K u, (S J^T A^T u, J S J^T A^T u))
        q = var * phi_t(u)
        image = jv(q)
        return model.A(image).reshape(n, -1) + s2 * u, (q, image)

    image_t = jv(t)
    v, info, (q, image_q) = solvers.cg(products, e - model.A(image_t).reshape(n, -1),
                                       precond=prep, tol=opts.cg_tol,
                                       max_iter=opts.cg_max_iter, side=True)
    return (t + q, image_t + image_q, e - s2 * v, info.iterations, info.residual,
            info.converged)


def _gamma_features(prior, w, phi_w, phi_t):
    """Per row and group, w_g . (J^T A^T phi_w)_g, phi_w = A J w (the features estimate of
    gamma times s2, see `em`). With one group it is the whole dot product, ||phi_w||^2,
    which needs no product with J^T A^T (half a product with P per row saved)."""
    if prior.num_groups == 1:
        return jnp.sum(jnp.square(phi_w), axis=1, keepdims=True)
    return prior.group_sum(w * phi_t(phi_w))


# -- samples and the mean, in one batch -----------------------------------------------------
@functools.partial(jax.jit, static_argnames=("opts", "mesh", "return_weights"))
def _samples(model, hyper, keys, is_mean, prep, opts, mesh, return_weights):
    """Solve a batch of rows: a posterior sample for each key, and the posterior mean where
    is_mean (t = 0, e = r). One compiled CG program serves both."""
    def solve_batch(keys, is_mean, model, hyper, prep):
        var, _, phi_t, _, _ = operators(model, hyper)
        s2 = hyper.noise_variance
        shape = tuple(model.A.range_shape)
        r = model.residual.reshape(-1)

        def draw(k, mean_row):
            k1, k2 = jax.random.split(k)
            t = jnp.sqrt(var) * jax.random.normal(k1, var.shape, var.dtype)
            e = jnp.sqrt(s2) * jax.random.normal(k2, shape, var.dtype)
            return jnp.where(mean_row, 0.0, t), jnp.where(mean_row, r, e.reshape(-1))

        t, e = jax.vmap(draw)(keys, is_mean)
        w, image, phi_w, iters, residual, converged = _solve(model, hyper, t, e, prep, opts)
        gamma_f = _gamma_features(model.prior, w, phi_w, phi_t) / s2
        gamma_w = model.prior.group_sum(w * w / var)
        w_mean = jnp.sum(jnp.where(is_mean[:, None], w, 0.0), axis=0, keepdims=True)
        misfit = jnp.sum(jnp.where(is_mean[:, None], jnp.square(e - phi_w), 0.0)).reshape(1)
        return (image, (w if return_weights else None), w_mean, misfit, gamma_f, gamma_w,
                iters, residual, converged)

    def local(keys, is_mean, model, hyper, prep):
        if opts.batch_size is None:
            return solve_batch(keys, is_mean, model, hyper, prep)
        # always through lax.map, even for one batch: the same compiled loop body everywhere
        rows = (-1, opts.batch_size)
        out = jax.lax.map(lambda a: solve_batch(a[0], a[1], model, hyper, prep),
                          (keys.reshape(rows + keys.shape[1:]), is_mean.reshape(rows)))
        out = jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), out)
        totals = tuple(jnp.sum(a, axis=0, keepdims=True) for a in out[2:4])
        return out[:2] + totals + out[4:]

    spec = P(AXIS)
    out_specs = (spec, spec if return_weights else None) + (spec,) * 7
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P(), P()),
                            out_specs=out_specs, check_vma=False)
    images, w, w_mean, misfit, *rest = sharded(keys, is_mean, model, hyper, prep)
    # w_mean, misfit: one partial sum per device (only the mean row's is non-zero)
    return (images, w, jnp.sum(w_mean, axis=0), jnp.sum(misfit), *rest)


def posterior_samples(model: LinearModel, hyper: Hyper, key: jax.Array, n: int,
                      opts: SolverOptions = SolverOptions(), *, mesh: Mesh | None = None,
                      return_weights: bool = False, prep=None) -> Samples:
    """n zero-mean posterior samples (images J w_s), sharded over the devices of `mesh`, and
    the posterior mean (`Samples.mean`), solved as one more row of the same batch.

    Add the posterior mean image to get samples of the image. The same key gives the same
    prior draws on any number of devices, and the same samples (bitwise, with a fixed
    opts.batch_size; else to within the solver tolerance). prep: a `preconditioner` for
    this hyper (None: computed here from the key).
    """
    mesh = mesh or sample_mesh()
    size = mesh.devices.size * (opts.batch_size or 1)
    prep_key, sample_key = jax.random.split(key)
    keys = jax.random.split(sample_key, n)
    rows = n + 1  # the samples, then the mean
    padded = -(-rows // size) * size
    keys = keys[jnp.arange(padded) % n]  # the mean row and the padding reuse keys (unused)
    is_mean = jnp.arange(padded) == n
    sharding = NamedSharding(mesh, P(AXIS))
    keys, is_mean = jax.device_put(keys, sharding), jax.device_put(is_mean, sharding)
    hyper = Hyper(*(jnp.asarray(h, model.theta.dtype) for h in hyper))
    prep = _preparation(model, hyper, prep_key, opts) if prep is None else prep
    images, w, w_mean, misfit, gamma_f, gamma_w, iters, residual, converged = _samples(
        model, hyper, keys, is_mean, prep, opts, mesh, return_weights)
    mean = Mean(w_mean, model.offset_image + images[n], iters[n], residual[n], converged[n],
                misfit)
    samples = (images, w, gamma_f, gamma_w, iters, residual, converged)
    samples = [None if a is None else a[:n] for a in samples]
    if n % mesh.devices.size == 0:  # dropping the extra rows leaves uneven shards: even them
        samples = [None if a is None else jax.device_put(a, sharding) for a in samples]
    return Samples(*samples, mean)


def posterior_mean(model: LinearModel, hyper: Hyper, opts: SolverOptions = SolverOptions(),
                   key: jax.Array | None = None, prep=None, companions: int = 1) -> Mean:
    """The linear model's posterior mean: w_lin = S J^T A^T K^-1 r and x_lin = x0 + J w_lin.

    Solved in the batch of `posterior_samples` with `companions` samples alongside: pass the
    sample count used elsewhere to reuse that compiled program. prep: a `preconditioner`
    for this hyper (None: computed here from the key)."""
    key = jax.random.key(0) if key is None else key
    return posterior_samples(model, hyper, key, companions, opts, prep=prep).mean


# -- summaries -------------------------------------------------------------------------------
class RunningMoments:
    """Per-pixel moments of samples that arrive in batches, without keeping them: the mean
    and the sum of squared deviations by Welford's update in Chan et al.'s batched form
    (numerically stable), and the raw second moment for zero-mean samples (`pixel_std`'s
    estimator). Memory: three images, whatever the number of samples. float64 on the host."""

    def __init__(self):
        self.count = 0
        self._mean = None
        self._m2 = None
        self._sq = None

    def update(self, batch) -> None:
        """Add samples (n, H, W)."""
        x = np.asarray(batch, np.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(0)
        m2_b = np.square(x - mean_b).sum(0)
        sq_b = np.square(x).sum(0)
        if self._mean is None:
            self.count, self._mean, self._m2, self._sq = n, mean_b, m2_b, sq_b
            return
        total = self.count + n
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2_b + np.square(delta) * (self.count * n / total)
        self._sq = self._sq + sq_b
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        """The running mean of the samples seen so far."""
        return self._mean

    def variance(self, ddof: int = 1) -> np.ndarray:
        """The running variance (divided by count - ddof) of the samples seen so far."""
        return self._m2 / (self.count - ddof)

    def rms(self) -> np.ndarray:
        """sqrt(mean(x^2)): the std of samples whose mean is known to be zero."""
        return np.sqrt(self._sq / self.count)


def pixel_std(zero_mean_images: jax.Array) -> jax.Array:
    """Per-pixel std from zero-mean samples (n, H, W): sqrt(mean(x^2)), the mean being known."""
    return jnp.sqrt(jnp.mean(jnp.square(zero_mean_images), axis=0))


@jax.jit
def predict(A_candidate, images: jax.Array) -> jax.Array:
    """Noise-free predicted measurements A_c x_s (n, *A_c.range_shape) of image samples."""
    return A_candidate(images)
