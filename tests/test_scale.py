"""Scale: the memory-lean Nystrom factor (row layout, Gram route in float64, float32
storage), the chunked sketch, streamed moments, the memory plan and its one-sentence
refusal before any work, and the phase reporter.

Truths: a PSD matrix of exact low rank (the Nystrom approximation of rank >= its rank is the
matrix itself), numpy's dense solve, numpy's moments of the concatenated samples.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes import progress
from ctbayes.errors import InputError
from ctbayes.laplace import memory, sampling, solvers


def psd(m, spectrum, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((m, len(spectrum))))
    return (q * spectrum) @ q.T


def test_float64_factor_of_a_low_rank_matrix_is_the_matrix_and_rows_are_orthonormal():
    """The Gram route (float64, no SVD of an (r, m) array) recovers a rank-30 P exactly at
    rank 40, its rows orthonormal; the spectrum spans 1e6, as P / s2 does on real scans."""
    P = psd(400, np.geomspace(1.0, 1e-6, 30))
    with jax.enable_x64(True):
        f = solvers.nystrom(lambda u: u @ jnp.asarray(P), 400, 40, jax.random.key(0), 1e-3,
                            jnp.float64)
        ut, lam = np.asarray(f.Ut), np.asarray(f.lam)
        approx = np.asarray(f.matvec(jnp.eye(400)))
    assert ut.dtype == np.float64
    np.testing.assert_allclose(approx, P, atol=1e-10)
    top = ut[:30]
    np.testing.assert_allclose(top @ top.T, np.eye(30), atol=1e-8)
    np.testing.assert_allclose(lam[:30], np.geomspace(1.0, 1e-6, 30), rtol=1e-6)


@pytest.mark.parametrize("tol", [1e-2, 1e-6])
def test_float32_factor_preconditions_float64_cg_as_well_as_float64(tol):
    """A spectrum like P / s2 on HTC2022 (1e6 down to 10 over 50 directions, then below s2),
    float64 CG: storing U in float32 leaves the solution within the tolerance of numpy's
    (the preconditioner only needs to approximate K^-1); at the CLI's tol 1e-2 it costs no
    iteration, at 1e-6 a few (float32 rounding of U is about 1e-7 of lam_max / s2 = 1e6)."""
    m, s2 = 300, 1e-6
    P = psd(m, np.concatenate([np.geomspace(1.0, 1e-5, 50), np.geomspace(1e-7, 1e-9, 250)]))
    K = P + s2 * np.eye(m)
    b = np.random.default_rng(1).standard_normal((3, m))
    truth = np.linalg.solve(K, b.T).T
    iterations = {}
    with jax.enable_x64(True):
        for factor in (None, "float32"):
            f = solvers.nystrom(lambda u: u @ jnp.asarray(P), m, 60, jax.random.key(0), s2,
                                jnp.float64, factor_dtype=factor)
            x, info = solvers.cg(lambda u: u @ jnp.asarray(K), jnp.asarray(b), precond=f,
                                 tol=tol, max_iter=1000)
            assert bool(jnp.all(info.converged))
            # |x - x*| / |x*| <= cond(K)^(1/2)-ish times the residual: allow 10x tol
            err = np.linalg.norm(np.asarray(x) - truth, axis=1) / np.linalg.norm(truth, axis=1)
            assert err.max() < 10 * tol, (factor, err)
            iterations[factor] = int(jnp.max(info.iterations))
            assert f.Ut.dtype == (jnp.float32 if factor else jnp.float64)
        _, info = solvers.cg(lambda u: u @ jnp.asarray(K), jnp.asarray(b), tol=tol, max_iter=3000)
    assert iterations["float32"] <= iterations[None] + (0 if tol >= 1e-2 else 4), iterations
    assert iterations["float32"] < int(jnp.max(info.iterations)) / 10


@pytest.mark.parametrize("block", [8, 7])  # whole blocks, and a padded last block
def test_chunked_sketch_equals_the_sketch_all_at_once(block):
    P = psd(200, np.geomspace(1.0, 1e-4, 60), seed=2)
    with jax.enable_x64(True):
        apply = lambda u: u @ jnp.asarray(P)  # noqa: E731
        rows = solvers.sketch_matrix(jax.random.key(3), 200, 40, jnp.float64)
        np.testing.assert_allclose(solvers.blocked(apply, rows, block), apply(rows), rtol=1e-13,
                                   atol=1e-15)
        whole = solvers.nystrom(apply, 200, 40, jax.random.key(3), 1e-3, jnp.float64)
        parts = solvers.nystrom(apply, 200, 40, jax.random.key(3), 1e-3, jnp.float64, block=block)
        eye = jnp.eye(200)
        np.testing.assert_allclose(parts.matvec(eye), whole.matvec(eye), atol=1e-12)
        np.testing.assert_allclose(parts.lam, whole.lam, rtol=1e-10)
    # Gaussian rows scaled by 1/sqrt(m): Omega^T Omega = I within about 2 sqrt(r / m)
    eig = np.linalg.eigvalsh(np.asarray(rows) @ np.asarray(rows).T)
    assert eig.min() > (1 - 2 * np.sqrt(40 / 200)) ** 2 / 2 and eig.max() < 4


def test_streamed_moments_equal_those_of_the_stored_samples():
    rng = np.random.default_rng(4)
    chunks = [3.0 + rng.standard_normal((n, 5, 6)) for n in (4, 1, 7, 16)]
    moments = sampling.RunningMoments()
    for chunk in chunks:
        moments.update(chunk)
    stored = np.concatenate(chunks)
    assert moments.count == len(stored)
    np.testing.assert_allclose(moments.mean, stored.mean(0), rtol=1e-13)
    np.testing.assert_allclose(moments.variance(1), stored.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(moments.rms(), np.sqrt(np.mean(stored ** 2, 0)), rtol=1e-13)
    np.testing.assert_allclose(moments.rms(), np.asarray(sampling.pixel_std(jnp.asarray(stored))),
                               rtol=1e-6)


SIZES = memory.Sizes(pixels=128 * 128, data=180 * 560, params=108829, activation=200 * 2 ** 20,
                     itemsize=8, matrix_nnz=6_000_000, kept_samples=128)


def test_plan_fits_the_budget_caps_rank_and_blocks_and_refuses_in_one_sentence():
    roomy = memory.plan(SIZES, 1024, 17, 64 * memory.GB, 4)
    assert roomy.rank == 1024 and roomy.cg_batch is None and roomy.estimate <= 64 * memory.GB
    tight_budget = int(1.5 * memory.GB)
    tight = memory.plan(SIZES, 1024, 17, tight_budget, 4)
    assert tight.estimate <= tight_budget
    assert tight.rank < 1024 and tight.rank % tight.sketch_block == 0
    assert tight.cg_batch is not None and tight.cg_batch < 17
    # the memory model's own peak at the plan's choice, and what one step more would need
    assert SIZES.peak(tight.rank + tight.sketch_block, tight.sketch_block, tight.cg_batch, 4) \
        > tight_budget or tight.rank + tight.sketch_block > 1024
    assert memory.plan(SIZES, 1024, 17, None, 4).rank == 1024  # no budget: as configured
    with pytest.raises(InputError, match=r"needs about .* GB at the least .* budget is 0\.3 GB"):
        memory.plan(SIZES, 1024, 17, int(0.3 * memory.GB), 4)


def test_activation_bytes_counts_the_intermediates():
    def f(x):
        h = jnp.tanh(x @ jnp.ones((10, 20)))  # (5, 20) twice: product, tanh
        return jnp.sum(h)  # a scalar
    got = memory.activation_bytes(f, jnp.ones((5, 10), jnp.float32))
    assert got >= 2 * 5 * 20 * 4 and got < 4 * 5 * 20 * 4 + 64


def test_a_run_that_cannot_fit_is_refused_before_the_dip_fit(monkeypatch, tmp_path):
    """reconstruct with a budget too small for the Laplace pass raises the one-sentence
    InputError before fitting anything."""
    from ctbayes import reconstruct as rec
    from ctbayes.dip.fit import DIPConfig
    from ctbayes.phantoms import make_phantom
    from ctbayes.simulate import default_geometry, simulate_scan
    from ctbayes.laplace import LaplaceConfig
    from ctbayes.uncertainty import UncertaintyConfig

    def no_fit(*args, **kwargs):
        raise AssertionError("the DIP was fitted before the memory check")

    monkeypatch.setattr(rec, "fit_dip", no_fit)
    scan = simulate_scan(make_phantom("shepp-logan", 32), default_geometry(32, views=20))
    config = rec.ReconstructConfig(dip=DIPConfig(iterations=5),
                                   uncertainty=UncertaintyConfig(
                                       posterior=LaplaceConfig(memory_budget=1e-4)))
    with pytest.raises(InputError, match="memory budget is 0.0 GB"):
        rec.reconstruct(scan, config)
    # and with room the check passes (and the fit is the next thing called)
    roomy = dataclasses.replace(config, uncertainty=UncertaintyConfig(
        posterior=LaplaceConfig(memory_budget=8.0)))
    with pytest.raises(AssertionError, match="fitted before"):
        rec.reconstruct(scan, roomy)


def test_phases_report_lines_bars_and_listeners(capsys):
    events = []
    remove = progress.listen(lambda event, name: events.append((event, name)))
    try:
        progress.configure("lines")
        with progress.phase("outer"):
            with progress.phase("inner", total=3) as bar:
                for _ in range(3):
                    bar.update(1)
        progress.configure("off")
        with progress.phase("quiet"):
            pass
    finally:
        progress.configure("off")
        remove()
    err = capsys.readouterr().err.splitlines()
    assert err == ["ctbayes: outer ...", "ctbayes:   inner ..."]
    assert events == [("start", "outer"), ("start", "inner"), ("end", "inner"), ("end", "outer"),
                      ("start", "quiet"), ("end", "quiet")]


def test_large_network_preset_is_the_six_scale_two_million_parameter_unet():
    from ctbayes.dip.fit import DIPConfig, network_preset, parameter_count

    large = network_preset(DIPConfig(iterations=7), "large")
    assert large.scales == 6 and max(large.channels) == 128 and large.iterations == 7
    assert 1.8e6 < parameter_count(large) < 2.6e6
    with pytest.raises(InputError, match="Unknown network 'huge'"):
        network_preset(DIPConfig(), "huge")
