"""Proximal score matching: score-based VI that scales to minibatches and any family.

After Kim, "Large-scale score-based variational posterior inference for Bayesian deep neural
networks" (2026). At step t, with q_t the current approximation:

1. draw theta_1..theta_S ~ q_t (plain draws, never differentiated: the family needs a
   sampler, not a reparameterised one);
2. compute minibatch scores s_i = grad log p(theta_i) + (N/B) sum_batch grad log p(y|x, theta_i),
   unbiased for the full-data score (`ctbayes.score_vi.targets`);
3. set q_{t+1} to an approximate minimiser of

       (1/S) sum_i || grad log q(theta_i) - s_i ||^2_{W_t}  +  (1/lambda) KL(q_t || q),

   by `inner_steps` Adam steps from q_t (Adam state kept across outer steps).

The proximal penalty is KL(q_t || q), the natural choice for score matching from samples of q_t:
its q-dependent part is the cross-entropy -E_{q_t} log q, which is exact and convex for the
Gaussian families (convex in the natural parameters, and it fixes the scale that the
score term alone leaves free when S is small), and for a flow it is estimated without bias by
-(1/S) sum_i log q(theta_i) on the very samples drawn in step 1, so no family ever needs to
sample from the q being optimised. Its gradient vanishes at q = q_t, so the fixed points are
those of the score match.

W_t = diag(Var_{q_t}) (frozen at q_t; for the flow the variance of its base affine map)
weights the score residual, as in BaM's covariance-weighted divergence: it makes the score term
dimensionless (score^2 x variance), so one lambda serves problems of any scale.

What a Gaussian family recovers (the fixed point): the exact mean of a Gaussian target; the full
covariance when the family can represent it; for the diagonal family the variances
1/diag(Precision) (the score-matching best diagonal fit, smaller than the marginal variances
diag(Covariance) for a correlated target).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ctbayes.errors import InputError
from ctbayes.score_vi.runner import VIMethod


@dataclasses.dataclass(frozen=True)
class ProximalConfig:
    """Settings of proximal score matching.

    steps: outer steps (one minibatch score evaluation of `samples` draws each).
    prox: lambda, the proximal weight (larger: bigger steps, less damping of sampling noise).
    samples: draws S from q_t per step. inner_steps: Adam steps on the proximal objective.
    lr: Adam learning rate of the inner steps, cosine-decayed to lr * final_lr over the run.
    init_std: spread of the initial q around the target's starting point.
    """

    steps: int = 1000
    prox: float = 1.0
    samples: int = 8
    inner_steps: int = 4
    lr: float = 1e-2
    final_lr: float = 0.1
    init_std: float = 0.1

    def __post_init__(self):
        checks = [(self.steps >= 1, "steps must be >= 1"), (self.prox > 0, "prox must be positive"),
                  (self.samples >= 1, "samples must be >= 1"),
                  (self.inner_steps >= 1, "inner_steps must be >= 1"), (self.lr > 0, "lr must be positive"),
                  (0 < self.final_lr <= 1, "final_lr must lie in (0, 1]"),
                  (self.init_std > 0, "init_std must be positive")]
        for ok, message in checks:
            if not ok:
                raise InputError(f"Invalid proximal score-matching setting: {message}.")


def _weights(family, params):
    pre = getattr(family, "preconditioner", None)
    return jax.lax.stop_gradient(pre(params) if pre is not None else family.variance(params))


def proximal_objective(family, old, params, theta, scores, prox):
    """The inner objective: weighted score residual at theta ~ q_old plus KL(q_old||q)/prox
    (up to a constant in q)."""
    weights = _weights(family, old)
    model_scores = jax.vmap(family.score, in_axes=(None, 0))(params, theta)
    fisher = jnp.mean(jnp.sum(weights * (model_scores - scores) ** 2, axis=1))
    if family.cross_entropy is None:
        cross = -jnp.mean(jax.vmap(family.log_prob, in_axes=(None, 0))(params, theta))
    else:
        cross = family.cross_entropy(old, params)
    return fisher + cross / prox


def proximal_score_matching(target, family, config: ProximalConfig = ProximalConfig(),
                            init_params=None, key=None) -> VIMethod:
    """The method as a `VIMethod` (run it with `ctbayes.score_vi.runner.run_method`)."""
    if family.dim != target.dim:
        raise InputError(f"The family has dimension {family.dim} but the target {target.dim}.")
    key = jax.random.key(0) if key is None else key
    if init_params is None:
        init_params = _init(family, target.init, config.init_std, key)
    schedule = optax.cosine_decay_schedule(config.lr, config.steps * config.inner_steps,
                                           alpha=config.final_lr)
    optimizer = optax.adam(schedule)

    def step(state, key):
        params, opt_state = state
        k_sample, k_batch = jax.random.split(key)
        theta = jax.lax.stop_gradient(family.sample(params, k_sample, config.samples))
        scores = target.score(theta, k_batch)
        grad = jax.grad(lambda p: proximal_objective(family, params, p, theta, scores, config.prox))

        def inner(carry, _):
            p, s = carry
            updates, s = optimizer.update(grad(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        (params, opt_state), _ = jax.lax.scan(inner, (params, opt_state), None,
                                              length=config.inner_steps)
        return params, opt_state

    return VIMethod("score-vi", (init_params, optimizer.init(init_params)), step,
                    lambda state, key, n: family.sample(state[0], key, n))


def _init(family, mean, std, key):
    try:
        return family.init(mean, std, key=key)
    except TypeError:  # the diagonal family has no random part
        return family.init(mean, std)
