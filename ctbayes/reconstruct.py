"""One call from a scan to a `Reconstruction`: the methods behind `ctbayes reconstruct`."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ctbayes import metrics
from ctbayes.compile_clock import compile_seconds
from ctbayes.dip.fit import NETWORKS, DIPConfig, fit_dip, network_preset, parameter_count
from ctbayes.errors import InputError
from ctbayes.laplace import LaplaceConfig
from ctbayes.laplace.priors import PRIOR_KINDS
from ctbayes.operators import make_ray_transform
from ctbayes.options import Option, collect
from ctbayes.posteriors import registry
from ctbayes.posteriors.mcdo import MCDOConfig
from ctbayes.progress import phase as report_phase
from ctbayes.results import Reconstruction
from ctbayes.scan import Scan
from ctbayes.scoring import NOISY, reference_variance, scoring_target
from ctbayes.uncertainty import (METHODS as UNCERTAINTY_METHODS, NONE, UncertaintyConfig,
                                 dip_config_for, image_posterior, mixture, summarise)

METHODS = ("dip", "fbp", "tv")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """Settings shared by all methods; each method reads the fields it needs.

    tv_weight: None chooses it by the discrepancy principle from the scan's noise level (or
    one estimated from the sinogram).
    dip: the deep-image-prior settings (`ctbayes.dip.fit.DIPConfig`).
    network: a named U-Net size (`ctbayes.dip.fit.NETWORKS`) that replaces dip's scales and
      channels ("default": dip's own).
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
    network: str = "default"
    uncertainty: UncertaintyConfig = UncertaintyConfig()

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"Unknown method {self.method!r}; expected one of {', '.join(METHODS)}.")
        if self.tv_weight is not None and not self.tv_weight >= 0:
            raise InputError(f"The TV weight must be a number >= 0, got {self.tv_weight}.")
        if self.network not in NETWORKS:
            raise InputError(f"Unknown network {self.network!r}; expected one of "
                             f"{', '.join(NETWORKS)}.")
        if self.tv_iterations < 1:
            raise InputError(f"TV needs at least 1 iteration, got {self.tv_iterations}.")
        if self.uncertainty.ensemble > 1 and (self.method != "dip"
                                              or self.uncertainty.method == NONE):
            raise InputError("An ensemble mixes the posteriors of several DIP fits: it needs "
                             "the dip method and an uncertainty method other than none.")


def _int_tuple(text: str):
    """'16,32,64' -> (16, 32, 64); '8' -> 8."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise InputError(f"expected integers separated by commas, got {text!r}") from None
    return values[0] if len(values) == 1 else values


# The options of `ctbayes reconstruct`: each flag sets one config field and takes its default
# from there. --seed seeds the DIP and the posterior; --tv is the TV weight of the tv method
# and the DIP's gamma (see `config_from_options`).
OPTIONS = (
    Option("--method", ReconstructConfig, "method", "deep image prior, filtered "
           "back-projection or TV", choices=METHODS),
    Option("--backend", ReconstructConfig, "backend", "ray transform: ASTRA callback, "
           "sparse matrix in XLA, or automatic", choices=("auto", "astra", "sparse")),
    Option("--projector", ReconstructConfig, "projector", "ASTRA CPU projector (linear, "
           "strip, line, line_fanflat, strip_fanflat)"),
    Option("--filter", ReconstructConfig, "fbp_filter", "FBP filter (Ram-Lak, Shepp-Logan, "
           "Cosine, Hamming, Hann)"),
    Option("--frequency-scaling", ReconstructConfig, "fbp_frequency_scaling",
           "FBP filter cut-off in (0, 1]"),
    Option("--tv", ReconstructConfig, "tv_weight", "TV weight: for --method tv the weight w "
           "(none: discrepancy principle); for dip the scale-free gamma "
           f"(none: {DIPConfig.gamma})", type=float),
    Option("--tv-iterations", ReconstructConfig, "tv_iterations", "PDHG iterations of "
           "--method tv"),
    Option("--iterations", DIPConfig, "iterations", "DIP Adam steps"),
    Option("--lr", DIPConfig, "lr", "DIP learning rate"),
    Option("--channels", DIPConfig, "channels", "U-Net channels: one number or one per "
           "scale, comma-separated", type=_int_tuple),
    Option("--skip-channels", DIPConfig, "skip_channels", "U-Net skip channels: one number "
           "or one per scale (0: no skip)", type=_int_tuple),
    Option("--scales", DIPConfig, "scales", "U-Net scales"),
    Option("--seed", DIPConfig, "seed", "seed of the DIP (network, input z, dropout) and of "
           "the posterior (EM, samples)"),
    Option("--checkpoint-every", DIPConfig, "checkpoint_every", "DIP iterations between "
           "checkpoints (OUT.ckpt.npz beside the output)"),
    Option("--uncertainty", UncertaintyConfig, "method", "per-pixel uncertainty of the DIP: "
           "linearised Laplace, MC dropout, mean-field VI, score-based VI, or none",
           choices=UNCERTAINTY_METHODS),
    Option("--samples", UncertaintyConfig, "samples", "posterior samples behind the std map "
           "and the metrics"),
    Option("--save-samples", UncertaintyConfig, "save_samples", "how many posterior samples "
           "to store in the result file"),
    Option("--prior", LaplaceConfig, "prior", "Laplace prior over the network weights",
           choices=PRIOR_KINDS),
    Option("--edge-features", LaplaceConfig, "edge_features", "Laplace: add a per-pixel edge "
           "displacement whose variance the EM learns from the scan (std where the image "
           "has edges)"),
    Option("--discrepancy", LaplaceConfig, "discrepancy", "Laplace: add a white image-space "
           "model-discrepancy term whose variance the EM learns from the scan (error the "
           "network's tangent space cannot make, e.g. a continuous object on a pixel grid)"),
    Option("--em-cycles", LaplaceConfig, "em_cycles", "Laplace: EM cycles (at most) for the "
           "prior and noise variances"),
    Option("--em-tol", LaplaceConfig, "em_tol", "Laplace: stop the EM once no variance moves "
           "by more than this relative amount in a cycle (0: run all cycles)"),
    Option("--solver", LaplaceConfig, "solver", "Laplace sampler: preconditioned CG, SGD, or "
           "exact (small images)", choices=("cg", "sgd", "exact")),
    Option("--dropout", MCDOConfig, "dropout", "dropout rate of the DIP-MCDO fit "
           "(--uncertainty mcdo)"),
    Option("--ensemble", UncertaintyConfig, "ensemble", "fit this many DIPs (seeds SEED, "
           "SEED+1, ...) and mix their posteriors; costs that many times one run"),
    Option("--std-scale", UncertaintyConfig, "std_scale", "multiply the std map and the "
           "samples' deviations by this calibration factor (from `ctbayes calibrate`)"),
    Option("--edge-std", UncertaintyConfig, "edge_std", "add an edge error of this many "
           "pixels times |grad image| to the std map and samples (from `ctbayes calibrate`; "
           "0: none)"),
    Option("--network", ReconstructConfig, "network", "named U-Net size; large: six scales up "
           "to 128 channels (about 2.2M parameters, as in the published Walnut experiments), "
           "replacing --scales, --channels and --skip-channels", choices=tuple(NETWORKS)),
    Option("--memory-budget", LaplaceConfig, "memory_budget", "Laplace: GB the uncertainty "
           "pass may use (none: a share of the available memory; 0: no budget)", type=float),
    Option("--calibration", UncertaintyConfig, "calibration", "apply a protocol calibration "
           "file (from `ctbayes calibrate -o`); refused where the scan or settings do not match "
           "its protocol", type=str),
)


def config_from_options(values) -> ReconstructConfig:
    """The `ReconstructConfig` of flat option values keyed by `OPTIONS` dest names (e.g. the
    parsed flags of `ctbayes reconstruct`; absent keys take the defaults).

    The seed seeds both the DIP and the posterior; tv is the TV method's weight and, for the
    dip method, the DIP's gamma; the posterior options go to the chosen method's config (a
    method takes only its own); an uncertainty pass belongs to the dip method only.
    """
    kwargs = collect({k: v for k, v in dict(values).items() if v is not None}, OPTIONS)
    top = kwargs.get(ReconstructConfig, {})
    method = top.get("method", "dip")
    dip = dict(kwargs.get(DIPConfig, {}))
    if method == "dip" and top.get("tv_weight") is not None:
        dip["gamma"] = top["tv_weight"]
    unc = dict(kwargs.get(UncertaintyConfig, {}))
    if method != "dip":
        unc = {"method": NONE, "ensemble": unc.get("ensemble", 1),
               "calibration": unc.get("calibration")}
    elif unc.get("method", UncertaintyConfig.method) != NONE:
        entry = registry.entry(unc.get("method", UncertaintyConfig.method))
        unc["posterior"] = entry.config(**kwargs.get(entry.config, {}))
        unc["seed"] = dip.get("seed", DIPConfig.seed)
    return ReconstructConfig(**top, dip=DIPConfig(**dip), uncertainty=UncertaintyConfig(**unc))


def reconstruct(scan: Scan, config: ReconstructConfig = ReconstructConfig(), *,
                checkpoint=None, resume: bool = False, progress: bool = False) -> Reconstruction:
    """Reconstruct a scan with the configured method; metrics are added where truth is known.

    checkpoint, resume, progress: for the DIP fit (see `ctbayes.dip.fit.fit_dip`).
    """
    if config.uncertainty.calibration is not None:  # refused before any work where it does not fit
        from ctbayes.protocol import apply_calibration

        config = apply_calibration(config, scan.geometry)
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
        unc = config.uncertainty
        dip = network_preset(config.dip, config.network)
        members = member_configs(dip_config_for(unc, dip), unc.ensemble)
        if unc.method != NONE:  # what the posterior cannot handle is refused before the fit
            registry.entry(unc.method).check(unc.posterior, A, scan.sinogram, members[0])
        with report_phase("DIP fit"):
            fits = [fit_dip(A, scan.sinogram, member, ground_truth=scan.ground_truth,
                            checkpoint=path, resume=resume, progress=progress)
                    for member, path in zip(members, member_checkpoints(checkpoint, len(members)))]
        image = fits[0].image
        settings["dip"] = dataclasses.asdict(members[0])  # nested JSON in the result file
        settings["dip_kept"] = ",".join(fit.kept for fit in fits)
        for key in fits[0].timings.keys() - {"iterations_per_second"}:
            timings[f"dip_{key}"] = sum(fit.timings[key] for fit in fits)
        settings["dip_iterations_per_second"] = fits[0].timings["iterations_per_second"]
    timings["reconstruction"] = time.perf_counter() - start
    if config.method != "dip" or config.uncertainty.method == NONE:
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
              + (f", for each of {len(fits)} fits" if len(fits) > 1 else "")
              + " (compiling first: minutes on a CPU)", file=sys.stderr, flush=True)
    summaries, hyper, precision, cycles = [], {}, [], []
    timings["uncertainty_fit"] = 0.0
    compiled_before = compile_seconds()
    for k, fit in enumerate(fits):
        start = time.perf_counter()
        member = dataclasses.replace(config, seed=config.seed + k)
        posterior, learned = image_posterior(fit, A, scan.sinogram, member)
        timings["uncertainty_fit"] += time.perf_counter() - start
        diagnostics = posterior.diagnostics()
        for phase, seconds in diagnostics.timings.items():
            name = f"uncertainty_{config.method}_{phase}"
            timings[name] = timings.get(name, 0.0) + seconds
        summaries.append(summarise(posterior, dataclasses.replace(
            member, save_samples=member.samples)))
        hyper |= {(f"member{k}_{key}" if len(fits) > 1 else key): value
                  for key, value in learned.items()}
        precision.append(diagnostics.precision)
        cycles.append(diagnostics.em_cycles)
    truth, mask, noise, suffix = _uncertainty_target(scan, summaries)
    summary = mixture(summaries, config.save_samples, truth, mask, config.std_scale,
                      config.edge_std, config.seed, truth_variance=noise)
    timings["uncertainty_sampling"] = summary.seconds
    timings["uncertainty"] = timings["uncertainty_fit"] + summary.seconds
    timings["uncertainty_compile"] = compile_seconds() - compiled_before  # part of the above
    settings["uncertainty"] = config.as_dict()  # nested: the method's config inside
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
    posterior's mean, inside the object (`scoring.scoring_target`), with the variance of
    its own noise where the scan holds a draw of it (`scoring.reference_variance`), its
    metrics named *_vs_reference_fbp; else (None, None, None, "")."""
    if scan.ground_truth is not None:
        return scan.ground_truth, None, None, ""
    if "fbp" not in scan.references:
        return None, None, None, ""
    centre = np.mean([s.mean for s in summaries], 0)  # the mixture's mean
    return (*scoring_target(scan, centre), reference_variance(scan, centre),
            "_vs_reference_fbp")


def _metric_name(key: str, suffix: str) -> str:
    """log_likelihood + _vs_reference_fbp; log_likelihood_and_its_noise (`scoring.NOISY`)
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
