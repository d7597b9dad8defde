"""Variational families for score-based VI: what the proximal update needs of a q.

Each family is a small frozen dataclass (hashable, so it can be a static argument of a jitted
step) whose methods act on a parameter pytree:

- `init(mean, std)`: parameters of a q centred at `mean` with independent spread `std`;
- `sample(params, key, n)`: n draws (n, D). They are only used as data for the score match,
  never differentiated, so the sampler need not be reparameterised;
- `log_prob(params, theta)`: log q(theta), and `score(params, theta)` its gradient in theta;
- `cross_entropy(params_old, params)`: -E_{q_old} log q, the part of KL(q_old || q) that
  depends on q (exact for the Gaussians; None for the flow, whose proximal term is estimated
  from the samples of q_old, see `ctbayes.score_vi.proximal`);
- `variance(params)`: per-coordinate variance (D,), the preconditioner of the score divergence;
- `mean(params)`: the mean (exact for Gaussians, a Monte-Carlo estimate for the flow).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes.errors import InputError

_LOG_2PI = math.log(2 * math.pi)


def _broadcast(value, dim):
    return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (dim,))


@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    """q = N(mean, diag(std^2)); parameters {"mean", "log_std"}."""

    dim: int

    def init(self, mean, std=0.1):
        """Parameters of a q centred at `mean` with independent spread `std`."""
        return {"mean": _broadcast(mean, self.dim), "log_std": jnp.log(_broadcast(std, self.dim))}

    def sample(self, params, key, n):
        """n draws (n, D) from q."""
        eps = jax.random.normal(key, (n, self.dim))
        return params["mean"] + jnp.exp(params["log_std"]) * eps

    def log_prob(self, params, theta):
        """log q(theta)."""
        z = (theta - params["mean"]) * jnp.exp(-params["log_std"])
        return -0.5 * jnp.sum(z ** 2) - jnp.sum(params["log_std"]) - 0.5 * self.dim * _LOG_2PI

    def score(self, params, theta):
        """The gradient of log q in theta."""
        return -(theta - params["mean"]) * jnp.exp(-2 * params["log_std"])

    def cross_entropy(self, old, params):
        """-E_{q_old} log q: the part of KL(q_old || q) that depends on q."""
        var_old = jnp.exp(2 * old["log_std"])
        precision = jnp.exp(-2 * params["log_std"])
        quad = jnp.sum(precision * (var_old + (old["mean"] - params["mean"]) ** 2))
        return 0.5 * quad + jnp.sum(params["log_std"]) + 0.5 * self.dim * _LOG_2PI

    def variance(self, params):
        """Per-coordinate variance (D,)."""
        return jnp.exp(2 * params["log_std"])

    def mean(self, params):
        """The mean (D,)."""
        return params["mean"]

    def covariance(self, params):
        """The full covariance (D, D) (small D)."""
        return jnp.diag(self.variance(params))


@dataclasses.dataclass(frozen=True)
class LowRankGaussian:
    """q = N(mean, F F^T + diag(d^2)) with F of shape (D, rank); parameters
    {"mean", "factor", "log_diag"}. Densities use the Woodbury identity, O(D rank^2)."""

    dim: int
    rank: int = 4

    def __post_init__(self):
        if not 1 <= self.rank <= self.dim:
            raise InputError(f"The low-rank Gaussian needs 1 <= rank <= dim ({self.dim}), got {self.rank}.")

    def init(self, mean, std=0.1, key=None):
        """Parameters of a q centred at `mean` with independent spread `std`."""
        key = jax.random.key(0) if key is None else key
        std = _broadcast(std, self.dim)
        # A small random factor breaks the symmetry of the columns (a zero factor is a saddle).
        factor = 1e-2 * std[:, None] * jax.random.normal(key, (self.dim, self.rank))
        return {"mean": _broadcast(mean, self.dim), "factor": factor, "log_diag": jnp.log(std)}

    def _parts(self, params):
        inv_d = jnp.exp(-2 * params["log_diag"])
        f = params["factor"]
        capacitance = jnp.eye(self.rank) + (f.T * inv_d) @ f
        chol = jnp.linalg.cholesky(capacitance)
        return f, inv_d, chol

    def _precision_apply(self, params, v):
        """Sigma^{-1} v for v of shape (D,) or (D, m) (Woodbury)."""
        f, inv_d, chol = self._parts(params)
        dv = inv_d[:, None] * v if v.ndim == 2 else inv_d * v
        inner = jax.scipy.linalg.cho_solve((chol, True), f.T @ dv)
        return dv - (inv_d[:, None] * (f @ inner) if v.ndim == 2 else inv_d * (f @ inner))

    def _logdet(self, params):
        _, _, chol = self._parts(params)
        return 2 * jnp.sum(params["log_diag"]) + 2 * jnp.sum(jnp.log(jnp.diag(chol)))

    def sample(self, params, key, n):
        """n draws (n, D) from q."""
        k1, k2 = jax.random.split(key)
        eps_f = jax.random.normal(k1, (n, self.rank))
        eps_d = jax.random.normal(k2, (n, self.dim))
        return params["mean"] + eps_f @ params["factor"].T + jnp.exp(params["log_diag"]) * eps_d

    def log_prob(self, params, theta):
        """log q(theta)."""
        r = theta - params["mean"]
        return -0.5 * (r @ self._precision_apply(params, r) + self._logdet(params)
                       + self.dim * _LOG_2PI)

    def score(self, params, theta):
        """The gradient of log q in theta."""
        return -self._precision_apply(params, theta - params["mean"])

    def cross_entropy(self, old, params):
        """-E_{q_old} log q: the part of KL(q_old || q) that depends on q."""
        # tr(P Sigma_old) = tr(F_old^T P F_old) + sum_j P_jj d_old_j^2, with diag(P) by Woodbury.
        f, inv_d, chol = self._parts(params)
        half = jax.scipy.linalg.solve_triangular(chol, (f * inv_d[:, None]).T, lower=True)
        diag_p = inv_d - jnp.sum(half ** 2, axis=0)
        trace = jnp.sum(old["factor"] * self._precision_apply(params, old["factor"])) + \
            jnp.sum(diag_p * jnp.exp(2 * old["log_diag"]))
        r = old["mean"] - params["mean"]
        return 0.5 * (trace + r @ self._precision_apply(params, r) + self._logdet(params)
                      + self.dim * _LOG_2PI)

    def variance(self, params):
        """Per-coordinate variance (D,)."""
        return jnp.sum(params["factor"] ** 2, axis=1) + jnp.exp(2 * params["log_diag"])

    def mean(self, params):
        """The mean (D,)."""
        return params["mean"]

    def covariance(self, params):
        """The full covariance (D, D) (small D)."""
        f = params["factor"]
        return f @ f.T + jnp.diag(jnp.exp(2 * params["log_diag"]))


@dataclasses.dataclass(frozen=True)
class RealNVP:
    """A RealNVP normalizing flow: an elementwise affine base map, then `layers` affine
    coupling layers (alternating halves of a fixed random permutation) with one-hidden-layer
    tanh networks of width `hidden`; log-scales are bounded by a tanh. Both sampling and the
    density are one pass, so log q at the samples of the previous q is cheap. The coupling
    networks start at the identity, so `init` gives the Gaussian N(mean, diag(std^2)).

    Parameters: {"loc", "log_scale", "layers": [{"w1", "b1", "w2", "b2"}, ...]}.
    """

    dim: int
    layers: int = 4
    hidden: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.dim < 2:
            raise InputError("The RealNVP family needs at least two dimensions.")

    @property
    def _split(self):
        return self.dim // 2

    def _permutations(self):
        rng = np.random.default_rng(self.seed)
        return [rng.permutation(self.dim) for _ in range(self.layers)]

    def init(self, mean, std=0.1, key=None):
        """Parameters of a q centred at `mean` with independent spread `std`."""
        key = jax.random.key(self.seed) if key is None else key
        a = self._split
        layers = []
        for k in jax.random.split(key, self.layers):
            w1 = jax.random.normal(k, (a, self.hidden)) / math.sqrt(a)
            layers.append({"w1": w1, "b1": jnp.zeros(self.hidden),
                           "w2": jnp.zeros((self.hidden, 2 * (self.dim - a))),
                           "b2": jnp.zeros(2 * (self.dim - a))})
        return {"loc": _broadcast(mean, self.dim), "log_scale": jnp.log(_broadcast(std, self.dim)),
                "layers": layers}

    def _coupling(self, layer, cond):
        h = jnp.tanh(cond @ layer["w1"] + layer["b1"])
        out = h @ layer["w2"] + layer["b2"]
        shift, raw = jnp.split(out, 2, axis=-1)
        return shift, jnp.tanh(raw)  # log-scale in (-1, 1): a stable map

    def _forward(self, params, u):
        """Base draw u (n, D) -> theta (n, D)."""
        a = self._split
        x = u
        for layer, perm in zip(params["layers"], self._permutations()):
            x = x[:, perm]
            shift, log_s = self._coupling(layer, x[:, :a])
            x = jnp.concatenate([x[:, :a], x[:, a:] * jnp.exp(log_s) + shift], axis=1)
            x = x[:, np.argsort(perm)]
        return params["loc"] + jnp.exp(params["log_scale"]) * x

    def _inverse(self, params, theta):
        """theta (D,) -> (base point u, log|det d theta/du|)."""
        a = self._split
        x = (theta - params["loc"]) * jnp.exp(-params["log_scale"])
        logdet = jnp.sum(params["log_scale"])
        for layer, perm in reversed(list(zip(params["layers"], self._permutations()))):
            x = x[perm]
            shift, log_s = self._coupling(layer, x[:a])
            x = jnp.concatenate([x[:a], (x[a:] - shift) * jnp.exp(-log_s)])
            logdet = logdet + jnp.sum(log_s)
            x = x[np.argsort(perm)]
        return x, logdet

    def sample(self, params, key, n):
        """n draws (n, D) from q."""
        return self._forward(params, jax.random.normal(key, (n, self.dim)))

    def log_prob(self, params, theta):
        """log q(theta)."""
        u, logdet = self._inverse(params, theta)
        return -0.5 * jnp.sum(u ** 2) - 0.5 * self.dim * _LOG_2PI - logdet

    def score(self, params, theta):
        """The gradient of log q in theta."""
        return jax.grad(lambda t: self.log_prob(params, t))(theta)

    cross_entropy = None  # estimated from the samples of the previous q

    def preconditioner(self, params):
        """The variance of the base affine map: a cheap per-coordinate scale of q."""
        return jnp.exp(2 * params["log_scale"])

    def variance(self, params, key=None, n=256):
        """Per-coordinate variance (D,), a Monte Carlo estimate from n draws."""
        key = jax.random.key(self.seed + 1) if key is None else key
        return jnp.var(self.sample(params, key, n), axis=0)

    def mean(self, params, key=None, n=256):
        """The mean (D,), a Monte Carlo estimate from n draws."""
        key = jax.random.key(self.seed + 1) if key is None else key
        return jnp.mean(self.sample(params, key, n), axis=0)


FAMILIES = {"diagonal": DiagonalGaussian, "lowrank": LowRankGaussian, "flow": RealNVP}


def make_family(name: str, dim: int, **options):
    """A family by name ("diagonal", "lowrank", "flow") for a D-dimensional parameter."""
    if name not in FAMILIES:
        raise InputError(f"Unknown variational family {name!r}; expected one of {', '.join(FAMILIES)}.")
    return FAMILIES[name](dim, **options)
