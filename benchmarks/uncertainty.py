"""Uncertainty: what the posterior costs next to the DIP fit, and how well it is calibrated.

For every shipped scan and HTC2022 `ta` (60 views over 360 degrees), one DIP fit per
posterior, then: seconds of the DIP fit, of the hyperparameter fit (EM for Laplace, the
optimisation for the VI posteriors) and of the sampling, the ratio of the uncertainty time
to the DIP fit time (target for Laplace at 128x128: at most 2), the per-pixel Gaussian test
log-likelihood, the 2x2 patch log-likelihood and the coverage of the 50/90/95% intervals.
The homoscedastic baseline is the best constant std chosen with hindsight around the
Laplace run's image. Simulated scans are scored against their ground truth; HTC2022 against
the publisher's full-data FBP after a least-squares scale (there is no truth).

`--simulated` instead runs a calibration study over fresh 64x64 simulated scans (parallel
beam, 30 views over 180 degrees): Shepp-Logan and two seeds each of random ellipses and
random rectangles, each with Gaussian 5% noise and with Poisson noise (1e4 photons), to
show on which kinds of image the intervals hold, beyond the three shipped scans.

    python benchmarks/uncertainty.py [--quick] [--json PATH] [--methods laplace,mcdo,...]
        [--scans ellipses_128_fanflat,htc2022_ta,...] [--simulated]
"""

from __future__ import annotations

import dataclasses

from common import SCANS, SHARED_DATA, parse_args, report

from ctbayes import metrics
from ctbayes.io import read_scan
from ctbayes.phantoms import make_phantom
from ctbayes.reconstruct import ReconstructConfig, reconstruct
from ctbayes.simulate import default_geometry, simulate_scan
from ctbayes.uncertainty import UncertaintyConfig, uncertainty_metrics


def htc_scan(image_size: int):
    path = SHARED_DATA / "htc2022" / "htc2022_ta_full.mat"
    if not path.exists():
        print(f"skipping HTC2022: {path} is not present")
        return []
    from ctbayes.io.importers import import_scan

    return [("htc2022_ta 60 views/360", import_scan(path, every=12, image_size=image_size))]


def simulated_scans(size: int = 64):
    """The calibration study's scans: phantoms x noise models, seeds apart from the shipped."""
    phantoms = [("shepp-logan", 0), ("ellipses", 3), ("ellipses", 4), ("rectangles", 3),
                ("rectangles", 4)]
    geometry = default_geometry(size, "parallel", views=30)
    return [(f"{name} {seed} {noise}", simulate_scan(make_phantom(name, size, seed), geometry,
                                                     noise=noise, seed=seed))
            for name, seed in phantoms for noise in ("gaussian", "poisson")]


def truth_for(scan, image):
    """The ground truth, or the reference FBP brought to the image's scale."""
    if scan.ground_truth is not None:
        return scan.ground_truth
    reference = scan.references["fbp"]
    return reference / metrics.fit_scale(image, reference)


def extra(parser):
    parser.add_argument("--methods", default="laplace,mcdo",
                        help="comma-separated posteriors: laplace, mcdo, mfvi, score-vi")
    parser.add_argument("--scans", default=None,
                        help="comma-separated scan names (shipped file stems, or htc2022_ta); "
                             "default: all")
    parser.add_argument("--simulated", action="store_true",
                        help="calibration study on fresh simulated 64x64 scans instead")


def main():
    args = parse_args(__doc__.splitlines()[0], extra)
    methods = args.methods.split(",")
    wanted = None if args.scans is None else {s.strip() for s in args.scans.split(",")}
    if args.simulated:
        scans = simulated_scans()
    else:
        scans = [(p.stem, read_scan(p)) for p in SCANS if wanted is None or p.stem in wanted]
        if wanted is None or "htc2022_ta" in wanted:
            scans += htc_scan(64 if args.quick else 128)
    rows = []
    for name, scan in scans:
        for method in methods:
            samples = 32 if args.quick else 128
            config = ReconstructConfig(uncertainty=UncertaintyConfig(
                method=method, samples=samples, save_samples=samples))
            if args.quick:
                config = dataclasses.replace(config, dip=dataclasses.replace(
                    config.dip, iterations=config.dip.iterations // 4))
            result = reconstruct(scan, config, progress=False)
            t = result.timings
            dip_seconds = t["dip_total"]
            row = {"scan": name, "size": result.mean.shape[0], "method": method,
                   "dip_s": dip_seconds, "fit_s": t["uncertainty_fit"],
                   "sampling_s": t["uncertainty_sampling"],
                   "ratio": t["uncertainty"] / dip_seconds,
                   "em_cycles": result.settings.get("uncertainty_em_cycles_run", "")}
            truth = truth_for(scan, result.mean)
            scores = uncertainty_metrics(truth, result.mean, result.std, result.samples)
            row |= {"psnr": metrics.psnr(result.mean, truth),
                    "ll": scores["log_likelihood"], "ll_patch2": scores.get("patch_log_likelihood_2"),
                    "cov50": scores["coverage_50"], "cov90": scores["coverage_90"],
                    "cov95": scores["coverage_95"]}
            rows.append(row)
            print(row, flush=True)
            if method == "laplace":  # the homoscedastic baseline around the same image
                constant = metrics.best_constant_std(truth, result.mean)
                flat = uncertainty_metrics(truth, result.mean, result.std * 0 + constant)
                rows.append({"scan": name, "size": result.mean.shape[0],
                             "method": "constant std (hindsight)", "psnr": row["psnr"],
                             "ll": flat["log_likelihood"], "cov50": flat["coverage_50"],
                             "cov90": flat["coverage_90"], "cov95": flat["coverage_95"]})
    report(rows, args.json, "Uncertainty: seconds (DIP fit, posterior fit, sampling), ratio of "
                            "uncertainty to DIP time; test log-likelihood per pixel; coverage")


if __name__ == "__main__":
    main()
