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


def std_scale(z_rms_values) -> float:
    """The pooled scale: sqrt of the mean of the calibration scans' squared rms z-scores."""
    values = list(z_rms_values)
    if not values:
        raise InputError("calibrate needs at least one result file.")
    return math.sqrt(sum(v * v for v in values) / len(values))
