"""Diagonal Gaussian priors over the flattened network parameters, in groups.

The prior covariance is S = diag(v_{g(i)} c_i): one learned variance v_g per group g, times a
fixed per-parameter factor c_i. Four kinds:

- "isotropic": one group, c_i = 1.
- "per-layer": one group per module that owns parameters, c_i = 1. The grouping rule is
  explicit and generic (`group_by`): a leaf's group is its pytree path without the leaf's own
  name (and without the "value" wrapper of flax Variables), e.g. `down/0/conv/kernel` and
  `down/0/conv/bias` form the group `down/0/conv`. `by_prefix(k)` groups coarser (the first k
  path entries, e.g. whole blocks); `by_leaf` makes every array its own group.
- "g-prior": one group, with c_i = m / diag(J^T A^T A J)_i, i.e. the features (the columns
  of A J) normalised to unit mean square over the m observations before an isotropic prior
  is put on them. This is the diagonal (feature-normalisation) form of Zellner's g-prior used
  for the linearised Laplace method by Antoran et al., "Sampling-based inference for large
  linear models, with application to linearised Laplace" (ICLR 2023), and in their bayes_dip
  code for CT (mean over observations). The noise precision is left out of c_i, so the noise
  variance and the g-prior variance are separately identifiable. diag(J^T A^T A J) is
  estimated with Rademacher probes z (E[(J^T A^T z)_i^2] = diag_i, Hutchinson's diagonal
  estimator); `probes=None` computes it exactly, one observation at a time (small problems).

- "matern": one group, c_i = 1, over the white coordinates of the Matern-1/2 prior on the
  taps of conv filters (`matern`): the caller (`fit_laplace`) linearises the network in
  those coordinates, where the prior is diagonal. One shared variance, as for "isotropic":
  with one variance per layer the EM can drive small groups' variances towards zero, which
  stalls CG and inflates the noise variance.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ctbayes.errors import InputError

PRIOR_KINDS = ("isotropic", "per-layer", "g-prior", "matern")
_WRAPPERS = ("value", "raw_value")  # flax Variable containers, not part of a parameter's name


def path_names(path) -> tuple[str, ...]:
    """A pytree key path as strings, without flax's trailing Variable wrapper entries."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    while len(names) > 1 and names[-1] in _WRAPPERS:
        names.pop()
    return tuple(names)


def by_owner(names: Sequence[str]) -> str:
    """Default grouping: the module that owns the leaf (its path without the leaf's name)."""
    return "/".join(names[:-1]) if len(names) > 1 else names[0]


def by_prefix(depth: int) -> Callable[[Sequence[str]], str]:
    """Group by the first `depth` path entries (at most the owner), e.g. depth 2: `down/0`."""
    def group(names):
        return "/".join(names[: min(depth, max(len(names) - 1, 1))])
    return group


def by_leaf(names: Sequence[str]) -> str:
    """Every parameter array its own group."""
    return "/".join(names)


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class PriorGroups:
    """S = diag(v[index] * scale): group of each flat parameter and its fixed factor c_i."""

    kind: str
    names: tuple[str, ...]
    index: jax.Array  # (d,) int32
    scale: jax.Array  # (d,) c_i > 0

    def tree_flatten(self):
        """The pytree children and static data (JAX pytree protocol)."""
        return (self.index, self.scale), (self.kind, self.names)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], aux[1], *children)

    @property
    def num_groups(self) -> int:
        """The number of groups."""
        return len(self.names)

    @property
    def num_params(self) -> int:
        """The number of parameters."""
        return int(self.index.shape[0])

    def sizes(self) -> np.ndarray:
        """The number of parameters per group."""
        return np.bincount(np.asarray(self.index), minlength=self.num_groups)

    def variances(self, group_variances) -> jax.Array:
        """The diagonal of S, (d,), from the group variances (G,)."""
        return jnp.asarray(group_variances)[self.index] * self.scale

    def group_sum(self, values) -> jax.Array:
        """Sum (..., d) -> (..., G) over the parameters of each group."""
        moved = jnp.moveaxis(jnp.asarray(values), -1, 0)
        out = jax.ops.segment_sum(moved, self.index, num_segments=self.num_groups)
        return jnp.moveaxis(out, 0, -1)

    def describe(self) -> str:
        """A one-line description: kind and groups."""
        return f"{self.kind} prior, {self.num_groups} group(s), {self.num_params} parameters"


def parameter_groups(params, group_by: Callable = by_owner) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, index): the group of every flattened parameter, in ravel_pytree order."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names: list[str] = []
    index = []
    for path, leaf in leaves:
        name = group_by(path_names(path))
        if name not in names:
            names.append(name)
        index.append(np.full(int(np.size(leaf)), names.index(name), np.int32))
    return tuple(names), np.concatenate(index) if index else np.zeros(0, np.int32)


@jax.jit
def _feature_sq_chunk(fn_flat, theta, A, z):
    from ctbayes.laplace.linearise import linearise

    g = linearise(fn_flat, theta)[2](A.T(z))
    return jnp.sum(g * g, axis=0)


def feature_sq_norms(fn_flat: Callable, theta, A, key: jax.Array | None, probes: int | None,
                     batch: int = 64) -> jax.Array:
    """diag(J^T A^T A J): Hutchinson with `probes` Rademacher vectors, or exact if None."""
    shape = tuple(A.range_shape)
    m = int(np.prod(shape))

    def chunk(z):
        return _feature_sq_chunk(fn_flat, theta, A, z)

    total, count = 0.0, 0
    if probes is None:  # exact: every unit vector of the observation space
        eye = np.eye(m, dtype=np.float32)
        for start in range(0, m, batch):
            rows = np.zeros((batch, m), np.float32)
            block = eye[start:start + batch]
            rows[: len(block)] = block
            total = total + chunk(jnp.asarray(rows.reshape((batch,) + shape)))
        return total
    for start in range(0, probes, batch):
        k = jax.random.fold_in(key, start)
        z = jax.random.rademacher(k, (min(batch, probes - start),) + shape, jnp.float32)
        total = total + chunk(z)
        count += z.shape[0]
    return total / count


def make_prior(kind: str, params, *, model_fn: Callable | None = None, A=None,
               key: jax.Array | None = None, probes: int | None = 64,
               group_by: Callable = by_owner) -> PriorGroups:
    """The prior groups of a parameter pytree.

    kind: "isotropic", "per-layer" (grouped by `group_by`), "matern" (one group, over white
    coordinates, see `matern`) or "g-prior". The g-prior needs
    model_fn (fn(params) -> image), the ray transform A, a key and the probe count.
    """
    from ctbayes.laplace.linearise import flatten

    if kind not in PRIOR_KINDS:
        raise InputError(f"Unknown prior {kind!r}; expected one of {', '.join(PRIOR_KINDS)}.")
    flat, _ = ravel_pytree(params)
    d = int(flat.shape[0])
    ones = jnp.ones(d, flat.dtype)
    if kind == "per-layer":
        names, index = parameter_groups(params, group_by)
        return PriorGroups(kind, names, jnp.asarray(index), ones)
    index = jnp.zeros(d, jnp.int32)
    if kind in ("isotropic", "matern"):
        return PriorGroups(kind, ("all",), index, ones)
    if model_fn is None or A is None:
        raise InputError("The g-prior needs the network function and the ray transform.")
    fn_flat, theta, _ = flatten(model_fn, params)
    diag = feature_sq_norms(fn_flat, theta, A, key if key is not None else jax.random.key(0),
                            probes)
    m = float(np.prod(A.range_shape))
    floor = 1e-6 * jnp.maximum(jnp.mean(diag), jnp.finfo(diag.dtype).tiny)
    scale = m / jnp.maximum(diag, floor)
    return PriorGroups(kind, ("g",), index, scale.astype(flat.dtype))
