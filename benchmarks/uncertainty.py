"""Uncertainty: what the posterior costs next to the DIP fit, and how well it is calibrated.

For every shipped scan and HTC2022 `ta` and `tb` (60 views over 360 degrees), one DIP fit per
posterior, then: seconds of the DIP fit, of the hyperparameter fit (EM for Laplace, the
optimisation for the VI posteriors) and of the sampling, the ratio of the uncertainty time
to the DIP fit time (target for Laplace at 128x128: at most 2), where Laplace's fit spent
its time (`fit_phases`: wall / compilation seconds of each phase), the per-pixel Gaussian test
log-likelihood, the 2x2 patch log-likelihood, the coverage of the 50/90/95% intervals, the
rms of the z-scores (z_rms: how far the std map's overall scale is off) and the 90% coverage
the same map would have with that scale right (cov90_rescaled: std times z_rms).
The homoscedastic baseline is the best constant std chosen with hindsight around the
Laplace run's image. Simulated scans are scored against their ground truth; HTC2022 against
the publisher's full-data FBP after a least-squares scale (there is no truth), inside the
object (its filled segmentation, within the scanner's field of view); PSNR over the whole
image. HTC2022 also gets a check against a real measurement: the 60 views halfway between
the measured ones are held out, and the posterior predicts them (samples pushed through
their ray transform, plus the learned noise variance; MC dropout, which has none, gets the
DIP's residual variance): held-out log-likelihood per ray and 90% coverage. And each HTC2022
scan is scored once more with its std map calibrated on the other (`ctbayes calibrate`:
times the other scan's rms z-score, the same method), the way a scanner's std scale is
learned on scans with a reference and used on new ones.

`--simulated` instead runs a calibration study over fresh 64x64 simulated scans (parallel
beam, 30 views over 180 degrees): Shepp-Logan and two seeds each of random ellipses and
random rectangles, each with Gaussian 5% noise and with Poisson noise (1e4 photons), to
show on which kinds of image the intervals hold, beyond the three shipped scans. With
`--off-grid` the phantoms are rendered at 4x the resolution and measured there by detector
bins that integrate over their width, and the truth is their 4x4 block means, so the grid
cannot represent the measurement exactly, as with a real object. Each study scan is also
scored with the calibration learned on the other four with the same noise model (leave one
out, scale alone and with the edge term), the way a scanner's calibration is learned for
one acquisition protocol. `--ensemble K` mixes the
posteriors of K DIP fits per scan and method (`reconstruct --ensemble`); its times are the
sums over the fits. `--edge-features` runs Laplace with the edge displacement learned by its
EM (`reconstruct --edge-features`); its rows are labelled `laplace + edge`.

    python benchmarks/uncertainty.py [--quick] [--json PATH] [--methods laplace,mcdo,...]
        [--scans ellipses_128_fanflat,htc2022_ta,htc2022_tb,...] [--simulated [--off-grid]] [--ensemble K]
        [--edge-features]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from common import SCANS, SHARED_DATA, parse_args, report

from ctbayes import metrics
from ctbayes.calibration import (calibrated_samples, calibrated_std, fit_scale_and_edge,
                                 std_scale, unscaled_z_rms)
from ctbayes.io import read_scan
from ctbayes.operators import make_ray_transform
from ctbayes.phantoms import make_phantom
from ctbayes.reconstruct import ReconstructConfig, reconstruct
from ctbayes.simulate import default_geometry, simulate_scan
from ctbayes.laplace import LaplaceConfig
from ctbayes.scoring import (heldout_view_metrics, reference_variance, scoring_target,
                             uncertainty_metrics)
from ctbayes.uncertainty import UncertaintyConfig


HTC_SAMPLES = ("ta", "tb")

PHASES = (("linearise", "lin"), ("condition", "cond"), ("preconditioner", "prec"),
          ("e_steps", "e"))


def fit_phases(timings: dict) -> str:
    """Where Laplace's hyperparameter fit spent its time: 'lin 9/6 cond 4/4 prec 60/5 e 40/12'
    (wall / XLA compilation seconds of the linearisation, the precision check, the EM's
    solver set-ups and its E-steps; `fit_laplace`); '' for the other posteriors."""
    return " ".join(f"{short} {timings[f'uncertainty_laplace_{name}']:.0f}/"
                    f"{timings[f'uncertainty_laplace_{name}_compile']:.0f}"
                    for name, short in PHASES if f"uncertainty_laplace_{name}" in timings)


def htc_scans(image_size: int, samples=HTC_SAMPLES):
    """HTC2022 samples (`ta`, `tb`): every 12th of their 720 views, and the 60 views halfway
    between them, held out to be predicted. Empty where the data is absent."""
    from ctbayes.io.importers import import_scan

    scans, heldout = [], {}
    for sample in samples:
        path = SHARED_DATA / "htc2022" / f"htc2022_{sample}_full.mat"
        if not path.exists():
            print(f"skipping HTC2022 {sample}: {path} is not present")
            continue
        full = import_scan(path, image_size=image_size)
        views = np.arange(0, full.geometry.num_views, 12)
        name = f"htc2022_{sample} 60 views/360"
        scans.append((name, full.subset(views)))
        heldout[name] = full.subset(views + 6)
    return scans, heldout


def cross_calibrated_rows(pool: dict, heldout: dict, protocol=lambda name: "") -> list[dict]:
    """Each pooled scan's posterior with the calibration learned on the other pooled scans
    of the same protocol (leave one out, the same method; `ctbayes.calibration`): the std
    scale alone, and the scale with the edge term (`fit_scale_and_edge`). Log-likelihood and
    coverage (inside the object for real scans), and the held-out views predicted from the
    calibrated samples. Where the references carry a draw of their own noise, both are
    learned once more allowing for it, and those rows are scored allowing for it (the
    *_refnoise columns). pool: (scan name, method) -> (scan, result, truth, mask); protocol:
    scan name -> its acquisition protocol (a scanner's calibration holds for one)."""
    rows = []
    for (name, method), (scan, result, truth, mask) in pool.items():
        names = [other for other, m in pool if m == method and other != name
                 and protocol(other) == protocol(name)]
        if not names:
            continue
        others = [pool[other, method] for other in names]
        targets = [(t, r.mean, r.std, k, reference_variance(s, r.mean)) for s, r, t, k in others]
        calibrations = [(std_scale([unscaled_z_rms(r) for _, r, _, _ in others]), 0.0, False),
                        (*fit_scale_and_edge([target[:4] for target in targets]), False)]
        if all(target[4] is not None for target in targets):
            calibrations += [(*fit_scale_and_edge(targets, edge=False), True),
                             (*fit_scale_and_edge(targets), True)]
        source = names[0].split()[0] if len(names) == 1 else f"the other {len(names)}"
        if name in heldout:  # the held-out views' operator and noise, for every calibration
            held_A = make_ray_transform(heldout[name].geometry)
            noise_variance = predictive_noise_variance(result, scan)
        for k, (scale, edge, allowing) in enumerate(calibrations):
            label = f"std x {scale:.2f}" + (f" + edge {edge:.3f} px" if k % 2 else "") + \
                (" (allowing the reference noise)" if allowing else "")
            samples = calibrated_samples(result.samples, result.mean, scale, edge)
            std = calibrated_std(result.std, result.mean, scale, edge)
            scores = uncertainty_metrics(truth, result.mean, std, samples, mask)
            row = {"scan": name, "size": result.mean.shape[0],
                   "method": f"{method}, {label} from {source}",
                   "ll": scores["log_likelihood"], "ll_patch2": scores.get("patch_log_likelihood_2"),
                   "cov50": scores["coverage_50"], "cov90": scores["coverage_90"],
                   "cov95": scores["coverage_95"], "z_rms": scores["z_rms"]}
            if allowing:  # scored as it was learned: against the reference and its noise
                row |= with_reference_noise(scan, truth, result.mean, std, samples, mask)
                row.pop("ll_constant_refnoise", None)  # the constant's is on the uncalibrated row
            if name in heldout:
                held = heldout_view_metrics(held_A, heldout[name].sinogram, samples,
                                            noise_variance)
                row |= {"heldout_ll": held["log_likelihood"], "heldout_cov90": held["coverage_90"]}
            rows.append(row)
    return rows


def with_reference_noise(scan, truth, mean, std, samples, mask) -> dict:
    """For a real scan whose reference carries a draw of its own noise: LL, coverage_90 and
    z_rms against that noisy reference under the posterior's variance plus its noise
    (`scoring.reference_variance`); else nothing."""
    variance = reference_variance(scan, mean)
    if variance is None:
        return {}
    scores = uncertainty_metrics(truth, mean, std, samples, mask, truth_variance=variance)
    return {"ll_refnoise": scores["log_likelihood"], "cov90_refnoise": scores["coverage_90"],
            "z_rms_refnoise": scores["z_rms"],
            "ll_constant_refnoise": scores["log_likelihood_constant_std"]}


def simulated_scans(size: int = 64, off_grid: bool = False):
    """The calibration study's scans: phantoms x noise models, seeds apart from the shipped.

    off_grid: render each phantom at 4x the resolution and measure it there with detector
    bins of finite width (`simulate_scan`); the truth is its 4x4 block means. Edges then cut
    through pixels, as a real object's do, and the reconstruction grid cannot represent the
    measurement exactly (no inverse crime)."""
    phantoms = [("shepp-logan", 0), ("ellipses", 3), ("ellipses", 4), ("rectangles", 3),
                ("rectangles", 4)]
    geometry = default_geometry(size, "parallel", views=30)
    rendered = 4 * size if off_grid else size  # simulate_scan takes block means of a finer one
    return [(f"{name} {seed} {noise}", simulate_scan(make_phantom(name, rendered, seed),
                                                     geometry, noise=noise, seed=seed))
            for name, seed in phantoms for noise in ("gaussian", "poisson")]


def predictive_noise_variance(result, scan) -> float:
    """The noise variance the posterior learned (an ensemble's: the mean of its fits'
    `member<k>_noise_variance`), or (MC dropout has none) the mean square of the DIP's
    residual on the measured views."""
    learned = [v for k, v in result.hyperparameters.items()
               if k == "noise_variance" or k.endswith("_noise_variance")]
    if learned:
        return float(np.mean(learned))
    residual = np.asarray(make_ray_transform(scan.geometry)(result.mean)) - scan.sinogram
    return float(np.mean(residual ** 2))


def extra(parser):
    parser.add_argument("--methods", default="laplace,mcdo",
                        help="comma-separated posteriors: laplace, mcdo, mfvi, score-vi")
    parser.add_argument("--scans", default=None,
                        help="comma-separated scan names (shipped file stems, htc2022_ta, htc2022_tb); "
                             "default: all")
    parser.add_argument("--simulated", action="store_true",
                        help="calibration study on fresh simulated 64x64 scans instead")
    parser.add_argument("--ensemble", type=int, default=1,
                        help="mix the posteriors of this many DIP fits (seeds 0, 1, ...)")
    parser.add_argument("--edge-features", action="store_true",
                        help="Laplace with a per-pixel edge displacement whose variance the "
                             "EM learns (`reconstruct --edge-features`)")
    parser.add_argument("--off-grid", action="store_true",
                        help="with --simulated: phantoms rendered at 4x the resolution and "
                             "measured there by finite-width detector bins, truth = their "
                             "4x4 block means")


def main():
    args = parse_args(__doc__.splitlines()[0], extra)
    if args.off_grid and not args.simulated:
        raise SystemExit("--off-grid changes the --simulated study; give both.")
    methods = args.methods.split(",")
    heldout = {}
    wanted = None if args.scans is None else {s.strip() for s in args.scans.split(",")}
    if args.simulated:
        scans = simulated_scans(off_grid=args.off_grid)
    else:
        scans = [(p.stem, read_scan(p)) for p in SCANS if wanted is None or p.stem in wanted]
        htc, heldout = htc_scans(64 if args.quick else 128,
                                 [s for s in HTC_SAMPLES if wanted is None or f"htc2022_{s}" in wanted])
        scans += htc
    # (name, method) -> (scan, result, truth, mask): the scans each calibrated on the others
    # (the real ones, scored on a reference; or the whole simulated study, leave one out)
    pool = {}
    rows = []
    for name, scan in scans:
        for method in methods:
            label = method + (" + edge" if args.edge_features and method == "laplace" else "")
            samples = 32 if args.quick else 128
            config = ReconstructConfig(uncertainty=UncertaintyConfig(
                method=method, samples=samples, save_samples=samples, ensemble=args.ensemble,
                posterior=LaplaceConfig(edge_features=args.edge_features)
                if method == "laplace" else None))
            if args.quick:
                config = dataclasses.replace(config, dip=dataclasses.replace(
                    config.dip, iterations=config.dip.iterations // 4))
            result = reconstruct(scan, config, progress=False)
            t = result.timings
            dip_seconds = t["dip_total"]
            row = {"scan": name, "size": result.mean.shape[0], "method": label,
                   "dip_s": dip_seconds, "fit_s": t["uncertainty_fit"],
                   "sampling_s": t["uncertainty_sampling"],
                   "compile_s": t["uncertainty_compile"],
                   "ratio": t["uncertainty"] / dip_seconds,
                   "em_cycles": result.settings.get("uncertainty_em_cycles_run", ""),
                   "fit_phases": fit_phases(t)}
            if "prior_variance_edge" in result.hyperparameters:  # the learned edge std, pixels
                row["edge_b"] = result.hyperparameters["prior_variance_edge"] ** 0.5
            truth, mask = scoring_target(scan, result.mean)
            if scan.ground_truth is None or args.simulated:
                pool[name, label] = (scan, result, truth, mask)
            scores = uncertainty_metrics(truth, result.mean, result.std, result.samples, mask)
            row |= {"psnr": metrics.psnr(result.mean, truth),
                    "ll": scores["log_likelihood"], "ll_patch2": scores.get("patch_log_likelihood_2"),
                    "cov50": scores["coverage_50"], "cov90": scores["coverage_90"],
                    "cov95": scores["coverage_95"], "z_rms": scores["z_rms"],
                    # the 90% coverage the same map would have with its overall scale right
                    "cov90_rescaled": uncertainty_metrics(
                        truth, result.mean, result.std * scores["z_rms"], mask=mask)["coverage_90"]}
            noisy = with_reference_noise(scan, truth, result.mean, result.std, result.samples, mask)
            constant_with_noise = noisy.pop("ll_constant_refnoise", None)
            row |= noisy
            held = None
            if name in heldout:  # predict the views between the measured ones
                held_scan = heldout[name]
                held = heldout_view_metrics(make_ray_transform(held_scan.geometry),
                                            held_scan.sinogram, result.samples,
                                            predictive_noise_variance(result, scan))
                row |= {"heldout_ll": held["log_likelihood"], "heldout_cov90": held["coverage_90"]}
            rows.append(row)
            print(row, flush=True)
            if method == "laplace":  # the homoscedastic baseline around the same image
                inside = (slice(None),) if mask is None else mask
                constant = metrics.best_constant_std(truth[inside], result.mean[inside])
                flat = uncertainty_metrics(truth, result.mean, result.std * 0 + constant,
                                           mask=mask)
                baseline = {"scan": name, "size": result.mean.shape[0],
                            "method": "constant std (hindsight)", "psnr": row["psnr"],
                            "ll": flat["log_likelihood"], "cov50": flat["coverage_50"],
                            "cov90": flat["coverage_90"], "cov95": flat["coverage_95"]}
                if held is not None:
                    baseline["heldout_ll"] = held["log_likelihood_constant_std"]
                if constant_with_noise is not None:  # its own best constant, plus the noise
                    baseline["ll_refnoise"] = constant_with_noise
                rows.append(baseline)
    # the simulated study's protocols are its noise models (the last word of a scan's name)
    rows += cross_calibrated_rows(pool, heldout,
                                  lambda name: name.split()[-1] if args.simulated else "")
    report(rows, args.json, "Uncertainty: seconds (DIP fit, posterior fit, sampling, compilation "
                            "within the last two), ratio of uncertainty to DIP time; test "
                            "log-likelihood per pixel; coverage")


if __name__ == "__main__":
    main()
