"""A mean-field variational posterior over the weights of a fitted deep image prior.

Model: y ~ N(A f(theta), sigma^2 I) on the sinogram, with sigma^2 the DIP's residual
variance ||A x* - y||^2 / m (or a given value, or learned by maximising the ELBO), and a
Gaussian prior on each weight tensor theta_k ~ N(c_k, (prior_scale * s_k)^2), centred at the
fitted weights (c = theta*, "fit") or at zero, with s_k the root mean square of theta*_k (so
one setting fits every layer, whatever its scale). The variational family is a diagonal
Gaussian written in the per-tensor standardised coordinates u = (theta - theta*) / s:
q(u) = N(m, diag(exp(2 r))), initialised at m = 0 (the DIP fit) with a small std. The
reparameterised ELBO (closed-form KL) is maximised with Adam (optax), `chunk` steps per
compiled `lax.scan`.

This is plain JAX rather than NumPyro: a U-Net has ~10^5 weights in a handful of tensors,
and a NumPyro model would need one sample site per tensor through `random_nnx_module` and
an AutoNormal guide, whose per-site bookkeeping and generic initialisation add compile
time and give no control over the per-tensor scaling and the warm start at theta*, which
are what make the fit converge in a few hundred steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from ctbayes.errors import InputError
from ctbayes.posteriors.base import PosteriorBase, sample_moments

PRIOR_MEANS = ("fit", "zero")
INITS = ("gauss-newton", "small")


@dataclasses.dataclass(frozen=True)
class MFVIConfig:
    """Settings of `fit_mfvi`. The defaults run in well under a minute at 64x64 on CPU.

    iterations: Adam steps on the negative ELBO; lr: Adam learning rate (in the
      standardised coordinates u, so one value serves all layers).
    particles: reparameterised draws per step.
    prior_mean: "fit" (the prior is centred at theta*) or "zero".
    prior_scale: prior std of each weight, as a fraction of its tensor's rms s_k.
    init: the initial std of q: "gauss-newton", the mean-field optimum of the model
      linearised at theta* (diag(J^T J) from `probes` Hutchinson probes), which leaves the
      ELBO little to do; "small": `init_std` times s_k everywhere (the textbook start,
      which needs many more steps for the std to grow where the data do not constrain).
    noise_variance: sigma^2 of the sinogram noise; None: the DIP residual variance.
    learn_noise: also maximise the ELBO over log sigma^2 (a point estimate).
    chunk: steps per compiled call. std_samples: samples behind `std()`.
    seed: seeds the ELBO draws and the samples behind `std()`.
    """

    iterations: int = 200
    lr: float = 1e-2
    particles: int = 1
    prior_mean: str = "fit"
    prior_scale: float = 0.1
    init: str = "gauss-newton"
    init_std: float = 1e-3
    probes: int = 32
    noise_variance: float | None = None
    learn_noise: bool = False
    chunk: int = 50
    std_samples: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.init not in INITS:
            raise InputError(f"MFVIConfig.init must be one of {', '.join(INITS)}, got {self.init!r}.")
        if self.prior_mean not in PRIOR_MEANS:
            raise InputError(f"MFVIConfig.prior_mean must be one of {', '.join(PRIOR_MEANS)}, "
                             f"got {self.prior_mean!r}.")
        positive = {"lr": self.lr, "prior_scale": self.prior_scale, "init_std": self.init_std}
        if self.noise_variance is not None:
            positive["noise_variance"] = self.noise_variance
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"MFVIConfig.{name} must be a positive number, got {value}.")
        for name in ("iterations", "particles", "chunk", "std_samples", "probes"):
            if getattr(self, name) < (0 if name == "iterations" else 1):
                raise InputError(f"MFVIConfig.{name} is too small: {getattr(self, name)}.")


def _kl(m, r, prior_loc, prior_scale):
    """KL(N(m, e^{2r}) || N(prior_loc, prior_scale^2)), summed over all weights."""
    return jnp.sum(jnp.log(prior_scale) - r
                   + (jnp.exp(2 * r) + (m - prior_loc) ** 2) / (2 * prior_scale ** 2) - 0.5)


class _Network(NamedTuple):
    """The static description of the DIP network as a function of its flat weight vector
    (hashable, so the compiled functions below are shared by all fits of one network)."""

    graphdef: object
    treedef: object
    shapes: tuple

    @classmethod
    def of(cls, fit) -> "_Network":
        leaves, treedef = jax.tree.flatten(fit.params)
        return cls(fit.graphdef, treedef, tuple(tuple(leaf.shape) for leaf in leaves))

    def image(self, arrays, u):
        """The image at weights theta* + s * u; arrays = (theta*, s, rest, z)."""
        theta_star, scales, rest, z = arrays
        flat, pieces, start = theta_star + scales * u, [], 0
        for shape in self.shapes:
            size = math.prod(shape)
            pieces.append(flat[start:start + size].reshape(shape))
            start += size
        params = jax.tree.unflatten(self.treedef, pieces)
        return nnx.merge(self.graphdef, params, rest)(z)

    def draw(self, arrays, m, r, key):
        return self.image(arrays, m + jnp.exp(r) * jax.random.normal(key, m.shape, m.dtype))


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)])


@functools.partial(jax.jit, static_argnums=0)
def _mean_image(net, arrays, m):
    return net.image(arrays, m)


@functools.partial(jax.jit, static_argnums=0)
def _draw_batch(net, arrays, m, r, keys):
    return jax.vmap(lambda k: net.draw(arrays, m, r, k))(keys)


@functools.partial(jax.jit, static_argnums=0)
def _jtj_diagonal(net, arrays, keys, A):
    """diag(J^T J) of u -> A f(theta* + s u) at u = 0, by Hutchinson: E[(J^T v)^2]."""
    u0 = jnp.zeros_like(arrays[0])
    shape = jax.eval_shape(lambda u: A(net.image(arrays, u)), u0).shape
    _, vjp = jax.vjp(lambda u: A(net.image(arrays, u)), u0)
    squared = lambda k: vjp(jax.random.rademacher(k, shape, jnp.float32))[0] ** 2  # noqa: E731
    return jnp.mean(jax.lax.map(squared, keys), axis=0)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _run_chunk(net, lr, particles, learn_noise, prior_scale, carry, keys, arrays, prior_loc, A, y):
    """`len(keys)` Adam steps on the negative ELBO per sinogram entry."""
    optimizer = optax.adam(lr)

    def loss(v, key):
        log_noise = v["log_noise"] if learn_noise else jax.lax.stop_gradient(v["log_noise"])
        residual = lambda k: jnp.sum((A(net.draw(arrays, v["m"], v["r"], k)) - y) ** 2)  # noqa: E731
        squared = jnp.mean(jax.vmap(residual)(jax.random.split(key, particles)))
        loglik = -0.5 * squared / jnp.exp(log_noise) - 0.5 * y.size * (jnp.log(2 * jnp.pi) + log_noise)
        return -(loglik - _kl(v["m"], v["r"], prior_loc, prior_scale)) / y.size

    def step(carry, k):
        v, opt_state = carry
        value, grads = jax.value_and_grad(loss)(v, k)
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), value

    return jax.lax.scan(step, carry, keys)


class MeanFieldPosterior(PosteriorBase):
    """q over the DIP weights, seen through the network as a posterior over images.

    mean(): the network at the variational mean (H, W). sample(key, n): images of n weight
    draws (n, H, W), drawn `batch` at a time. std(): per-pixel std over
    `config.std_samples` draws (cached). predictive_samples(key, n, A_candidate):
    A_candidate applied to `sample(key, n)`. Also: `history` (negative ELBO per sinogram
    entry, per step), `noise_variance`, `weight_std()` (posterior std of every weight, as a
    pytree like `fit.params`).
    """

    def __init__(self, fit, net: _Network, arrays, m, r, noise_variance: float,
                 config: MFVIConfig, history: np.ndarray, batch: int = 16):
        self.fit, self.config, self.history = fit, config, history
        self.noise_variance = float(noise_variance)
        self._net, self._arrays, self._m, self._r = net, arrays, m, r
        self._batch = batch
        self._std = None

    def mean(self) -> jax.Array:
        """The network at the variational mean (H, W)."""
        return _mean_image(self._net, self._arrays, self._m)

    def hyperparameters(self) -> dict:
        """The sinogram noise variance (given, the fit's residual, or learned)."""
        return {"noise_variance": self.noise_variance}

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """Images of n weight draws (n, H, W)."""
        n = int(n)
        if n < 1:
            raise InputError(f"The number of samples must be at least 1, got {n}.")
        keys = jax.random.split(key, -(-n // self._batch) * self._batch).reshape(-1, self._batch)
        return jnp.concatenate([_draw_batch(self._net, self._arrays, self._m, self._r, k)
                                for k in keys])[:n]

    def std(self) -> jax.Array:
        """Per-pixel std over config.std_samples draws (cached)."""
        if self._std is None:
            samples = self.sample(jax.random.key(self.config.seed + 1), self.config.std_samples)
            self._std = sample_moments(samples)[1]
        return self._std

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array:
        """A_candidate applied to n image draws."""
        if tuple(A_candidate.domain_shape) != tuple(self.fit.image.shape):
            raise InputError(f"The candidate ray transform acts on images of shape "
                             f"{tuple(A_candidate.domain_shape)}, not {self.fit.image.shape}.")
        return jax.vmap(A_candidate)(self.sample(key, n))

    def weight_std(self):
        """Posterior std of every weight, as a pytree like `fit.params`."""
        flat = self._arrays[1] * jnp.exp(self._r)
        sizes = np.cumsum([math.prod(s) for s in self._net.shapes])[:-1]
        pieces = [p.reshape(s) for p, s in zip(jnp.split(flat, sizes), self._net.shapes)]
        return jax.tree.unflatten(self._net.treedef, pieces)


def fit_mfvi(fit, A, y, config: MFVIConfig = MFVIConfig(), key: jax.Array | None = None, *,
             progress: bool = False, callback=None) -> MeanFieldPosterior:
    """Mean-field VI over the weights of the DIP fit `fit` (a `DIPFit`) of the sinogram y
    under the ray transform A, initialised at the fitted weights (see the module docstring).

    callback: optional `callback(iteration, sample_images)`, called after every chunk with
    `sample_images(key, n)` -> (n, H, W) images of the current q (e.g. to trace a held-out
    score against time)."""
    y = jnp.asarray(y, jnp.float32)
    if y.shape != tuple(A.range_shape):
        raise InputError(f"The sinogram has shape {y.shape}; the ray transform expects "
                         f"{tuple(A.range_shape)}.")
    key = jax.random.key(config.seed) if key is None else key
    init_key, key = jax.random.split(key)
    net = _Network.of(fit)
    theta_star = _flat(fit.params)
    scales = _flat(jax.tree.map(lambda t: jnp.maximum(jnp.sqrt(jnp.mean(t ** 2)), 1e-2)
                                * jnp.ones_like(t), fit.params))
    arrays = (theta_star, scales, fit.rest, fit.z)
    m = jnp.zeros_like(theta_star)
    prior_loc = m if config.prior_mean == "fit" else -theta_star / scales
    if config.noise_variance is None:
        noise_variance = float(jnp.mean((A(jnp.asarray(fit.image)) - y) ** 2))
        if not noise_variance > 0:
            raise InputError("The DIP fit reproduces the sinogram exactly; give "
                             "MFVIConfig.noise_variance.")
    else:
        noise_variance = config.noise_variance
    if config.init == "gauss-newton":
        diag = _jtj_diagonal(net, arrays, jax.random.split(init_key, config.probes), A)
        r = -0.5 * jnp.log(1 / config.prior_scale ** 2 + diag / noise_variance)
    else:
        r = jnp.full_like(m, math.log(config.init_std))
    variational = {"m": m, "r": r,
                   "log_noise": jnp.asarray(math.log(noise_variance), jnp.float32)}
    carry = (variational, optax.adam(config.lr).init(variational))
    static = (net, config.lr, config.particles, config.learn_noise, config.prior_scale)
    history = []
    keys = jax.random.split(key, max(config.iterations, 1))
    with tqdm(total=config.iterations, disable=not progress, desc="MFVI", leave=False) as bar:
        for start in range(0, config.iterations, config.chunk):
            chunk_keys = keys[start:start + config.chunk]
            carry, values = _run_chunk(*static, carry, chunk_keys, arrays, prior_loc, A, y)
            history.append(np.asarray(values))
            bar.update(len(chunk_keys))
            bar.set_postfix(neg_elbo=f"{float(values[-1]):.4g}")
            if callback is not None:
                current = carry[0]
                callback(start + len(chunk_keys), lambda k, n, v=current: jnp.concatenate(
                    [_draw_batch(net, arrays, v["m"], v["r"], b)
                     for b in jax.random.split(k, -(-n // 16) * 16).reshape(-1, 16)])[:n])
    variational = carry[0]
    history = np.concatenate(history) if history else np.zeros(0)
    if not np.all(np.isfinite(history)):
        raise InputError("The variational fit diverged (non-finite ELBO); lower MFVIConfig.lr.")
    return MeanFieldPosterior(fit, net, arrays, variational["m"], variational["r"],
                              float(jnp.exp(variational["log_noise"])), config, history)


def mfvi_posterior(fit, A, y, *, samples: int = 64, seed: int = 0,
                   config: MFVIConfig | None = None, progress: bool = False) -> MeanFieldPosterior:
    """The CLI entry point: `fit_mfvi` with default settings, `samples` draws behind std()."""
    config = dataclasses.replace(config or MFVIConfig(), std_samples=samples, seed=seed)
    return fit_mfvi(fit, A, y, config, jax.random.key(seed), progress=progress)


def build(fit, A, y, config: MFVIConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> MeanFieldPosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): `mfvi_posterior`."""
    return mfvi_posterior(fit, A, y, samples=samples, seed=seed, config=config)
