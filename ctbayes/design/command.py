"""The `ctbayes design` subcommand: retrospective angle selection on a dense scan.

Wire it with `add_parser(subparsers)` and dispatch `run(args)`; bad input raises InputError.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctbayes.design.acquisition import STRATEGIES
from ctbayes.errors import InputError
from ctbayes.io.atomic import prepare_output_directory, prepare_output_file


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("design", help="choose projection angles adaptively on a dense scan")
    p.add_argument("scan", type=Path, help="dense scan: all its views are candidates")
    p.add_argument("-o", "--output", type=Path, required=True, help="design log (HDF5)")
    p.add_argument("--initial", type=int, default=5, help="equidistant views to start from")
    p.add_argument("--acquire", type=int, default=30, help="views to acquire")
    p.add_argument("--per-step", type=int, default=1, help="views per step (greedy batch)")
    p.add_argument("--acquisition", default="eig", help=f"one of {', '.join(STRATEGIES)}")
    p.add_argument("--strategies", help="comma-separated strategies to run one after another "
                                        "(default: --acquisition only)")
    p.add_argument("--posterior", default="laplace", choices=["laplace", "mfvi", "score-vi", "gp"],
                   help="linearised Laplace of the DIP (default), variational posteriors over "
                        "the DIP weights (refitted every step: slow), or a Matern GP image prior")
    p.add_argument("--reconstruction", default="dip", choices=["dip", "mean"],
                   help="image at each step: refitted DIP, or the posterior mean")
    p.add_argument("--samples", type=int, default=32, help="predictive samples per step")
    p.add_argument("--refit-every", type=int, default=5, help="views between relinearisations")
    p.add_argument("--refit-hyper", action="store_true", help="refit hyperparameters then too")
    p.add_argument("--dip-iterations", type=int, default=1000, help="Adam steps of the first fit")
    p.add_argument("--refit-iterations", type=int, default=200, help="Adam steps of each refit")
    p.add_argument("--backend", default="auto", choices=["auto", "astra", "sparse"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--figures", type=Path, help="directory for PNG figures")
    p.add_argument("--no-progress", action="store_true")
    return p


def _strategies(args) -> list[str]:
    names = [s.strip() for s in (args.strategies or args.acquisition).split(",") if s.strip()]
    bad = [s for s in names if s not in STRATEGIES]
    if bad or not names:
        raise InputError(f"Unknown strategy {bad[0] if bad else '(none)'!r}; expected one of "
                         f"{', '.join(STRATEGIES)}.")
    return names


def run(args) -> int:
    """Run the design for each strategy; write the log, print a summary, draw figures."""
    from ctbayes.design.designer import DesignerConfig, laplace_factory, vi_factory
    from ctbayes.design.figures import design_figures
    from ctbayes.design.gp_prior import gp_factory
    from ctbayes.design.loop import LoopConfig, run_design
    from ctbayes.dip.fit import DIPConfig
    from ctbayes.io import read_scan

    strategies = _strategies(args)
    if args.samples < 2:
        raise InputError(f"--samples must be >= 2 (scores need a spread), got {args.samples}.")
    for name in ("dip_iterations", "refit_iterations", "refit_every"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}.")
    scan = read_scan(args.scan)
    if scan.geometry.is_3d:
        raise InputError(f"{args.scan}: angle design supports 2D scans only.")
    prepare_output_file(args.output, "design log", inputs=[args.scan])
    if args.figures:
        prepare_output_directory(args.figures)
    noise = scan.noise_std ** 2 if scan.noise_std else None
    if args.posterior == "gp":
        factory = gp_factory(noise_variance=noise)
    elif args.posterior == "laplace":
        factory = laplace_factory()
    else:
        factory = vi_factory(args.posterior, samples=args.samples, seed=args.seed)
    runs = {}
    for strategy in strategies:
        designer = DesignerConfig(
            acquisition=strategy, samples=args.samples, refit_every=args.refit_every,
            refit_hyper=args.refit_hyper, reconstruction=args.reconstruction,
            dip=DIPConfig(iterations=args.dip_iterations, seed=args.seed),
            refit_iterations=args.refit_iterations, backend=args.backend, seed=args.seed)
        config = LoopConfig(args.initial, args.acquire, args.per_step, designer)
        runs[strategy] = run_design(scan, config, args.output, resume=args.resume,
                                    posterior_factory=factory, progress=not args.no_progress)
        r = runs[strategy]
        print(f"{strategy}: {r.num_angles[-1]} angles, PSNR {r.psnr[-1]:.2f} dB, "
              f"SSIM {r.ssim[-1]:.3f}, {r.seconds[-1]:.1f} s")
    print(f"wrote {args.output}")
    if args.figures:
        design_figures(runs, args.figures)
    return 0
