"""Per-pixel feature groups: image-space error terms inside the linearised model, each with
a variance learned by the EM.

The linear-Gaussian model of a DIP only varies the image along the network's tangent space,
so on real data every error the network cannot make (an edge off by a fraction of a pixel,
a pixel grid against a continuous object, a DIP biased at edges) is counted as sinogram
noise, and the std map misses it. A feature group adds one such error to the model:

    x(theta, u) = f(theta) + sum_k phi_k(f(theta)) * u_k,    u_k ~ N(0, b_k^2 I),

u_k one entry per pixel and phi_k a per-pixel feature map, held constant under
differentiation. At u* = 0 the Jacobian is [J, diag phi_1, diag phi_2, ...]: one more prior
group per feature, whose variance b_k^2 the EM learns from the scan with MacKay's update
like any other group, so the image prior becomes J S J^T + sum_k b_k^2 diag(phi_k^2).
The features (FEATURES):

- "edge": phi = |grad f(theta)| (Sobel, image units per pixel; `ctbayes.metrics.edge_strength`):
  u is each pixel's edge displacement in pixels, variance where the image has edges. The
  same term as the calibrated edge term (`--edge-std`), learned from the measurement.
- "discrepancy": phi = 1: a stationary white model-discrepancy e = u ~ N(0, b^2 I) in
  image units, x = f(theta) + e, which the data constrain only through A e. The evidence
  sets b^2 from the misfit that the network's tangent space cannot explain but an image
  can; along directions the views do not measure (a missing wedge) its posterior variance
  stays b^2 instead of collapsing with the network's.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.metrics import edge_strength
from ctbayes.errors import InputError
from ctbayes.laplace.linearise import as_partial
from ctbayes.laplace.priors import PriorGroups

GROUP = "edge"
DISCREPANCY = "discrepancy"
FEATURES = (GROUP, DISCREPANCY)
START_VARIANCE = 0.01  # edge b^2 at the EM start: edges misplaced by 0.1 pixel rms
DISCREPANCY_START = 1e-4  # discrepancy b^2 at the EM start, relative to the image's mean square


def feature_map(name: str, image, xp=jnp):
    """phi of feature `name` for an image (H, W): |grad image| or ones."""
    if name == GROUP:
        return edge_strength(image, xp)
    if name == DISCREPANCY:
        return xp.ones_like(image)
    raise InputError(f"Unknown pixel feature {name!r}; expected one of {', '.join(FEATURES)}.")


def check_names(names) -> tuple[str, ...]:
    """The feature names as a tuple; InputError for a name not in FEATURES."""
    names = tuple(names)
    for name in names:
        feature_map(name, np.zeros((1, 1)), np)  # refuses an unknown name
    if len(set(names)) != len(names):
        raise InputError(f"Pixel features {names} name one feature twice.")
    return names


@functools.lru_cache(maxsize=None)
def _image_with_features(names: tuple[str, ...]):
    """fn, (p, (u_1, ...)) -> fn(p) + sum_k phi_k u_k for these feature names: one function
    object per names, so jitted callers compile once per feature set."""
    def image_fn(fn, params):
        network_params, coefficients = params
        image = fn(network_params)
        fixed = jax.lax.stop_gradient(image)
        for name, u in zip(names, coefficients):
            image = image + feature_map(name, fixed) * u
        return image
    return image_fn


def with_features(fn, params, names=(GROUP,)) -> tuple[jax.tree_util.Partial, tuple]:
    """(fn_f, params_f): fn_f((p, (u_1, ...))) = fn(p) + sum_k phi_k(fn(p)) u_k, and
    (params, (0, ...)), one zero image per feature in `names`."""
    names = check_names(names)
    shape = jax.eval_shape(fn, params)
    zeros = tuple(jnp.zeros(shape.shape, shape.dtype) for _ in names)
    return (jax.tree_util.Partial(_image_with_features(names), as_partial(fn)),
            (params, zeros))


def with_edge_features(fn, params) -> tuple[jax.tree_util.Partial, tuple]:
    """`with_features` with the edge feature alone."""
    return with_features(fn, params, (GROUP,))


def coordinates(network_coordinates, image_shape: tuple[int, ...], count: int = 1):
    """The map network parameters -> feature-model coordinates: the network's own
    (network_coordinates, e.g. the Matern prior's white ones) and u_k = 0 for `count`
    features."""
    def to_model(params):
        mapped = network_coordinates(params)
        dtype = jnp.result_type(*jax.tree.leaves(mapped))
        return mapped, tuple(jnp.zeros(image_shape, dtype) for _ in range(count))
    return to_model


def add_groups(prior: PriorGroups, num_pixels: int, names=(GROUP,)) -> PriorGroups:
    """The prior with one group per feature appended (unit factors), for (params, (u, ...))
    flattened."""
    names = check_names(names)
    index = [prior.index] + [jnp.full(num_pixels, prior.num_groups + k, jnp.int32)
                             for k in range(len(names))]
    scale = [prior.scale] + [jnp.ones(num_pixels, prior.scale.dtype)] * len(names)
    return PriorGroups(" + ".join((prior.kind,) + names), prior.names + names,
                       jnp.concatenate(index), jnp.concatenate(scale))


def add_group(prior: PriorGroups, num_pixels: int) -> PriorGroups:
    """The prior with the edge group appended."""
    return add_groups(prior, num_pixels, (GROUP,))


def start_variances(prior: PriorGroups, variances, image=None) -> jax.Array:
    """The EM's starting group variances with each feature group's set: the edge group's to
    START_VARIANCE, the discrepancy's to DISCREPANCY_START times the mean square of `image`
    (the network's image; needed only with that group)."""
    v = np.asarray(variances, np.float64).copy()
    if GROUP in prior.names:
        v[prior.names.index(GROUP)] = START_VARIANCE
    if DISCREPANCY in prior.names:
        power = float(np.mean(np.square(np.asarray(image, np.float64))))
        v[prior.names.index(DISCREPANCY)] = max(DISCREPANCY_START * power, 1e-12)
    return jnp.asarray(v, jnp.result_type(variances))
