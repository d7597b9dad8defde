"""Sample-based EM for the prior variances and the noise variance (MacKay updates).

One cycle (the sample-based EM of Antoran et al., ICLR 2023, here with per-group priors):

- E-step, at the current (v, s2): the linear model's posterior mean w_lin = S J^T A^T K^-1 r
  and k zero-mean posterior samples w_s (pathwise conditioning, `sampling`),
  solved together as one batch of k + 1 right-hand sides.
- Effective dimension of each group, gamma_g = sum_{i in g} (1 - posterior var_i / prior
  var_i) = Tr_g(H^-1 M) with M = J^T A^T A J / s2 and H = M + S^-1. Two unbiased sample
  estimators:
    "features":  mean_s w_{s,g} . (M w_s)_g  -- low variance when gamma_g << d_g, the DIP
                 regime (millions of weights, m observations), but noisy for small groups
                 whose features correlate with other groups' (with CG, A J w_s is taken as
                 e_s - s2 v_s, see `sampling`);
    "weights":   d_g - mean_s ||w_{s,g}||^2 / S_g, the literal formula: variance of order
                 d_g per sample, so good for small groups;
    "auto" (default): per group, the one of the two with the smaller sample variance.
- M-step (MacKay's fixed point of the evidence):
    v_g <- ||w_lin,g||^2_{C_g^-1} / gamma_g,     s2 <- ||y - A x_lin||^2 / (m - gamma),
  the misfit taken from the CG solve as ||s2 K^-1 r||^2 (`sampling.Mean`), with C the
  fixed per-parameter factors of the prior (1, or the g-prior scale), gamma = sum_g gamma_g,
  each gamma_g clipped to [1e-3, d_g] and m - gamma to at least 1.

A fixed point of these updates is a stationary point of the exact evidence, which is what the
tests compare against (`exact.maximise_marginal_likelihood`). Each cycle uses a fresh key.
With solver "exact" the E-step is the dense posterior and gamma is exact.

Convergence: with `tol` > 0 the EM stops early, after the first cycle (from the second on)
whose every hyperparameter moved by less than a factor exp(tol) from the cycle before: once
the cycles only move the variances by the Monte Carlo noise of the sampled gammas, further
cycles buy nothing.

The start: the network's residual can put s2 far below the top eigenvalue of P = A J S J^T A^T,
where float32 products with K are no longer positive definite and CG diverges. With CG the first E-step therefore uses s2 of at least
lam_max / START_CONDITION (lam_max from the Nystrom factor, no extra products); the M-steps
then move s2 freely. Float32 is not to be trusted on such problems at all, so `fit_laplace`
with precision "auto" computes them in float64, where the guard is not applied.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes import progress
from ctbayes.compile_clock import stopwatch
from ctbayes.errors import InputError
from ctbayes.laplace import exact, sampling, solvers
from ctbayes.laplace.linearise import LinearModel
from ctbayes.laplace.sampling import Hyper, SolverOptions

ESTIMATORS = ("auto", "features", "weights")
START_CONDITION = 1e5  # largest lam_max(P) / s2 of the first E-step (CG in float32)


def initial_hyper(model: LinearModel) -> Hyper:
    """A data-driven start for EM.

    v_g: the mean of theta*_i^2 / c_i over the group (the fitted weights set the scale, for
    both prior-mean conventions), floored at 1e-3 of the overall mean (zero-initialised
    biases). s2: the mean squared residual ||y - A f(theta*)||^2 / m of the network's
    reconstruction, floored at 1e-6 of the data power.
    """
    theta2 = np.asarray(model.theta, np.float64) ** 2 / np.asarray(model.prior.scale, np.float64)
    sizes = np.maximum(model.prior.sizes(), 1)
    v = np.bincount(np.asarray(model.prior.index), theta2, model.prior.num_groups) / sizes
    v = np.maximum(v, max(1e-3 * float(theta2.mean()), 1e-12))
    y = np.asarray(model.y, np.float64)
    fit = float(np.mean((y - np.asarray(model.A(model.image), np.float64)) ** 2))
    s2 = max(fit, 1e-6 * float(np.mean(y ** 2)), 1e-12)
    return Hyper(jnp.asarray(v, model.theta.dtype), jnp.asarray(s2, model.theta.dtype))


def estimate_gamma(features, weights, sizes, estimator: str = "auto"):
    """(gamma_g, its standard error) from per-sample terms (n, G); see the module docstring."""
    f = np.asarray(features, np.float64)
    w = np.asarray(sizes, np.float64) - np.asarray(weights, np.float64)
    n = max(f.shape[0], 1)
    if estimator == "features":
        use_f = np.ones(f.shape[1], bool)
    elif estimator == "weights":
        use_f = np.zeros(f.shape[1], bool)
    else:
        use_f = f.var(0) <= w.var(0)
    gamma = np.where(use_f, f.mean(0), w.mean(0))
    stderr = np.sqrt(np.where(use_f, f.var(0), w.var(0)) / n)
    return gamma, stderr


def mackay_update(prior, w_lin, gamma, data_fit: float, m: int):
    """The M-step: v_g = ||w_lin,g||^2_{C^-1} / gamma_g, s2 = data_fit / (m - gamma).

    Returns (new Hyper, the clipped gamma, the weight norms ||w_lin,g||^2_{C^-1})."""
    sizes = prior.sizes()
    gamma = np.clip(np.asarray(gamma, np.float64), 1e-3, sizes)
    norms = np.asarray(prior.group_sum(jnp.square(w_lin) / prior.scale), np.float64)
    v = np.maximum(norms / gamma, 1e-30)
    s2 = max(data_fit / max(m - gamma.sum(), 1.0), 1e-30)
    return Hyper(jnp.asarray(v, w_lin.dtype), jnp.asarray(s2, w_lin.dtype)), gamma, norms


def _well_conditioned_start(hyper: Hyper, prep: "solvers.Nystrom"):
    """(hyper, prep) with s2 raised to lam_max / START_CONDITION where it is below."""
    floor = prep.lam[0] / START_CONDITION
    if not bool(hyper.noise_variance < floor):
        return hyper, prep
    s2 = jnp.asarray(floor, hyper.noise_variance.dtype)
    return hyper._replace(noise_variance=s2), prep._replace(shift=s2)


def run_em(model: LinearModel, init: Hyper, key: jax.Array, *, cycles: int = 5,
           samples: int = 64, solver: str = "cg", opts: SolverOptions | None = None,
           estimator: str = "auto", dense: "exact.DenseProblem | None" = None,
           mesh=None, cache: dict | None = None, tol: float = 0.0,
           timings: dict | None = None) -> tuple[Hyper, list[dict]]:
    """Run up to `cycles` EM cycles from `init`; return the final hyperparameters and the
    history. tol: stop once no hyperparameter moved by more than a factor exp(tol) in a
    cycle (0: run all cycles).

    solver: "cg", "sgd" (sample-based E-step, `samples` samples per cycle) or "exact" (dense).
    History: one dict per cycle with the hyperparameters it produced, gamma per group (and
    its Monte Carlo standard error), the weight norms, the data fit ||y - A x_lin||^2 and
    the solver's convergence summary (CG iterations, residuals, systems not converged), and
    "em_converged" (whether that cycle met `tol`).
    cache: a dict that receives "preconditioner", the last `sampling.Reuse`.
    timings: a dict that accumulates the seconds of the solver set-ups ("preconditioner",
    not with "exact") and of the E-steps ("e_steps"), each with its XLA compilation
    ("..._compile").
    """
    if estimator not in ESTIMATORS:
        raise InputError(f"Unknown effective-dimension estimator {estimator!r}; expected one of "
                         f"{', '.join(ESTIMATORS)}.")
    if solver not in ("cg", "sgd", "exact"):
        raise InputError(f"Unknown solver {solver!r}; expected cg, sgd or exact.")
    opts = opts or SolverOptions()
    timings = {} if timings is None else timings
    if solver != "exact":
        opts = dataclasses.replace(opts, kind=solver)
    if solver == "exact" and dense is None:
        dense = exact.dense_problem(model)
    m = model.num_data
    hyper = Hyper(*(jnp.asarray(h, model.theta.dtype) for h in init))
    history = []
    previous = None  # `sampling.Reuse`: the preconditioner reused across cycles where exact
    for cycle in range(cycles):
        with progress.phase(f"EM cycle {cycle + 1} of at most {cycles}"):
            k_mean, k_samples = jax.random.split(jax.random.fold_in(key, cycle))
            info = {}
            if solver == "exact":
                with stopwatch(timings, "e_steps"):
                    post = exact.posterior(dense, np.asarray(hyper.prior_variances),
                                           float(hyper.noise_variance))
                    gamma = exact.effective_dimensions(dense, post, np.asarray(hyper.prior_variances))
                info = {"gamma_stderr": [0.0] * len(gamma)}
                w_lin = jnp.asarray(post.weight_mean, model.theta.dtype)
                data_fit = float(np.sum((dense.residual - dense.Phi @ post.weight_mean) ** 2))
            else:
                with stopwatch(timings, "preconditioner"), progress.phase("preconditioner"):
                    prep, previous = sampling.preconditioner(model, hyper, k_mean, opts, previous)
                    jax.block_until_ready(prep)
                if cycle == 0 and isinstance(prep, solvers.Nystrom) and prep.lam.dtype == jnp.float32:
                    hyper, prep = _well_conditioned_start(hyper, prep)
                    info["start_noise_variance"] = float(hyper.noise_variance)
                    previous = previous._replace(prep=prep, hyper=hyper)
                if cache is not None:
                    cache["preconditioner"] = previous
                with stopwatch(timings, "e_steps"), progress.phase(f"E-step ({samples} samples)"):
                    draws = jax.block_until_ready(sampling.posterior_samples(
                        model, hyper, k_samples, samples, opts, mesh=mesh, prep=prep))
                mean = draws.mean
                if solver == "cg":
                    info |= solvers.check_convergence(solvers.CGInfo(
                        *(jnp.concatenate([a, b[None]]) for a, b in
                          zip((draws.iterations, draws.residual, draws.converged),
                              (mean.iterations, mean.residual, mean.converged)))),
                        opts.cg_tol, f"CG (EM cycle {cycle})")
                else:
                    info["grad_norm_max"] = float(jnp.max(draws.residual))
                gamma, stderr = estimate_gamma(draws.gamma_features, draws.gamma_weights,
                                               model.prior.sizes(), estimator)
                info["gamma_stderr"] = stderr.tolist()
                w_lin = mean.weights
                data_fit = float(mean.data_fit)
            before = hyper
            hyper, gamma, norms = mackay_update(model.prior, w_lin, gamma, data_fit, m)
            converged = cycle > 0 and tol > 0 and _largest_log_change(before, hyper) < tol
            history.append({"cycle": cycle,
                            "prior_variances": np.asarray(hyper.prior_variances, np.float64).tolist(),
                            "noise_variance": float(hyper.noise_variance),
                            "gamma": gamma.tolist(), "gamma_total": float(gamma.sum()),
                            "weight_norms": norms.tolist(), "data_fit": data_fit,
                            "em_converged": converged, **info})
        if converged:
            break
    return hyper, history


def _largest_log_change(before: Hyper, after: Hyper) -> float:
    """max |log(after / before)| over the prior variances and the noise variance."""
    old = np.append(np.asarray(before.prior_variances, np.float64), float(before.noise_variance))
    new = np.append(np.asarray(after.prior_variances, np.float64), float(after.noise_variance))
    return float(np.max(np.abs(np.log(new / old))))

