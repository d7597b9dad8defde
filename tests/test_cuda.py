"""ASTRA CUDA path (runs only where ASTRA sees a GPU; skipped elsewhere, e.g. in CI).

The CUDA projectors must be the same linear operator family as the CPU ones: adjoint pairs,
close to the CPU strip/linear projections, and usable under jit, vmap and grad, in 2D and 3D.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ctbayes.geometry import Geometry
from ctbayes.operators import make_ray_transform
from ctbayes.operators.astra_backend import cuda_available
from tests.conftest import disk_phantom, small_geometry

pytestmark = pytest.mark.skipif(not cuda_available(), reason="ASTRA CUDA needs a GPU")

GEOMETRIES_3D = {
    "parallel3d": dict(beam="parallel3d"),
    "cone": dict(beam="cone", source_origin=80.0, origin_detector=40.0, det_spacing=1.5),
}


def _geometry_3d(beam):
    return Geometry(angles=np.linspace(0, 2 * np.pi, 12, endpoint=False), det_count=32, det_rows=24,
                    image_shape=(16, 24, 24), **GEOMETRIES_3D[beam])


@pytest.mark.parametrize("beam", ["parallel", "fanflat"])
def test_cuda_2d_adjoint_and_agreement_with_cpu(beam):
    g = small_geometry(beam)
    A = make_ray_transform(g, "astra", use_cuda=True)
    assert A.projector == "cuda"
    # ASTRA's CUDA back projector is the adjoint of its forward projector only up to their
    # different interpolations (6% on white noise); on smooth functions they agree to 2%
    x = disk_phantom()
    u = np.asarray(A(jnp.asarray(x))) + 1.0
    assert float(jnp.vdot(u, A(x))) == pytest.approx(float(jnp.vdot(A.T(u), x)), rel=2e-2)
    cpu = np.asarray(make_ray_transform(g, "astra", "strip" if beam == "parallel" else "strip_fanflat",
                                        use_cuda=False)(x))
    gpu = np.asarray(A(x))
    assert np.linalg.norm(gpu - cpu) / np.linalg.norm(cpu) < 0.03


@pytest.mark.parametrize("beam", sorted(GEOMETRIES_3D))
def test_cuda_3d_adjoint_and_constant_line_integral(beam):
    g = _geometry_3d(beam)
    A = make_ray_transform(g)
    assert A.projector == "cuda3d"
    zz, yy, xx = np.mgrid[:16, :24, :24]
    v = np.exp(-((zz - 8) ** 2 + (yy - 11) ** 2 + (xx - 12) ** 2) / 30.0).astype(np.float32)
    u = np.asarray(A(v)) + 1.0
    assert float(jnp.vdot(u, A(v))) == pytest.approx(float(jnp.vdot(A.T(u), v)), rel=2e-2)
    if beam == "parallel3d":  # a ray through the centre of a unit cube crosses its whole width
        y = np.asarray(A(np.ones(g.image_shape, np.float32)))
        assert y.shape == g.sinogram_shape
        centre = y[:, g.det_rows // 2, :][:, g.det_count // 2]
        assert np.all(centre > 23.0) and np.all(centre < 34.0)  # 24 .. 24*sqrt(2) pixels


def test_cuda_jit_vmap_grad():
    g = small_geometry("parallel")
    A = make_ray_transform(g, "astra")
    assert A.projector == "cuda"
    xs = jnp.stack([jnp.asarray(disk_phantom()), jnp.ones(g.image_shape)])
    batched = jax.jit(jax.vmap(A))(xs)
    np.testing.assert_allclose(batched[0], A(xs[0]), rtol=1e-5, atol=1e-4)
    y = A(xs[0])
    grad = jax.jit(jax.grad(lambda x: 0.5 * jnp.sum((A(x) - y) ** 2)))(xs[1])
    np.testing.assert_allclose(grad, A.T(A(xs[1]) - y), rtol=1e-4, atol=1e-3)
    # the sparse backend runs inside XLA on the GPU and agrees with the CPU ASTRA projector
    S = make_ray_transform(g, "sparse")
    np.testing.assert_allclose(S(xs[0]), make_ray_transform(g, "astra", use_cuda=False)(xs[0]),
                               rtol=1e-5, atol=1e-4)
