"""Bayesian neural networks by stochastic variational inference (NumPyro + Flax NNX): a
general library, free of CT (the DIP posterior built on it is `ctbayes.posteriors.mfvi`).

NumPyro supplies the model language, the autoguides, the ELBOs and `SVI.init`/`SVI.update`;
this package adds what it lacks: name-based priors for any `flax.nnx` module (`bnn`), a
training loop compiled in chunks with validation, early stopping and best-parameter restore
(`train`), a memory-bounded batched predictive (`predict`), calibration metrics
(`calibration`) and small data sets (`datasets`).
"""

from __future__ import annotations

from ctbayes.vi.bnn import MLP, classifier_model, name_prior, random_module
from ctbayes.vi.calibration import (accuracy, classification_metrics, ece, nll, reliability_curve,
                                    reliability_diagram, roc_auc)
from ctbayes.vi.guides import GUIDES, make_guide
from ctbayes.vi.predict import posterior_samples, predict
from ctbayes.vi.train import (LOSSES, TrainConfig, TrainResult, fit, make_loss,
                              one_cycle_with_plateau)

__all__ = [
    "MLP", "classifier_model", "name_prior", "random_module",
    "accuracy", "classification_metrics", "ece", "nll", "reliability_curve",
    "reliability_diagram", "roc_auc",
    "GUIDES", "make_guide", "posterior_samples", "predict",
    "LOSSES", "TrainConfig", "TrainResult", "fit", "make_loss", "one_cycle_with_plateau",
]
