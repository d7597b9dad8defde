"""The `ctbayes` command: a thin layer that maps flags onto the library.

Bad input ends with one sentence on stderr and exit status 2, never a traceback and never a
partial output file (all outputs are written atomically).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ctbayes import __version__, progress
from ctbayes.errors import DataWarning, InputError, naming
from ctbayes.io import lock
from ctbayes.io.atomic import checkpoint_path, prepare_output_directory, prepare_output_file
from ctbayes.options import Option, add_options
from ctbayes.phantoms import PHANTOMS
from ctbayes.reconstruct import OPTIONS as RECONSTRUCT_OPTIONS
from ctbayes.simulate import NOISE_MODELS, SIM_BEAMS, SimulationConfig

HELP = argparse.ArgumentDefaultsHelpFormatter  # every --help shows every default

SIMULATE_OPTIONS = (
    Option("--phantom", SimulationConfig, "phantom", "phantom to draw", choices=PHANTOMS),
    Option("--size", SimulationConfig, "size", "image side in pixels"),
    Option("--beam", SimulationConfig, "beam", "beam geometry", choices=SIM_BEAMS),
    Option("--views", SimulationConfig, "views", "number of projection angles"),
    Option("--arc", SimulationConfig, "arc", "angular range in degrees (none: 180 parallel, "
           "360 fan)", type=float),
    Option("--det-count", SimulationConfig, "det_count", "detector pixels (none: the whole "
           "image in view)", type=int),
    Option("--noise", SimulationConfig, "noise", "noise model", choices=NOISE_MODELS),
    Option("--noise-level", SimulationConfig, "noise_level", "Gaussian std relative to mean |Ax|"),
    Option("--photons", SimulationConfig, "photons", "incident photons per pixel (Poisson)"),
    Option("--supersample", SimulationConfig, "supersample", "project a pixel-replicated copy "
           "this many times finer (a projector other than the reconstruction's)"),
    Option("--render", SimulationConfig, "render", "render the phantom this many times finer "
           "and measure it there with detector bins of finite width; the truth is its block "
           "means (no inverse crime; --supersample is then unused)"),
    Option("--seed", SimulationConfig, "seed", "seed of the phantom and the noise"),
)


def build_parser() -> argparse.ArgumentParser:
    """The `ctbayes` argument parser, every subcommand with its flags."""
    parser = argparse.ArgumentParser(prog="ctbayes", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ctbayes {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser("reconstruct", help="reconstruct a scan file", formatter_class=HELP)
    rec.add_argument("scan", type=Path, help="scan file (HDF5)")
    rec.add_argument("-o", "--output", type=Path, help="result file (none: SCAN.ctbayes.h5)")
    add_options(rec, RECONSTRUCT_OPTIONS)
    rec.add_argument("--resume", action="store_true", help="continue an interrupted DIP fit from its checkpoint")
    rec.add_argument("--no-progress", action="store_true",
                     help="no progress bars: one line per phase on stderr")
    rec.add_argument("--figures", type=Path, help="directory for PNG figures")

    info = sub.add_parser("info", help="describe a scan file", formatter_class=HELP)
    info.add_argument("scan", type=Path, help="scan file (HDF5)")

    imp = sub.add_parser("import", help="convert HTC2022 .mat, Data Exchange or NXtomo files",
                         formatter_class=HELP)
    imp.add_argument("source", type=Path, help="file to import")
    imp.add_argument("output", type=Path, help="scan file to write (HDF5)")
    imp.add_argument("--every", type=int, default=1, help="keep every k-th view")
    imp.add_argument("--angle-range", type=float, nargs=2, metavar=("START", "STOP"),
                     help="keep views with START <= angle < STOP (degrees)")
    imp.add_argument("--binning", type=int, default=1, help="average this many detector pixels")
    imp.add_argument("--image-size", type=int, help="reconstruction grid side, same field of view")
    imp.add_argument("--row", type=int, help="detector row of a 3D Data Exchange scan (default: middle)")
    imp.add_argument("--center", type=float, help="rotation-axis detector column (default: estimated)")
    imp.add_argument("--disc-truth", action="store_true",
                     help="HTC2022 solid_disc: fit a homogeneous disc to the full measurement "
                          "and store it as the ground truth")

    from ctbayes.design.command import add_parser as add_design_parser

    add_design_parser(sub)

    cal = sub.add_parser("calibrate", help="the --std-scale that calibrates std maps, from "
                                           "results of scans with a truth or reference",
                         formatter_class=HELP)
    cal.add_argument("results", type=Path, nargs="+", help="result files (.ctbayes.h5)")
    cal.add_argument("-o", "--output", type=Path,
                     help="write the calibration with the protocol it holds for to this JSON "
                          "file, for `reconstruct --calibration`")
    cal.add_argument("--conformal", type=float, metavar="ALPHA",
                     help="with -o: a split-conformal std scale whose 1-ALPHA interval has "
                          "coverage >= 1-ALPHA over exchangeable pixels (e.g. 0.1)")

    sim = sub.add_parser("simulate", help="simulate a scan of a phantom, with its ground truth",
                         formatter_class=HELP)
    sim.add_argument("output", type=Path, help="scan file to write (HDF5)")
    add_options(sim, SIMULATE_OPTIONS)
    for subparser in sub.choices.values():  # --debug also after the subcommand
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show tracebacks of internal errors")
    return parser


def _reconstruct(args):
    from ctbayes.io import read_scan
    from ctbayes.reconstruct import config_from_options, member_checkpoints, reconstruct
    from ctbayes.results import default_output, write_result

    scan = read_scan(args.scan)
    output = prepare_output_file(args.output or default_output(args.scan), "result file",
                                 inputs=[args.scan])
    if args.figures:
        prepare_output_directory(args.figures)
    config = config_from_options(vars(args))
    checkpoint = checkpoint_path(output)
    progress.configure("lines" if args.no_progress else "bar")
    try:
        result = reconstruct(scan, config, checkpoint=checkpoint, resume=args.resume,
                             progress=not args.no_progress)
    except InputError as err:
        raise naming(err, args.scan) from None
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

    options = {k: getattr(args, k) for k in ("every", "angle_range", "binning", "image_size", "row", "center",
                                           "disc_truth")}
    prepare_output_file(args.output, "scan file", inputs=[args.source])
    scan = import_scan(args.source, **{k: v for k, v in options.items() if v is not None})
    write_scan(scan, args.output)
    print(f"wrote {args.output}: {scan.geometry.describe()}")
    if "rotation_center" in scan.provenance:
        print(f"rotation centre: detector column {scan.provenance['rotation_center']:.2f} of "
              f"{args.source} ({scan.provenance['rotation_center_source']}), moved to the "
              "detector centre; stored as /entry/ctbayes/provenance attribute rotation_center")


def _simulate(args):
    from ctbayes.io import write_scan
    from ctbayes.options import collect
    from ctbayes.simulate import SimulationConfig, simulate

    config = SimulationConfig(**collect(vars(args), SIMULATE_OPTIONS).get(SimulationConfig, {}))
    prepare_output_file(args.output, "scan file")
    scan = simulate(config)
    write_scan(scan, args.output)
    print(f"wrote {args.output}: {scan.geometry.describe()}")


def _calibrate(args):
    from ctbayes.calibration import calibrate
    from ctbayes.io.hdf5 import read_scan
    from ctbayes.results import read_result, recorded_scan_path

    if args.output is not None or args.conformal is not None:
        return _calibrate_protocol(args)
    results = [read_result(path) for path in args.results]
    scans = [recorded_scan_path(path) for path in args.results]
    found = calibrate(results, [read_scan(scan) if scan else None for scan in scans],
                      [str(path) for path in args.results])
    for path, value in zip(args.results, found.z_rms):
        print(f"{path}: z_rms {value:.4g} (unscaled)")
    use = f"use ctbayes reconstruct SCAN {found.flags} --std-scale {found.std_scale:.4g}"
    if found.with_edge:
        if found.reference_noise:
            print("(allowing for the reference FBP's own noise, drawn when it was imported)")
        print(f"std scale {found.std_scale:.4g}, edge std {found.edge_std:.4g} px: "
              f"{use} --edge-std {found.edge_std:.4g}")
    else:
        print("(a scan file was not found or has no truth or reference FBP: no edge term)")
        print(f"std scale {found.std_scale:.4g}: {use}")


def _calibrate_protocol(args):
    from ctbayes.protocol import learn_protocol, write_protocol

    if args.output is None:
        raise InputError("--conformal writes a protocol calibration: give its file with -o.")
    output = prepare_output_file(args.output, "calibration file", inputs=args.results)
    learned = learn_protocol(args.results, args.conformal)
    for path, value in zip(args.results, learned.pop("z_rms")):
        print(f"{path}: z_rms {value:.4g} (unscaled)")
    write_protocol(output, **learned)
    c = learned["calibration"]
    detail = (f"conformal |z| quantile {c['quantile']:.4g} (coverage >= {1 - c['alpha']:.3g} for "
              f"exchangeable pixels), std scale {c['std_scale']:.4g}"
              if c["kind"] == "conformal" else
              f"std scale {c['std_scale']:.4g}, edge std {c['edge_std']:.4g} px")
    print(f"{detail} from {learned['scans']} scans, {learned['pixels']} pixels: wrote {output}; "
          f"use ctbayes reconstruct SCAN --calibration {output}")


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


def _resume_hint(args) -> str:
    """How to continue an interrupted run, where it left a checkpoint to continue from."""
    if args.command == "reconstruct":
        from ctbayes.reconstruct import member_checkpoints
        from ctbayes.results import default_output

        output = args.output or default_output(args.scan)
        saved = [p for p in member_checkpoints(checkpoint_path(output), args.ensemble) if p.exists()]
    elif args.command == "design":
        saved = [args.output] if args.output.exists() else []
    else:
        return ""
    return (f"; run the same command with --resume to continue from {saved[0]}" if saved else "")


def _warning_printer(show_other):
    """Print a DataWarning as one line `ctbayes: warning: ...`; others as before."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"ctbayes: warning: {message}", file=sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


def _out_of_memory(detail: str) -> int:
    print(f"ctbayes: error: not enough memory ({detail}); try a smaller image, network or "
          "sample count.", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # a real command line (tests call main with a list and keep no cache)
        _enable_compile_cache()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)
            warnings.showwarning = _warning_printer(warnings.showwarning)
            COMMANDS[args.command](args)
    except InputError as err:
        print(f"ctbayes: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctbayes: interrupted{_resume_hint(args)}.", file=sys.stderr)
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
    finally:
        lock.release_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
