"""The posterior predictive of a fitted guide, in chunks of samples and of data rows, so
that memory stays bounded by (sample_chunk x data_chunk) network evaluations at a time."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from ctbayes.errors import InputError


def posterior_samples(guide: Callable, params: dict, key: jax.Array, num_samples: int,
                      *args, **kwargs) -> dict:
    """`num_samples` draws of the latent variables from the fitted guide."""
    return Predictive(guide, params=params, num_samples=num_samples)(key, *args, **kwargs)


def predict(model: Callable, guide: Callable, params: dict, x, key: jax.Array, *,
            num_samples: int = 200, sample_chunk: int = 100, data_chunk: int | None = 4096,
            site: str = "probs") -> np.ndarray:
    """Samples of the model site `site` (default "probs") at inputs `x`: (num_samples, N, ...).

    The latents are drawn once from the guide; the model then runs on `sample_chunk` draws
    and `data_chunk` rows at a time (the last chunks padded, so one compiled function serves
    all), and the pieces are gathered on the host. The model is called as `model(x_rows)`.
    """
    if num_samples < 1 or sample_chunk < 1 or (data_chunk is not None and data_chunk < 1):
        raise InputError("predict needs num_samples, sample_chunk and data_chunk >= 1.")
    x = jnp.asarray(x)
    n = x.shape[0]
    draws = posterior_samples(guide, params, key, num_samples, x[:1])
    draws = {k: v for k, v in draws.items() if k != site}
    rows = n if data_chunk is None else min(data_chunk, n)
    per = min(sample_chunk, num_samples)

    @jax.jit
    def run(chunk_draws, rows_x):
        return Predictive(model, posterior_samples=chunk_draws, return_sites=[site])(
            jax.random.key(0), rows_x)[site]

    pieces = []
    for s in range(0, num_samples, per):
        chunk_draws = {k: _pad(v[s:s + per], per) for k, v in draws.items()}
        row_pieces = [run(chunk_draws, _pad(x[r:r + rows], rows))[:, :min(rows, n - r)]
                      for r in range(0, n, rows)]
        pieces.append(np.concatenate([np.asarray(p) for p in row_pieces], axis=1)[
            :min(per, num_samples - s)])
    return np.concatenate(pieces, axis=0)


def _pad(a, size: int):
    """`a` padded along axis 0 to `size` rows by repeating its last row."""
    missing = size - a.shape[0]
    return a if missing == 0 else jnp.concatenate([a, jnp.repeat(a[-1:], missing, axis=0)])
