"""ctbayes measured against the field: deepinv (PyTorch) and CUQIpy, side by side, same scans.

Needs the optional extra `peers` (`pip install -e ".[peers]"`: torch, deepinv, cuqipy); without
it the script says so in one sentence and exits 0. Everything runs in this one process, on the
same scans and the SAME ray transform: ctbayes's ASTRA-assembled sparse system matrix, handed to
deepinv as a torch sparse operator (`torch_physics`) and to CUQIpy as a SciPy sparse matrix, so
only the methods differ.

Scans: the shipped scans in scans/ (64 px ones only with --quick), a fresh simulated one
(random ellipses, 64 px, 30 views, 5% Gaussian noise, seed 11), and HTC2022 `ta` with 60 views
over 360 degrees at 64 px (and 128 px without --quick; skipped where the data is absent).
Simulated scans are scored against their ground truth; HTC2022 against the publisher's
full-data FBP (`ctbayes.uncertainty.scoring_target`: least-squares scale, inside the object).

1. DIP (`dip` rows). ctbayes's DIP (`fit_dip`, its defaults but the iteration budget) against
   deepinv's: its `ConvDecoder` generator with `DeepImagePrior`'s loop (Adam on the
   measurement MSE, `MCLoss`) reproduced step for step so the PSNR can be traced (deepinv's
   `forward` draws a fresh input per call, so it cannot be resumed in chunks). The data are
   divided by the best constant image value first and the output multiplied back (deepinv's
   networks expect images of order one; this favours deepinv). Both run the same iteration
   budget (300 with --quick, else ctbayes's default 2000), and without --quick deepinv also
   runs its own recommended settings (`DeepImagePrior`'s defaults: 2500 iterations at lr 1e-2,
   the default 256-channel decoder; --quick uses the 64-channel decoder of deepinv's DIP demo
   and skips that run, which takes too long on a shared CPU). Columns: PSNR at the end, seconds per iteration, wall time
   (setup, compilation and PSNR evaluation included, for both), and `ctb_s_to_peer_psnr`:
   the wall time ctbayes took to first reach that deepinv run's final PSNR (target: at most
   half deepinv's wall time).
2. Uncertainty (`uq` rows). ctbayes's linearised Laplace on the same-budget DIP fit against
   deepinv's ULA with a TV prior (`ScorePrior` over `TVDenoiser`: no downloaded weights) and
   CUQIpy's first-order GMRF prior sampled by LinearRTO (its automatic choice for this model).
   Both samplers get the noise std of the DIP's residual and start from FBP (both favour
   them). Each sampler has a short tuning sweep (ULA: regularisation alpha x denoiser level;
   GMRF: precision), and the row kept is the sweep point with the best test log-likelihood
   against the truth: an oracle choice that flatters the samplers. Columns: LL per pixel,
   coverage 50/90/95, z_rms, and the wall time to the reported std (ctbayes: DIP fit plus
   Laplace; a sampler: its best sweep point alone, sweep not counted). Target: Laplace's LL
   beats both samplers' on every scan in at most a fifth of the best sampler's wall time.
3. Score-VI at DIP scale (`vi` rows). `--uncertainty score-vi` against `--uncertainty mfvi` on
   the same DIP weights (a DIP fitted to all but every 5th view; HTC2022: to the 60 views, the
   60 between them held out). Both trace the held-out-view predictive NLL per ray
   (`heldout_view_metrics`, 16 draws, both with the DIP's residual noise variance) against
   training wall time (setup and compilation included, evaluation excluded). The common level
   is the worse of the two final NLLs; each method's own time to it comes off its own curve
   (`ctbayes.score_vi.compare.time_to_level`). Target: score-VI at most half ADVI's time, and
   calibration (image LL, coverage) no worse.

    python benchmarks/peers.py [--quick] [--json PATH] [--parts dip,uq,vi] [--scans NAME,...]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import platform
import sys
import time

import numpy as np

from common import SCANS, SHARED_DATA, parse_args, report

PEER_MODULES = ("torch", "deepinv", "cuqi")
PARTS = ("dip", "uq", "vi")


def missing_peers() -> list[str]:
    """The modules of the `peers` extra that cannot be imported here."""
    def absent(name):
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    return [name for name in PEER_MODULES if absent(name)]


def skip_message(missing) -> str:
    return (f"Skipping the peers benchmark: the optional extra `peers` is not installed "
            f"(missing {', '.join(missing)}; pip install -e '.[peers]').")


def time_to_psnr(curve, level: float) -> float:
    """The wall time at which a curve of dicts ("seconds", "psnr") first reaches `level` dB
    (linear interpolation between evaluations; NaN if never): higher PSNR is better, so this
    is `time_to_level` on minus the PSNR."""
    from ctbayes.score_vi.compare import time_to_level

    return time_to_level([{"seconds": c["seconds"], "neg": -c["psnr"]} for c in curve], -level,
                         key="neg")


def speed_verdict(own: float, peer: float, factor: float) -> str:
    """'met' when `own` <= `peer` / factor, else 'missed' (never reached: NaN own)."""
    if not math.isfinite(own):
        return "missed (never reached)"
    return "met" if own <= peer / factor else "missed"


# -- the shared operator ----------------------------------------------------------------------

def sparse_parts(A):
    """(rows, cols, values, shape) of a sparse-backend ctbayes RayTransform's matrix."""
    indices = np.asarray(A.matrix.indices)
    return indices[:, 0], indices[:, 1], np.asarray(A.matrix.data, np.float32), A.matrix.shape


def scipy_matrix(A):
    import scipy.sparse as sp

    rows, cols, values, shape = sparse_parts(A)
    return sp.csr_matrix((values, (rows, cols)), shape=shape)


def torch_physics(A, dtype=None):
    """ctbayes's ray transform as a deepinv `LinearPhysics` on (B, 1, H, W) images and
    (B, 1, views, det) sinograms: the same sparse matrix in torch CSR, with its transpose as the
    adjoint and as the backward pass of A (so autograd through A costs one sparse product)."""
    import deepinv
    import torch

    dtype = dtype or torch.float32
    rows, cols, values, shape = sparse_parts(A)
    coo = torch.sparse_coo_tensor(np.stack([rows, cols]), values, shape, dtype=dtype).coalesce()
    M, MT = coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()
    image, sino = tuple(A.domain_shape), tuple(A.range_shape)

    def apply(matrix, x, out_shape):
        lead = x.shape[:-2]
        flat = x.reshape(-1, matrix.shape[1]).T
        return (matrix @ flat).T.reshape(*lead, *out_shape)

    class Project(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return apply(M, x, sino)

        @staticmethod
        def backward(ctx, grad):
            return apply(MT, grad, image)

    class BackProject(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return apply(MT, y, image)

        @staticmethod
        def backward(ctx, grad):
            return apply(M, grad, sino)

    return deepinv.physics.LinearPhysics(A=lambda x, **_: Project.apply(x),
                                         A_adjoint=lambda y, **_: BackProject.apply(y),
                                         img_size=(1, *image))


# -- scans ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    name: str
    scan: object
    heldout: object = None  # a Scan of measured views the fits never see (HTC2022)


def cases(quick: bool, wanted=None) -> list[Case]:
    from ctbayes.io import read_scan
    from ctbayes.phantoms import make_phantom
    from ctbayes.simulate import default_geometry, simulate_scan

    out = []
    for path in SCANS:
        if wanted is None and quick and "_64_" not in path.stem:
            continue
        out.append(Case(path.stem, read_scan(path)))
    geometry = default_geometry(64, "parallel", views=30)
    out.append(Case("simulated ellipses 11", simulate_scan(make_phantom("ellipses", 64, 11),
                                                           geometry, seed=11)))
    path = SHARED_DATA / "htc2022" / "htc2022_ta_full.mat"
    if path.exists():
        from ctbayes.io.importers import import_scan

        for size in (64,) if quick else (64, 128):
            full = import_scan(path, image_size=size)
            views = np.arange(0, full.geometry.num_views, 12)
            out.append(Case(f"htc2022_ta {size}px 60 views", full.subset(views),
                            full.subset(views + 6)))
    else:
        print(f"skipping HTC2022 ta: {path} is not present")
    if wanted is not None:
        out = [c for c in out if any(w in c.name for w in wanted)]
    return out


def psnr_target(scan):
    """What PSNR is measured against: the ground truth, or HTC2022's full-data FBP."""
    return scan.ground_truth if scan.ground_truth is not None else scan.references["fbp"]


# -- 1. DIP -----------------------------------------------------------------------------------

def ctbayes_dip(A, scan, iterations: int):
    """ctbayes's DIP (defaults but the budget), with its PSNR curve against wall time."""
    from ctbayes.dip import DIPConfig, fit_dip

    curve, t0 = [], time.perf_counter()
    record = lambda it, info: curve.append(  # noqa: E731
        {"iteration": it, "seconds": time.perf_counter() - t0, "psnr": info["psnr"]})
    config = dataclasses.replace(DIPConfig(), iterations=iterations)
    fit = fit_dip(A, scan.sinogram, config, ground_truth=psnr_target(scan), progress=False,
                  callback=record)
    return fit, curve, time.perf_counter() - t0


def deepinv_dip(physics, A, scan, iterations: int, channels: int, in_size=(4, 4),
                lr: float = 1e-2, every: int = 50, seed: int = 0):
    """deepinv's DIP (ConvDecoder + DeepImagePrior's Adam loop on MCLoss), traced: PSNR every
    `every` iterations (evaluation time excluded). Returns (image, curve, wall seconds)."""
    import deepinv
    import torch

    from ctbayes.dip.fit import image_scale
    from ctbayes.metrics import psnr

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    scale = image_scale(A, scan.sinogram)
    y = torch.as_tensor(np.asarray(scan.sinogram, np.float32) / scale)[None, None]
    shape = tuple(A.domain_shape)
    generator = deepinv.models.ConvDecoder(img_size=(1, *shape), in_size=tuple(in_size),
                                           channels=channels)
    z = torch.randn((channels, *in_size)).unsqueeze(0)
    optimizer = torch.optim.Adam(generator.parameters(), lr=lr)
    loss = deepinv.loss.MCLoss()
    truth, curve, paused = psnr_target(scan), [], 0.0

    def evaluate(it):
        nonlocal paused
        t = time.perf_counter()
        elapsed = t - t0 - paused
        with torch.no_grad():
            image = generator(z)[0, 0].numpy() * scale
        curve.append({"iteration": it, "seconds": elapsed, "psnr": psnr(image, truth)})
        paused += time.perf_counter() - t
        return image

    for it in range(1, iterations + 1):
        x = generator(z)
        error = loss(y=y, x_net=x, physics=physics)
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        if it % every == 0 or it == iterations:
            image = evaluate(it)
    return image, curve, time.perf_counter() - t0 - paused


def dip_rows(case: Case, A, physics, budget: int, recommended: dict) -> tuple[list, object]:
    fit, ctb_curve, ctb_wall = ctbayes_dip(A, case.scan, budget)
    ctb_fit_s = fit.timings["fit"]
    rows = [{"part": "dip", "scan": case.name, "method": f"ctbayes DIP ({budget} it)",
             "psnr": ctb_curve[-1]["psnr"], "s_per_it": ctb_fit_s / budget, "wall_s": ctb_wall}]
    print(rows[-1], flush=True)
    runs = [(f"deepinv DIP, same budget ({budget} it, {recommended['channels']} ch)", budget,
             recommended["channels"])]
    if recommended["iterations"]:
        runs.append((f"deepinv DIP, recommended ({recommended['iterations']} it, "
                     f"{recommended['channels']} ch)", recommended["iterations"],
                     recommended["channels"]))
    for label, iterations, channels in runs:
        _, curve, wall = deepinv_dip(physics, A, case.scan, iterations, channels,
                                     in_size=recommended["in_size"])
        final = curve[-1]["psnr"]
        own = time_to_psnr(ctb_curve, final)
        row = {"part": "dip", "scan": case.name, "method": label, "psnr": final,
               "s_per_it": wall / iterations, "wall_s": wall, "ctb_s_to_peer_psnr": own,
               "ctb_vs_peer_time": own / wall,
               "target_half_time": speed_verdict(own, wall, 2.0)}
        rows.append(row)
        print(row, flush=True)
    return rows, fit


# -- 2. uncertainty ---------------------------------------------------------------------------

def scores(scan, mean, std, samples=None) -> dict:
    from ctbayes.uncertainty import scoring_target, uncertainty_metrics

    truth, mask = scoring_target(scan, np.asarray(mean))
    s = uncertainty_metrics(truth, np.asarray(mean), np.asarray(std), None, mask)
    from ctbayes.metrics import psnr

    return {"psnr": psnr(np.asarray(mean), truth), "ll": s["log_likelihood"],
            "cov50": s["coverage_50"], "cov90": s["coverage_90"], "cov95": s["coverage_95"],
            "z_rms": s["z_rms"]}


def laplace_row(case, A, fit, dip_wall: float, samples: int) -> dict:
    from ctbayes.uncertainty import UncertaintyConfig, image_posterior

    t0 = time.perf_counter()
    posterior, hyper = image_posterior(fit, A, case.scan.sinogram,
                                       UncertaintyConfig(method="laplace", samples=samples))
    std = np.asarray(posterior.std())
    seconds = time.perf_counter() - t0
    return {"part": "uq", "scan": case.name, "method": "ctbayes DIP + linearised Laplace",
            **scores(case.scan, fit.image, std), "wall_s": dip_wall + seconds,
            "uq_only_s": seconds, "setting": f"noise var {hyper['noise_variance']:.3g} (learned)"}


def ula_runs(case, A, physics, sigma: float, x0, quick: bool):
    """deepinv ULA with a TV score prior: one run per sweep point, scored."""
    import deepinv
    import torch

    from ctbayes.dip.fit import image_scale

    c = image_scale(A, case.scan.sinogram)
    y = torch.as_tensor(np.asarray(case.scan.sinogram, np.float32))[None, None]
    x_init = torch.as_tensor(np.asarray(x0, np.float32))[None, None]
    norm2 = float(A.norm()) ** 2
    iterations = 600 if quick else 5000
    sweep = [(alpha, level * c) for alpha in (0.3, 1.0, 3.0) for level in
             ((0.05,) if quick else (0.02, 0.05, 0.1))]
    out = []
    for alpha, level in sweep:
        prior = deepinv.optim.ScorePrior(denoiser=deepinv.models.TVDenoiser(n_it_max=20))
        step = 0.9 / (norm2 / sigma ** 2 + alpha / level ** 2)
        sampler = deepinv.sampling.ULA(prior, deepinv.optim.data_fidelity.L2(sigma=sigma),
                                       step_size=step, sigma=level, alpha=alpha,
                                       max_iter=iterations, thinning=5, burnin_ratio=0.3,
                                       clip=None, thresh_conv=1e-6)
        t0 = time.perf_counter()
        mean, var = sampler.sample(y, physics, x_init=x_init, seed=0)
        seconds = time.perf_counter() - t0
        mean, std = mean[0, 0].numpy(), np.sqrt(np.maximum(var[0, 0].numpy(), 0))
        out.append({"part": "uq", "scan": case.name, "method": "deepinv ULA, TV score prior",
                    **scores(case.scan, mean, std), "wall_s": seconds,
                    "setting": f"alpha {alpha:g}, denoiser sigma {level:.3g}, "
                               f"{iterations} it, step {step:.3g}"})
    return out


def gmrf_runs(case, A, sigma: float, x0, quick: bool):
    """CUQIpy: first-order GMRF prior, Gaussian likelihood on the same matrix, LinearRTO."""
    import cuqi

    from ctbayes.dip.fit import image_scale

    c = image_scale(A, case.scan.sinogram)
    shape = tuple(A.domain_shape)
    n = int(np.prod(shape))
    geometry = cuqi.geometry.Image2D(shape)
    matrix = scipy_matrix(A)  # the model sees images (H, W) in Image2D's C order
    model = cuqi.model.LinearModel(lambda x: matrix @ np.ravel(x),
                                   lambda y: (matrix.T @ y).reshape(shape),
                                   range_geometry=int(np.prod(A.range_shape)),
                                   domain_geometry=geometry)
    samples = 100 if quick else 1000
    out = []
    for prec in ((30.0, 300.0, 3000.0) if quick else (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)):
        x = cuqi.distribution.GMRF(np.zeros(n), prec / c ** 2, bc_type="zero", geometry=geometry)
        y = cuqi.distribution.Gaussian(model(x), sigma ** 2, geometry=model.range_geometry)
        posterior = cuqi.distribution.JointDistribution(x, y)(
            y=np.asarray(case.scan.sinogram, np.float64).reshape(-1))
        t0 = time.perf_counter()
        sampler = cuqi.sampler.LinearRTO(posterior, initial_point=np.asarray(x0).reshape(-1),
                                         maxit=25)
        sampler.warmup(samples // 5)
        sampler.sample(samples)
        chain = sampler.get_samples().burnthin(samples // 5).samples.T  # (Ns, n)
        seconds = time.perf_counter() - t0
        mean, std = chain.mean(0).reshape(shape), chain.std(0, ddof=1).reshape(shape)
        out.append({"part": "uq", "scan": case.name, "method": "CUQIpy GMRF, LinearRTO",
                    **scores(case.scan, mean, std), "wall_s": seconds,
                    "setting": f"precision {prec:g}/c^2, {samples} samples, CGLS 25"})
    return out


def uq_rows(case, A, physics, fit, dip_wall: float, quick: bool) -> list[dict]:
    from ctbayes.operators.fbp import fbp

    rows = [laplace_row(case, A, fit, dip_wall, 32 if quick else 128)]
    print(rows[-1], flush=True)
    sigma = float(np.sqrt(np.mean((np.asarray(A(fit.image)) - case.scan.sinogram) ** 2)))
    x0 = fbp(case.scan.sinogram, case.scan.geometry)
    peers = (lambda: ula_runs(case, A, physics, sigma, x0, quick),
             lambda: gmrf_runs(case, A, sigma, x0, quick))
    for run_peer in peers:
        runs = run_peer()
        for r in runs:
            print("  sweep:", r, flush=True)
        best = max(runs, key=lambda r: r["ll"] if math.isfinite(r["ll"]) else -math.inf)
        best = dict(best, sweep=" | ".join(f"{r['setting'].split(',')[0]}: LL {r['ll']:.3g}"
                                           for r in runs))
        rows.append(best)
    laplace, samplers = rows[0], rows[1:]
    fastest = min(r["wall_s"] for r in samplers)
    wins = all(laplace["ll"] > r["ll"] for r in samplers)
    laplace["target"] = ("met" if wins and laplace["wall_s"] <= fastest / 5 else "missed") + \
        f" (LL {'beats' if wins else 'does not beat'} both; time x{laplace['wall_s'] / fastest:.2g} " \
        f"of the fastest sampler)"
    return rows


# -- 3. score-VI against ADVI on the DIP --------------------------------------------------------

def vi_rows(case, A_fit, fit, train_scan, held_scan, quick: bool) -> list[dict]:
    import jax

    from ctbayes.operators import make_ray_transform
    from ctbayes.score_vi.compare import common_level, time_to_level
    from ctbayes.posteriors.score_vi import ScoreVIConfig, score_vi_posterior
    from ctbayes.uncertainty import heldout_view_metrics
    from ctbayes.posteriors.mfvi import MFVIConfig, fit_mfvi

    A_held = make_ray_transform(held_scan.geometry, "sparse")
    y = train_scan.sinogram
    noise_var = float(np.mean((np.asarray(A_fit(fit.image)) - y) ** 2))
    draws = 16

    def tracer():
        curve, clock = [], {"last": time.perf_counter(), "train": 0.0}

        def evaluate(sample_images):
            now = time.perf_counter()
            clock["train"] += now - clock["last"]
            images = np.asarray(sample_images(jax.random.key(123), draws))
            held = heldout_view_metrics(A_held, held_scan.sinogram, images, noise_var)
            curve.append({"seconds": clock["train"], "nll": -held["log_likelihood"],
                          "cov90_held": held["coverage_90"]})
            clock["last"] = time.perf_counter()
            return {}

        return curve, clock, evaluate

    runs = {}
    steps = 60 if quick else 300
    curve, clock, evaluate = tracer()
    svi = score_vi_posterior(fit, A_fit, y, config=ScoreVIConfig(steps=steps, moment_samples=32),
                             progress_chunk=10, evaluate=evaluate)
    runs["score-vi"] = (curve, svi)
    curve, clock, evaluate = tracer()
    iterations = 120 if quick else 600
    mf = fit_mfvi(fit, A_fit, y, MFVIConfig(iterations=iterations, chunk=10, std_samples=32),
                  callback=lambda it, sample: evaluate(sample))
    runs["mfvi (ADVI)"] = (curve, mf)
    level = common_level(runs["score-vi"][0][-1]["nll"], runs["mfvi (ADVI)"][0][-1]["nll"])
    advi_time = time_to_level(runs["mfvi (ADVI)"][0], level)
    rows = []
    for name, (curve, posterior) in runs.items():
        own = time_to_level(curve, level)
        samples = np.asarray(posterior.sample(jax.random.key(5), 32))
        row = {"part": "vi", "scan": case.name, "method": name,
               "heldout_nll": curve[-1]["nll"], "heldout_cov90": curve[-1]["cov90_held"],
               "level_nll": level, "s_to_level": own, "train_s": curve[-1]["seconds"],
               **scores(train_scan, samples.mean(0), samples.std(0, ddof=1))}
        if name == "score-vi":
            row["speedup_vs_advi"] = advi_time / own if own > 0 else math.inf
        rows.append(row)
    svi_row, advi_row = rows
    fast = svi_row["s_to_level"] <= advi_time / 2
    calibrated = svi_row["ll"] >= advi_row["ll"]
    svi_row["target"] = "met" if fast and calibrated else "missed: " + ", ".join(
        ([] if fast else ["not 2x faster to the common level"])
        + ([] if calibrated else ["image LL worse than ADVI's"]))
    for r in rows:
        print(r, flush=True)
    return rows


def training_split(case: Case):
    """(train scan, held-out scan, reuse the full-scan fit?): HTC2022's own held-out views,
    else every 5th view held out of the scan."""
    if case.heldout is not None:
        return case.scan, case.heldout, True
    views = np.arange(case.scan.geometry.num_views)
    held = views[::5]
    return case.scan.subset(np.setdiff1d(views, held)), case.scan.subset(held), False


# -- main ---------------------------------------------------------------------------------------

def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, "
           f"{__import__('os').cpu_count()} CPU cores"}
    for name in ("ctbayes", "jax", "torch", "deepinv", "CUQIpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out


def extra(parser):
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated parts to run: dip, uq, vi")
    parser.add_argument("--scans", default=None,
                        help="comma-separated substrings of scan names to run (default: all)")


def main():
    args = parse_args(__doc__.splitlines()[0], extra)
    missing = missing_peers()
    if missing:
        print(skip_message(missing))
        return
    import torch

    from ctbayes.operators import make_ray_transform

    torch.manual_seed(0)
    parts = set(args.parts.split(","))
    info = versions()
    print(info, flush=True)
    budget = 300 if args.quick else 2000
    # deepinv's own settings: DeepImagePrior's defaults (2500 iterations, lr 1e-2) with the
    # default 256-channel ConvDecoder; --quick runs the same budget only, with the demo's
    # 64-channel decoder (deepinv's examples/optimization/demo_dip.py)
    recommended = {"iterations": 0 if args.quick else 2500, "channels": 64 if args.quick else 256,
                   "in_size": (2, 2) if args.quick else (4, 4)}
    wanted = None if args.scans is None else args.scans.split(",")
    rows = []
    for case in cases(args.quick, wanted):
        A = make_ray_transform(case.scan.geometry, "sparse")
        physics = torch_physics(A)
        fit, dip_wall = None, None
        if "dip" in parts or "uq" in parts:
            if "dip" in parts:
                dip, fit = dip_rows(case, A, physics, budget, recommended)
                rows += dip
                dip_wall = dip[0]["wall_s"]
            else:
                fit, _, dip_wall = ctbayes_dip(A, case.scan, budget)
        if "uq" in parts:
            rows += uq_rows(case, A, physics, fit, dip_wall, args.quick)
        if "vi" in parts:
            train, held, reuse = training_split(case)
            if reuse and fit is not None:
                A_fit, vi_fit = A, fit
            else:
                A_fit = make_ray_transform(train.geometry, "sparse")
                vi_fit = ctbayes_dip(A_fit, train, budget)[0]
            rows += vi_rows(case, A_fit, vi_fit, train, held, args.quick)
    report(rows, args.json, "ctbayes against deepinv and CUQIpy (same scans, same sparse "
                            "operator; seconds of wall time on this machine; "
                            + ", ".join(f"{k} {v}" for k, v in info.items()) + ")")


if __name__ == "__main__":
    sys.exit(main())
