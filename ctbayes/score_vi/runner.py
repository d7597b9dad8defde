"""Run any VI method as jitted `lax.scan` chunks, timing training apart from evaluation.

A method is three pure functions (`VIMethod`): its initial state, one step
`state, key -> state`, and a sampler `state, key, n -> theta (n, D)`. `run_method` compiles
one chunk of steps once, runs it repeatedly, and between chunks calls an optional
`evaluate(sample_fn) -> dict` (e.g. a test log-likelihood) whose time is not counted, so the
recorded curve is metric against training wall time (compilation excluded and reported apart).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax

from ctbayes.errors import InputError


@dataclasses.dataclass(frozen=True)
class VIMethod:
    name: str
    init_state: object
    step: Callable
    sample: Callable
    moments: Callable | None = None  # state -> (mean, std), where the method has them


@dataclasses.dataclass
class VIRun:
    """The outcome of `run_method`: final state, the method, and the curve.

    curve: one dict per evaluation with "step", "seconds" (training wall time so far) and the
    metrics that `evaluate` returned. compile_seconds: the one-off compilation;
    setup_seconds: preparation before the first step (set by callers that have any).
    """

    method: VIMethod
    state: object
    curve: list[dict]
    compile_seconds: float
    train_seconds: float
    setup_seconds: float = 0.0

    def sample(self, key, n: int):
        """n draws from the fitted q."""
        return self.method.sample(self.state, key, n)


def run_method(method: VIMethod, key, steps: int, chunk: int = 50,
               evaluate: Callable | None = None) -> VIRun:
    """Run `steps` steps of `method` in chunks of `chunk`, evaluating after each chunk."""
    if steps < 1 or chunk < 1:
        raise InputError(f"steps and chunk must be at least 1, got steps={steps}, chunk={chunk}.")
    chunk = min(chunk, steps)

    def run_chunk(state, keys):
        return jax.lax.scan(lambda s, k: (method.step(s, k), None), state, keys)[0]

    t0 = time.perf_counter()
    keys = jax.random.split(key, steps)
    compiled = jax.jit(run_chunk).lower(method.init_state, keys[:chunk]).compile()
    compile_seconds = time.perf_counter() - t0
    state, done, seconds, curve = method.init_state, 0, 0.0, []
    sample_key = jax.random.fold_in(key, 10_000_019)

    def record():
        if evaluate is not None:
            metrics = evaluate(lambda k, n: method.sample(state, k, n))
            curve.append(dict(step=done, seconds=seconds, **metrics))

    record()
    while done < steps:
        block = keys[done:done + chunk]
        if block.shape[0] < chunk:  # pad the last chunk; the extra steps are run and counted
            block = jax.random.split(jax.random.fold_in(sample_key, done), chunk)
        t0 = time.perf_counter()
        state = jax.block_until_ready(compiled(state, block))
        seconds += time.perf_counter() - t0
        done += chunk
        record()
    return VIRun(method, state, curve, compile_seconds, seconds)
