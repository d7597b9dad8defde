"""The `ctbayes design` subcommand: retrospective angle selection on a dense scan.

Wire it with `add_parser(subparsers)` and dispatch `run(args)`; bad input raises InputError.
Every flag's default and check come from `LoopConfig` and `DesignerConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ctbayes.design.acquisition import STRATEGIES
from ctbayes.design.designer import RECONSTRUCTIONS, DesignerConfig
from ctbayes.design.loop import LoopConfig
from ctbayes.errors import InputError
from ctbayes.io.atomic import prepare_output_directory, prepare_output_file
from ctbayes.options import Option, add_options, collect
from ctbayes.posteriors.registry import Method

OPTIONS = (
    Option("--initial", LoopConfig, "initial", "equidistant views to start from"),
    Option("--acquire", LoopConfig, "acquire", "views to acquire"),
    Option("--per-step", LoopConfig, "per_step", "views per step (greedy batch)"),
    Option("--acquisition", DesignerConfig, "acquisition",
           f"one of {', '.join(STRATEGIES)}"),
    Option("--posterior", DesignerConfig, "posterior", "linearised Laplace of the DIP, MC "
           "dropout, variational posteriors over the DIP weights (refitted every step: "
           "slow), or a Matern GP image prior", choices=tuple(m.value for m in Method)),
    Option("--reconstruction", DesignerConfig, "reconstruction", "image at each step: "
           "refitted DIP, or the posterior mean", choices=RECONSTRUCTIONS),
    Option("--samples", DesignerConfig, "samples", "predictive samples per step"),
    Option("--refit-every", DesignerConfig, "refit_every", "views between relinearisations"),
    Option("--refit-hyper", DesignerConfig, "refit_hyper", "refit hyperparameters then too"),
    Option("--refit-iterations", DesignerConfig, "refit_iterations", "Adam steps of each refit"),
    Option("--backend", DesignerConfig, "backend", "ray-transform backend",
           choices=("auto", "astra", "sparse")),
    Option("--seed", DesignerConfig, "seed", "seed of the DIP, the samples and random picks"),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `design` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("design", help="choose projection angles adaptively on a dense scan",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("scan", type=Path, help="dense scan: all its views are candidates")
    p.add_argument("-o", "--output", type=Path, required=True, help="design log (HDF5)")
    add_options(p, OPTIONS)
    p.add_argument("--strategies", help="comma-separated strategies to run one after another "
                                        "(none: --acquisition only)")
    p.add_argument("--dip-iterations", type=int, default=DesignerConfig.dip.iterations,
                   help="Adam steps of the first fit")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--figures", type=Path, help="directory for PNG figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def loop_configs(values: dict, noise_variance: float | None = None) -> dict[str, LoopConfig]:
    """The `LoopConfig` of each strategy from flat option values (the parsed flags by dest
    name; absent keys take the defaults): the strategies listed in "strategies" (comma-
    separated), else "acquisition". noise_variance: the scan's known one, if any."""
    kwargs = collect({k: v for k, v in values.items() if v is not None}, OPTIONS)
    designer = dict(kwargs.get(DesignerConfig, {}))
    listed = values.get("strategies") or designer.get("acquisition", DesignerConfig.acquisition)
    names = [s.strip() for s in listed.split(",") if s.strip()]
    if not names:
        raise InputError("No design strategy given.")
    dip = DesignerConfig.dip
    if values.get("dip_iterations") is not None:
        dip = dataclasses.replace(dip, iterations=values["dip_iterations"])
    dip = dataclasses.replace(dip, seed=designer.get("seed", DesignerConfig.seed))
    designer |= {"dip": dip, "noise_variance": noise_variance}
    return {name: LoopConfig(**kwargs.get(LoopConfig, {}),
                             designer=DesignerConfig(**(designer | {"acquisition": name})))
            for name in names}


def run(args) -> int:
    """Run the design for each strategy; write the log, print a summary, draw figures."""
    from ctbayes.design.figures import design_figures
    from ctbayes.design.loop import run_design
    from ctbayes.io import read_scan

    scan = read_scan(args.scan)
    if scan.geometry.is_3d:
        raise InputError(f"{args.scan}: angle design supports 2D scans only.")
    noise = scan.noise_std ** 2 if scan.noise_std else None
    configs = loop_configs(vars(args), noise)
    prepare_output_file(args.output, "design log", inputs=[args.scan])
    if args.figures:
        prepare_output_directory(args.figures)
    runs = {}
    for strategy, config in configs.items():
        runs[strategy] = run_design(scan, config, args.output, resume=args.resume,
                                    progress=not args.no_progress)
        r = runs[strategy]
        print(f"{strategy}: {r.num_angles[-1]} angles, PSNR {r.psnr[-1]:.2f} dB, "
              f"SSIM {r.ssim[-1]:.3f}, {r.seconds[-1]:.1f} s")
    print(f"wrote {args.output}")
    if args.figures:
        design_figures(runs, args.figures)
    return 0
