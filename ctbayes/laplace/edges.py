"""Edge features: a per-pixel edge displacement inside the linearised model, learned by the EM.

The linear-Gaussian model of a DIP cannot move an edge by a fraction of a pixel (partial
volume, a continuous object on a grid), so on real data it counts that error as sinogram
noise and its std map misses it. Edge features add it to the model: the image becomes

    x(theta, u) = f(theta) + |grad f(theta)| * u,    u ~ N(0, b^2 I)  (one entry per pixel),

u the displacement of each pixel's edge in pixels and |grad f| its Sobel magnitude (image
units per pixel; `ctbayes.metrics.edge_strength`, held constant under differentiation). At
u* = 0 the Jacobian is [J, diag |grad f(theta*)|]: one more prior group, "edge", whose
variance b^2 the EM learns from the scan with MacKay's update like any other group, and
whose samples put variance where the image has edges. The term is the same as the
calibrated edge term (`--edge-std`), but learned from the measurement rather than from
scans with a reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.metrics import edge_strength
from ctbayes.laplace.linearise import as_partial
from ctbayes.laplace.priors import PriorGroups

GROUP = "edge"
START_VARIANCE = 0.01  # b^2 at the EM start: edges misplaced by 0.1 pixel rms


def _image_with_edges(fn, params):
    network_params, displacement = params
    image = fn(network_params)
    return image + jax.lax.stop_gradient(edge_strength(image, jnp)) * displacement


def with_edge_features(fn, params) -> tuple[jax.tree_util.Partial, tuple]:
    """(fn_e, params_e): fn_e((p, u)) = fn(p) + |grad fn(p)| u, and (params, u = 0)."""
    shape = jax.eval_shape(fn, params)
    displacement = jnp.zeros(shape.shape, shape.dtype)
    return jax.tree_util.Partial(_image_with_edges, as_partial(fn)), (params, displacement)


def coordinates(network_coordinates, image_shape: tuple[int, ...]):
    """The map network parameters -> edge-model coordinates: the network's own
    (network_coordinates, e.g. the Matern prior's white ones) and u = 0."""
    def to_model(params):
        mapped = network_coordinates(params)
        dtype = jnp.result_type(*jax.tree.leaves(mapped))
        return mapped, jnp.zeros(image_shape, dtype)
    return to_model


def add_group(prior: PriorGroups, num_pixels: int) -> PriorGroups:
    """The prior with the edge group appended (unit factors), for (params, u) flattened."""
    index = jnp.concatenate([prior.index, jnp.full(num_pixels, prior.num_groups, jnp.int32)])
    scale = jnp.concatenate([prior.scale, jnp.ones(num_pixels, prior.scale.dtype)])
    return PriorGroups(f"{prior.kind} + edge", prior.names + (GROUP,), index, scale)


def start_variances(prior: PriorGroups, variances) -> jax.Array:
    """The EM's starting group variances with the edge group's set to START_VARIANCE."""
    v = np.asarray(variances, np.float64).copy()
    v[prior.names.index(GROUP)] = START_VARIANCE
    return jnp.asarray(v, jnp.result_type(variances))
