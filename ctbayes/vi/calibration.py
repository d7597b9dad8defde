"""Classification metrics of predictive probabilities: accuracy, ROC AUC, NLL, expected
calibration error, and the reliability diagram.

`probs` is either (N,) probabilities of class 1 (binary) or (N, K) class probabilities;
`y` holds integer labels. Pass the posterior predictive mean (the average of the samples'
probabilities), not a single sample.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ctbayes.errors import InputError


def _as_classes(probs, y) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) class probabilities and (N,) integer labels."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).astype(int).ravel()
    if probs.ndim == 1:
        probs = np.stack([1 - probs, probs], axis=1)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0]:
        raise InputError(f"Probabilities of shape {probs.shape} do not match {y.shape[0]} labels.")
    if y.min() < 0 or y.max() >= probs.shape[1]:
        raise InputError(f"Labels must lie in 0..{probs.shape[1] - 1}.")
    return probs, y


def accuracy(probs, y) -> float:
    """The fraction of rows whose most probable class is the label."""
    probs, y = _as_classes(probs, y)
    return float(np.mean(probs.argmax(axis=1) == y))


def nll(probs, y, eps: float = 1e-12) -> float:
    """The mean negative log probability of the labels (nats per datum)."""
    probs, y = _as_classes(probs, y)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0))))


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The Mann-Whitney estimate of P(score of a positive > score of a negative), ties 1/2."""
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        raise InputError("ROC AUC needs both positive and negative labels.")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(probs, y) -> float:
    """The area under the ROC curve; for K > 2 classes the macro average of one-vs-rest."""
    probs, y = _as_classes(probs, y)
    if probs.shape[1] == 2:
        return _binary_auc(probs[:, 1], y == 1)
    return float(np.mean([_binary_auc(probs[:, k], y == k) for k in range(probs.shape[1])]))


def reliability_curve(probs, y, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of confidence (the top class probability): mean confidence,
    accuracy and count (empty bins give NaN)."""
    probs, y = _as_classes(probs, y)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    which = np.clip(np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True),
                    0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, confidence, minlength=bins) / counts
        acc = np.bincount(which, correct, minlength=bins) / counts
    return conf, acc, counts


def ece(probs, y, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (count / N) |accuracy - confidence|."""
    conf, acc, counts = reliability_curve(probs, y, bins)
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(acc[used] - conf[used])) / counts.sum())


def classification_metrics(probs, y, bins: int = 10) -> dict[str, float]:
    """accuracy, auc, nll and ece in one dict."""
    return {"accuracy": accuracy(probs, y), "auc": roc_auc(probs, y), "nll": nll(probs, y),
            "ece": ece(probs, y, bins)}


def reliability_diagram(probs, y, bins: int = 10, *, ax=None, label: str | None = None):
    """Accuracy against confidence per bin, with the diagonal of perfect calibration; returns
    the matplotlib Figure (drawn on `ax` when given, so several models can share one)."""
    import matplotlib.pyplot as plt

    conf, acc, counts = reliability_curve(probs, y, bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    used = counts > 0
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    ax.plot(conf[used], acc[used], marker="o",
            label=f"{label + ': ' if label else ''}ECE {ece(probs, y, bins):.3f}")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="reliability diagram")
    ax.legend(loc="upper left", fontsize="small")
    return ax.figure
