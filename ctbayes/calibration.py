"""A std scale learned on scans with a known truth, for scans without one (sigma scaling).

A posterior's std map can have the right shape and the wrong overall size: on real data the
linear-Gaussian model counts what the grid cannot represent (partial volume at edges) as
sinogram noise, not as image uncertainty, and no measurement of the scan itself sees the
sparse-view error in the null space of A (README, *Benchmarks*). The scale c that maximises
the Gaussian log-likelihood of a truth under std * c is the rms of the z-scores,
c = sqrt(mean((truth - mean)^2 / std^2)) (`metrics.z_rms`): measured on calibration scans
from the same scanner and protocol, it is passed to `reconstruct --std-scale` for new ones
(Laves et al., "Well-calibrated regression uncertainty in medical imaging with deep
learning", MIDL 2020). Several calibration scans count equally: c^2 is the mean of their c_i^2.
A scale belongs to the posterior it was measured on (method, prior, ensemble size): an
ensemble's mixture needs a smaller one than a single fit (README, *Calibration*).
"""

from __future__ import annotations

import math

from ctbayes.errors import InputError

Z_RMS_KEYS = ("z_rms", "z_rms_vs_reference_fbp")


def unscaled_z_rms(result, name: str = "result") -> float:
    """The rms z-score of a result's std map before any std scale it was written with: its
    z_rms (against the ground truth, or the reference FBP inside the object) times the
    scale applied."""
    found = [result.metrics[k] for k in Z_RMS_KEYS if k in result.metrics]
    if not found:
        raise InputError(f"{name} has no z_rms metric: calibrate needs results with a std map "
                         "of scans with a ground truth or a reference FBP.")
    applied = float(result.settings.get("uncertainty_std_scale", 1.0))
    value = found[0] * applied
    if not (0 < value < math.inf):
        raise InputError(f"{name} has an unusable z_rms ({found[0]}).")
    return value


def posterior_flags(result) -> str:
    """The `reconstruct` flags of the posterior a result's std map comes from (method, prior,
    ensemble size): what a std scale measured on it applies to."""
    settings = result.settings
    method = settings.get("uncertainty_method", "?")
    flags = f"--uncertainty {method}"
    if method == "laplace":
        flags += f" --prior {settings.get('uncertainty_prior', '?')}"
    ensemble = int(settings.get("uncertainty_ensemble", 1))
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
