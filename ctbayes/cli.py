"""The `ctbayes` command: a thin layer that maps flags onto the library.

Bad input ends with one sentence on stderr and exit status 2, never a traceback and never a
partial output file (all outputs are written atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ctbayes import __version__, progress
from ctbayes.dip.fit import NETWORKS, DIPConfig, network_preset
from ctbayes.errors import InputError
from ctbayes.io.atomic import prepare_output_directory, prepare_output_file
from ctbayes.laplace.priors import PRIOR_KINDS
from ctbayes.uncertainty import METHODS as UNCERTAINTY
from ctbayes.uncertainty import UncertaintyConfig


def _int_tuple(text: str):
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctbayes", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ctbayes {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="reconstruct a scan file")
    rec.add_argument("scan", type=Path)
    rec.add_argument("-o", "--output", type=Path, help="result file (default: SCAN.ctbayes.h5)")
    rec.add_argument("--method", default="dip", choices=["dip", "fbp", "tv"],
                     help="deep image prior (default), filtered back-projection or TV")
    rec.add_argument("--backend", default="auto", choices=["auto", "astra", "sparse"],
                     help="ray transform: ASTRA callback, sparse matrix in XLA, or automatic")
    rec.add_argument("--projector", help="ASTRA CPU projector (linear, strip, line, line_fanflat, strip_fanflat)")
    rec.add_argument("--filter", default="Ram-Lak", help="FBP filter (Ram-Lak, Shepp-Logan, Cosine, Hamming, Hann)")
    rec.add_argument("--frequency-scaling", type=float, default=1.0, help="FBP filter cut-off in (0, 1]")
    rec.add_argument("--tv", type=float, default=None,
                     help="TV weight: for --method tv the weight w (default: discrepancy principle); "
                          f"for dip the scale-free gamma (default {DIPConfig.gamma})")
    rec.add_argument("--tv-iterations", type=int, default=1000, help="PDHG iterations of --method tv")
    rec.add_argument("--iterations", type=int, default=DIPConfig.iterations, help="DIP Adam steps")
    rec.add_argument("--lr", type=float, default=DIPConfig.lr, help="DIP learning rate")
    rec.add_argument("--channels", type=_int_tuple, default=DIPConfig.channels,
                     help="U-Net channels: one number or one per scale, comma-separated")
    rec.add_argument("--skip-channels", type=_int_tuple, default=DIPConfig.skip_channels,
                     help="U-Net skip channels: one number or one per scale (0: no skip)")
    rec.add_argument("--scales", type=int, default=DIPConfig.scales, help="U-Net scales")
    rec.add_argument("--network", default="default", choices=sorted(NETWORKS),
                     help="named U-Net size; large: six scales up to 128 channels (about 2.2M "
                          "parameters, as in the published Walnut experiments), replacing "
                          "--scales, --channels and --skip-channels")
    rec.add_argument("--seed", type=int, default=DIPConfig.seed, help="seed of the DIP (network, input z, dropout) and of the posterior (EM, samples)")
    rec.add_argument("--checkpoint-every", type=int, default=DIPConfig.checkpoint_every,
                     help="DIP iterations between checkpoints (OUT.ckpt.npz beside the output)")
    rec.add_argument("--resume", action="store_true", help="continue an interrupted DIP fit from its checkpoint")
    rec.add_argument("--no-progress", action="store_true",
                     help="no progress bars: one line per phase on stderr")
    rec.add_argument("--memory-budget", type=float, default=UncertaintyConfig.memory_budget,
                     help="GB the uncertainty pass may use (default: a share of the available "
                          "memory; 0: no budget)")
    rec.add_argument("--uncertainty", default=UncertaintyConfig.method, choices=UNCERTAINTY,
                     help="per-pixel uncertainty of the DIP: linearised Laplace (default), MC "
                          "dropout, mean-field VI, score-based VI, or none")
    rec.add_argument("--samples", type=int, default=UncertaintyConfig.samples,
                     help="posterior samples behind the std map and the metrics")
    rec.add_argument("--save-samples", type=int, default=0,
                     help="how many posterior samples to store in the result file")
    rec.add_argument("--prior", default=UncertaintyConfig.prior, choices=PRIOR_KINDS,
                     help="Laplace prior over the network weights")
    rec.add_argument("--edge-features", action="store_true",
                     help="Laplace: add a per-pixel edge displacement whose variance the EM "
                          "learns from the scan (std where the image has edges)")
    rec.add_argument("--em-cycles", type=int, default=UncertaintyConfig.em_cycles,
                     help="Laplace: EM cycles (at most) for the prior and noise variances")
    rec.add_argument("--em-tol", type=float, default=UncertaintyConfig.em_tol,
                     help="Laplace: stop the EM once no variance moves by more than this "
                          "relative amount in a cycle (0: run all cycles)")
    rec.add_argument("--solver", default=UncertaintyConfig.solver, choices=["cg", "sgd", "exact"],
                     help="Laplace sampler: preconditioned CG, SGD, or exact (small images)")
    rec.add_argument("--dropout", type=float, default=UncertaintyConfig.dropout,
                     help="dropout rate of the DIP-MCDO fit (--uncertainty mcdo)")
    rec.add_argument("--ensemble", type=int, default=UncertaintyConfig.ensemble,
                     help="fit this many DIPs (seeds SEED, SEED+1, ...) and mix their "
                          "posteriors; costs that many times one run")
    rec.add_argument("--std-scale", type=float, default=UncertaintyConfig.std_scale,
                     help="multiply the std map and the samples' deviations by this "
                          "calibration factor (from `ctbayes calibrate` on scans with a "
                          "known truth or reference)")
    rec.add_argument("--edge-std", type=float, default=UncertaintyConfig.edge_std,
                     help="add an edge error of this many pixels times |grad image| to the "
                          "std map and samples (from `ctbayes calibrate`; 0: none)")
    rec.add_argument("--figures", type=Path, help="directory for PNG figures")

    info = sub.add_parser("info", help="describe a scan file")
    info.add_argument("scan", type=Path)

    imp = sub.add_parser("import", help="convert HTC2022 .mat, Data Exchange or NXtomo files")
    imp.add_argument("source", type=Path)
    imp.add_argument("output", type=Path)
    imp.add_argument("--every", type=int, default=1, help="keep every k-th view")
    imp.add_argument("--angle-range", type=float, nargs=2, metavar=("START", "STOP"),
                     help="keep views with START <= angle < STOP (degrees)")
    imp.add_argument("--binning", type=int, default=1, help="average this many detector pixels")
    imp.add_argument("--image-size", type=int, help="reconstruction grid side, same field of view")
    imp.add_argument("--row", type=int, help="detector row of a 3D Data Exchange scan (default: middle)")
    imp.add_argument("--center", type=float, help="rotation-axis detector column (default: estimated)")

    from ctbayes.design.command import add_parser as add_design_parser

    add_design_parser(sub)

    cal = sub.add_parser("calibrate", help="the --std-scale that calibrates std maps, from "
                                           "results of scans with a truth or reference")
    cal.add_argument("results", type=Path, nargs="+", help="result files (.ctbayes.h5)")

    sim = sub.add_parser("simulate", help="simulate a scan of a phantom, with its ground truth")
    sim.add_argument("output", type=Path)
    sim.add_argument("--phantom", default="shepp-logan", choices=["shepp-logan", "ellipses", "rectangles"])
    sim.add_argument("--size", type=int, default=64)
    sim.add_argument("--beam", default="parallel", choices=["parallel", "fanflat"])
    sim.add_argument("--views", type=int, default=30)
    sim.add_argument("--arc", type=float, default=None, help="angular range in degrees (default 180 parallel, 360 fan)")
    sim.add_argument("--det-count", type=int)
    sim.add_argument("--noise", default="gaussian", choices=["gaussian", "poisson", "none"])
    sim.add_argument("--noise-level", type=float, default=0.05, help="Gaussian std relative to mean |Ax|")
    sim.add_argument("--photons", type=float, default=1e4, help="incident photons per pixel (Poisson)")
    sim.add_argument("--supersample", type=int, default=2, help="project a pixel-replicated copy this many times finer (a projector other than the reconstruction's)")
    sim.add_argument("--render", type=int, default=1, help="render the phantom this many times finer and measure it there with detector bins of finite width; the truth is its block means (no inverse crime; --supersample is then unused)")
    sim.add_argument("--seed", type=int, default=0)
    return parser


def _reconstruct(args):
    from ctbayes.io import read_scan
    from ctbayes.reconstruct import ReconstructConfig, member_checkpoints, reconstruct
    from ctbayes.results import default_output, write_result

    scan = read_scan(args.scan)
    output = prepare_output_file(args.output or default_output(args.scan), "result file")
    if args.figures:
        prepare_output_directory(args.figures)
    dip = DIPConfig(iterations=args.iterations, lr=args.lr, channels=args.channels,
                    skip_channels=args.skip_channels, scales=args.scales, seed=args.seed,
                    checkpoint_every=args.checkpoint_every,
                    **({"gamma": args.tv} if args.tv is not None and args.method == "dip" else {}))
    dip = network_preset(dip, args.network)
    config = ReconstructConfig(method=args.method, backend=args.backend, projector=args.projector,
                               fbp_filter=args.filter, fbp_frequency_scaling=args.frequency_scaling,
                               tv_weight=args.tv, tv_iterations=args.tv_iterations, dip=dip,
                               uncertainty=UncertaintyConfig(
                                   method=args.uncertainty, samples=args.samples,
                                   save_samples=args.save_samples, prior=args.prior,
                                   em_cycles=args.em_cycles, em_tol=args.em_tol,
                                   solver=args.solver, edge_features=args.edge_features,
                                   dropout=args.dropout, seed=args.seed,
                                   ensemble=args.ensemble, std_scale=args.std_scale,
                                   edge_std=args.edge_std, memory_budget=args.memory_budget)
                               if args.method == "dip" else UncertaintyConfig(
                                   method="none", ensemble=args.ensemble))
    checkpoint = output.with_name(output.name.removesuffix(".h5") + ".ckpt.npz")
    progress.configure("lines" if args.no_progress else "bar")
    result = reconstruct(scan, config, checkpoint=checkpoint, resume=args.resume,
                         progress=not args.no_progress)
    write_result(result, output, scan_path=args.scan)
    for path in member_checkpoints(checkpoint, config.uncertainty.ensemble):
        path.unlink(missing_ok=True)  # the result is safe: the checkpoints have done their job
    if args.figures:
        from ctbayes.figures import reconstruction_figures, uncertainty_figures

        reconstruction_figures(scan, result, args.figures)
        if result.std is not None:
            uncertainty_figures(scan, result, args.figures)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    print(f"{result.method}: wrote {output}" + (f" ({summary})" if summary else ""))


def _info(args):
    import numpy as np

    from ctbayes.io import read_scan

    scan = read_scan(args.scan)
    g = scan.geometry
    print(f"{args.scan}: {g.describe()}")
    print(f"sinogram {scan.sinogram.shape}, values {scan.sinogram.min():.4g} to {scan.sinogram.max():.4g}")
    if scan.ground_truth is not None:
        gt = scan.ground_truth
        print(f"ground truth {gt.shape}, values {gt.min():.4g} to {gt.max():.4g}")
    if scan.noise_std is not None:
        print(f"noise std {scan.noise_std:.4g} ({100 * scan.noise_std / np.abs(scan.sinogram).mean():.2f}% of mean |y|)")
    for name, image in scan.references.items():
        print(f"reference {name} {image.shape}, values {image.min():.4g} to {image.max():.4g}")


def _import(args):
    from ctbayes.io import write_scan
    from ctbayes.io.importers import import_scan

    options = {k: getattr(args, k) for k in ("every", "angle_range", "binning", "image_size", "row", "center")}
    prepare_output_file(args.output, "scan file")
    scan = import_scan(args.source, **{k: v for k, v in options.items() if v is not None})
    write_scan(scan, args.output)
    print(f"wrote {args.output}: {scan.geometry.describe()}")


def _simulate(args):
    from ctbayes.io import write_scan
    from ctbayes.phantoms import make_phantom
    from ctbayes.simulate import default_geometry, simulate_scan

    if args.size < 8:
        raise InputError(f"--size must be at least 8 pixels, got {args.size}.")
    arc = args.arc if args.arc is not None else (180.0 if args.beam == "parallel" else 360.0)
    geometry = default_geometry(args.size, beam=args.beam, views=args.views, arc_degrees=arc,
                                det_count=args.det_count)
    if not 1 <= args.render <= 16:
        raise InputError(f"--render must be between 1 and 16, got {args.render}.")
    prepare_output_file(args.output, "scan file")
    image = make_phantom(args.phantom, args.size * args.render, args.seed)
    scan = simulate_scan(image, geometry, noise=args.noise, noise_level=args.noise_level,
                         photons=args.photons, seed=args.seed, supersample=args.supersample)
    write_scan(scan, args.output)
    print(f"wrote {args.output}: {geometry.describe()}")


def _calibrate(args):
    from ctbayes.calibration import (calibration_target, common_posterior_flags,
                                     fit_scale_and_edge, std_scale, unscaled_z_rms)
    from ctbayes.io.hdf5 import read_scan
    from ctbayes.metrics import z_rms
    from ctbayes.results import read_result, recorded_scan_path

    results = [read_result(path) for path in args.results]
    flags = common_posterior_flags(results, [str(path) for path in args.results])
    scans = [recorded_scan_path(path) for path in args.results]
    targets = [calibration_target(result, read_scan(scan)) if scan else None
               for result, scan in zip(results, scans)]
    if all(target is not None for target in targets):  # the truth per pixel: scale and edges
        for path, (truth, mean, std, mask, _) in zip(args.results, targets):
            inside = (slice(None),) if mask is None else mask
            print(f"{path}: z_rms {z_rms(truth[inside], mean[inside], std[inside]):.4g} (unscaled)")
        scale, edge = fit_scale_and_edge(targets)
        if any(target[4] is not None for target in targets):
            print("(allowing for the reference FBP's own noise, drawn when it was imported)")
        print(f"std scale {scale:.4g}, edge std {edge:.4g} px: use ctbayes reconstruct SCAN "
              f"{flags} --std-scale {scale:.4g} --edge-std {edge:.4g}")
        return
    values = [unscaled_z_rms(result, str(path)) for path, result in zip(args.results, results)]
    for path, value in zip(args.results, values):
        print(f"{path}: z_rms {value:.4g} (unscaled)")
    print("(a scan file was not found or has no truth or reference FBP: no edge term)")
    scale = std_scale(values)
    print(f"std scale {scale:.4g}: use ctbayes reconstruct SCAN {flags} --std-scale {scale:.4g}")


def _design(args):
    from ctbayes.design.command import run

    run(args)


COMMANDS = {"reconstruct": _reconstruct, "info": _info, "import": _import, "simulate": _simulate,
            "design": _design, "calibrate": _calibrate}


def _enable_compile_cache() -> None:
    """Keep XLA's compiled programs between runs (JAX's persistent compilation cache): on a
    CPU, compiling the DIP step and the Laplace solvers takes longer than running them on
    small images, and a second run on a scan of the same shape then skips it. The folder is
    $CTBAYES_CACHE_DIR, else ~/.cache/ctbayes/xla; CTBAYES_CACHE_DIR=off turns it off."""
    import os

    folder = os.environ.get("CTBAYES_CACHE_DIR", str(Path.home() / ".cache" / "ctbayes" / "xla"))
    if folder.lower() in ("off", "0", "none", ""):
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _out_of_memory(detail: str) -> int:
    print(f"ctbayes: error: not enough memory ({detail}); try a smaller image, network or "
          "sample count.", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if argv is None:  # a real command line (tests call main with a list and keep no cache)
        _enable_compile_cache()
    try:
        COMMANDS[args.command](args)
    except InputError as err:
        print(f"ctbayes: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ctbayes: interrupted.", file=sys.stderr)
        return 130
    except MemoryError as err:
        return _out_of_memory(str(err))
    except OSError as err:
        print(f"ctbayes: error: {err.strerror or err} ({err.filename or 'file system'}).", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - the CLI promises no raw tracebacks
        if args.debug:
            raise
        if "RESOURCE_EXHAUSTED" in str(err):  # XLA's out-of-memory
            return _out_of_memory(str(err).splitlines()[0])
        print(f"ctbayes: internal error: {type(err).__name__}: {err} (rerun with --debug for details).",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
