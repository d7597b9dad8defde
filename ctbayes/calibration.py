"""A std scale learned on scans with a known truth, for scans without one (sigma scaling).

A posterior's std map can have the right shape and the wrong overall size: on real data the
linear-Gaussian model counts what the grid cannot represent (partial volume at edges) as
sinogram noise, not as image uncertainty, and no measurement of the scan itself sees the
sparse-view error in the null space of A. The scale c that maximises
the Gaussian log-likelihood of a truth under std * c is the rms of the z-scores,
c = sqrt(mean((truth - mean)^2 / std^2)) (`metrics.z_rms`): measured on calibration scans
from the same scanner and protocol, it is passed to `reconstruct --std-scale` for new ones
(Laves et al., "Well-calibrated regression uncertainty in medical imaging with deep
learning", MIDL 2020). Several calibration scans count equally: c^2 is the mean of their c_i^2.
A scale belongs to the posterior it was measured on (method, prior, ensemble size): an
ensemble's mixture needs a smaller one than a single fit.

The edge term adds what the scale cannot: an error proportional to the image's gradient,
which a sub-pixel misplacement of an edge (partial volume, a grid that cannot represent the
object) produces. The calibrated std is sqrt((c std)^2 + (b |grad mean|)^2), b an rms edge
displacement in pixels; (c, b) maximise the Gaussian log-likelihood of the calibration
scans' truths (`fit_scale_and_edge`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ctbayes.errors import InputError
from ctbayes.metrics import edge_strength, z_rms
from ctbayes.scoring import reference_variance, scoring_target

Z_RMS_KEYS = ("z_rms", "z_rms_vs_reference_fbp")


def unscaled_z_rms(result, name: str = "result") -> float:
    """The rms z-score of a result's std map before any std scale it was written with: its
    z_rms (against the ground truth, or the reference FBP inside the object) times the
    scale applied."""
    found = [result.metrics[k] for k in Z_RMS_KEYS if k in result.metrics]
    if not found:
        raise InputError(f"{name} has no z_rms metric: calibrate needs results with a std map "
                         "of scans with a ground truth or a reference FBP.")
    settings = result.uncertainty_settings()
    if float(settings.get("edge_std", 0.0)):
        raise InputError(f"{name} was written with an edge std: calibrate needs its scan "
                         "file (beside it or where it was) to undo that.")
    applied = float(settings.get("std_scale", 1.0))
    value = found[0] * applied
    if not (0 < value < math.inf):
        raise InputError(f"{name} has an unusable z_rms ({found[0]}).")
    return value


def calibration_target(result, scan):
    """(truth, mean, std, mask, truth_variance) of a result against its scan's truth or scaled
    reference FBP (`scoring.scoring_target`; truth_variance: that reference's own noise,
    `scoring.reference_variance`, or None), the std as the posterior gave it (before the
    calibration it was written with); None where the scan has neither or does not match."""
    if result.std is None or (scan.ground_truth is None and "fbp" not in scan.references):
        return None
    if tuple(scan.geometry.image_shape) != tuple(np.shape(result.mean)):
        return None
    truth, mask = scoring_target(scan, result.mean)
    settings = result.uncertainty_settings()
    std = unscaled_std(result.std, result.mean, float(settings.get("std_scale", 1.0)),
                       float(settings.get("edge_std", 0.0)))
    return truth, result.mean, std, mask, reference_variance(scan, result.mean)


def posterior_flags(result) -> str:
    """The `reconstruct` flags of the posterior a result's std map comes from (method, prior,
    edge features, ensemble size): what a std scale measured on it applies to."""
    settings = result.uncertainty_settings()
    posterior = settings.get("posterior") or {}
    flags = f"--uncertainty {settings.get('method', '?')}"
    if "prior" in posterior:  # a prior over the weights (Laplace)
        flags += f" --prior {posterior['prior']}"
    if posterior.get("edge_features", False):
        flags += " --edge-features"
    ensemble = int(settings.get("ensemble", 1))
    return flags + (f" --ensemble {ensemble}" if ensemble > 1 else "")


def common_posterior_flags(results, names) -> str:
    """The posterior flags shared by all results; InputError where they differ."""
    flags = {name: posterior_flags(result) for name, result in zip(names, results)}
    if len(set(flags.values())) > 1:
        listed = "; ".join(f"{name}: {value}" for name, value in flags.items())
        raise InputError(f"the results come from different posteriors ({listed}), and a std "
                         "scale holds for one: calibrate each kind separately.")
    return next(iter(flags.values()))


def std_scale(z_rms_values) -> float:
    """The pooled scale: sqrt of the mean of the calibration scans' squared rms z-scores."""
    values = list(z_rms_values)
    if not values:
        raise InputError("calibrate needs at least one result file.")
    return math.sqrt(sum(v * v for v in values) / len(values))


def calibrated_std(std, mean, std_scale: float = 1.0, edge_std: float = 0.0) -> np.ndarray:
    """sqrt((std_scale std)^2 + (edge_std |grad mean|)^2), in float32."""
    variance = (std_scale * np.asarray(std, np.float64)) ** 2
    if edge_std:
        variance = variance + (edge_std * edge_strength(mean)) ** 2
    return np.sqrt(variance).astype(np.float32)


def calibrated_samples(samples, mean, std_scale: float = 1.0, edge_std: float = 0.0,
                       seed: int = 0) -> np.ndarray:
    """Samples whose deviations from the mean are scaled by std_scale, plus independent
    Gaussian edge noise of std edge_std |grad mean| per pixel: draws of the calibrated
    posterior, whose per-pixel std is `calibrated_std`."""
    samples = np.asarray(samples, np.float32)
    out = mean + np.float32(std_scale) * (samples - mean)
    if edge_std:
        noise = np.random.default_rng(seed).standard_normal(samples.shape)
        out = out + (edge_std * edge_strength(mean) * noise).astype(np.float32)
    return out.astype(np.float32)


def unscaled_std(std, mean, std_scale: float = 1.0, edge_std: float = 0.0) -> np.ndarray:
    """The posterior's own std map from one written with (std_scale, edge_std)."""
    variance = np.asarray(std, np.float64) ** 2 - (edge_std * edge_strength(mean)) ** 2
    return np.sqrt(np.maximum(variance, 0.0)) / std_scale


def fit_scale_and_edge(scans, edge: bool = True) -> tuple[float, float]:
    """(std_scale, edge_std) maximising the mean Gaussian log-likelihood of the truths under
    `calibrated_std`, each scan's pixels weighted equally (a scan: (truth, mean, std, mask),
    mask None for all pixels, and optionally a fifth item: the truth's own noise variance per
    pixel, e.g. a reference FBP's (`scoring.reference_variance`), added to the calibrated
    variance and not scaled). edge False: the scale alone (edge_std 0). With no edge term and
    no truth noise it is the pooled rms z-score."""
    from scipy.optimize import minimize, minimize_scalar

    pixels = []
    for truth, mean, std, mask, *noise in scans:
        keep = np.ones(np.shape(mean), bool) if mask is None else np.asarray(mask, bool)
        keep &= np.asarray(std) > 0
        if not keep.any():
            raise InputError("a calibration scan has no scored pixel with a positive std.")
        error2 = (np.asarray(truth, np.float64) - mean)[keep] ** 2
        extra = 0.0 if not noise or noise[0] is None else \
            np.broadcast_to(np.asarray(noise[0], np.float64), np.shape(mean))[keep]
        pixels.append((error2, np.asarray(std, np.float64)[keep] ** 2,
                       edge_strength(mean)[keep] ** 2, extra))

    def loss(log_params):  # minus the mean log-likelihood, up to a constant
        c2, b2 = np.exp(2 * log_params)
        total = 0.0
        for error2, std2, edge2, extra in pixels:
            variance = c2 * std2 + b2 * edge2 + extra
            total += np.mean(error2 / variance + np.log(variance))
        return total / (2 * len(pixels))

    pooled = std_scale([math.sqrt(np.mean(e / s)) for e, s, _, _ in pixels])  # the scale alone
    no_edge = math.log(1e-9)
    if any(np.any(extra) for *_, extra in pixels):  # no closed form: search the scale
        alone = minimize_scalar(lambda log_c: loss(np.array([log_c, no_edge])),
                                bounds=(math.log(pooled) - 12, math.log(pooled) + 1),
                                method="bounded", options={"xatol": 1e-7})
        pooled = float(math.exp(alone.x))
    if not edge:
        return pooled, 0.0
    best = minimize(loss, np.log([pooled, 0.05]), method="Nelder-Mead",
                    options={"xatol": 1e-6, "fatol": 1e-12, "maxiter": 2000})
    if not loss(np.array([best.x[0], no_edge])) > best.fun:  # no edge term is as good
        return pooled, 0.0
    scale, edge_std = np.exp(best.x)
    return float(scale), float(edge_std)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The outcome of `calibrate`.

    std_scale, edge_std: the calibration (edge_std 0 where there was no per-pixel truth).
    z_rms: each result's rms z-score before any calibration it was written with.
    flags: the `reconstruct` flags of the posterior the calibration belongs to.
    with_edge: whether every result had a per-pixel truth (its scan's ground truth or
      reference FBP), so the edge term was fitted. reference_noise: whether a reference's
      own noise was allowed for.
    """

    std_scale: float
    edge_std: float
    z_rms: tuple[float, ...]
    flags: str
    with_edge: bool
    reference_noise: bool


def calibrate(results, scans, names=None) -> Calibration:
    """The std scale (and, where every result has a per-pixel truth, the edge std) that
    calibrates the posterior of `results` (`Reconstruction`s of one posterior kind).

    scans: each result's `Scan` (None where its scan file is not at hand); a scan with a
    ground truth or a reference FBP gives the truth per pixel. names: for messages.
    """
    names = [f"result {k + 1}" for k in range(len(results))] if names is None else list(names)
    flags = common_posterior_flags(results, names)
    targets = [calibration_target(result, scan) if scan is not None else None
               for result, scan in zip(results, scans)]
    if targets and all(target is not None for target in targets):
        values = tuple(z_rms(truth[inside], mean[inside], std[inside])
                       for truth, mean, std, mask, _ in targets
                       for inside in [(slice(None),) if mask is None else mask])
        scale, edge = fit_scale_and_edge(targets)
        noisy = any(target[4] is not None for target in targets)
        return Calibration(scale, edge, values, flags, True, noisy)
    values = tuple(unscaled_z_rms(result, name) for name, result in zip(names, results))
    return Calibration(std_scale(values), 0.0, values, flags, False, False)
