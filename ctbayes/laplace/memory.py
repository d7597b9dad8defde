"""The memory model of the Laplace pass, and the plan that fits it into a budget.

Symbols: N pixels, M data (views x detector bins), P network parameters, r the Nystrom
rank, s the model's bytes per number (8 in float64, 4 in float32), a the bytes of one
forward pass's intermediates (the linearisation's residuals; a tangent or cotangent through
the network needs about as much again per row), k + 1 the rows of an E-step (k samples and
the mean), b_s and b_c the rows per block of the Nystrom sketch and of CG.

- fixed: the linearisation's residuals a, the sparse ray transform (nnz x (s + 8) bytes),
  the model's vectors (theta, data, images: a few copies of P + M + N numbers) and the
  posterior samples the caller keeps (n x N x 4 bytes, float32).
- the Nystrom factor while it is built: the test rows Omega^T, the sketch Y^T, its shifted
  copy, B^T and U^T: SKETCH_ARRAYS r M s (`solvers.nystrom_factor`; XLA's buffer
  assignment of the whole set-up), plus b_s rows of products;
- the E-steps: the factor U^T, r M f (f its stored bytes per number, 4 in float32), plus
  b_c rows of CG, each a row of products and CG's vectors (8 M s);
- a row of products: a + 4 s (M + N + P).

So the peak is fixed + max(SKETCH_ARRAYS r M s + b_s row, r M f + b_c (row + 8 M s)): linear in N, M
and P for a fixed rank and block sizes, plus r M for the factor (r M <= r P when the data
are fewer than the parameters, as for the default U-Net). `plan` picks the largest rank
(up to the configured one) and blocks that fit the budget, and says in one sentence when
nothing fits.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from ctbayes.errors import InputError

AUTO_FRACTION = 0.6  # of the memory available when the pass starts: the automatic budget
MAX_SKETCH_BLOCK = 64  # products with P per step of the Nystrom set-up, at most
MIN_RANK = 16  # below this a Nystrom preconditioner buys nothing: the run does not fit
# (r, M) arrays of the model's precision live at once while the Nystrom factor is built:
# XLA's buffer assignment of the set-up for HTC2022 `ta` at 128x128, 180 views (float64,
# r = 1024, M = 100 800, U^T stored in float32) held 5 of them (the test rows and the
# sketch 2, the shifted sketch 1, B^T 1, U^T 0.5, and the sketch's products)
SKETCH_ARRAYS = 5.0
# share of the traced intermediates (`activation_bytes`, which counts every equation's
# output, fused or not) that one row of products holds: XLA's buffer assignment of an
# E-step in CG batches of 13 rows on that problem held 2.27 GB (0.175 GB a row) where the
# trace summed 0.46 GB a row
ROW_ACTIVATION_SHARE = 0.4
GB = 2 ** 30


def available_bytes() -> int:
    """Memory the system can still give (MemAvailable; all physical memory where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(memory_budget: float | None) -> int | None:
    """The budget in bytes: memory_budget GB, or AUTO_FRACTION of the available memory
    (None); 0 means no budget (None returned: the configured blocks and rank as they are)."""
    if memory_budget is None:
        return int(AUTO_FRACTION * available_bytes())
    if memory_budget == 0:
        return None
    return int(memory_budget * GB)


def activation_bytes(fn, *args) -> int:
    """Bytes of all intermediates of one call fn(*args) (traced, not run): the outputs of
    every equation of its jaxpr, nested ones included. An upper bound on what the
    linearisation stores, and the scale of one tangent's working set."""
    closed = jax.make_jaxpr(fn)(*args)
    return _jaxpr_bytes(closed.jaxpr)


def _jaxpr_bytes(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = getattr(var, "aval", None)
            if aval is not None and hasattr(aval, "shape"):
                total += int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _jaxpr_bytes(inner)
    return total


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the memory model needs to know of a problem (see the module docstring)."""

    pixels: int
    data: int
    params: int
    activation: int  # a, in the model's precision
    itemsize: int  # s
    matrix_nnz: int = 0
    kept_samples: int = 0  # n: posterior samples the caller holds (float32 images)

    @property
    def row(self) -> int:
        """Bytes per row processed at once: its traced intermediates and its vectors."""
        return (int(ROW_ACTIVATION_SHARE * self.activation)
                + 4 * self.itemsize * (self.data + self.pixels + self.params))

    @property
    def fixed(self) -> int:
        """Bytes held whatever the rank and batch: the model, the matrix, the samples kept."""
        return (self.activation + self.matrix_nnz * (self.itemsize + 8)
                + 6 * self.itemsize * (self.params + self.data + self.pixels)
                + 3 * 4 * self.kept_samples * self.pixels)

    def sketch(self, rank: int, block: int) -> int:
        """Bytes of the Nystrom set-up at `rank`, sketching `block` rows at once."""
        return int(SKETCH_ARRAYS * rank * self.data * self.itemsize) + block * self.row

    def e_step(self, rank: int, batch: int, factor_itemsize: int) -> int:
        """Bytes of an E-step: the stored factor and `batch` CG rows at once."""
        return rank * self.data * factor_itemsize + batch * (self.row + 8 * self.data * self.itemsize)

    def peak(self, rank: int, block: int, batch: int, factor_itemsize: int) -> int:
        """Predicted peak bytes of the pass: the fixed part plus the larger phase."""
        return self.fixed + max(self.sketch(rank, block), self.e_step(rank, batch, factor_itemsize))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Rank, Nystrom sketch block, CG batch (None: all rows at once) and the estimated peak
    bytes of the Laplace pass under a budget."""

    rank: int
    sketch_block: int
    cg_batch: int | None
    estimate: int
    budget: int | None


def plan(sizes: Sizes, rank: int, rows: int, budget: int | None, factor_itemsize: int,
         what: str = "The Laplace uncertainty pass") -> Plan:
    """The largest rank (up to `rank`, a multiple of the sketch block) and the blocks that
    keep the estimated peak within `budget` bytes (None: no budget, the configured rank, the
    largest sketch block and all `rows` CG rows at once). Raises InputError, one sentence,
    when even rank MIN_RANK with one row per block does not fit."""
    rank = max(0, min(rank, sizes.data))
    if budget is None:
        block = min(MAX_SKETCH_BLOCK, max(rank, 1))
        return Plan(rank, block, None, sizes.peak(rank, block, rows, factor_itemsize), None)
    smallest = min(rank, MIN_RANK)
    need = sizes.peak(smallest, 1, 1, factor_itemsize)
    if need > budget:
        raise InputError(
            f"{what} needs about {need / GB:.1f} GB at the least ({sizes.pixels} pixels, "
            f"{sizes.data} data, {sizes.params} parameters) but the memory budget is "
            f"{budget / GB:.1f} GB: raise --memory-budget, or use a smaller image, fewer views "
            f"or a smaller network.")
    room = budget - sizes.fixed
    block = int(np.clip(room // (4 * sizes.row), 1, MAX_SKETCH_BLOCK))
    block = 1 << (block.bit_length() - 1)  # a power of two: ranks of whole blocks stay round
    while block > 1 and sizes.sketch(smallest, block) > room:
        block //= 2
    fitting = int((room - block * sizes.row) // (SKETCH_ARRAYS * sizes.data * sizes.itemsize))
    rank = int(max(smallest, min(rank, fitting)))
    if rank > block:
        rank -= rank % block  # whole blocks: the sketch needs no padded copy
    block = min(block, max(rank, 1))
    batch_room = room - rank * sizes.data * factor_itemsize
    batch = int(max(1, batch_room // (sizes.row + 8 * sizes.data * sizes.itemsize)))
    cg_batch = None if batch >= rows else batch
    return Plan(rank, block, cg_batch, sizes.peak(rank, block, cg_batch or rows, factor_itemsize),
                budget)
