"""One call from a scan to a `Reconstruction`: the methods behind `ctbayes reconstruct`."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ctbayes import metrics
from ctbayes.compile_clock import compile_seconds
from ctbayes.dip.fit import DIPConfig, fit_dip, parameter_count
from ctbayes.errors import InputError
from ctbayes.operators import make_ray_transform
from ctbayes.progress import phase as report_phase
from ctbayes.results import Reconstruction
from ctbayes.scan import Scan
from ctbayes.uncertainty import (NOISY, UncertaintyConfig, dip_config_for, image_posterior,
                                 mixture, reference_variance, scoring_target, summarise)

METHODS = ("dip", "fbp", "tv")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """Settings shared by all methods; each method reads the fields it needs.

    tv_weight: None chooses it by the discrepancy principle from the scan's noise level (or
    one estimated from the sinogram).
    dip: the deep-image-prior settings (`ctbayes.dip.fit.DIPConfig`).
    uncertainty: the uncertainty pass after a DIP fit (`ctbayes.uncertainty`); its method
      "none" turns it off. FBP and TV have none.
    """

    method: str = "dip"
    backend: str = "auto"
    projector: str | None = None
    fbp_filter: str = "Ram-Lak"
    fbp_frequency_scaling: float = 1.0
    tv_weight: float | None = None
    tv_iterations: int = 1000
    dip: DIPConfig = DIPConfig()
    uncertainty: UncertaintyConfig = UncertaintyConfig()

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"Unknown method {self.method!r}; expected one of {', '.join(METHODS)}.")
        if self.tv_weight is not None and not self.tv_weight >= 0:
            raise InputError(f"The TV weight must be a number >= 0, got {self.tv_weight}.")
        if self.tv_iterations < 1:
            raise InputError(f"TV needs at least 1 iteration, got {self.tv_iterations}.")
        if self.uncertainty.ensemble > 1 and (self.method != "dip"
                                              or self.uncertainty.method == "none"):
            raise InputError("An ensemble mixes the posteriors of several DIP fits: it needs "
                             "the dip method and an uncertainty method other than none.")


def reconstruct(scan: Scan, config: ReconstructConfig = ReconstructConfig(), *,
                checkpoint=None, resume: bool = False, progress: bool = False) -> Reconstruction:
    """Reconstruct a scan with the configured method; metrics are added where truth is known.

    checkpoint, resume, progress: for the DIP fit (see `ctbayes.dip.fit.fit_dip`).
    """
    timings = {}
    start = time.perf_counter()
    # FBP needs A once (for the residual): not worth assembling a sparse matrix for
    backend = "astra" if config.method == "fbp" and config.backend == "auto" else config.backend
    A = make_ray_transform(scan.geometry, backend, config.projector)
    timings["operator"] = time.perf_counter() - start
    settings = {"backend": A.backend, "projector": A.projector}
    start = time.perf_counter()
    if config.method == "fbp":
        from ctbayes.operators.fbp import fbp

        image = fbp(scan.sinogram, scan.geometry, config.fbp_filter, config.fbp_frequency_scaling)
        settings |= {"filter": config.fbp_filter, "frequency_scaling": config.fbp_frequency_scaling}
    elif config.method == "tv":
        image, weight, noise = _tv(A, scan, config)
        settings |= {"tv_weight": weight, "tv_iterations": config.tv_iterations, "noise_std": noise}
    else:
        kind = config.uncertainty.method
        members = member_configs(dip_config_for(kind, config.dip, config.uncertainty),
                                 config.uncertainty.ensemble)
        if kind == "laplace" and config.uncertainty.solver == "exact":  # before the fit
            from ctbayes.laplace.exact import check_size

            pixels = int(np.prod(A.domain_shape))  # edge features: one more per pixel
            check_size(pixels, int(np.size(scan.sinogram)), parameter_count(members[0])
                       + (pixels if config.uncertainty.edge_features else 0))
        if kind == "laplace" and config.uncertainty.solver != "exact":  # before the fit
            from ctbayes.preflight import check_laplace_memory

            check_laplace_memory(A, scan.sinogram, members[0], config.uncertainty)
        with report_phase("DIP fit"):
            fits = [fit_dip(A, scan.sinogram, member, ground_truth=scan.ground_truth,
                            checkpoint=path, resume=resume, progress=progress)
                    for member, path in zip(members, member_checkpoints(checkpoint, len(members)))]
        image = fits[0].image
        settings |= {f"dip_{k}": v for k, v in dataclasses.asdict(members[0]).items()}
        settings["dip_kept"] = ",".join(fit.kept for fit in fits)
        for key in fits[0].timings.keys() - {"iterations_per_second"}:
            timings[f"dip_{key}"] = sum(fit.timings[key] for fit in fits)
        settings["dip_iterations_per_second"] = fits[0].timings["iterations_per_second"]
    timings["reconstruction"] = time.perf_counter() - start
    if config.method != "dip" or config.uncertainty.method == "none":
        image = np.asarray(image, np.float32)
        return Reconstruction(mean=image, method=config.method, settings=settings,
                              timings=timings, metrics=score(image, scan, A))
    return _with_uncertainty(fits, A, scan, config.uncertainty, settings, timings, progress)


def member_configs(dip_config: DIPConfig, ensemble: int) -> list[DIPConfig]:
    """The DIP settings of an ensemble's members: seeds seed, seed + 1, ... (all checked
    before the first fit)."""
    return [dataclasses.replace(dip_config, seed=dip_config.seed + k) for k in range(ensemble)]


def member_checkpoints(checkpoint, ensemble: int) -> list:
    """Checkpoint files of an ensemble's DIP fits: the given one for the first member,
    OUT.ckpt.1.npz, OUT.ckpt.2.npz, ... for the others (None: no checkpoints)."""
    if checkpoint is None:
        return [None] * ensemble
    checkpoint = Path(checkpoint)
    return [checkpoint] + [checkpoint.with_suffix(f".{k}{checkpoint.suffix}")
                           for k in range(1, ensemble)]


def _with_uncertainty(fits, A, scan, config: UncertaintyConfig, settings, timings,
                      progress: bool = False):
    """The DIP reconstruction with the posterior's mean, std, samples and metrics; for an
    ensemble (several fits) the mixture of the fits' posteriors (`uncertainty.mixture`)."""
    if progress:  # the posterior has no progress bar; say what the wait is for
        print(f"uncertainty: {config.method}, {config.samples} samples"
              + (f", up to {config.em_cycles} EM cycles" if config.method == "laplace" else "")
              + (f", for each of {len(fits)} fits" if len(fits) > 1 else "")
              + " (compiling first: minutes on a CPU)", file=sys.stderr, flush=True)
    exact = config.method == "laplace" and config.solver == "exact"
    summaries, hyper, precision, cycles = [], {}, [], []
    timings["uncertainty_fit"] = 0.0
    compiled_before = compile_seconds()
    for k, fit in enumerate(fits):
        start = time.perf_counter()
        member = dataclasses.replace(config, seed=config.seed + k)
        posterior, learned = image_posterior(fit, A, scan.sinogram, member)
        timings["uncertainty_fit"] += time.perf_counter() - start
        for phase, seconds in getattr(posterior, "timings", {}).items():  # Laplace's phases
            timings[f"uncertainty_laplace_{phase}"] = \
                timings.get(f"uncertainty_laplace_{phase}", 0.0) + seconds
        summaries.append(summarise(posterior, dataclasses.replace(
            member, save_samples=member.samples), exact_std=exact))
        hyper |= {(f"member{k}_{key}" if len(fits) > 1 else key): value
                  for key, value in learned.items()}
        precision.append(getattr(posterior, "precision", None))
        cycles.append(len(posterior.history) if config.method == "laplace" else None)
    truth, mask, noise, suffix = _uncertainty_target(scan, summaries)
    summary = mixture(summaries, config.save_samples, truth, mask, config.std_scale,
                      config.edge_std, config.seed, truth_variance=noise)
    timings["uncertainty_sampling"] = summary.seconds
    timings["uncertainty"] = timings["uncertainty_fit"] + summary.seconds
    timings["uncertainty_compile"] = compile_seconds() - compiled_before  # part of the above
    settings |= {f"uncertainty_{k}": v for k, v in dataclasses.asdict(config).items()}
    if precision[0] is not None:  # what "auto" chose
        settings["uncertainty_precision_used"] = ",".join(precision)
    if cycles[0] is not None:  # EM cycles run (fewer than allowed once converged)
        settings["uncertainty_em_cycles_run"] = cycles[0] if len(fits) == 1 else \
            ",".join(map(str, cycles))
    # the posterior's mean: the network's image for Laplace, the predictive mean of MC
    # dropout and of the VI posteriors (averaged over an ensemble); the metrics and figures
    # are all about this image
    image = summary.mean
    scores = score(image, scan, A) | {_metric_name(key, suffix): v
                                      for key, v in summary.metrics.items()}
    return Reconstruction(mean=image, method="dip", settings=settings, timings=timings,
                          std=summary.std, samples=summary.samples if len(summary.samples) else None,
                          metrics=scores, hyperparameters=hyper)


def _uncertainty_target(scan: Scan, summaries) -> tuple:
    """(truth, mask, truth_variance, metric suffix) to score the posterior against: the
    ground truth; for real data with a reference FBP, that reference scaled to the
    posterior's mean, inside the object (`uncertainty.scoring_target`), with the variance of
    its own noise where the scan holds a draw of it (`uncertainty.reference_variance`), its
    metrics named *_vs_reference_fbp; else (None, None, None, "")."""
    if scan.ground_truth is not None:
        return scan.ground_truth, None, None, ""
    if "fbp" not in scan.references:
        return None, None, None, ""
    centre = np.mean([s.mean for s in summaries], 0)  # the mixture's mean
    return (*scoring_target(scan, centre), reference_variance(scan, centre),
            "_vs_reference_fbp")


def _metric_name(key: str, suffix: str) -> str:
    """log_likelihood + _vs_reference_fbp; log_likelihood_and_its_noise (`uncertainty.NOISY`)
    -> log_likelihood_vs_reference_fbp_and_its_noise."""
    noisy = key.endswith(NOISY)
    return key.removesuffix(NOISY) + suffix + (NOISY if noisy else "")


def _tv(A, scan, config):
    from ctbayes import tv

    noise = scan.noise_std if scan.noise_std else tv.estimate_noise_std(scan.sinogram)
    if config.tv_weight is None:
        weight, image = tv.discrepancy_weight(A, scan.sinogram, noise, config.tv_iterations)
    else:
        weight = config.tv_weight
        image = tv.tv_reconstruct(A, scan.sinogram, weight, config.tv_iterations)
    return image, float(weight), float(noise)


def score(image, scan: Scan, A=None) -> dict:
    """PSNR/SSIM against the truth; scaled PSNR and correlation against a reference FBP;
    threshold-segmentation accuracy against a reference segmentation; data residual."""
    result = {}
    if scan.ground_truth is not None:
        result["psnr"] = metrics.psnr(image, scan.ground_truth)
        result["ssim"] = metrics.ssim(image, scan.ground_truth)
    reference = scan.references.get("fbp")
    if reference is not None:
        scaled = metrics.fit_scale(image, reference) * image
        result["psnr_vs_reference_fbp"] = metrics.psnr(scaled, reference)
        result["correlation_vs_reference_fbp"] = metrics.correlation(image, reference)
    segmentation = scan.references.get("segmentation")
    if segmentation is not None:
        result["segmentation_accuracy"] = metrics.segmentation_accuracy(image, segmentation)
    if A is not None:
        residual = np.asarray(A(image)) - scan.sinogram
        result["relative_residual"] = float(np.linalg.norm(residual) / np.linalg.norm(scan.sinogram))
    return result
