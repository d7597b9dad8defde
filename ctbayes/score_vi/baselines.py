"""Baselines for score-based VI, as `VIMethod`s on the same targets.

- BaM, batch and match (Cai et al., ICML 2024): closed-form proximal update of a full-covariance
  Gaussian for the covariance-weighted score divergence with a KL(q_t || q) proximal term.
  With batch means (x, g), covariances C (samples) and G (scores) and weight lambda:
      U = lambda G + lambda/(1+lambda) g g^T,   V = Sigma_t + lambda C + lambda/(1+lambda) dx dx^T,
      Sigma_{t+1} solves Sigma U Sigma + Sigma = V,   mu_{t+1} = (mu_t + lambda (Sigma_{t+1} g + x))/(1+lambda)
  with dx = mu_t - x. The quadratic matrix equation is solved symmetrically,
  Sigma = L f(L^T U L) L^T with V = L L^T and f(m) = 2/(1+sqrt(1+4m)), by one Cholesky
  factorisation and one eigendecomposition (O(D^3): small problems).
  The low-rank variant takes the full update and projects it on rank-k plus diagonal
  (principal factors), so it costs the same; it shows the family, not a speed-up.
- GSM, Gaussian score matching (Modi et al., 2023): for each sample, the Gaussian closest in
  KL(q_t || q) whose score matches the target's score at that sample, in closed form;
  the batch update averages the per-sample updates. O(D^3) (Cholesky for sampling).
- ADVI: NumPyro's `AutoNormal` guide with `Trace_ELBO` (one reparameterised particle) and
  Adam, on the same minibatches (observed sites scaled by N/B), the reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median

from ctbayes.errors import InputError
from ctbayes.score_vi.runner import VIMethod
from ctbayes.score_vi.targets import scale_observed

_JITTER = 1e-6


@dataclasses.dataclass(frozen=True)
class GaussianBaselineConfig:
    """samples: draws per step; prox: BaM's lambda (unused by GSM); init_std: initial spread;
    rank: rank of the low-rank BaM projection (None: full covariance)."""

    samples: int = 8
    prox: float = 1.0
    init_std: float = 0.1
    rank: int | None = None

    def __post_init__(self):
        if self.samples < 1 or self.prox <= 0 or self.init_std <= 0:
            raise InputError("Gaussian baselines need samples >= 1, prox > 0 and init_std > 0.")


def _sample_full(state, key, n):
    mean, cov = state
    chol = jnp.linalg.cholesky(cov + _JITTER * jnp.eye(mean.size))
    return mean + jax.random.normal(key, (n, mean.size)) @ chol.T


def bam_update(theta, scores, mean, cov, prox):
    """One BaM step from samples theta (B, D) with scores (B, D); returns (mean, cov)."""
    d = mean.size
    x_bar, g_bar = theta.mean(0), scores.mean(0)
    xc, gc = theta - x_bar, scores - g_bar
    c = xc.T @ xc / theta.shape[0]
    g = gc.T @ gc / theta.shape[0]
    w = prox / (1 + prox)
    u = prox * g + w * jnp.outer(g_bar, g_bar)
    v = cov + prox * c + w * jnp.outer(mean - x_bar, mean - x_bar)
    # Sigma U Sigma + Sigma = V  <=>  Sigma = L f(L^T U L) L^T with V = L L^T, f(m) = 2/(1+sqrt(1+4m))
    chol = jnp.linalg.cholesky(v + _JITTER * jnp.eye(d))
    m = chol.T @ u @ chol
    ew, ev = jnp.linalg.eigh(0.5 * (m + m.T))
    f = 2.0 / (1.0 + jnp.sqrt(1.0 + 4.0 * jnp.clip(ew, 0.0)))
    new_cov = chol @ ((ev * f) @ ev.T) @ chol.T
    new_cov = 0.5 * (new_cov + new_cov.T) + _JITTER * jnp.eye(d)
    new_mean = (mean + prox * (new_cov @ g_bar + x_bar)) / (1 + prox)
    return new_mean, new_cov


def project_low_rank(cov, rank: int, iterations: int = 3):
    """Rank-`rank` factor F and diagonal d^2 with F F^T + diag(d^2) close to cov (principal
    factors: alternate the top eigenpairs of cov - diag and the residual diagonal)."""
    diag = jnp.diag(cov) * 0.5
    for _ in range(iterations):
        w, v = jnp.linalg.eigh(cov - jnp.diag(diag))
        factor = v[:, -rank:] * jnp.sqrt(jnp.clip(w[-rank:], 0.0))
        diag = jnp.clip(jnp.diag(cov) - jnp.sum(factor ** 2, axis=1), 1e-8)
    return factor, diag


def gsm_update(theta, scores, mean, cov):
    """One GSM step: the average of the per-sample closed-form updates (Modi et al. 2023)."""
    def single(x, g):
        cov_g = cov @ g
        dx = mean - x
        g_cov_g = g @ cov_g
        dx_g = dx @ g
        rho = 0.5 * jnp.sqrt(1 + 4 * (g_cov_g + dx_g ** 2)) - 0.5
        eps = cov_g - mean + x
        # (I - dx g^T / (1 + rho + dx.g)) eps / (1 + rho), without forming the outer product
        d_mean = (eps - dx * (g @ eps) / (1 + rho + dx_g)) / (1 + rho)
        new_mean = mean + d_mean
        d_cov = jnp.outer(dx, dx) - jnp.outer(new_mean - x, new_mean - x)
        return d_mean, d_cov

    d_mean, d_cov = jax.vmap(single)(theta, scores)
    new_mean, new_cov = mean + d_mean.mean(0), cov + d_cov.mean(0)
    new_cov = 0.5 * (new_cov + new_cov.T)
    ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(new_cov))) & jnp.all(jnp.isfinite(new_mean))
    return jnp.where(ok, new_mean, mean), jnp.where(ok, new_cov, cov)  # reject a non-PD update


def _gaussian_init(target, config):
    return target.init, (config.init_std ** 2) * jnp.eye(target.dim)


def bam(target, config: GaussianBaselineConfig = GaussianBaselineConfig()) -> VIMethod:
    """BaM on `target`: full covariance, or projected on rank + diagonal with config.rank."""
    if config.rank is not None and not 1 <= config.rank <= target.dim:
        raise InputError(f"The BaM rank must lie in 1..{target.dim}, got {config.rank}.")

    def step(state, key):
        k_sample, k_batch = jax.random.split(key)
        theta = _sample_full(state, k_sample, config.samples)
        mean, cov = bam_update(theta, target.score(theta, k_batch), *state, config.prox)
        if config.rank is not None:
            factor, diag = project_low_rank(cov, config.rank)
            cov = factor @ factor.T + jnp.diag(diag)
        return mean, cov

    name = "bam" if config.rank is None else f"bam-lowrank{config.rank}"
    return VIMethod(name, _gaussian_init(target, config), step, _sample_full)


def gsm(target, config: GaussianBaselineConfig = GaussianBaselineConfig()) -> VIMethod:
    """GSM on `target` (full covariance)."""
    def step(state, key):
        k_sample, k_batch = jax.random.split(key)
        theta = _sample_full(state, k_sample, config.samples)
        return gsm_update(theta, target.score(theta, k_batch), *state)

    return VIMethod("gsm", _gaussian_init(target, config), step, _sample_full)


def advi(model, target, lr: float = 1e-2, init_scale: float = 0.1, particles: int = 1,
         steps: int | None = None, final_lr: float = 1.0) -> VIMethod:
    """ADVI through NumPyro (`AutoNormal` + `Trace_ELBO` + Adam) on the target's minibatches.

    The state is NumPyro's `SVIState`; samples are flat unconstrained vectors in the target's
    order (the guide is a diagonal Gaussian in the unconstrained space). lr is cosine-decayed
    to lr * final_lr over `steps` when steps is given.
    """
    n, b = target.n_data, target.batch_size
    if n == 0:
        raise InputError("ADVI needs a target built from a NumPyro model with data.")
    scaled = scale_observed(model, factor=n / b)
    guide = AutoNormal(scaled, init_loc_fn=init_to_median, init_scale=init_scale)
    schedule = lr if steps is None else optax.cosine_decay_schedule(lr, steps, alpha=final_lr)
    svi = SVI(scaled, guide, optax.adam(schedule), Trace_ELBO(num_particles=particles))
    x_b, y_b = target.batch(jax.random.key(0))
    init_state = svi.init(jax.random.key(0), x_b, y_b)

    def step(state, key):
        x_b, y_b = target.batch(key)
        return svi.update(state, x_b, y_b)[0]

    def moments(state):
        params = svi.get_params(state)
        sites = [k[: -len("_auto_loc")] for k in params if k.endswith("_auto_loc")]
        mean, _ = ravel_pytree({s: params[f"{s}_auto_loc"] for s in sites})
        std, _ = ravel_pytree({s: params[f"{s}_auto_scale"] for s in sites})
        return mean, std

    def sample(state, key, k):
        mean, std = moments(state)
        return mean + std * jax.random.normal(key, (k, mean.size))

    return VIMethod("advi", init_state, step, sample, moments)
