"""Per-pixel uncertainty of a DIP reconstruction: one entry point for every posterior.

`image_posterior(fit, A, y, config)` turns a fitted DIP into an `ImagePosterior`:
linearised Laplace with sample-based EM (the default), MC dropout (the baseline; it needs a
DIP fitted with dropout, see `dip_config_for`), mean-field VI or score-based VI over the
weights. `summarise` draws the samples once and reduces them to the maps and numbers that go
into a result file.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from ctbayes import metrics
from ctbayes.errors import InputError

METHODS = ("laplace", "mcdo", "mfvi", "score-vi", "none")
PATCH_SIZES = (1, 2, 10)
NOISY = "_and_its_noise"  # metric names: scored allowing for the reference's own noise


@dataclasses.dataclass(frozen=True)
class UncertaintyConfig:
    """Settings of the uncertainty pass after a DIP fit.

    method: one of METHODS. samples: posterior samples behind the std map and the metrics.
    save_samples: how many of them go into the result file (0: none).
    prior, em_cycles, solver, cg_tol, precond_rank: linearised Laplace
      (`ctbayes.laplace.LaplaceConfig`). The Matern-1/2 filter prior is the default (one
      variance; the taps of each 3x3 filter correlated, lengthscale fitted to the filters):
      on the shipped 64x64 Shepp-Logan DIP its 90% interval covered 0.86 of the pixels and
      the learned noise variance was within 2% of the simulated one, where the isotropic
      prior gave 0.83 and 9% low; on the rectangles and ellipses scans the two agree (LL
      within 0.04, coverage within 0.01; README *Benchmarks*). The g-prior's std was twice
      too large (coverage 0.99) and the per-layer prior's EM shrank the small groups'
      variances towards zero (coverage 0.51). At most four EM cycles: on 64x64 Shepp-Logan
      the EM meets em_tol after two. A relative CG residual
      of 1e-2 moves the std by well under its Monte Carlo error. The Nystrom preconditioner's
      rank (capped at the number of data) should exceed the effective dimension gamma of the
      fit: on the 128x128 ellipses DIP (gamma about 750 of 11640 data) CG needed 18 / 10 / 5
      iterations per batch with rank 256 / 512 / 1024, and rank 1024 made the uncertainty pass
      cheapest (its 1024 products with P are paid once: one-variance priors rescale them).
      So on HTC2022 `ta` (float64): rank 512 against 1024 took the preconditioner from 168
      to 93 s but CG from 4 to 14 iterations at most, sampling from 163 to 302 s.
      The EM draws 16 samples per E-step (and the std is drawn in batches of 16, reusing that
      compiled sampler): on that scan 16 and 32 gave the same hyperparameters (noise variance
      0.371 either way), std, log-likelihood and coverage, and 16 cost 40% less.
    em_tol: the EM stops early once no hyperparameter moved by more than 5% in a cycle
      (`ctbayes.laplace.em`); on 64x64 Shepp-Logan each cycle after the first moves them by
      at most 3.5%, the Monte Carlo noise of the E-step. 0 runs all `em_cycles`.
    edge_features: Laplace: add a per-pixel edge displacement to the linearised model, with
      its variance learned by the EM from the scan (`ctbayes.laplace.edges`).
    precision: of the linearised model ("auto": float64 where float32 CG cannot be trusted,
      as on HTC2022 `ta` at 128x128; see `ctbayes.laplace.fit_laplace`).
    dropout: the dropout rate of the DIP-MCDO fit (the rate of Laves et al. 2020 is 0.1 on
      much larger networks; 0.05 kept the MCDO fit within about 1 dB of the plain DIP here).
    seed: seeds the hyperparameter EM and the samples.
    std_scale: multiply the posterior's deviations from its mean (std map and samples) by
      this factor, a calibration learned on other scans with a known truth or reference
      (`calibration`): sigma scaling, which for the linear model is the posterior at
      temperature std_scale^2. 1: the posterior as it is.
    edge_std: add independent Gaussian noise of std edge_std |grad mean| per pixel to the
      std map and the samples, after std_scale: the error of edges misplaced by edge_std
      pixels, which real data shows and the linear model does not (`calibration`). 0: none.
    memory_budget: GB the Laplace pass may use (`ctbayes.laplace.LaplaceConfig`; None: a
      share of the memory available, 0: no budget); checked before the DIP fit.
    ensemble: fit this many DIPs, from DIP seeds seed, seed + 1, ..., each with its own
      posterior, and report their equal-weight mixture (`mixture`; for Laplace a mixture of
      Laplace approximations, Eschenhagen et al. 2021). It costs that many times one pass;
      the spread between the fits adds variance where single-fit posteriors are too narrow.
    """

    method: str = "laplace"
    samples: int = 128
    save_samples: int = 0
    prior: str = "matern"
    em_cycles: int = 4
    em_tol: float = 0.05
    solver: str = "cg"
    dropout: float = 0.05
    seed: int = 0
    cg_tol: float = 1e-2
    precond_rank: int = 1024
    precision: str = "auto"
    edge_features: bool = False
    ensemble: int = 1
    std_scale: float = 1.0
    edge_std: float = 0.0
    memory_budget: float | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"Unknown uncertainty method {self.method!r}; expected one of "
                             f"{', '.join(METHODS)}.")
        if self.samples < 2:
            raise InputError("The uncertainty needs at least 2 posterior samples.")
        if not 0 <= self.save_samples <= self.samples:
            raise InputError(f"Cannot save {self.save_samples} samples out of {self.samples}.")
        if self.em_cycles < 0:
            raise InputError(f"The EM needs a number of cycles >= 0, got {self.em_cycles}.")
        if not self.em_tol >= 0:
            raise InputError(f"The EM tolerance must be a number >= 0, got {self.em_tol}.")
        if not 0 < self.dropout < 1:
            raise InputError(f"The dropout rate must lie in (0, 1), got {self.dropout}.")
        if not (0 < self.std_scale < float("inf")):
            raise InputError(f"The std scale must be a positive number, got {self.std_scale}.")
        if not (0 <= self.edge_std < float("inf")):
            raise InputError(f"The edge std must be a number >= 0, got {self.edge_std}.")
        if self.memory_budget is not None and not 0 <= self.memory_budget < float("inf"):
            raise InputError(f"The memory budget must be a number of GB >= 0, got "
                             f"{self.memory_budget}.")
        if self.ensemble < 1:
            raise InputError(f"An ensemble needs at least 1 member, got {self.ensemble}.")


def dip_config_for(method: str, dip_config, config: UncertaintyConfig):
    """The DIP settings for an uncertainty method: MC dropout fits with dropout on."""
    if method == "mcdo":
        return dataclasses.replace(dip_config, dropout=config.dropout)
    return dip_config


def network_function(fit):
    """(fn, params): the DIP image as a function of its trainable parameters (a
    `dip.fit.image_function`, so the Laplace pass compiles once per network shape)."""
    from ctbayes.dip.fit import image_function

    return image_function(fit.graphdef, fit.rest, fit.z), fit.params


def image_posterior(fit, A, y, config: UncertaintyConfig, method_config=None):
    """The posterior over the image of a DIP fit (`DIPResult`) for sinogram y = A x + noise.

    method_config: the VI posteriors' own settings (an `MFVIConfig` or a `ScoreVIConfig`;
    None: their defaults, with config.samples moment samples).
    Returns (posterior, hyperparameters): the hyperparameters the method learned, as a flat
    dict of floats for the result file.
    """
    method = config.method
    if method == "laplace":
        from ctbayes.laplace import LaplaceConfig, fit_laplace

        fn, params = network_function(fit)
        laplace_config = LaplaceConfig(prior=config.prior, em_cycles=config.em_cycles,
                                       em_tol=config.em_tol,
                                       solver=config.solver, samples=min(16, config.samples),
                                       std_samples=config.samples, seed=config.seed,
                                       cg_tol=config.cg_tol, precond_rank=config.precond_rank,
                                       precision=config.precision,
                                       edge_features=config.edge_features,
                                       memory_budget=config.memory_budget)
        posterior = fit_laplace(fn, params, A, y, laplace_config)
        hyper = {f"prior_variance_{k}": v for k, v in posterior.prior_variances.items()}
        hyper["noise_variance"] = posterior.noise_variance
        return posterior, hyper
    if method == "mcdo":
        from ctbayes.mcdo import MCDropoutPosterior

        return (MCDropoutPosterior(fit, config.samples, config.seed),
                {"dropout_rate": fit.config.dropout})
    if method == "mfvi":
        from ctbayes.vi.dip import mfvi_posterior

        posterior = mfvi_posterior(fit, A, y, samples=config.samples, seed=config.seed,
                                   config=method_config)
        return posterior, {"noise_variance": posterior.noise_variance}
    if method == "score-vi":
        from ctbayes.score_vi.dip import ScoreVIConfig, score_vi_posterior

        chosen = method_config or ScoreVIConfig(moment_samples=config.samples)
        posterior = score_vi_posterior(fit, A, y, config=chosen, seed=config.seed)
        return posterior, {}
    raise InputError(f"The uncertainty method {method!r} has no posterior.")


@dataclasses.dataclass
class UncertaintySummary:
    """What a result file stores of a posterior: mean, std, some samples, metrics, timings."""

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray
    metrics: dict
    seconds: float


def summarise(posterior, config: UncertaintyConfig, ground_truth=None,
              exact_std: bool = False) -> UncertaintySummary:
    """Draw config.samples samples once; std is their per-pixel std (or the posterior's
    exact std when `exact_std`), and for Monte Carlo posteriors the mean is their average.
    With a ground truth, adds the uncertainty metrics."""
    start = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(config.seed), 11)
    samples = np.asarray(posterior.sample(key, config.samples), np.float32)
    if getattr(posterior, "mean_is_sample_average", False):  # no second set of draws
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


def uncertainty_metrics(truth, mean, std, samples=None, mask=None, truth_variance=None) -> dict:
    """Test log-likelihoods (per-pixel Gaussian, the best constant std with hindsight, and
    patch-wise from the samples for k in PATCH_SIZES that fit), 50/90/95% coverage and the
    rms of the z-scores (`metrics.z_rms`: how far the std map's overall scale is off).
    mask: score only these pixels (e.g. a scanner's field of view; the patch scores then
    take the patches wholly inside it, and a k with no such patch is left out).
    truth_variance: per-pixel variance of noise in the truth itself (a reference FBP's,
    `reference_variance`): each score is then of the noisy truth, under the posterior's
    variance plus this one (the constant std's too)."""
    extra = None if truth_variance is None else np.broadcast_to(
        np.asarray(truth_variance, np.float64), np.shape(truth))
    if extra is not None:
        std = np.sqrt(np.asarray(std, np.float64) ** 2 + extra)
    if mask is None:
        pixels, pixel_extra = (truth, mean, std), extra
    else:
        mask = np.asarray(mask, bool)
        pixels = tuple(np.asarray(a)[mask] for a in (truth, mean, std))
        pixel_extra = None if extra is None else extra[mask]
    result = {"log_likelihood": metrics.gaussian_log_likelihood(*pixels)}
    constant = metrics.best_constant_std(*pixels[:2], pixel_extra)
    result["log_likelihood_constant_std"] = metrics.gaussian_log_likelihood(
        *pixels[:2], np.sqrt(constant ** 2 + (0 if pixel_extra is None else pixel_extra)))
    if samples is not None:
        for k in PATCH_SIZES:
            if k <= min(np.shape(truth)) and len(samples) > 1 and (
                    mask is None or metrics.patches_inside(mask, k).any()):
                result[f"patch_log_likelihood_{k}"] = metrics.patch_log_likelihood(
                    truth, samples, k, mask=mask, extra_variance=extra)
    for level, value in metrics.coverage(*pixels).items():
        result[f"coverage_{round(level * 100)}"] = value
    result["z_rms"] = metrics.z_rms(*pixels)
    return result


def scoring_target(scan, image):
    """(truth, mask) to score an image of `scan` against: its ground truth, everywhere (mask
    None); or, for real data, its reference FBP brought to the image's scale by least
    squares, inside the object: the reference segmentation with its holes filled (where
    there is one), within the field of view. In the air around the object a reference holds
    only its own artefacts, and outside the field of view nothing was measured."""
    if scan.ground_truth is not None:
        return scan.ground_truth, None
    from scipy import ndimage

    from ctbayes.operators import make_ray_transform

    reference = scan.references["fbp"]
    inside = make_ray_transform(scan.geometry).field_of_view()
    if "segmentation" in scan.references:
        inside &= ndimage.binary_fill_holes(scan.references["segmentation"] > 0.5)
    return reference / metrics.fit_scale(image, reference), inside


def reference_variance(scan, image, smoothing: float | None = None):
    """Per-pixel variance of the reference FBP's own noise, in the units of
    `scoring_target(scan, image)`; None where the scan holds no draw of that noise (the
    reference "fbp_noise", from importing an HTC2022 full-data file).

    A reference computed from the full measurement is itself noisy: at 128x128 on HTC2022
    its noise std is about that of the Laplace posterior's. The variance is the squared draw
    averaged locally (Gaussian, `smoothing` pixels; default the image size / 16), since
    one draw holds too little to give each pixel its own."""
    if "fbp_noise" not in scan.references or scan.ground_truth is not None:
        return None
    from scipy import ndimage

    noise = np.asarray(scan.references["fbp_noise"], np.float64)
    sigma = max(np.shape(noise)) / 16 if smoothing is None else smoothing
    scale = metrics.fit_scale(image, scan.references["fbp"])  # as in scoring_target
    return ndimage.gaussian_filter(noise ** 2, sigma) / scale ** 2


def heldout_view_metrics(A_heldout, y_heldout, samples, noise_variance: float) -> dict:
    """Scores for predicting measured views that the fit never saw: each held-out ray gets
    the Gaussian with the mean and variance of A_heldout x over the posterior samples, plus
    the noise variance. On real data this is a check against a measurement rather than a
    reference image: the uncertainty_metrics keys, per ray instead of per pixel."""
    projected = np.asarray(A_heldout(np.asarray(samples, np.float32)), np.float64)
    mean = projected.mean(0)
    std = np.sqrt(projected.var(0, ddof=1) + float(noise_variance))
    return uncertainty_metrics(np.asarray(y_heldout, np.float64), mean, std)
