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
