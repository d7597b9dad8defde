"""SVI training speed of `ctbayes.vi.fit` against NumPyro's own `SVI.run`, side by side in
one run, and the test metrics of the fitted BNNs.

For each problem (two moons with an MLP [4, 3]; scikit-learn's breast cancer data with an
MLP [8] when scikit-learn is installed), the same model, AutoNormal guide, Adam optimiser
and Trace_ELBO, on the same full training batch, are run by

- `SVI.run(..., progress_bar=False)`: NumPyro's fastest path, all steps in one `lax.scan`
  (no feedback until the end);
- `ctbayes.vi.fit`: `chunk` steps per compiled `lax.scan`, with a progress bar and a
  validation loss (predictive NLL, 32 guide draws) between chunks.

Steps per second exclude compilation: for SVI.run, the `lax.scan` of `svi.update` that it
compiles, timed on a second call; for `fit`, the steps after the first chunk over their wall
time (validation and progress included). The ratio ctbayes / numpyro is the number to read
(target >= 0.95); both are the best of interleaved repeats (the machine may be shared). End-to-end seconds (init and compilation included) are shown for both. Then accuracy, ROC AUC, NLL
and ECE of the posterior predictive mean (200 draws) on the test split.

    python benchmarks/svi.py [--quick] [--json PATH]
"""

from __future__ import annotations

import time

import jax
import numpyro.distributions as dist
import optax
from flax import nnx
from numpyro.infer import SVI

from common import parse_args, report

from ctbayes.vi import (MLP, TrainConfig, classification_metrics, classifier_model, fit,
                        make_guide, make_loss, name_prior, predict)
from ctbayes.vi import datasets


def problems(quick: bool):
    x, y = datasets.two_moons(1000, noise=0.1, seed=0)
    yield "two_moons", datasets.split(x, y, seed=0, standardise=False), [4, 3], 2e-2
    try:
        yield "breast_cancer", datasets.load_sklearn("breast_cancer", seed=0), [8], 1e-2
    except ImportError:
        print("scikit-learn is not installed: skipping breast_cancer")


def numpyro_run(svi, data, steps: int, repeats: int) -> tuple[float, list[float]]:
    """Seconds of `SVI.run(steps)` end to end (init and compilation included), and its steps
    per second without compilation, `repeats` times: the loop SVI.run compiles (a
    `lax.scan` of `svi.update`), jitted once and timed on later calls."""
    t = time.perf_counter()
    result = svi.run(jax.random.key(0), steps, data.x_train, data.y_train, progress_bar=False)
    jax.block_until_ready(result.params)
    total = time.perf_counter() - t
    state = svi.init(jax.random.key(0), data.x_train, data.y_train)
    loop = jax.jit(lambda s: jax.lax.scan(
        lambda s, _: svi.update(s, data.x_train, data.y_train), s, None, length=steps))
    jax.block_until_ready(loop(state))
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(loop(state))
        rates.append(steps / (time.perf_counter() - t))
    return total, rates


def main():
    args = parse_args(__doc__.splitlines()[0])
    steps, chunk, repeats = (5000, 1000, 2) if args.quick else (20000, 2000, 3)
    rows = []
    for name, data, hidden, lr in problems(args.quick):
        mlp = MLP(data.x_train.shape[1], hidden, 1, rngs=nnx.Rngs(0))
        prior = name_prior({"bias$": dist.Normal(0.0, 1.0), "kernel$": dist.SoftLaplace(0.0, 1.0)})
        model = classifier_model(mlp, prior)
        guide = make_guide(model, "normal")
        svi = SVI(model, guide, optax.adam(lr), make_loss("trace", 1))
        # Interleaved and best of `repeats`: other processes on a shared machine slow either.
        numpyro_rates, ctbayes_rates = [], []
        for _ in range(repeats):
            numpyro_total, rates = numpyro_run(svi, data, steps, 1)
            numpyro_rates += rates
            result = fit(svi, jax.random.key(0), data.x_train, data.y_train,
                         config=TrainConfig(steps=steps, chunk=chunk, progress=True),
                         validation=(data.x_val, data.y_val))
            ctbayes_rates.append(result.steps_per_second)
        baseline, ours = max(numpyro_rates), max(ctbayes_rates)
        probs = predict(model, guide, result.params, data.x_test, jax.random.key(1), num_samples=200)
        metrics = classification_metrics(probs.mean(0), data.y_test)
        rows.append(dict(problem=name, n_train=len(data.y_train), steps=steps, chunk=chunk,
                         numpyro_steps_per_s=baseline, ctbayes_steps_per_s=ours,
                         ratio=ours / baseline,
                         numpyro_total_s=numpyro_total, ctbayes_total_s=result.timings["total"],
                         jax_device=jax.default_backend(),
                         **{k: float(v) for k, v in metrics.items()}))
    report(rows, args.json, "SVI: ctbayes.vi.fit vs numpyro SVI.run (same model, data, optimiser)")


if __name__ == "__main__":
    main()
