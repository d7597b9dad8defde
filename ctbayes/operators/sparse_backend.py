"""The ray transform as an explicit sparse matrix, assembled by ASTRA, applied inside XLA.

No host callback: the whole operator lives in the compiled program, so loops over it fuse and
run on any JAX device. Worth it while the matrix fits comfortably in memory.
"""

from __future__ import annotations

import numpy as np
from jax.experimental import sparse

from ctbayes.geometry import Geometry
from ctbayes.operators.astra_backend import projector_id

NNZ_PER_PIXEL_VIEW = {"linear": 2.0, "line": 2.0, "line_fanflat": 2.0, "strip": 3.0,
                      "strip_fanflat": 3.0}


def estimated_nnz(geometry: Geometry, projector: str) -> float:
    """Rough count of non-zeros: each pixel touches a few detector bins per view."""
    return NNZ_PER_PIXEL_VIEW.get(projector, 3.0) * geometry.num_views * float(np.prod(geometry.image_shape))


def assemble(geometry: Geometry, projector: str) -> sparse.BCOO:
    """The (views*det, rows*cols) system matrix of an ASTRA CPU projector, as a JAX BCOO."""
    import astra

    matrix_id = astra.projector.matrix(projector_id(geometry, projector))
    try:
        csr = astra.matrix.get(matrix_id).tocoo()
    finally:
        astra.matrix.delete(matrix_id)
    indices = np.stack([csr.row, csr.col], axis=1).astype(np.int32)
    return sparse.BCOO((csr.data.astype(np.float32), indices), shape=csr.shape,
                       indices_sorted=True, unique_indices=True)
