"""The ray transform A: image -> sinogram, one interface over two backends.

`RayTransform` is a JAX pytree (the sparse matrix, if any, is its leaf), so it can be passed
into jitted functions as an argument instead of being baked in as a constant. Calling it
applies A, `.T` applies A^T; both keep leading batch dimensions and are differentiable,
vmappable and transposable by JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.errors import InputError
from ctbayes.geometry import Geometry
from ctbayes.operators import astra_backend, sparse_backend

BACKENDS = ("auto", "astra", "sparse")
SPARSE_MAX_NNZ = 4e7  # about 0.5 GB of matrix; beyond this the callback backend is used


@jax.tree_util.register_pytree_node_class
class RayTransform:
    """A linear ray transform for one geometry. Build it with `make_ray_transform`."""

    def __init__(self, geometry: Geometry, backend: str, projector: str, matrix=None,
                 dtype=np.float32):
        self.geometry = geometry
        self.backend = backend
        self.projector = projector
        self.matrix = matrix
        self.dtype = np.dtype(dtype)

    def astype(self, dtype) -> "RayTransform":
        """The same transform computing in `dtype` (float64 needs `jax.enable_x64`). The
        sparse matrix is cast; ASTRA's callback stays float32 inside, its results are cast."""
        matrix = self.matrix
        if matrix is not None:
            from jax.experimental import sparse

            matrix = sparse.BCOO((jnp.asarray(matrix.data, dtype), matrix.indices),
                                 shape=matrix.shape)
        return RayTransform(self.geometry, self.backend, self.projector, matrix, dtype)

    # -- pytree -------------------------------------------------------------------------
    def tree_flatten(self):
        return (self.matrix,), (self.geometry, self.backend, self.projector, self.dtype)

    @classmethod
    def tree_unflatten(cls, aux, children):
        geometry, backend, projector, dtype = aux
        return cls(geometry, backend, projector, matrix=children[0], dtype=dtype)

    # -- shapes -------------------------------------------------------------------------
    @property
    def domain_shape(self) -> tuple[int, ...]:
        return self.geometry.image_shape

    @property
    def range_shape(self) -> tuple[int, ...]:
        return self.geometry.sinogram_shape

    def __repr__(self):
        return f"RayTransform({self.backend}, {self.projector}, {self.geometry.describe()})"

    # -- application --------------------------------------------------------------------
    def __call__(self, x):
        """A x for an image or a batch of images (..., *domain_shape)."""
        if self.backend == "sparse":
            return self._sparse_apply(self.matrix, x, self.domain_shape, self.range_shape)
        return astra_backend.forward(x, self.geometry, self.projector).astype(self.dtype)

    def T(self, y):  # noqa: N802 - the conventional name for the transpose
        """A^T y for a sinogram or a batch of sinograms (..., *range_shape)."""
        if self.backend == "sparse":
            return self._sparse_apply(self.matrix.T, y, self.range_shape, self.domain_shape)
        return astra_backend.backward(y, self.geometry, self.projector).astype(self.dtype)

    @staticmethod
    def _sparse_apply(matrix, x, in_shape, out_shape):
        x = jnp.asarray(x, matrix.dtype)
        batch = x.shape[: x.ndim - len(in_shape)]
        if not batch:  # a mat-vec is cheaper than a one-column mat-mat
            return (matrix @ x.reshape(-1)).reshape(out_shape)
        flat = x.reshape((-1, int(np.prod(in_shape))))
        out = (matrix @ flat.T).T
        return out.reshape(batch + tuple(out_shape))

    def norm(self, iterations: int = 30, seed: int = 0) -> float:
        """The operator norm ||A||, estimated by power iteration on A^T A."""
        x = jax.random.normal(jax.random.key(seed), self.domain_shape)

        def step(x, _):
            y = self.T(self(x))
            return y / jnp.linalg.norm(y), None

        x, _ = jax.lax.scan(step, x / jnp.linalg.norm(x), None, length=iterations)
        return float(jnp.linalg.norm(self(x)))

    def field_of_view(self, chunk: int = 16) -> np.ndarray:
        """The pixels that every view sees: True where each view's backprojection of ones is
        positive. Outside it (the corners of a fan beam whose detector does not cover the
        grid) a pixel is missed by some views, and nothing at all constrains it.

        A 2D geometry is probed with ASTRA's strip projectors, which cover each bin's whole
        width: thin rays spaced wider than a pixel (a fan's far side) pass between pixels that
        the detector does see. A 3D geometry is probed with this transform itself.
        """
        strip = astra_backend.BIN_INTEGRATING_PROJECTOR.get(self.geometry.beam)
        probe = self if strip is None else make_ray_transform(self.geometry, "astra", strip,
                                                              use_cuda=False)
        views = self.range_shape[0]
        seen = np.ones(self.domain_shape, bool)
        for start in range(0, views, chunk):  # one-hot sinograms, `chunk` views at a time
            block = np.arange(start, min(start + chunk, views))
            onehot = np.zeros((len(block),) + tuple(self.range_shape), self.dtype)
            onehot[np.arange(len(block)), block] = 1
            seen &= (np.asarray(probe.T(onehot)) > 0).all(0)
        return seen


def make_ray_transform(geometry: Geometry, backend: str = "auto", projector: str | None = None,
                       use_cuda: bool | None = None) -> RayTransform:
    """Build the ray transform of a geometry.

    backend: "astra" (host callback, CPU or CUDA), "sparse" (ASTRA-assembled matrix inside
    XLA, 2D CPU projectors only) or "auto": the sparse matrix when it is small enough (see
    SPARSE_MAX_NNZ) and CUDA is not demanded, else the ASTRA callback, on CUDA where a GPU
    is present. The sparse matrix runs on whatever device JAX uses; on an H100 it was 20 to
    50 times faster per A + A^T than the ASTRA CUDA callback up to 256x256 with 30 views
    (benchmarks/dip_speed.py), because the callback pays a host round trip per call.
    projector: ASTRA CPU projector type (parallel: linear, strip, line; fanflat:
    line_fanflat, strip_fanflat); ignored on CUDA.
    """
    if backend not in BACKENDS:
        raise InputError(f"Unknown ray-transform backend {backend!r}; expected one of {', '.join(BACKENDS)}.")
    if backend == "sparse" and (use_cuda or geometry.is_3d):
        raise InputError("The sparse backend needs a 2D geometry and an ASTRA CPU projector.")
    if backend == "auto" and not use_cuda and not geometry.is_3d:
        cpu_projector = astra_backend.resolve_projector(geometry, projector, use_cuda=False)
        if sparse_backend.estimated_nnz(geometry, cpu_projector) <= SPARSE_MAX_NNZ:
            backend = "sparse"
    if backend == "sparse":
        resolved = astra_backend.resolve_projector(geometry, projector, use_cuda=False)
        return RayTransform(geometry, "sparse", resolved, sparse_backend.assemble(geometry, resolved))
    resolved = astra_backend.resolve_projector(geometry, projector, use_cuda)
    return RayTransform(geometry, "astra", resolved)
