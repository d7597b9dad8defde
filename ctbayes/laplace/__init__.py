"""Per-pixel uncertainty by the linearised Laplace method with sample-based EM.

Modules, one concept each: `linearise` (J v, J^T u and the conjugate `LinearModel`),
`priors` (prior groups: isotropic, per-layer, g-prior), `matern` (the filter prior),
`edges` (a per-pixel edge displacement as one more group), `exact` (dense posterior and the
exact evidence, the oracle for small problems), `solvers` (batched CG, Nystrom
preconditioner, sample-then-optimise), `sampling` (pathwise-conditioned samples, sharded over
devices), `em` (MacKay updates from samples) and `posterior` (`fit_laplace`).
"""

from ctbayes.laplace.linearise import LinearModel, linear_model
from ctbayes.laplace.posterior import LaplaceConfig, LinearisedLaplace, fit_laplace
from ctbayes.laplace.priors import PriorGroups, make_prior
from ctbayes.laplace.sampling import Hyper, SolverOptions

__all__ = ["Hyper", "LaplaceConfig", "LinearModel", "LinearisedLaplace", "PriorGroups",
           "SolverOptions", "fit_laplace", "linear_model", "make_prior"]
