"""Linearised Laplace behind the posterior interface: an adapter over the `ctbayes.laplace`
engine (`fit_laplace`, `LinearisedLaplace`).

The adapter declares what the engine offers: the learned prior and noise variances, the
fit's timings, precision and EM cycles, an exact std with the exact solver, and the cheap
update for new data (the linear model rebuilt with the enlarged operator and the same
hyperparameters, relinearised at new network parameters: no EM, no DIP refit).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jax.flatten_util import ravel_pytree

from ctbayes.laplace import exact
from ctbayes.laplace.linearise import linear_model
from ctbayes.laplace.posterior import LaplaceConfig, LinearisedLaplace, fit_laplace, pixel_features
from ctbayes.posteriors.base import Diagnostics, PosteriorBase

__all__ = ["LaplaceConfig", "LaplacePosterior", "build", "check_problem", "engine_config",
           "relinearised"]


class LaplacePosterior(PosteriorBase):
    """A `LinearisedLaplace` (the engine's posterior, `engine`) as an `ImagePosterior`."""

    def __init__(self, engine: LinearisedLaplace):
        self.engine = engine

    @property
    def noise_variance(self) -> float:
        """The learned sinogram noise variance."""
        return self.engine.noise_variance

    @property
    def std_is_exact(self) -> bool:
        """True with the exact solver: std() is then exact, not a sample estimate."""
        return self.engine.config.solver == "exact"

    def mean(self):
        """The network's image f(theta*) (or the linear model's mean, `LaplaceConfig.mean`)."""
        return self.engine.mean()

    def sample(self, key, n: int):
        """n posterior image samples (n, H, W)."""
        return self.engine.sample(key, n)

    def std(self):
        """Per-pixel posterior std (H, W)."""
        return self.engine.std()

    def predictive_samples(self, key, n: int, A_candidate):
        """n samples of the noise-free measurements at another operator on the same grid."""
        return self.engine.predictive_samples(key, n, A_candidate)

    def hyperparameters(self) -> dict:
        """prior_variance_<group> per prior group, and noise_variance."""
        hyper = {f"prior_variance_{k}": v for k, v in self.engine.prior_variances.items()}
        hyper["noise_variance"] = self.engine.noise_variance
        return hyper

    def diagnostics(self) -> Diagnostics:
        """The fit's seconds by phase, its precision and the EM cycles run."""
        return Diagnostics(dict(self.engine.timings), self.engine.precision,
                           len(self.engine.history))

    def with_data(self, A, y, params=None) -> "LaplacePosterior":
        """The same hyperparameters, the linear model rebuilt for y = A x (at `params`, or at
        the current linearisation point)."""
        return LaplacePosterior(relinearised(self.engine, params, A, y))

    def __repr__(self):
        return repr(self.engine)


def relinearised(posterior: LinearisedLaplace, params, A, y) -> LinearisedLaplace:
    """The posterior's linear model rebuilt at network parameters `params` (None: where it is
    linearised now) for data y = A x, with its prior groups, prior-mean convention and
    hyperparameters."""
    base = posterior.model
    theta = base.theta if params is None else ravel_pytree(posterior.coordinates(params))[0]
    model = linear_model(base.fn_flat, theta, A, y, base.prior, base.prior_mean)
    dense = exact.dense_problem(model) if posterior.config.solver == "exact" else None
    return LinearisedLaplace(model, posterior.hyper, posterior.config, posterior.history, dense,
                             posterior.mesh, coordinates=posterior.coordinates)


def engine_config(config: LaplaceConfig, samples: int, seed: int) -> LaplaceConfig:
    """The engine's settings for a pass with `samples` posterior samples: the std from that
    many, the E-steps from at most config.samples, seeded by `seed`."""
    return dataclasses.replace(config, samples=min(config.samples, samples),
                               std_samples=samples, seed=seed)


def check_problem(config: LaplaceConfig, A, y, num_params: int) -> None:
    """Refuse, before any fitting, a problem too large for the exact solver (each per-pixel
    feature group, `laplace.posterior.pixel_features`, adds one parameter per pixel)."""
    if config.solver == "exact":
        pixels = int(np.prod(A.domain_shape))
        exact.check_size(pixels, int(np.size(y)),
                         num_params + pixels * len(pixel_features(config)))


def build(fit, A, y, config: LaplaceConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> LaplacePosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): `fit_laplace` at the DIP
    fit's parameters; the noise variance is learned by the EM."""
    return LaplacePosterior(fit_laplace(fit.render, fit.params, A, y,
                                        engine_config(config, samples, seed)))
