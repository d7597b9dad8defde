"""Linearised Laplace behind the posterior interface: an adapter over the `ctbayes.laplace`
engine (`fit_laplace`, `LinearisedLaplace`).

The adapter declares what the engine offers: the learned prior and noise variances, the
fit's timings, precision and EM cycles, an exact std with the exact solver, and the cheap
update for new data (the linear model rebuilt with the enlarged operator and the same
hyperparameters, relinearised at new network parameters: no EM, no DIP refit).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from ctbayes.dip.fit import build_network, image_function, parameter_count
from ctbayes.laplace import exact, memory
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


def check_problem(config: LaplaceConfig | None, A, y, dip_config) -> None:
    """Refuse, before any fitting, a problem the Laplace pass cannot handle: too large for the
    exact solver (each per-pixel feature group, `laplace.posterior.pixel_features`, adds one
    parameter per pixel), or unable to fit the memory budget even at its smallest
    (`laplace.memory`; the DIP of `dip_config` is traced, not run)."""
    config = LaplaceConfig() if config is None else config
    num_params = parameter_count(dip_config)
    pixels = int(np.prod(A.domain_shape))
    if config.solver == "exact":
        exact.check_size(pixels, int(np.size(y)),
                         num_params + pixels * len(pixel_features(config)))
        return
    check_memory(A, y, dip_config, config)


def check_memory(A, y, dip_config, config: LaplaceConfig) -> None:
    """InputError when the Laplace pass of a DIP with `dip_config` on data y cannot fit
    config.memory_budget (`ctbayes.laplace.memory`) even at its smallest: the network's
    intermediates are traced (not run), in float64 unless config.precision is "float32"
    (with "auto" the pass may move to float64)."""
    from flax import nnx

    model, z = build_network(dip_config, tuple(A.domain_shape))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    activation = memory.activation_bytes(image_function(graphdef, rest, z), params)
    itemsize = 4 if config.precision == "float32" else 8
    matrix = getattr(A, "matrix", None)
    sizes = memory.Sizes(
        pixels=int(np.prod(A.domain_shape)), data=int(np.size(y)),
        params=sum(int(np.size(p)) for p in jax.tree.leaves(params)),
        activation=activation * itemsize // 4, itemsize=itemsize,
        matrix_nnz=int(getattr(matrix, "nse", 0)) if matrix is not None else 0,
        kept_samples=config.std_samples)
    rank = config.precond_rank if config.solver == "cg" else 0
    memory.plan(sizes, rank, config.samples + 1, memory.budget_bytes(config.memory_budget), 4)


def build(fit, A, y, config: LaplaceConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> LaplacePosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): `fit_laplace` at the DIP
    fit's parameters; the noise variance is learned by the EM."""
    return LaplacePosterior(fit_laplace(fit.render, fit.params, A, y,
                                        engine_config(config, samples, seed)))
