"""`AngleDesigner`: the prospective design object, propose(k) / observe(angles, measurements).

A scanner or simulator drives it: it proposes the next angles among fixed candidates, is told
what they measured, and keeps a reconstruction and a posterior over the image up to date:

- the first observation fits a DIP network (`network.first_fit`, warm-started on the FBP of
  the measured views) and builds the base posterior with the factory (linearised Laplace by
  default, which learns its hyperparameters by EM on the genuine subset operator);
- every later observation updates the posterior cheaply (`linear_update`: the same
  hyperparameters, the linear model grown by the new rows) and, with reconstruction "dip",
  refits the network briefly from its previous parameters;
- every `refit_every` acquired views the posterior is relinearised at the refitted network
  (and, with refit_hyper, rebuilt by the factory, i.e. hyperparameters refitted).

Any factory (fit, A, y) -> ImagePosterior works (`ctbayes.posterior.ImagePosterior`):
`laplace_factory`, `vi_factory` (mean-field or score-based VI over the DIP weights) or
`gp_prior.gp_factory`; one with `needs_fit = False` (the GP prior) gets fit None. The
measured operator is the candidate operator with a row mask (`masked`), so nothing
recompiles as views arrive.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from ctbayes.design import acquisition, batch, linear_update, network
from ctbayes.design.masked import masked
from ctbayes.dip.fit import DIPConfig
from ctbayes.errors import InputError
from ctbayes.operators import make_ray_transform
from ctbayes.uncertainty import UncertaintyConfig, image_posterior

RECONSTRUCTIONS = ("dip", "mean")


@dataclasses.dataclass(frozen=True)
class DesignerConfig:
    """Settings of an `AngleDesigner`.

    acquisition: one of acquisition.STRATEGIES. samples: predictive samples per proposal.
    refit_every: acquired views between relinearisations of the posterior at a refitted
      network (0: never). refit_hyper: rebuild the posterior with the factory then (new EM).
    reconstruction: "dip" (the network, refitted for refit_iterations steps after every
      observation) or "mean" (the posterior mean; the network, if any, is refitted only every
      refit_every views).
    dip: settings of the first fit; refit_lr: learning rate of the refits (None: dip.lr).
      A tenth of the first fit's: each refit starts Adam afresh, whose first steps move
      every weight by about the learning rate, and at 1e-2 a converged 64x64 U-Net did not
      get back below its starting loss in 200 steps (so `keep="best"` kept the old image:
      26.7 -> 26.8 dB after 10 new views, 31.2 dB with 1e-3; tests/test_design.py).
    noise_variance: for the scores when the posterior has none (None: the mean squared
      residual of the reconstruction on the measured rows).
    backend: ray-transform backend of the candidate operator. seed: sample keys, random picks.
    """

    acquisition: str = "eig"
    samples: int = 32
    refit_every: int = 5
    refit_hyper: bool = False
    reconstruction: str = "dip"
    dip: DIPConfig = DIPConfig(iterations=1000)
    refit_iterations: int = 200
    refit_lr: float | None = 1e-3
    noise_variance: float | None = None
    backend: str = "auto"
    seed: int = 0

    def __post_init__(self):
        acquisition.check_strategy(self.acquisition)
        if self.reconstruction not in RECONSTRUCTIONS:
            raise InputError(f"Unknown reconstruction {self.reconstruction!r}; expected dip or mean.")
        if self.samples < 2:
            raise InputError(f"The design needs at least 2 predictive samples, got {self.samples}.")
        if self.refit_every < 0 or self.refit_iterations < 0:
            raise InputError("refit_every and refit_iterations must be >= 0.")

    @property
    def adaptive(self) -> bool:
        return self.acquisition in acquisition.ACQUISITIONS


def laplace_factory(config=None):
    """The default posterior factory: linearised Laplace (`fit_laplace`) of the DIP fit."""
    from ctbayes.laplace import LaplaceConfig, fit_laplace

    # The Matern filter prior, as in the CLI: on 64x64 rectangles (5 views per step) its `eig`
    # led equidistant at every budget and reached its 40-view PSNR with 35 views, where the
    # isotropic prior fell 0.16 dB behind at 40 and took twice as long (README *Benchmarks*).
    # CG to 1e-2 as in the CLI (`UncertaintyConfig`; 1e-4 with rank 64 ran into the iteration
    # limit), but a rank-256 Nystrom preconditioner instead of 1024: it is rebuilt at every
    # step (the measured rows change) for only 32 samples, so its products dominate
    config = config or LaplaceConfig(prior="matern", em_cycles=3, samples=16, cg_tol=1e-2,
                                     precond_rank=256)

    def factory(fit, A, y):
        return fit_laplace(fit.render, fit.params, A, y, config)

    factory.needs_fit = True
    return factory


VI_METHODS = ("mfvi", "score-vi")


def vi_factory(method: str = "mfvi", config=None, *, samples: int = 32, seed: int = 0):
    """A variational posterior over the DIP weights as the design backend: mean-field VI
    (`ctbayes.vi.dip`, config an MFVIConfig) or score-based VI (`ctbayes.score_vi.dip`, a
    ScoreVIConfig). Neither has a cheap linear update, so the designer refits it by VI on all
    measured views at every step (and, as the number of views changes the shapes, compiles
    it again): a comparison backend for small problems; Laplace is the fast one."""
    if method not in VI_METHODS:
        raise InputError(f"Unknown variational backend {method!r}; expected one of "
                         f"{', '.join(VI_METHODS)}.")
    settings = UncertaintyConfig(method=method, samples=max(samples, 2), seed=seed)
    if method == "score-vi" and config is None:  # one group: every view in each step
        from ctbayes.score_vi.dip import ScoreVIConfig

        config = ScoreVIConfig(view_groups=1, moment_samples=settings.samples)

    def factory(fit, A, y):
        return image_posterior(fit, A, y, settings, method_config=config)[0]

    factory.needs_fit = True
    return factory


class AngleDesigner:
    """Propose and observe projection angles (radians) among fixed candidate angles.

    geometry: the scanner (its angles are ignored); candidate_angles: the angles it may
    measure (default: the geometry's own angles). Measurements are detector rows in the
    geometry's units, one per angle.
    """

    def __init__(self, geometry, candidate_angles=None, config: DesignerConfig = DesignerConfig(),
                 posterior_factory=None):
        angles = geometry.angles_array if candidate_angles is None else np.ravel(candidate_angles)
        self.geometry = geometry.with_angles(angles)
        self.config = config
        self.factory = posterior_factory or laplace_factory()
        self.candidates = make_ray_transform(self.geometry, config.backend)
        self.period = math.pi if geometry.beam in ("parallel", "parallel3d") else 2 * math.pi
        self.values = np.zeros(self.geometry.sinogram_shape, np.float32)
        self.order: list[int] = []  # measured views, in the order they were measured
        self.fit = self.lin_fit = self.base_fit = None  # latest, linearisation point, base
        self.base_views: tuple[int, ...] = ()
        self.since_relinearised = 0
        self.last_scores = None
        self._base = self._posterior = None

    # -- what is known ---------------------------------------------------------------------------
    @property
    def candidate_angles(self) -> np.ndarray:
        return self.geometry.angles_array

    @property
    def measured(self) -> np.ndarray:
        mask = np.zeros(self.geometry.num_views, bool)
        mask[self.order] = True
        return mask

    @property
    def measured_angles(self) -> np.ndarray:
        return self.candidate_angles[self.order]

    def operator(self):
        """The measured operator (masked candidates) and its data."""
        A = masked(self.candidates, self.order)
        return A, self.values * self.measured[:, None].astype(np.float32)

    def subset(self, views=None):
        """The genuine ray transform of the measured views (or `views`), and their data."""
        views = np.asarray(self.order if views is None else views, int)
        A = make_ray_transform(self.geometry.with_angles(self.candidate_angles[views]),
                               self.config.backend)
        return A, self.values[views]

    @property
    def _needs_fit(self) -> bool:
        return self.config.reconstruction == "dip" or getattr(self.factory, "needs_fit", True)

    # -- observing -------------------------------------------------------------------------------
    def views_of(self, angles) -> np.ndarray:
        """Candidate indices of angles (radians); InputError for an angle that is no candidate."""
        angles = np.atleast_1d(np.asarray(angles, np.float64))
        diff = np.abs(angles[:, None] - self.candidate_angles[None, :]) % (2 * math.pi)
        diff = np.minimum(diff, 2 * math.pi - diff)
        views = diff.argmin(axis=1)
        bad = diff[np.arange(len(angles)), views] > 1e-6
        if bad.any():
            raise InputError(f"The angle {angles[bad][0]:.6g} rad is not one of the candidate angles.")
        return views

    def observe(self, angles, measurements) -> None:
        """Record what the given angles (radians) measured, (k, detector...), and update."""
        self.observe_views(self.views_of(angles), measurements)

    def observe_views(self, views, measurements) -> None:
        views = np.atleast_1d(np.asarray(views, int))
        values = np.asarray(measurements, np.float32).reshape((len(views),) + self.values.shape[1:])
        if len(set(views.tolist())) != len(views) or self.measured[views].any():
            raise InputError("Each angle can be observed once; some were given twice or before.")
        if not np.all(np.isfinite(values)):
            raise InputError("The measurements contain NaN or infinite values.")
        self.values[views] = values
        self.order.extend(int(v) for v in views)
        self.since_relinearised += len(views)
        self._update()

    def replace_views(self, views, measurements) -> None:
        """Retrospective baselines only: the measured set becomes exactly `views` (e.g. the
        equidistant set of the next budget, not nested in the last)."""
        views = np.atleast_1d(np.asarray(views, int))
        added = len(set(views.tolist()) - set(self.order))
        self.values[:] = 0
        self.values[views] = np.asarray(measurements, np.float32).reshape(
            (len(views),) + self.values.shape[1:])
        self.order = [int(v) for v in views]
        self.since_relinearised += added
        self._update()

    def _update(self) -> None:
        cfg = self.config
        self._posterior = None
        if self.fit is None and self.base_views == ():
            if self._needs_fit:
                A, y = self.subset()
                initial = None
                if cfg.dip.warm_start:
                    from ctbayes.operators.fbp import fbp

                    initial = fbp(np.asarray(y), A.geometry)
                Am, ym = self.operator()
                self.fit = network.first_fit(Am, ym, cfg.dip, initial_image=initial)
                self.lin_fit = self.base_fit = self.fit
            self.base_views = tuple(self.order)
            self.since_relinearised = 0
            return
        relinearise = cfg.refit_every > 0 and self.since_relinearised >= cfg.refit_every
        if self.fit is not None and (cfg.reconstruction == "dip" or relinearise):
            A, y = self.operator()
            self.fit = network.refit(self.fit, A, y, cfg.dip, cfg.refit_iterations, cfg.refit_lr)
        if relinearise:
            self.lin_fit = self.fit
            self.since_relinearised = 0
            if cfg.refit_hyper:
                self._base, self.base_fit, self.base_views = None, self.fit, tuple(self.order)

    # -- the posterior ---------------------------------------------------------------------------
    @property
    def posterior(self):
        """The current posterior over the image (built on first use after each update)."""
        if not self.order:
            raise InputError("No angle has been observed yet: observe some before asking.")
        if self._posterior is None:
            if self._base is None:
                A, y = self.subset(self.base_views)
                self._base = self.factory(self.base_fit, A, y)
            A, y = self.operator()
            params = None if self.lin_fit is None else self.lin_fit.params
            post = linear_update.update_posterior(self._base, params, A, y)
            if post is None:  # no cheap update: a new posterior from the factory
                post = self.factory(self.lin_fit, *self.subset())
            self._posterior = post
        return self._posterior

    def reconstruction(self) -> np.ndarray:
        """The current image: the DIP network's, or the posterior mean (config.reconstruction)."""
        if self.config.reconstruction == "dip" and self.fit is not None:
            return np.asarray(self.fit.image, np.float32)
        return np.asarray(self.posterior.mean(), np.float32)

    def noise_variance(self) -> float:
        s2 = getattr(self.posterior, "noise_variance", None)
        if s2 is None:
            s2 = self.config.noise_variance
        if s2 is None:
            A, y = self.operator()
            resid = np.asarray(A(self.reconstruction())) - y
            s2 = float(np.sum(resid ** 2) / max(len(self.order) * resid[0].size, 1))
        return float(max(s2, 1e-30))

    # -- proposing -------------------------------------------------------------------------------
    def propose_views(self, k: int) -> np.ndarray:
        """The k candidate views to measure next (indices into candidate_angles)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"The number of angles to propose must be a positive integer, got {k!r}.")
        measured = self.measured
        if k > int((~measured).sum()):
            raise InputError(f"Cannot propose {k} angles: only {int((~measured).sum())} "
                             "candidates are left.")
        kind = self.config.acquisition
        self.last_scores = None
        if kind == "random":
            rng = np.random.default_rng([self.config.seed, len(self.order)])
            return acquisition.random_views(np.flatnonzero(~measured), k, rng)
        if kind == "equidistant":
            return acquisition.spread_views(self.candidate_angles, self.order, k, self.period)
        key = jax.random.fold_in(jax.random.key(self.config.seed), len(self.order))
        samples = self.posterior.predictive_samples(key, self.config.samples, self.candidates)
        chosen, rounds = batch.greedy_batch(samples, k, self.noise_variance(), kind, measured)
        self.last_scores = rounds[0]
        return chosen

    def propose(self, k: int = 1) -> np.ndarray:
        """The k angles (radians) to measure next."""
        return self.candidate_angles[self.propose_views(k)]

    # -- checkpoints -----------------------------------------------------------------------------
    def state(self) -> dict:
        """Arrays that restore this designer exactly (`restore`)."""
        state = {"values": self.values.copy(), "order": np.asarray(self.order, np.int64),
                 "base_views": np.asarray(self.base_views, np.int64),
                 "since_relinearised": np.int64(self.since_relinearised)}
        if self.fit is not None:
            state["rest"] = network.leaves(self.fit.rest)
            for name in ("fit", "lin_fit", "base_fit"):
                f = getattr(self, name)
                state[f"{name}/params"] = network.leaves(f.params)
                state[f"{name}/image"] = np.asarray(f.image)
        return state

    def replay(self, steps, sinogram) -> None:
        """After `restore`: rebuild the posterior through the measured sets of the recorded
        steps (`steps`: the views measured at each, `sinogram`: the dense scan's data), as
        the interrupted run built it. A posterior updated step by step (the GP's rank
        updates, `with_data`) is then bit-identical to that of an uninterrupted run; one
        rebuilt from scratch at every step needs no replay."""
        if not self.order or not hasattr(self.posterior, "with_data"):
            return
        order, values = list(self.order), self.values.copy()
        try:
            for views in steps[:-1]:
                views = np.asarray(views, int)
                self.values[:] = 0
                self.values[views] = np.asarray(sinogram, np.float32)[views]
                self.order = [int(v) for v in views]
                self._posterior = None
                self.posterior  # noqa: B018 - built for its side effect on the update chain
        finally:
            self.order, self.values = order, values
            self._posterior = None

    def restore(self, state: dict) -> None:
        """Continue from `state()` of a designer with the same settings and candidates."""
        self.values = np.asarray(state["values"], np.float32).copy()
        self.order = [int(v) for v in state["order"]]
        self.base_views = tuple(int(v) for v in state["base_views"])
        self.since_relinearised = int(state["since_relinearised"])
        self._base = self._posterior = None
        self.fit = self.lin_fit = self.base_fit = None
        if "rest" in state:
            graphdef, params, rest, z = network.template(self.config.dip, self.geometry.image_shape)
            rest = network.from_leaves(rest, state["rest"])
            render = network.make_render(graphdef, rest, z)
            for name in ("fit", "lin_fit", "base_fit"):
                p = network.from_leaves(params, state[f"{name}/params"])
                setattr(self, name, network.NetworkFit(np.asarray(state[f"{name}/image"]),
                                                       graphdef, p, rest, z, render))
