"""The design loop's DIP network: the first fit and warm-started refits as views arrive.

`fit_dip` starts from a fresh network; between design steps the network instead continues
from its previous parameters (a warm start) on the enlarged data, for a short run of Adam on
the same scale-free DIP + TV loss. The refit reuses the DIP module's compiled chunk, and
with the masked operator (`masked`) its shapes never change, so it compiles once per run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ctbayes.dip import fit as dipfit
from ctbayes.dip.fit import DIPConfig


@dataclasses.dataclass
class NetworkFit:
    """A fitted DIP network: image (H, W), the nnx split (graphdef, params, rest), input z.

    render: params -> image (`make_render`), which the linearised model's compiled solvers
    take as an argument, so they compile once per network shape.
    """

    image: np.ndarray
    graphdef: Any
    params: Any
    rest: Any
    z: jax.Array
    render: Callable

    def with_params(self, params, image) -> "NetworkFit":
        return dataclasses.replace(self, params=params, image=np.asarray(image, np.float32))


def make_render(graphdef, rest, z) -> Callable:
    """params -> image for one network (`dip.fit.image_function`): runs and refits of one
    network shape share every compiled function that takes it."""
    return dipfit.image_function(graphdef, rest, z)


def first_fit(A, y, config: DIPConfig, initial_image=None) -> NetworkFit:
    """A fresh DIP fit (with `fit_dip`), warm-started on initial_image if given."""
    result = dipfit.fit_dip(A, y, config, initial_image=initial_image, progress=False)
    return NetworkFit(np.asarray(result.image, np.float32), result.graphdef, result.params,
                      result.rest, result.z, make_render(result.graphdef, result.rest, result.z))


def refit(fit: NetworkFit, A, y, config: DIPConfig, iterations: int,
          lr: float | None = None) -> NetworkFit:
    """Continue fitting `fit` to new data y = A x for `iterations` Adam steps (fresh Adam
    state, learning rate lr or config.lr); keeps config.keep's parameters, as `fit_dip`."""
    if iterations <= 0:
        return fit
    y_j = jnp.asarray(y, jnp.float32)
    scale = dipfit.image_scale(A, y_j)
    consts = dict(inv_y2=jnp.float32(1.0 / float(jnp.sum(y_j ** 2))),
                  tv_norm=jnp.float32(1.0 / (scale * np.sqrt(np.prod(A.domain_shape)))),
                  gamma=jnp.float32(config.gamma), lr=jnp.float32(lr or config.lr),
                  ema_decay=jnp.float32(config.ema_decay), seed=jnp.uint32(config.seed))
    carry = dipfit._initial_carry(fit.params)
    it = 0
    while it < iterations:
        stop = min(it + config.chunk, iterations)
        carry, _ = dipfit._fit_chunk(fit.graphdef, config.chunk, carry, fit.rest, fit.z, A, y_j,
                                     consts, it, stop)
        it = stop
    if config.keep == "last":
        params = carry["params"]
    else:
        params = carry[config.keep]
        last_loss = dipfit._evaluate(fit.graphdef, carry["params"], fit.rest, fit.z, A, y_j, consts)[0]
        if config.keep == "best" and float(last_loss) <= float(carry["best_loss"]):
            params = carry["params"]
    image = dipfit._evaluate(fit.graphdef, params, fit.rest, fit.z, A, y_j, consts)[1]
    return fit.with_params(params, image)


# -- serialisation (checkpoints) ---------------------------------------------------------------
def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def from_leaves(template, arrays) -> Any:
    treedef = jax.tree.structure(template)
    old = jax.tree.leaves(template)
    return jax.tree.unflatten(treedef, [jnp.asarray(a, o.dtype) for a, o in zip(arrays, old)])


def template(config: DIPConfig, shape) -> tuple:
    """(graphdef, params, rest, z) of the network `fit_dip` builds for config and shape."""
    model, z = dipfit.build_network(config, shape)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest, z
