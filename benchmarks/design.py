"""Adaptive angle selection against the equidistant and random baselines.

Strategies x budgets (PSNR, SSIM, seconds) on simulated 64x64 rectangles and ellipses with
200 candidate angles (5 initial, up to 35 acquired), and on HTC2022 `ta` with its 720 views
as candidates (scored against the FBP of all 720 views, which has no ground truth). Then,
per setting and adaptive strategy, the summary the design loop is judged by: the fewest
angles with which it reaches the equidistant baseline's final PSNR (target: at least 25%
fewer), and its worst PSNR gap to equidistant at any budget (target: never more than 0.5 dB
below). The `meets_*` columns say where a target is not met. Times are cumulative compute
seconds of each run, with their ratio to the equidistant run of the same setting.

    python benchmarks/design.py [--quick] [--posterior laplace|gp] [--settings rectangles,htc]
        [--per-step K] [--json PATH]

--quick: 32x32 / 60 candidates / 8 acquired (HTC: 64x64, 180 candidates), GP posterior with
the posterior mean as reconstruction, a few minutes on two cores. The full setting uses the
DIP with linearised Laplace (reconstruction: warm-started DIP refits) and takes hours on a CPU;
`--posterior gp` runs it with the GP prior instead (HTC2022 then at 64x64, the dense GP's limit).
"""

from __future__ import annotations

import time

import numpy as np
from common import SHARED_DATA, parse_args, report

from ctbayes.design import DesignerConfig, LoopConfig, run_design
from ctbayes.dip.fit import DIPConfig
from ctbayes.phantoms import make_phantom
from ctbayes.simulate import default_geometry, simulate_scan

STRATEGIES = ("eig", "var", "equidistant", "random")


def extra(parser):
    parser.add_argument("--posterior", choices=["laplace", "gp"], default=None,
                        help="posterior backend (default: gp with --quick, else laplace)")
    parser.add_argument("--settings", default="rectangles,ellipses,htc",
                        help="comma-separated: rectangles, ellipses, htc")
    parser.add_argument("--per-step", type=int, default=None, help="views per step")
    parser.add_argument("--acquire", type=int, default=None, help="views to acquire")


def settings(args, posterior: str):
    size, views, initial, acquire, per_step = (32, 60, 4, 8, 2) if args.quick else (64, 200, 5, 35, 1)
    acquire = args.acquire or acquire
    per_step = args.per_step or per_step
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for phantom in ("rectangles", "ellipses"):
        if phantom in names:
            scan = simulate_scan(make_phantom(phantom, size, 1), default_geometry(size, views=views),
                                 noise_level=0.02, seed=0)
            yield f"{phantom} {size}px {views} cand.", scan, None, (initial, acquire, per_step)
    path = SHARED_DATA / "htc2022" / "htc2022_ta_full.mat"
    if "htc" in names:
        if not path.exists():
            print(f"skipping HTC2022: {path} is not present")
            return
        from ctbayes.io.importers import import_scan
        from ctbayes.operators.fbp import fbp

        every, image, binning = (4, 64, 8) if args.quick else (1, 128, 4)
        if posterior == "gp":  # dense GP algebra: at most 64 x 64 images (`posteriors.gp`)
            image, binning = 64, 8
        scan = import_scan(path, every=every, image_size=image, binning=binning)
        reference = fbp(scan.sinogram, scan.geometry)
        yield (f"htc2022_ta {image}px {scan.geometry.num_views} cand.", scan, reference,
               (initial, acquire, per_step))


def main():
    args = parse_args(__doc__.splitlines()[0], extra)
    posterior = args.posterior or ("gp" if args.quick else "laplace")
    rows, summary = [], []
    for name, scan, reference, (initial, acquire, per_step) in settings(args, posterior):
        noise = scan.noise_std ** 2 if scan.noise_std else None
        runs = {}
        for strategy in STRATEGIES:
            designer = DesignerConfig(
                acquisition=strategy, samples=64 if posterior == "gp" else 32,
                reconstruction="mean" if posterior == "gp" else "dip",
                dip=DIPConfig(iterations=1000), refit_iterations=200, refit_every=5,
                posterior=posterior, noise_variance=noise)
            t0 = time.perf_counter()
            runs[strategy] = run_design(scan, LoopConfig(initial, acquire, per_step, designer),
                                        reference=reference)
            print(f"{name} {strategy}: {time.perf_counter() - t0:.1f} s", flush=True)
        ref = runs["equidistant"]
        report_budgets = sorted(set(ref.num_angles[::max(1, 5 // per_step)]) | {ref.num_angles[-1]})
        for strategy, run in runs.items():
            for b in report_budgets:
                i = int(np.flatnonzero(run.num_angles == b)[0])
                j = int(np.flatnonzero(ref.num_angles == b)[0])
                rows.append(dict(setting=name, strategy=strategy, angles=int(b),
                                 psnr=float(run.psnr[i]), ssim=float(run.ssim[i]),
                                 vs_equidistant_dB=float(run.psnr[i] - ref.psnr[j]),
                                 seconds=float(run.seconds[i]),
                                 time_vs_equidistant=float(run.seconds[i] / ref.seconds[j])))
            if strategy == "equidistant":
                continue
            target = float(ref.psnr[-1])
            needed = run.angles_to_reach(target)
            saving = 1 - needed / ref.num_angles[-1] if np.isfinite(needed) else float("nan")
            gap = float(min(run.psnr_at(b) - ref.psnr_at(b) for b in ref.num_angles))
            summary.append(dict(setting=name, strategy=strategy, posterior=posterior,
                                equidistant_final_psnr=target,
                                equidistant_angles=int(ref.num_angles[-1]),
                                angles_to_reach=needed, saving=saving,
                                meets_25pct_saving="yes" if saving >= 0.25 else "NO",
                                worst_gap_dB=gap,
                                meets_within_0_5dB="yes" if gap >= -0.5 else "NO"))
    report(rows, None, f"Design strategies x budgets ({posterior} posterior)")
    report(summary, args.json, "Adaptive vs equidistant: angles to reach its final PSNR, "
                               "worst PSNR gap at any budget")


if __name__ == "__main__":
    main()
