"""Scores of a posterior's mean, std and samples against a truth: the uncertainty metrics
that result files carry, and the truth to score against on real data (a reference FBP, with
the variance of its own noise)."""

from __future__ import annotations

import numpy as np

from ctbayes import metrics

PATCH_SIZES = (1, 2, 10)
NOISY = "_and_its_noise"  # metric names: scored allowing for the reference's own noise


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

    A reference computed from the full measurement is itself noisy, with a noise std that
    can be as large as the posterior's own. The variance is the squared draw
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
