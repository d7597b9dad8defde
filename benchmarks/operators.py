"""Ray-transform speed: the sparse matrix in XLA against the ASTRA callback, side by side.

For each geometry it times A x, A^T y and a batch of 8 forward projections under jit, and
reports the ratio astra/sparse (above 1: the sparse backend is faster). This is the evidence
behind `make_ray_transform(backend="auto")`.

    python benchmarks/operators.py [--quick] [--json PATH]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from common import parse_args, report

from ctbayes.operators import make_ray_transform
from ctbayes.simulate import default_geometry


def seconds_per_call(fn, *args, repeats: int) -> float:
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def main():
    args = parse_args(__doc__.splitlines()[0])
    sizes = [64, 128] if args.quick else [64, 128, 256]
    repeats = 5 if args.quick else 20
    rows = []
    for size in sizes:
        for beam, views in (("parallel", 60), ("fanflat", 120)):
            geometry = default_geometry(size, beam=beam, views=views,
                                        arc_degrees=180.0 if beam == "parallel" else 360.0)
            x = jnp.asarray(np.random.default_rng(0).random(geometry.image_shape), jnp.float32)
            row = {"geometry": f"{beam} {size}x{size}, {views} views"}
            times = {}
            for backend in ("sparse", "astra"):
                start = time.perf_counter()
                A = make_ray_transform(geometry, backend)
                row[f"build_{backend}_s"] = time.perf_counter() - start
                y = A(x)
                times[backend] = {
                    "A": seconds_per_call(lambda A, x: A(x), A, x, repeats=repeats),
                    "AT": seconds_per_call(lambda A, y: A.T(y), A, y, repeats=repeats),
                    "A batch8": seconds_per_call(lambda A, x: A(x), A, jnp.stack([x] * 8), repeats=repeats),
                }
            for op in ("A", "AT", "A batch8"):
                row[f"{op} sparse ms"] = 1e3 * times["sparse"][op]
                row[f"{op} astra ms"] = 1e3 * times["astra"][op]
                row[f"{op} astra/sparse"] = times["astra"][op] / times["sparse"][op]
            rows.append(row)
            print(row, flush=True)
    report(rows, args.json, "Ray transform: ms per call and the ratio astra/sparse (same run)")


if __name__ == "__main__":
    main()
