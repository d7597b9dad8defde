"""Split-conformal intervals from a std map: a guarantee rather than a model.

Given calibration pixels with a known truth, the nonconformity score of a pixel is
|z| = |truth - mean| / std. With n calibration scores, q = the k-th smallest of them,
k = ceil((n + 1)(1 - alpha)), makes the interval mean +- q std cover a new pixel's truth with
probability at least 1 - alpha (and, without ties, at most 1 - alpha + 1 / (n + 1)), provided
the new pixel and the calibration pixels are exchangeable (Vovk et al. 2005; Angelopoulos &
Bates, "A gentle introduction to conformal prediction", 2021, section 1). For k > n no
finite q has that guarantee.

The caveat that matters for images: pixels of one scan are not independent draws. Errors are
correlated between neighbouring pixels and shared by all pixels of a scan (a scan whose std
is off by a factor is off everywhere), so with calibration pixels from few scans the
effective n is closer to the number of scans than to the number of pixels, and the coverage
of one new scan can fall below 1 - alpha; the guarantee is over a random pixel of a random
scan from the same protocol, averaged over scans, not for each scan.

Applied as a std scale: q / z_{1-alpha/2} (z the standard normal quantile) makes the
Gaussian (1 - alpha) interval of the scaled std map exactly mean +- q std, so every tool that
reads a std map shows the conformal interval at that level (other levels are Gaussian
extrapolations without the guarantee).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from ctbayes.errors import InputError

DEFAULT_ALPHA = 0.1  # the 90% interval


def conformal_rank(n: int, alpha: float) -> int:
    """k = ceil((n + 1)(1 - alpha)): the rank of the calibration score that is the quantile."""
    if not 0 < alpha < 1:
        raise InputError(f"The conformal miscoverage alpha must lie in (0, 1), got {alpha}.")
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


def conformal_quantile(scores, alpha: float = DEFAULT_ALPHA) -> float:
    """The k-th smallest of the scores, k = `conformal_rank`; InputError where k > n (too
    few calibration pixels for that alpha)."""
    scores = np.sort(np.ravel(np.asarray(scores, np.float64)))
    n = scores.size
    k = conformal_rank(n, alpha)
    if k > n:
        raise InputError(f"{n} calibration pixels are too few for a {1 - alpha:.3g} conformal "
                         f"interval: it needs at least {math.ceil(1 / alpha - 1)}.")
    return float(scores[k - 1])


def coverage(n: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The split-conformal interval's coverage with n exchangeable calibration scores and no
    ties: exactly k / (n + 1), k = `conformal_rank` (the new score is equally likely to take
    each of the n + 1 ranks), which lies in [1 - alpha, 1 - alpha + 1 / (n + 1)); with ties
    it is at least that."""
    return conformal_rank(n, alpha) / (n + 1)


def abs_z_scores(truth, mean, std, mask=None) -> np.ndarray:
    """|truth - mean| / std over the mask's pixels (all where None), std > 0 only."""
    keep = np.ones(np.shape(mean), bool) if mask is None else np.asarray(mask, bool)
    std = np.asarray(std, np.float64)
    keep = keep & (std > 0)
    return np.abs(np.asarray(truth, np.float64)[keep] - np.asarray(mean, np.float64)[keep]) \
        / std[keep]


def conformal_std_scale(quantile: float, alpha: float = DEFAULT_ALPHA) -> float:
    """The std scale whose Gaussian (1 - alpha) interval is mean +- quantile std."""
    return float(quantile / norm.ppf(1 - alpha / 2))
