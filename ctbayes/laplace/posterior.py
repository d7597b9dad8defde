"""`fit_laplace`: the linearised-Laplace posterior of a fitted network, behind the posterior
interface of ctbayes (`mean`, `sample`, `std`, `predictive_samples`).

The network's image f(theta*) is the point estimate, as in Antoran et al. (TMLR 2023); the
linearised model supplies the error bars: samples are mean + J w_s with w_s the zero-mean
posterior weight samples. With `mean="linear"` the linear model's own posterior mean x_lin
is the centre instead, which is the consistent choice for the surrogate model; x_lin can
differ noticeably from f(theta*) (the prior shrinks the weights towards mu), so compare
`linear_mean()` with `mean()` before reading the error bars as error bars of f(theta*).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ctbayes import progress
from ctbayes.compile_clock import stopwatch
from ctbayes.errors import InputError
from ctbayes.laplace import edges, em, exact, matern, memory, priors, sampling
from ctbayes.laplace.linearise import PRIOR_MEANS, LinearModel, linear_model
from ctbayes.laplace.sampling import Hyper, SolverOptions
from ctbayes.laplace.solvers import CGInfo, check_convergence

SOLVERS = ("cg", "sgd", "exact")
MEANS = ("network", "linear")
PRECISIONS = ("float32", "float64", "auto")
FACTOR_PRECISIONS = ("auto", "float32", "model")
# cg_tol from which "auto" stores the Nystrom factor in float32: on a spectrum like P / s2 of
# HTC2022 (1e6 to 10 over 50 directions, s2 = 1e-6), float64 CG with a float32 factor took
# as many iterations as with a float64 one at tol 1e-2, and 50% more at 1e-4 (6 against 4)
FLOAT32_FACTOR_TOL = 1e-3


@dataclasses.dataclass(frozen=True)
class LaplaceConfig:
    """Settings of `fit_laplace`: the one definition of the Laplace defaults (the solver's
    come from `SolverOptions`); the CLI, reconstruction and the design loop derive theirs
    from it.

    prior: "matern" (isotropic, with the Matern-1/2 correlation over the taps of conv
      filters, `matern`: smooth filters, one variance), "isotropic", "per-layer" or
      "g-prior" (`priors`); group_depth: per-layer groups by the first k path entries
      instead of the owning module; gprior_probes: Rademacher probes for the g-prior scale
      (None: exact, small problems); matern_lengthscale: the Matern prior's lengthscale in
      filter taps (None: fitted per kernel to its filters).
    edge_features: add a per-pixel edge displacement u ~ N(0, b^2) with features
      |grad f(theta*)| as one more prior group, "edge", whose variance the EM learns
      (`edges`): variance where the image has edges, which a grid model otherwise misses.
    discrepancy: add a stationary image-space model discrepancy e ~ N(0, b^2 I), x =
      f(theta) + e, as one more prior group, "discrepancy", whose variance the EM learns
      (`edges`): the misfit the network's tangent space cannot explain goes to b^2 instead
      of the noise variance, and the image prior becomes J S J^T + b^2 I.
    prior_mean: "zero" (affine model, default) or "mode" (residual model), see `LinearModel`.
    mean: the centre of the samples, "network" (f(theta*)) or "linear" (x_lin).
    em_cycles, samples: EM cycles (at most) and posterior samples per E-step (the std is
      drawn in batches of as many, reusing that compiled sampler); em_tol: stop the EM once
      no hyperparameter moves by more than a factor exp(em_tol) in a cycle, about the Monte
      Carlo noise of an E-step (0: all cycles, `em.run_em`); std_samples: samples behind
      `std()`; gamma_estimator: "auto", "features" or "weights" (`em`).
    solver: "cg" (batched CG + Nystrom preconditioner of rank precond_rank), "sgd"
      (sample-then-optimise, sgd_iterations steps) or "exact" (dense, small problems);
      sample_batch: samples solved together per device (None: all; bounds memory, and makes
      samples bitwise independent of the device count).
    init_prior_variance, init_noise_variance: EM start (None: data-driven, `em.initial_hyper`).
    precision: the arithmetic of the linearised model's products and solvers, "float32",
      "float64" or "auto": float64 where lam_max(P) / s2 at the EM start exceeds
      `FLOAT32_CONDITION` (see `fit_laplace`). Results are returned in the input's dtype.
    memory_budget: GB the pass may use (`memory`): the Nystrom rank (at most precond_rank),
      the sketch's and CG's rows per block are chosen to fit it, and a run that cannot fit
      even at the smallest raises InputError before any product. None: AUTO_FRACTION of the
      memory available when the fit starts; 0: no budget (precond_rank as given, sketch
      blocks of 64, every CG row at once).
    factor_precision: the Nystrom factor U stored in "float32" (half the largest array of
      the E-steps where the model computes in float64, and half the preconditioner's
      traffic; the sketch and the factorisation keep the model's precision), in the
      "model"'s precision (the default), or "auto": float32 where cg_tol >=
      FLOAT32_FACTOR_TOL. "auto" is opt-in: on an ill-conditioned float64 model (HTC2022 `ta`
      at 64x64) a float32 factor left CG unconverged at its iteration cap.
    seed: used when fit_laplace gets no key.
    """

    prior: str = "matern"
    prior_mean: str = "zero"
    mean: str = "network"
    em_cycles: int = 4
    em_tol: float = 0.05
    samples: int = 16
    std_samples: int = 128
    solver: str = "cg"
    cg_tol: float = SolverOptions.cg_tol
    cg_max_iter: int = SolverOptions.cg_max_iter
    precond_rank: int = SolverOptions.precond_rank
    sgd_iterations: int = SolverOptions.sgd_iterations
    sample_batch: int | None = SolverOptions.batch_size
    gprior_probes: int | None = 64
    group_depth: int | None = None
    matern_lengthscale: float | None = None
    edge_features: bool = False
    discrepancy: bool = False
    gamma_estimator: str = "auto"
    init_prior_variance: float | None = None
    init_noise_variance: float | None = None
    precision: str = "auto"
    memory_budget: float | None = None
    factor_precision: str = "model"
    seed: int = 0

    def __post_init__(self):
        choices = {"prior": priors.PRIOR_KINDS, "prior_mean": PRIOR_MEANS, "mean": MEANS,
                   "solver": SOLVERS, "gamma_estimator": em.ESTIMATORS,
                   "precision": PRECISIONS, "factor_precision": FACTOR_PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"LaplaceConfig.{name} is {getattr(self, name)!r}; expected one "
                                 f"of {', '.join(allowed)}.")
        for name in ("samples", "std_samples", "cg_max_iter", "sgd_iterations", "sample_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"LaplaceConfig.{name} must be at least 1, got "
                                 f"{getattr(self, name)}.")
        for name, holds, rule in (("em_cycles", self.em_cycles >= 0, ">= 0"),
                                  ("precond_rank", self.precond_rank >= 0, ">= 0"),
                                  ("cg_tol", self.cg_tol > 0, "> 0"),
                                  ("em_tol", self.em_tol >= 0, ">= 0")):
            if not holds:
                raise InputError(f"LaplaceConfig.{name} must be {rule}, got {getattr(self, name)}.")
        if self.memory_budget is not None and not 0 <= self.memory_budget < float("inf"):
            raise InputError(f"LaplaceConfig.memory_budget must be a number of GB >= 0, got "
                             f"{self.memory_budget}.")
        if self.matern_lengthscale is not None and not self.matern_lengthscale > 0:
            raise InputError("LaplaceConfig.matern_lengthscale must be positive.")

    @property
    def solver_options(self) -> SolverOptions:
        """The solver settings as `SolverOptions`."""
        return SolverOptions("sgd" if self.solver == "sgd" else "cg", self.cg_tol,
                             self.cg_max_iter, self.precond_rank, self.sgd_iterations,
                             self.sample_batch,
                             factor_dtype="float32" if self.factor32 else None)

    @property
    def factor32(self) -> bool:
        """Whether the Nystrom factor is stored in float32 (`factor_precision`)."""
        return self.factor_precision == "float32" or (
            self.factor_precision == "auto" and self.cg_tol >= FLOAT32_FACTOR_TOL)


def _full_precision_products(fn):
    """Run fn with full-precision matrix products and convolutions: on GPUs, float32
    products default to TF32 (10-bit mantissa), which kept CG from converging at all on a
    128x128 scan on an H200 (residual above 1 after 500 iterations, the std 70x too large).
    A no-op on CPUs, whose float32 products are exact to float32 already."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)
    return wrapped


def _in_model_precision(method):
    """Run a LinearisedLaplace method in its model's precision (float64 needs x64 on; full
    float32 products, see `_full_precision_products`) and return its array in the caller's
    dtype."""
    @functools.wraps(method)
    @_full_precision_products
    def wrapped(self, *args, **kwargs):
        if self.output_dtype is None:
            return method(self, *args, **kwargs)
        with jax.enable_x64(True):
            return method(self, *args, **kwargs).astype(self.output_dtype)
    return wrapped


class LinearisedLaplace:
    """The linearised-Laplace posterior over the image (see `fit_laplace`).

    mean(), sample(key, n), std(), predictive_samples(key, n, A_candidate); the learned
    hyperparameters as `prior_variances` (per group) and `noise_variance`; `history` (EM);
    `timings`, the fit's seconds by phase (see `fit_laplace`); `opts`, the solver options
    the memory plan chose (`memory.plan`: rank, blocks), and `plan` itself.
    coordinates: network parameters -> the coordinates the model is linearised in (the
    identity, or the Matern prior's white coordinates). output_dtype: where the model
    computes in float64 (`LaplaceConfig.precision`), the dtype the methods return.
    """

    def __init__(self, model: LinearModel, hyper: Hyper, config: LaplaceConfig,
                 history: list[dict], dense: exact.DenseProblem | None = None, mesh=None,
                 previous_preconditioner=None, coordinates=None, output_dtype=None,
                 timings: dict | None = None, opts: SolverOptions | None = None,
                 plan: memory.Plan | None = None):
        self.output_dtype = output_dtype
        self.opts = opts or config.solver_options
        self.plan = plan
        self.timings = timings or {}
        self.model = model
        self.coordinates = coordinates or (lambda params: params)
        self.hyper = Hyper(*(jnp.asarray(h, model.theta.dtype) for h in hyper))
        self.config = config
        self.history = history
        self.dense = dense
        self.mesh = mesh
        self._exact = exact.posterior(dense, np.asarray(self.hyper.prior_variances),
                                      float(self.hyper.noise_variance)) if dense is not None else None
        self._linear_mean = None
        self._std = None
        self._prep = None
        self._previous_prep = previous_preconditioner

    def _preconditioner(self):
        """The solver set-up for the learned hyperparameters, computed once (and rescaled
        from the EM's last one where that is exact)."""
        if self._prep is None:
            key = jax.random.fold_in(jax.random.key(self.config.seed), 3)
            self._prep, _ = sampling.preconditioner(self.model, self.hyper, key,
                                                    self.opts, self._previous_prep)
        return self._prep

    # -- hyperparameters -------------------------------------------------------------------
    @property
    def prior_variances(self) -> dict[str, float]:
        """The learned prior variance per group."""
        return dict(zip(self.model.prior.names, np.asarray(self.hyper.prior_variances).tolist()))

    @property
    def noise_variance(self) -> float:
        """The learned sinogram noise variance."""
        return float(self.hyper.noise_variance)

    @property
    def precision(self) -> str:
        """The arithmetic the model computed in: "float32" or "float64" (see `fit_laplace`)."""
        return jnp.result_type(self.model.theta).name

    # -- moments -----------------------------------------------------------------------------
    @_in_model_precision
    def linear_mean(self) -> jax.Array:
        """The linear model's posterior mean image x_lin (H, W)."""
        if self._linear_mean is None:
            if self._exact is not None:
                self._linear_mean = jnp.asarray(self._exact.image_mean, self.model.theta.dtype)
            else:
                self._linear_mean = sampling.posterior_mean(
                    self.model, self.hyper, self.opts,
                    prep=self._preconditioner(), companions=self.config.samples).image
        return self._linear_mean

    @_in_model_precision
    def mean(self) -> jax.Array:
        """The centre of the posterior samples (H, W): f(theta*) or x_lin (config.mean)."""
        return self.model.image if self.config.mean == "network" else self.linear_mean()

    @_in_model_precision
    def zero_mean_samples(self, key: jax.Array, n: int) -> jax.Array:
        """n samples J w_s of the image's deviation from the mean (n, H, W).

        Drawn in chunks of config.samples (the EM's sample count), so every call reuses the
        one compiled sampler whatever n is (it solves the linear mean x_lin too, kept)."""
        if self._exact is not None:
            vals, vecs = np.linalg.eigh(self._exact.weight_cov)  # a square root, robust to round-off
            root = vecs * np.sqrt(np.maximum(vals, 0.0))
            z = np.asarray(jax.random.normal(key, (n, len(vals))), np.float64)
            images = (z @ root.T) @ self.dense.J.T
            return jnp.asarray(images.reshape((n,) + self.model.image_shape), self.model.theta.dtype)
        dtype = self.output_dtype or self.model.theta.dtype
        out = np.empty((n,) + self.model.image_shape, dtype)
        for start, part in self._sample_chunks(key, n):
            out[start:start + len(part)] = np.asarray(part, dtype)
        return jnp.asarray(out)

    def _sample_chunks(self, key: jax.Array, n: int):
        """(start, zero-mean samples) in chunks of config.samples, n in all: the one
        compiled sampler, reported as the phase "sampling"."""
        chunk = self.config.samples
        count = -(-n // chunk)
        with progress.phase(f"sampling ({n} samples)", total=count) as bar:
            for i in range(count):
                draws = sampling.posterior_samples(
                    self.model, self.hyper, jax.random.fold_in(key, i), chunk,
                    self.opts, mesh=self.mesh, prep=self._preconditioner())
                if self.config.solver == "cg":
                    check_convergence(CGInfo(draws.iterations, draws.residual, draws.converged),
                                      self.config.cg_tol)
                if self._linear_mean is None:  # solved alongside the samples anyway
                    self._linear_mean = draws.mean.image
                bar.update(1)
                yield i * chunk, draws.images[:n - i * chunk]

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n posterior image samples (n, H, W), sharded over the devices along n."""
        return self.mean()[None] + self.zero_mean_samples(key, n)

    @_in_model_precision
    def std(self) -> jax.Array:
        """Per-pixel posterior std (H, W): exact with solver "exact", else from
        config.std_samples samples (computed once, key from config.seed)."""
        if self._std is None:
            if self._exact is not None:
                self._std = jnp.asarray(self._exact.std, self.model.theta.dtype)
            else:  # streamed: the moments of the chunks, never all samples at once
                key = jax.random.fold_in(jax.random.key(self.config.seed), 7)
                moments = sampling.RunningMoments()
                for _, part in self._sample_chunks(key, self.config.std_samples):
                    moments.update(part)
                self._std = jnp.asarray(moments.rms(), self.model.theta.dtype)
        return self._std

    def predictive_samples(self, key: jax.Array, n: int, A_candidate) -> jax.Array:
        """n samples of the noise-free measurements A_c x at another operator on the same grid."""
        if tuple(A_candidate.domain_shape) != self.model.image_shape:
            raise InputError(f"The candidate operator acts on images of shape "
                             f"{tuple(A_candidate.domain_shape)}, not {self.model.image_shape}.")
        return sampling.predict(A_candidate, self.sample(key, n))

    def __repr__(self):
        v = ", ".join(f"{k}={val:.3g}" for k, val in self.prior_variances.items())
        return (f"LinearisedLaplace({self.model.prior.describe()}; prior variances {v}; "
                f"noise variance {self.noise_variance:.3g}; solver {self.config.solver})")


# lam_max(P) / s2 at the EM start beyond which "auto" takes float64: between the conditions
# where float32 CG was seen to be reliable and where it failed (benchmarks/RESULTS.md)
FLOAT32_CONDITION = 3e6


@_full_precision_products
def fit_laplace(fn: Callable, params, A, y, config: LaplaceConfig = LaplaceConfig(),
                key: jax.Array | None = None, *, mesh=None) -> LinearisedLaplace:
    """Linearise fn(params) -> (H, W) at params, learn the prior and noise variances by
    sample-based EM on the data y = A x + noise, and return the posterior.

    fn: any function of a parameter pytree giving the image, e.g. for a flax.nnx network
    `lambda p: nnx.merge(graphdef, p)(z)`. A: a RayTransform (or any linear JAX operator with
    domain_shape, range_shape and .T). mesh: the device mesh for sampling (default: all devices).

    Precision: a product with P = A J S J^T A^T in float32 is off by about
    eps32 * lam_max(P), so once lam_max / s2 is large enough the small eigenvalues of
    K = P + s2 I drown in round-off: float32 CG then stops converging and the Nystrom factor
    loses much of its spectrum, where float64 converges in a few iterations. With
    precision "auto" the condition is measured at the EM start (30 power iterations) and
    the linearised model is rebuilt in float64 (parameters, data and A) when it exceeds
    FLOAT32_CONDITION; float64 products cost about twice as much on a CPU.

    The posterior's `timings` give the fit's seconds by phase, each with its XLA compilation
    (`<phase>_compile`): "linearise" (the prior, the model and the EM start, twice where
    "auto" moves to float64), "condition" (the power iteration of "auto"), "preconditioner"
    (the EM's solver set-ups) and "e_steps" (the EM's posterior samples and solves).
    """
    key = jax.random.key(config.seed) if key is None else key
    k_prior, k_em = jax.random.split(key)
    timings = {}
    if config.precision != "float64":
        with stopwatch(timings, "linearise"), progress.phase("linearisation"):
            built = _model_and_start(fn, params, A, y, config, k_prior)
        if config.precision == "float32" or config.solver == "exact":
            return _fit(*built, config, k_em, mesh, timings=timings)
        with stopwatch(timings, "condition"), progress.phase("condition number (precision)"):
            condition = _condition_at_start(*built[:2])
        if condition <= FLOAT32_CONDITION:
            return _fit(*built, config, k_em, mesh, timings=timings)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
        with stopwatch(timings, "linearise"), progress.phase("linearisation (float64)"):
            built = _model_and_start(fn, params64, A.astype(np.float64),
                                     np.asarray(y, np.float64), config, k_prior)
        return _fit(*built, config, k_em, mesh, timings=timings,
                    output_dtype=jnp.result_type(*jax.tree.leaves(params)))


def pixel_features(config: LaplaceConfig) -> tuple[str, ...]:
    """The per-pixel feature groups (`edges`) a config adds to the network's parameters."""
    return tuple(name for name, on in ((edges.GROUP, config.edge_features),
                                       (edges.DISCREPANCY, config.discrepancy)) if on)


def _condition_at_start(model: LinearModel, init: Hyper) -> float:
    """lam_max(P) / s2 at the EM's start (power iteration, in the model's precision)."""
    return float(sampling.top_eigenvalue(model, init, jax.random.key(1)) / init.noise_variance)


def _model_and_start(fn, params, A, y, config: LaplaceConfig, key):
    """(LinearModel, EM start, coordinates map) of fn linearised at params."""
    coordinates = None
    if config.prior == "matern":  # linearise in the white coordinates of the filter prior
        fn, params, scales = matern.reparameterise(fn, params, config.matern_lengthscale)
        coordinates = functools.partial(matern.whiten, scales=scales)
    group_by = priors.by_owner if config.group_depth is None else priors.by_prefix(config.group_depth)
    prior = priors.make_prior(config.prior, params, model_fn=fn, A=A, key=key,
                              probes=config.gprior_probes, group_by=group_by)
    features = pixel_features(config)
    if features:
        fn, params = edges.with_features(fn, params, features)
        prior = edges.add_groups(prior, int(np.prod(A.domain_shape)), features)
        coordinates = edges.coordinates(coordinates or (lambda p: p), tuple(A.domain_shape),
                                        len(features))
    model = linear_model(fn, params, A, y, prior, config.prior_mean)
    init = em.initial_hyper(model)
    if features:
        init = init._replace(prior_variances=edges.start_variances(
            prior, init.prior_variances, model.image))
    if config.init_prior_variance is not None:
        init = init._replace(
            prior_variances=jnp.full_like(init.prior_variances, config.init_prior_variance))
    if config.init_noise_variance is not None:
        init = init._replace(
            noise_variance=jnp.asarray(config.init_noise_variance, init.noise_variance.dtype))
    return model, init, coordinates


def _fit(model: LinearModel, init: Hyper, coordinates, config: LaplaceConfig, k_em, mesh,
         output_dtype=None, timings: dict | None = None) -> LinearisedLaplace:
    """EM from `init` on the linear model, then the posterior."""
    dense = exact.dense_problem(model) if config.solver == "exact" else None
    opts, plan = planned_options(model, config)
    cache = {}
    hyper, history = em.run_em(model, init, k_em, cycles=config.em_cycles, samples=config.samples,
                               solver=config.solver, opts=opts,
                               estimator=config.gamma_estimator, dense=dense, mesh=mesh,
                               cache=cache, tol=config.em_tol, timings=timings)
    return LinearisedLaplace(model, hyper, config, history, dense, mesh,
                             cache.get("preconditioner"), coordinates, output_dtype, timings,
                             opts, plan)


def model_sizes(model: LinearModel, kept_samples: int = 0) -> memory.Sizes:
    """What the memory model needs to know of a linear model (`memory.Sizes`)."""
    matrix = getattr(model.A, "matrix", None)
    return memory.Sizes(
        pixels=int(np.prod(model.image_shape)), data=model.num_data, params=model.num_params,
        activation=memory.activation_bytes(model.fn_flat, model.theta),
        itemsize=jnp.result_type(model.theta).itemsize,
        matrix_nnz=int(getattr(matrix, "nse", 0)) if matrix is not None else 0,
        kept_samples=kept_samples)


def planned_options(model: LinearModel, config: LaplaceConfig) -> tuple[SolverOptions, memory.Plan | None]:
    """The solver options within config.memory_budget (`memory.plan`): the Nystrom rank, the
    sketch block and (where config.sample_batch is None) the CG batch; (options, plan)."""
    opts = config.solver_options
    if config.solver == "exact":
        return opts, None
    sizes = model_sizes(model, config.std_samples)
    factor = 4 if config.factor32 else sizes.itemsize
    rank = opts.precond_rank if opts.kind == "cg" else 0
    plan = memory.plan(sizes, rank, config.samples + 1, memory.budget_bytes(config.memory_budget),
                       factor)
    batch = config.sample_batch if config.sample_batch is not None else plan.cg_batch
    return dataclasses.replace(opts, precond_rank=plan.rank if opts.kind == "cg" else opts.precond_rank,
                               sketch_block=plan.sketch_block, batch_size=batch), plan
