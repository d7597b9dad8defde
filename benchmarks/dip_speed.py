"""Where a DIP iteration spends its time: ray transform vs U-Net, side by side in one run.

For each image size (and each ray-transform backend available), times in the same process
one A plus one A^T, one network forward+backward, and one complete DIP Adam step, and reports
iterations per second and the operator and network fractions of a step (see
`ctbayes.dip.fit.time_breakdown`). On a machine with ASTRA CUDA the "astra" backend runs on
the GPU.

    python benchmarks/dip_speed.py [--quick] [--json PATH] [--sizes 64 128]
"""

from __future__ import annotations

import jax

from common import parse_args, report

from ctbayes.dip.fit import DIPConfig, time_breakdown
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import shepp_logan
from ctbayes.simulate import default_geometry


def main():
    args = parse_args(__doc__.splitlines()[0],
                      lambda p: p.add_argument("--sizes", type=int, nargs="+", default=[64, 128]))
    repeats = 5 if args.quick else 20
    rows = []
    for n in args.sizes:
        geometry = default_geometry(n, views=30)
        x = shepp_logan(n)
        backends = ["sparse", "astra"]
        for backend in backends:
            A = make_ray_transform(geometry, backend=backend)
            y = A(jax.numpy.asarray(x))
            t = time_breakdown(A, y, DIPConfig(), repeats=repeats)
            s = t["seconds_per_iteration"]
            row = dict(image=f"{n}x{n}", views=30, backend=backend,
                       projector=A.projector, jax_device=jax.default_backend(),
                       it_per_s=t["iterations_per_second"], ms_step=1e3 * s["step"],
                       ms_operator=1e3 * s["operator"], ms_network=1e3 * s["network"],
                       operator_fraction=t["operator_fraction"],
                       network_fraction=t["network_fraction"])
            rows.append(row)
            print(row, flush=True)
    report(rows, args.json, "DIP iteration time: ray transform (A and A^T) vs network (fwd+bwd)")


if __name__ == "__main__":
    main()
