"""The posterior interface: what every image posterior in ctbayes answers.

Linearised Laplace (`ctbayes.laplace`), MC dropout (`ctbayes.mcdo`) and the variational
posteriors over DIP weights all implement it, so the CLI, the metrics, the figures and the
experimental-design loop work with any of them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp


@runtime_checkable
class ImagePosterior(Protocol):
    """A distribution over images of one shape (H, W).

    mean(): the point estimate (H, W). sample(key, n): n image samples (n, H, W).
    std(): per-pixel standard deviation (H, W). predictive_samples(key, n, A_candidate):
    n samples of the noise-free measurements A_candidate x (n, *A_candidate.range_shape) at
    another ray transform on the same image grid (the design loop's candidate angles).
    A posterior whose mean() is itself a Monte Carlo average of its samples (MC dropout,
    score-VI) sets `mean_is_sample_average = True`, so that callers holding samples already
    (`ctbayes.uncertainty.summarise`) average those instead of drawing a second set.
    """

    def mean(self) -> jax.Array: ...

    def sample(self, key: jax.Array, n: int) -> jax.Array: ...

    def std(self) -> jax.Array: ...

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array: ...


def sample_moments(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-pixel mean and standard deviation (unbiased variance, ddof=1) of image samples
    (n, H, W): the Monte Carlo moments that the sampling-only posteriors report."""
    return jnp.mean(samples, 0), jnp.std(samples, 0, ddof=1)
