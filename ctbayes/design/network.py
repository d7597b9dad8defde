"""The design loop's DIP network: the first fit, warm-started refits as views arrive, and
the arrays a checkpoint stores of it.

The first fit is `dip.fit_dip`; between design steps the network continues from its
previous parameters on the enlarged data (`dip.refit`). With the masked operator
(`masked`) its shapes never change, so the refit compiles once per run.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctbayes.dip.fit import DIPConfig, DIPFit, build_network, fit_dip, refit

__all__ = ["DIPFit", "first_fit", "from_leaves", "leaves", "refit", "restored", "template"]


def first_fit(A, y, config: DIPConfig, initial_image=None) -> DIPFit:
    """A fresh DIP fit (with `fit_dip`), warm-started on initial_image if given."""
    return fit_dip(A, y, config, initial_image=initial_image, progress=False)


# -- serialisation (checkpoints) ---------------------------------------------------------------
def leaves(tree) -> list[np.ndarray]:
    """The arrays of a pytree, in order, as NumPy arrays."""
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def from_leaves(template, arrays) -> Any:
    """The pytree of `template`'s structure and dtypes holding `arrays` (from `leaves`)."""
    treedef = jax.tree.structure(template)
    old = jax.tree.leaves(template)
    return jax.tree.unflatten(treedef, [jnp.asarray(a, o.dtype) for a, o in zip(arrays, old)])


def template(config: DIPConfig, shape) -> tuple:
    """(graphdef, params, rest, z) of the network `fit_dip` builds for config and shape."""
    model, z = build_network(config, shape)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest, z


def restored(config: DIPConfig, shape, rest_arrays, params_arrays, image) -> DIPFit:
    """A `DIPFit` from a checkpoint's arrays (network state, parameters, image)."""
    graphdef, params, rest, z = template(config, shape)
    return DIPFit(np.asarray(image), graphdef, from_leaves(params, params_arrays),
                  from_leaves(rest, rest_arrays), z, config)
