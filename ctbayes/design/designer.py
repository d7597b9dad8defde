"""`AngleDesigner`: the prospective design object, propose(k) / observe(angles, measurements).

A scanner or simulator drives it: it proposes the next angles among fixed candidates, is told
what they measured, and keeps a reconstruction and a posterior over the image up to date:

- the first observation fits a DIP network (`network.first_fit`, warm-started on the FBP of
  the measured views) and builds the base posterior through the registry
  (`ctbayes.posteriors.registry`; linearised Laplace by default, which learns its
  hyperparameters by EM on the genuine subset operator);
- every later observation updates the posterior cheaply where the posterior offers it
  (`with_data`: Laplace keeps its hyperparameters and grows the linear model by the new
  rows; the GP conditions on them) and, with reconstruction "dip", refits the network
  briefly from its previous parameters (`dip.refit`); a posterior without a cheap update
  (the VI ones) is built again on all measured views;
- every `refit_every` acquired views the posterior is relinearised at the refitted network
  (and, with refit_hyper, built again, i.e. hyperparameters refitted).

The measured operator is the candidate operator with a row mask (`masked`), so nothing
recompiles as views arrive.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from ctbayes.design import acquisition, batch, network
from ctbayes.design.masked import masked
from ctbayes.dip.fit import DIPConfig
from ctbayes.errors import InputError
from ctbayes.laplace import LaplaceConfig
from ctbayes.operators import make_ray_transform
from ctbayes.posteriors import registry
from ctbayes.posteriors.score_vi import ScoreVIConfig

RECONSTRUCTIONS = ("dip", "mean")
# The design's own choices where they differ from a method's defaults. Laplace: the
# preconditioner is rebuilt at every step (the measured rows change) for only a few samples,
# so a smaller rank, and a fixed number of EM cycles. Score-VI: every view in each step.
DESIGN_POSTERIORS = {
    registry.Method.LAPLACE: LaplaceConfig(em_cycles=3, em_tol=0.0, precond_rank=256,
                                           precision="float32"),
    registry.Method.SCORE_VI: ScoreVIConfig(view_groups=1),
}


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
      every weight by about the learning rate, so at the first fit's rate a converged
      network does not get back below its starting loss in a short refit.
    noise_variance: the data's known noise variance: for the posteriors that take one (the
      GP prior) and for the scores when the posterior has none (None: fitted, or the mean
      squared residual of the reconstruction on the measured rows).
    posterior: the posterior method (`registry.Method`). posterior_config: its settings
      (None: `DESIGN_POSTERIORS`' or the method's defaults).
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
    posterior: str = "laplace"
    posterior_config: Any = None

    def __post_init__(self):
        method = registry.method(self.posterior)
        chosen = self.posterior_config
        if isinstance(chosen, dict):  # read back from a log's nested JSON
            chosen = registry.config_from_dict(method, chosen)
        if chosen is None:
            chosen = DESIGN_POSTERIORS.get(method)
        object.__setattr__(self, "posterior_config", registry.settings(method, chosen))
        acquisition.check_strategy(self.acquisition)
        if self.reconstruction not in RECONSTRUCTIONS:
            raise InputError(f"Unknown reconstruction {self.reconstruction!r}; expected dip or mean.")
        if self.samples < 2:
            raise InputError(f"The design needs at least 2 predictive samples, got {self.samples}.")
        if self.refit_every < 0 or self.refit_iterations < 0:
            raise InputError("refit_every and refit_iterations must be >= 0.")

    @property
    def adaptive(self) -> bool:
        """Whether the strategy scores candidates with the posterior."""
        return self.acquisition in acquisition.ACQUISITIONS

    @property
    def network(self) -> DIPConfig:
        """The DIP settings the posterior needs (MC dropout: dropout on)."""
        return registry.entry(self.posterior).network(self.posterior_config, self.dip)


class AngleDesigner:
    """Propose and observe projection angles (radians) among fixed candidate angles.

    geometry: the scanner (its angles are ignored); candidate_angles: the angles it may
    measure (default: the geometry's own angles). Measurements are detector rows in the
    geometry's units, one per angle.
    """

    def __init__(self, geometry, candidate_angles=None, config: DesignerConfig = DesignerConfig()):
        angles = geometry.angles_array if candidate_angles is None else np.ravel(candidate_angles)
        self.geometry = geometry.with_angles(angles)
        self.config = config
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
        """The candidate angles (radians)."""
        return self.geometry.angles_array

    @property
    def measured(self) -> np.ndarray:
        """A mask over the candidates: True where measured."""
        mask = np.zeros(self.geometry.num_views, bool)
        mask[self.order] = True
        return mask

    @property
    def measured_angles(self) -> np.ndarray:
        """The measured angles (radians), in the order measured."""
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
        return self.config.reconstruction == "dip" or registry.entry(self.config.posterior).needs_fit

    def _build(self, fit, A, y):
        """A new posterior for y = A x from the registry."""
        cfg = self.config
        return registry.build(cfg.posterior, fit, A, y, cfg.posterior_config,
                              samples=cfg.samples, seed=cfg.seed,
                              noise_variance=cfg.noise_variance)

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
        """Record what candidate views `views` measured, (k, detector...), and update."""
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
                if cfg.network.warm_start:
                    from ctbayes.operators.fbp import fbp

                    initial = fbp(np.asarray(y), A.geometry)
                Am, ym = self.operator()
                self.fit = network.first_fit(Am, ym, cfg.network, initial_image=initial)
                self.lin_fit = self.base_fit = self.fit
            self.base_views = tuple(self.order)
            self.since_relinearised = 0
            return
        relinearise = cfg.refit_every > 0 and self.since_relinearised >= cfg.refit_every
        if self.fit is not None and (cfg.reconstruction == "dip" or relinearise):
            A, y = self.operator()
            self.fit = network.refit(self.fit, A, y, cfg.refit_iterations, cfg.refit_lr,
                                     cfg.network)
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
                self._base = self._build(self.base_fit, A, y)
            A, y = self.operator()
            params = None if self.lin_fit is None else self.lin_fit.params
            post = self._base.with_data(A, y, params)
            if post is None:  # no cheap update: a new posterior on all measured views
                post = self._build(self.lin_fit, *self.subset())
            self._posterior = post
        return self._posterior

    def reconstruction(self) -> np.ndarray:
        """The current image: the DIP network's, or the posterior mean (config.reconstruction)."""
        if self.config.reconstruction == "dip" and self.fit is not None:
            return np.asarray(self.fit.image, np.float32)
        return np.asarray(self.posterior.mean(), np.float32)

    def noise_variance(self) -> float:
        """The noise variance for the scores: the posterior's, the configured one, or the residual's."""
        s2 = self.posterior.noise_variance
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
            for name in ("fit", "lin_fit", "base_fit"):
                setattr(self, name, network.restored(
                    self.config.network, self.geometry.image_shape, state["rest"],
                    state[f"{name}/params"], state[f"{name}/image"]))
