"""Per-pixel uncertainty of a DIP reconstruction: the settings of the uncertainty pass, and
the reduction of a posterior to what a result file stores.

The posterior itself comes from the registry (`ctbayes.posteriors.registry`); `summarise`
draws its samples once and reduces them to maps and metrics, and `mixture` pools the
summaries of an ensemble's members.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from ctbayes.errors import InputError
from ctbayes.posteriors import registry
from ctbayes.scoring import (  # the scores, re-exported where callers looked before
    NOISY, PATCH_SIZES, heldout_view_metrics, reference_variance, scoring_target,
    uncertainty_metrics)

__all__ = ["METHODS", "NONE", "NOISY", "PATCH_SIZES", "UncertaintyConfig", "UncertaintySummary",
           "dip_config_for", "heldout_view_metrics", "image_posterior", "mixture",
           "reference_variance", "scoring_target", "summarise", "uncertainty_metrics"]

NONE = "none"
# the posteriors of a fitted DIP, and "none"
METHODS = tuple(m.value for m, e in registry.REGISTRY.items() if e.needs_fit) + (NONE,)


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """Settings of the uncertainty pass after a DIP fit.

    method: one of METHODS ("none": no pass). posterior: the method's own settings, an
      instance of its config class in the registry (None: that class's defaults; e.g.
      `ctbayes.laplace.LaplaceConfig` for "laplace", whose defaults are the ones the CLI uses).
    samples: posterior samples behind the std map and the metrics.
    save_samples: how many of them go into the result file (0: none).
    seed: seeds the method's fit (EM, VI) and the samples.
    calibration: a protocol calibration file (`ctbayes.protocol`, from `ctbayes calibrate
      -o`): its std scale and edge std replace std_scale and edge_std, once `reconstruct` has
      checked that the scan and settings match the protocol it was learned for. None: none.
    ensemble: fit this many DIPs, from DIP seeds seed, seed + 1, ..., each with its own
      posterior, and report their equal-weight mixture (`mixture`; for Laplace a mixture of
      Laplace approximations, Eschenhagen et al. 2021). It costs that many times one pass;
      the spread between the fits adds variance where single-fit posteriors are too narrow.
    std_scale: multiply the posterior's deviations from its mean (std map and samples) by
      this factor, a calibration learned on other scans with a known truth or reference
      (`ctbayes.calibration`): sigma scaling, which for the linear model is the posterior
      at temperature std_scale^2. 1: the posterior as it is.
    edge_std: add independent Gaussian noise of std edge_std |grad mean| per pixel to the
      std map and the samples, after std_scale: the error of edges misplaced by edge_std
      pixels, which real data shows and the linear model does not. 0: none.
    """

    method: str = "laplace"
    samples: int = 128
    save_samples: int = 0
    seed: int = 0
    ensemble: int = 1
    std_scale: float = 1.0
    edge_std: float = 0.0
    posterior: Any = None
    calibration: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"Unknown uncertainty method {self.method!r}; expected one of "
                             f"{', '.join(METHODS)}.")
        if self.method != NONE:
            posterior = self.posterior
            if isinstance(posterior, dict):  # nested JSON of a result file
                posterior = registry.config_from_dict(self.method, posterior)
            object.__setattr__(self, "posterior", registry.settings(self.method, posterior))
        if self.samples < 2:
            raise InputError("The uncertainty needs at least 2 posterior samples.")
        if not 0 <= self.save_samples <= self.samples:
            raise InputError(f"Cannot save {self.save_samples} samples out of {self.samples}.")
        if not (0 < self.std_scale < float("inf")):
            raise InputError(f"The std scale must be a positive number, got {self.std_scale}.")
        if not (0 <= self.edge_std < float("inf")):
            raise InputError(f"The edge std must be a number >= 0, got {self.edge_std}.")
        if self.ensemble < 1:
            raise InputError(f"An ensemble needs at least 1 member, got {self.ensemble}.")

    def as_dict(self) -> dict:
        """The settings as nested JSON-ready values (the posterior's config as a dict)."""
        return dataclasses.asdict(self)


def dip_config_for(config: UncertaintyConfig, dip_config):
    """The DIP settings the configured method needs (MC dropout: dropout on)."""
    if config.method == NONE:
        return dip_config
    return registry.entry(config.method).network(config.posterior, dip_config)


def image_posterior(fit, A, y, config: UncertaintyConfig):
    """The posterior over the image of a DIP fit for sinogram y = A x + noise, built by the
    registry with config.samples Monte Carlo samples and config.seed.

    Returns (posterior, hyperparameters): what the method learned, as a flat dict of floats
    for the result file.
    """
    if config.method == NONE:
        raise InputError("The uncertainty method 'none' has no posterior.")
    posterior = registry.build(config.method, fit, A, y, config.posterior,
                               samples=config.samples, seed=config.seed)
    return posterior, posterior.hyperparameters()


@dataclasses.dataclass
class UncertaintySummary:
    """What a result file stores of a posterior: mean, std, some samples, metrics, timings."""

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray
    metrics: dict
    seconds: float


def summarise(posterior, config: UncertaintyConfig, ground_truth=None,
              exact_std: bool | None = None) -> UncertaintySummary:
    """Draw config.samples samples once; std is their per-pixel std, or the posterior's own
    std where it is exact (`exact_std`; None: the posterior's `std_is_exact`), and for Monte
    Carlo posteriors (`mean_is_sample_average`) the mean is their average.
    With a ground truth, adds the uncertainty metrics."""
    if exact_std is None:
        exact_std = posterior.std_is_exact
    start = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(config.seed), 11)
    samples = np.asarray(posterior.sample(key, config.samples), np.float32)
    if posterior.mean_is_sample_average:  # no second set of draws
        mean = samples.mean(0)
    else:
        mean = np.asarray(posterior.mean(), np.float32)
    std = np.asarray(posterior.std() if exact_std else samples.std(0, ddof=1), np.float32)
    scores = uncertainty_metrics(ground_truth, mean, std, samples) \
        if ground_truth is not None else {}
    return UncertaintySummary(mean, std, samples[:config.save_samples], scores,
                              time.perf_counter() - start)


def mixture(members: list[UncertaintySummary], save_samples: int, ground_truth=None,
            mask=None, std_scale: float = 1.0, edge_std: float = 0.0,
            seed: int = 0, truth_variance=None) -> UncertaintySummary:
    """The equal-weight mixture of several posteriors' summaries (an ensemble of DIP fits).

    Its mean is the members' average and its variance the average member variance plus the
    variance of the member means (exact moments of the mixture, whose Gaussian intervals the
    metrics then score); its samples are the members' pooled, taken in turn so that the
    first `save_samples` hold every member (one member: its own summary, with metrics).
    The members' summaries must keep all their samples (`summarise` with save_samples =
    samples) for the pooled patch log-likelihoods.
    std_scale, edge_std: the calibration (`UncertaintyConfig`, `calibration.calibrated_std`
    and `calibrated_samples`, whose edge noise seed seeds), applied before the metrics
    (against ground_truth, inside mask) score the result; with truth_variance (a noisy
    reference's, `reference_variance`) they score it once more allowing for that noise, as
    keys ending in `NOISY`.
    """
    means = np.stack([m.mean for m in members])
    variance = np.mean([m.std.astype(np.float64) ** 2 for m in members], 0) + means.var(0)
    mean, std = means.mean(0).astype(np.float32), np.sqrt(variance).astype(np.float32)
    pooled = np.stack([m.samples for m in members], 1).reshape((-1,) + mean.shape)
    if std_scale != 1 or edge_std:
        from ctbayes.calibration import calibrated_samples, calibrated_std

        std = calibrated_std(std, mean, std_scale, edge_std)
        pooled = calibrated_samples(pooled, mean, std_scale, edge_std, seed)
    scores = uncertainty_metrics(ground_truth, mean, std, pooled, mask) \
        if ground_truth is not None else {}
    if ground_truth is not None and truth_variance is not None:
        scores |= {key + NOISY: value for key, value in uncertainty_metrics(
            ground_truth, mean, std, pooled, mask, truth_variance=truth_variance).items()}
    return UncertaintySummary(mean, std, pooled[:save_samples], scores,
                              sum(m.seconds for m in members))
