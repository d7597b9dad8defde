"""Checks, before any work, that a run fits the machine: a run that cannot fit stops in
one sentence instead of after an hour of DIP fitting."""

from __future__ import annotations

import jax
import numpy as np


def check_laplace_memory(A, y, dip_config, config) -> None:
    """Raise InputError when the Laplace pass of a DIP with `dip_config` on data y cannot
    fit `config.memory_budget` (`ctbayes.laplace.memory`) even at its smallest: the
    network's intermediates are traced (not run), in float64 unless config.precision is
    "float32" (with "auto" the pass may move to float64)."""
    from flax import nnx

    from ctbayes.dip.fit import build_network, image_function
    from ctbayes.laplace import memory

    model, z = build_network(dip_config, tuple(A.domain_shape))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    activation = memory.activation_bytes(image_function(graphdef, rest, z), params)
    itemsize = 4 if config.precision == "float32" else 8
    matrix = getattr(A, "matrix", None)
    sizes = memory.Sizes(
        pixels=int(np.prod(A.domain_shape)), data=int(np.size(y)),
        params=sum(int(np.size(p)) for p in jax.tree.leaves(params)),
        activation=activation * itemsize // 4, itemsize=itemsize,
        matrix_nnz=int(getattr(matrix, "nse", 0)) if matrix is not None else 0,
        kept_samples=config.samples)
    rank = config.precond_rank if config.solver == "cg" else 0
    memory.plan(sizes, rank, min(16, config.samples) + 1,
                memory.budget_bytes(config.memory_budget), 4)
