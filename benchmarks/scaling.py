"""Scaling: what the default pipeline (DIP fit + Laplace uncertainty) costs as the grid grows.

For each image size (64, 128, 256, 512; `--quick` stops at 128, `--max-size` sets the
largest) on HTC2022 `ta` (every 12th view: 60 views over 360 degrees, 560 detector pixels)
and on a simulated fan-beam scan of the same size (random ellipses, 60 views, 5% noise),
each run in its own child process (`python scaling.py --child SPEC`), so its peak resident
memory (ru_maxrss of the child) is its own. Per run: DIP seconds, uncertainty seconds (the
whole pass, and each Laplace phase as wall/compile seconds), their ratio, peak RSS overall
and per phase (the largest RSS sampled every 20 ms while the phase ran, `ctbayes.progress`
phases), PSNR (against the truth, or the reference FBP for HTC2022) and the per-pixel LL.
Then the growth exponent b of time and memory against pixel count N, fitted as t ~ N^b by
least squares in log-log over the sizes from 128 up (where 128 or more were run).

`--dip-iterations` shortens the DIP fit (on 2 CPU cores a default 512x512 fit takes hours;
the point at 512 is the memory and the uncertainty pass). `--baseline` runs each child with
the memory budget off (`LaplaceConfig.memory_budget=0`: the configured rank 1024, sketch
blocks of 64 rows and every CG row at once), to show what the budget's plan saves; the code
before this memory work is main's (run this script from such a checkout for that baseline).

    python benchmarks/scaling.py [--quick] [--json PATH] [--max-size N] [--dip-iterations N]
        [--views V] [--scans ta,simulated] [--baseline] [--sizes 32,64]
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import ROOT, SHARED_DATA, parse_args, report

SIZES = (64, 128, 256, 512)
PHASE_KEYS = (("linearise", "lin"), ("condition", "cond"), ("preconditioner", "prec"),
              ("e_steps", "e"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


class PhaseMemory:
    """Largest resident memory seen while each `ctbayes.progress` phase ran (sampled)."""

    def __init__(self, interval: float = 0.02):
        from ctbayes import progress

        self.peaks: dict[str, int] = {}
        self._open: list[str] = []
        self._stop = threading.Event()
        self._remove = progress.listen(self._event)
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _event(self, event, name):
        if event == "start":
            self._open.append(name)
        elif name in self._open:
            self._open.remove(name)
        self._sample()

    def _sample(self):
        rss = _rss_bytes()
        for name in list(self._open):
            key = name.split(" (")[0]
            if key.startswith("EM cycle"):
                key = "EM cycle"
            self.peaks[key] = max(self.peaks.get(key, 0), rss)

    def _run(self, interval):
        while not self._stop.wait(interval):
            self._sample()

    def close(self):
        self._stop.set()
        self._remove()


def _scan(spec):
    if spec["scan"] == "ta":
        from ctbayes.io.importers import import_scan

        full = import_scan(SHARED_DATA / "htc2022" / "htc2022_ta_full.mat",
                           image_size=spec["size"])
        step = max(1, full.geometry.num_views // spec["views"])
        return full.subset(np.arange(0, full.geometry.num_views, step)[:spec["views"]])
    from ctbayes.phantoms import make_phantom
    from ctbayes.simulate import default_geometry, simulate_scan

    geometry = default_geometry(spec["size"], "fanflat", views=spec["views"], arc_degrees=360.0)
    return simulate_scan(make_phantom("ellipses", spec["size"], 0), geometry, seed=1)


def child(spec: dict) -> dict:
    """One pipeline run (in this process); the measurements as a dict."""
    import dataclasses

    from ctbayes.dip.fit import DIPConfig
    from ctbayes.laplace import LaplaceConfig
    from ctbayes.reconstruct import ReconstructConfig, reconstruct
    from ctbayes.uncertainty import UncertaintyConfig

    scan = _scan(spec)
    dip = DIPConfig() if spec.get("dip_iterations") is None else DIPConfig(
        iterations=spec["dip_iterations"])
    uncertainty = UncertaintyConfig()
    if spec.get("baseline"):
        uncertainty = dataclasses.replace(uncertainty, posterior=LaplaceConfig(memory_budget=0.0))
    memory = PhaseMemory()
    start = time.perf_counter()
    result = reconstruct(scan, ReconstructConfig(dip=dip, uncertainty=uncertainty))
    wall = time.perf_counter() - start
    memory.close()
    t = result.timings
    dip_seconds = t.get("dip_total", t["reconstruction"])
    row = {"scan": spec["scan"], "size": spec["size"], "views": spec["views"],
           "data": int(np.size(scan.sinogram)), "dip_s": dip_seconds,
           "unc_s": t["uncertainty"], "ratio": t["uncertainty"] / dip_seconds,
           "unc_compile_s": t.get("uncertainty_compile", math.nan),
           "phases": " ".join(f"{short} {t[f'uncertainty_laplace_{name}']:.0f}/"
                              f"{t[f'uncertainty_laplace_{name}_compile']:.0f}"
                              for name, short in PHASE_KEYS
                              if f"uncertainty_laplace_{name}" in t),
           "sampling_s": t.get("uncertainty_sampling", math.nan),
           "precision": result.settings.get("uncertainty_precision_used", ""),
           "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           "phase_peak_gb": {k: round(v / 2 ** 30, 2) for k, v in memory.peaks.items()},
           "wall_s": wall}
    m = result.metrics
    row["psnr"] = m.get("psnr", m.get("psnr_vs_reference_fbp", math.nan))
    row["ll"] = m.get("log_likelihood", m.get("log_likelihood_vs_reference_fbp", math.nan))
    row["cov90"] = m.get("coverage_90", m.get("coverage_90_vs_reference_fbp", math.nan))
    return row


def run_child(spec: dict) -> dict:
    """`child(spec)` in a fresh process (its own peak memory); the row, or the error."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT / "benchmarks")
    # the child's own ru_maxrss is in its row; RUSAGE_CHILDREN here confirms it
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"scan": spec["scan"], "size": spec["size"], "error": " | ".join(tail),
                "wall_s": time.perf_counter() - start}
    return json.loads(lines[-1][4:])


def growth(rows: list[dict], key: str) -> float:
    """Exponent b of key ~ N^b (N pixels), least squares in log-log over sizes >= 128 (all
    sizes where fewer than two of those ran)."""
    ok = [r for r in rows if "error" not in r and r.get(key, 0) > 0]
    big = [r for r in ok if r["size"] >= 128]
    use = big if len(big) >= 2 else ok
    if len(use) < 2:
        return math.nan
    x = np.log([r["size"] ** 2 for r in use])
    y = np.log([r[key] for r in use])
    return float(np.polyfit(x, y, 1)[0])


def extra(parser):
    parser.add_argument("--max-size", type=int, default=None, help="largest image size")
    parser.add_argument("--dip-iterations", type=int, default=None,
                        help="DIP Adam steps (default: the DIP's default)")
    parser.add_argument("--views", type=int, default=60)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated image sizes instead of 64,128,256,512 (a smoke test)")
    parser.add_argument("--scans", default="ta,simulated")
    parser.add_argument("--baseline", action="store_true",
                        help="memory budget off (the design before the memory model)")
    parser.add_argument("--child", default=None, help=argparse_suppress())


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def main():
    if "--child" in sys.argv:
        spec = json.loads(sys.argv[sys.argv.index("--child") + 1])
        print("ROW " + json.dumps(child(spec), default=str), flush=True)
        return
    args = parse_args(__doc__.splitlines()[0], extra)
    top = args.max_size or (128 if args.quick else 512)
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else [s for s in SIZES if s <= top]
    rows = []
    for scan in args.scans.split(","):
        if scan == "ta" and not (SHARED_DATA / "htc2022" / "htc2022_ta_full.mat").exists():
            print("skipping HTC2022 ta: ../shared/data/htc2022/htc2022_ta_full.mat is absent")
            continue
        scan_rows = []
        for size in sizes:
            spec = {"scan": scan, "size": size, "views": args.views,
                    "dip_iterations": args.dip_iterations, "baseline": args.baseline}
            row = run_child(spec)
            print(json.dumps(row, default=str), flush=True)
            scan_rows.append(row)
        for key in ("dip_s", "unc_s", "peak_gb"):
            exponent = growth(scan_rows, key)
            for row in scan_rows:
                row[f"exp_{key}"] = exponent
        rows += scan_rows
    report(rows, args.json, "Scaling: DIP + Laplace by image size (child processes; "
                            "exp_*: growth exponent against pixel count)")


if __name__ == "__main__":
    main()
