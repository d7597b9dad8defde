"""Classical baselines: FBP through ODL and TV-regularised least squares."""

import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes import metrics, tv
from ctbayes.geometry import Geometry, astra_to_odl_image, odl_to_astra_image
from ctbayes.operators import make_ray_transform
from ctbayes.operators.fbp import fbp, noise_realisation, reference_noise_realisation
from tests.conftest import disk_phantom, small_geometry


def test_gradient_and_divergence_are_adjoint():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((7, 9)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((2, 7, 9)), jnp.float32)
    assert float(jnp.vdot(tv._gradient(x), g)) == pytest.approx(-float(jnp.vdot(x, tv._divergence(g))), rel=1e-5)


def test_total_variation_of_a_step():
    x = np.zeros((4, 6), np.float32)
    x[:, 3:] = 2.0
    assert float(tv.total_variation(x)) == pytest.approx(4 * 2.0)


def test_odl_layout_round_trip():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(odl_to_astra_image(astra_to_odl_image(x)), x)


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_fbp_recovers_a_densely_sampled_phantom(beam):
    g = small_geometry(beam, size=64, views=180)
    x = disk_phantom(64)
    y = np.asarray(make_ray_transform(g)(x))
    r = fbp(y, g)
    assert metrics.correlation(r, x) > 0.98
    assert r.mean() == pytest.approx(x.mean(), rel=0.05)  # correctly scaled, not just correlated


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_fbp_of_unsorted_unevenly_spaced_views(beam):
    """The views a design loop has chosen: any order, uneven gaps (ODL's own filter gives NaN
    on a non-uniform angle partition). Dense but irregular views still recover the phantom at
    the right scale, and the order of the views does not matter."""
    g = small_geometry(beam, size=64, views=180)
    x = disk_phantom(64)
    y = np.asarray(make_ray_transform(g)(x))
    views = np.random.default_rng(0).choice(180, 120, replace=False)  # unsorted, uneven
    sub = g.with_angles(g.angles_array[views])
    r = fbp(y[views], sub)
    assert np.all(np.isfinite(r))
    assert metrics.correlation(r, x) > 0.97
    assert r.mean() == pytest.approx(fbp(y, g).mean(), rel=0.03)  # as scaled as all 180 views
    order = np.sort(views)
    np.testing.assert_allclose(fbp(y[order], g.with_angles(g.angles_array[order])), r, atol=1e-5)


def test_fbp_short_scan_fan_uses_parker_weights():
    g = small_geometry("fanflat", size=64, views=150)
    g = g.with_angles(np.linspace(0, np.pi + 1.0, 150, endpoint=False))
    x = disk_phantom(64)
    r = fbp(np.asarray(make_ray_transform(g)(x)), g)
    assert metrics.correlation(r, x) > 0.97
    assert r.mean() == pytest.approx(x.mean(), rel=0.06)


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_noise_draws_have_the_fbp_noise_level(beam):
    """FBP is linear, so the noise of fbp(y + e) is exactly fbp(e): the even/odd split's draw
    has its std (within 10%). On the fan scan (180 views per half for a 64x64 disk) the raw
    split lets the object through; the reference's draw, with the object removed first,
    does not, and comes out in the reference's units (here 3x ours)."""
    g = small_geometry(beam, size=64, views=360)
    x = disk_phantom(64)
    y = np.asarray(make_ray_transform(g)(x))
    e = np.random.default_rng(0).normal(0, 0.05 * np.abs(y).mean(), y.shape).astype(np.float32)
    yy, xx = np.mgrid[:64, :64] - 31.5
    inside = xx ** 2 + yy ** 2 < 28 ** 2
    truth = fbp(e, g)[inside].std()
    reference = 3 * fbp(y + e, g)
    drawn = reference_noise_realisation(y + e, g, reference)[inside].std() / 3
    assert drawn == pytest.approx(truth, rel=0.1)
    split = noise_realisation(y + e, g)[inside].std()
    if beam == "parallel":
        assert split == pytest.approx(truth, rel=0.1)
        assert noise_realisation(y, g)[inside].std() < 0.2 * truth  # the object cancels
    else:
        assert split > 1.15 * truth  # the object's aliasing: why the reference's draw removes it


def _objective(A, y, x, weight):
    gx, gy = np.asarray(tv._gradient(jnp.asarray(x)))
    return 0.5 * np.sum((np.asarray(A(x)) - y) ** 2) + weight * np.sum(np.sqrt(gx**2 + gy**2))


def test_tv_with_a_huge_weight_is_the_best_constant_image():
    """Known answer: TV forces a constant c, and c minimises ||c A1 - y||^2."""
    A = make_ray_transform(small_geometry("parallel"))
    y = np.asarray(A(disk_phantom()))
    ones = np.asarray(A(np.ones(A.domain_shape, np.float32)))
    c = float(ones.ravel() @ y.ravel() / (ones.ravel() @ ones.ravel()))
    np.testing.assert_allclose(tv.tv_reconstruct(A, y, 1e6, iterations=1500), c, rtol=1e-3)


def test_tv_default_iterations_reach_the_optimum():
    """The default 1000 PDHG iterations get within 0.5% of the objective after 5000."""
    A = make_ray_transform(small_geometry("parallel"))
    x_true = disk_phantom()
    y = np.asarray(A(x_true)) + 0.1 * np.random.default_rng(1).standard_normal(A.range_shape).astype(np.float32)
    weight = 0.5
    short = np.asarray(tv.tv_reconstruct(A, y, weight))
    long = np.asarray(tv.tv_reconstruct(A, y, weight, iterations=5000))
    assert _objective(A, y, short, weight) <= 1.005 * _objective(A, y, long, weight)
    assert _objective(A, y, long, weight) < _objective(A, y, x_true, weight)
    assert short.min() >= 0


def test_noise_estimate_and_discrepancy_principle():
    g = small_geometry("parallel", size=64, views=60)
    g = Geometry(beam="parallel", angles=g.angles, det_count=92, image_shape=(64, 64))
    A = make_ray_transform(g)
    x = disk_phantom(64)
    clean = np.asarray(A(x))
    sigma = 0.05 * np.abs(clean).mean()
    y = clean + sigma * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    assert tv.estimate_noise_std(y) == pytest.approx(sigma, rel=0.3)
    weight, image = tv.discrepancy_weight(A, y, sigma)
    residual = float(np.sum((np.asarray(A(image)) - y) ** 2))
    assert residual == pytest.approx(y.size * sigma**2, rel=0.15)
    assert metrics.psnr(image, x) > metrics.psnr(fbp(y, g), x) + 5
