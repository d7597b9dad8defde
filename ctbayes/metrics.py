"""Image-quality metrics against a reference image."""

from __future__ import annotations

import numpy as np


def data_range(truth) -> float:
    truth = np.asarray(truth, np.float64)
    return float(truth.max() - truth.min()) or 1.0


def psnr(x, truth) -> float:
    """Peak signal-to-noise ratio in dB, with the data range of the truth as the peak."""
    x, truth = np.asarray(x, np.float64), np.asarray(truth, np.float64)
    mse = float(np.mean((x - truth) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range(truth) ** 2 / mse)


def ssim(x, truth) -> float:
    """Structural similarity (Wang et al. 2004) with the data range of the truth."""
    from skimage.metrics import structural_similarity

    x, truth = np.asarray(x, np.float64), np.asarray(truth, np.float64)
    return float(structural_similarity(x, truth, data_range=data_range(truth)))


def fit_scale(x, reference) -> float:
    """The least-squares factor s minimising ||s x - reference||: for references in other units."""
    x, reference = np.asarray(x, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    return float(x @ reference / max(x @ x, 1e-300))


def correlation(x, reference) -> float:
    """Pearson correlation of two images."""
    return float(np.corrcoef(np.ravel(x), np.ravel(reference))[0, 1])


def segmentation_accuracy(x, segmentation) -> float:
    """Fraction of pixels where Otsu's threshold of x agrees with a binary segmentation."""
    from skimage.filters import threshold_otsu

    x = np.asarray(x, np.float64)
    return float(np.mean((x > threshold_otsu(x)) == (np.asarray(segmentation) > 0.5)))


# -- uncertainty ------------------------------------------------------------------------------

def gaussian_log_likelihood(truth, mean, std) -> float:
    """Mean per-pixel log N(truth | mean, std^2): the test log-likelihood of a std map."""
    truth, mean = np.asarray(truth, np.float64), np.asarray(mean, np.float64)
    var = np.maximum(np.asarray(std, np.float64), 1e-12) ** 2
    return float(np.mean(-0.5 * (np.log(2 * np.pi * var) + (truth - mean) ** 2 / var)))


def z_rms(truth, mean, std) -> float:
    """The rms of the z-scores (truth - mean) / std: 1 where the std map's overall scale
    matches the errors, above 1 where it is too small by that factor (below, too large)."""
    err = np.asarray(truth, np.float64) - np.asarray(mean, np.float64)
    return float(np.sqrt(np.mean((err / np.maximum(np.asarray(std, np.float64), 1e-12)) ** 2)))


def best_constant_std(truth, mean, extra_variance=None) -> float:
    """The single std c that maximises the Gaussian log-likelihood with hindsight: the RMSE.
    With `extra_variance` v (per pixel, e.g. a noisy reference's own noise) the pixels are
    scored under std sqrt(c^2 + v), and c is found by a bounded 1-D search."""
    err2 = (np.asarray(truth, np.float64) - np.asarray(mean, np.float64)) ** 2
    if extra_variance is None:
        return float(np.sqrt(np.mean(err2)))
    from scipy.optimize import minimize_scalar

    v = np.broadcast_to(np.asarray(extra_variance, np.float64), err2.shape)

    def minus_log_likelihood(c2):
        total = np.maximum(c2 + v, 1e-24)
        return float(np.sum(np.log(total) + err2 / total))

    # the optimum c^2 + v is a weighted mean of err^2, so c^2 lies below its largest value
    best = minimize_scalar(minus_log_likelihood, bounds=(0.0, float(err2.max()) + 1e-24),
                           method="bounded", options={"xatol": 1e-6 * float(err2.mean()) + 1e-30})
    return float(np.sqrt(best.x))


def _blocks(a, patch: int):
    """(..., h, w) -> (..., rows * cols, patch * patch): the whole non-overlapping patches."""
    rows, cols = a.shape[-2] // patch, a.shape[-1] // patch
    a = a[..., : rows * patch, : cols * patch]
    a = a.reshape(a.shape[:-2] + (rows, patch, cols, patch))
    return np.moveaxis(a, -3, -2).reshape(a.shape[:-4] + (rows * cols, patch * patch))


def patches_inside(mask, patch: int) -> np.ndarray:
    """Which whole patch x patch blocks (`patch_log_likelihood`'s) lie wholly inside mask."""
    return _blocks(np.asarray(mask, bool), patch).all(-1)


def patch_log_likelihood(truth, samples, patch: int, jitter: float = 1e-6, mask=None,
                         extra_variance=None) -> float:
    """Per-pixel log-likelihood of the truth under Gaussians fitted to posterior samples on
    non-overlapping patch x patch blocks (sample mean and covariance, plus jitter * I), as
    bayes_dip reports it. Pixels outside whole patches are left out, and with a boolean
    `mask` so are the patches not wholly inside it.

    jitter is relative to the truth's data range squared (absolute for an image in [0, 1], as
    bayes_dip's are), so the metric does not depend on the image's units: an absolute 1e-6
    would swamp the covariance of an HTC2022 reconstruction, whose std is about 2e-4. The
    data range is that of the scored pixels. extra_variance (per pixel, e.g. a noisy
    reference's own noise) is added to each patch covariance's diagonal."""
    samples = np.asarray(samples, np.float64)
    truth = np.asarray(truth, np.float64)
    n, h, w = samples.shape
    rows, cols = h // patch, w // patch
    if rows == 0 or cols == 0:
        raise ValueError(f"a {patch}x{patch} patch does not fit a {h}x{w} image")
    d = patch * patch
    x = _blocks(samples, patch)  # (n, P, d)
    inside = np.ones(rows * cols, bool) if mask is None else patches_inside(mask, patch)
    if not inside.any():
        raise ValueError(f"no whole {patch}x{patch} patch lies inside the mask")
    truth_blocks = _blocks(truth, patch)  # (P, d)
    jitter = jitter * data_range(truth_blocks[inside]) ** 2  # of the scored pixels
    centred = x - x.mean(0)
    cov = np.einsum("npi,npj->pij", centred, centred) / max(n - 1, 1) + jitter * np.eye(d)
    if extra_variance is not None:
        extra = np.broadcast_to(np.asarray(extra_variance, np.float64), truth.shape)
        cov = cov + _blocks(extra, patch)[:, :, None] * np.eye(d)
    diff = truth_blocks - x.mean(0)
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, diff[..., None])[..., 0]
    logdet = 2 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    logp = -0.5 * (np.sum(z**2, -1) + logdet + d * np.log(2 * np.pi))
    return float(logp[inside].sum() / (inside.sum() * d))


def coverage(truth, mean, std, levels=(0.5, 0.9, 0.95)) -> dict:
    """Fraction of pixels whose truth lies inside the central Gaussian credible interval."""
    from scipy.stats import norm

    err = np.abs(np.asarray(truth, np.float64) - np.asarray(mean, np.float64))
    std = np.maximum(np.asarray(std, np.float64), 1e-12)
    return {float(q): float(np.mean(err <= norm.ppf(0.5 + q / 2) * std)) for q in levels}


def calibration_curve(truth, mean, std, points: int = 19):
    """Nominal against empirical coverage at `points` levels between 0.05 and 0.95."""
    levels = np.linspace(0.05, 0.95, points)
    observed = coverage(truth, mean, std, levels)
    return levels, np.array([observed[float(q)] for q in levels])


def edge_strength(image, xp=np):
    """|grad image| per pixel (Sobel with reflected borders, / 8, in image units per pixel):
    the error of an edge misplaced by a pixel. xp: NumPy (in float64) or jax.numpy, for the
    traced edge features of the linearised model (`ctbayes.laplace.edges`)."""
    image = np.asarray(image, np.float64) if xp is np else image
    padded = xp.pad(image, 1, mode="symmetric")
    smooth0 = padded[:-2] + 2 * padded[1:-1] + padded[2:]  # [1, 2, 1] along axis 0
    smooth1 = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]  # along axis 1
    d0 = smooth1[2:] - smooth1[:-2]
    d1 = smooth0[:, 2:] - smooth0[:, :-2]
    return xp.sqrt(d0 * d0 + d1 * d1) / 8
