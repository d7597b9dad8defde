"""DIP with Monte Carlo dropout (DIP-MCDO): the baseline the linearised Laplace is compared
against (Laves et al. 2020; the "DIP-MCDO" of Antoran et al., TMLR 2023).

The DIP is fitted with dropout active in the up path (`DIPConfig.dropout > 0`); afterwards
each posterior sample is one forward pass with a fresh dropout mask. The posterior mean and
std are Monte Carlo estimates from `moment_samples` passes.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from ctbayes.errors import InputError
from ctbayes.posterior import sample_moments


@functools.partial(jax.jit, static_argnames=("graphdef", "batch"))
def _dropout_images(graphdef, batch, params, rest, z, keys):
    """One image per key, dropout active, `batch` forward passes at a time."""
    def one(key):
        return nnx.merge(graphdef, params, rest)(z, key=key)
    return jax.lax.map(one, keys, batch_size=batch)


class MCDropoutPosterior:
    """The image distribution of a dropout DIP under random dropout masks (`ImagePosterior`).

    fit: a `DIPResult` of a fit with dropout > 0. moment_samples: passes behind mean() and
    std(). batch: passes evaluated together (bounds memory).
    """

    mean_is_sample_average = True  # mean() is the MC average (`ctbayes.posterior`)

    def __init__(self, fit, moment_samples: int = 128, seed: int = 0, batch: int = 16):
        if fit.config.dropout <= 0:
            raise InputError("MC dropout needs a DIP fitted with dropout > 0.")
        self.fit = fit
        self.moment_samples = moment_samples
        self.seed = seed
        self.batch = batch
        self._moments = None

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n images (n, H, W), each with its own dropout mask."""
        keys = jax.random.split(key, n)
        out = _dropout_images(self.fit.graphdef, min(self.batch, n), self.fit.params,
                              self.fit.rest, self.fit.z, keys)
        return out.reshape((n,) + out.shape[-2:])

    def _compute_moments(self):
        if self._moments is None:
            samples = self.sample(jax.random.key(self.seed), self.moment_samples)
            self._moments = sample_moments(samples)
        return self._moments

    def mean(self) -> jax.Array:
        """The MC-dropout predictive mean (H, W)."""
        return self._compute_moments()[0]

    def std(self) -> jax.Array:
        """The MC-dropout per-pixel std (H, W)."""
        return self._compute_moments()[1]

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array:
        """n samples of A_candidate x under the dropout distribution."""
        return A_candidate(self.sample(key, n))

    def __repr__(self):
        return f"MCDropoutPosterior(rate {self.fit.config.dropout}, {self.moment_samples} passes)"
