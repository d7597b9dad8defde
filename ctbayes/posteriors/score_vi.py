"""A score-VI posterior over the weights of a fitted deep image prior.

Model, in whitened weight coordinates u (theta = theta* + s * u, s the per-tensor RMS of the
fitted weights theta*, so every coordinate has unit prior scale and Adam steps mean the same
thing in every layer):

    theta ~ N(0, diag(s^2))  (per-tensor zero-mean Gaussian at the fit's weight scale),
    y | theta ~ N(A f_theta(z), sigma^2 I),  sigma = the RMS residual of the fit (or given).

q is a diagonal Gaussian over u (`ctbayes.score_vi.families.DiagonalGaussian`) started at u = 0 (the fit) with
a small spread, and fitted by proximal score matching (`proximal`). Each step's score uses one
group of views: the views are dealt round-robin into `view_groups` groups, a step picks one
group uniformly and scales its log likelihood by the number of groups, an unbiased estimate of
the full score. For the sparse backend each group has its own sub-matrix (the rows of its
views, padded to a common number of non-zeros), so a step projects only its views; for the
ASTRA backend the full projection is computed and the group's rows taken (correct, no saving).
The U-Net forward and backward pass dominate a step either way (see benchmarks/dip_speed.py).

`score_vi_posterior(fit, A, y, config=..., seed=...)` returns a `ScoreVIImagePosterior`, which
answers the posterior interface of `ctbayes.posteriors.base` (mean, sample, std,
predictive_samples). mean() and std() are Monte-Carlo moments of `moment_samples` draws.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from ctbayes.errors import InputError
from ctbayes.posteriors.base import PosteriorBase, sample_moments
from ctbayes.score_vi.families import DiagonalGaussian
from ctbayes.score_vi.proximal import ProximalConfig, proximal_score_matching
from ctbayes.score_vi.runner import run_method
from ctbayes.score_vi.targets import Target


@dataclasses.dataclass(frozen=True)
class ScoreVIConfig:
    """Settings of `score_vi_posterior`; the defaults run in well under a minute at 64x64 on
    two CPU cores.

    steps, samples, inner_steps, prox, lr: proximal score matching (`ProximalConfig`); lr is
      in whitened units (a step of lr moves a weight by lr times its tensor's RMS).
    init_std: initial spread of q in whitened units.
    view_groups: number of view groups (minibatches); 1: every step uses all views.
    noise_std: the data noise sigma (None: the RMS residual of the fit).
    moment_samples: draws behind mean() and std(). sample_chunk: images rendered at once.
    """

    steps: int = 100
    samples: int = 2
    inner_steps: int = 2
    prox: float = 1.0
    lr: float = 1e-3
    init_std: float = 1e-2
    view_groups: int = 4
    noise_std: float | None = None
    moment_samples: int = 16
    sample_chunk: int = 8

    def __post_init__(self):
        if self.view_groups < 1 or self.moment_samples < 2 or self.sample_chunk < 1:
            raise InputError("ScoreVIConfig needs view_groups >= 1, moment_samples >= 2 and "
                             "sample_chunk >= 1.")
        if self.noise_std is not None and not self.noise_std > 0:
            raise InputError(f"ScoreVIConfig.noise_std must be positive, got {self.noise_std}.")
        self.proximal()  # validates the rest

    def proximal(self) -> ProximalConfig:
        """The proximal score-matching settings of this config."""
        return ProximalConfig(steps=self.steps, prox=self.prox, samples=self.samples,
                              inner_steps=self.inner_steps, lr=self.lr, init_std=self.init_std)


class ViewGroups:
    """The ray transform restricted to one of `groups` round-robin groups of views.

    `project(x, g)` is (A x) on the views of group g, padded to `rows` rows (padding is zero);
    `data[g]` and `mask[g]` are the matching sinogram rows and the mask of real rows.
    """

    def __init__(self, A, y, groups: int):
        views = A.range_shape[0]
        if not 1 <= groups <= views:
            raise InputError(f"view_groups must lie in 1..{views} (the number of views), got {groups}.")
        det = int(np.prod(A.range_shape[1:]))
        per_group = [np.arange(g, views, groups) for g in range(groups)]
        self.rows = max(len(v) for v in per_group) * det
        row_index = np.zeros((groups, self.rows), np.int32)
        mask = np.zeros((groups, self.rows), np.float32)
        for g, v in enumerate(per_group):
            r = (v[:, None] * det + np.arange(det)[None]).ravel()
            row_index[g, :r.size], mask[g, :r.size] = r, 1.0
        y_flat = np.asarray(y, np.float32).reshape(-1)
        self.data = jnp.asarray(y_flat[row_index] * mask)
        self.mask = jnp.asarray(mask)
        self.groups = groups
        self.A = A
        self.sparse = None
        if A.backend == "sparse":
            self.sparse = self._sub_matrices(A.matrix, row_index, mask)
        self.row_index = jnp.asarray(row_index)

    def _sub_matrices(self, matrix, row_index, mask):
        indices = np.asarray(matrix.indices)
        values = np.asarray(matrix.data)
        local = np.full(matrix.shape[0], -1, np.int64)
        group_of = np.full(matrix.shape[0], -1, np.int64)
        for g in range(self.groups):
            real = row_index[g][mask[g] > 0]
            local[real], group_of[real] = np.arange(real.size), g
        entry_group = group_of[indices[:, 0]]
        counts = np.bincount(entry_group, minlength=self.groups)
        nnz = int(counts.max())
        vals = np.zeros((self.groups, nnz), np.float32)
        rows = np.zeros((self.groups, nnz), np.int32)
        cols = np.zeros((self.groups, nnz), np.int32)
        for g in range(self.groups):
            sel = entry_group == g
            vals[g, :counts[g]] = values[sel]
            rows[g, :counts[g]] = local[indices[sel, 0]]
            cols[g, :counts[g]] = indices[sel, 1]
        return jnp.asarray(vals), jnp.asarray(rows), jnp.asarray(cols)

    def project(self, x, g):
        """(A x) on the views of group g, padded to `rows` rows."""
        if self.sparse is not None:
            vals, rows, cols = self.sparse
            contrib = vals[g] * x.reshape(-1)[cols[g]]
            return jax.ops.segment_sum(contrib, rows[g], num_segments=self.rows)
        return self.A(x).reshape(-1)[self.row_index[g]] * self.mask[g]


class ScoreVIImagePosterior(PosteriorBase):
    """Images f_theta(z) for theta ~ q: the score-VI posterior of a DIP behind the posterior
    interface. `run` is the VI run (curve, timings); `params` the family's parameters."""

    mean_is_sample_average = True  # mean() is the MC average of moment_samples draws

    def __init__(self, render, family, params, to_theta, config: ScoreVIConfig, seed: int, run=None):
        self._render, self.family, self.params = render, family, params
        self._to_theta, self.config, self.run = to_theta, config, run
        self._moments = None
        self._seed = seed

    def _images(self, u):
        chunk = self.config.sample_chunk
        pad = (-u.shape[0]) % chunk
        u = jnp.concatenate([u, jnp.zeros((pad, u.shape[1]), u.dtype)])
        out = jax.lax.map(self._render, u.reshape(-1, chunk, u.shape[1]))
        return out.reshape((-1,) + out.shape[2:])[: u.shape[0] - pad]

    def sample(self, key, n: int) -> jax.Array:
        """Images of n weight draws from q (n, H, W)."""
        if n < 1:
            raise InputError(f"The number of samples must be at least 1, got {n}.")
        return self._images(self.family.sample(self.params, key, n))

    def _moments_now(self):
        if self._moments is None:
            images = self.sample(jax.random.key(self._seed + 7919), self.config.moment_samples)
            self._moments = sample_moments(images)
        return self._moments

    def mean(self) -> jax.Array:
        """The Monte Carlo mean of config.moment_samples draws (H, W)."""
        return self._moments_now()[0]

    def std(self) -> jax.Array:
        """The Monte Carlo per-pixel std of those draws (H, W)."""
        return self._moments_now()[1]

    def predictive_samples(self, key, n: int, A_candidate) -> jax.Array:
        """A_candidate applied to n image draws."""
        if tuple(A_candidate.domain_shape) != tuple(self.mean().shape):
            raise InputError(f"The candidate ray transform works on images of shape "
                             f"{tuple(A_candidate.domain_shape)}, not {tuple(self.mean().shape)}.")
        return A_candidate(self.sample(key, n))

    def weight_samples(self, key, n: int):
        """n network weight vectors theta (flat), for inspection."""
        return jax.vmap(self._to_theta)(self.family.sample(self.params, key, n))

    def __repr__(self):
        return f"ScoreVIImagePosterior(diagonal Gaussian over {self.family.dim} DIP weights)"


def score_vi_posterior(fit, A, y, *, config: ScoreVIConfig = ScoreVIConfig(), seed: int = 0,
                       progress_chunk: int = 25, evaluate=None) -> ScoreVIImagePosterior:
    """Fit a score-VI posterior over the weights of the DIP `fit` (a `DIPFit`) to sinogram y.

    evaluate: optional `evaluate(sample_images) -> dict`, called before the first step and
    after every `progress_chunk` steps with `sample_images(key, n)` -> (n, H, W) images of the
    current q; its results form `run.curve` (its time is not counted as training)."""
    y = np.asarray(y, np.float32)
    if y.shape != tuple(A.range_shape):
        raise InputError(f"The sinogram has shape {y.shape} but the ray transform gives "
                         f"{tuple(A.range_shape)}.")
    t0 = time.perf_counter()
    graphdef, rest, z = fit.graphdef, fit.rest, fit.z
    theta_star, unravel = ravel_pytree(fit.params)
    scale = jnp.concatenate([jnp.full(leaf.size, jnp.sqrt(jnp.mean(leaf ** 2)) + 1e-6)
                             for leaf in jax.tree.leaves(fit.params)])

    def to_theta(u):
        return theta_star + scale * u

    def render(u):
        return nnx.merge(graphdef, unravel(to_theta(u)), rest)(z)

    sigma = config.noise_std
    if sigma is None:
        rms = jax.jit(lambda u, A: jnp.sqrt(jnp.mean((A(render(u)) - y) ** 2)))
        sigma = float(rms(jnp.zeros_like(theta_star), A))
        if not sigma > 0:
            raise InputError("The fit reproduces the sinogram exactly; give ScoreVIConfig.noise_std.")
    groups = ViewGroups(A, y, config.view_groups)
    n_groups = groups.groups

    def log_density(u, g, _unused):
        theta = to_theta(u)
        log_prior = -0.5 * jnp.sum((theta / scale) ** 2)
        residual = (groups.project(render(u), g) - groups.data[g]) * groups.mask[g]
        return log_prior - 0.5 * n_groups * jnp.sum(residual ** 2) / sigma ** 2

    target = _GroupTarget(log_density, int(theta_star.size), init=jnp.zeros_like(theta_star),
                          groups=n_groups)
    family = DiagonalGaussian(target.dim)
    key = jax.random.key(seed)
    method = proximal_score_matching(target, family, config.proximal(), key=key)
    images = jax.jit(jax.vmap(render))
    on_chunk = None if evaluate is None else (
        lambda sample_u: evaluate(lambda k, n: images(sample_u(k, n))))
    run = run_method(method, jax.random.fold_in(key, 1), config.steps,
                     chunk=min(progress_chunk, config.steps), evaluate=on_chunk)
    run.setup_seconds = time.perf_counter() - t0 - run.compile_seconds - run.train_seconds
    return ScoreVIImagePosterior(images, family, run.state[0], to_theta,
                                 config, seed, run)


@dataclasses.dataclass(frozen=True, eq=False)
class _GroupTarget(Target):
    """A target whose minibatch is a view group: x_batch is the group index."""

    groups: int = 1

    def score(self, theta, key):
        g = jax.random.randint(key, (), 0, self.groups)
        grad = jax.grad(self.log_density)
        if theta.ndim == 1:
            return grad(theta, g, None)
        return jax.vmap(grad, in_axes=(0, None, None))(theta, g, None)

    def full_score(self, theta):
        """Each group's log density holds the prior once and its likelihood times the number of
        groups, so the full score is their mean."""
        grad = jax.grad(self.log_density)
        return sum(grad(theta, g, None) for g in range(self.groups)) / self.groups


def build(fit, A, y, config: ScoreVIConfig, *, samples: int, seed: int,
          noise_variance: float | None = None) -> ScoreVIImagePosterior:
    """The registry's builder (`ctbayes.posteriors.registry`): `score_vi_posterior` with
    `samples` draws behind mean() and std()."""
    chosen = dataclasses.replace(config, moment_samples=samples)
    return score_vi_posterior(fit, A, y, config=chosen, seed=seed)
