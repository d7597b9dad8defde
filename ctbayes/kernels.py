"""Matern covariance kernels over points of a pixel grid.

Used by the Matern Gaussian-process image prior (`ctbayes.posteriors.gp`) and by the Matern
prior over convolution-filter taps of the linearised Laplace (`ctbayes.laplace.matern`); a
ground-floor module so that neither imports the other.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

NUS = (0.5, 1.5, 2.5)


def matern(r, nu: float) -> np.ndarray:
    """The Matern correlation at scaled distance r for nu in 1/2, 3/2, 5/2."""
    if nu == 0.5:
        return np.exp(-r)
    if nu == 1.5:
        s = np.sqrt(3.0) * r
        return (1.0 + s) * np.exp(-s)
    s = np.sqrt(5.0) * r
    return (1.0 + s + s * s / 3.0) * np.exp(-s)


def matern_covariance(shape, lengthscale: float, variance: float = 1.0,
                      nu: float = 1.5) -> np.ndarray:
    """variance * k_nu(r / lengthscale) between the centres of a grid of `shape` (row-major
    order; r in grid steps): an (N, N) matrix, N = prod(shape)."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    points = np.column_stack([rows.ravel(), cols.ravel()]).astype(np.float64)
    return variance * matern(cdist(points, points) / lengthscale, nu)
