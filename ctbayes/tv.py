"""Total variation: the regulariser of the DIP loss and the TV-regularised baseline.

`tv_reconstruct` solves  min_x 0.5 ||A x - y||^2 + weight * TV_iso(x)  subject to x >= 0
with the primal-dual hybrid gradient method (Chambolle & Pock 2011), compiled as one
`lax.scan`. `discrepancy_weight` chooses the weight by Morozov's discrepancy principle,
||A x - y||^2 = m sigma^2, using the scan's noise level or one estimated from the sinogram.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def total_variation(x):
    """Anisotropic TV: the sum of absolute forward differences over the last two axes."""
    return jnp.abs(jnp.diff(x, axis=-1)).sum() + jnp.abs(jnp.diff(x, axis=-2)).sum()


def _gradient(x):
    """Forward differences with a zero last row/column (Neumann): shape (2, H, W)."""
    gx = jnp.zeros_like(x).at[:, :-1].set(x[:, 1:] - x[:, :-1])
    gy = jnp.zeros_like(x).at[:-1, :].set(x[1:, :] - x[:-1, :])
    return jnp.stack([gx, gy])


def _divergence(g):
    """Minus the adjoint of `_gradient`."""
    gx, gy = g
    dx = jnp.zeros_like(gx).at[:, 0].set(gx[:, 0]).at[:, 1:-1].set(gx[:, 1:-1] - gx[:, :-2]) \
        .at[:, -1].set(-gx[:, -2])
    dy = jnp.zeros_like(gy).at[0, :].set(gy[0, :]).at[1:-1, :].set(gy[1:-1, :] - gy[:-2, :]) \
        .at[-1, :].set(-gy[-2, :])
    return dx + dy


@jax.jit
def _pdhg(A, y, weight, norm_a, x0, iterations_arr):
    """PDHG on the operator [A/||A||; grad], so both blocks have comparable norms."""
    scale = 1.0 / norm_a
    w = weight * scale**2  # 0.5||A x - y||^2 = ||A||^2 * 0.5||Â x - ŷ||^2
    y_hat = y * scale
    step = 1.0 / math.sqrt(1.0 + 8.0)  # ||[Â; grad]|| <= sqrt(1 + 8)

    def body(carry, _):
        x, x_bar, p, q = carry
        p = (p + step * (A(x_bar) * scale - y_hat)) / (1.0 + step)
        q = q + step * _gradient(x_bar)
        q = q / jnp.maximum(1.0, jnp.sqrt((q**2).sum(0)) / jnp.maximum(w, 1e-30))
        x_new = jnp.maximum(x - step * (A.T(p) * scale - _divergence(q)), 0.0)
        return (x_new, 2 * x_new - x, p, q), None

    p0 = jnp.zeros_like(y)
    q0 = jnp.zeros((2,) + x0.shape, x0.dtype)
    (x, _, _, _), _ = jax.lax.scan(body, (x0, x0, p0, q0), iterations_arr)
    return x


def tv_reconstruct(A, y, weight, iterations: int = 1000, x0=None, norm_a: float | None = None):
    """TV-regularised, non-negative least squares by PDHG for a fixed weight."""
    y = jnp.asarray(y, jnp.float32)
    x0 = jnp.zeros(A.domain_shape, jnp.float32) if x0 is None else jnp.asarray(x0, jnp.float32)
    norm_a = A.norm() if norm_a is None else norm_a
    return _pdhg(A, y, jnp.float32(weight), jnp.float32(norm_a), x0, jnp.zeros(iterations))


def estimate_noise_std(sinogram) -> float:
    """White-noise level of a sinogram from second differences along the detector.

    Line integrals are smooth across the detector, so second differences are mostly noise,
    with variance 6 sigma^2; the median absolute deviation makes the estimate robust to edges.
    """
    d2 = np.diff(np.asarray(sinogram, np.float64), n=2, axis=-1).ravel()
    return float(np.median(np.abs(d2 - np.median(d2))) / 0.6745 / math.sqrt(6.0))


def discrepancy_weight(A, y, noise_std: float, iterations: int = 1000, steps: int = 8):
    """The TV weight whose solution fits the data to the noise level (Morozov).

    Bisection in log(weight), since the residual grows with the weight; each step is a
    warm-started solve with a quarter of the iterations, the last a full solve.
    Returns (weight, image).
    """
    y = jnp.asarray(y, jnp.float32)
    norm_a = A.norm()
    target = y.size * noise_std**2
    scale = float(jnp.abs(A.T(y)).max())  # weights of this order wipe out all structure
    lo, hi = math.log(scale * 1e-6), math.log(scale)
    x = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        x = tv_reconstruct(A, y, math.exp(mid), max(iterations // 4, 100), x0=x, norm_a=norm_a)
        residual = float(jnp.sum((A(x) - y) ** 2))
        lo, hi = (mid, hi) if residual < target else (lo, mid)
    weight = math.exp(0.5 * (lo + hi))
    return weight, tv_reconstruct(A, y, weight, iterations, x0=x, norm_a=norm_a)
