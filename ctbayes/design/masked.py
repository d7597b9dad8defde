"""The measured views as a row mask of the candidate ray transform.

A design grows its set of measured views step by step. A ray transform built for each new set
has a new static geometry, and every jitted function that takes it (the DIP step, the
linearised model's solvers) would compile again. Instead the measured operator is the
candidate operator with the unmeasured views' rows set to zero: `MaskedRayTransform` has the
same shapes and pytree structure at every step, only the mask (a leaf) changes.

Zero rows with zero data carry no information: in the linear-Gaussian model their block of
K = A J S J^T A^T + s2 I is s2 I, decoupled from the measured rows, so posteriors, samples
and DIP losses equal those of the genuine subset operator. Only statistics that count data
(an EM noise update dividing by m) must use the genuine subset; see `designer`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class MaskedRayTransform:
    """A_mask x = mask * (A x), per view; mask (views,) of 0/1; A the candidate transform."""

    def __init__(self, base, mask):
        self.base = base
        self.mask = mask

    def tree_flatten(self):
        """The pytree children and static data (JAX pytree protocol)."""
        return (self.base, self.mask), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    @property
    def domain_shape(self) -> tuple[int, ...]:
        """The image shape."""
        return self.base.domain_shape

    @property
    def range_shape(self) -> tuple[int, ...]:
        """The sinogram shape of all candidate views."""
        return self.base.range_shape

    @property
    def geometry(self):
        """The candidate geometry (all views, measured or not)."""
        return self.base.geometry

    def _rows(self, ndim: int):
        return jnp.reshape(self.mask, self.mask.shape + (1,) * (ndim - 1))

    def __call__(self, x):
        y = self.base(x)
        return y * self._rows(len(self.range_shape)).astype(y.dtype)

    def T(self, y):  # noqa: N802 - the conventional name for the transpose
        """The adjoint: the masked rows, then the base transform's adjoint."""
        y = jnp.asarray(y)
        return self.base.T(y * self._rows(len(self.range_shape)).astype(y.dtype))

    def __repr__(self):
        """The adjoint (masked rows, then the base transform's adjoint)."""
        return f"MaskedRayTransform({int(np.sum(np.asarray(self.mask)))} of {len(self.mask)} views)"


def masked(base, views) -> MaskedRayTransform:
    """The candidate operator restricted to the view indices `views`."""
    mask = np.zeros(base.range_shape[0], np.float32)
    mask[np.asarray(views, int)] = 1.0
    return MaskedRayTransform(base, jnp.asarray(mask))
