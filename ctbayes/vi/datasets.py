"""Small classification data sets: two moons (generated here, no scikit-learn needed) and
the real data sets bundled with scikit-learn (an optional dependency), split and
standardised."""

from __future__ import annotations

import dataclasses

import numpy as np

from ctbayes.errors import InputError

SKLEARN_SETS = ("breast_cancer", "digits")


@dataclasses.dataclass
class Split:
    """Train, validation and test arrays (features float32, labels int32)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> int:
        """The number of classes."""
        return int(max(self.y_train.max(), self.y_val.max(), self.y_test.max())) + 1


def two_moons(n: int, noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (as scikit-learn's make_moons): x (n, 2), y (n,) in {0,1}."""
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t = np.concatenate([np.linspace(0, np.pi, n0), np.linspace(0, np.pi, n - n0)])
    y = np.concatenate([np.zeros(n0), np.ones(n - n0)]).astype(np.int32)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = x + noise * rng.standard_normal(x.shape)
    order = rng.permutation(n)
    return x[order].astype(np.float32), y[order]


def split(x, y, *, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
          standardise: bool = True) -> Split:
    """A random split; with `standardise`, features are centred and scaled by the training
    mean and std (constant features are left unscaled)."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise InputError("val_fraction and test_fraction must be positive and sum to below 1.")
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(round(test_fraction * len(y))), int(round(val_fraction * len(y)))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    if standardise:
        mean, std = x[train].mean(0), x[train].std(0)
        x = (x - mean) / np.where(std > 0, std, 1)
    return Split(x[train], y[train], x[val], y[val], x[test], y[test])


def load_sklearn(name: str, *, seed: int = 0, val_fraction: float = 0.2,
                 test_fraction: float = 0.2) -> Split:
    """A data set bundled with scikit-learn ("breast_cancer": 569 x 30, 2 classes;
    "digits": 1797 x 64, 10 classes), split and standardised."""
    if name not in SKLEARN_SETS:
        raise InputError(f"Unknown data set {name!r}; expected one of {', '.join(SKLEARN_SETS)}.")
    try:
        from sklearn import datasets
    except ImportError as error:
        raise ImportError("The scikit-learn data sets need scikit-learn: "
                          "pip install 'ctbayes[sklearn]'.") from error
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return split(x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
