"""The posterior interface: what every image posterior in ctbayes answers.

Every method (linearised Laplace, MC dropout, mean-field VI, score-based VI, the Matern GP
prior) implements `ImagePosterior`, so reconstruction, scoring, figures and the design loop
work with any of them. The optional capabilities are declared by every posterior (with the
neutral answers of `PosteriorBase`), never probed with getattr or isinstance.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """What a posterior reports about its own fit, for the result file.

    timings: seconds per phase of the fit (e.g. Laplace's linearise, precondition, E-steps).
    precision: the arithmetic the fit used ("float32"/"float64"; None: not applicable).
    em_cycles: EM cycles run (None: the method has no EM).
    """

    timings: dict = dataclasses.field(default_factory=dict)
    precision: str | None = None
    em_cycles: int | None = None


@runtime_checkable
class ImagePosterior(Protocol):
    """A distribution over images of one shape (H, W).

    mean(): the point estimate (H, W). sample(key, n): n image samples (n, H, W).
    std(): per-pixel standard deviation (H, W). predictive_samples(key, n, A_candidate):
    n samples of the noise-free measurements A_candidate x (n, *A_candidate.range_shape) at
    another ray transform on the same image grid (the design loop's candidate angles).
    mean_is_sample_average: True where mean() is itself a Monte Carlo average of samples, so
    callers holding samples already average those instead of drawing a second set.
    std_is_exact: True where std() is exact rather than a Monte Carlo estimate.
    noise_variance: the sinogram noise variance the posterior assumes (None: none).
    hyperparameters(): what the method learned, as a flat dict of floats.
    diagnostics(): a `Diagnostics`.
    with_data(A, y, params): the posterior of the same model for other data y = A x (with the
    network linearised at `params` where that applies), or None where the method has no
    cheap update and must be built again.
    """

    mean_is_sample_average: bool
    std_is_exact: bool
    noise_variance: float | None

    def mean(self) -> jax.Array:
        """The point estimate (H, W)."""

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n image samples (n, H, W)."""

    def std(self) -> jax.Array:
        """Per-pixel standard deviation (H, W)."""

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array:
        """n samples of the noise-free measurements A_candidate x."""

    def hyperparameters(self) -> dict:
        """What the method learned, as a flat dict of floats."""

    def diagnostics(self) -> Diagnostics:
        """Timings, precision and EM cycles of the fit."""

    def with_data(self, A, y, params=None) -> "ImagePosterior | None":
        """The posterior for other data y = A x, or None (no cheap update)."""


class PosteriorBase:
    """The neutral answers of the optional capabilities; posteriors override what they have."""

    mean_is_sample_average = False
    std_is_exact = False
    noise_variance: float | None = None

    def hyperparameters(self) -> dict:
        """Nothing learned."""
        return {}

    def diagnostics(self) -> Diagnostics:
        """No timings, precision or EM."""
        return Diagnostics()

    def with_data(self, A, y, params=None):
        """No cheap update: the caller builds the posterior again."""
        return None


def sample_moments(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-pixel mean and standard deviation (unbiased variance, ddof=1) of image samples
    (n, H, W): the Monte Carlo moments that the sampling-only posteriors report."""
    return jnp.mean(samples, 0), jnp.std(samples, 0, ddof=1)
