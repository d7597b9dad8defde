"""Ray transforms: adjoint identity, gradients, batching and agreement of the backends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry
from ctbayes.operators import make_ray_transform
from ctbayes.operators.astra_backend import cuda_available
from tests.conftest import disk_phantom, small_geometry

BACKENDS = ["astra", "sparse"]
PROJECTORS = {"parallel": ["linear", "strip", "line"], "fanflat": ["line_fanflat", "strip_fanflat"]}
CASES = [(beam, p, b) for beam in PROJECTORS for p in PROJECTORS[beam] for b in BACKENDS]


@pytest.mark.parametrize("beam,projector,backend", CASES)
def test_adjoint_identity(beam, projector, backend):
    g = small_geometry(beam)
    A = make_ray_transform(g, backend, projector)
    keys = jax.random.split(jax.random.key(0), 2)
    v = jax.random.normal(keys[0], g.image_shape)
    u = jax.random.normal(keys[1], g.sinogram_shape)
    lhs, rhs = float(jnp.vdot(u, A(v))), float(jnp.vdot(A.T(u), v))
    assert lhs == pytest.approx(rhs, rel=1e-5)
    # the transpose JAX derives must be the same operator as A.T
    np.testing.assert_allclose(jax.linear_transpose(A, v)(u)[0], A.T(u), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_backends_agree(beam):
    g = small_geometry(beam)
    x = disk_phantom()
    y = np.asarray(make_ray_transform(g, "astra")(x))
    np.testing.assert_allclose(make_ray_transform(g, "sparse")(x), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    u = np.asarray(y) + 1.0
    np.testing.assert_allclose(make_ray_transform(g, "sparse").T(u), make_ray_transform(g, "astra").T(u),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_matches_finite_differences(backend, geometry):
    A = make_ray_transform(geometry, backend)
    y = jnp.asarray(A(disk_phantom()))

    def loss(x):
        return 0.5 * jnp.sum((A(x) - y) ** 2) + jnp.sum(jnp.sin(x))

    x = jnp.asarray(disk_phantom() * 0.3 + 0.1, jnp.float32)
    grad = jax.jit(jax.grad(loss))(x)
    direction = jax.random.normal(jax.random.key(3), x.shape)
    eps = 1e-2
    x64 = np.asarray(x, np.float64)
    d64 = np.asarray(direction, np.float64)
    A_np = lambda z: np.asarray(A(z.astype(np.float32)), np.float64)  # noqa: E731
    loss_np = lambda z: 0.5 * np.sum((A_np(z) - np.asarray(y)) ** 2) + np.sum(np.sin(z))  # noqa: E731
    fd = (loss_np(x64 + eps * d64) - loss_np(x64 - eps * d64)) / (2 * eps)
    assert float(jnp.vdot(grad, direction)) == pytest.approx(fd, rel=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap_jit_and_forward_mode(backend, geometry):
    A = make_ray_transform(geometry, backend)
    xs = jnp.stack([jnp.asarray(disk_phantom()), jnp.ones(geometry.image_shape)])
    batched = jax.jit(jax.vmap(lambda op, x: op(x), in_axes=(None, 0)))(A, xs)
    np.testing.assert_allclose(batched[1], A(xs[1]), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(A(xs), batched, rtol=1e-5, atol=1e-4)  # leading batch dims
    # forward mode: the JVP of a linear map is the map itself
    _, tangent = jax.jvp(A, (xs[0],), (xs[1],))
    np.testing.assert_allclose(tangent, A(xs[1]), rtol=1e-5, atol=1e-4)


def test_line_integral_of_a_constant_image():
    """A parallel ray through the centre of a 1-valued square crosses `side` pixels."""
    side = 16
    g = Geometry(beam="parallel", angles=[0.0, np.pi / 2], det_count=side, image_shape=(side, side))
    y = np.asarray(make_ray_transform(g, "astra")(np.ones((side, side), np.float32)))
    np.testing.assert_allclose(y[:, 2:-2], side, rtol=1e-5)


def test_field_of_view_is_the_circle_the_fan_covers():
    """A fan beam whose detector is narrower than the grid sees the disc of radius
    SOD * sin(atan(half detector width / SDD)); a wide parallel beam sees every pixel."""
    size, sod, sdd, det_count = 32, 40.0, 80.0, 24
    g = Geometry(beam="fanflat", angles=np.linspace(0, 2 * np.pi, 90, endpoint=False),
                 det_count=det_count, image_shape=(size, size), source_origin=sod,
                 origin_detector=sdd - sod)
    radius = sod * np.sin(np.arctan(det_count / 2 / sdd))  # 11.7 pixels: the corners are out
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    for backend in BACKENDS:
        seen = make_ray_transform(g, backend).field_of_view()
        assert seen[r < radius - 1].all() and not seen[r > radius + 1].any()
    assert make_ray_transform(small_geometry("parallel"), "sparse").field_of_view().all()
    # A detector wide enough for the grid, whose thin rays are 1.125 pixels apart on the fan's
    # far side: 6% of the pixels fall between two rays of some view, but every bin's strip
    # covers them, so all are in the field of view.
    wide = small_geometry("fanflat", views=60)
    wide_radius = wide.source_origin * np.sin(np.arctan(wide.det_count * wide.det_spacing / 2 / (
        wide.source_origin + wide.origin_detector)))
    assert wide_radius > np.hypot(size / 2, size / 2)  # 23.6 > 22.6: the corners are inside
    for backend in BACKENDS:
        assert make_ray_transform(wide, backend).field_of_view().all()


def test_norm_estimate_matches_svd():
    g = small_geometry("parallel", size=16, views=8)
    A = make_ray_transform(g, "sparse")
    dense = np.asarray(A.matrix.todense())
    assert A.norm(iterations=100) == pytest.approx(np.linalg.norm(dense, 2), rel=1e-3)


def test_auto_backend_picks_sparse_for_small_problems(monkeypatch):
    assert make_ray_transform(small_geometry("parallel")).backend == "sparse"
    monkeypatch.setattr("ctbayes.operators.ray_transform.SPARSE_MAX_NNZ", 10)
    big = make_ray_transform(small_geometry("parallel"))
    assert big.backend == "astra" and big.projector == ("cuda" if cuda_available() else "linear")


@pytest.mark.skipif(cuda_available(), reason="a GPU is present, so 3D is allowed")
@pytest.mark.parametrize("beam", ["parallel3d", "cone"])
def test_3d_without_gpu_is_refused_before_astra(beam):
    g = Geometry(beam=beam, angles=np.linspace(0, np.pi, 4), det_count=16, det_rows=8,
                 image_shape=(8, 16, 16), source_origin=50.0, origin_detector=20.0)
    with pytest.raises(InputError, match="GPU"):
        make_ray_transform(g)


def test_projector_must_fit_the_beam():
    with pytest.raises(InputError, match="does not fit"):
        make_ray_transform(small_geometry("fanflat"), "astra", "linear")
