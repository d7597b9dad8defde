"""DIP with Monte Carlo dropout (DIP-MCDO): the baseline the linearised Laplace is compared
against (Laves et al. 2020; the "DIP-MCDO" of Antoran et al., TMLR 2023).

The DIP is fitted with dropout active in the up path (`DIPConfig.dropout > 0`); afterwards
each posterior sample is one forward pass with a fresh dropout mask. The posterior mean and
std are Monte Carlo estimates from `moment_samples` passes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from flax import nnx

from ctbayes.errors import InputError
from ctbayes.posteriors.base import PosteriorBase, sample_moments


@dataclasses.dataclass(frozen=True)
class MCDOConfig:
    """Settings of MC dropout.

    dropout: the dropout rate of the DIP fit (in the U-Net's up path). Laves et al. use 0.1 on
      much larger networks; a smaller rate keeps the dropout fit close to the plain DIP.
    batch: forward passes evaluated together (bounds memory).
    """

    dropout: float = 0.05
    batch: int = 16

    def __post_init__(self):
        if not 0 < self.dropout < 1:
            raise InputError(f"The dropout rate must lie in (0, 1), got {self.dropout}.")
        if self.batch < 1:
            raise InputError(f"MCDOConfig.batch must be at least 1, got {self.batch}.")

    def network(self, dip):
        """The DIP settings MC dropout needs: dropout on at this rate."""
        return dataclasses.replace(dip, dropout=self.dropout)


@functools.partial(jax.jit, static_argnames=("graphdef", "batch"))
def _dropout_images(graphdef, batch, params, rest, z, keys):
    """One image per key, dropout active, `batch` forward passes at a time."""
    def one(key):
        return nnx.merge(graphdef, params, rest)(z, key=key)
    return jax.lax.map(one, keys, batch_size=batch)


class MCDropoutPosterior(PosteriorBase):
    """The image distribution of a dropout DIP under random dropout masks (`ImagePosterior`).

    fit: a `DIPFit` of a fit with dropout > 0. moment_samples: passes behind mean() and
    std(). batch: passes evaluated together (bounds memory).
    """

    mean_is_sample_average = True  # mean() is the MC average of moment_samples passes

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

    def hyperparameters(self) -> dict:
        """The dropout rate of the fit."""
        return {"dropout_rate": self.fit.config.dropout}

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


def build(fit, A, y, config: MCDOConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> MCDropoutPosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): `samples` passes behind mean()
    and std()."""
    return MCDropoutPosterior(fit, samples, seed, config.batch)
