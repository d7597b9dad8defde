"""Real data: is the std map right on measured HTC2022 scans, out of the box and calibrated?

Every HTC2022 training sample (ta, tb, tc, td, solid_disc) at two protocols: 60 views over
360 degrees (every 12th of the 720), and 60 views over a 90-degree arc (every 3rd view with
angle < 90 degrees, the challenge's limited-angle task). Per sample and protocol, one DIP
fit per posterior (linearised Laplace, the default `reconstruct`, and DIP-MCDO) and:

- ll, ll_patch2, cov50/90/95, z_rms inside the object: ta-td against the publisher's
  full-data FBP (least-squares scaled, `uncertainty.scoring_target`) allowing for that
  reference's own noise (`uncertainty.reference_variance`, the `*_and_its_noise` metrics);
  solid_disc against the disc fitted to its full 720-view sinogram (`ctbayes.disc`), inside
  the disc;
- ll_const: the best constant std around the same image (with hindsight), the baseline;
- rows "+ LOO cal": the std map calibrated on the other four samples of the same protocol
  and posterior (`calibration.fit_scale_and_edge`, std scale and edge std, the calibration
  `ctbayes calibrate -o` keeps), the way a user's protocol calibration is used on a new scan;
- rows "+ LOO conformal": the split-conformal 90% std scale from the other four
  (`ctbayes.conformal`, scores against the noisy reference: its guarantee is about covering
  that), scored like the others; cov90_plain is its coverage of the noisy reference itself
  (without the noise allowance), which the guarantee speaks about.

Results are cached per (sample, protocol, method) in --cache (a re-run reuses them).

    python benchmarks/real_data.py [--quick] [--json PATH] [--cache DIR] [--samples ta,tb]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from common import SHARED_DATA, parse_args, report

from ctbayes import metrics
from ctbayes.calibration import calibrated_samples, calibrated_std, fit_scale_and_edge
from ctbayes.conformal import abs_z_scores, conformal_quantile, conformal_std_scale
from ctbayes.operators import make_ray_transform
from ctbayes.reconstruct import ReconstructConfig, reconstruct
from ctbayes.results import read_result, write_result
from ctbayes.uncertainty import (UncertaintyConfig, reference_variance, scoring_target,
                                 uncertainty_metrics)

SAMPLES = ("ta", "tb", "tc", "td", "solid_disc")
PROTOCOLS = ("360", "90")  # 60 views over 360 degrees; 60 views over a 90-degree arc
METHODS = ("laplace", "mcdo")


def protocol_views(full_views: int, protocol: str) -> np.ndarray:
    """Indices of the 60 kept views of a 720-view (0.5 degree) scan."""
    if protocol == "360":
        return np.arange(0, full_views, full_views // 60)
    return np.arange(0, full_views // 4, 3)  # angles 0, 1.5, ..., 88.5 degrees


def load(sample: str, size: int):
    """The full scan at size x size (solid_disc with its fitted disc as the ground truth)."""
    from ctbayes.io.htc2022 import import_htc2022

    path = SHARED_DATA / "htc2022" / f"htc2022_{sample}_full.mat"
    if not path.exists():
        print(f"skipping HTC2022 {sample}: {path} is not present", flush=True)
        return None
    return import_htc2022(path, image_size=size, disc_truth=sample == "solid_disc")


def target(scan, mean):
    """(truth, mask, truth_variance): the fitted disc inside it (within the field of view),
    or the scaled reference FBP inside the object with its noise variance."""
    if scan.ground_truth is not None:
        inside = (scan.ground_truth > 0) & make_ray_transform(scan.geometry).field_of_view()
        return scan.ground_truth, inside, None
    truth, mask = scoring_target(scan, mean)
    return truth, mask, reference_variance(scan, mean)


def scores(truth, mask, noise, mean, std, samples) -> dict:
    s = uncertainty_metrics(truth, mean, std, samples, mask, truth_variance=noise)
    plain = uncertainty_metrics(truth, mean, std, mask=mask)
    return {"ll": s["log_likelihood"], "ll_patch2": s.get("patch_log_likelihood_2"),
            "cov50": s["coverage_50"], "cov90": s["coverage_90"], "cov95": s["coverage_95"],
            "z_rms": s["z_rms"], "ll_const": s["log_likelihood_constant_std"],
            "cov90_plain": plain["coverage_90"]}


def run_one(scan, method: str, quick: bool, cache: Path | None, key: str):
    path = None if cache is None else cache / f"{key}.h5"
    if path is not None and path.exists():
        return read_result(path)
    samples = 32 if quick else 128
    config = ReconstructConfig(uncertainty=UncertaintyConfig(method=method, samples=samples,
                                                             save_samples=samples))
    if quick:
        config = dataclasses.replace(config, dip=dataclasses.replace(
            config.dip, iterations=config.dip.iterations // 4))
    result = reconstruct(scan, config, progress=False)
    if path is not None:
        write_result(result, path)
    return result


def extra(parser):
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the per-run result files (reused on a re-run)")
    parser.add_argument("--samples", default=",".join(SAMPLES), help="comma-separated samples")
    parser.add_argument("--methods", default=",".join(METHODS), help="laplace,mcdo")
    parser.add_argument("--cached-only", action="store_true",
                        help="with --cache: tabulate the runs already there, run nothing")


def main():
    args = parse_args(__doc__.splitlines()[0], extra)
    size = 64 if args.quick else 128
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    import jax

    if args.cache:  # a re-run also skips XLA's compilation
        jax.config.update("jax_compilation_cache_dir", str(args.cache / "xla"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    scans = {sample: load(sample, size) for sample in args.samples.split(",")}
    rows, pool = [], {}  # pool: (protocol, method) -> {sample: (truth, mask, noise, result)}
    # method-major order: a run cut short has whole protocols of the default posterior first
    for method in args.methods.split(","):
        for protocol in PROTOCOLS:
            for sample, full in scans.items():
                if full is None:
                    continue
                scan = full.subset(protocol_views(full.geometry.num_views, protocol))
                key = f"{sample}_{protocol}_{method}_{size}"
                if args.cached_only and not (args.cache / f"{key}.h5").exists():
                    continue
                result = run_one(scan, method, args.quick, args.cache, key)
                truth, mask, noise = target(scan, result.mean)
                row = {"sample": sample, "protocol": protocol, "method": method,
                       "psnr": metrics.psnr(result.mean[mask], truth[mask]),
                       **scores(truth, mask, noise, result.mean, result.std, result.samples),
                       "dip_s": result.timings.get("dip_total", float("nan")),
                       "unc_s": result.timings.get("uncertainty", float("nan"))}
                rows.append(row)
                print(row, flush=True)
                pool.setdefault((protocol, method), {})[sample] = (truth, mask, noise, result)
    for (protocol, method), members in pool.items():
        for sample, (truth, mask, noise, result) in members.items():
            others = [members[o] for o in members if o != sample]
            if not others:
                continue
            targets = [(t, r.mean, r.std, m, n) for t, m, n, r in others]
            scale, edge = fit_scale_and_edge(targets)
            q = conformal_quantile(np.concatenate([abs_z_scores(t, r.mean, r.std, m)
                                                   for t, m, _, r in others]))
            for label, (c, b) in ((f"+ LOO cal (x{scale:.2f}, edge {edge:.3f} px)", (scale, edge)),
                                  (f"+ LOO conformal (q {q:.2f})", (conformal_std_scale(q), 0.0))):
                std = calibrated_std(result.std, result.mean, c, b)
                draws = calibrated_samples(result.samples, result.mean, c, b)
                row = {"sample": sample, "protocol": protocol, "method": f"{method} {label}",
                       **scores(truth, mask, noise, result.mean, std, draws)}
                rows.append(row)
                print(row, flush=True)
    report(rows, args.json, f"Real data (HTC2022, {size}x{size}, 60 views): inside the object, "
                            "allowing for the reference's noise (solid_disc: its fitted disc)")


if __name__ == "__main__":
    main()
