"""Linearised Laplace: products with J, the exact posterior, CG + Nystrom, sampled std, EM
against the exact evidence maximiser, device sharding and the sample-then-optimise solver.

Tiny flax.nnx conv nets (about 750 and 230 parameters) fitted to 16x16 and 32x32 disk
phantoms through the real (sparse ASTRA) ray transform of `small_geometry`.
"""

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from flax import nnx

from ctbayes.errors import InputError
from ctbayes.laplace import (LaplaceConfig, edges, em, exact, fit_laplace, linearise, matern,
                             priors, sampling, solvers)
from ctbayes.laplace.sampling import Hyper, SolverOptions
from ctbayes.metrics import edge_strength
from ctbayes.operators import make_ray_transform
from tests.conftest import disk_phantom, small_geometry

ROOT = Path(__file__).resolve().parents[1]


# -- a tiny network and its fitted problems -----------------------------------------------------
def conv(x, kernel, bias):
    """A 'SAME' convolution of an (H, W, C) image as one matrix product (im2col)."""
    k = kernel.shape[0]
    h, w = x.shape[:2]
    xp = jnp.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    patches = jnp.concatenate([xp[i:i + h, j:j + w] for i in range(k) for j in range(k)], -1)
    return patches @ kernel.reshape(-1, kernel.shape[-1]) + bias


class Conv(nnx.Module):
    def __init__(self, cin, cout, k, rngs):
        kernel = jax.random.normal(rngs.params(), (k, k, cin, cout)) / np.sqrt(k * k * cin)
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (cout,)))

    def __call__(self, x):
        return conv(x, self.kernel[...], self.bias[...])


class TinyNet(nnx.Module):
    def __init__(self, channels, rngs):
        self.c1 = Conv(2, channels, 3, rngs)
        self.c2 = Conv(channels, channels, 3, rngs)
        self.out = Conv(channels, 1, 1, rngs)

    def __call__(self, z):
        h = nnx.leaky_relu(self.c1(z), 0.2)
        h = nnx.leaky_relu(self.c2(h), 0.2)
        return self.out(h)[..., 0]


def fitted_problem(size, views, channels, noise=0.05, steps=150, seed=0):
    """(fn, params, A, y): a tiny net fitted by Adam (`steps`, 0: as initialised) to noisy
    data of a disk phantom."""
    A = make_ray_transform(small_geometry("parallel", size, views), "sparse")
    graphdef, params = nnx.split(TinyNet(channels, nnx.Rngs(seed)), nnx.Param)
    z = jax.random.normal(jax.random.key(seed + 100), (size, size, 2))

    def fn(p):
        return nnx.merge(graphdef, p)(z)

    y0 = A(jnp.asarray(disk_phantom(size)))
    y = y0 + noise * jnp.mean(jnp.abs(y0)) * jax.random.normal(jax.random.key(seed + 1), y0.shape)
    opt = optax.adam(1e-2)

    @jax.jit
    def run(p, A, y):
        def step(carry, _):
            p, state = carry
            g = jax.grad(lambda q: 0.5 * jnp.sum((A(fn(q)) - y) ** 2))(p)
            updates, state = opt.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None
        return jax.lax.scan(step, (p, opt.init(p)), None, length=steps)[0][0]

    return fn, (run(params, A, y) if steps else params), A, y


# one set of solver options (and sample count) wherever possible: each new combination costs
# a compilation of the sampler, which dominates the run time on a CPU
OPTS = SolverOptions("cg", cg_tol=1e-4, cg_max_iter=500, precond_rank=64)
N = 64


@pytest.fixture(scope="module")
def p16():
    """16x16, 10 views (m = 240), 745 parameters (d > m, as for a DIP), g-prior, zero mean,
    with its dense form and the exact evidence maximiser (the oracle)."""
    fn, params, A, y = fitted_problem(16, 10, 8)
    prior = priors.make_prior("g-prior", params, model_fn=fn, A=A, key=jax.random.key(3), probes=64)
    model = linearise.linear_model(fn, params, A, y, prior, "zero")
    dense = exact.dense_problem(model)
    init = em.initial_hyper(model)
    v, s2, _ = exact.maximise_marginal_likelihood(dense, np.asarray(init.prior_variances),
                                                  float(init.noise_variance))
    return dict(fn=fn, params=params, A=A, y=y, model=model, dense=dense, init=init, v=v, s2=s2,
                hyper=Hyper(jnp.asarray(v, jnp.float32), jnp.asarray(s2, jnp.float32)))


# -- 1. products with J ---------------------------------------------------------------------
def test_jvp_vjp_match_explicit_jacobian_and_are_adjoint(p16):
    fn, params = p16["fn"], p16["params"]
    fn_flat, theta, _ = linearise.flatten(fn, params)
    # (256, d), 7 parameter directions at a time: d is no multiple of 7, so the last batch is short
    assert theta.size % 7
    jac = np.asarray(linearise.dense_jacobian(fn_flat, theta, 7))
    v = jax.random.normal(jax.random.key(0), (3, theta.size))
    u = jax.random.normal(jax.random.key(1), (3, 16, 16))
    jv = np.asarray(linearise.jvp(fn, params, v)).reshape(3, -1)
    jtu = np.asarray(linearise.vjp(fn, params, u))
    np.testing.assert_allclose(jv, np.asarray(v) @ jac.T, rtol=1e-4, atol=1e-4 * np.abs(jv).max())
    ref = np.asarray(u).reshape(3, -1) @ jac
    np.testing.assert_allclose(jtu, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # adjoint: <u, J v> = <J^T u, v>
    lhs = np.sum(np.asarray(u).reshape(3, -1) * jv, axis=1)
    rhs = np.sum(jtu * np.asarray(v), axis=1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_prior_groups(p16):
    fn, params, A = p16["fn"], p16["params"], p16["A"]
    layers = priors.make_prior("per-layer", params)
    assert layers.names == ("c1", "c2", "out")
    assert layers.sizes().tolist() == [2 * 9 * 8 + 8, 8 * 9 * 8 + 8, 8 + 1]
    nested = {"block": {"conv": {"kernel": jnp.ones(3), "bias": jnp.ones(1)},
                        "norm": {"scale": jnp.ones(2)}}}
    assert priors.make_prior("per-layer", nested).names == ("block/conv", "block/norm")
    assert priors.make_prior("per-layer", nested, group_by=priors.by_prefix(1)).names == ("block",)
    # g-prior: the Hutchinson diagonal estimate agrees with the exact diag(J^T A^T A J)
    fn_flat, theta, _ = linearise.flatten(fn, params)
    exact_diag = np.asarray(priors.feature_sq_norms(fn_flat, theta, A, None, None))
    phi = p16["dense"].Phi
    np.testing.assert_allclose(exact_diag, np.sum(phi ** 2, 0), rtol=1e-3)
    estimate = np.asarray(priors.feature_sq_norms(fn_flat, theta, A, jax.random.key(0), 256))
    assert np.median(np.abs(estimate / exact_diag - 1)) < 0.1
    g = p16["model"].prior
    assert g.kind == "g-prior" and g.num_groups == 1 and np.all(np.asarray(g.scale) > 0)


# -- 2. the exact path against brute-force Gaussian conditioning ----------------------------------
def test_exact_posterior_matches_dense_gaussian_conditioning(p16):
    dense, v, s2 = p16["dense"], p16["v"], p16["s2"]
    post = exact.posterior(dense, v, s2)
    J, Phi, r = dense.J, dense.Phi, dense.residual
    S = np.diag(dense.variances(v))
    # joint Gaussian of (image, residual data); condition with a plain matrix inverse
    cxx, cxr, crr = J @ S @ J.T, J @ S @ Phi.T, Phi @ S @ Phi.T + s2 * np.eye(len(r))
    gain = cxr @ np.linalg.inv(crr)
    cov = cxx - gain @ cxr.T
    mean = dense.offset_image + gain @ r
    scale = np.abs(cov).max()
    np.testing.assert_allclose(post.image_cov, cov, atol=1e-7 * scale)
    np.testing.assert_allclose(post.image_mean.ravel(), mean, atol=1e-7 * np.abs(mean).max())
    np.testing.assert_allclose(post.std.ravel(), np.sqrt(np.diag(cov)), rtol=1e-5)
    # the weight-space form (precision H = Phi^T Phi / s2 + S^-1) gives the same covariance
    H = Phi.T @ Phi / s2 + np.linalg.inv(S)
    np.testing.assert_allclose(post.weight_cov, np.linalg.inv(H),
                               atol=1e-7 * np.abs(post.weight_cov).max())
    # the evidence, both forms, against slogdet
    sign, logdet = np.linalg.slogdet(crr)
    ref = -0.5 * r @ np.linalg.solve(crr, r) - 0.5 * logdet - 0.5 * len(r) * np.log(2 * np.pi)
    for form in ("dual", "primal"):
        assert exact.log_marginal_likelihood(dense, v, s2, form) == pytest.approx(ref, rel=1e-8)


def test_exact_path_refuses_a_problem_too_large_to_form(p16, monkeypatch):
    model = p16["model"]
    pixels, d, m = 256, model.num_params, model.num_data
    monkeypatch.setattr(exact, "EXACT_MAX_BYTES", 8 * d * (pixels + m) - 1)
    with pytest.raises(InputError, match=f"{pixels} pixels and {m} data by {d} parameters"):
        exact.dense_problem(model)
    monkeypatch.setattr(exact, "EXACT_MAX_BYTES", 8 * d * (pixels + m))
    assert exact.dense_problem(model).J.shape == (pixels, d)


# -- 3. CG with the Nystrom preconditioner ------------------------------------------------------
def test_cg_nystrom_fewer_iterations_and_matches_dense_solve(p16):
    dense, v, s2 = p16["dense"], p16["v"], p16["s2"]
    P = np.tensordot(v, dense.grams, 1)
    K = P + s2 * np.eye(len(P))
    b = np.asarray(jax.random.normal(jax.random.key(5), (4, len(K))), np.float64)
    b[0] = dense.residual
    ref = np.linalg.solve(K, b.T).T
    P32, K32 = jnp.asarray(P, jnp.float32), jnp.asarray(K, jnp.float32)

    @functools.partial(jax.jit, static_argnums=1)
    def solve(b, rank):
        pre = solvers.nystrom(lambda u: u @ P32, len(K), 64, jax.random.key(0), s2) if rank else None
        return solvers.cg(lambda u: u @ K32, b, precond=pre, tol=1e-5, max_iter=2000)

    results = {}
    for rank in (0, 64):
        x, info = solve(jnp.asarray(b, jnp.float32), rank)
        assert bool(jnp.all(info.converged))
        results[rank] = int(jnp.max(info.iterations))
        err = np.linalg.norm(np.asarray(x, np.float64) - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert err.max() < 1e-2, (rank, err)
    print(f"CG iterations to 1e-5: {results[0]} without, {results[64]} with rank-64 Nystrom")
    assert results[64] < 0.5 * results[0]


def test_cg_residuals_are_true_and_float64_skips_the_recomputing_product(p16):
    """Reported residuals against ||b - K x|| / ||b|| computed independently (numpy, float64,
    from the returned x). float32: unpreconditioned, this K drives the recursion's residual
    below 1e-3 while the true one stays above it, and the report, recomputed from x (a
    second traced product with K besides the loop's), shows it. float64: the recursion's
    own residuals are the true ones to 1e-6 and cost no product."""
    dense, v, s2 = p16["dense"], p16["v"], p16["s2"]
    K = np.tensordot(v, dense.grams, 1) + s2 * np.eye(dense.Phi.shape[0])
    b = np.asarray(jax.random.normal(jax.random.key(6), (3, len(K))), np.float64)
    for dtype, products in ((jnp.float32, 2), (jnp.float64, 1)):
        traced = []

        def apply(u):
            traced.append(u.dtype)
            return u @ jnp.asarray(K, dtype)

        with jax.enable_x64(dtype == jnp.float64):
            x, info = jax.jit(lambda b: solvers.cg(apply, b, tol=1e-3, max_iter=2000))(
                jnp.asarray(b, dtype))
            x, reported = np.asarray(x, np.float64), np.asarray(info.residual, np.float64)
        true = np.linalg.norm(b - x @ K, axis=1) / np.linalg.norm(b, axis=1)
        assert len(traced) == products, (dtype, traced)
        if dtype == jnp.float32:  # the recursion claims 1e-3, the truth and the report do not
            assert bool(jnp.all(info.converged)) and np.all(true > 1e-3)
            assert np.all(reported > 1e-3), reported
        else:
            assert bool(jnp.all(info.converged)) and np.all(true <= 1e-3 * (1 + 1e-6))
            np.testing.assert_allclose(reported, true, rtol=1e-6)


def test_cg_side_outputs_and_sample_images_are_the_maps_of_the_solution(p16):
    """cg(side=True) returns a(x) for the linear map a that its products compute on the way,
    accumulated along the iterations: it equals a applied to the returned x. The samples use
    it for their images, which must be J w_s (dense J, float64) of their own weights."""
    dense, v, s2 = p16["dense"], p16["v"], p16["s2"]
    K = np.tensordot(v, dense.grams, 1) + s2 * np.eye(dense.Phi.shape[0])
    G = np.asarray(jax.random.normal(jax.random.key(8), (len(K), 5)), np.float64)
    b = np.asarray(jax.random.normal(jax.random.key(9), (3, len(K))), np.float64)
    with jax.enable_x64(True):
        x, info, (a,) = solvers.cg(lambda u: (u @ K, (u @ G,)), jnp.asarray(b), tol=1e-8,
                                   max_iter=2000, side=True)
        assert bool(jnp.all(info.converged))
        np.testing.assert_allclose(a, np.asarray(x) @ G, rtol=1e-9, atol=1e-12 * np.abs(G).max())
    draws = sampling.posterior_samples(p16["model"], p16["hyper"], jax.random.key(4), 4, OPTS,
                                       return_weights=True)
    images = np.asarray(draws.weights, np.float64) @ dense.J.T
    np.testing.assert_allclose(np.asarray(draws.images, np.float64).reshape(4, -1), images,
                               atol=1e-4 * np.abs(images).max())
    mean_image = dense.J @ np.asarray(draws.mean.weights, np.float64)
    np.testing.assert_allclose(np.asarray(draws.mean.image - p16["model"].offset_image,
                                          np.float64).ravel(), mean_image,
                               atol=1e-4 * np.abs(mean_image).max())


def test_power_iteration_finds_the_top_eigenvalue_with_one_traced_product(p16):
    """lam_max of this problem's P (dense, numpy eigvalsh) to 1e-3, with the product traced
    once (inside the loop, so compiled once)."""
    dense, v = p16["dense"], p16["v"]
    P = np.tensordot(v, dense.grams, 1)
    truth = np.linalg.eigvalsh(P)[-1]
    traced = []

    def apply(u):
        traced.append(1)
        return u @ jnp.asarray(P, jnp.float32)

    lam = jax.jit(lambda key: solvers.power_max_eig(apply, len(P), key))(jax.random.key(2))
    assert float(lam) == pytest.approx(truth, rel=1e-3)
    assert len(traced) == 1


def test_single_group_gamma_features_need_no_product(p16):
    """w . J^T A^T (A J w) per group: with one group the code takes ||A J w||^2 (no product
    with J^T A^T), with several the per-group sums; both equal the dense computation."""
    dense = p16["dense"]
    Phi = dense.Phi
    w = np.asarray(jax.random.normal(jax.random.key(7), (3, Phi.shape[1])), np.float64)
    phi_w = w @ Phi.T
    products = []

    def phi_t(u):
        products.append(1)
        return u @ Phi

    one = p16["model"].prior
    several = priors.make_prior("per-layer", p16["params"])
    assert one.num_groups == 1 and several.num_groups > 1
    index = np.asarray(several.index)
    per_group = np.stack([np.sum((w * (phi_w @ Phi))[:, index == g], axis=1)
                          for g in range(several.num_groups)], axis=1)
    with jax.enable_x64(True):
        np.testing.assert_allclose(sampling._gamma_features(one, w, phi_w, phi_t),
                                   per_group.sum(1, keepdims=True), rtol=1e-9)
        assert not products
        np.testing.assert_allclose(sampling._gamma_features(several, w, phi_w, phi_t),
                                   per_group, rtol=1e-9)
    assert products


def test_nystrom_in_blocks_equals_all_at_once_and_full_rank_is_exact(p16):
    """The memory-bounded set-up (products with P in blocks, padded) gives the same factor;
    at full rank the approximation is P itself."""
    P = np.tensordot(p16["v"], p16["dense"].grams, 1)
    P32 = jnp.asarray(P, jnp.float32)
    m = len(P)
    rank = m - 3  # not a multiple of the block: the last block is padded
    whole = solvers.nystrom(lambda u: u @ P32, m, rank, jax.random.key(0), 1.0)
    parts = solvers.nystrom(lambda u: u @ P32, m, rank, jax.random.key(0), 1.0, block=7)
    np.testing.assert_allclose(np.asarray(parts.lam), np.asarray(whole.lam), rtol=1e-4,
                               atol=1e-5 * float(whole.lam[0]))
    full = solvers.nystrom(lambda u: u @ P32, m, m, jax.random.key(1), 1.0, block=7)
    approx = np.asarray(full.matvec(jnp.eye(m, dtype=jnp.float32)), np.float64)
    np.testing.assert_allclose(approx, P, atol=1e-3 * np.abs(P).max())


def test_group_sketch_gives_the_factor_of_a_fresh_sketch_at_any_variances(p16):
    """With a few prior groups the CG set-up keeps P_g Omega per group: recombined at new
    variances it is the Nystrom factor that a fresh sketch of P with the same test matrix
    gives, and at full rank P itself (dense, per-layer groups of the 16x16 problem)."""
    layers = priors.make_prior("per-layer", p16["params"])
    assert 1 < layers.num_groups <= sampling.SKETCH_MAX_GROUPS
    model = p16["model"].replace(prior=layers)
    dense = exact.dense_problem(model)
    m = model.num_data
    opts = dataclasses.replace(OPTS, precond_rank=m)
    key = jax.random.key(5)
    first = Hyper(jnp.asarray([0.3, 0.02, 1.5], jnp.float32), jnp.asarray(0.1, jnp.float32))
    second = Hyper(jnp.asarray([0.01, 0.4, 0.2], jnp.float32), jnp.asarray(0.03, jnp.float32))
    prep, reuse = sampling.preconditioner(model, first, key, opts)
    assert reuse.sketch is not None and reuse.sketch.y_t.shape == (m, 3, m)  # (r, G, m)
    again, _ = sampling.preconditioner(model, second, key, opts, reuse)
    eye = jnp.eye(m, dtype=jnp.float32)
    for hyper, factor in ((first, prep), (second, again)):
        P = np.tensordot(np.asarray(hyper.prior_variances, np.float64), dense.grams, 1)
        fresh = solvers.nystrom(lambda u: u @ jnp.asarray(P, jnp.float32), m, m, key,
                                hyper.noise_variance)
        approx = np.asarray(factor.matvec(eye), np.float64)
        np.testing.assert_allclose(approx, np.asarray(fresh.matvec(eye)),
                                   atol=1e-3 * np.abs(P).max())
        np.testing.assert_allclose(approx, P, atol=1e-3 * np.abs(P).max())
        assert float(factor.shift) == pytest.approx(float(hyper.noise_variance))


# -- 4. sampled std against the exact std (32x32, CG path) ---------------------------------------
def test_sampled_std_matches_exact_std_32x32():
    fn, params, A, y = fitted_problem(32, 20, 4, steps=0)
    prior = priors.make_prior("isotropic", params)
    model = linearise.linear_model(fn, params, A, y, prior, "zero")
    dense = exact.dense_problem(model)
    init = em.initial_hyper(model)
    v, s2, _ = exact.maximise_marginal_likelihood(dense, np.asarray(init.prior_variances),
                                                  float(init.noise_variance))
    post = exact.posterior(dense, v, s2)
    hyper = Hyper(jnp.asarray(v, jnp.float32), jnp.asarray(s2, jnp.float32))
    opts = SolverOptions("cg", cg_tol=1e-4, cg_max_iter=1000, precond_rank=64)
    draws = sampling.posterior_samples(model, hyper, jax.random.key(0), 128, opts)
    assert bool(jnp.all(draws.converged))
    std = np.asarray(sampling.pixel_std(draws.images))
    rel = np.median(np.abs(std / post.std - 1))
    print(f"32x32: median relative std error {rel:.3f} (128 samples, "
          f"{int(draws.iterations.max())} CG iterations)")
    assert rel < 0.10


# -- 5. EM against the exact evidence maximiser --------------------------------------------------
def test_exact_em_converges_to_oracle(p16):
    hyper, history = em.run_em(p16["model"], p16["init"], jax.random.key(0), cycles=10,
                               solver="exact", dense=p16["dense"])
    assert float(hyper.prior_variances[0]) == pytest.approx(p16["v"][0], rel=1e-2)
    assert float(hyper.noise_variance) == pytest.approx(p16["s2"], rel=1e-2)
    assert len(history) == 10


def test_em_stops_once_converged(p16):
    """With a tolerance the exact EM stops at the first cycle that moved every variance by
    less than it; that cycle's output is already at the oracle, and without a tolerance
    the same cycles give the same numbers."""
    hyper, history = em.run_em(p16["model"], p16["init"], jax.random.key(0), cycles=50,
                               solver="exact", dense=p16["dense"], tol=1e-4)
    assert 2 <= len(history) < 50 and history[-1]["em_converged"]
    assert not any(h["em_converged"] for h in history[:-1])
    last, previous = history[-1], history[-2]
    assert abs(np.log(last["noise_variance"] / previous["noise_variance"])) < 1e-4
    assert float(hyper.prior_variances[0]) == pytest.approx(p16["v"][0], rel=1e-2)
    assert float(hyper.noise_variance) == pytest.approx(p16["s2"], rel=1e-2)
    full, _ = em.run_em(p16["model"], p16["init"], jax.random.key(0), cycles=len(history),
                        solver="exact", dense=p16["dense"])
    assert float(full.noise_variance) == pytest.approx(float(hyper.noise_variance), rel=1e-6)


def test_sample_based_em_matches_oracle(p16):
    hyper, history = em.run_em(p16["model"], p16["init"], jax.random.key(1), cycles=5, samples=N,
                               solver="cg", opts=OPTS)
    v, s2 = float(hyper.prior_variances[0]), float(hyper.noise_variance)
    print(f"EM: v {v:.4g} (oracle {p16['v'][0]:.4g}), s2 {s2:.4g} (oracle {p16['s2']:.4g}); "
          f"CG iterations per cycle {[h['iterations_max'] for h in history]}")
    assert v == pytest.approx(p16["v"][0], rel=0.10)
    assert s2 == pytest.approx(p16["s2"], rel=0.10)
    assert history[-1]["not_converged"] == 0
    assert history[0]["start_noise_variance"] == pytest.approx(float(p16["init"].noise_variance))


def test_em_starts_where_float32_cg_is_well_conditioned(p16):
    """A start far below the noise (lam_max / s2 = 1e12) is raised to lam_max / 1e5 for the
    first E-step, lam_max being the exact top eigenvalue of P; the EM still finds the oracle."""
    start = p16["init"]._replace(noise_variance=jnp.asarray(1e-12, jnp.float32))
    hyper, history = em.run_em(p16["model"], start, jax.random.key(1), cycles=5, samples=N,
                               solver="cg", opts=OPTS)
    v0 = np.asarray(start.prior_variances, np.float64)
    lam_max = np.linalg.eigvalsh(np.tensordot(v0, p16["dense"].grams, 1))[-1]
    assert history[0]["start_noise_variance"] == pytest.approx(lam_max / em.START_CONDITION,
                                                               rel=0.05)
    assert all(h["not_converged"] == 0 for h in history)
    assert float(hyper.noise_variance) == pytest.approx(p16["s2"], rel=0.10)


def test_cg_posterior_mean_matches_exact(p16):
    post = exact.posterior(p16["dense"], p16["v"], p16["s2"])
    mean = sampling.posterior_mean(p16["model"], p16["hyper"], OPTS)
    assert bool(mean.converged)
    scale = np.abs(post.image_mean).max()
    assert np.abs(np.asarray(mean.image) - post.image_mean).max() < 1e-2 * scale
    np.testing.assert_allclose(np.asarray(mean.weights), post.weight_mean,
                               atol=1e-2 * np.abs(post.weight_mean).max())
    # the same row solved alongside N samples (as the EM does) gives the same mean
    batched = sampling.posterior_samples(p16["model"], p16["hyper"], jax.random.key(3), N, OPTS)
    assert np.abs(np.asarray(batched.mean.image) - post.image_mean).max() < 1e-2 * scale
    gap = np.linalg.norm(post.image_mean - np.asarray(p16["model"].image))
    gap /= np.linalg.norm(post.image_mean)
    print(f"linear-model mean vs network image: relative difference {gap:.2f}")



def test_mean_misfit_survives_a_loose_cg_tolerance(p16):
    """The EM's noise update needs ||r - A J w_lin||^2, a small remainder of a large r. At a
    relative CG tolerance of 1e-2 (the CLI's) it must still be accurate: taken as ||s2 v||^2
    it is; taken from the solved image, A J w_lin, the CG error swamps it."""
    post = exact.posterior(p16["dense"], p16["v"], p16["s2"])
    dense = p16["dense"]
    truth = np.sum((dense.residual - dense.Phi @ post.weight_mean) ** 2)
    loose = SolverOptions("cg", cg_tol=1e-2, cg_max_iter=500, precond_rank=0)
    mean = sampling.posterior_mean(p16["model"], p16["hyper"], loose)
    from_image = float(jnp.sum(jnp.square(p16["model"].y - p16["model"].A(mean.image))))
    print(f"misfit: exact {truth:.4g}, s2 v {float(mean.data_fit):.4g}, from the image "
          f"{from_image:.4g}; CG iterations {int(mean.iterations)}, residual "
          f"{float(mean.residual):.2g}")
    assert float(mean.residual) > 1e-3  # the solve really is loose
    assert float(mean.data_fit) == pytest.approx(truth, rel=0.15)  # 8%; from the image 3.6x

# -- 6. sharding over devices ---------------------------------------------------------------------
SHARDING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from ctbayes.laplace import linearise, priors, sampling
    from ctbayes.operators import make_ray_transform
    from tests.conftest import small_geometry

    assert len(jax.devices()) == 4, jax.devices()
    A = make_ray_transform(small_geometry("parallel", 16, 8), "sparse")
    keys = jax.random.split(jax.random.key(0), 3)
    params = {"w1": 0.3 * jax.random.normal(keys[0], (3, 3, 1, 4)), "b1": jnp.zeros(4),
              "w2": 0.5 * jax.random.normal(keys[1], (4,)), "b2": jnp.zeros(())}
    z = jax.random.normal(keys[2], (1, 16, 16, 1))

    def fn(p):
        h = jax.lax.conv_general_dilated(z, p["w1"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h[0] + p["b1"]) @ p["w2"] + p["b2"]

    prior = priors.make_prior("per-layer", params)
    model = linearise.linear_model(fn, params, A, A(fn(params)) + 0.1, prior)
    hyper = sampling.Hyper(jnp.ones(model.prior.num_groups), jnp.asarray(0.5))
    key = jax.random.key(42)
    one_device = sampling.sample_mesh(jax.devices()[:1])
    # a fixed batch size: the same arithmetic per sample, so the same bits on 1 and 4 devices
    opts = sampling.SolverOptions("cg", cg_tol=1e-4, precond_rank=16, batch_size=2)
    four = sampling.posterior_samples(model, hyper, key, 8, opts)
    one = sampling.posterior_samples(model, hyper, key, 8, opts, mesh=one_device)
    assert len(four.images.sharding.device_set) == 4, four.images.sharding
    assert len(one.images.sharding.device_set) == 1
    assert sorted(s.data.shape[0] for s in four.images.addressable_shards) == [2, 2, 2, 2]
    a, b = np.asarray(four.images), np.asarray(one.images)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    a, b = np.asarray(four.mean.image), np.asarray(one.mean.image)  # the mean row too
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    print("SHARDED-OK: largest difference between 4 devices and 1:", np.abs(a - b).max())
""")


def test_samples_are_sharded_over_devices_and_match_one_device(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARDING_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED-OK" in out.stdout
    print(out.stdout.strip())


# -- 7. sample-then-optimise against CG ------------------------------------------------------------
def test_sgd_samples_match_cg_std(p16):
    """Same keys, so the same prior draws: the solvers differ only in how well they converge.
    Tolerance: median relative difference of the per-pixel std below 15% (CG vs exact: 10%)."""
    model, hyper = p16["model"], p16["hyper"]
    key = jax.random.key(1)
    cg = sampling.posterior_samples(model, hyper, key, N, OPTS)
    sgd = sampling.posterior_samples(model, hyper, key, N, SolverOptions("sgd", sgd_iterations=1000))
    std_cg = np.asarray(sampling.pixel_std(cg.images))
    std_sgd = np.asarray(sampling.pixel_std(sgd.images))
    rel = np.median(np.abs(std_sgd / std_cg - 1))
    print(f"SGD vs CG: median relative std difference {rel:.3f}")
    assert rel < 0.15



def test_sgd_runs_in_float64(p16):
    """The SGD path in float64 (its Lipschitz bound's power iteration in the model's dtype:
    a float32 start vector broke the float64 trace) matches the dense float64 std."""
    model = linearise.linear_model(p16["fn"], p16["params"], p16["A"], p16["y"],
                                   priors.make_prior("isotropic", p16["params"]), "zero")
    v0 = float(em.initial_hyper(model).prior_variances[0])
    s2 = float(p16["s2"])
    config = LaplaceConfig(prior="isotropic", solver="sgd", em_cycles=0, samples=N,
                           std_samples=N, precision="float64", init_prior_variance=v0,
                           init_noise_variance=s2)
    post = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"], config)
    assert post.precision == "float64"
    with jax.enable_x64(True):
        truth = exact.posterior(exact.dense_problem(post.model), np.array([v0]), s2).std
    rel = np.median(np.abs(np.asarray(post.std(), np.float64) / truth - 1))
    print(f"float64 SGD vs dense: median relative std error {rel:.3f}")
    assert rel < 0.15

# -- 8. the posterior object --------------------------------------------------------------------------
def test_fit_laplace_interface(p16):
    # the same solver options and sample counts as above: the compiled sampler is reused
    config = LaplaceConfig(prior="g-prior", em_cycles=2, em_tol=0.0, samples=N, std_samples=N,
                           cg_tol=OPTS.cg_tol, cg_max_iter=OPTS.cg_max_iter,
                           precond_rank=OPTS.precond_rank, precision="float32")
    assert config.solver_options == OPTS
    post = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"], config, jax.random.key(0))
    assert set(post.prior_variances) == {"g"} and post.noise_variance > 0
    assert len(post.history) == 2
    np.testing.assert_allclose(post.mean(), p16["fn"](p16["params"]), rtol=1e-6)
    samples = post.sample(jax.random.key(1), N)
    assert samples.shape == (N, 16, 16)
    assert post.std().shape == (16, 16) and bool(jnp.all(post.std() > 0))
    A_c = make_ray_transform(small_geometry("parallel", 16, 3).with_angles([0.1, 0.7, 1.3]), "sparse")
    pred = post.predictive_samples(jax.random.key(2), N, A_c)
    assert pred.shape == (N, 3, 24)
    np.testing.assert_allclose(pred, A_c(post.sample(jax.random.key(2), N)), rtol=1e-4, atol=1e-4)
    # the exact solver: std is the exact one at the learned hyperparameters
    exact_post = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"],
                             LaplaceConfig(prior="isotropic", solver="exact", em_cycles=3,
                                           em_tol=0.0))
    ref = exact.posterior(exact_post.dense, np.asarray(exact_post.hyper.prior_variances),
                          exact_post.noise_variance)
    np.testing.assert_allclose(exact_post.std(), ref.std, rtol=1e-5)
    with pytest.raises(InputError):
        LaplaceConfig(prior="gaussian-process")


def test_fit_laplace_times_its_phases_and_a_second_fit_compiles_nothing(p16):
    """`timings` split the fit into its phases, each with the XLA compilation inside it: they
    add up to at most the fit's wall time, and a second fit of the same problem, which reuses
    every compiled program, spends none of it compiling."""
    config = LaplaceConfig(prior="g-prior", em_cycles=2, em_tol=0.0, samples=N, std_samples=N,
                           cg_tol=OPTS.cg_tol, cg_max_iter=OPTS.cg_max_iter,
                           precond_rank=OPTS.precond_rank, precision="auto")
    phases = ("linearise", "condition", "preconditioner", "e_steps")
    for _ in range(2):  # a first fit, then the same fit again
        start = time.perf_counter()
        post = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"], config, jax.random.key(0))
        wall = time.perf_counter() - start
        t = post.timings
        assert set(t) == {*phases, *(f"{phase}_compile" for phase in phases)}, t
        assert 0 < sum(t[phase] for phase in phases) <= wall
        assert all(0 <= t[f"{phase}_compile"] <= t[phase] for phase in phases), t
    assert all(t[f"{phase}_compile"] == 0 for phase in phases), t


def test_posterior_products_run_at_full_precision(p16):
    """Every product of the linearised model is traced with the highest matmul precision:
    GPUs otherwise compute float32 products in TF32, which stalled CG on an H200."""
    seen = []

    def recording_fn(params):
        seen.append(jax.config.jax_default_matmul_precision)
        return p16["fn"](params)

    config = LaplaceConfig(prior="isotropic", em_cycles=1, samples=N, std_samples=N,
                           cg_tol=OPTS.cg_tol, precond_rank=OPTS.precond_rank,
                           precision="float32")
    post = fit_laplace(recording_fn, p16["params"], p16["A"], p16["y"], config)
    post.std()  # samples with the solvers compiled during the EM, so no new traces here
    assert len(seen) > 0 and set(seen) == {"highest"}


# -- the Matern-1/2 filter prior -------------------------------------------------------------------
def test_matern_filter_prior_correlates_taps_and_fits_their_lengthscale():
    # correlate applies L with L L^T = K: the identity's 9 filters come out as the columns of L
    scale = 1.5849
    eye = {"conv": {"kernel": jnp.eye(9).reshape(3, 3, 9, 1), "bias": jnp.ones(9)}}
    out = matern.correlate(eye, (None, scale))  # leaves in tree order: bias, kernel
    L = np.asarray(out["conv"]["kernel"]).reshape(9, 9)
    np.testing.assert_allclose(L @ L.T, matern.correlation(3, scale), atol=1e-6)
    assert matern.correlation(3, scale)[0, 4] == pytest.approx(np.exp(-np.sqrt(2) / scale))
    np.testing.assert_array_equal(out["conv"]["bias"], eye["conv"]["bias"])
    back = matern.whiten(out, (None, scale))
    np.testing.assert_allclose(back["conv"]["kernel"], eye["conv"]["kernel"], atol=1e-6)
    # the lengthscale of filters drawn from the prior is recovered (grid spacing 26%)
    chol = np.linalg.cholesky(matern.correlation(3, scale))
    draws = 0.3 * chol @ np.random.default_rng(0).normal(size=(9, 4000))
    fitted = matern.fit_lengthscale(draws.reshape(3, 3, 40, 100))
    assert abs(np.log(fitted / scale)) < 0.01
    assert matern.lengthscales({"b": jnp.ones(3), "k1": jnp.ones((1, 1, 2, 2)),
                                "k3": draws.reshape(3, 3, 40, 100)})[:2] == (None, None)


def test_matern_prior_exact_posterior_matches_correlated_gaussian_conditioning(p16):
    """fit_laplace with the Matern prior (white coordinates, one variance) gives the
    posterior of the correlated prior S = v blockdiag(kron(K_l, I)) on the network weights,
    computed here by dense Gaussian conditioning in the original coordinates."""
    fn, params, A, y = p16["fn"], p16["params"], p16["A"], p16["y"]
    v0, s2, scale = 0.05, 0.02, 2.0  # taps 1 apart correlate by 0.61
    post = fit_laplace(fn, params, A, y, LaplaceConfig(
        prior="matern", matern_lengthscale=scale, solver="exact", em_cycles=0,
        init_prior_variance=v0, init_noise_variance=s2))
    assert set(post.prior_variances) == {"all"}
    fn_flat, theta, _ = linearise.flatten(fn, params)
    J = np.asarray(linearise.dense_jacobian(fn_flat, theta), np.float64)
    blocks = []
    for leaf in jax.tree.leaves(params):
        if matern.is_filter_kernel(leaf):
            K = matern.correlation(3, scale)
            blocks.append(np.kron(K, np.eye(leaf.shape[2] * leaf.shape[3])))
        else:
            blocks.append(np.eye(leaf.size))
    S = v0 * scipy.linalg.block_diag(*blocks)
    Phi = np.stack([np.asarray(A(jnp.asarray(col.reshape(16, 16), jnp.float32)), np.float64).ravel()
                    for col in J.T], axis=1)
    cxx, cxr, crr = J @ S @ J.T, J @ S @ Phi.T, Phi @ S @ Phi.T + s2 * np.eye(Phi.shape[0])
    cov = cxx - cxr @ np.linalg.solve(crr, cxr.T)
    np.testing.assert_allclose(np.asarray(post.std()).ravel(), np.sqrt(np.diag(cov)), rtol=2e-3)
    # the linear model's mean (zero prior mean): x0 = f(theta*) - J theta*, x_lin = x0 + gain r
    x0 = np.asarray(fn(params), np.float64).ravel() - J @ np.asarray(theta, np.float64)
    resid = np.asarray(y, np.float64).ravel() - np.asarray(
        A(jnp.asarray(x0.reshape(16, 16), jnp.float32)), np.float64).ravel()
    x_lin = x0 + cxr @ np.linalg.solve(crr, resid)
    np.testing.assert_allclose(np.asarray(post.linear_mean()).ravel(), x_lin,
                               atol=2e-3 * np.abs(x_lin).max())


def test_edge_strength_is_the_sobel_magnitude_of_scipy():
    """The one Sobel stencil, in NumPy and traced in JAX, is scipy's (reflected borders)."""
    from scipy import ndimage

    image = np.random.default_rng(0).normal(size=(9, 12))
    reference = np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) / 8
    np.testing.assert_allclose(edge_strength(image), reference, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.jit(edge_strength, static_argnums=1)(
        jnp.asarray(image), jnp)), reference, rtol=1e-6, atol=1e-12)


def test_edge_features_add_the_edge_covariance_to_the_exact_posterior(p16):
    """With edge features the image prior is J S J^T + b^2 diag(|grad f|^2): the exact
    posterior std equals dense Gaussian conditioning on that covariance (|grad f| from
    scipy's Sobel), and the edge coordinates do not move the network's image."""
    fn, params, A, y = p16["fn"], p16["params"], p16["A"], p16["y"]
    v0, s2 = 0.05, 0.02
    post = fit_laplace(fn, params, A, y, LaplaceConfig(
        prior="isotropic", edge_features=True, solver="exact", em_cycles=0,
        init_prior_variance=v0, init_noise_variance=s2))
    assert list(post.prior_variances) == ["all", "edge"]
    np.testing.assert_allclose(np.asarray(post.mean()), np.asarray(fn(params)), rtol=1e-6)
    fn_flat, theta, _ = linearise.flatten(fn, params)
    J = np.asarray(linearise.dense_jacobian(fn_flat, theta), np.float64)
    D = edge_strength(np.asarray(fn(params))).ravel()
    assert D.max() > 3 * np.median(D)  # not a constant: the disk has edges
    cov_x = v0 * (J @ J.T + np.diag(D ** 2))
    Phi = np.stack([np.asarray(A(jnp.asarray(col.reshape(16, 16), jnp.float32)), np.float64).ravel()
                    for col in np.eye(256)], axis=1)  # A as a matrix
    cxr = cov_x @ Phi.T
    cov = cov_x - cxr @ np.linalg.solve(Phi @ cxr + s2 * np.eye(Phi.shape[0]), cxr.T)
    np.testing.assert_allclose(np.asarray(post.std()).ravel(), np.sqrt(np.diag(cov)), rtol=2e-3)
    without = fit_laplace(fn, params, A, y, LaplaceConfig(
        prior="isotropic", solver="exact", em_cycles=0, init_prior_variance=v0,
        init_noise_variance=s2))
    edge_pixels = D > np.quantile(D, 0.9)
    assert np.all(np.asarray(post.std()).ravel()[edge_pixels]
                  > np.asarray(without.std()).ravel()[edge_pixels])


def test_discrepancy_adds_a_white_image_covariance_to_the_exact_posterior(p16):
    """With the discrepancy group (and edges) the image prior is J S J^T + b_e^2 diag(|grad
    f|^2) + b_d^2 I: the exact posterior std and mean equal dense Gaussian conditioning on
    that covariance, and the network's image stays the centre."""
    fn, params, A, y = p16["fn"], p16["params"], p16["A"], p16["y"]
    v0, s2 = 0.05, 0.02
    post = fit_laplace(fn, params, A, y, LaplaceConfig(
        prior="isotropic", edge_features=True, discrepancy=True, solver="exact", em_cycles=0,
        init_prior_variance=v0, init_noise_variance=s2))
    assert list(post.prior_variances) == ["all", "edge", "discrepancy"]
    np.testing.assert_allclose(np.asarray(post.mean()), np.asarray(fn(params)), rtol=1e-6)
    fn_flat, theta, _ = linearise.flatten(fn, params)
    J = np.asarray(linearise.dense_jacobian(fn_flat, theta), np.float64)
    D = edge_strength(np.asarray(fn(params))).ravel()
    cov_x = v0 * (J @ J.T + np.diag(D ** 2) + np.eye(256))
    Phi = np.stack([np.asarray(A(jnp.asarray(col.reshape(16, 16), jnp.float32)), np.float64).ravel()
                    for col in np.eye(256)], axis=1)  # A as a matrix
    cxr = cov_x @ Phi.T
    cov = cov_x - cxr @ np.linalg.solve(Phi @ cxr + s2 * np.eye(Phi.shape[0]), cxr.T)
    np.testing.assert_allclose(np.asarray(post.std()).ravel(), np.sqrt(np.diag(cov)), rtol=2e-3)
    # the std in A's null space stays near the discrepancy's prior std, sqrt(v0): 256 pixels,
    # 240 data, so some image direction is unmeasured
    assert np.sqrt(np.diag(cov)).max() > 0.3 * np.sqrt(v0)
    x0 = np.asarray(fn(params), np.float64).ravel() - J @ np.asarray(theta, np.float64)
    resid = np.asarray(y, np.float64).ravel() - Phi @ x0
    np.testing.assert_allclose(np.asarray(post.linear_mean()).ravel(),
                               x0 + cxr @ np.linalg.solve(Phi @ cxr + s2 * np.eye(len(resid)),
                                                          resid), atol=2e-3 * np.abs(x0).max())


def test_em_learns_the_discrepancy_variance_of_the_exact_evidence():
    """With the discrepancy group the exact EM's fixed point is the exact evidence maximiser
    over the network's variance, the discrepancy's and the noise, and the sample-based (CG)
    EM lands within 10% of it. A small net (fewer weights than pixels) and more data than
    pixels, as for a DIP on a real scan; the data are the net's sinogram plus a white image
    error and noise, so the evidence wants the discrepancy term."""
    fn, params, A, _ = fitted_problem(16, 30, 1)
    image = np.asarray(fn(params), np.float64)
    rng = np.random.default_rng(5)
    error = 0.05 * np.abs(image).max() * rng.normal(size=image.shape)
    clean = np.asarray(A(jnp.asarray(image + error, jnp.float32)), np.float64)
    y = jnp.asarray(clean + 0.01 * np.abs(clean).max() * rng.normal(size=clean.shape), jnp.float32)
    fn_d, params_d = edges.with_features(fn, params, (edges.DISCREPANCY,))
    prior = edges.add_groups(priors.make_prior("isotropic", params), 256, (edges.DISCREPANCY,))
    model = linearise.linear_model(fn_d, params_d, A, y, prior, "zero")
    dense = exact.dense_problem(model)
    init = em.initial_hyper(model)
    init = init._replace(prior_variances=edges.start_variances(prior, init.prior_variances,
                                                               model.image))
    v, s2, _ = exact.maximise_marginal_likelihood(dense, np.asarray(init.prior_variances),
                                                  float(init.noise_variance))
    assert v[1] > 10 * float(init.prior_variances[1])  # the evidence wants the term here
    hyper, _ = em.run_em(model, init, jax.random.key(0), cycles=60, solver="exact", dense=dense)
    np.testing.assert_allclose(np.asarray(hyper.prior_variances), v, rtol=1e-3)
    assert float(hyper.noise_variance) == pytest.approx(s2, rel=1e-3)
    hyper, history = em.run_em(model, init, jax.random.key(1), cycles=12, samples=N,
                               solver="cg", opts=OPTS)
    np.testing.assert_allclose(np.asarray(hyper.prior_variances), v, rtol=0.10)
    assert float(hyper.noise_variance) == pytest.approx(s2, rel=0.10)
    assert all(h["not_converged"] == 0 for h in history)


def test_em_learns_the_edge_variance_of_the_exact_evidence(p16):
    """With edge features the exact EM reaches the exact evidence maximiser over both group
    variances and the noise, and the sample-based (CG) EM lands within 10% of it."""
    fn, params, A, y = p16["fn"], p16["params"], p16["A"], p16["y"]
    fn_e, params_e = edges.with_edge_features(fn, params)
    prior = edges.add_group(priors.make_prior("isotropic", params), 256)
    model = linearise.linear_model(fn_e, params_e, A, y, prior, "zero")
    dense = exact.dense_problem(model)
    init = em.initial_hyper(model)
    init = init._replace(prior_variances=edges.start_variances(prior, init.prior_variances))
    v, s2, _ = exact.maximise_marginal_likelihood(dense, np.asarray(init.prior_variances),
                                                  float(init.noise_variance))
    assert v[1] > 10 * edges.START_VARIANCE  # the evidence wants the edge term here
    hyper, _ = em.run_em(model, init, jax.random.key(0), cycles=30, solver="exact", dense=dense)
    np.testing.assert_allclose(np.asarray(hyper.prior_variances), v, rtol=1e-3)
    assert float(hyper.noise_variance) == pytest.approx(s2, rel=1e-3)
    hyper, history = em.run_em(model, init, jax.random.key(1), cycles=8, samples=N,
                               solver="cg", opts=OPTS)
    np.testing.assert_allclose(np.asarray(hyper.prior_variances), v, rtol=0.10)
    assert float(hyper.noise_variance) == pytest.approx(s2, rel=0.10)
    assert all(h["not_converged"] == 0 for h in history)


def test_float64_where_float32_cg_cannot_be_trusted(p16):
    """At lam_max / s2 = 1e7 (as on HTC2022 `ta` at 128x128) precision "auto" computes the
    linearised model in float64; its CG samples then give the exact posterior std (dense, in
    float64, at the same hyperparameters) and it returns float32 like the float32 path. (This
    problem is too small for float32 to fail; on HTC2022 it did: 500 CG iterations, no
    convergence, against 6 in float64.) At lam_max / s2 = 1e3 "auto" stays in float32."""
    model = linearise.linear_model(p16["fn"], p16["params"], p16["A"], p16["y"],
                                   priors.make_prior("isotropic", p16["params"]), "zero")
    v0 = float(em.initial_hyper(model).prior_variances[0])
    lam_max = np.linalg.eigvalsh(v0 * exact.dense_problem(model).grams[0])[-1]
    s2 = float(lam_max / 1e7)
    config = LaplaceConfig(prior="isotropic", em_cycles=0, samples=N, std_samples=2 * N,
                           cg_tol=1e-4, cg_max_iter=500, precond_rank=64, precision="auto",
                           init_prior_variance=v0, init_noise_variance=s2)
    post = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"], config)
    assert post.model.theta.dtype == jnp.float64 and post.output_dtype == jnp.float32
    assert post.precision == "float64"
    std = post.std()
    assert std.dtype == jnp.float32
    with jax.enable_x64(True):
        truth = exact.posterior(exact.dense_problem(post.model), np.array([v0]), s2).std
    rel = np.median(np.abs(np.asarray(std, np.float64) / truth - 1))
    print(f"float64 CG at lam_max/s2 = 1e7: median relative std error {rel:.3f}")
    assert rel < 0.10
    well = fit_laplace(p16["fn"], p16["params"], p16["A"], p16["y"], dataclasses.replace(
        config, init_noise_variance=float(lam_max / 1e3)))
    assert well.output_dtype is None and well.model.theta.dtype == jnp.float32
    assert well.precision == "float32"
