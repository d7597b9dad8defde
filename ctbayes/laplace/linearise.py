"""The linearised network and the conjugate linear-Gaussian model built on it.

Any image-valued function `fn(params) -> (H, W)` of a parameter pytree is linearised about
its fitted parameters theta*, over the flattened parameter vector (`ravel_pytree`):

    x(theta) ~ f(theta*) + J (theta - theta*),   J = d f / d theta at theta*   (pixels x d).

Only products are ever formed: J v by forward mode (`jax.linearize`) and J^T u by the
transpose of that linear map (reverse mode). The Jacobian itself is built only by
`dense_jacobian`, for the exact path on small problems.

`LinearModel` bundles what every solver needs: the linearisation point, the ray transform A,
the data y, the prior groups and the *prior mean* convention (see `LinearModel`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ctbayes.errors import InputError

PRIOR_MEANS = ("zero", "mode")


def flatten(fn: Callable[[Any], jax.Array], params) -> tuple[Callable, jax.Array, Callable]:
    """(fn_flat, theta, unravel): fn over the flat parameter vector, theta*, and its inverse.

    theta is `ravel_pytree(params)`. fn_flat is a `jax.tree_util.Partial`, a pytree that jitted
    functions take as an argument: when fn is itself a `Partial` (as `DIPFit.render` is),
    its arrays (the DIP's input z, ...) are traced, not baked
    in, so a new fit of the same network (new data, parameters or z) reuses every compiled
    function; any other callable is static, compiled once per function object.
    """
    theta, _ = ravel_pytree(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    signature = tuple((tuple(np.shape(x)), jnp.result_type(x).name) for x in leaves)
    call, unravel = _flat_fn(treedef, signature)
    return jax.tree_util.Partial(call, as_partial(fn)), theta, unravel


def as_partial(fn: Callable) -> jax.tree_util.Partial:
    """fn as a `jax.tree_util.Partial` (itself if it is one): a pytree whose arrays jitted
    functions trace rather than bake in."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


@functools.lru_cache(maxsize=64)
def _flat_fn(treedef, signature):
    """call(fn, v) = fn(unravel(v)) and unravel, for one parameter structure (ravel_pytree's
    layout); cached, so that equal structures give the same (hashable) function."""
    shapes = [shape for shape, _ in signature]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1].tolist()

    def unravel(v):
        pieces = jnp.split(v, splits) if splits else [v]
        return jax.tree_util.tree_unflatten(
            treedef, [p.reshape(shape).astype(dtype) for p, (shape, dtype) in zip(pieces, signature)])

    def call(fn, v):
        return fn(unravel(v))

    return call, unravel


def _batched(f, x, event_ndim: int):
    """Apply the single-input function f over any leading batch dimensions of x."""
    batch = x.shape[: x.ndim - event_ndim]
    if not batch:
        return f(x)
    flat = x.reshape((-1,) + x.shape[x.ndim - event_ndim:])
    out = jax.vmap(f)(flat)
    return out.reshape(batch + out.shape[1:])


def linearise(fn_flat: Callable, theta: jax.Array):
    """(f(theta), jvp, vjp) with jvp(V) = J V for V (..., d) and vjp(U) = J^T U for U (..., H, W).

    Call it inside a jitted function: the network runs forward once, and both closures reuse
    the stored linearisation for every product (batched with vmap over leading dimensions).
    """
    image, jvp1 = jax.linearize(fn_flat, theta)
    vjp1 = jax.linear_transpose(jvp1, theta)

    def jvp(v):
        return _batched(jvp1, v, 1)

    def vjp(u):
        return _batched(lambda w: vjp1(w)[0], u, image.ndim)

    return image, jvp, vjp


def jvp(fn: Callable, params, v) -> jax.Array:
    """J v for flat tangents v (..., d), J the Jacobian of fn at params (flattened)."""
    fn_flat, theta, _ = flatten(fn, params)
    return _jvp(fn_flat, theta, v)


def vjp(fn: Callable, params, u) -> jax.Array:
    """J^T u for image cotangents u (..., H, W), as flat parameter vectors (..., d)."""
    fn_flat, theta, _ = flatten(fn, params)
    return _vjp(fn_flat, theta, u)


@jax.jit
def _jvp(fn_flat, theta, v):
    return linearise(fn_flat, theta)[1](v)


@jax.jit
def _vjp(fn_flat, theta, u):
    return linearise(fn_flat, theta)[2](u)


@functools.partial(jax.jit, static_argnums=2)
def dense_jacobian(fn_flat: Callable, theta: jax.Array, batch: int = 256) -> jax.Array:
    """The explicit Jacobian (H*W, d) by forward mode, `batch` parameter directions at a time
    (all d at once, as jax.jacfwd does, holds every activation d times: 1 TB for the default
    U-Net at 64x64). Small problems only (exact path, tests)."""
    _, jvp_fn = jax.linearize(fn_flat, theta)

    def column(i):
        return jvp_fn(jnp.zeros_like(theta).at[i].set(1)).reshape(-1)

    return jax.lax.map(column, jnp.arange(theta.shape[0]), batch_size=batch).T


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LinearModel:
    """The conjugate linear-Gaussian model of the linearised network.

    With delta = theta - theta*, the model is

        y = A (f(theta*) + J delta) + e,   e ~ N(0, s2 I),   theta ~ N(mu, S),  S diagonal,

    and the prior mean mu is the convention `prior_mean`:

    - "zero" (default; Antoran et al. ICLR 2023, Immer et al. 2021): mu = 0, the affine model.
      The linear model must explain the whole sinogram from the features J, with a prior that
      shrinks theta to zero, so ||theta_lin||^2 sets the prior scale in the MacKay update and
      the evidence does not depend on how far theta* happens to lie from zero.
    - "mode": mu = theta*, the residual model: delta ~ N(0, S) explains only y - A f(theta*).
      Cheaper to reason about, but when the network fits the data the evidence pushes the
      prior variance towards zero (over-confident error bars).

    Every solver works with the weight deviation w = theta - mu ~ N(0, S) and the residual
    from the prior mean image x0 = f(theta*) + J (mu - theta*):

        r = y - A x0 = A J w + e,     K = A J S J^T A^T + s2 I.

    The posterior mean image is x0 + J w_lin, with w_lin = S J^T A^T K^-1 r.
    Build it with `linear_model`.
    """

    fn_flat: Callable  # a jax.tree_util.Partial (see `flatten`)
    theta: jax.Array  # theta*, flat (d,)
    A: Any  # RayTransform (a pytree)
    y: jax.Array  # data, A.range_shape
    prior: Any  # priors.PriorGroups
    image: jax.Array  # f(theta*), (H, W)
    offset_image: jax.Array  # x0 = f(theta*) + J (mu - theta*)
    residual: jax.Array  # r = y - A x0
    prior_mean: str = "zero"

    def tree_flatten(self):
        """The pytree children and static data (JAX pytree protocol)."""
        children = (self.fn_flat, self.theta, self.A, self.y, self.prior, self.image,
                    self.offset_image, self.residual)
        return children, self.prior_mean

    @classmethod
    def tree_unflatten(cls, prior_mean, children):
        return cls(*children, prior_mean)

    @property
    def num_params(self) -> int:
        """The number of linearised parameters."""
        return int(self.theta.shape[0])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The image shape (H, W)."""
        return tuple(self.image.shape)

    @property
    def num_data(self) -> int:
        """The number of measurements."""
        return int(np.prod(self.y.shape))

    def prior_mean_weights(self) -> jax.Array:
        """mu: zeros ("zero") or theta* ("mode")."""
        return jnp.zeros_like(self.theta) if self.prior_mean == "zero" else self.theta

    def replace(self, **changes) -> "LinearModel":
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)


@jax.jit
def _offsets(model: LinearModel):
    image, jv, _ = linearise(model.fn_flat, model.theta)
    shift = model.prior_mean_weights() - model.theta
    offset_image = image + jv(shift)
    return image, offset_image, model.y - model.A(offset_image)


def linear_model(fn: Callable, params, A, y, prior, prior_mean: str = "zero") -> LinearModel:
    """The `LinearModel` of fn linearised at params, for data y = A x + noise.

    prior: a `priors.PriorGroups` over the flattened parameters (see `priors.make_prior`).
    prior_mean: "zero" or "mode" (see `LinearModel`).
    """
    if prior_mean not in PRIOR_MEANS:
        raise InputError(f"Unknown prior mean {prior_mean!r}; expected one of "
                         f"{', '.join(PRIOR_MEANS)}.")
    fn_flat, theta, _ = flatten(fn, params)
    y = jnp.asarray(y, theta.dtype)
    if tuple(y.shape) != tuple(A.range_shape):
        raise InputError(f"The data have shape {tuple(y.shape)} but the ray transform maps to "
                         f"{tuple(A.range_shape)}.")
    if prior.num_params != theta.shape[0]:
        raise InputError(f"The prior covers {prior.num_params} parameters but the network has "
                         f"{theta.shape[0]}.")
    shape = tuple(jax.eval_shape(fn_flat, theta).shape)
    if shape != tuple(A.domain_shape):
        raise InputError(f"The network returns images of shape {shape} but the ray transform "
                         f"expects {tuple(A.domain_shape)}.")
    empty = jnp.zeros(A.domain_shape, theta.dtype)
    model = LinearModel(fn_flat, theta, A, y, prior, empty, empty, y, prior_mean)
    image, offset_image, residual = _offsets(model)
    return model.replace(image=image, offset_image=offset_image, residual=residual)
